package openflow

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
)

// valueFormat is how ovs-ofctl prints a field's value in set_field and in
// learn immediates (meta-flow's "Formatting:" attribute).
type valueFormat uint8

const (
	fmtDecimal valueFormat = iota
	fmtHex
	fmtEthernet
	fmtIPv4
	fmtIPv6
	fmtPort     // OpenFlow port number or reserved port name
	fmtPort16   // 16-bit (OpenFlow 1.0 style) port, as NXM_OF_IN_PORT
	fmtTunFlags // "+oam" / "-oam" flags
)

// fieldMeta is what OVS prints for a field outside a match: the
// NXM/OXM name of its first-listed header (used by move, load and learn
// subfields, "NXM_OF_ETH_SRC[]") and its value format.
type fieldMeta struct {
	nxmName string
	format  valueFormat
	bits    int // OVS's n_bits when narrower than the value's bytes
}

var fieldMetas = map[*Field]fieldMeta{}

// fieldBits is f's width in bits as OVS counts it for subfields (ip_dscp
// is 6 bits wide although its OXM value is a byte).
func fieldBits(f *Field) int {
	if m, ok := fieldMetas[f]; ok && m.bits != 0 {
		return m.bits
	}
	return f.Len * 8
}

func init() {
	for f, bits := range map[*Field]int{FieldIPDSCP: 6, FieldIPECN: 2, FieldIPv6Label: 20, FieldVLANVID: 12, FieldTunFlags: 1} {
		m := fieldMetas[f]
		m.bits = bits
		fieldMetas[f] = m
	}
}

// defField registers a field with OVS's wire identity for OpenFlow 1.3 (the
// header OVS itself puts in OF1.3 matches and set_field actions).
func defField(name, nxmName string, class uint16, id uint8, n int, maskable bool, f valueFormat) *Field {
	fld := registerField(&Field{Name: name, Class: class, ID: id, Len: n, Maskable: maskable})
	fieldMetas[fld] = fieldMeta{nxmName: nxmName, format: f}
	return fld
}

