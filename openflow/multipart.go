package openflow

import (
	"bytes"
	"encoding/binary"
	"fmt"
)

// Multipart types (ofp_multipart_type).
const (
	MultipartDesc          uint16 = 0
	MultipartFlow          uint16 = 1
	MultipartAggregate     uint16 = 2
	MultipartTable         uint16 = 3
	MultipartPortStats     uint16 = 4
	MultipartQueue         uint16 = 5
	MultipartGroup         uint16 = 6
	MultipartGroupDesc     uint16 = 7
	MultipartGroupFeatures uint16 = 8
	MultipartMeter         uint16 = 9
	MultipartMeterConfig   uint16 = 10
	MultipartMeterFeatures uint16 = 11
	MultipartTableFeatures uint16 = 12
	MultipartPortDesc      uint16 = 13
	MultipartExperimenter  uint16 = 0xffff
)

// MultipartFlagMore (OFPMPF_REPLY_MORE) marks a part that is not the last.
const MultipartFlagMore uint16 = 1

const multipartHeaderLen = 8

var multipartNames = map[uint16]string{
	MultipartDesc: "desc", MultipartFlow: "flow", MultipartAggregate: "aggregate", MultipartTable: "table",
	MultipartPortStats: "port", MultipartQueue: "queue", MultipartGroup: "group", MultipartGroupDesc: "group_desc",
	MultipartGroupFeatures: "group_features", MultipartMeter: "meter", MultipartMeterConfig: "meter_config",
	MultipartMeterFeatures: "meter_features", MultipartTableFeatures: "table_features", MultipartPortDesc: "port_desc",
	MultipartExperimenter: "experimenter",
}

func multipartName(t uint16) string {
	if n, ok := multipartNames[t]; ok {
		return n
	}
	return fmt.Sprintf("type_%d", t)
}

func appendMultipartHeader(b []byte, mpType, flags uint16) []byte {
	b = binary.BigEndian.AppendUint16(b, mpType)
	b = binary.BigEndian.AppendUint16(b, flags)
	return append(b, 0, 0, 0, 0)
}

// MultipartReply is one part of an OFPT_MULTIPART_REPLY. A reply spans
// several messages with the same xid; concatenate the Bodies until !More()
// and decode the result with DecodeFlowStats, DecodePortStats, ...
type MultipartReply struct {
	MPType uint16
	Flags  uint16
	Body   []byte
}

func (*MultipartReply) Type() MsgType { return TypeMultipartReply }

// More reports whether further parts follow.
func (m *MultipartReply) More() bool { return m.Flags&MultipartFlagMore != 0 }

func (m *MultipartReply) AppendBody(b []byte) ([]byte, error) {
	return append(appendMultipartHeader(b, m.MPType, m.Flags), m.Body...), nil
}

func (m *MultipartReply) String() string {
	s := fmt.Sprintf("MULTIPART_REPLY %s %d bytes", multipartName(m.MPType), len(m.Body))
	if m.More() {
		s += " flags=[more]"
	}
	return s
}

func decodeMultipartReply(body []byte) (Message, error) {
	if len(body) < multipartHeaderLen {
		return nil, truncated("MULTIPART_REPLY", HeaderLen, multipartHeaderLen, len(body))
	}
	return &MultipartReply{
		MPType: binary.BigEndian.Uint16(body),
		Flags:  binary.BigEndian.Uint16(body[2:]),
		Body:   msgCopy(body[multipartHeaderLen:]),
	}, nil
}

// MultipartReplyParts packs encoded entries (each from an AppendTo) into
// reply parts whose bodies hold at most maxBody bytes, never splitting an
// entry, and flags every part but the last with More, as a switch does.
// It is how tests and fake switches build multi-part replies.
func MultipartReplyParts(mpType uint16, msgEntries [][]byte, maxBody int) []*MultipartReply {
	var parts []*MultipartReply
	cur := &MultipartReply{MPType: mpType}
	for _, e := range msgEntries {
		if len(cur.Body) > 0 && len(cur.Body)+len(e) > maxBody {
			cur.Flags = MultipartFlagMore
			parts = append(parts, cur)
			cur = &MultipartReply{MPType: mpType}
		}
		cur.Body = append(cur.Body, e...)
	}
	return append(parts, cur)
}

// MultipartRequest is a multipart request keyroute has no typed form for.
type MultipartRequest struct {
	MPType uint16
	Flags  uint16
	Body   []byte
}

