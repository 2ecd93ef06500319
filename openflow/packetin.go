package openflow

import (
	"encoding/binary"
	"fmt"
)

// Packet-in reasons (ofp_packet_in_reason), used by PacketIn and PacketIn2.
const (
	PacketInReasonNoMatch    uint8 = 0
	PacketInReasonAction     uint8 = 1
	PacketInReasonInvalidTTL uint8 = 2
	PacketInReasonActionSet  uint8 = 3
	PacketInReasonGroup      uint8 = 4
	PacketInReasonPacketOut  uint8 = 5
)

func packetInReasonName(r uint8) string {
	names := [...]string{"no_match", "action", "invalid_ttl", "action_set", "group", "packet_out"}
	if int(r) < len(names) {
		return names[r]
	}
	return fmt.Sprintf("reason_%d", r)
}

// PacketIn is the OpenFlow 1.3 OFPT_PACKET_IN. keyroute asks OVS for
// NXT_PACKET_IN2 (PacketIn2) instead; this form is decoded for completeness.
type PacketIn struct {
	BufferID uint32
	TotalLen uint16
	Reason   uint8
	Table    uint8
	Cookie   uint64
	Match    Match
	Data     []byte
}

const packetInLen = 16

func (*PacketIn) Type() MsgType { return TypePacketIn }

func (m *PacketIn) AppendBody(b []byte) ([]byte, error) {
	start := len(b)
	b = binary.BigEndian.AppendUint32(b, m.BufferID)
	b = binary.BigEndian.AppendUint16(b, m.TotalLen)
	b = append(b, m.Reason, m.Table)
	b = binary.BigEndian.AppendUint64(b, m.Cookie)
	b, err := m.Match.AppendTo(b)
	if err != nil {
		return b[:start], err
	}
	b = append(b, 0, 0)
	return append(b, m.Data...), nil
}

func decodePacketIn(body []byte) (Message, error) {
	if len(body) < packetInLen {
		return nil, truncated("PACKET_IN", HeaderLen, packetInLen, len(body))
	}
	match, n, err := DecodeMatch(body[packetInLen:])
	if err != nil {
		msgShiftOffset(err, HeaderLen+packetInLen)
		return nil, fmt.Errorf("PACKET_IN: %w", err)
	}
	off := packetInLen + n
	if len(body)-off < 2 {
		return nil, truncated("PACKET_IN pad", HeaderLen+off, 2, len(body)-off)
	}
	return &PacketIn{
		BufferID: binary.BigEndian.Uint32(body),
		TotalLen: binary.BigEndian.Uint16(body[4:]),
		Reason:   body[6],
		Table:    body[7],
		Cookie:   binary.BigEndian.Uint64(body[8:]),
		Match:    match,
		Data:     msgCopy(body[off+2:]),
	}, nil
}

func (m *PacketIn) String() string {
	return fmt.Sprintf("PACKET_IN total_len=%d %v (via %s) data_len=%d table_id=%d cookie=0x%x",
		m.TotalLen, &m.Match, packetInReasonName(m.Reason), len(m.Data), m.Table, m.Cookie)
}

func init() { registerDecoder(TypePacketIn, decodePacketIn) }
