package agent

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/keyroute/keyroute/flows"
	"github.com/keyroute/keyroute/openflow"
)

// This file answers packets too big for the VXLAN path (TunnelOut punts
// them, DESIGN.md "Container MTU") with ICMP "fragmentation needed", so the
// sender lowers its path MTU for that destination only.

// Outcomes of keyroute_frag_needed_total.
const (
	fragSent      = "sent"       // DF set: ICMP sent, packet dropped
	fragSentNoDF  = "sent_no_df" // DF clear: ICMP sent all the same, packet dropped
	fragNotAnswer = "not_answered"
	fragBad       = "bad"
	fragFailed    = "failed"
)

var fragOutcomes = []string{fragSent, fragSentNoDF, fragNotAnswer, fragBad, fragFailed}

// errNoAnswer marks a valid packet RFC 1122 forbids answering with an ICMP
// error (an ICMP error itself, a non-first fragment, a broadcast or
// multicast source).
var errNoAnswer = errors.New("no ICMP error for this packet")

// fragNeeded builds the Ethernet frame of an ICMP destination unreachable,
// fragmentation needed (type 3 code 4, RFC 792; next-hop MTU per RFC 1191)
// answering frame orig: from srcMAC/srcIP to orig's sender, quoting orig's
// IP header and the first 8 bytes of its payload. df reports whether orig
// had DF set. orig may be cut short after those bytes (a punt's max_len),
// but must hold them whole.
func fragNeeded(orig []byte, srcMAC net.HardwareAddr, srcIP netip.Addr, mtu uint16) (frame []byte, df bool, err error) {
	if len(srcMAC) != 6 || !srcIP.Is4() {
		return nil, false, fmt.Errorf("source %s %s is not an Ethernet MAC and an IPv4 address", srcMAC, srcIP)
	}
	if len(orig) < 14+20 || binary.BigEndian.Uint16(orig[12:]) != 0x0800 {
		return nil, false, errors.New("not an Ethernet/IPv4 frame")
	}
	ip := orig[14:]
	ihl := int(ip[0]&0x0f) * 4
	switch {
	case ip[0]>>4 != 4 || ihl < 20:
		return nil, false, fmt.Errorf("bad IPv4 version/IHL byte 0x%02x", ip[0])
	case int(binary.BigEndian.Uint16(ip[2:])) < ihl:
		return nil, false, fmt.Errorf("IPv4 total length %d below its header's %d", binary.BigEndian.Uint16(ip[2:]), ihl)
	case len(ip) < ihl+8:
		return nil, false, fmt.Errorf("%d bytes of IPv4 packet, need its %d-byte header and 8 more", len(ip), ihl)
	}
	fragOff := binary.BigEndian.Uint16(ip[6:])
	df = fragOff&0x4000 != 0
	src := netip.AddrFrom4([4]byte(ip[12:16]))
	if fragOff&0x1fff != 0 || ip[9] == 1 && isICMPError(ip[ihl]) || !src.IsGlobalUnicast() {
		return nil, df, errNoAnswer
	}
	quote := ip[:ihl+8]

	icmp := make([]byte, 8, 8+len(quote))
	icmp[0], icmp[1] = 3, 4 // destination unreachable, fragmentation needed and DF set
	binary.BigEndian.PutUint16(icmp[6:], mtu)
	icmp = append(icmp, quote...)
	binary.BigEndian.PutUint16(icmp[2:], inetChecksum(icmp))

	hdr := make([]byte, 20)
	hdr[0] = 0x45
	hdr[1] = 0xc0 // DSCP CS6: network control, as routers send ICMP
	binary.BigEndian.PutUint16(hdr[2:], uint16(20+len(icmp)))
	hdr[8] = 64
	hdr[9] = 1
	s4 := srcIP.As4()
	copy(hdr[12:], s4[:])
	copy(hdr[16:], ip[12:16])
	binary.BigEndian.PutUint16(hdr[10:], inetChecksum(hdr))

	frame = make([]byte, 0, 14+len(hdr)+len(icmp))
	frame = append(frame, orig[6:12]...) // to the sender's MAC
	frame = append(frame, srcMAC...)
	frame = append(frame, 0x08, 0x00)
	frame = append(frame, hdr...)
	return append(frame, icmp...), df, nil
}