func (*MultipartRequest) Type() MsgType { return TypeMultipartRequest }
func (m *MultipartRequest) AppendBody(b []byte) ([]byte, error) {
	return append(appendMultipartHeader(b, m.MPType, m.Flags), m.Body...), nil
}
func (m *MultipartRequest) String() string {
	return fmt.Sprintf("MULTIPART_REQUEST %s %d bytes", multipartName(m.MPType), len(m.Body))
}

// FlowStatsRequest asks for the flows matching Match (OFPMP_FLOW). Use
// TableAll, PortAny and GroupAny for no restriction.
type FlowStatsRequest struct {
	Table      uint8
	OutPort    uint32
	OutGroup   uint32
	Cookie     uint64
	CookieMask uint64
	Match      Match
}

// AggregateStatsRequest asks for summed counters of the flows matching
// Match (OFPMP_AGGREGATE).
type AggregateStatsRequest struct {
	Table      uint8
	OutPort    uint32
	OutGroup   uint32
	Cookie     uint64
	CookieMask uint64
	Match      Match
}

const flowStatsRequestLen = 32

func appendFlowStatsRequest(b []byte, mpType uint16, r *FlowStatsRequest) ([]byte, error) {
	start := len(b)
	b = appendMultipartHeader(b, mpType, 0)
	b = append(b, r.Table, 0, 0, 0)
	b = binary.BigEndian.AppendUint32(b, r.OutPort)
	b = binary.BigEndian.AppendUint32(b, r.OutGroup)
	b = append(b, 0, 0, 0, 0)
	b = binary.BigEndian.AppendUint64(b, r.Cookie)
	b = binary.BigEndian.AppendUint64(b, r.CookieMask)
	b, err := r.Match.AppendTo(b)
	if err != nil {
		return b[:start], err
	}
	return b, nil
}

func (*FlowStatsRequest) Type() MsgType { return TypeMultipartRequest }
func (r *FlowStatsRequest) AppendBody(b []byte) ([]byte, error) {
	return appendFlowStatsRequest(b, MultipartFlow, r)
}
func (r *FlowStatsRequest) String() string {
	return "MULTIPART_REQUEST flow " + flowStatsRequestString(r)
}

func (*AggregateStatsRequest) Type() MsgType { return TypeMultipartRequest }
func (r *AggregateStatsRequest) AppendBody(b []byte) ([]byte, error) {
	return appendFlowStatsRequest(b, MultipartAggregate, (*FlowStatsRequest)(r))
}
func (r *AggregateStatsRequest) String() string {
	return "MULTIPART_REQUEST aggregate " + flowStatsRequestString((*FlowStatsRequest)(r))
}

func flowStatsRequestString(r *FlowStatsRequest) string {
	s := ""
	if r.Table != TableAll {
		s += fmt.Sprintf("table_id=%d ", r.Table)
	}
	if r.OutPort != PortAny {
		s += "out_port=" + ovsPortString(r.OutPort) + " "
	}
	if r.OutGroup != GroupAny {
		s += fmt.Sprintf("out_group=%d ", r.OutGroup)
	}
	if r.CookieMask != 0 {
		s += fmt.Sprintf("cookie=0x%x/0x%x ", r.Cookie, r.CookieMask)
	}
	return s + fmt.Sprint(&r.Match)
}

func decodeFlowStatsRequest(b []byte) (*FlowStatsRequest, error) {
	if len(b) < flowStatsRequestLen {
		return nil, truncated("flow stats request", HeaderLen+multipartHeaderLen, flowStatsRequestLen, len(b))
	}
	m, _, err := DecodeMatch(b[flowStatsRequestLen:])
	if err != nil {
		msgShiftOffset(err, HeaderLen+multipartHeaderLen+flowStatsRequestLen)
		return nil, fmt.Errorf("flow stats request: %w", err)
	}
	return &FlowStatsRequest{
		Table: b[0], OutPort: binary.BigEndian.Uint32(b[4:]), OutGroup: binary.BigEndian.Uint32(b[8:]),
		Cookie: binary.BigEndian.Uint64(b[16:]), CookieMask: binary.BigEndian.Uint64(b[24:]), Match: m,
	}, nil
}

// TableStatsRequest asks for per-table counters (OFPMP_TABLE).
type TableStatsRequest struct{}

func (*TableStatsRequest) Type() MsgType { return TypeMultipartRequest }
func (*TableStatsRequest) AppendBody(b []byte) ([]byte, error) {
	return appendMultipartHeader(b, MultipartTable, 0), nil
}
func (*TableStatsRequest) String() string { return "MULTIPART_REQUEST table" }

