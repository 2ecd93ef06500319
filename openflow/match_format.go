package openflow

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"strings"
)

// Match.String follows OVS's match_format (lib/match.c), so a match prints
// exactly as `ovs-ofctl dump-flows` and `ofp-print` show it. The ordering
// rule, for the fields keyroute registers:
//
//  1. pkt_mark
//  2. the protocol shorthand from eth_type and ip_proto: ip, icmp, igmp,
//     tcp, udp, sctp; ipv6, icmp6, tcp6, udp6, sctp6; arp, rarp, mpls,
//     mplsm (ip_proto is then not printed again, except "ip"/"ipv6" with an
//     other protocol, which print nw_proto= later)
//  3. reg0..reg15
//  4. tunnel: tun_id, tun_src, tun_dst, tun_flags
//  5. metadata
//  6. in_port
//  7. VLAN: dl_vlan=N for an exact present VID, else vlan_tci=0xTTTT[/0xMMMM]
//  8. dl_src, dl_dst
//  9. dl_type=0x.... when no shorthand applied
//  10. addresses: ipv6_src, ipv6_dst, ipv6_label for IPv6; arp_spa, arp_tpa
//     for ARP/RARP; nw_src, nw_dst otherwise
//  11. arp_op (ARP) or nw_proto (when no shorthand consumed it)
//  12. arp_sha, arp_tha
//  13. nw_tos (the DSCP shifted left by 2, i.e. the TOS byte), nw_ecn
//  14. L4: icmp_type, icmp_code for ICMP and ICMPv6; tp_src, tp_dst else
//
// Values are printed masked (value & mask); an all-zero mask drops the
// field and an all-ones mask prints it as exact. Fields OVS's order has no
// place for (wrong prerequisites, unknown OXMs) are appended last as
// name=value[/mask] so nothing is silently hidden.
func (m Match) String() string {
	p := matchPrinter{byField: map[*Field]int{}}
	for i, o := range m.Fields {
		if _, dup := p.byField[o.Field]; !dup && o.Field != nil {
			p.byField[o.Field] = i
		}
	}
	p.fields = m.Fields
	p.format()
	return strings.Join(p.out, ",")
}

type matchPrinter struct {
	fields  []OXM
	byField map[*Field]int
	done    map[int]bool
	out     []string
}

// get returns the masked value and mask of f (mask all-ones when exact);
// ok is false when f is absent or fully wildcarded. It marks f printed.
func (p *matchPrinter) get(f *Field) (v, mask []byte, ok bool) {
	i, found := p.byField[f]
	if !found {
		return nil, nil, false
	}
	if p.done == nil {
		p.done = map[int]bool{}
	}
	p.done[i] = true
	o := p.fields[i]
	v = append([]byte(nil), o.Value...)
	mask = make([]byte, len(v))
	for j := range mask {
		mask[j] = 0xff
		if o.Mask != nil && j < len(o.Mask) {
			mask[j] = o.Mask[j]
			v[j] &= mask[j]
		}
	}
	zero := true
	for _, c := range mask {
		if c != 0 {
			zero = false
		}
	}
	return v, mask, !zero
}

func (p *matchPrinter) add(format string, a ...any) { p.out = append(p.out, fmt.Sprintf(format, a...)) }

func beUint(b []byte) uint64 {
	var n uint64
	for _, c := range b {
		n = n<<8 | uint64(c)
	}
	return n
}

func allOnes(b []byte) bool {
	for _, c := range b {
		if c != 0xff {
			return false
		}
	}
	return true
}

// uintHex prints "name=%#x[/%#x]" (format_uint32_masked, format_be64_masked).
func (p *matchPrinter) uintHex(f *Field, name string) {
	if v, m, ok := p.get(f); ok {
		s := name + "=" + cHex(beUint(v))
		if !allOnes(m) {
			s += "/" + cHex(beUint(m))
		}
		p.out = append(p.out, s)
	}
}

// uintDec prints "name=%d", or "name=0x%x/0x%x" when masked
// (format_be16_masked).
func (p *matchPrinter) uintDec(f *Field, name string) {
	if v, m, ok := p.get(f); ok {
		if allOnes(m) {
			p.add("%s=%d", name, beUint(v))
		} else {
			p.add("%s=0x%x/0x%x", name, beUint(v), beUint(m))
		}
	}
}

