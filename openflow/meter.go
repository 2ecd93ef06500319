package openflow

import (
	"encoding/binary"
	"fmt"
	"strings"
)

// Meter commands (ofp_meter_mod_command).
const (
	MeterAdd    uint16 = 0
	MeterModify uint16 = 1
	MeterDelete uint16 = 2
)

// Meter flags (ofp_meter_flags).
const (
	MeterFlagKbps  uint16 = 1 << 0
	MeterFlagPktps uint16 = 1 << 1
	MeterFlagBurst uint16 = 1 << 2
	MeterFlagStats uint16 = 1 << 3
)

// Meter band types (ofp_meter_band_type).
const (
	MeterBandDrop         uint16 = 1
	MeterBandDSCPRemark   uint16 = 2
	MeterBandExperimenter uint16 = 0xffff
)

// MeterBand is one band of a meter. PrecLevel is used by DSCP remark bands.
// Experimenter is an experimenter band's experimenter id (for a band type
// OpenFlow 1.3 does not define, the same four bytes, kept raw), and Data
// what a band carries after its 16 bytes (an experimenter band's payload;
// drop and DSCP remark bands have none, and OVS rejects them with any).
// OVS itself rejects experimenter bands (OFPMMFC_BAD_BAND), but other
// switches and controllers use them.
type MeterBand struct {
	Type         uint16
	Rate         uint32
	BurstSize    uint32
	PrecLevel    uint8
	Experimenter uint32
	Data         []byte
}

const meterBandLen = 16

// known reports whether the band is one whose bytes after burst_size are
// PrecLevel and padding.
func (mb *MeterBand) known() bool {
	return mb.Type == MeterBandDrop || mb.Type == MeterBandDSCPRemark
}

func (mb *MeterBand) appendTo(b []byte) ([]byte, error) {
	n := meterBandLen + len(mb.Data)
	if n%8 != 0 || n > 0xffff {
		return b, fmt.Errorf("meter band data of %d bytes: the band must be a multiple of 8 bytes long", len(mb.Data))
	}
	b = binary.BigEndian.AppendUint16(b, mb.Type)
	b = binary.BigEndian.AppendUint16(b, uint16(n))
	b = binary.BigEndian.AppendUint32(b, mb.Rate)
	b = binary.BigEndian.AppendUint32(b, mb.BurstSize)
	if mb.known() {
		b = append(b, mb.PrecLevel, 0, 0, 0)
	} else {
		b = binary.BigEndian.AppendUint32(b, mb.Experimenter)
	}
	return append(b, mb.Data...), nil
}

// String prints the band in ovs-ofctl add-meter syntax.
func (mb *MeterBand) String() string {
	var s string
	switch mb.Type {
	case MeterBandDrop:
		s = "type=drop"
	case MeterBandDSCPRemark:
		s = "type=dscp_remark"
	case MeterBandExperimenter:
		s = fmt.Sprintf("type=experimenter,experimenter=0x%x", mb.Experimenter)
	default:
		s = fmt.Sprintf("type=%d", mb.Type)
	}
	s += fmt.Sprintf(",rate=%d", mb.Rate)
	if mb.BurstSize != 0 {
		s += fmt.Sprintf(",burst_size=%d", mb.BurstSize)
	}
	if mb.Type == MeterBandDSCPRemark {
		s += fmt.Sprintf(",prec_level=%d", mb.PrecLevel)
	}
	return s
}

// decodeMeterBands decodes bands filling b; off is b's offset for errors.
func decodeMeterBands(b []byte, off int) ([]MeterBand, error) {
	var bands []MeterBand
	for i := 0; i < len(b); {
		if len(b)-i < meterBandLen {
			return nil, truncated("meter band", off+i, meterBandLen, len(b)-i)
		}
		n := int(binary.BigEndian.Uint16(b[i+2:]))
		if n < meterBandLen || n%8 != 0 {
			return nil, &DecodeError{What: "meter band", Offset: off + i + 2, Err: fmt.Errorf("length %d is not a multiple of 8 >= %d", n, meterBandLen)}
		}
		if n > len(b)-i {
			return nil, truncated("meter band", off+i, n, len(b)-i)
		}
		mb := MeterBand{Type: binary.BigEndian.Uint16(b[i:]), Rate: binary.BigEndian.Uint32(b[i+4:]), BurstSize: binary.BigEndian.Uint32(b[i+8:])}
		switch {
		case mb.Type == MeterBandDSCPRemark:
			mb.PrecLevel = b[i+12]
		case !mb.known():
			mb.Experimenter = binary.BigEndian.Uint32(b[i+12:])
		}
		// Keep what follows, so re-encoding sends the same band.
		mb.Data = msgCopy(b[i+meterBandLen : i+n])
		bands = append(bands, mb)
		i += n
	}
	return bands, nil
}

// MeterMod is OFPT_METER_MOD.
type MeterMod struct {
	Command uint16
	Flags   uint16
	MeterID uint32
	Bands   []MeterBand
}

const meterModLen = 8

func (*MeterMod) Type() MsgType { return TypeMeterMod }

func (m *MeterMod) AppendBody(b []byte) ([]byte, error) {
	b = binary.BigEndian.AppendUint16(b, m.Command)
	b = binary.BigEndian.AppendUint16(b, m.Flags)
	b = binary.BigEndian.AppendUint32(b, m.MeterID)
	start := len(b)
	for i := range m.Bands {
		var err error
		if b, err = m.Bands[i].appendTo(b); err != nil {
			return b[:start], fmt.Errorf("meter %d band %d: %w", m.MeterID, i, err)
		}
	}
	return b, nil
}

