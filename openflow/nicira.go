package openflow

import (
	"encoding/binary"
	"fmt"
)

// Nicira experimenter message subtypes (NXT_*).
const (
	nxtSetPacketInFormat = 16
	nxtSetControllerID   = 20
	nxtPacketIn2         = 30
)

// Packet-in formats for SetPacketInFormat (NXPIF_*).
const (
	PacketInFormatStandard uint32 = 0 // OFPT_PACKET_IN of the session's version
	PacketInFormatNXM      uint32 = 1 // NXT_PACKET_IN
	PacketInFormatNXT2     uint32 = 2 // NXT_PACKET_IN2 (PacketIn2)
)

func appendNXHeader(b []byte, subtype uint32) []byte {
	b = binary.BigEndian.AppendUint32(b, NiciraExperimenter)
	return binary.BigEndian.AppendUint32(b, subtype)
}

// nxBodyOff is where a Nicira message's own body starts in the message.
const nxBodyOff = HeaderLen + 8

// SetPacketInFormat (NXT_SET_PACKET_IN_FORMAT) selects the packet-in
// message OVS sends; keyroute uses PacketInFormatNXT2.
type SetPacketInFormat struct{ Format uint32 }

func (*SetPacketInFormat) Type() MsgType { return TypeExperimenter }
func (*SetPacketInFormat) Experimenter() (uint32, uint32) {
	return NiciraExperimenter, nxtSetPacketInFormat
}
func (m *SetPacketInFormat) AppendBody(b []byte) ([]byte, error) {
	return binary.BigEndian.AppendUint32(appendNXHeader(b, nxtSetPacketInFormat), m.Format), nil
}
func (m *SetPacketInFormat) String() string {
	names := map[uint32]string{PacketInFormatStandard: "standard", PacketInFormatNXM: "nxt_packet_in", PacketInFormatNXT2: "nxt_packet_in2"}
	if n, ok := names[m.Format]; ok {
		return "NXT_SET_PACKET_IN_FORMAT format=" + n
	}
	return fmt.Sprintf("NXT_SET_PACKET_IN_FORMAT format=%d", m.Format)
}

// SetControllerID (NXT_SET_CONTROLLER_ID) sets the id that
// controller(id=N) actions use to address this connection.
type SetControllerID struct{ ID uint16 }

func (*SetControllerID) Type() MsgType { return TypeExperimenter }
func (*SetControllerID) Experimenter() (uint32, uint32) {
	return NiciraExperimenter, nxtSetControllerID
}
func (m *SetControllerID) AppendBody(b []byte) ([]byte, error) {
	b = append(appendNXHeader(b, nxtSetControllerID), 0, 0, 0, 0, 0, 0)
	return binary.BigEndian.AppendUint16(b, m.ID), nil
}
func (m *SetControllerID) String() string { return fmt.Sprintf("NXT_SET_CONTROLLER_ID id=%d", m.ID) }

// NXT_PACKET_IN2 property types (NXPINT_*).
const (
	nxpintPacket       = 0
	nxpintFullLen      = 1
	nxpintBufferID     = 2
	nxpintTableID      = 3
	nxpintCookie       = 4
	nxpintReason       = 5
	nxpintMetadata     = 6
	nxpintUserdata     = 7
	nxpintContinuation = 8
)

// PacketIn2 is NXT_PACKET_IN2, OVS's property-based packet-in. Metadata
// holds the packet's metadata fields (in_port, registers, tunnel fields...)
// as OVS reports them; Userdata is what the controller(userdata=...) action
// carried. Continuation is the opaque NXPINT_CONTINUATION property value
// of a paused packet (controller(pause)), kept so that re-encoding keeps
// the packet resumable. Properties OVS does not know are ignored, as OVS
// ignores them.
type PacketIn2 struct {
	Packet       []byte
	FullLen      uint32
	BufferID     uint32
	Table        uint8
	Cookie       uint64
	Reason       uint8
	Metadata     Match
	Userdata     []byte
	Continuation []byte
}

