package openflow

import (
	"bytes"
	"encoding/hex"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"testing"
)

// The oracle test builds each flow in Go, encodes it, and has ovs-ofctl
// decode our bytes (ofp-parse); it compares that with what ovs-ofctl prints
// for the same flow written in its own syntax (parse-flows for adds, a
// captured mod-flows/del-flows for other commands). It also checks that
// our OfpPrint() is ovs-ofctl's text, that String() parses back to the same
// flow, and that Decode(Marshal(x)) == x.

// needOfctl returns the ovs-ofctl path, failing under CI=true when it is
// missing and skipping otherwise.
func needOfctl(t testing.TB) string {
	t.Helper()
	p, err := exec.LookPath("ovs-ofctl")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("ovs-ofctl is required under CI=true: %v", err)
		}
		t.Skipf("ovs-ofctl not installed: %v", err)
	}
	return p
}

func runOfctl(t testing.TB, args ...string) string {
	t.Helper()
	cmd := exec.Command("ovs-ofctl", args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		t.Fatalf("ovs-ofctl %s: %v\n%s%s", strings.Join(args, " "), err, out.String(), errb.String())
	}
	return out.String()
}

var xidRE = regexp.MustCompile(`^OFPT_FLOW_MOD \(OF1\.3\) \(xid=0x[0-9a-f]+\): `)

// flowModLines returns the text after the "OFPT_FLOW_MOD (OF1.3)
// (xid=..): " prefix of every FLOW_MOD line, and other lines verbatim
// (errors) so a mismatch shows them.
func flowModLines(out string) []string {
	var r []string
	for _, l := range strings.Split(strings.TrimRight(out, "\n"), "\n") {
		switch {
		case strings.HasPrefix(l, "usable protocols") || strings.HasPrefix(l, "chosen protocol"):
		case strings.HasPrefix(l, "OFPT_") || len(r) == 0:
			r = append(r, xidRE.ReplaceAllString(l, ""))
		default: // continuation (hex dump of an undecodable message)
			r[len(r)-1] += "\n" + l
		}
	}
	return r
}

type oracleRow struct {
	ovs string // the flow in ovs-ofctl syntax (add-flow unless cmd says otherwise)
	fm  *FlowMod
}

func ip4(s string) netip.Addr       { return netip.MustParseAddr(s) }
func pfx(s string) netip.Prefix     { return netip.MustParsePrefix(s) }
func mac(s string) net.HardwareAddr { m, _ := net.ParseMAC(s); return m }

// add builds an ADD FlowMod with the given priority, match and apply-actions.
func add(prio uint16, match []OXM, acts ...Action) *FlowMod {
	fm := &FlowMod{Priority: prio, Match: Match{Fields: match}}
	if len(acts) > 0 {
		fm.Instructions = []Instruction{ApplyActions(acts...)}
	}
	return fm
}

func ms(o ...OXM) []OXM { return o }

var ipM = MatchEthType(0x0800)
var ip6M = MatchEthType(0x86dd)
var arpM = MatchEthType(0x0806)

func protoM(p uint8) []OXM { return ms(ipM, MatchIPProto(p)) }

func oxmMasked(f *Field, v, m []byte) OXM { return OXM{Field: f, Value: v, Mask: m} }