// Registered fields. Field.Name is OVS's field name (what set_field prints,
// "ip_src", "tcp_dst"); match printing uses ovs-ofctl's match names instead
// (nw_src, tp_dst), see match_format.go.
var (
	FieldInPort     = defField("in_port_oxm", "OXM_OF_IN_PORT", OXMClassOpenFlowBasic, 0, 4, false, fmtPort)
	FieldMetadata   = defField("metadata", "OXM_OF_METADATA", OXMClassOpenFlowBasic, 2, 8, true, fmtHex)
	FieldEthDst     = defField("eth_dst", "NXM_OF_ETH_DST", OXMClassOpenFlowBasic, 3, 6, true, fmtEthernet)
	FieldEthSrc     = defField("eth_src", "NXM_OF_ETH_SRC", OXMClassOpenFlowBasic, 4, 6, true, fmtEthernet)
	FieldEthType    = defField("eth_type", "NXM_OF_ETH_TYPE", OXMClassOpenFlowBasic, 5, 2, false, fmtHex)
	FieldVLANVID    = defField("vlan_vid", "OXM_OF_VLAN_VID", OXMClassOpenFlowBasic, 6, 2, true, fmtDecimal)
	FieldIPDSCP     = defField("ip_dscp", "OXM_OF_IP_DSCP", OXMClassOpenFlowBasic, 8, 1, false, fmtDecimal)
	FieldIPECN      = defField("nw_ecn", "NXM_NX_IP_ECN", OXMClassOpenFlowBasic, 9, 1, false, fmtDecimal)
	FieldIPProto    = defField("nw_proto", "NXM_OF_IP_PROTO", OXMClassOpenFlowBasic, 10, 1, false, fmtDecimal)
	FieldIPv4Src    = defField("ip_src", "NXM_OF_IP_SRC", OXMClassOpenFlowBasic, 11, 4, true, fmtIPv4)
	FieldIPv4Dst    = defField("ip_dst", "NXM_OF_IP_DST", OXMClassOpenFlowBasic, 12, 4, true, fmtIPv4)
	FieldTCPSrc     = defField("tcp_src", "NXM_OF_TCP_SRC", OXMClassOpenFlowBasic, 13, 2, true, fmtDecimal)
	FieldTCPDst     = defField("tcp_dst", "NXM_OF_TCP_DST", OXMClassOpenFlowBasic, 14, 2, true, fmtDecimal)
	FieldUDPSrc     = defField("udp_src", "NXM_OF_UDP_SRC", OXMClassOpenFlowBasic, 15, 2, true, fmtDecimal)
	FieldUDPDst     = defField("udp_dst", "NXM_OF_UDP_DST", OXMClassOpenFlowBasic, 16, 2, true, fmtDecimal)
	FieldSCTPSrc    = defField("sctp_src", "OXM_OF_SCTP_SRC", OXMClassOpenFlowBasic, 17, 2, true, fmtDecimal)
	FieldSCTPDst    = defField("sctp_dst", "OXM_OF_SCTP_DST", OXMClassOpenFlowBasic, 18, 2, true, fmtDecimal)
	FieldICMPv4Type = defField("icmp_type", "NXM_OF_ICMP_TYPE", OXMClassOpenFlowBasic, 19, 1, false, fmtDecimal)
	FieldICMPv4Code = defField("icmp_code", "NXM_OF_ICMP_CODE", OXMClassOpenFlowBasic, 20, 1, false, fmtDecimal)
	FieldARPOp      = defField("arp_op", "NXM_OF_ARP_OP", OXMClassOpenFlowBasic, 21, 2, false, fmtDecimal)
	FieldARPSPA     = defField("arp_spa", "NXM_OF_ARP_SPA", OXMClassOpenFlowBasic, 22, 4, true, fmtIPv4)
	FieldARPTPA     = defField("arp_tpa", "NXM_OF_ARP_TPA", OXMClassOpenFlowBasic, 23, 4, true, fmtIPv4)
	FieldARPSHA     = defField("arp_sha", "NXM_NX_ARP_SHA", OXMClassOpenFlowBasic, 24, 6, true, fmtEthernet)
	FieldARPTHA     = defField("arp_tha", "NXM_NX_ARP_THA", OXMClassOpenFlowBasic, 25, 6, true, fmtEthernet)
	FieldIPv6Src    = defField("ipv6_src", "NXM_NX_IPV6_SRC", OXMClassOpenFlowBasic, 26, 16, true, fmtIPv6)
	FieldIPv6Dst    = defField("ipv6_dst", "NXM_NX_IPV6_DST", OXMClassOpenFlowBasic, 27, 16, true, fmtIPv6)
	FieldIPv6Label  = defField("ipv6_label", "NXM_NX_IPV6_LABEL", OXMClassOpenFlowBasic, 28, 4, true, fmtHex)
	FieldICMPv6Type = defField("icmpv6_type", "NXM_NX_ICMPV6_TYPE", OXMClassOpenFlowBasic, 29, 1, false, fmtDecimal)
	FieldICMPv6Code = defField("icmpv6_code", "NXM_NX_ICMPV6_CODE", OXMClassOpenFlowBasic, 30, 1, false, fmtDecimal)
	FieldTunnelID   = defField("tun_id", "NXM_NX_TUN_ID", OXMClassOpenFlowBasic, 38, 8, true, fmtHex)

	// FieldNXInPort is the 16-bit NXM_OF_IN_PORT, which OVS uses in move,
	// load and learn (e.g. learn's output:NXM_OF_IN_PORT[]).
	FieldNXInPort = defField("in_port", "NXM_OF_IN_PORT", OXMClassNXM0, 0, 2, false, fmtPort16)

	FieldTunSrc   = defField("tun_src", "NXM_NX_TUN_IPV4_SRC", OXMClassNXM1, 31, 4, true, fmtIPv4)
	FieldTunDst   = defField("tun_dst", "NXM_NX_TUN_IPV4_DST", OXMClassNXM1, 32, 4, true, fmtIPv4)
	FieldPktMark  = defField("pkt_mark", "NXM_NX_PKT_MARK", OXMClassNXM1, 33, 4, true, fmtHex)
	FieldTunFlags = defField("tun_flags", "NXM_NX_TUN_FLAGS", OXMClassNXM1, 104, 2, true, fmtTunFlags)

	// FieldReg holds the Nicira registers reg0..reg15 (NXM_NX_REGn).
	FieldReg = func() (r [16]*Field) {
		for i := range r {
			r[i] = defField(fmt.Sprintf("reg%d", i), fmt.Sprintf("NXM_NX_REG%d", i), OXMClassNXM1, uint8(i), 4, true, fmtHex)
		}
		return r
	}()
)

