package openflow

import (
	"encoding/binary"
	"fmt"
)

// Flow removed reasons (ofp_flow_removed_reason).
const (
	FlowRemovedIdleTimeout uint8 = 0
	FlowRemovedHardTimeout uint8 = 1
	FlowRemovedDelete      uint8 = 2
	FlowRemovedGroupDelete uint8 = 3
	FlowRemovedMeterDelete uint8 = 4
)

// FlowRemoved is OFPT_FLOW_REMOVED, sent for flows with send_flow_rem.
type FlowRemoved struct {
	Cookie       uint64
	Priority     uint16
	Reason       uint8
	Table        uint8
	DurationSec  uint32
	DurationNsec uint32
	IdleTimeout  uint16
	HardTimeout  uint16
	PacketCount  uint64
	ByteCount    uint64
	Match        Match
}

const flowRemovedLen = 40

func (*FlowRemoved) Type() MsgType { return TypeFlowRemoved }

func (m *FlowRemoved) AppendBody(b []byte) ([]byte, error) {
	b = binary.BigEndian.AppendUint64(b, m.Cookie)
	b = binary.BigEndian.AppendUint16(b, m.Priority)
	b = append(b, m.Reason, m.Table)
	b = binary.BigEndian.AppendUint32(b, m.DurationSec)
	b = binary.BigEndian.AppendUint32(b, m.DurationNsec)
	b = binary.BigEndian.AppendUint16(b, m.IdleTimeout)
	b = binary.BigEndian.AppendUint16(b, m.HardTimeout)
	b = binary.BigEndian.AppendUint64(b, m.PacketCount)
	b = binary.BigEndian.AppendUint64(b, m.ByteCount)
	return m.Match.AppendTo(b)
}

func decodeFlowRemoved(body []byte) (Message, error) {
	if len(body) < flowRemovedLen {
		return nil, truncated("FLOW_REMOVED", HeaderLen, flowRemovedLen, len(body))
	}
	match, _, err := DecodeMatch(body[flowRemovedLen:])
	if err != nil {
		msgShiftOffset(err, HeaderLen+flowRemovedLen)
		return nil, fmt.Errorf("FLOW_REMOVED: %w", err)
	}
	return &FlowRemoved{
		Cookie:       binary.BigEndian.Uint64(body),
		Priority:     binary.BigEndian.Uint16(body[8:]),
		Reason:       body[10],
		Table:        body[11],
		DurationSec:  binary.BigEndian.Uint32(body[12:]),
		DurationNsec: binary.BigEndian.Uint32(body[16:]),
		IdleTimeout:  binary.BigEndian.Uint16(body[20:]),
		HardTimeout:  binary.BigEndian.Uint16(body[22:]),
		PacketCount:  binary.BigEndian.Uint64(body[24:]),
		ByteCount:    binary.BigEndian.Uint64(body[32:]),
		Match:        match,
	}, nil
}

func flowRemovedReasonName(r uint8) string {
	names := [...]string{"idle", "hard", "delete", "group_delete", "meter_delete"}
	if int(r) < len(names) {
		return names[r]
	}
	return fmt.Sprintf("reason_%d", r)
}

// String follows ovs-ofctl's FLOW_REMOVED line.
func (m *FlowRemoved) String() string {
	return fmt.Sprintf("FLOW_REMOVED %v reason=%s table_id=%d cookie:0x%x priority:%d duration:%d.%03ds idle_timeout:%d hard_timeout:%d pkts:%d bytes:%d",
		&m.Match, flowRemovedReasonName(m.Reason), m.Table, m.Cookie, m.Priority, m.DurationSec, m.DurationNsec/1e6,
		m.IdleTimeout, m.HardTimeout, m.PacketCount, m.ByteCount)
}

func init() { registerDecoder(TypeFlowRemoved, decodeFlowRemoved) }
