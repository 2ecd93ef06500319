package simcluster

import (
	"bytes"
	"flag"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/pcapgo"
)

var update = flag.Bool("update", false, "rewrite testdata/vxlan.pcap from its generator")

const testPcap = "testdata/vxlan.pcap"

var (
	h1MAC = net.HardwareAddr{2, 0, 0, 0, 0, 1}
	h2MAC = net.HardwareAddr{2, 0, 0, 0, 0, 2}
	c1MAC = net.HardwareAddr{2, 0, 0, 0, 1, 2}
	c2MAC = net.HardwareAddr{2, 0, 0, 0, 2, 2}
	h1IP  = net.IP{198, 18, 0, 1}
	h2IP  = net.IP{198, 18, 0, 2}
	c1IP  = net.IP{198, 19, 1, 2}
	c2IP  = net.IP{198, 19, 2, 2}
)

// frame serialises layers with lengths and checksums computed.
func frame(t *testing.T, ls ...gopacket.SerializableLayer) []byte {
	t.Helper()
	// Transport checksums cover the IPv4 pseudo-header of the same stack
	// (the first IPv4 layer before them).
	var ip *layers.IPv4
	for _, l := range ls {
		switch l := l.(type) {
		case *layers.IPv4:
			ip = l
		case *layers.UDP:
			l.SetNetworkLayerForChecksum(ip)
		case *layers.TCP:
			l.SetNetworkLayerForChecksum(ip)
		}
	}
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, ls...); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func ipv4(src, dst net.IP, tos uint8, proto layers.IPProtocol) *layers.IPv4 {
	return &layers.IPv4{Version: 4, IHL: 5, TTL: 64, TOS: tos, Protocol: proto, SrcIP: src, DstIP: dst, Flags: layers.IPv4DontFragment}
}

func echo(seq uint16) []gopacket.SerializableLayer {
	return []gopacket.SerializableLayer{
		&layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(layers.ICMPv4TypeEchoRequest, 0), Id: 7, Seq: seq},
		gopacket.Payload("keyroute"),
	}
}

// vxlanFrame wraps the c1->c2 echo seq in VXLAN from h1 to h2.
func vxlanFrame(t *testing.T, dport uint16, vni uint32, seq uint16) []byte {
	ls := []gopacket.SerializableLayer{
		&layers.Ethernet{SrcMAC: h1MAC, DstMAC: h2MAC, EthernetType: layers.EthernetTypeIPv4},
		ipv4(h1IP, h2IP, 0, layers.IPProtocolUDP),
		&layers.UDP{SrcPort: 51234, DstPort: layers.UDPPort(dport)},
		&layers.VXLAN{ValidIDFlag: true, VNI: vni},
		&layers.Ethernet{SrcMAC: c1MAC, DstMAC: c2MAC, EthernetType: layers.EthernetTypeIPv4},
		ipv4(c1IP, c2IP, 0, layers.IPProtocolICMPv4),
	}
	return frame(t, append(ls, echo(seq)...)...)
}

// testFrames is the content of testdata/vxlan.pcap, one frame per path the
// harness must tell apart, plus the awkward cases.
func testFrames(t *testing.T) [][]byte {
	rewritten := frame(t, append([]gopacket.SerializableLayer{
		&layers.Ethernet{SrcMAC: h1MAC, DstMAC: h2MAC, EthernetType: layers.EthernetTypeIPv4},
		ipv4(h1IP, h2IP, 10<<2, layers.IPProtocolICMPv4),
	}, echo(3)...)...)
	tcp := frame(t,
		&layers.Ethernet{SrcMAC: h2MAC, DstMAC: h1MAC, EthernetType: layers.EthernetTypeIPv4},
		ipv4(h2IP, h1IP, 11<<2|1, layers.IPProtocolTCP),
		&layers.TCP{SrcPort: 40000, DstPort: 5201, Seq: 1, SYN: true, Window: 1024},
	)
	arp := frame(t,
		&layers.Ethernet{SrcMAC: h1MAC, DstMAC: layers.EthernetBroadcast, EthernetType: layers.EthernetTypeARP},
		&layers.ARP{AddrType: layers.LinkTypeEthernet, Protocol: layers.EthernetTypeIPv4, HwAddressSize: 6, ProtAddressSize: 4,
			Operation: layers.ARPRequest, SourceHwAddress: h1MAC, SourceProtAddress: h1IP,
			DstHwAddress: make([]byte, 6), DstProtAddress: h2IP},
	)
	frag := frame(t,
		&layers.Ethernet{SrcMAC: h1MAC, DstMAC: h2MAC, EthernetType: layers.EthernetTypeIPv4},
		&layers.IPv4{Version: 4, IHL: 5, TTL: 64, Protocol: layers.IPProtocolUDP, SrcIP: h1IP, DstIP: h2IP, FragOffset: 185},
		gopacket.Payload(bytes.Repeat([]byte{0xab}, 40)),
	)
	return [][]byte{
		vxlanFrame(t, 4789, 100, 1),
		vxlanFrame(t, 4789, 0x80000a, 2), // keyed VNI: flag bit + key 10
		rewritten,
		tcp,
		arp,
		frag,
		vxlanFrame(t, 8472, 200, 4),      // VXLAN on another port
		vxlanFrame(t, 4789, 100, 5)[:40], // truncated inside the outer UDP header
	}
}