// PortDescRequest asks for the description of every port (OFPMP_PORT_DESC).
type PortDescRequest struct{}

func (*PortDescRequest) Type() MsgType { return TypeMultipartRequest }
func (*PortDescRequest) AppendBody(b []byte) ([]byte, error) {
	return appendMultipartHeader(b, MultipartPortDesc, 0), nil
}
func (*PortDescRequest) String() string { return "MULTIPART_REQUEST port_desc" }

// PortStatsRequest asks for port counters (OFPMP_PORT_STATS); PortAny for
// all ports.
type PortStatsRequest struct{ PortNo uint32 }

func (*PortStatsRequest) Type() MsgType { return TypeMultipartRequest }
func (r *PortStatsRequest) AppendBody(b []byte) ([]byte, error) {
	b = appendMultipartHeader(b, MultipartPortStats, 0)
	b = binary.BigEndian.AppendUint32(b, r.PortNo)
	return append(b, 0, 0, 0, 0), nil
}
func (r *PortStatsRequest) String() string {
	return "MULTIPART_REQUEST port port_no=" + ovsPortString(r.PortNo)
}

// MeterStatsRequest asks for meter counters (OFPMP_METER); MeterAll for all.
type MeterStatsRequest struct{ MeterID uint32 }

func (*MeterStatsRequest) Type() MsgType { return TypeMultipartRequest }
func (r *MeterStatsRequest) AppendBody(b []byte) ([]byte, error) {
	b = appendMultipartHeader(b, MultipartMeter, 0)
	b = binary.BigEndian.AppendUint32(b, r.MeterID)
	return append(b, 0, 0, 0, 0), nil
}
func (r *MeterStatsRequest) String() string {
	if r.MeterID == MeterAll {
		return "MULTIPART_REQUEST meter meter=all"
	}
	return fmt.Sprintf("MULTIPART_REQUEST meter meter=%d", r.MeterID)
}

func decodeMultipartRequest(body []byte) (Message, error) {
	if len(body) < multipartHeaderLen {
		return nil, truncated("MULTIPART_REQUEST", HeaderLen, multipartHeaderLen, len(body))
	}
	t := binary.BigEndian.Uint16(body)
	flags := binary.BigEndian.Uint16(body[2:])
	b := body[multipartHeaderLen:]
	generic := &MultipartRequest{MPType: t, Flags: flags, Body: msgCopy(b)}
	if flags != 0 {
		// The typed requests carry no flags (keyroute sends none); keep
		// such a request whole rather than lose OFPMPF_REQ_MORE.
		return generic, nil
	}
	m, err := decodeTypedMultipartRequest(t, b)
	if err != nil || m == nil {
		return generic, err
	}
	// A typed request that would not re-encode to these bytes (trailing
	// bytes, nonzero padding, match fields out of order) is kept whole.
	// The multipart header's own padding means nothing (and the generic
	// form does not keep it either), so it is left out of the comparison.
	if enc, err := m.AppendBody(nil); err != nil || len(enc) < multipartHeaderLen || !bytes.Equal(enc[multipartHeaderLen:], b) {
		return generic, nil
	}
	return m, nil
}

// decodeTypedMultipartRequest decodes the body b of a request of type t
// into its typed form; it returns nil for types without one.
func decodeTypedMultipartRequest(t uint16, b []byte) (Message, error) {
	u32 := func(what string) (uint32, error) {
		if len(b) < 8 {
			return 0, truncated(what, HeaderLen+multipartHeaderLen, 8, len(b))
		}
		return binary.BigEndian.Uint32(b), nil
	}
	switch t {
	case MultipartFlow:
		r, err := decodeFlowStatsRequest(b)
		if err != nil {
			return nil, err
		}
		return r, nil
	case MultipartAggregate:
		r, err := decodeFlowStatsRequest(b)
		if err != nil {
			return nil, err
		}
		return (*AggregateStatsRequest)(r), nil
	case MultipartTable:
		return &TableStatsRequest{}, nil
	case MultipartPortDesc:
		return &PortDescRequest{}, nil
	case MultipartPortStats:
		p, err := u32("port stats request")
		if err != nil {
			return nil, err
		}
		return &PortStatsRequest{PortNo: p}, nil
	case MultipartMeter:
		id, err := u32("meter stats request")
		if err != nil {
			return nil, err
		}
		return &MeterStatsRequest{MeterID: id}, nil
	}
	return nil, nil
}