func decodeMeterMod(body []byte) (Message, error) {
	if len(body) < meterModLen {
		return nil, truncated("METER_MOD", HeaderLen, meterModLen, len(body))
	}
	bands, err := decodeMeterBands(body[meterModLen:], HeaderLen+meterModLen)
	if err != nil {
		return nil, fmt.Errorf("METER_MOD: %w", err)
	}
	return &MeterMod{
		Command: binary.BigEndian.Uint16(body),
		Flags:   binary.BigEndian.Uint16(body[2:]),
		MeterID: binary.BigEndian.Uint32(body[4:]),
		Bands:   bands,
	}, nil
}

func meterIDString(id uint32) string {
	switch id {
	case MeterAll:
		return "all"
	case 0xfffffffe:
		return "controller"
	case 0xfffffffd:
		return "slowpath"
	}
	return fmt.Sprint(id)
}

// String prints the meter in ovs-ofctl syntax, the argument of
// add-meter/mod-meter (or just "meter=N" for a delete, as del-meters takes),
// e.g. "meter=1,kbps,burst,stats,bands=type=drop,rate=1000,burst_size=100".
func (m *MeterMod) String() string {
	s := "meter=" + meterIDString(m.MeterID)
	if m.Command == MeterDelete {
		return s
	}
	for _, f := range []struct {
		bit  uint16
		name string
	}{{MeterFlagKbps, "kbps"}, {MeterFlagPktps, "pktps"}, {MeterFlagBurst, "burst"}, {MeterFlagStats, "stats"}} {
		if m.Flags&f.bit != 0 {
			s += "," + f.name
		}
	}
	if len(m.Bands) > 0 {
		bs := make([]string, len(m.Bands))
		for i := range m.Bands {
			bs[i] = m.Bands[i].String()
		}
		s += ",bands=" + strings.Join(bs, ",")
	}
	return s
}

// MeterBandStats counts what one band did.
type MeterBandStats struct {
	PacketCount uint64
	ByteCount   uint64
}

// MeterStats is one entry of an OFPMP_METER reply.
type MeterStats struct {
	MeterID       uint32
	FlowCount     uint32
	PacketInCount uint64
	ByteInCount   uint64
	DurationSec   uint32
	DurationNsec  uint32
	Bands         []MeterBandStats
}

const meterStatsLen = 40

// AppendTo appends the ofp_meter_stats encoding of s.
func (s *MeterStats) AppendTo(b []byte) ([]byte, error) {
	n := meterStatsLen + 16*len(s.Bands)
	if n > 0xffff {
		return b, fmt.Errorf("meter stats with %d bands", len(s.Bands))
	}
	b = binary.BigEndian.AppendUint32(b, s.MeterID)
	b = binary.BigEndian.AppendUint16(b, uint16(n))
	b = append(b, 0, 0, 0, 0, 0, 0)
	b = binary.BigEndian.AppendUint32(b, s.FlowCount)
	b = binary.BigEndian.AppendUint64(b, s.PacketInCount)
	b = binary.BigEndian.AppendUint64(b, s.ByteInCount)
	b = binary.BigEndian.AppendUint32(b, s.DurationSec)
	b = binary.BigEndian.AppendUint32(b, s.DurationNsec)
	for _, bs := range s.Bands {
		b = binary.BigEndian.AppendUint64(b, bs.PacketCount)
		b = binary.BigEndian.AppendUint64(b, bs.ByteCount)
	}
	return b, nil
}

// DecodeMeterStats decodes the reassembled body of an OFPMP_METER reply.
func DecodeMeterStats(body []byte) ([]MeterStats, error) {
	var out []MeterStats
	for off := 0; off < len(body); {
		b := body[off:]
		if len(b) < meterStatsLen {
			return nil, truncated("meter stats", off, meterStatsLen, len(b))
		}
		n := int(binary.BigEndian.Uint16(b[4:]))
		if n < meterStatsLen || (n-meterStatsLen)%16 != 0 {
			return nil, &DecodeError{What: "meter stats", Offset: off + 4, Err: fmt.Errorf("length %d is not %d + 16*bands", n, meterStatsLen)}
		}
		if n > len(b) {
			return nil, truncated("meter stats", off, n, len(b))
		}
		s := MeterStats{
			MeterID:       binary.BigEndian.Uint32(b),
			FlowCount:     binary.BigEndian.Uint32(b[12:]),
			PacketInCount: binary.BigEndian.Uint64(b[16:]),
			ByteInCount:   binary.BigEndian.Uint64(b[24:]),
			DurationSec:   binary.BigEndian.Uint32(b[32:]),
			DurationNsec:  binary.BigEndian.Uint32(b[36:]),
		}
		for i := meterStatsLen; i < n; i += 16 {
			s.Bands = append(s.Bands, MeterBandStats{PacketCount: binary.BigEndian.Uint64(b[i:]), ByteCount: binary.BigEndian.Uint64(b[i+8:])})
		}
		out = append(out, s)
		off += n
	}
	return out, nil
}

func init() { registerDecoder(TypeMeterMod, decodeMeterMod) }
