package openflow

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
)

// PacketOut is OFPT_PACKET_OUT: Data (when BufferID is NoBuffer) is sent
// through Actions as if it had arrived on InPort.
type PacketOut struct {
	BufferID uint32
	InPort   uint32
	Actions  []Action
	Data     []byte
}

const packetOutLen = 16

func (*PacketOut) Type() MsgType { return TypePacketOut }

func (m *PacketOut) AppendBody(b []byte) ([]byte, error) {
	start := len(b)
	b = binary.BigEndian.AppendUint32(b, m.BufferID)
	b = binary.BigEndian.AppendUint32(b, m.InPort)
	b = append(b, 0, 0, 0, 0, 0, 0, 0, 0)
	b, err := AppendActions(b, m.Actions)
	if err != nil {
		return b[:start], fmt.Errorf("packet out actions: %w", err)
	}
	alen := len(b) - start - packetOutLen
	if alen > 0xffff {
		return b[:start], fmt.Errorf("packet out actions are %d bytes", alen)
	}
	binary.BigEndian.PutUint16(b[start+8:], uint16(alen))
	return append(b, m.Data...), nil
}

func decodePacketOut(body []byte) (Message, error) {
	if len(body) < packetOutLen {
		return nil, truncated("PACKET_OUT", HeaderLen, packetOutLen, len(body))
	}
	alen := int(binary.BigEndian.Uint16(body[8:]))
	if alen > len(body)-packetOutLen {
		return nil, truncated("PACKET_OUT actions", HeaderLen+packetOutLen, alen, len(body)-packetOutLen)
	}
	acts, err := DecodeActions(body[packetOutLen : packetOutLen+alen])
	if err != nil {
		msgShiftOffset(err, HeaderLen+packetOutLen)
		return nil, fmt.Errorf("PACKET_OUT: %w", err)
	}
	return &PacketOut{
		BufferID: binary.BigEndian.Uint32(body),
		InPort:   binary.BigEndian.Uint32(body[4:]),
		Actions:  acts,
		Data:     msgCopy(body[packetOutLen+alen:]),
	}, nil
}

// msgShiftOffset moves a DecodeError's offset by off, so errors from nested
// decoders point into the whole message.
func msgShiftOffset(err error, off int) {
	var de *DecodeError
	if errors.As(err, &de) {
		de.Offset += off
	}
}

func msgActionsString(acts []Action) string {
	if len(acts) == 0 {
		return "drop"
	}
	s := make([]string, len(acts))
	for i, a := range acts {
		s[i] = a.String()
	}
	return strings.Join(s, ",")
}

func (m *PacketOut) String() string {
	s := fmt.Sprintf("PACKET_OUT in_port=%s actions=%s data_len=%d", ovsPortString(m.InPort), msgActionsString(m.Actions), len(m.Data))
	if m.BufferID != NoBuffer {
		s += fmt.Sprintf(" buffer=0x%08x", m.BufferID)
	}
	return s
}

func init() { registerDecoder(TypePacketOut, decodePacketOut) }