// FlowStats is one entry of an OFPMP_FLOW reply.
type FlowStats struct {
	Table        uint8
	DurationSec  uint32
	DurationNsec uint32
	Priority     uint16
	IdleTimeout  uint16
	HardTimeout  uint16
	Flags        uint16
	Cookie       uint64
	PacketCount  uint64
	ByteCount    uint64
	Match        Match
	Instructions []Instruction
}

const flowStatsLen = 48

// AppendTo appends the ofp_flow_stats encoding of s.
func (s *FlowStats) AppendTo(b []byte) ([]byte, error) {
	start := len(b)
	b = append(b, 0, 0, s.Table, 0)
	b = binary.BigEndian.AppendUint32(b, s.DurationSec)
	b = binary.BigEndian.AppendUint32(b, s.DurationNsec)
	for _, v := range [...]uint16{s.Priority, s.IdleTimeout, s.HardTimeout, s.Flags} {
		b = binary.BigEndian.AppendUint16(b, v)
	}
	b = append(b, 0, 0, 0, 0)
	for _, v := range [...]uint64{s.Cookie, s.PacketCount, s.ByteCount} {
		b = binary.BigEndian.AppendUint64(b, v)
	}
	b, err := s.Match.AppendTo(b)
	if err == nil {
		b, err = AppendInstructions(b, s.Instructions)
	}
	if err != nil {
		return b[:start], fmt.Errorf("flow stats: %w", err)
	}
	n := len(b) - start
	if n > 0xffff {
		return b[:start], fmt.Errorf("flow stats entry of %d bytes", n)
	}
	binary.BigEndian.PutUint16(b[start:], uint16(n))
	return b, nil
}

// DecodeFlowStats decodes the reassembled body of an OFPMP_FLOW reply.
// Offsets in errors are relative to body.
func DecodeFlowStats(body []byte) ([]FlowStats, error) {
	var out []FlowStats
	for off := 0; off < len(body); {
		b := body[off:]
		if len(b) < flowStatsLen {
			return nil, truncated("flow stats", off, flowStatsLen, len(b))
		}
		n := int(binary.BigEndian.Uint16(b))
		if n < flowStatsLen {
			return nil, &DecodeError{What: "flow stats", Offset: off, Err: fmt.Errorf("length %d < %d", n, flowStatsLen)}
		}
		if n > len(b) {
			return nil, truncated("flow stats", off, n, len(b))
		}
		b = b[:n]
		m, mlen, err := DecodeMatch(b[flowStatsLen:])
		if err != nil {
			msgShiftOffset(err, off+flowStatsLen)
			return nil, fmt.Errorf("flow stats: %w", err)
		}
		ins, err := DecodeInstructions(b[flowStatsLen+mlen:])
		if err != nil {
			msgShiftOffset(err, off+flowStatsLen+mlen)
			return nil, fmt.Errorf("flow stats: %w", err)
		}
		out = append(out, FlowStats{
			Table:        b[2],
			DurationSec:  binary.BigEndian.Uint32(b[4:]),
			DurationNsec: binary.BigEndian.Uint32(b[8:]),
			Priority:     binary.BigEndian.Uint16(b[12:]),
			IdleTimeout:  binary.BigEndian.Uint16(b[14:]),
			HardTimeout:  binary.BigEndian.Uint16(b[16:]),
			Flags:        binary.BigEndian.Uint16(b[18:]),
			Cookie:       binary.BigEndian.Uint64(b[24:]),
			PacketCount:  binary.BigEndian.Uint64(b[32:]),
			ByteCount:    binary.BigEndian.Uint64(b[40:]),
			Match:        m,
			Instructions: ins,
		})
		off += n
	}
	return out, nil
}

// AggregateStats is the OFPMP_AGGREGATE reply.
type AggregateStats struct {
	PacketCount uint64
	ByteCount   uint64
	FlowCount   uint32
}

const aggregateStatsLen = 24

// AppendTo appends the ofp_aggregate_stats_reply encoding of s.
func (s *AggregateStats) AppendTo(b []byte) ([]byte, error) {
	b = binary.BigEndian.AppendUint64(b, s.PacketCount)
	b = binary.BigEndian.AppendUint64(b, s.ByteCount)
	b = binary.BigEndian.AppendUint32(b, s.FlowCount)
	return append(b, 0, 0, 0, 0), nil
}

