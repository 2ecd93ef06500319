package agent

import (
	"bytes"
	"encoding/hex"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/keyroute/keyroute/controller"
	"github.com/keyroute/keyroute/flows"
	"github.com/keyroute/keyroute/openflow"
	"github.com/keyroute/keyroute/registry"
)

// bigTCP is a container's 1500-byte TCP segment with DF set, as br-int
// punts it: cut to 128 bytes.
func bigTCP(t *testing.T, df bool, opts int) []byte {
	t.Helper()
	ip := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolTCP, Id: 0x1234,
		SrcIP: net.IP{198, 19, 1, 2}, DstIP: net.IP{198, 19, 2, 2}}
	if df {
		ip.Flags = layers.IPv4DontFragment
	}
	if opts > 0 {
		ip.Options = []layers.IPv4Option{{OptionType: 1}, {OptionType: 1}, {OptionType: 1}, {OptionType: 1}}[:opts]
	}
	tcp := &layers.TCP{SrcPort: 40000, DstPort: 5201, Seq: 0xdeadbeef, ACK: true, Ack: 7, Window: 512}
	tcp.SetNetworkLayerForChecksum(ip)
	buf := gopacket.NewSerializeBuffer()
	eth := &layers.Ethernet{SrcMAC: net.HardwareAddr{0x0a, 0x58, 0xc6, 0x13, 1, 2}, DstMAC: net.HardwareAddr{0x0a, 0, 0, 0, 0, 1}, EthernetType: layers.EthernetTypeIPv4}
	payload := bytes.Repeat([]byte{0xab}, 1500-20-4*((opts+3)/4)-20)
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, eth, ip, tcp, gopacket.Payload(payload)); err != nil {
		t.Fatal(err)
	}
	if n := len(buf.Bytes()) - 14; n != 1500 {
		t.Fatalf("built a %d-byte IP packet, want 1500", n)
	}
	return buf.Bytes()[:128]
}

func TestFragNeeded(t *testing.T) {
	gwMAC := net.HardwareAddr{0x0a, 0, 0, 0, 0, 1}
	gw := netip.MustParseAddr("198.19.1.1")
	for _, tc := range []struct {
		name string
		df   bool
		opts int
	}{{"DF set", true, 0}, {"DF clear", false, 0}, {"IP options", true, 4}} {
		t.Run(tc.name, func(t *testing.T) {
			orig := bigTCP(t, tc.df, tc.opts)
			frame, df, err := fragNeeded(orig, gwMAC, gw, 1450)
			if err != nil || df != tc.df {
				t.Fatalf("fragNeeded: df %v err %v, want df %v", df, err, tc.df)
			}
			p := gopacket.NewPacket(frame, layers.LayerTypeEthernet, gopacket.Default)
			if el := p.ErrorLayer(); el != nil {
				t.Fatalf("decode: %v", el.Error())
			}
			eth := p.Layer(layers.LayerTypeEthernet).(*layers.Ethernet)
			ip := p.Layer(layers.LayerTypeIPv4).(*layers.IPv4)
			icmp := p.Layer(layers.LayerTypeICMPv4).(*layers.ICMPv4)
			if !bytes.Equal(eth.DstMAC, orig[6:12]) || !bytes.Equal(eth.SrcMAC, gwMAC) {
				t.Errorf("Ethernet %s -> %s, want %s -> %s", eth.SrcMAC, eth.DstMAC, gwMAC, net.HardwareAddr(orig[6:12]))
			}
			if ip.SrcIP.String() != "198.19.1.1" || ip.DstIP.String() != "198.19.1.2" || ip.Protocol != layers.IPProtocolICMPv4 || ip.TTL != 64 {
				t.Errorf("IPv4 %s -> %s proto %d ttl %d", ip.SrcIP, ip.DstIP, ip.Protocol, ip.TTL)
			}
			if icmp.TypeCode != layers.CreateICMPv4TypeCode(3, 4) || icmp.Seq != 1450 || icmp.Id != 0 {
				t.Errorf("ICMP %s, id %d, next-hop MTU %d; want 3/4 with MTU 1450", icmp.TypeCode, icmp.Id, icmp.Seq)
			}
			ihl := 20 + 4*((tc.opts+3)/4)
			if want := orig[14 : 14+ihl+8]; !bytes.Equal(icmp.Payload, want) {
				t.Errorf("quote\n%s\nwant the IP header and 8 bytes\n%s", hex.Dump(icmp.Payload), hex.Dump(want))
			}
			// Checksums: recomputing over a header that includes its
			// checksum gives 0.
			if c := inetChecksum(frame[14:34]); c != 0 {
				t.Errorf("IP header checksum does not verify (%#04x)", c)
			}
			if c := inetChecksum(frame[34:]); c != 0 {
				t.Errorf("ICMP checksum does not verify (%#04x)", c)
			}
			if int(ip.Length) != len(frame)-14 {
				t.Errorf("IP total length %d, frame carries %d", ip.Length, len(frame)-14)
			}
		})
	}
}