// TunFlagOAM is the only tun_flags bit OVS exposes (a VXLAN/Geneve OAM frame).
const TunFlagOAM uint16 = 1

// VLANPresent is OFPVID_PRESENT: set in a vlan_vid value to match (or set)
// a tagged frame's VID.
const VLANPresent uint16 = 0x1000

// badField stands in for a field a constructor cannot name (a register
// number out of range): encoding an OXM on it fails with its name.
func badField(name string) *Field { return &Field{Name: name, Len: -1} }

func u8(f *Field, v uint8) OXM   { return OXM{Field: f, Value: []byte{v}} }
func u16(f *Field, v uint16) OXM { return OXM{Field: f, Value: binary.BigEndian.AppendUint16(nil, v)} }
func u32(f *Field, v uint32) OXM { return OXM{Field: f, Value: binary.BigEndian.AppendUint32(nil, v)} }
func u64(f *Field, v uint64) OXM { return OXM{Field: f, Value: binary.BigEndian.AppendUint64(nil, v)} }

func u16m(f *Field, v, m uint16) OXM {
	o := u16(f, v&m)
	o.Mask = binary.BigEndian.AppendUint16(nil, m)
	return o
}

func u32m(f *Field, v, m uint32) OXM {
	o := u32(f, v&m)
	o.Mask = binary.BigEndian.AppendUint32(nil, m)
	return o
}

func u64m(f *Field, v, m uint64) OXM {
	o := u64(f, v&m)
	o.Mask = binary.BigEndian.AppendUint64(nil, m)
	return o
}

// ipv4Bytes returns a's 4 bytes, or a's full slice (which then fails the
// length check on encode) when a is not IPv4.
func ipv4Bytes(a netip.Addr) []byte {
	if a.Is4In6() {
		a = a.Unmap()
	}
	return a.AsSlice()
}

// ipv6Bytes returns a's 16 bytes; an IPv4 address gives 4, which encoding
// rejects with the field's name.
func ipv6Bytes(a netip.Addr) []byte { return a.AsSlice() }

// prefixOXM builds a masked address match; the mask is the prefix length.
func prefixOXM(f *Field, p netip.Prefix) OXM {
	p = p.Masked()
	var v []byte
	if f.Len == 4 {
		v = ipv4Bytes(p.Addr())
	} else {
		v = ipv6Bytes(p.Addr())
	}
	m := make([]byte, len(v))
	for i := 0; i < p.Bits() && i/8 < len(m); i++ {
		m[i/8] |= 0x80 >> (i % 8)
	}
	if !p.IsValid() {
		m = nil
	}
	return OXM{Field: f, Value: v, Mask: m}
}

func ethOXM(f *Field, a net.HardwareAddr) OXM {
	return OXM{Field: f, Value: append([]byte(nil), a...)}
}

func ethOXMMasked(f *Field, a, m net.HardwareAddr) OXM {
	o := OXM{Field: f, Value: append([]byte(nil), a...), Mask: append([]byte(nil), m...)}
	if len(o.Value) == len(o.Mask) {
		for i := range o.Value {
			o.Value[i] &= o.Mask[i]
		}
	}
	return o
}

// Match constructors. Naming: Match<Field>(value) for an exact match and
// Match<Field>Masked(value, mask) (or a netip.Prefix for addresses) for a
// masked one. Masked constructors store value&mask, as OVS does. The same
// OXMs serve as set_field values (NewSetField).

func MatchInPort(port uint32) OXM { return u32(FieldInPort, port) }

