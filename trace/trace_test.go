package trace

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"

	"github.com/keyroute/keyroute/api"
	"github.com/keyroute/keyroute/fabric"
)

func TestParseProto(t *testing.T) {
	for in, want := range map[string][2]int{"tcp": {6, 0}, "udp/53": {17, 53}, "ICMP": {1, 0}, "tcp/65535": {6, 65535}} {
		p, port, err := ParseProto(in)
		if err != nil || int(p) != want[0] || int(port) != want[1] {
			t.Errorf("ParseProto(%q) = %d, %d, %v", in, p, port, err)
		}
	}
	for _, in := range []string{"sctp", "udp/0", "udp/70000", "icmp/8", "tcp/x"} {
		if _, _, err := ParseProto(in); err == nil {
			t.Errorf("ParseProto(%q): no error", in)
		}
	}
}

// The flow written for ofproto/trace reads back as the same header, and
// uses the field names OVS accepts for each protocol (tp_src is refused
// in trace flows).
func TestHeaderFlowRoundTrip(t *testing.T) {
	h := Header{SrcMAC: "0a:58:c6:13:00:02", DstMAC: "0a:00:00:00:00:01", Src: netip.MustParseAddr("198.19.0.2"),
		Dst: netip.MustParseAddr("198.19.1.2"), Proto: fabric.ProtoTCP, DSCP: 12, SPort: 7000, DPort: 80}
	f := h.OVSFlow("4", "tun_id=0x64")
	if !strings.HasPrefix(f, "in_port=4,tun_id=0x64,tcp,") || !strings.Contains(f, "tcp_src=7000,tcp_dst=80") || !strings.Contains(f, "nw_tos=48") {
		t.Errorf("flow %s", f)
	}
	// OVS prints tp_src/tp_dst back.
	back, err := FinalHeader(strings.NewReplacer("tcp_src", "tp_src", "tcp_dst", "tp_dst").Replace(strings.TrimPrefix(f, "in_port=4,tun_id=0x64,")))
	if err != nil || back != h {
		t.Errorf("read back %+v, %v; want %+v", back, err, h)
	}
	if _, err := FinalHeader("arp,in_port=1"); err == nil {
		t.Error("a flow without IPv4 addresses: no error")
	}
}

func TestStats(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	ds := []api.Diagnosis{
		{Time: t0, Suspect: &api.Suspect{Kind: api.SuspectDevice, Node: "spine1"}},
		{Time: t0.Add(time.Hour), Suspect: &api.Suspect{Kind: api.SuspectDevice, Node: "spine1"}},
		{Time: t0, Suspect: &api.Suspect{Kind: api.SuspectAgent, Node: "h2"}},
		{Time: t0},
	}
	st := Stats(ds)
	if len(st) != 2 || st[0].Node != "spine1" || st[0].Count != 2 || !st[0].Last.Equal(t0.Add(time.Hour)) || st[1].Node != "h2" {
		t.Errorf("stats %+v", st)
	}
}

// Probes decode as the packet asked for, with DSCP 0 and valid checksums.
func TestProbePacket(t *testing.T) {
	r := api.ProbeRequest{SrcMAC: "0a:58:c6:13:00:02", DstMAC: "0a:00:00:00:00:01", Src: "198.19.0.2", Dst: "198.19.1.2", Proto: "udp", SPort: 7000, DPort: 5001}
	b, err := ProbePacket(r)
	if err != nil {
		t.Fatal(err)
	}
	p := gopacket.NewPacket(b, layers.LayerTypeEthernet, gopacket.Default)
	ip, _ := p.Layer(layers.LayerTypeIPv4).(*layers.IPv4)
	udp, _ := p.Layer(layers.LayerTypeUDP).(*layers.UDP)
	if ip == nil || udp == nil || ip.TOS != 0 || ip.SrcIP.String() != r.Src || ip.DstIP.String() != r.Dst || udp.SrcPort != 7000 || udp.DstPort != 5001 {
		t.Fatalf("probe decodes as %v", p)
	}
	for _, proto := range []string{"tcp", "icmp"} {
		r.Proto = proto
		if _, err := ProbePacket(r); err != nil {
			t.Errorf("%s probe: %v", proto, err)
		}
	}
	for _, bad := range []api.ProbeRequest{
		{SrcMAC: "x", DstMAC: r.DstMAC, Src: r.Src, Dst: r.Dst, Proto: "udp"},
		{SrcMAC: r.SrcMAC, DstMAC: r.DstMAC, Src: "::1", Dst: r.Dst, Proto: "udp"},
		{SrcMAC: r.SrcMAC, DstMAC: r.DstMAC, Src: r.Src, Dst: r.Dst, Proto: "gre"},
	} {
		if _, err := ProbePacket(bad); err == nil {
			t.Errorf("%+v: no error", bad)
		}
	}
}