func writeTestPcap(t *testing.T) []byte {
	var buf bytes.Buffer
	w := pcapgo.NewWriter(&buf)
	if err := w.WriteFileHeader(65535, layers.LinkTypeEthernet); err != nil {
		t.Fatal(err)
	}
	base := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	frames := testFrames(t)
	for i, f := range frames {
		length := len(f)
		if i == len(frames)-1 {
			length = len(vxlanFrame(t, 4789, 100, 5)) // captured shorter than sent
		}
		ci := gopacket.CaptureInfo{Timestamp: base.Add(time.Duration(i) * time.Millisecond), CaptureLength: len(f), Length: length}
		if err := w.WritePacket(ci, f); err != nil {
			t.Fatal(err)
		}
	}
	return buf.Bytes()
}

// The stored pcap is exactly what the generator makes (run with -update
// after changing testFrames).
func TestPcapTestdataUpToDate(t *testing.T) {
	want := writeTestPcap(t)
	if *update {
		if err := os.MkdirAll(filepath.Dir(testPcap), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(testPcap, want, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	got, err := os.ReadFile(testPcap)
	if err != nil {
		t.Fatalf("%v (generate it with go test ./e2e -run TestPcapTestdataUpToDate -update)", err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("%s differs from its generator; rerun with -update", testPcap)
	}
}

func TestDecodePcap(t *testing.T) {
	pkts, err := DecodePcapFile(testPcap, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(pkts) != 8 {
		t.Fatalf("decoded %d packets, want 8", len(pkts))
	}
	a := func(s string) netip.Addr { return netip.MustParseAddr(s) }

	vx := pkts[0]
	if vx.Path() != PathVXLAN || vx.VNI != 100 || vx.Src != a("198.18.0.1") || vx.Dst != a("198.18.0.2") ||
		vx.Proto != 17 || vx.DstPort != 4789 || vx.SrcPort != 51234 || vx.DSCP != 0 || vx.TTL != 64 ||
		vx.SrcMAC.String() != "02:00:00:00:00:01" || vx.DecodeErr != "" {
		t.Errorf("vxlan packet decoded as %+v", vx)
	}
	if in := vx.Inner; in == nil || in.Src != a("198.19.1.2") || in.Dst != a("198.19.2.2") || in.Proto != 1 ||
		in.ICMPType != 8 || in.ICMPID != 7 || in.ICMPSeq != 1 || in.DstMAC.String() != "02:00:00:00:02:02" {
		t.Errorf("vxlan inner decoded as %+v", vx.Inner)
	}
	if got := vx.String(); got != "198.18.0.1 > 198.18.0.2 udp 51234 > 4789 vxlan vni 100 | 198.19.1.2 > 198.19.2.2 icmp type 8 id 7 seq 1" {
		t.Errorf("String() = %q", got)
	}
	if k := pkts[1]; !k.VXLAN || k.VNI != 0x80000a || k.Inner == nil || k.Inner.ICMPSeq != 2 {
		t.Errorf("keyed vxlan packet decoded as %+v", k)
	}
	if rw := pkts[2]; rw.Path() != PathRewrite || rw.DSCP != 10 || rw.ECN != 0 || rw.Src != a("198.18.0.1") ||
		rw.Proto != 1 || rw.ICMPSeq != 3 || rw.VXLAN || rw.Inner != nil {
		t.Errorf("rewritten packet decoded as %+v", rw)
	}
	if tcp := pkts[3]; tcp.Path() != PathRewrite || tcp.DSCP != 11 || tcp.ECN != 1 || tcp.Proto != 6 ||
		tcp.SrcPort != 40000 || tcp.DstPort != 5201 || tcp.Src != a("198.18.0.2") {
		t.Errorf("tcp packet decoded as %+v", tcp)
	}
	if arp := pkts[4]; arp.Path() != PathOther || arp.EtherType != 0x0806 || arp.IsIPv4() {
		t.Errorf("arp decoded as %+v", arp)
	}
	if fr := pkts[5]; !fr.Fragment || fr.Proto != 17 || fr.DstPort != 0 || fr.VXLAN || fr.Path() != PathPlain {
		t.Errorf("non-first fragment decoded as %+v", fr)
	}
	if other := pkts[6]; other.VXLAN || other.DstPort != 8472 || other.Path() != PathPlain {
		t.Errorf("udp 8472 with vxlanPort 4789 decoded as %+v", other)
	}
	tr := pkts[7]
	if tr.DecodeErr == "" || tr.VXLAN || tr.Length <= 40 || tr.Src != a("198.18.0.1") {
		t.Errorf("truncated packet decoded as %+v", tr)
	}
	if !pkts[1].Time.After(pkts[0].Time) {
		t.Errorf("timestamps not kept: %v, %v", pkts[0].Time, pkts[1].Time)
	}

	// The overlay port is a parameter: 8472 is VXLAN now, 4789 is not.
	pkts, err = DecodePcapFile(testPcap, 8472)
	if err != nil {
		t.Fatal(err)
	}
	if p := pkts[6]; !p.VXLAN || p.VNI != 200 || p.Inner == nil || p.Inner.ICMPSeq != 4 {
		t.Errorf("udp 8472 with vxlanPort 8472 decoded as %+v", p)
	}
	if pkts[0].VXLAN {
		t.Errorf("udp 4789 read as VXLAN with vxlanPort 8472: %+v", pkts[0])
	}
}

func TestDecodePcapBadInput(t *testing.T) {
	for name, in := range map[string][]byte{
		"empty":   nil,
		"garbage": []byte(strings.Repeat("not a pcap file ", 4)),
	} {
		if pkts, err := DecodePcap(bytes.NewReader(in), 0); err == nil {
			t.Errorf("%s: decoded %d packets, want an error", name, len(pkts))
		}
	}
	// A file cut in the middle of a record keeps the packets before it.
	good, err := os.ReadFile(testPcap)
	if err != nil {
		t.Fatal(err)
	}
	pkts, err := DecodePcap(bytes.NewReader(good[:len(good)-10]), 0)
	if err == nil || len(pkts) != 7 {
		t.Errorf("cut file: %d packets, err %v; want 7 and an error", len(pkts), err)
	}
	if _, err := DecodePcapFile(filepath.Join(t.TempDir(), "missing.pcap"), 0); err == nil {
		t.Error("missing file decoded without error")
	}
}

func TestCountPaths(t *testing.T) {
	pkts, err := DecodePcapFile(testPcap, 0)
	if err != nil {
		t.Fatal(err)
	}
	pc := CountPaths(pkts)
	// 2 VXLAN (VNI 100 and keyed 0x80000a); the truncated frame is cut
	// before its UDP header, so it counts as plain IPv4 like the fragment
	// and the UDP on port 8472.
	if pc.VXLAN != 2 || pc.Rewrite != 2 || pc.Plain != 3 || pc.Other != 1 ||
		!slices.Equal(pc.VNIs, []uint32{100, 0x80000a}) || !slices.Equal(pc.Keys, []uint8{10, 11}) {
		t.Errorf("CountPaths = %+v", pc)
	}
	if got, want := pc.String(), "VXLAN 2 (VNI 100, 8388618), rewritten 2 (DSCP keys 10, 11), plain 3, other 1"; got != want {
		t.Errorf("String() = %q, want %q", got, want)
	}
	if got := CountPaths(nil).String(); got != "nothing" {
		t.Errorf("empty String() = %q", got)
	}
}