// addr prints an IPv4/IPv6 address with a CIDR or dotted mask as OVS's
// ip_format_masked / ipv6_format_masked do.
func (p *matchPrinter) addr(f *Field, name string) {
	v, m, ok := p.get(f)
	if !ok {
		return
	}
	a, okA := netip.AddrFromSlice(v)
	ma, okM := netip.AddrFromSlice(m)
	if !okA || !okM {
		p.add("%s=%x/%x", name, v, m)
		return
	}
	s := name + "=" + a.String()
	if !allOnes(m) {
		if n, cidr := cidrBits(m); cidr {
			s += fmt.Sprintf("/%d", n)
		} else {
			s += "/" + ma.String()
		}
	}
	p.out = append(p.out, s)
}

// cidrBits reports whether m is a prefix mask and its length.
func cidrBits(m []byte) (int, bool) {
	n := 0
	for n < len(m)*8 && m[n/8]&(0x80>>(n%8)) != 0 {
		n++
	}
	for i := n; i < len(m)*8; i++ {
		if m[i/8]&(0x80>>(i%8)) != 0 {
			return 0, false
		}
	}
	return n, true
}

func (p *matchPrinter) eth(f *Field, name string) {
	v, m, ok := p.get(f)
	if !ok {
		return
	}
	if len(v) != 6 {
		p.add("%s=%x/%x", name, v, m)
		return
	}
	s := name + "=" + net.HardwareAddr(v).String()
	if !allOnes(m) {
		s += "/" + net.HardwareAddr(m).String()
	}
	p.out = append(p.out, s)
}

const (
	ethTypeIPv4  = 0x0800
	ethTypeARP   = 0x0806
	ethTypeRARP  = 0x8035
	ethTypeIPv6  = 0x86dd
	ethTypeMPLS  = 0x8847
	ethTypeMPLSM = 0x8848
)

func (p *matchPrinter) format() {
	p.uintHex(FieldPktMark, "pkt_mark")

	// Shorthand: peek eth_type and ip_proto without marking them yet.
	dlType, hasType := p.peekUint(FieldEthType)
	proto, hasProto := p.peekUint(FieldIPProto)
	skipType, skipProto := false, false
	if hasType {
		skipType = true
		switch dlType {
		case ethTypeIPv4:
			p.shorthand("ip", ipv4Shorthands, proto, hasProto, &skipProto)
		case ethTypeIPv6:
			p.shorthand("ipv6", ipv6Shorthands, proto, hasProto, &skipProto)
		case ethTypeARP:
			p.out = append(p.out, "arp")
		case ethTypeRARP:
			p.out = append(p.out, "rarp")
		case ethTypeMPLS:
			p.out = append(p.out, "mpls")
		case ethTypeMPLSM:
			p.out = append(p.out, "mplsm")
		default:
			skipType = false
		}
	}
	for i, f := range FieldReg {
		p.uintHex(f, fmt.Sprintf("reg%d", i))
	}
	p.uintHex(FieldTunnelID, "tun_id")
	p.addr(FieldTunSrc, "tun_src")
	p.addr(FieldTunDst, "tun_dst")
	if v, m, ok := p.get(FieldTunFlags); ok && len(v) == 2 {
		// OVS keeps only the public bits (oam) of a tun_flags match.
		if mm := binary.BigEndian.Uint16(m) & TunFlagOAM; mm != 0 {
			p.out = append(p.out, "tun_flags="+tunFlagsString(binary.BigEndian.Uint16(v), mm))
		}
	}
	p.uintHex(FieldMetadata, "metadata")
	if v, _, ok := p.get(FieldInPort); ok && len(v) == 4 {
		p.out = append(p.out, "in_port="+ovsPortString(binary.BigEndian.Uint32(v)))
	}
	if v, _, ok := p.get(FieldNXInPort); ok && len(v) == 2 {
		p.out = append(p.out, "in_port="+ovsPortString(port32(binary.BigEndian.Uint16(v))))
	}
	p.vlan()
	p.eth(FieldEthSrc, "dl_src")
	p.eth(FieldEthDst, "dl_dst")
	if _, _, ok := p.get(FieldEthType); ok && !skipType {
		p.add("dl_type=0x%04x", dlType)
	}
	isARP := hasType && (dlType == ethTypeARP || dlType == ethTypeRARP)
	switch {
	case hasType && dlType == ethTypeIPv6:
		p.addr(FieldIPv6Src, "ipv6_src")
		p.addr(FieldIPv6Dst, "ipv6_dst")
		if v, m, ok := p.get(FieldIPv6Label); ok {
			s := fmt.Sprintf("ipv6_label=0x%05x", beUint(v))
			if !allOnes(m) {
				s += fmt.Sprintf("/0x%05x", beUint(m))
			}
			p.out = append(p.out, s)
		}
	case isARP:
		p.addr(FieldARPSPA, "arp_spa")
		p.addr(FieldARPTPA, "arp_tpa")
	default:
		p.addr(FieldIPv4Src, "nw_src")
		p.addr(FieldIPv4Dst, "nw_dst")
	}
	if isARP {
		p.uintDec(FieldARPOp, "arp_op")
	}
	if _, _, ok := p.get(FieldIPProto); ok && !skipProto {
		p.add("nw_proto=%d", proto)
	}
	if isARP {
		p.eth(FieldARPSHA, "arp_sha")
		p.eth(FieldARPTHA, "arp_tha")
	}
	if v, _, ok := p.get(FieldIPDSCP); ok && len(v) == 1 {
		p.add("nw_tos=%d", (v[0]<<2)&0xfc)
	}
	if v, _, ok := p.get(FieldIPECN); ok && len(v) == 1 {
		p.add("nw_ecn=%d", v[0]&3)
	}
	switch {
	case hasType && dlType == ethTypeIPv4 && hasProto && proto == 1:
		p.uintDec(FieldICMPv4Type, "icmp_type")
		p.uintDec(FieldICMPv4Code, "icmp_code")
	case hasType && dlType == ethTypeIPv6 && hasProto && proto == 58:
		p.uintDec(FieldICMPv6Type, "icmp_type")
		p.uintDec(FieldICMPv6Code, "icmp_code")
	default:
		p.uintDec(p.l4Field(proto, FieldTCPSrc, FieldUDPSrc, FieldSCTPSrc), "tp_src")
		p.uintDec(p.l4Field(proto, FieldTCPDst, FieldUDPDst, FieldSCTPDst), "tp_dst")
	}
	// Anything OVS's order did not place.
	for i, o := range p.fields {
		if p.done[i] || o.Field == nil {
			continue
		}
		s := o.Field.Name + "=" + formatValue(o.Field, o.Value)
		if o.Mask != nil {
			s += "/" + hexTrim(o.Mask)
		}
		p.out = append(p.out, s)
	}
}

