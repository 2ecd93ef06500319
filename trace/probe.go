package trace

import (
	"fmt"
	"net"
	"net/netip"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"

	"github.com/keyroute/keyroute/api"
)

// ProbePacket builds a probe frame: DSCP 0 always, since keyroute's key
// lives there.
func ProbePacket(r api.ProbeRequest) ([]byte, error) {
	smac, err := net.ParseMAC(r.SrcMAC)
	if err != nil {
		return nil, fmt.Errorf("src_mac: %w", err)
	}
	dmac, err := net.ParseMAC(r.DstMAC)
	if err != nil {
		return nil, fmt.Errorf("dst_mac: %w", err)
	}
	src, err := netip.ParseAddr(r.Src)
	if err != nil || !src.Is4() {
		return nil, fmt.Errorf("src %q is not IPv4", r.Src)
	}
	dst, err := netip.ParseAddr(r.Dst)
	if err != nil || !dst.Is4() {
		return nil, fmt.Errorf("dst %q is not IPv4", r.Dst)
	}
	eth := &layers.Ethernet{SrcMAC: smac, DstMAC: dmac, EthernetType: layers.EthernetTypeIPv4}
	ip := &layers.IPv4{Version: 4, TTL: 64, SrcIP: src.AsSlice(), DstIP: dst.AsSlice()}
	payload := gopacket.Payload([]byte("keyroute-probe"))
	var ls []gopacket.SerializableLayer
	switch r.Proto {
	case "udp":
		ip.Protocol = layers.IPProtocolUDP
		u := &layers.UDP{SrcPort: layers.UDPPort(r.SPort), DstPort: layers.UDPPort(r.DPort)}
		u.SetNetworkLayerForChecksum(ip)
		ls = []gopacket.SerializableLayer{eth, ip, u, payload}
	case "tcp":
		ip.Protocol = layers.IPProtocolTCP
		t := &layers.TCP{SrcPort: layers.TCPPort(r.SPort), DstPort: layers.TCPPort(r.DPort), SYN: true, Window: 1024}
		t.SetNetworkLayerForChecksum(ip)
		ls = []gopacket.SerializableLayer{eth, ip, t}
	case "icmp":
		ip.Protocol = layers.IPProtocolICMPv4
		ls = []gopacket.SerializableLayer{eth, ip, &layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(layers.ICMPv4TypeEchoRequest, 0), Id: 0x6b72}, payload}
	default:
		return nil, fmt.Errorf("proto %q: use tcp, udp or icmp", r.Proto)
	}
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, ls...); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}