// DecodeAggregateStats decodes the body of an OFPMP_AGGREGATE reply.
func DecodeAggregateStats(body []byte) (AggregateStats, error) {
	if len(body) < aggregateStatsLen {
		return AggregateStats{}, truncated("aggregate stats", 0, aggregateStatsLen, len(body))
	}
	return AggregateStats{
		PacketCount: binary.BigEndian.Uint64(body),
		ByteCount:   binary.BigEndian.Uint64(body[8:]),
		FlowCount:   binary.BigEndian.Uint32(body[16:]),
	}, nil
}

// TableStats is one entry of an OFPMP_TABLE reply.
type TableStats struct {
	Table        uint8
	ActiveCount  uint32
	LookupCount  uint64
	MatchedCount uint64
}

const tableStatsLen = 24

// AppendTo appends the ofp_table_stats encoding of s.
func (s *TableStats) AppendTo(b []byte) ([]byte, error) {
	b = append(b, s.Table, 0, 0, 0)
	b = binary.BigEndian.AppendUint32(b, s.ActiveCount)
	b = binary.BigEndian.AppendUint64(b, s.LookupCount)
	return binary.BigEndian.AppendUint64(b, s.MatchedCount), nil
}

// DecodeTableStats decodes the reassembled body of an OFPMP_TABLE reply.
func DecodeTableStats(body []byte) ([]TableStats, error) {
	if len(body)%tableStatsLen != 0 {
		return nil, &DecodeError{What: "table stats", Offset: 0, Err: fmt.Errorf("body of %d bytes is not a multiple of %d", len(body), tableStatsLen)}
	}
	out := make([]TableStats, 0, len(body)/tableStatsLen)
	for off := 0; off < len(body); off += tableStatsLen {
		b := body[off:]
		out = append(out, TableStats{
			Table: b[0], ActiveCount: binary.BigEndian.Uint32(b[4:]),
			LookupCount: binary.BigEndian.Uint64(b[8:]), MatchedCount: binary.BigEndian.Uint64(b[16:]),
		})
	}
	return out, nil
}

// PortStats is one entry of an OFPMP_PORT_STATS reply.
type PortStats struct {
	PortNo       uint32
	RxPackets    uint64
	TxPackets    uint64
	RxBytes      uint64
	TxBytes      uint64
	RxDropped    uint64
	TxDropped    uint64
	RxErrors     uint64
	TxErrors     uint64
	RxFrameErr   uint64
	RxOverErr    uint64
	RxCRCErr     uint64
	Collisions   uint64
	DurationSec  uint32
	DurationNsec uint32
}

const portStatsLen = 112

func (s *PortStats) counters() [12]*uint64 {
	return [12]*uint64{&s.RxPackets, &s.TxPackets, &s.RxBytes, &s.TxBytes, &s.RxDropped, &s.TxDropped,
		&s.RxErrors, &s.TxErrors, &s.RxFrameErr, &s.RxOverErr, &s.RxCRCErr, &s.Collisions}
}

// AppendTo appends the ofp_port_stats encoding of s.
func (s *PortStats) AppendTo(b []byte) ([]byte, error) {
	b = binary.BigEndian.AppendUint32(b, s.PortNo)
	b = append(b, 0, 0, 0, 0)
	for _, c := range s.counters() {
		b = binary.BigEndian.AppendUint64(b, *c)
	}
	b = binary.BigEndian.AppendUint32(b, s.DurationSec)
	return binary.BigEndian.AppendUint32(b, s.DurationNsec), nil
}

// DecodePortStats decodes the reassembled body of an OFPMP_PORT_STATS reply.
func DecodePortStats(body []byte) ([]PortStats, error) {
	if len(body)%portStatsLen != 0 {
		return nil, &DecodeError{What: "port stats", Offset: 0, Err: fmt.Errorf("body of %d bytes is not a multiple of %d", len(body), portStatsLen)}
	}
	out := make([]PortStats, len(body)/portStatsLen)
	for i := range out {
		b := body[i*portStatsLen:]
		s := &out[i]
		s.PortNo = binary.BigEndian.Uint32(b)
		for j, c := range s.counters() {
			*c = binary.BigEndian.Uint64(b[8+8*j:])
		}
		s.DurationSec = binary.BigEndian.Uint32(b[104:])
		s.DurationNsec = binary.BigEndian.Uint32(b[108:])
	}
	return out, nil
}

func init() {
	registerDecoder(TypeMultipartReply, decodeMultipartReply)
	registerDecoder(TypeMultipartRequest, decodeMultipartRequest)
}
