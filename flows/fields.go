package flows

import (
	"fmt"

	"github.com/keyroute/keyroute/openflow"
)

// RegField is a named bit range of a Nicira register (reg0..reg15) or of
// the OpenFlow metadata that the pipelines use to carry a value between
// actions or tables. Every such bit the builders touch is declared in this
// file, in Layout, so a new use cannot silently reuse bits another one
// still needs (TestRegFieldsDisjoint, TestBuildersUseDeclaredFields).
type RegField struct {
	Name string
	// Field is openflow.FieldReg[n] or openflow.FieldMetadata.
	Field *openflow.Field
	// Ofs is the lowest bit, Bits the width.
	Ofs, Bits int
}

// Subfield is f as move, load and learn address it (NXM_NX_REG0[0..15];
// the whole field prints as NXM_NX_REG0[]).
func (f RegField) Subfield() openflow.Subfield { return openflow.Bits(f.Field, f.Ofs, f.Bits) }

// Match matches f equal to v (a masked match on f's bits alone).
func (f RegField) Match(v uint64) openflow.OXM {
	n := f.Field.Len
	val, mask := make([]byte, n), make([]byte, n)
	bits := uint64(1)<<f.Bits - 1
	for i := 0; i < n; i++ {
		sh := uint(8 * (n - 1 - i))
		val[i] = byte((v & bits) << f.Ofs >> sh)
		mask[i] = byte(bits << f.Ofs >> sh)
	}
	return openflow.OXM{Field: f.Field, Value: val, Mask: mask}
}

func (f RegField) String() string {
	return fmt.Sprintf("%s (%s[%d..%d])", f.Name, f.Field.Name, f.Ofs, f.Ofs+f.Bits-1)
}

// The register and metadata layout.
var (
	// ARPSwap holds the request's arp_tpa while the ARP responder moves
	// arp_spa into it (arpReply); it lives within one action list.
	ARPSwap = RegField{Name: "arp_swap", Field: openflow.FieldReg[0], Ofs: 0, Bits: 32}
	// TunnelTooBig is 1 when a packet headed for VXLAN would not fit the
	// uplink once encapsulated (tunnelOut sets it, TunnelOut matches it).
	TunnelTooBig = RegField{Name: "tunnel_too_big", Field: openflow.FieldReg[1], Ofs: 0, Bits: 1}
)

// Layout lists every declared field.
var Layout = []RegField{ARPSwap, TunnelTooBig}