func oracleRows() []oracleRow {
	out2 := OutputPort(2)
	return []oracleRow{
		// --- match fields, exact and masked, edge values ---
		{"priority=100,ip,in_port=1,nw_src=10.0.0.1 actions=output:2",
			add(100, ms(MatchInPort(1), ipM, MatchIPv4Src(ip4("10.0.0.1"))), out2)},
		{"in_port=65279 actions=drop", add(DefaultPriority, ms(MatchInPort(65279)))},
		{"in_port=LOCAL actions=drop", add(DefaultPriority, ms(MatchInPort(PortLocal)))},
		{"priority=0,in_port=0 actions=drop", add(0, ms(MatchInPort(0)))},
		{"priority=65535,dl_src=00:11:22:33:44:55,dl_dst=ff:ff:ff:ff:ff:ff actions=drop",
			add(65535, ms(MatchEthSrc(mac("00:11:22:33:44:55")), MatchEthDst(mac("ff:ff:ff:ff:ff:ff"))))},
		{"dl_src=00:00:00:00:00:00 actions=drop", add(DefaultPriority, ms(MatchEthSrc(mac("00:00:00:00:00:00"))))},
		{"dl_dst=01:00:00:00:00:00/01:00:00:00:00:00 actions=drop",
			add(DefaultPriority, ms(MatchEthDstMasked(mac("01:00:00:00:00:00"), mac("01:00:00:00:00:00"))))},
		{"dl_src=aa:bb:cc:dd:ee:ff/ff:ff:ff:00:00:00 actions=drop",
			add(DefaultPriority, ms(MatchEthSrcMasked(mac("aa:bb:cc:dd:ee:ff"), mac("ff:ff:ff:00:00:00"))))},
		{"dl_type=0x88cc actions=drop", add(DefaultPriority, ms(MatchEthType(0x88cc)))},
		{"dl_type=0x0000 actions=drop", add(DefaultPriority, ms(MatchEthType(0)))},
		{"ip actions=drop", add(DefaultPriority, ms(ipM))},
		{"ipv6 actions=drop", add(DefaultPriority, ms(ip6M))},
		{"arp actions=drop", add(DefaultPriority, ms(arpM))},
		{"rarp actions=drop", add(DefaultPriority, ms(MatchEthType(0x8035)))},
		{"tcp actions=drop", add(DefaultPriority, protoM(6))},
		{"udp actions=drop", add(DefaultPriority, protoM(17))},
		{"sctp actions=drop", add(DefaultPriority, protoM(132))},
		{"icmp actions=drop", add(DefaultPriority, protoM(1))},
		{"ip,nw_proto=47 actions=drop", add(DefaultPriority, protoM(47))},
		{"ip,nw_proto=0 actions=drop", add(DefaultPriority, protoM(0))},
		{"ip,nw_proto=255 actions=drop", add(DefaultPriority, protoM(255))},
		{"tcp6 actions=drop", add(DefaultPriority, ms(ip6M, MatchIPProto(6)))},
		{"udp6 actions=drop", add(DefaultPriority, ms(ip6M, MatchIPProto(17)))},
		{"icmp6 actions=drop", add(DefaultPriority, ms(ip6M, MatchIPProto(58)))},
		{"ipv6,nw_proto=0 actions=drop", add(DefaultPriority, ms(ip6M, MatchIPProto(0)))},
		{"vlan_tci=0x1005/0x1fff actions=drop", add(DefaultPriority, ms(MatchVLANVID(VLANPresent|5)))},
		{"vlan_tci=0x0000/0x1fff actions=drop", add(DefaultPriority, ms(MatchVLANVID(0)))},
		{"vlan_tci=0x1fff/0x1fff actions=drop", add(DefaultPriority, ms(MatchVLANVID(0x1fff)))},
		{"vlan_tci=0x1000/0x1000 actions=drop", add(DefaultPriority, ms(MatchVLANVIDMasked(VLANPresent, VLANPresent)))},
		{"ip,nw_tos=252 actions=drop", add(DefaultPriority, ms(ipM, MatchIPDSCP(63)))},
		{"ip,nw_tos=0 actions=drop", add(DefaultPriority, ms(ipM, MatchIPDSCP(0)))},
		{"ipv6,nw_tos=4 actions=drop", add(DefaultPriority, ms(ip6M, MatchIPDSCP(1)))},
		{"ip,nw_ecn=3 actions=drop", add(DefaultPriority, ms(ipM, MatchIPECN(3)))},
		{"ip,nw_ecn=0 actions=drop", add(DefaultPriority, ms(ipM, MatchIPECN(0)))},
		{"ip,nw_src=0.0.0.0,nw_dst=255.255.255.255 actions=drop",
			add(DefaultPriority, ms(ipM, MatchIPv4Src(ip4("0.0.0.0")), MatchIPv4Dst(ip4("255.255.255.255"))))},
		{"ip,nw_src=10.0.0.0/8,nw_dst=192.168.1.0/24 actions=drop",
			add(DefaultPriority, ms(ipM, MatchIPv4SrcMasked(pfx("10.1.2.3/8")), MatchIPv4DstMasked(pfx("192.168.1.0/24"))))},
		{"ip,nw_src=128.0.0.0/1 actions=drop", add(DefaultPriority, ms(ipM, MatchIPv4SrcMasked(pfx("200.0.0.0/1"))))},
		{"ip,nw_dst=1.2.3.4/31 actions=drop", add(DefaultPriority, ms(ipM, MatchIPv4DstMasked(pfx("1.2.3.5/31"))))},
		{"ip,nw_src=10.0.0.1/255.0.0.255 actions=drop",
			add(DefaultPriority, ms(ipM, oxmMasked(FieldIPv4Src, []byte{10, 0, 0, 1}, []byte{255, 0, 0, 255})))},
		{"ip,nw_src=1.2.3.4/0.0.0.0 actions=drop", add(DefaultPriority, ms(ipM, MatchIPv4SrcMasked(pfx("1.2.3.4/0"))))},
		{"ipv6,ipv6_src=2001:db8::1,ipv6_dst=:: actions=drop",
			add(DefaultPriority, ms(ip6M, MatchIPv6Src(ip4("2001:db8::1")), MatchIPv6Dst(ip4("::"))))},
		{"ipv6,ipv6_src=2001:db8::/32,ipv6_dst=fe80::/10 actions=drop",
			add(DefaultPriority, ms(ip6M, MatchIPv6SrcMasked(pfx("2001:db8:1::/32")), MatchIPv6DstMasked(pfx("fe80::1/10"))))},
		{"ipv6,ipv6_dst=ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff actions=drop",
			add(DefaultPriority, ms(ip6M, MatchIPv6Dst(ip4("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"))))},
		{"ipv6,ipv6_src=::1/::ffff actions=drop",
			add(DefaultPriority, ms(ip6M, oxmMasked(FieldIPv6Src, ip4("::1").AsSlice(), ip4("::ffff").AsSlice())))},
		{"ipv6,ipv6_label=0x12345 actions=drop", add(DefaultPriority, ms(ip6M, MatchIPv6Label(0x12345)))},
		{"ipv6,ipv6_label=0 actions=drop", add(DefaultPriority, ms(ip6M, MatchIPv6Label(0)))},
		{"ipv6,ipv6_label=0xfffff actions=drop", add(DefaultPriority, ms(ip6M, MatchIPv6Label(0xfffff)))},
		{"ipv6,ipv6_label=0x10/0xf0 actions=drop", add(DefaultPriority, ms(ip6M, MatchIPv6LabelMasked(0x12, 0xf0)))},
		{"tcp,tp_src=0,tp_dst=65535 actions=drop", add(DefaultPriority, append(protoM(6), MatchTCPSrc(0), MatchTCPDst(65535)))},
		{"tcp,tp_dst=0x400/0xfc00 actions=drop", add(DefaultPriority, append(protoM(6), MatchTCPDstMasked(0x400, 0xfc00)))},
		{"tcp,tp_src=80/0xffff actions=drop", add(DefaultPriority, append(protoM(6), MatchTCPSrcMasked(80, 0xffff)))},
		{"udp,tp_src=53,tp_dst=4789 actions=drop", add(DefaultPriority, append(protoM(17), MatchUDPSrc(53), MatchUDPDst(4789)))},
		{"udp,tp_dst=4096/0xf000 actions=drop", add(DefaultPriority, append(protoM(17), MatchUDPDstMasked(0x1234, 0xf000)))},
		{"udp6,tp_src=546 actions=drop", add(DefaultPriority, ms(ip6M, MatchIPProto(17), MatchUDPSrc(546)))},
		{"sctp,tp_src=1,tp_dst=2 actions=drop", add(DefaultPriority, append(protoM(132), MatchSCTPSrc(1), MatchSCTPDst(2)))},
		{"sctp,tp_src=0x100/0xff00 actions=drop", add(DefaultPriority, append(protoM(132), MatchSCTPSrcMasked(0x1ff, 0xff00)))},
		{"icmp,icmp_type=8,icmp_code=0 actions=drop", add(DefaultPriority, append(protoM(1), MatchICMPv4Type(8), MatchICMPv4Code(0)))},
		{"icmp,icmp_type=255,icmp_code=255 actions=drop", add(DefaultPriority, append(protoM(1), MatchICMPv4Type(255), MatchICMPv4Code(255)))},
		{"icmp6,icmp_type=135,icmp_code=0 actions=drop", add(DefaultPriority, ms(ip6M, MatchIPProto(58), MatchICMPv6Type(135), MatchICMPv6Code(0)))},
		{"arp,arp_op=1 actions=drop", add(DefaultPriority, ms(arpM, MatchARPOp(1)))},
		{"arp,arp_op=0 actions=drop", add(DefaultPriority, ms(arpM, MatchARPOp(0)))},
		{"arp,arp_spa=10.0.0.1,arp_tpa=10.0.0.0/8 actions=drop",
			add(DefaultPriority, ms(arpM, MatchARPSPA(ip4("10.0.0.1")), MatchARPTPAMasked(pfx("10.0.0.0/8"))))},
		{"arp,arp_spa=1.0.0.0/8,arp_tpa=9.9.9.9 actions=drop",
			add(DefaultPriority, ms(arpM, MatchARPSPAMasked(pfx("1.2.3.4/8")), MatchARPTPA(ip4("9.9.9.9"))))},
		{"arp,arp_sha=00:00:00:00:00:01,arp_tha=ff:ff:ff:ff:ff:ff actions=drop",
			add(DefaultPriority, ms(arpM, MatchARPSHA(mac("00:00:00:00:00:01")), MatchARPTHA(mac("ff:ff:ff:ff:ff:ff"))))},
		{"arp,arp_sha=00:00:00:00:00:00/01:00:00:00:00:00,arp_tha=12:00:00:00:00:00/ff:00:00:00:00:00 actions=drop",
			add(DefaultPriority, ms(arpM, MatchARPSHAMasked(mac("00:00:00:00:00:00"), mac("01:00:00:00:00:00")), MatchARPTHAMasked(mac("12:34:00:00:00:00"), mac("ff:00:00:00:00:00"))))},
		{"metadata=0 actions=drop", add(DefaultPriority, ms(MatchMetadata(0)))},
		{"metadata=0xffffffffffffffff actions=drop", add(DefaultPriority, ms(MatchMetadata(^uint64(0))))},
		{"metadata=0x1200/0xff00 actions=drop", add(DefaultPriority, ms(MatchMetadataMasked(0x1234, 0xff00)))},
		{"tun_id=0x5 actions=drop", add(DefaultPriority, ms(MatchTunnelID(5)))},
		{"tun_id=0 actions=drop", add(DefaultPriority, ms(MatchTunnelID(0)))},
		{"tun_id=0x1000000/0xff000000 actions=drop", add(DefaultPriority, ms(MatchTunnelIDMasked(0x1234567, 0xff000000)))},
		{"tun_src=192.0.2.1,tun_dst=198.18.0.0/15 actions=drop",
			add(DefaultPriority, ms(MatchTunSrc(ip4("192.0.2.1")), MatchTunDstMasked(pfx("198.18.0.0/15"))))},
		{"tun_src=0.0.0.0/1,tun_dst=255.255.255.255 actions=drop",
			add(DefaultPriority, ms(MatchTunSrcMasked(pfx("1.2.3.4/1")), MatchTunDst(ip4("255.255.255.255"))))},
		{"tun_flags=+oam actions=drop", add(DefaultPriority, ms(MatchTunFlags(TunFlagOAM)))},
		{"tun_flags=-oam actions=drop", add(DefaultPriority, ms(MatchTunFlagsMasked(0, TunFlagOAM)))},
		{"reg0=0x1,reg15=0xffffffff actions=drop", add(DefaultPriority, ms(MatchReg(15, 0xffffffff), MatchReg(0, 1)))},
		{"reg3=0 actions=drop", add(DefaultPriority, ms(MatchReg(3, 0)))},
		{"reg7=0x10/0xf0,reg8=0x80000000/0x80000000 actions=drop",
			add(DefaultPriority, ms(MatchRegMasked(8, 0xffffffff, 0x80000000), MatchRegMasked(7, 0x12, 0xf0)))},
		{"pkt_mark=0x2a actions=drop", add(DefaultPriority, ms(MatchPktMark(42)))},
		{"pkt_mark=0/0x1 actions=drop", add(DefaultPriority, ms(MatchPktMarkMasked(0, 1)))},
		{"pkt_mark=0xffffffff actions=drop", add(DefaultPriority, ms(MatchPktMark(0xffffffff)))},
		// every field at once, in an order unlike OVS's
		{"priority=7,tcp,pkt_mark=0x1,reg1=0x2,tun_id=0x3,tun_src=1.1.1.1,metadata=0x4,in_port=5,dl_src=00:00:00:00:00:06,dl_dst=00:00:00:00:00:07,nw_src=8.8.8.8,nw_dst=9.9.9.0/24,nw_tos=40,nw_ecn=1,tp_src=10,tp_dst=11 actions=drop",
			add(7, ms(MatchTCPDst(11), MatchTCPSrc(10), MatchIPECN(1), MatchIPDSCP(10), MatchIPv4DstMasked(pfx("9.9.9.9/24")),
				MatchIPv4Src(ip4("8.8.8.8")), MatchIPProto(6), ipM, MatchEthDst(mac("00:00:00:00:00:07")), MatchEthSrc(mac("00:00:00:00:00:06")),
				MatchInPort(5), MatchMetadata(4), MatchTunSrc(ip4("1.1.1.1")), MatchTunnelID(3), MatchReg(1, 2), MatchPktMark(1)))},
		// --- actions ---
		{"actions=output:1,IN_PORT,LOCAL,NORMAL,FLOOD,ALL,TABLE,CONTROLLER:65535,output:65279",
			add(DefaultPriority, nil, OutputPort(1), OutputPort(PortInPort), OutputPort(PortLocal), OutputPort(PortNormal),
				OutputPort(PortFlood), OutputPort(PortAll), OutputPort(PortTable), OutputPort(PortController), OutputPort(65279))},
		{"actions=CONTROLLER:0,CONTROLLER:128,output:0", add(DefaultPriority, nil, &Output{Port: PortController}, &Output{Port: PortController, MaxLen: 128}, &Output{})},
		{"in_port=1,actions=set_field:2->in_port", add(DefaultPriority, ms(MatchInPort(1)), NewSetField(MatchNXInPort(2)))},
		{"actions=set_field:00:11:22:33:44:55->eth_src,set_field:ff:ff:ff:ff:ff:ff->eth_dst",
			add(DefaultPriority, nil, NewSetField(MatchEthSrc(mac("00:11:22:33:44:55"))), NewSetField(MatchEthDst(mac("ff:ff:ff:ff:ff:ff"))))},
		{"ip,actions=set_field:0->ip_dscp,set_field:63->ip_dscp,set_field:3->ip_ecn",
			add(DefaultPriority, ms(ipM), NewSetField(MatchIPDSCP(0)), NewSetField(MatchIPDSCP(63)), NewSetField(MatchIPECN(3)))},
		{"ip,actions=set_field:198.18.0.1->ip_src,set_field:0.0.0.0->ip_dst",
			add(DefaultPriority, ms(ipM), NewSetField(MatchIPv4Src(ip4("198.18.0.1"))), NewSetField(MatchIPv4Dst(ip4("0.0.0.0"))))},
		{"ipv6,actions=set_field:2001:db8::1->ipv6_src,set_field:::->ipv6_dst,set_field:0xfffff->ipv6_label",
			add(DefaultPriority, ms(ip6M), NewSetField(MatchIPv6Src(ip4("2001:db8::1"))), NewSetField(MatchIPv6Dst(ip4("::"))), NewSetField(MatchIPv6Label(0xfffff)))},
		{"tcp,actions=set_field:0->tcp_src,set_field:65535->tcp_dst",
			add(DefaultPriority, protoM(6), NewSetField(MatchTCPSrc(0)), NewSetField(MatchTCPDst(65535)))},
		{"udp,actions=set_field:53->udp_src,set_field:4789->udp_dst",
			add(DefaultPriority, protoM(17), NewSetField(MatchUDPSrc(53)), NewSetField(MatchUDPDst(4789)))},
		{"sctp,actions=set_field:1->sctp_src,set_field:2->sctp_dst",
			add(DefaultPriority, protoM(132), NewSetField(MatchSCTPSrc(1)), NewSetField(MatchSCTPDst(2)))},
		{"icmp,actions=set_field:8->icmp_type,set_field:255->icmp_code",
			add(DefaultPriority, protoM(1), NewSetField(MatchICMPv4Type(8)), NewSetField(MatchICMPv4Code(255)))},
		{"icmp6,actions=set_field:135->icmpv6_type,set_field:0->icmpv6_code",
			add(DefaultPriority, ms(ip6M, MatchIPProto(58)), NewSetField(MatchICMPv6Type(135)), NewSetField(MatchICMPv6Code(0)))},
		{"arp,actions=set_field:2->arp_op,set_field:10.0.0.1->arp_spa,set_field:10.0.0.2->arp_tpa,set_field:00:00:00:00:00:01->arp_sha,set_field:00:00:00:00:00:02->arp_tha",
			add(DefaultPriority, ms(arpM), NewSetField(MatchARPOp(2)), NewSetField(MatchARPSPA(ip4("10.0.0.1"))), NewSetField(MatchARPTPA(ip4("10.0.0.2"))),
				NewSetField(MatchARPSHA(mac("00:00:00:00:00:01"))), NewSetField(MatchARPTHA(mac("00:00:00:00:00:02"))))},
		{"actions=set_field:0x1->metadata,set_field:0xffffffffffffffff->tun_id,set_field:0->tun_id",
			add(DefaultPriority, nil, NewSetField(MatchMetadata(1)), NewSetField(MatchTunnelID(^uint64(0))), NewSetField(MatchTunnelID(0)))},
		{"actions=set_field:198.18.0.1->tun_src,set_field:198.19.255.255->tun_dst,set_field:0x2a->pkt_mark",
			add(DefaultPriority, nil, NewSetField(MatchTunSrc(ip4("198.18.0.1"))), NewSetField(MatchTunDst(ip4("198.19.255.255"))), NewSetField(MatchPktMark(42)))},
		{"actions=set_field:0->reg0,set_field:0xffffffff->reg15", add(DefaultPriority, nil, NewSetField(MatchReg(0, 0)), NewSetField(MatchReg(15, 0xffffffff)))},
		{"vlan_tci=0x1000/0x1000,actions=set_field:4097->vlan_vid", add(DefaultPriority, ms(MatchVLANVIDMasked(VLANPresent, VLANPresent)), NewSetField(MatchVLANVID(VLANPresent|1)))},
		{"actions=push_vlan:0x8100,set_field:4196->vlan_vid,pop_vlan,push_vlan:0x88a8",
			add(DefaultPriority, nil, &PushVLAN{0x8100}, NewSetField(MatchVLANVID(VLANPresent|100)), &PopVLAN{}, &PushVLAN{0x88a8})},
		{"ip,actions=dec_ttl,group:0,group:4294967040,set_queue:0,set_queue:7",
			add(DefaultPriority, ms(ipM), &DecTTL{}, &Group{0}, &Group{0xffffff00}, &SetQueue{0}, &SetQueue{7})},
		// Nicira actions
		{"actions=resubmit(,0),resubmit(,254),resubmit:3,resubmit(3,4),resubmit(LOCAL,1)",
			add(DefaultPriority, nil, ResubmitTable(0), ResubmitTable(254), &Resubmit{Port: 3, Table: TableAll},
				&Resubmit{Port: 3, Table: 4}, &Resubmit{Port: PortLocal, Table: 1})},
		{"actions=controller,controller(max_len=128),controller(id=3),controller(reason=no_match),controller(reason=invalid_ttl)",
			add(DefaultPriority, nil, &Controller{}, &Controller{MaxLen: 128}, &Controller{ID: 3},
				&Controller{Reason: ControllerReasonNoMatch}, &Controller{Reason: ControllerReasonInvalidTTL})},
		{"actions=controller(userdata=01),controller(userdata=00.01.02.03.04.05.06.07.08.09.0a),controller(pause),controller(meter_id=1),controller(meter_id=4294967040)",
			add(DefaultPriority, nil, &Controller{Userdata: []byte{1}}, &Controller{Userdata: []byte{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10}},
				&Controller{Pause: true}, &Controller{MeterID: 1}, &Controller{MeterID: 0xffffff00})},
		{"actions=controller(reason=action_set,max_len=65534,id=65535,userdata=ff.ff,pause,meter_id=7)",
			add(DefaultPriority, nil, &Controller{Reason: ControllerReasonActionSet, MaxLen: 0xfffe, ID: 65535, Userdata: []byte{0xff, 0xff}, Pause: true, MeterID: 7})},
		{"actions=check_pkt_larger(1464)->NXM_NX_REG1[3],check_pkt_larger(0)->NXM_NX_REG0[0],check_pkt_larger(65535)->NXM_NX_REG15[31],check_pkt_larger(9000)->OXM_OF_METADATA[63]",
			add(DefaultPriority, nil, &CheckPktLarger{PktLen: 1464, Dst: Bits(FieldReg[1], 3, 1)}, &CheckPktLarger{Dst: Bits(FieldReg[0], 0, 1)},
				&CheckPktLarger{PktLen: 65535, Dst: Bits(FieldReg[15], 31, 1)}, &CheckPktLarger{PktLen: 9000, Dst: Bits(FieldMetadata, 63, 1)})},
		{"actions=note:,note:01,note:01.02.03.04.05.06,note:01.02.03.04.05.06.07",
			add(DefaultPriority, nil, &Note{}, &Note{Data: []byte{1}}, &Note{Data: []byte{1, 2, 3, 4, 5, 6}}, &Note{Data: []byte{1, 2, 3, 4, 5, 6, 7}})},
		{"actions=load:0x1->NXM_NX_REG0[],load:0->NXM_NX_REG1[3..5],load:0x1->NXM_NX_REG2[31],load:0xffffffff->NXM_NX_REG3[]",
			add(DefaultPriority, nil, &Load{Dst: Whole(FieldReg[0]), Value: 1}, &Load{Dst: Bits(FieldReg[1], 3, 3)},
				&Load{Dst: Bits(FieldReg[2], 31, 1), Value: 1}, &Load{Dst: Whole(FieldReg[3]), Value: 0xffffffff})},
		{"actions=load:0xff->NXM_OF_ETH_DST[0..7],load:0xffffffffffffffff->OXM_OF_METADATA[],load:0x5->NXM_NX_TUN_ID[60..63]",
			add(DefaultPriority, nil, &Load{Dst: Bits(FieldEthDst, 0, 8), Value: 0xff}, &Load{Dst: Whole(FieldMetadata), Value: ^uint64(0)},
				&Load{Dst: Bits(FieldTunnelID, 60, 4), Value: 5})},
		{"ip,actions=load:0x2e->OXM_OF_IP_DSCP[],load:0xc6120001->NXM_OF_IP_DST[],load:0x1->NXM_NX_PKT_MARK[0]",
			add(DefaultPriority, ms(ipM), &Load{Dst: Whole(FieldIPDSCP), Value: 46}, &Load{Dst: Whole(FieldIPv4Dst), Value: 0xc6120001},
				&Load{Dst: Bits(FieldPktMark, 0, 1), Value: 1})},
		{"ip,actions=move:NXM_OF_ETH_SRC[]->NXM_OF_ETH_DST[],move:NXM_OF_IP_SRC[]->NXM_NX_REG0[],move:OXM_OF_IP_DSCP[]->NXM_NX_REG1[0..5],move:NXM_NX_REG2[0..15]->NXM_NX_REG3[16..31]",
			add(DefaultPriority, ms(ipM), &Move{Src: Whole(FieldEthSrc), Dst: Whole(FieldEthDst)}, &Move{Src: Whole(FieldIPv4Src), Dst: Whole(FieldReg[0])},
				&Move{Src: Whole(FieldIPDSCP), Dst: Bits(FieldReg[1], 0, 6)}, &Move{Src: Bits(FieldReg[2], 0, 16), Dst: Bits(FieldReg[3], 16, 16)})},
		{"actions=move:NXM_NX_TUN_ID[0..31]->NXM_NX_REG4[],move:OXM_OF_METADATA[]->NXM_NX_TUN_ID[],move:OXM_OF_IN_PORT[]->NXM_NX_REG5[],move:NXM_OF_IN_PORT[]->NXM_NX_REG6[0..15],move:NXM_NX_TUN_IPV4_SRC[]->NXM_NX_TUN_IPV4_DST[],move:NXM_NX_PKT_MARK[]->NXM_NX_REG7[]",
			add(DefaultPriority, nil, &Move{Src: Bits(FieldTunnelID, 0, 32), Dst: Whole(FieldReg[4])}, &Move{Src: Whole(FieldMetadata), Dst: Whole(FieldTunnelID)},
				&Move{Src: Whole(FieldInPort), Dst: Whole(FieldReg[5])}, &Move{Src: Whole(FieldNXInPort), Dst: Bits(FieldReg[6], 0, 16)},
				&Move{Src: Whole(FieldTunSrc), Dst: Whole(FieldTunDst)}, &Move{Src: Whole(FieldPktMark), Dst: Whole(FieldReg[7])})},
		{"ipv6,actions=move:NXM_NX_IPV6_SRC[]->NXM_NX_IPV6_DST[],move:NXM_NX_IPV6_LABEL[]->NXM_NX_REG8[0..19],move:NXM_NX_IP_ECN[]->NXM_NX_REG9[0..1],move:NXM_OF_IP_PROTO[]->NXM_NX_REG10[0..7]",
			add(DefaultPriority, ms(ip6M), &Move{Src: Whole(FieldIPv6Src), Dst: Whole(FieldIPv6Dst)}, &Move{Src: Whole(FieldIPv6Label), Dst: Bits(FieldReg[8], 0, 20)},
				&Move{Src: Whole(FieldIPECN), Dst: Bits(FieldReg[9], 0, 2)}, &Move{Src: Whole(FieldIPProto), Dst: Bits(FieldReg[10], 0, 8)})},
		{"arp,actions=move:NXM_NX_ARP_SHA[]->NXM_NX_ARP_THA[],move:NXM_OF_ARP_SPA[]->NXM_OF_ARP_TPA[],move:NXM_OF_ARP_OP[]->NXM_NX_REG11[0..15]",
			add(DefaultPriority, ms(arpM), &Move{Src: Whole(FieldARPSHA), Dst: Whole(FieldARPTHA)}, &Move{Src: Whole(FieldARPSPA), Dst: Whole(FieldARPTPA)},
				&Move{Src: Whole(FieldARPOp), Dst: Bits(FieldReg[11], 0, 16)})},
		{"tcp,actions=move:NXM_OF_TCP_SRC[]->NXM_OF_TCP_DST[]", add(DefaultPriority, protoM(6), &Move{Src: Whole(FieldTCPSrc), Dst: Whole(FieldTCPDst)})},
		{"udp,actions=move:NXM_OF_UDP_SRC[]->NXM_OF_UDP_DST[]", add(DefaultPriority, protoM(17), &Move{Src: Whole(FieldUDPSrc), Dst: Whole(FieldUDPDst)})},
		{"sctp,actions=move:OXM_OF_SCTP_SRC[]->OXM_OF_SCTP_DST[]", add(DefaultPriority, protoM(132), &Move{Src: Whole(FieldSCTPSrc), Dst: Whole(FieldSCTPDst)})},
		{"icmp,actions=move:NXM_OF_ICMP_TYPE[]->NXM_OF_ICMP_CODE[]", add(DefaultPriority, protoM(1), &Move{Src: Whole(FieldICMPv4Type), Dst: Whole(FieldICMPv4Code)})},
		{"icmp6,actions=move:NXM_NX_ICMPV6_TYPE[]->NXM_NX_ICMPV6_CODE[]", add(DefaultPriority, ms(ip6M, MatchIPProto(58)), &Move{Src: Whole(FieldICMPv6Type), Dst: Whole(FieldICMPv6Code)})},
		{"actions=move:NXM_NX_TUN_FLAGS[0]->NXM_NX_REG12[0],move:OXM_OF_VLAN_VID[]->NXM_NX_REG13[0..11],move:NXM_OF_ETH_TYPE[]->NXM_NX_REG14[0..15]",
			add(DefaultPriority, nil, &Move{Src: Whole(FieldTunFlags), Dst: Bits(FieldReg[12], 0, 1)}, &Move{Src: Whole(FieldVLANVID), Dst: Bits(FieldReg[13], 0, 12)},
				&Move{Src: Whole(FieldEthType), Dst: Bits(FieldReg[14], 0, 16)})},
		// --- learn ---
		{"ip,actions=learn(table=10,idle_timeout=60,hard_timeout=120,fin_idle_timeout=5,fin_hard_timeout=10,priority=100,send_flow_rem,delete_learned,cookie=0x5,eth_type=0x800,NXM_OF_IP_SRC[]=NXM_OF_IP_DST[],NXM_OF_IP_DST[]=NXM_OF_IP_SRC[],load:NXM_OF_IN_PORT[]->NXM_NX_REG0[0..15],output:NXM_OF_IN_PORT[])",
			add(DefaultPriority, ms(ipM), &Learn{Table: 10, IdleTimeout: 60, HardTimeout: 120, FinIdleTimeout: 5, FinHardTimeout: 10, Priority: 100,
				Flags: LearnSendFlowRem | LearnDeleteLearned, Cookie: 5, Specs: []LearnSpec{
					LearnMatchImm(Whole(FieldEthType), []byte{8, 0}),
					LearnMatchField(Whole(FieldIPv4Src), Whole(FieldIPv4Dst)),
					LearnMatchField(Whole(FieldIPv4Dst), Whole(FieldIPv4Src)),
					LearnLoadField(Whole(FieldNXInPort), Bits(FieldReg[0], 0, 16)),
					LearnOutputField(Whole(FieldNXInPort)),
				}})},
		{"actions=learn(table=0)", add(DefaultPriority, nil, &Learn{Priority: DefaultPriority})},
		{"actions=learn(table=254,priority=0,cookie=0xffffffffffffffff)", add(DefaultPriority, nil, &Learn{Table: 254, Cookie: ^uint64(0)})},
		{"actions=learn(table=1,idle_timeout=65535,hard_timeout=65535,fin_idle_timeout=65535,fin_hard_timeout=65535,priority=65535)",
			add(DefaultPriority, nil, &Learn{Table: 1, IdleTimeout: 65535, HardTimeout: 65535, FinIdleTimeout: 65535, FinHardTimeout: 65535, Priority: 65535})},
		{"actions=learn(table=2,NXM_OF_ETH_DST[]=NXM_OF_ETH_SRC[],NXM_NX_REG0[0..7]=0x5,NXM_NX_REG1[],NXM_NX_REG2[3]=0x1,load:0x5->NXM_NX_REG2[],load:0->NXM_NX_REG3[3..4],load:NXM_NX_REG4[0..7]->NXM_NX_REG5[8..15])",
			add(DefaultPriority, nil, &Learn{Table: 2, Priority: DefaultPriority, Specs: []LearnSpec{
				LearnMatchField(Whole(FieldEthDst), Whole(FieldEthSrc)),
				LearnMatchImm(Bits(FieldReg[0], 0, 8), []byte{5}),
				LearnMatchField(Whole(FieldReg[1]), Whole(FieldReg[1])),
				LearnMatchImm(Bits(FieldReg[2], 3, 1), []byte{1}),
				LearnLoadImm([]byte{0, 0, 0, 5}, Whole(FieldReg[2])),
				LearnLoadImm([]byte{0}, Bits(FieldReg[3], 3, 2)),
				LearnLoadField(Bits(FieldReg[4], 0, 8), Bits(FieldReg[5], 8, 8)),
			}})},
		{"ipv6,actions=learn(table=3,eth_type=0x86dd,ipv6_src=2001:db8::1,NXM_NX_IPV6_DST[]=NXM_NX_IPV6_SRC[],NXM_NX_IPV6_LABEL[])",
			add(DefaultPriority, ms(ip6M), &Learn{Table: 3, Priority: DefaultPriority, Specs: []LearnSpec{
				LearnMatchImm(Whole(FieldEthType), []byte{0x86, 0xdd}),
				LearnMatchImm(Whole(FieldIPv6Src), ip4("2001:db8::1").AsSlice()),
				LearnMatchField(Whole(FieldIPv6Dst), Whole(FieldIPv6Src)),
				LearnMatchField(Whole(FieldIPv6Label), Whole(FieldIPv6Label)),
			}})},
		{"actions=learn(table=4,tun_id=0x5,in_port=3,reg7=0,NXM_NX_TUN_IPV4_DST[]=NXM_NX_TUN_IPV4_SRC[],NXM_NX_TUN_ID[]=OXM_OF_METADATA[],load:0xc6120001->NXM_NX_TUN_IPV4_DST[],load:NXM_NX_PKT_MARK[]->NXM_NX_REG6[])",
			add(DefaultPriority, nil, &Learn{Table: 4, Priority: DefaultPriority, Specs: []LearnSpec{
				LearnMatchImm(Whole(FieldTunnelID), []byte{0, 0, 0, 0, 0, 0, 0, 5}),
				LearnMatchImm(Whole(FieldNXInPort), []byte{0, 3}),
				LearnMatchImm(Whole(FieldReg[7]), []byte{0, 0, 0, 0}),
				LearnMatchField(Whole(FieldTunDst), Whole(FieldTunSrc)),
				LearnMatchField(Whole(FieldTunnelID), Whole(FieldMetadata)),
				LearnLoadImm([]byte{0xc6, 0x12, 0, 1}, Whole(FieldTunDst)),
				LearnLoadField(Whole(FieldPktMark), Whole(FieldReg[6])),
			}})},
		{"ip,actions=learn(table=5,eth_type=0x800,ip_dst=198.18.0.1,OXM_OF_IP_DSCP[]=NXM_NX_REG0[0..5],load:0x2e->OXM_OF_IP_DSCP[],load:OXM_OF_IP_DSCP[]->NXM_NX_REG1[0..5],output:NXM_NX_REG2[0..15])",
			add(DefaultPriority, ms(ipM), &Learn{Table: 5, Priority: DefaultPriority, Specs: []LearnSpec{
				LearnMatchImm(Whole(FieldEthType), []byte{8, 0}),
				LearnMatchImm(Whole(FieldIPv4Dst), []byte{198, 18, 0, 1}),
				LearnMatchField(Whole(FieldIPDSCP), Bits(FieldReg[0], 0, 6)),
				LearnLoadImm([]byte{46}, Whole(FieldIPDSCP)),
				LearnLoadField(Whole(FieldIPDSCP), Bits(FieldReg[1], 0, 6)),
				LearnOutputField(Bits(FieldReg[2], 0, 16)),
			}})},
		// keyroute's reverse-flow cache, with the rest of the flow
		{"table=2,priority=10,idle_timeout=30,send_flow_rem,ip,in_port=1,nw_src=10.0.0.1,actions=learn(table=5,idle_timeout=30,priority=20,cookie=0x100000001,send_flow_rem,eth_type=0x800,NXM_OF_IP_SRC[]=NXM_OF_IP_DST[],NXM_OF_IP_DST[]=NXM_OF_IP_SRC[],load:NXM_OF_ETH_SRC[]->NXM_OF_ETH_DST[],output:NXM_OF_IN_PORT[]),output:2,goto_table:3",
			&FlowMod{Table: 2, Priority: 10, IdleTimeout: 30, Flags: SendFlowRem, Match: Match{Fields: ms(ipM, MatchInPort(1), MatchIPv4Src(ip4("10.0.0.1")))},
				Instructions: []Instruction{ApplyActions(&Learn{Table: 5, IdleTimeout: 30, Priority: 20, Cookie: 0x100000001, Flags: LearnSendFlowRem, Specs: []LearnSpec{
					LearnMatchImm(Whole(FieldEthType), []byte{8, 0}),
					LearnMatchField(Whole(FieldIPv4Src), Whole(FieldIPv4Dst)),
					LearnMatchField(Whole(FieldIPv4Dst), Whole(FieldIPv4Src)),
					LearnLoadField(Whole(FieldEthSrc), Whole(FieldEthDst)),
					LearnOutputField(Whole(FieldNXInPort)),
				}}, OutputPort(2)), GotoTable(3)}}},
		// --- instructions ---
		{"ip,actions=meter:1,set_field:5->ip_dscp,goto_table:3",
			&FlowMod{Priority: DefaultPriority, Match: Match{Fields: ms(ipM)},
				Instructions: []Instruction{GotoTable(3), ApplyActions(NewSetField(MatchIPDSCP(5))), Meter(1)}}},
		{"actions=write_actions(output:3,group:1)", &FlowMod{Priority: DefaultPriority, Instructions: []Instruction{WriteActions(OutputPort(3), &Group{1})}}},
		{"actions=clear_actions,goto_table:254", &FlowMod{Priority: DefaultPriority, Instructions: []Instruction{ClearActions(), GotoTable(254)}}},
		{"actions=write_metadata:0x1", &FlowMod{Priority: DefaultPriority, Instructions: []Instruction{&WriteMetadata{1, ^uint64(0)}}}},
		{"actions=write_metadata:0", &FlowMod{Priority: DefaultPriority, Instructions: []Instruction{&WriteMetadata{0, ^uint64(0)}}}},
		{"actions=write_metadata:0x10/0xf0", &FlowMod{Priority: DefaultPriority, Instructions: []Instruction{&WriteMetadata{0x10, 0xf0}}}},
		{"actions=meter:65535", &FlowMod{Priority: DefaultPriority, Instructions: []Instruction{Meter(65535)}}},
		{"actions=drop", &FlowMod{Priority: DefaultPriority, Instructions: []Instruction{ApplyActions()}}},
		{"actions=goto_table:1", &FlowMod{Priority: DefaultPriority, Instructions: []Instruction{ApplyActions(), GotoTable(1)}}},
		{"table=1,actions=meter:2,output:1,clear_actions,write_actions(set_field:0x1->reg0,output:2),write_metadata:0x10/0xf0,goto_table:2",
			&FlowMod{Table: 1, Priority: DefaultPriority, Instructions: []Instruction{GotoTable(2), &WriteMetadata{0x10, 0xf0},
				WriteActions(NewSetField(MatchReg(0, 1)), OutputPort(2)), ClearActions(), ApplyActions(OutputPort(1)), Meter(2)}}},
		// --- flow_mod fields ---
		{"table=3,priority=5,cookie=0x10,idle_timeout=10,hard_timeout=20,send_flow_rem,check_overlap,reset_counts,no_packet_counts,no_byte_counts,ip actions=drop",
			&FlowMod{Table: 3, Priority: 5, Cookie: 0x10, IdleTimeout: 10, HardTimeout: 20,
				Flags: SendFlowRem | CheckOverlap | ResetCounts | NoPktCounts | NoBytCounts, Match: Match{Fields: ms(ipM)}}},
		{"table=253,priority=0,cookie=0xfffffffffffffffe,idle_timeout=65535,hard_timeout=65535 actions=drop",
			&FlowMod{Table: 253, Cookie: 0xfffffffffffffffe, IdleTimeout: 65535, HardTimeout: 65535}},
		// the realistic rewrite flow of the benchmarks
		{rewriteText, rewriteFlow()},
	}
}