func (*PacketIn2) Type() MsgType                  { return TypeExperimenter }
func (*PacketIn2) Experimenter() (uint32, uint32) { return NiciraExperimenter, nxtPacketIn2 }

// msgAppendProp appends an ofp_prop_header property with value v, padded to 8.
func msgAppendProp(b []byte, typ uint16, v ...[]byte) ([]byte, error) {
	n := 4
	for _, p := range v {
		n += len(p)
	}
	if n > 0xffff {
		return b, fmt.Errorf("property %d of %d bytes", typ, n)
	}
	b = binary.BigEndian.AppendUint16(b, typ)
	b = binary.BigEndian.AppendUint16(b, uint16(n))
	for _, p := range v {
		b = append(b, p...)
	}
	return append(b, make([]byte, pad8(n)-n)...), nil
}

func (m *PacketIn2) AppendBody(b []byte) ([]byte, error) {
	start := len(b)
	b = appendNXHeader(b, nxtPacketIn2)
	var u32 [4]byte
	b, err := msgAppendProp(b, nxpintPacket, m.Packet)
	if err != nil {
		return b[:start], err
	}
	// FULL_LEN and BUFFER_ID are only present when they say something, as
	// OVS does it.
	if int64(m.FullLen) != int64(len(m.Packet)) {
		binary.BigEndian.PutUint32(u32[:], m.FullLen)
		b, _ = msgAppendProp(b, nxpintFullLen, u32[:])
	}
	if m.BufferID != NoBuffer {
		binary.BigEndian.PutUint32(u32[:], m.BufferID)
		b, _ = msgAppendProp(b, nxpintBufferID, u32[:])
	}
	b, _ = msgAppendProp(b, nxpintTableID, []byte{m.Table})
	b, _ = msgAppendProp(b, nxpintCookie, []byte{0, 0, 0, 0}, binary.BigEndian.AppendUint64(nil, m.Cookie))
	b, _ = msgAppendProp(b, nxpintReason, []byte{m.Reason})
	if len(m.Metadata.Fields) > 0 {
		var md []byte
		for _, o := range m.Metadata.Fields {
			if md, err = o.AppendTo(md); err != nil {
				return b[:start], fmt.Errorf("packet-in2 metadata: %w", err)
			}
		}
		if b, err = msgAppendProp(b, nxpintMetadata, md); err != nil {
			return b[:start], err
		}
	}
	if m.Userdata != nil {
		if b, err = msgAppendProp(b, nxpintUserdata, m.Userdata); err != nil {
			return b[:start], err
		}
	}
	if m.Continuation != nil {
		if b, err = msgAppendProp(b, nxpintContinuation, m.Continuation); err != nil {
			return b[:start], err
		}
	}
	return b, nil
}

// msgDecodeProps walks ofp_prop_header properties filling b, calling fn with
// each type, value (header and padding stripped) and value offset. off is
// b's offset in the message.
func msgDecodeProps(what string, b []byte, off int, fn func(typ uint16, v []byte, voff int) error) error {
	for i := 0; i < len(b); {
		if len(b)-i < 4 {
			return truncated(what+" property", off+i, 4, len(b)-i)
		}
		typ := binary.BigEndian.Uint16(b[i:])
		n := int(binary.BigEndian.Uint16(b[i+2:]))
		if n < 4 {
			return &DecodeError{What: what + " property", Offset: off + i + 2, Err: fmt.Errorf("length %d < 4", n)}
		}
		if pad8(n) > len(b)-i {
			return truncated(fmt.Sprintf("%s property %d", what, typ), off+i, pad8(n), len(b)-i)
		}
		if err := fn(typ, b[i+4:i+n], off+i+4); err != nil {
			return err
		}
		i += pad8(n)
	}
	return nil
}