// l4Field picks the transport field OVS's shared tp_src/tp_dst would hold.
func (p *matchPrinter) l4Field(proto uint64, tcp, udp, sctp *Field) *Field {
	switch proto {
	case 17:
		return udp
	case 132:
		return sctp
	}
	if _, ok := p.byField[tcp]; !ok {
		if _, ok := p.byField[udp]; ok {
			return udp
		}
		if _, ok := p.byField[sctp]; ok {
			return sctp
		}
	}
	return tcp
}

func (p *matchPrinter) peekUint(f *Field) (uint64, bool) {
	i, ok := p.byField[f]
	if !ok {
		return 0, false
	}
	o := p.fields[i]
	v := beUint(o.Value)
	if o.Mask != nil {
		v &= beUint(o.Mask)
	}
	return v, true
}

var (
	ipv4Shorthands = map[uint64]string{1: "icmp", 2: "igmp", 6: "tcp", 17: "udp", 132: "sctp"}
	ipv6Shorthands = map[uint64]string{58: "icmp6", 6: "tcp6", 17: "udp6", 132: "sctp6"}
)

func (p *matchPrinter) shorthand(base string, names map[uint64]string, proto uint64, hasProto bool, skipProto *bool) {
	if n, ok := names[proto]; hasProto && ok {
		p.out = append(p.out, n)
		*skipProto = true
		return
	}
	p.out = append(p.out, base)
}

// vlan prints vlan_vid as OVS's match_format prints its vlan_tci view: OVS
// keeps the VID and the CFI (= OFPVID_PRESENT) bits of the OXM.
func (p *matchPrinter) vlan() {
	v, m, ok := p.get(FieldVLANVID)
	if !ok || len(v) != 2 {
		return
	}
	mask := binary.BigEndian.Uint16(m) & 0x1fff
	tci := binary.BigEndian.Uint16(v) & mask
	if mask == 0 {
		return
	}
	switch {
	case mask&0x1000 != 0 && tci&0x1000 != 0 && mask&0x0fff == 0x0fff:
		p.add("dl_vlan=%d", tci&0x0fff)
	default:
		p.add("vlan_tci=0x%04x/0x%04x", tci, mask)
	}
}