const rewriteText = "table=3,priority=200,cookie=0x200000007,idle_timeout=60,send_flow_rem,ip,in_port=7,nw_src=10.1.0.5,nw_dst=10.2.0.9,nw_tos=0," +
	"actions=set_field:02:00:00:00:00:01->eth_src,set_field:02:00:00:00:00:02->eth_dst,set_field:198.18.0.1->ip_src,set_field:198.18.0.2->ip_dst,set_field:17->ip_dscp,output:2"

// rewriteFlow is keyroute's egress cache entry: a realistic, busy flow.
func rewriteFlow() *FlowMod {
	return &FlowMod{Table: 3, Priority: 200, Cookie: 0x200000007, IdleTimeout: 60, Flags: SendFlowRem,
		Match: Match{Fields: ms(MatchInPort(7), ipM, MatchIPv4Src(ip4("10.1.0.5")), MatchIPv4Dst(ip4("10.2.0.9")), MatchIPDSCP(0))},
		Instructions: []Instruction{ApplyActions(
			NewSetField(MatchEthSrc(mac("02:00:00:00:00:01"))), NewSetField(MatchEthDst(mac("02:00:00:00:00:02"))),
			NewSetField(MatchIPv4Src(ip4("198.18.0.1"))), NewSetField(MatchIPv4Dst(ip4("198.18.0.2"))),
			NewSetField(MatchIPDSCP(17)), OutputPort(2))}}
}