// MatchNXInPort is in_port in its 16-bit NXM_OF_IN_PORT form. OVS cannot
// execute set_field on OXM_OF_IN_PORT; use NewSetField(MatchNXInPort(p)).
func MatchNXInPort(port uint32) OXM {
	p, err := port16(port)
	if err != nil {
		return u32(FieldNXInPort, port) // wrong length: encoding reports it
	}
	return u16(FieldNXInPort, p)
}
func MatchMetadata(v uint64) OXM          { return u64(FieldMetadata, v) }
func MatchMetadataMasked(v, m uint64) OXM { return u64m(FieldMetadata, v, m) }
func MatchEthDst(a net.HardwareAddr) OXM  { return ethOXM(FieldEthDst, a) }
func MatchEthDstMasked(a, m net.HardwareAddr) OXM {
	return ethOXMMasked(FieldEthDst, a, m)
}
func MatchEthSrc(a net.HardwareAddr) OXM { return ethOXM(FieldEthSrc, a) }
func MatchEthSrcMasked(a, m net.HardwareAddr) OXM {
	return ethOXMMasked(FieldEthSrc, a, m)
}
func MatchEthType(t uint16) OXM { return u16(FieldEthType, t) }

// MatchVLANVID matches a VID; v must include VLANPresent to match tagged
// frames (OpenFlow 1.3 semantics), v=0 matches untagged frames.
func MatchVLANVID(v uint16) OXM          { return u16(FieldVLANVID, v) }
func MatchVLANVIDMasked(v, m uint16) OXM { return u16m(FieldVLANVID, v, m) }

// MatchIPDSCP matches the 6-bit DSCP (not the TOS byte).
func MatchIPDSCP(dscp uint8) OXM { return u8(FieldIPDSCP, dscp) }
func MatchIPECN(ecn uint8) OXM   { return u8(FieldIPECN, ecn) }
func MatchIPProto(p uint8) OXM   { return u8(FieldIPProto, p) }

func MatchIPv4Src(a netip.Addr) OXM         { return OXM{Field: FieldIPv4Src, Value: ipv4Bytes(a)} }
func MatchIPv4SrcMasked(p netip.Prefix) OXM { return prefixOXM(FieldIPv4Src, p) }
func MatchIPv4Dst(a netip.Addr) OXM         { return OXM{Field: FieldIPv4Dst, Value: ipv4Bytes(a)} }
func MatchIPv4DstMasked(p netip.Prefix) OXM { return prefixOXM(FieldIPv4Dst, p) }
func MatchIPv6Src(a netip.Addr) OXM         { return OXM{Field: FieldIPv6Src, Value: ipv6Bytes(a)} }
func MatchIPv6SrcMasked(p netip.Prefix) OXM { return prefixOXM(FieldIPv6Src, p) }
func MatchIPv6Dst(a netip.Addr) OXM         { return OXM{Field: FieldIPv6Dst, Value: ipv6Bytes(a)} }
func MatchIPv6DstMasked(p netip.Prefix) OXM { return prefixOXM(FieldIPv6Dst, p) }
func MatchIPv6Label(l uint32) OXM           { return u32(FieldIPv6Label, l) }
func MatchIPv6LabelMasked(l, m uint32) OXM  { return u32m(FieldIPv6Label, l, m) }
func MatchTCPSrc(p uint16) OXM              { return u16(FieldTCPSrc, p) }
func MatchTCPSrcMasked(p, m uint16) OXM     { return u16m(FieldTCPSrc, p, m) }
func MatchTCPDst(p uint16) OXM              { return u16(FieldTCPDst, p) }
func MatchTCPDstMasked(p, m uint16) OXM     { return u16m(FieldTCPDst, p, m) }
func MatchUDPSrc(p uint16) OXM              { return u16(FieldUDPSrc, p) }
func MatchUDPSrcMasked(p, m uint16) OXM     { return u16m(FieldUDPSrc, p, m) }
func MatchUDPDst(p uint16) OXM              { return u16(FieldUDPDst, p) }
func MatchUDPDstMasked(p, m uint16) OXM     { return u16m(FieldUDPDst, p, m) }
func MatchSCTPSrc(p uint16) OXM             { return u16(FieldSCTPSrc, p) }
func MatchSCTPSrcMasked(p, m uint16) OXM    { return u16m(FieldSCTPSrc, p, m) }
func MatchSCTPDst(p uint16) OXM             { return u16(FieldSCTPDst, p) }
func MatchSCTPDstMasked(p, m uint16) OXM    { return u16m(FieldSCTPDst, p, m) }
func MatchICMPv4Type(t uint8) OXM           { return u8(FieldICMPv4Type, t) }
func MatchICMPv4Code(c uint8) OXM           { return u8(FieldICMPv4Code, c) }
func MatchICMPv6Type(t uint8) OXM           { return u8(FieldICMPv6Type, t) }
func MatchICMPv6Code(c uint8) OXM           { return u8(FieldICMPv6Code, c) }
func MatchARPOp(op uint16) OXM              { return u16(FieldARPOp, op) }
func MatchARPSPA(a netip.Addr) OXM          { return OXM{Field: FieldARPSPA, Value: ipv4Bytes(a)} }
func MatchARPSPAMasked(p netip.Prefix) OXM  { return prefixOXM(FieldARPSPA, p) }
func MatchARPTPA(a netip.Addr) OXM          { return OXM{Field: FieldARPTPA, Value: ipv4Bytes(a)} }
func MatchARPTPAMasked(p netip.Prefix) OXM  { return prefixOXM(FieldARPTPA, p) }
func MatchARPSHA(a net.HardwareAddr) OXM    { return ethOXM(FieldARPSHA, a) }
func MatchARPSHAMasked(a, m net.HardwareAddr) OXM {
	return ethOXMMasked(FieldARPSHA, a, m)
}
func MatchARPTHA(a net.HardwareAddr) OXM { return ethOXM(FieldARPTHA, a) }
func MatchARPTHAMasked(a, m net.HardwareAddr) OXM {
	return ethOXMMasked(FieldARPTHA, a, m)
}
func MatchTunnelID(id uint64) OXM          { return u64(FieldTunnelID, id) }
func MatchTunnelIDMasked(id, m uint64) OXM { return u64m(FieldTunnelID, id, m) }
func MatchTunSrc(a netip.Addr) OXM         { return OXM{Field: FieldTunSrc, Value: ipv4Bytes(a)} }
func MatchTunSrcMasked(p netip.Prefix) OXM { return prefixOXM(FieldTunSrc, p) }
func MatchTunDst(a netip.Addr) OXM         { return OXM{Field: FieldTunDst, Value: ipv4Bytes(a)} }
func MatchTunDstMasked(p netip.Prefix) OXM { return prefixOXM(FieldTunDst, p) }
func MatchPktMark(v uint32) OXM            { return u32(FieldPktMark, v) }
func MatchPktMarkMasked(v, m uint32) OXM   { return u32m(FieldPktMark, v, m) }
func MatchTunFlags(v uint16) OXM           { return u16(FieldTunFlags, v) }
func MatchTunFlagsMasked(v, m uint16) OXM  { return u16m(FieldTunFlags, v, m) }