func msgPropLen(what string, v []byte, voff, want int) error {
	if len(v) != want {
		return &DecodeError{What: what, Offset: voff - 2, Err: fmt.Errorf("value of %d bytes, want %d", len(v), want)}
	}
	return nil
}

func decodePacketIn2(body []byte) (Message, error) {
	m := &PacketIn2{BufferID: NoBuffer}
	fullLen := false
	err := msgDecodeProps("NXT_PACKET_IN2", body, nxBodyOff, func(typ uint16, v []byte, voff int) error {
		switch typ {
		case nxpintPacket:
			m.Packet = msgCopy(v)
		case nxpintFullLen, nxpintBufferID:
			if err := msgPropLen("NXT_PACKET_IN2 full_len/buffer_id", v, voff, 4); err != nil {
				return err
			}
			if typ == nxpintFullLen {
				m.FullLen, fullLen = binary.BigEndian.Uint32(v), true
			} else {
				m.BufferID = binary.BigEndian.Uint32(v)
			}
		case nxpintTableID, nxpintReason:
			// 8-bit values are read leniently, as OVS reads them: the
			// first byte of a value at least that long (senders pad
			// them to 4 bytes).
			if len(v) < 1 {
				return msgPropLen("NXT_PACKET_IN2 table_id/reason", v, voff, 1)
			}
			if typ == nxpintTableID {
				m.Table = v[0]
			} else {
				m.Reason = v[0]
			}
		case nxpintCookie:
			if err := msgPropLen("NXT_PACKET_IN2 cookie", v, voff, 12); err != nil {
				return err
			}
			m.Cookie = binary.BigEndian.Uint64(v[4:])
		case nxpintMetadata:
			for i := 0; i < len(v); {
				o, n, err := DecodeOXM(v[i:])
				if err != nil {
					msgShiftOffset(err, voff+i)
					return err
				}
				m.Metadata.Fields = append(m.Metadata.Fields, o)
				i += n
			}
		case nxpintUserdata:
			m.Userdata = msgCopy(v)
			if m.Userdata == nil {
				m.Userdata = []byte{}
			}
		case nxpintContinuation:
			m.Continuation = msgCopy(v)
			if m.Continuation == nil {
				m.Continuation = []byte{}
			}
		}
		// Unknown properties are skipped, as OVS skips them.
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("NXT_PACKET_IN2: %w", err)
	}
	if !fullLen {
		m.FullLen = uint32(len(m.Packet))
	}
	return m, nil
}

func (m *PacketIn2) String() string {
	s := fmt.Sprintf("NXT_PACKET_IN2 table_id=%d cookie=0x%x total_len=%d %v (via %s) data_len=%d",
		m.Table, m.Cookie, m.FullLen, &m.Metadata, packetInReasonName(m.Reason), len(m.Packet))
	if m.Userdata != nil {
		s += fmt.Sprintf(" userdata=%x", m.Userdata)
	}
	if m.BufferID != NoBuffer {
		s += fmt.Sprintf(" buffer=0x%08x", m.BufferID)
	}
	if m.Continuation != nil {
		s += fmt.Sprintf(" continuation of %d bytes", len(m.Continuation))
	}
	return s
}

func init() {
	registerExperimenterDecoder(NiciraExperimenter, nxtSetPacketInFormat, func(body []byte) (Message, error) {
		if len(body) < 4 {
			return nil, truncated("NXT_SET_PACKET_IN_FORMAT", nxBodyOff, 4, len(body))
		}
		return &SetPacketInFormat{Format: binary.BigEndian.Uint32(body)}, nil
	})
	registerExperimenterDecoder(NiciraExperimenter, nxtSetControllerID, func(body []byte) (Message, error) {
		if len(body) < 8 {
			return nil, truncated("NXT_SET_CONTROLLER_ID", nxBodyOff, 8, len(body))
		}
		return &SetControllerID{ID: binary.BigEndian.Uint16(body[6:])}, nil
	})
	registerExperimenterDecoder(NiciraExperimenter, nxtPacketIn2, decodePacketIn2)
}
