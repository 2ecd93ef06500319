package openflow

import (
	"encoding/binary"
	"fmt"
	"strings"
)

// helloElemVersionBitmap is OFPHET_VERSIONBITMAP.
const helloElemVersionBitmap = 1

// Hello is OFPT_HELLO. Versions lists the OpenFlow wire versions the sender
// offers (0x04 = 1.3); it is sent as a version-bitmap element. Elements
// holds any other elements raw (receivers ignore types they do not know),
// sent after the bitmap.
type Hello struct {
	Versions []uint8
	Elements []byte
}

// NewHello returns the HELLO keyroute sends: OpenFlow 1.3 only.
func NewHello() *Hello { return &Hello{Versions: []uint8{Version13}} }

func (*Hello) Type() MsgType { return TypeHello }

// Supports13 reports whether the peer offered OpenFlow 1.3.
func (h *Hello) Supports13() bool {
	for _, v := range h.Versions {
		if v == Version13 {
			return true
		}
	}
	return false
}

// helloMaxVersion is the highest version a bitmap of 8 words can offer.
const helloMaxVersion = 255

func (h *Hello) AppendBody(b []byte) ([]byte, error) {
	// A bare HELLO would mean "every version up to the header's"; say
	// what is offered instead.
	if len(h.Versions) == 0 {
		return b, fmt.Errorf("hello offers no version")
	}
	var words [helloMaxVersion/32 + 1]uint32
	n := 0
	for _, v := range h.Versions {
		if v == 0 {
			return b, fmt.Errorf("hello: version 0 does not exist")
		}
		words[v/32] |= 1 << (v % 32)
		n = max(n, int(v/32)+1)
	}
	elen := 4 + 4*n
	b = binary.BigEndian.AppendUint16(b, helloElemVersionBitmap)
	b = binary.BigEndian.AppendUint16(b, uint16(elen))
	for _, w := range words[:n] {
		b = binary.BigEndian.AppendUint32(b, w)
	}
	b = append(b, make([]byte, pad8(elen)-elen)...)
	return append(b, h.Elements...), nil
}

func decodeHello(body []byte) (Message, error) {
	h := &Hello{}
	var words [helloMaxVersion/32 + 1]uint32
	for off := 0; off < len(body); {
		if len(body)-off < 4 {
			return nil, truncated("HELLO element", HeaderLen+off, 4, len(body)-off)
		}
		typ := binary.BigEndian.Uint16(body[off:])
		n := int(binary.BigEndian.Uint16(body[off+2:]))
		if n < 4 {
			return nil, &DecodeError{What: "HELLO element", Offset: HeaderLen + off + 2, Err: fmt.Errorf("length %d < 4", n)}
		}
		if n > len(body)-off {
			return nil, truncated("HELLO element", HeaderLen+off, n, len(body)-off)
		}
		end := min(off+pad8(n), len(body))
		if typ != helloElemVersionBitmap {
			h.Elements = append(h.Elements, body[off:end]...)
		} else {
			// Several bitmaps offer their union.
			for i, w := 0, off+4; w+4 <= off+n && i < len(words); i, w = i+1, w+4 {
				words[i] |= binary.BigEndian.Uint32(body[w:])
			}
		}
		// Elements are padded to 8 bytes; tolerate a missing final pad.
		off = end
	}
	for v := 1; v <= helloMaxVersion; v++ { // bit 0 names no version
		if words[v/32]&(1<<(v%32)) != 0 {
			h.Versions = append(h.Versions, uint8(v))
		}
	}
	return h, nil
}

// helloFromHeader fills in the versions of a HELLO without a bitmap: per the
// spec such a peer supports every version up to the one in its header.
func helloFromHeader(h Header, m Message) {
	if hm, ok := m.(*Hello); ok && len(hm.Versions) == 0 {
		for v := uint8(1); v <= h.Version && v != 0; v++ {
			hm.Versions = append(hm.Versions, v)
		}
	}
}

func msgVersionName(v uint8) string {
	if v >= 1 && v <= 7 {
		return fmt.Sprintf("OF1.%d", v-1)
	}
	return fmt.Sprintf("0x%02x", v)
}

func (h *Hello) String() string {
	names := make([]string, len(h.Versions))
	for i, v := range h.Versions {
		names[i] = msgVersionName(v)
	}
	return "HELLO versions=" + strings.Join(names, ",")
}

func init() { registerDecoder(TypeHello, decodeHello) }