// MatchReg matches register n (0..15); an out-of-range n yields an OXM
// whose encoding fails.
func MatchReg(n int, v uint32) OXM { return u32(regField(n), v) }

// MatchRegMasked matches the bits of register n selected by m.
func MatchRegMasked(n int, v, m uint32) OXM { return u32m(regField(n), v, m) }

func regField(n int) *Field {
	if n < 0 || n >= len(FieldReg) {
		return badField(fmt.Sprintf("reg%d (no such register)", n))
	}
	return FieldReg[n]
}

// FieldByName returns a registered field by its OVS name ("ip_src",
// "reg3") or its NXM/OXM name ("NXM_OF_IP_SRC").
func FieldByName(name string) (*Field, bool) {
	for f, m := range fieldMetas {
		if f.Name == name || m.nxmName == name {
			return f, true
		}
	}
	return nil, false
}

// nxmName is the name move/load/learn print for f.
func nxmName(f *Field) string {
	if m, ok := fieldMetas[f]; ok {
		return m.nxmName
	}
	return f.Name
}

// formatValue prints v as OVS's mf_format does for f (no mask).
func formatValue(f *Field, v []byte) string {
	m, ok := fieldMetas[f]
	if !ok {
		return hexTrim(v)
	}
	switch m.format {
	case fmtEthernet:
		if len(v) == 6 {
			return net.HardwareAddr(v).String()
		}
	case fmtIPv4, fmtIPv6:
		if a, ok := netip.AddrFromSlice(v); ok {
			return a.String()
		}
	case fmtPort:
		if len(v) == 4 {
			return ovsPortString(binary.BigEndian.Uint32(v))
		}
	case fmtPort16:
		if len(v) == 2 {
			return ovsPortString(port32(binary.BigEndian.Uint16(v)))
		}
	case fmtTunFlags:
		if len(v) == 2 {
			return tunFlagsString(binary.BigEndian.Uint16(v), 0xffff)
		}
	case fmtDecimal:
		if len(v) <= 8 {
			var n uint64
			for _, c := range v {
				n = n<<8 | uint64(c)
			}
			return fmt.Sprint(n)
		}
	}
	return hexTrim(v)
}

