// Package openflow owns keyroute's OpenFlow 1.3 wire codec, including the
// Nicira extensions OVS needs (NXM fields, NXAST actions, packet-in2,
// bundles). It encodes and decodes messages and prints flows in ovs-ofctl
// syntax; it does no I/O beyond framing messages off a reader.
package openflow

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// Version13 is the only OpenFlow version keyroute speaks.
const Version13 = 0x04

// HeaderLen is the length of the fixed OpenFlow header.
const HeaderLen = 8

// MaxMessageLen bounds a single message; the header's 16-bit length makes
// this the protocol's own limit, so a lying length cannot make us allocate
// more.
const MaxMessageLen = 0xffff

// MsgType is the OpenFlow 1.3 message type (ofp_type).
type MsgType uint8

// OpenFlow 1.3 message types.
const (
	TypeHello            MsgType = 0
	TypeError            MsgType = 1
	TypeEchoRequest      MsgType = 2
	TypeEchoReply        MsgType = 3
	TypeExperimenter     MsgType = 4
	TypeFeaturesRequest  MsgType = 5
	TypeFeaturesReply    MsgType = 6
	TypeGetConfigRequest MsgType = 7
	TypeGetConfigReply   MsgType = 8
	TypeSetConfig        MsgType = 9
	TypePacketIn         MsgType = 10
	TypeFlowRemoved      MsgType = 11
	TypePortStatus       MsgType = 12
	TypePacketOut        MsgType = 13
	TypeFlowMod          MsgType = 14
	TypeGroupMod         MsgType = 15
	TypePortMod          MsgType = 16
	TypeTableMod         MsgType = 17
	TypeMultipartRequest MsgType = 18
	TypeMultipartReply   MsgType = 19
	TypeBarrierRequest   MsgType = 20
	TypeBarrierReply     MsgType = 21
	TypeRoleRequest      MsgType = 24
	TypeRoleReply        MsgType = 25
	TypeGetAsyncRequest  MsgType = 26
	TypeGetAsyncReply    MsgType = 27
	TypeSetAsync         MsgType = 28
	TypeMeterMod         MsgType = 29
)

var msgTypeNames = map[MsgType]string{
	TypeHello: "HELLO", TypeError: "ERROR", TypeEchoRequest: "ECHO_REQUEST",
	TypeEchoReply: "ECHO_REPLY", TypeExperimenter: "EXPERIMENTER",
	TypeFeaturesRequest: "FEATURES_REQUEST", TypeFeaturesReply: "FEATURES_REPLY",
	TypeGetConfigRequest: "GET_CONFIG_REQUEST", TypeGetConfigReply: "GET_CONFIG_REPLY",
	TypeSetConfig: "SET_CONFIG", TypePacketIn: "PACKET_IN", TypeFlowRemoved: "FLOW_REMOVED",
	TypePortStatus: "PORT_STATUS", TypePacketOut: "PACKET_OUT", TypeFlowMod: "FLOW_MOD",
	TypeGroupMod: "GROUP_MOD", TypePortMod: "PORT_MOD", TypeTableMod: "TABLE_MOD",
	TypeMultipartRequest: "MULTIPART_REQUEST", TypeMultipartReply: "MULTIPART_REPLY",
	TypeBarrierRequest: "BARRIER_REQUEST", TypeBarrierReply: "BARRIER_REPLY",
	TypeRoleRequest: "ROLE_REQUEST", TypeRoleReply: "ROLE_REPLY",
	TypeGetAsyncRequest: "GET_ASYNC_REQUEST", TypeGetAsyncReply: "GET_ASYNC_REPLY",
	TypeSetAsync: "SET_ASYNC", TypeMeterMod: "METER_MOD",
}

func (t MsgType) String() string {
	if n, ok := msgTypeNames[t]; ok {
		return n
	}
	return fmt.Sprintf("TYPE_%d", uint8(t))
}

// NiciraExperimenter is the Nicira vendor id OVS uses for its extensions.
const NiciraExperimenter = 0x00002320

// ONFExperimenter is the Open Networking Foundation experimenter id (OF1.3
// bundles as OVS accepts them use it).
const ONFExperimenter = 0x4f4e4600

// Message is one OpenFlow message. The 8-byte header is handled by Marshal
// and Decode; a Message only knows its type and body.
type Message interface {
	// Type is the ofp_type written in the header.
	Type() MsgType
	// AppendBody appends the encoded body (everything after the header).
	AppendBody(b []byte) ([]byte, error)
}

// Experimenter is a message of type EXPERIMENTER; its body starts with the
// experimenter id and subtype, which AppendBody must write itself.
type Experimenter interface {
	Message
	Experimenter() (id uint32, subtype uint32)
}

// Header is the fixed OpenFlow header.
type Header struct {
	Version uint8
	Type    MsgType
	Length  uint16
	Xid     uint32
}

// ParseHeader reads the header at the start of b.
func ParseHeader(b []byte) (Header, error) {
	if len(b) < HeaderLen {
		return Header{}, &DecodeError{What: "header", Offset: 0, Err: fmt.Errorf("need %d bytes, have %d", HeaderLen, len(b))}
	}
	h := Header{Version: b[0], Type: MsgType(b[1]), Length: binary.BigEndian.Uint16(b[2:]), Xid: binary.BigEndian.Uint32(b[4:])}
	if h.Length < HeaderLen {
		return h, &DecodeError{What: "header", Offset: 2, Err: fmt.Errorf("length %d shorter than the header", h.Length)}
	}
	return h, nil
}

// Marshal encodes m with the given xid into a complete message.
func Marshal(m Message, xid uint32) ([]byte, error) {
	return AppendMessage(nil, m, xid)
}