// writeMessages writes encodings for ofp-parse, which reads raw OpenFlow.
func encodeAll(t *testing.T, fms []*FlowMod) []byte {
	var buf []byte
	for i, fm := range fms {
		var err error
		if buf, err = AppendMessage(buf, fm, uint32(i+1)); err != nil {
			t.Fatalf("row %d (%s): encode: %v", i, fm, err)
		}
	}
	return buf
}

func TestOracleFlowMods(t *testing.T) {
	needOfctl(t)
	rows := oracleRows()
	dir := t.TempDir()
	var fms []*FlowMod
	var ovsText, ourText strings.Builder
	for _, r := range rows {
		fms = append(fms, r.fm)
		ovsText.WriteString(r.ovs + "\n")
		ourText.WriteString(r.fm.String() + "\n")
	}
	bin := filepath.Join(dir, "ours.bin")
	if err := os.WriteFile(bin, encodeAll(t, fms), 0o644); err != nil {
		t.Fatal(err)
	}
	ovsFile, ourFile := filepath.Join(dir, "ovs.txt"), filepath.Join(dir, "ours.txt")
	os.WriteFile(ovsFile, []byte(ovsText.String()), 0o644)
	os.WriteFile(ourFile, []byte(ourText.String()), 0o644)

	got := flowModLines(runOfctl(t, "ofp-parse", bin))
	want := flowModLines(runOfctl(t, "-O", "OpenFlow13", "parse-flows", ovsFile))
	viaString := flowModLines(runOfctl(t, "-O", "OpenFlow13", "parse-flows", ourFile))
	if len(got) != len(rows) || len(want) != len(rows) || len(viaString) != len(rows) {
		t.Fatalf("ovs-ofctl printed %d/%d/%d lines for %d rows:\n%s\n--\n%s", len(got), len(want), len(viaString), len(rows),
			strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	for i, r := range rows {
		if got[i] != want[i] {
			t.Errorf("row %d %q:\n ofp-print(ours) %s\n parse-flow(ovs) %s", i, r.ovs, got[i], want[i])
			continue
		}
		if op := r.fm.OfpPrint(); op != want[i] {
			t.Errorf("row %d %q: OfpPrint()\n got  %s\n want %s", i, r.ovs, op, want[i])
		}
		if viaString[i] != want[i] {
			t.Errorf("row %d: String() %q parses to\n %s\n want %s", i, r.fm.String(), viaString[i], want[i])
		}
		checkRoundTrip(t, fmt.Sprintf("row %d", i), r.fm)
	}
}

// checkRoundTrip asserts Decode(Marshal(fm)) equals fm and re-encodes to
// the same bytes.
func checkRoundTrip(t *testing.T, name string, fm *FlowMod) {
	t.Helper()
	raw, err := Marshal(fm, 7)
	if err != nil {
		t.Errorf("%s: marshal: %v", name, err)
		return
	}
	h, m, err := Decode(raw)
	if err != nil {
		t.Errorf("%s: decode: %v", name, err)
		return
	}
	if h.Xid != 7 || h.Type != TypeFlowMod {
		t.Errorf("%s: header %+v", name, h)
	}
	if !reflect.DeepEqual(normFlowMod(fm), m) {
		t.Errorf("%s: round trip\n got  %#v\n want %#v", name, m, fm)
	}
	raw2, err := Marshal(m.(*FlowMod), 7)
	if err != nil || !bytes.Equal(raw, raw2) {
		t.Errorf("%s: re-encode differs (%v):\n %s\n %s", name, err, hex.EncodeToString(raw), hex.EncodeToString(raw2))
	}
}

// normFlowMod gives the decoded form of fm where decoding legitimately
// differs from a hand-built value: empty lists decode as nil, match
// fields come in prerequisite order and notes carry their padding.
func normFlowMod(fm *FlowMod) *FlowMod {
	c := *fm
	c.Match.Fields = nil
	for _, i := range prereqOrder(fm.Match.Fields, nil) {
		c.Match.Fields = append(c.Match.Fields, fm.Match.Fields[i])
	}
	c.Instructions = nil
	for _, in := range fm.Instructions {
		if ap, ok := in.(*ApplyActionsInst); ok {
			n := &ApplyActionsInst{}
			for _, a := range ap.Actions {
				if note, ok := a.(*Note); ok {
					d := append([]byte(nil), note.Data...)
					a = &Note{Data: append(d, make([]byte, pad8(nxActionHdrLen+len(d))-nxActionHdrLen-len(d))...)}
				}
				n.Actions = append(n.Actions, a)
			}
			in = n
		}
		c.Instructions = append(c.Instructions, in)
	}
	return &c
}

// fakeSwitch accepts ovs-ofctl connections on a unix socket, answers the
// handshake and barriers, and hands over every FLOW_MOD it receives.
func fakeSwitch(t *testing.T) (target string, flowMods <-chan []byte) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "sw.sock")
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	ch := make(chan []byte, 16)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go serveFake(c, ch)
		}
	}()
	return "unix:" + path, ch
}