// hexTrim prints bytes as OVS's ds_put_hex: "0x" and the value without
// leading zeros, or "0".
func hexTrim(v []byte) string {
	i := 0
	for i < len(v) && v[i] == 0 {
		i++
	}
	if i == len(v) {
		return "0"
	}
	return fmt.Sprintf("0x%x%x", v[i], v[i+1:])
}

// tunFlagsString prints tun_flags as OVS's format_flags_masked: "+oam" or
// "-oam" for the masked bit; bits OVS does not know print as 0x..
func tunFlagsString(v, m uint16) string {
	s := ""
	if m&TunFlagOAM != 0 {
		if v&TunFlagOAM != 0 {
			s += "+oam"
		} else {
			s += "-oam"
		}
	}
	if rest := m &^ TunFlagOAM; rest != 0 {
		if v&rest != 0 {
			s += fmt.Sprintf("+0x%x", v&rest)
		}
		if rest&^v != 0 {
			s += fmt.Sprintf("-0x%x", rest&^v)
		}
	}
	return s
}

// ovsPortString prints an OpenFlow 1.3 port number as ovs-ofctl does.
func ovsPortString(p uint32) string {
	switch p {
	case PortInPort:
		return "IN_PORT"
	case PortTable:
		return "TABLE"
	case PortNormal:
		return "NORMAL"
	case PortFlood:
		return "FLOOD"
	case PortAll:
		return "ALL"
	case PortController:
		return "CONTROLLER"
	case PortLocal:
		return "LOCAL"
	case PortAny:
		return "ANY"
	case 0xfffffff7:
		return "UNSET"
	}
	return fmt.Sprint(p)
}

// fieldPrereqs maps a field to the field OVS requires earlier in the same
// match (meta-flow's "Prerequisites"): L3 fields need eth_type, L4 fields
// need ip_proto.
var fieldPrereqs = map[*Field]*Field{}

func init() {
	for _, f := range []*Field{FieldIPDSCP, FieldIPECN, FieldIPProto, FieldIPv4Src, FieldIPv4Dst,
		FieldIPv6Src, FieldIPv6Dst, FieldIPv6Label, FieldARPOp, FieldARPSPA, FieldARPTPA, FieldARPSHA, FieldARPTHA} {
		fieldPrereqs[f] = FieldEthType
	}
	for _, f := range []*Field{FieldTCPSrc, FieldTCPDst, FieldUDPSrc, FieldUDPDst, FieldSCTPSrc, FieldSCTPDst,
		FieldICMPv4Type, FieldICMPv4Code, FieldICMPv6Type, FieldICMPv6Code} {
		fieldPrereqs[f] = FieldIPProto
	}
}

// prereqOrder appends to idx the order in which to encode fs: the given
// order, except that a field whose prerequisite field is present but comes
// later is moved after it. Matches of more than 64 fields keep their order.
func prereqOrder(fs []OXM, idx []int) []int {
	ethType, ipProto := -1, -1
	for i := len(fs) - 1; i >= 0; i-- {
		switch fs[i].Field {
		case FieldEthType:
			ethType = i
		case FieldIPProto:
			ipProto = i
		}
	}
	if len(fs) > 64 || ethType < 0 && ipProto < 0 {
		for i := range fs {
			idx = append(idx, i)
		}
		return idx
	}
	var done uint64 // bit i: fs[i] emitted
	for len(idx) < len(fs) {
		for i := range fs {
			if done&(1<<i) != 0 {
				continue
			}
			switch pre := fieldPrereqs[fs[i].Field]; {
			case pre == FieldEthType && ethType >= 0 && done&(1<<ethType) == 0,
				pre == FieldIPProto && ipProto >= 0 && done&(1<<ipProto) == 0:
				continue
			}
			idx = append(idx, i)
			done |= 1 << i
		}
	}
	return idx
}