// AppendMessage appends the complete encoding of m (header included) to b.
func AppendMessage(b []byte, m Message, xid uint32) ([]byte, error) {
	start := len(b)
	b = append(b, Version13, byte(m.Type()), 0, 0, 0, 0, 0, 0)
	binary.BigEndian.PutUint32(b[start+4:], xid)
	b, err := m.AppendBody(b)
	if err != nil {
		return b[:start], fmt.Errorf("encode %s: %w", m.Type(), err)
	}
	n := len(b) - start
	if n > MaxMessageLen {
		return b[:start], fmt.Errorf("encode %s: %d bytes exceeds the OpenFlow limit of %d", m.Type(), n, MaxMessageLen)
	}
	binary.BigEndian.PutUint16(b[start+2:], uint16(n))
	return b, nil
}

// DecodeError says what failed to decode and where (byte offset within the
// message).
type DecodeError struct {
	What   string
	Offset int
	Err    error
}

func (e *DecodeError) Error() string {
	return fmt.Sprintf("openflow: decode %s at offset %d: %v", e.What, e.Offset, e.Err)
}

func (e *DecodeError) Unwrap() error { return e.Err }

// ErrTruncated is wrapped by decode errors caused by input that ends early.
var ErrTruncated = errors.New("truncated")

// truncated builds the DecodeError for input that ends before need bytes.
func truncated(what string, off, need, have int) error {
	return &DecodeError{What: what, Offset: off, Err: fmt.Errorf("%w: need %d bytes, have %d", ErrTruncated, need, have)}
}

// Unknown is a message whose type (or experimenter subtype) keyroute does not
// decode. Decode returns it without error so callers can skip and count it.
type Unknown struct {
	MsgType MsgType
	Body    []byte
}

func (u *Unknown) Type() MsgType                       { return u.MsgType }
func (u *Unknown) AppendBody(b []byte) ([]byte, error) { return append(b, u.Body...), nil }

// decoders maps a message type to its body decoder. Files register their
// types in init so the codec grows without one central switch.
var decoders = map[MsgType]func(body []byte) (Message, error){}

// experimenterDecoders maps (experimenter id, subtype) to a body decoder; the
// body passed excludes the 8 bytes of experimenter id and subtype.
var experimenterDecoders = map[[2]uint32]func(body []byte) (Message, error){}

func registerDecoder(t MsgType, fn func(body []byte) (Message, error)) { decoders[t] = fn }

func registerExperimenterDecoder(id, subtype uint32, fn func(body []byte) (Message, error)) {
	experimenterDecoders[[2]uint32{id, subtype}] = fn
}

// Decode decodes one complete message (header included). b must hold exactly
// the header's length.
func Decode(b []byte) (Header, Message, error) {
	h, err := ParseHeader(b)
	if err != nil {
		return h, nil, err
	}
	if h.Version != Version13 && h.Type != TypeHello && h.Type != TypeError {
		return h, nil, &DecodeError{What: "header", Offset: 0, Err: fmt.Errorf("version 0x%02x, want 0x%02x (OpenFlow 1.3)", h.Version, Version13)}
	}
	if int(h.Length) != len(b) {
		return h, nil, &DecodeError{What: h.Type.String(), Offset: 2, Err: fmt.Errorf("header length %d but %d bytes given", h.Length, len(b))}
	}
	body := b[HeaderLen:]
	if h.Type == TypeExperimenter {
		if len(body) < 8 {
			return h, nil, truncated("EXPERIMENTER", HeaderLen, 8, len(body))
		}
		key := [2]uint32{binary.BigEndian.Uint32(body), binary.BigEndian.Uint32(body[4:])}
		if fn, ok := experimenterDecoders[key]; ok {
			m, err := fn(body[8:])
			return h, m, err
		}
		return h, &Unknown{MsgType: h.Type, Body: append([]byte(nil), body...)}, nil
	}
	fn, ok := decoders[h.Type]
	if !ok {
		return h, &Unknown{MsgType: h.Type, Body: append([]byte(nil), body...)}, nil
	}
	m, err := fn(body)
	if err == nil {
		helloFromHeader(h, m)
	}
	return h, m, err
}

// Reader frames messages off a byte stream. It tolerates partial reads and
// back-to-back messages and never allocates more than one maximum-size
// message buffer.
type Reader struct {
	r   io.Reader
	buf []byte
}

// NewReader returns a Reader on r.
func NewReader(r io.Reader) *Reader { return &Reader{r: r, buf: make([]byte, MaxMessageLen)} }

// ReadRaw returns the next complete message's bytes; they are valid until
// the next call.
func (r *Reader) ReadRaw() ([]byte, error) {
	if _, err := io.ReadFull(r.r, r.buf[:HeaderLen]); err != nil {
		return nil, err
	}
	h, err := ParseHeader(r.buf[:HeaderLen])
	if err != nil {
		return nil, err
	}
	if _, err := io.ReadFull(r.r, r.buf[HeaderLen:h.Length]); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return nil, fmt.Errorf("read %s body of %d bytes: %w", h.Type, h.Length, err)
	}
	return r.buf[:h.Length], nil
}

// Read returns the next decoded message. A decode error is returned with the
// header so the caller can log, count and go on reading: framing stays intact.
func (r *Reader) Read() (Header, Message, error) {
	raw, err := r.ReadRaw()
	if err != nil {
		return Header{}, nil, err
	}
	return Decode(raw)
}

// pad8 returns n rounded up to a multiple of 8.
func pad8(n int) int { return (n + 7) &^ 7 }