// TestFragNeededGolden pins the bytes for one input, checked by hand
// against RFC 792/1191: type 3 code 4, checksum, unused 0, next-hop MTU
// 0x05aa, the quote; the two checksums were computed apart from this code.
func TestFragNeededGolden(t *testing.T) {
	// A 1500-byte DF segment from 198.19.1.2 to 198.19.2.2 (port 40000 to
	// 5201), cut after the TCP header's first 8 bytes.
	orig, _ := hex.DecodeString("0a0000000001" + "0a58c6130102" + "0800" +
		"450005dc123440004006" + "0000c6130102c6130202" + "9c40145100000001")
	frame, df, err := fragNeeded(orig, net.HardwareAddr{0x0a, 0, 0, 0, 0, 1}, netip.MustParseAddr("198.19.1.1"), 1450)
	if err != nil || !df {
		t.Fatal(df, err)
	}
	want := "0a58c61301020a0000000001" + "0800" +
		"45c00038000000004001" + "ebdb" + "c6130101" + "c6130102" + // IP: CS6, 56 bytes, TTL 64, ICMP, checksum
		"0304" + "da7c" + "000005aa" + // ICMP 3/4, checksum, unused 0, next-hop MTU 1450
		"450005dc123440004006" + "0000c6130102c6130202" + "9c40145100000001" // quote: IP header and 8 bytes
	if got := hex.EncodeToString(frame); got != want {
		t.Errorf("frame\n got %s\nwant %s", got, want)
	}
}

