package openflow

import (
	"encoding/binary"
	"fmt"
)

// OXM classes.
const (
	OXMClassNXM0          = 0x0000 // Nicira NXM_OF_* fields
	OXMClassNXM1          = 0x0001 // Nicira NXM_NX_* fields (tun_src, regs, pkt_mark...)
	OXMClassOpenFlowBasic = 0x8000
	OXMClassExperimenter  = 0xffff
)

// Field describes one match field: its wire identity and the name ovs-ofctl
// prints for it.
type Field struct {
	// Name is the ovs-ofctl name used in String(), e.g. "nw_src", "tun_dst".
	Name string
	// Class and ID identify the field on the wire (oxm_class, oxm_field).
	Class uint16
	ID    uint8
	// Experimenter is the experimenter id for Class 0xffff fields.
	Experimenter uint32
	// Len is the value length in bytes.
	Len int
	// Maskable says whether OVS accepts a mask for the field.
	Maskable bool
}

type fieldKey struct {
	class uint16
	id    uint8
	exp   uint32
}

var fieldsByKey = map[fieldKey]*Field{}

// registerField adds f to the decode table and returns it, so field
// variables can be declared as `var FieldX = registerField(&Field{...})`.
func registerField(f *Field) *Field {
	fieldsByKey[fieldKey{f.Class, f.ID, f.Experimenter}] = f
	return f
}

// OXM is one match field with its value and optional mask (nil = exact).
// Value and Mask are Field.Len bytes long, network byte order.
type OXM struct {
	Field *Field
	Value []byte
	Mask  []byte
}

// AppendTo appends the TLV encoding of o.
func (o OXM) AppendTo(b []byte) ([]byte, error) {
	f := o.Field
	if len(o.Value) != f.Len {
		return b, fmt.Errorf("field %s: value is %d bytes, want %d", f.Name, len(o.Value), f.Len)
	}
	hasMask := o.Mask != nil
	if hasMask && len(o.Mask) != f.Len {
		return b, fmt.Errorf("field %s: mask is %d bytes, want %d", f.Name, len(o.Mask), f.Len)
	}
	if hasMask && !f.Maskable {
		return b, fmt.Errorf("field %s cannot be masked", f.Name)
	}
	plen := f.Len
	if hasMask {
		plen *= 2
	}
	if f.Class == OXMClassExperimenter {
		plen += 4
	}
	fm := f.ID << 1
	if hasMask {
		fm |= 1
	}
	b = binary.BigEndian.AppendUint16(b, f.Class)
	b = append(b, fm, byte(plen))
	if f.Class == OXMClassExperimenter {
		b = binary.BigEndian.AppendUint32(b, f.Experimenter)
	}
	b = append(b, o.Value...)
	if hasMask {
		b = append(b, o.Mask...)
	}
	return b, nil
}

// DecodeOXM decodes one OXM TLV at the start of b and returns it with the
// number of bytes consumed. An unknown field decodes to a synthetic Field
// named "oxm(class:field)" so callers can still print it.
func DecodeOXM(b []byte) (OXM, int, error) {
	if len(b) < 4 {
		return OXM{}, 0, truncated("oxm header", 0, 4, len(b))
	}
	class := binary.BigEndian.Uint16(b)
	id := b[2] >> 1
	hasMask := b[2]&1 == 1
	plen := int(b[3])
	if len(b) < 4+plen {
		return OXM{}, 0, truncated("oxm value", 4, plen, len(b)-4)
	}
	p := b[4 : 4+plen]
	var exp uint32
	if class == OXMClassExperimenter {
		if plen < 4 {
			return OXM{}, 0, &DecodeError{What: "oxm", Offset: 3, Err: fmt.Errorf("experimenter field with payload %d < 4", plen)}
		}
		exp = binary.BigEndian.Uint32(p)
		p = p[4:]
	}
	vlen := len(p)
	if hasMask {
		if vlen%2 != 0 {
			return OXM{}, 0, &DecodeError{What: "oxm", Offset: 3, Err: fmt.Errorf("masked field with odd payload length %d", vlen)}
		}
		vlen /= 2
	}
	f, ok := fieldsByKey[fieldKey{class, id, exp}]
	if !ok {
		f = &Field{Name: fmt.Sprintf("oxm(0x%04x:%d)", class, id), Class: class, ID: id, Experimenter: exp, Len: vlen, Maskable: true}
	} else if f.Len != vlen {
		return OXM{}, 0, &DecodeError{What: "oxm " + f.Name, Offset: 3, Err: fmt.Errorf("value length %d, want %d", vlen, f.Len)}
	} else if hasMask && !f.Maskable {
		return OXM{}, 0, &DecodeError{What: "oxm " + f.Name, Offset: 2, Err: fmt.Errorf("field %s cannot be masked", f.Name)}
	}
	o := OXM{Field: f, Value: append([]byte(nil), p[:vlen]...)}
	if hasMask {
		o.Mask = append([]byte(nil), p[vlen:2*vlen]...)
	}
	return o, 4 + plen, nil
}

// Match is an OpenFlow 1.3 OXM match (ofp_match of type OFPMT_OXM).
// Field order is preserved as given, except that encoding moves a field
// after its prerequisite (eth_type before L3 fields, ip_proto before L4
// fields) when it came first: OVS rejects such a match (BAD_PREREQ).
type Match struct {
	Fields []OXM
}

const matchTypeOXM = 1

// AppendTo appends the ofp_match encoding (with padding to 8 bytes).
func (m Match) AppendTo(b []byte) ([]byte, error) {
	start := len(b)
	b = append(b, 0, matchTypeOXM, 0, 0)
	var err error
	var idx [64]int
	for _, i := range prereqOrder(m.Fields, idx[:0]) {
		o := m.Fields[i]
		if b, err = o.AppendTo(b); err != nil {
			return b[:start], fmt.Errorf("match: %w", err)
		}
	}
	n := len(b) - start
	binary.BigEndian.PutUint16(b[start+2:], uint16(n))
	for i := n; i < pad8(n); i++ {
		b = append(b, 0)
	}
	return b, nil
}

// DecodeMatch decodes an ofp_match at the start of b and returns it with the
// number of bytes consumed (padding included).
func DecodeMatch(b []byte) (Match, int, error) {
	if len(b) < 4 {
		return Match{}, 0, truncated("match", 0, 4, len(b))
	}
	typ := binary.BigEndian.Uint16(b)
	n := int(binary.BigEndian.Uint16(b[2:]))
	if typ != matchTypeOXM {
		return Match{}, 0, &DecodeError{What: "match", Offset: 0, Err: fmt.Errorf("type %d, want OXM (1)", typ)}
	}
	if n < 4 {
		return Match{}, 0, &DecodeError{What: "match", Offset: 2, Err: fmt.Errorf("length %d < 4", n)}
	}
	if len(b) < pad8(n) {
		return Match{}, 0, truncated("match", 0, pad8(n), len(b))
	}
	var m Match
	for off := 4; off < n; {
		o, used, err := DecodeOXM(b[off:n])
		if err != nil {
			if de, ok := err.(*DecodeError); ok {
				de.Offset += off
			}
			return Match{}, 0, err
		}
		m.Fields = append(m.Fields, o)
		off += used
	}
	return m, pad8(n), nil
}