func serveFake(c net.Conn, ch chan<- []byte) {
	defer c.Close()
	c.Write([]byte{Version13, byte(TypeHello), 0, 8, 0, 0, 0, 0})
	r := NewReader(c)
	for {
		raw, err := r.ReadRaw()
		if err != nil {
			return
		}
		h, _ := ParseHeader(raw)
		switch h.Type {
		case TypeFlowMod:
			ch <- append([]byte(nil), raw...)
		case TypeBarrierRequest, TypeEchoRequest:
			reply := append([]byte(nil), raw...)
			reply[1]++ // BARRIER_REPLY / ECHO_REPLY follow their requests
			c.Write(reply)
		}
	}
}

// ofctlFlowMod has ovs-ofctl send one flow_mod command to the fake switch
// and returns the bytes it sent.
func ofctlFlowMod(t *testing.T, target string, ch <-chan []byte, cmd []string, flow string) []byte {
	t.Helper()
	args := append([]string{"-O", "OpenFlow13", "--no-names", "-t", "5"}, cmd...)
	runOfctl(t, append(args, target, flow)...)
	select {
	case b := <-ch:
		return b
	default:
		t.Fatalf("ovs-ofctl %v %q sent no FLOW_MOD", cmd, flow)
		return nil
	}
}

// TestOracleModifyDelete covers commands parse-flow cannot express: the
// ovs text goes through ovs-ofctl mod-flows/del-flows to a fake switch,
// and ofp-print of what it sent must equal ofp-print of our encoding.
func TestOracleModifyDelete(t *testing.T) {
	needOfctl(t)
	target, ch := fakeSwitch(t)
	ipMatch := Match{Fields: ms(ipM)}
	rows := []struct {
		cmd []string
		ovs string
		fm  *FlowMod
	}{
		{[]string{"mod-flows"}, "table=1,cookie=0x10/0xff,ip actions=output:3",
			&FlowMod{Command: FlowModify, Table: 1, Cookie: 0x10, CookieMask: 0xff, Priority: DefaultPriority, Match: ipMatch,
				Instructions: []Instruction{ApplyActions(OutputPort(3))}}},
		{[]string{"--strict", "mod-flows"}, "priority=7,ip,nw_src=1.2.3.4 actions=drop",
			&FlowMod{Command: FlowModifyStrict, Priority: 7, Match: Match{Fields: ms(ipM, MatchIPv4Src(ip4("1.2.3.4")))}}},
		{[]string{"mod-flows"}, "reg0=0x5 actions=meter:3,resubmit(,4)",
			&FlowMod{Command: FlowModify, Priority: DefaultPriority, Match: Match{Fields: ms(MatchReg(0, 5))},
				Instructions: []Instruction{Meter(3), ApplyActions(ResubmitTable(4))}}},
		{[]string{"del-flows"}, "", &FlowMod{Command: FlowDelete, Table: TableAll, Priority: DefaultPriority}},
		{[]string{"del-flows"}, "table=1,cookie=0x10/0xff,out_port=3,out_group=4,ip",
			&FlowMod{Command: FlowDelete, Table: 1, Cookie: 0x10, CookieMask: 0xff, OutPort: 3, OutGroup: 4, Priority: DefaultPriority, Match: ipMatch}},
		{[]string{"--strict", "del-flows"}, "table=2,priority=7,ip,nw_dst=10.0.0.0/8",
			&FlowMod{Command: FlowDeleteStrict, Table: 2, Priority: 7, Match: Match{Fields: ms(ipM, MatchIPv4DstMasked(pfx("10.0.0.0/8")))}}},
		{[]string{"del-flows"}, "cookie=0x200000000/0xff00000000,out_port=LOCAL",
			&FlowMod{Command: FlowDelete, Table: TableAll, Cookie: 0x200000000, CookieMask: 0xff00000000, OutPort: PortLocal, Priority: DefaultPriority}},
		{[]string{"del-flows"}, "out_port=0,out_group=0",
			&FlowMod{Command: FlowDelete, Table: TableAll, Priority: DefaultPriority, WireZero: ZeroOutPort | ZeroOutGroup}},
		{[]string{"del-flows"}, "tun_id=0x5,in_port=2",
			&FlowMod{Command: FlowDelete, Table: TableAll, Priority: DefaultPriority, Match: Match{Fields: ms(MatchTunnelID(5), MatchInPort(2))}}},
	}
	dir := t.TempDir()
	var theirs, ours, viaString []byte
	for i, r := range rows {
		their := ofctlFlowMod(t, target, ch, r.cmd, r.ovs)
		theirs = append(theirs, their...)
		// ofp-print omits some fixed fields (out_group): compare those bytes.
		mine, err := Marshal(r.fm, 0)
		if err != nil || len(their) < 48 {
			t.Fatalf("row %d: encode: %v (ovs sent %d bytes)", i, err, len(their))
		}
		if !bytes.Equal(mine[8:48], their[8:48]) {
			t.Errorf("row %d: fixed flow_mod fields\n ours %x\n ovs  %x", i, mine[8:48], their[8:48])
		}
		viaString = append(viaString, ofctlFlowMod(t, target, ch, r.cmd, r.fm.String())...)
		ours = append(ours, mine...)
		checkRoundTrip(t, fmt.Sprintf("row %d", i), r.fm)
	}
	print := func(name string, b []byte) []string {
		f := filepath.Join(dir, name)
		os.WriteFile(f, b, 0o644)
		return flowModLines(runOfctl(t, "ofp-parse", f))
	}
	want, got, gotString := print("theirs.bin", theirs), print("ours.bin", ours), print("string.bin", viaString)
	if len(want) != len(rows) || len(got) != len(rows) || len(gotString) != len(rows) {
		t.Fatalf("line counts %d/%d/%d for %d rows:\n%s\n--\n%s", len(want), len(got), len(gotString), len(rows),
			strings.Join(want, "\n"), strings.Join(got, "\n"))
	}
	for i, r := range rows {
		if got[i] != want[i] {
			t.Errorf("row %d %v %q:\n ours %s\n ovs  %s", i, r.cmd, r.ovs, got[i], want[i])
		}
		if gotString[i] != want[i] {
			t.Errorf("row %d: String() %q sends\n %s\n want %s", i, r.fm.String(), gotString[i], want[i])
		}
		if op := r.fm.OfpPrint(); op != want[i] {
			t.Errorf("row %d: OfpPrint()\n got  %s\n want %s", i, op, want[i])
		}
	}
}