// isICMPError reports ICMP types that are errors (RFC 1122 3.2.2: never
// answer one with another).
func isICMPError(typ byte) bool {
	switch typ {
	case 3, 4, 5, 11, 12:
		return true
	}
	return false
}

// inetChecksum is the Internet checksum (RFC 1071) of b.
func inetChecksum(b []byte) uint16 {
	var sum uint32
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	if len(b)%2 == 1 {
		sum += uint32(b[len(b)-1]) << 8
	}
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}

// onFragNeeded answers a TunnelOut punt: the packet (dropped by br-int)
// was too big for VXLAN. A container's packet gets its ICMP from the
// gateway address, like one from any router on its path; the host's own
// (from the gateway port) gets it from the unreachable destination's
// address, as the host would drop one from its own gateway address as a
// martian. Everything about the packet is checked: a punt is input from
// the switch, and a container chooses its bytes.
func (a *Agent) onFragNeeded(pin *openflow.PacketIn2) {
	inPort, ok := matchU32(pin.Metadata, openflow.FieldInPort)
	if !ok || len(pin.Packet) < 14+20 {
		a.metrics.fragNeeded.WithLabelValues(fragBad).Inc()
		return
	}
	srcIP := a.host.Gateway
	if inPort == a.host.GatewayPort {
		srcIP = netip.AddrFrom4([4]byte(pin.Packet[14+16 : 14+20]))
	} else if src, _, _, err := parseIPv4(pin.Packet); err != nil || !a.isLocal(src) {
		a.metrics.fragNeeded.WithLabelValues(fragBad).Inc()
		return
	}
	frame, df, err := fragNeeded(pin.Packet, a.host.GatewayMAC, srcIP, uint16(a.host.TunnelMTU))
	switch {
	case errors.Is(err, errNoAnswer):
		a.metrics.fragNeeded.WithLabelValues(fragNotAnswer).Inc()
		return
	case err != nil:
		a.metrics.fragNeeded.WithLabelValues(fragBad).Inc()
		return
	}
	po := &openflow.PacketOut{BufferID: openflow.NoBuffer, InPort: openflow.PortController,
		Actions: []openflow.Action{openflow.OutputPort(inPort)}, Data: frame}
	if err := a.intSw.Send(po); err != nil {
		a.metrics.fragNeeded.WithLabelValues(fragFailed).Inc()
		a.log.Debug("send ICMP fragmentation needed", "port", inPort, "err", err)
		return
	}
	if df {
		a.metrics.fragNeeded.WithLabelValues(fragSent).Inc()
	} else {
		a.metrics.fragNeeded.WithLabelValues(fragSentNoDF).Inc()
	}
}

// onPacketIn dispatches br-int's packet-ins by the punt's userdata.
func (a *Agent) onPacketIn(pin *openflow.PacketIn2) {
	if len(pin.Userdata) == 1 && pin.Userdata[0] == flows.PuntFragNeeded {
		a.onFragNeeded(pin)
		return
	}
	if a.cache == nil {
		a.metrics.punts.WithLabelValues("bad").Inc()
		return
	}
	a.cache.onPunt(pin)
}

// matchU32 returns a 32-bit field's value from a match.
func matchU32(m openflow.Match, f *openflow.Field) (uint32, bool) {
	for _, o := range m.Fields {
		if o.Field == f && len(o.Value) == 4 && len(o.Mask) == 0 {
			return binary.BigEndian.Uint32(o.Value), true
		}
	}
	return 0, false
}