func TestFragNeededRejects(t *testing.T) {
	gwMAC := net.HardwareAddr{0x0a, 0, 0, 0, 0, 1}
	gw := netip.MustParseAddr("198.19.1.1")
	good := bigTCP(t, true, 0)
	mod := func(f func(b []byte)) []byte {
		b := append([]byte(nil), good...)
		f(b)
		return b
	}
	for _, tc := range []struct {
		name string
		pkt  []byte
		want string // "" : errNoAnswer
	}{
		{"empty", nil, "not an Ethernet/IPv4"},
		{"ARP", mod(func(b []byte) { b[12], b[13] = 8, 6 }), "not an Ethernet/IPv4"},
		{"IPv6 version", mod(func(b []byte) { b[14] = 0x65 }), "version/IHL"},
		{"IHL 4", mod(func(b []byte) { b[14] = 0x44 }), "version/IHL"},
		{"IHL past the bytes", mod(func(b []byte) { b[14] = 0x4f })[:14+60], "need its 60-byte header"},
		{"total length below header", mod(func(b []byte) { b[16], b[17] = 0, 10 }), "below its header"},
		{"cut short", good[:14+20+7], "need its 20-byte header and 8 more"},
		{"non-first fragment", mod(func(b []byte) { b[20], b[21] = 0, 1 }), ""},
		{"ICMP error", mod(func(b []byte) { b[23] = 1; b[34] = 3 }), ""},
		{"broadcast source", mod(func(b []byte) { copy(b[26:30], []byte{255, 255, 255, 255}) }), ""},
		{"multicast source", mod(func(b []byte) { copy(b[26:30], []byte{224, 0, 0, 1}) }), ""},
	} {
		_, _, err := fragNeeded(tc.pkt, gwMAC, gw, 1450)
		switch {
		case tc.want == "" && !errors.Is(err, errNoAnswer):
			t.Errorf("%s: err %v, want no answer", tc.name, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%s: err %v, want %q", tc.name, err, tc.want)
		}
	}
	// An ICMP echo is answered (only errors are not).
	if _, _, err := fragNeeded(mod(func(b []byte) { b[23] = 1; b[34] = 8 }), gwMAC, gw, 1450); err != nil {
		t.Errorf("ICMP echo: %v", err)
	}
}

// TestOnFragNeeded feeds punts to the handler: hostile or unanswerable
// ones are counted and dropped; good ones reach the packet-out (which fails
// here: no switch is connected).
func TestOnFragNeeded(t *testing.T) {
	a := &Agent{metrics: newMetrics(), log: slog.New(slog.NewTextHandler(io.Discard, nil)),
		endpoints: map[string]registry.Endpoint{"c1": {Name: "c1", IP: netip.MustParseAddr("198.19.1.2")}},
		host: flows.Host{Gateway: netip.MustParseAddr("198.19.1.1"), GatewayMAC: net.HardwareAddr{0x0a, 0, 0, 0, 0, 1},
			GatewayPort: 3, TunnelMTU: 1450},
		intSw: controller.New("unix:"+filepath.Join(t.TempDir(), "none.mgmt"), controller.Options{}),
	}
	pin := func(inPort uint32, userdata byte, pkt []byte) *openflow.PacketIn2 {
		var md openflow.Match
		if inPort != 0 {
			md.Fields = []openflow.OXM{openflow.MatchInPort(inPort)}
		}
		return &openflow.PacketIn2{Packet: pkt, Userdata: []byte{userdata}, Metadata: md}
	}
	good := bigTCP(t, true, 0)
	stranger := append([]byte(nil), good...)
	copy(stranger[26:30], []byte{198, 19, 1, 99}) // not a container of this host
	icmpErr := append([]byte(nil), good...)
	icmpErr[23], icmpErr[34] = 1, 3
	for _, tc := range []struct {
		name    string
		pin     *openflow.PacketIn2
		outcome string
	}{
		{"no in_port", pin(0, flows.PuntFragNeeded, good), fragBad},
		{"short packet", pin(4, flows.PuntFragNeeded, good[:30]), fragBad},
		{"source not a local container", pin(4, flows.PuntFragNeeded, stranger), fragBad},
		{"an ICMP error", pin(4, flows.PuntFragNeeded, icmpErr), fragNotAnswer},
		{"a container's packet", pin(4, flows.PuntFragNeeded, good), fragFailed},
		{"the host's own packet (gateway port), any source", pin(3, flows.PuntFragNeeded, stranger), fragFailed},
	} {
		before := testutil.ToFloat64(a.metrics.fragNeeded.WithLabelValues(tc.outcome))
		a.onPacketIn(tc.pin)
		if got := testutil.ToFloat64(a.metrics.fragNeeded.WithLabelValues(tc.outcome)) - before; got != 1 {
			t.Errorf("%s: keyroute_frag_needed_total{outcome=%q} went up by %v, want 1", tc.name, tc.outcome, got)
		}
	}
	// A cache-miss punt in tunnel mode (no cache) is counted as bad.
	before := testutil.ToFloat64(a.metrics.punts.WithLabelValues("bad"))
	a.onPacketIn(pin(4, flows.PuntMiss, good))
	if got := testutil.ToFloat64(a.metrics.punts.WithLabelValues("bad")) - before; got != 1 {
		t.Errorf("a cache-miss punt without a cache: bad punts went up by %v, want 1", got)
	}
}
