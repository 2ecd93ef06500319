package fabric

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
)

// This file turns a model into OpenFlow flows for a simulated fabric in
// which each device is an Open vSwitch bridge (the e2e tests' fabric). OVS
// has no ECMP hash that matches a model's function, so ECMP is written as
// masked flows: for xor over two members the member is the parity of the
// low bits of the fields, and each parity combination is one flow.

// OVSFlow is one flow of a simulated device.
type OVSFlow struct {
	Priority int
	// Proto is "ip", "arp", "tcp", "udp" or "icmp".
	Proto string
	Dst   netip.Addr
	// SrcBit and DPortBit, when set, match the low bit of the source
	// address and of the destination port.
	SrcBit, DPortBit *uint8
	OutPort          string
}

func (f OVSFlow) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "priority=%d,%s", f.Priority, f.Proto)
	if f.Proto == "arp" {
		fmt.Fprintf(&b, ",arp_tpa=%s", f.Dst)
	} else {
		fmt.Fprintf(&b, ",nw_dst=%s", f.Dst)
	}
	if f.SrcBit != nil {
		fmt.Fprintf(&b, ",nw_src=0.0.0.%d/0.0.0.1", *f.SrcBit)
	}
	if f.DPortBit != nil {
		fmt.Fprintf(&b, ",tp_dst=%d/0x1", *f.DPortBit)
	}
	fmt.Fprintf(&b, " actions=output:%s", f.OutPort)
	return b.String()
}

// Matches reports whether the flow matches t (ARP flows match nothing:
// tuples are IP).
func (f OVSFlow) Matches(t Tuple) bool {
	switch f.Proto {
	case "arp":
		return false
	case "tcp":
		if t.Proto != ProtoTCP {
			return false
		}
	case "udp":
		if t.Proto != ProtoUDP {
			return false
		}
	case "icmp":
		if t.Proto != ProtoICMP {
			return false
		}
	}
	if t.Dst != f.Dst {
		return false
	}
	if f.SrcBit != nil && uint8(u32(t.Src)&1) != *f.SrcBit {
		return false
	}
	if f.DPortBit != nil && uint8(t.DPort&1) != *f.DPortBit {
		return false
	}
	return true
}

// OVSFlows returns the flows that make the bridge for device behave as the
// model says: towards every host, the next hop the model's route picks.
// Only xor over at most two members can be written this way; anything
// else is an error.
func (m *Model) OVSFlows(device string) ([]OVSFlow, error) {
	dev, ok := m.Device(device)
	if !ok {
		return nil, fmt.Errorf("no device %q in the fabric model", device)
	}
	var out []OVSFlow
	for _, h := range m.Hosts {
		if h.Attach == device {
			out = append(out,
				OVSFlow{Priority: 100, Proto: "ip", Dst: h.IP, OutPort: h.PortName()},
				OVSFlow{Priority: 100, Proto: "arp", Dst: h.IP, OutPort: h.PortName()})
			continue
		}
		dist := m.distances([]string{h.Attach})
		d, reach := dist[device]
		if !reach {
			continue
		}
		var cands []neighbour
		for _, n := range m.neighbours(device) {
			if nd, ok := dist[n.dev]; ok && nd == d-1 {
				cands = append(cands, n)
			}
		}
		// ARP is not hashed: it follows member 0, so it reaches the host
		// without flooding around the fabric's loops.
		out = append(out, OVSFlow{Priority: 100, Proto: "arp", Dst: h.IP, OutPort: cands[0].port})
		if len(cands) == 1 {
			out = append(out, OVSFlow{Priority: 100, Proto: "ip", Dst: h.IP, OutPort: cands[0].port})
			continue
		}
		p := dev.ECMP
		if p == nil || p.Function != FuncXOR || len(cands) != 2 || len(p.Groups) > 0 {
			return nil, fmt.Errorf("device %s: %d next hops towards %s: OVS flows can only express a one-level xor hash over 2 members", device, len(cands), h.Name)
		}
		if p.Members != 0 && p.Members != 2 {
			return nil, fmt.Errorf("device %s: ecmp declares %d members but the topology gives 2", device, p.Members)
		}
		for _, proto := range []string{"tcp", "udp", "icmp"} {
			out = append(out, xorFlows(p, proto, h.IP, cands)...)
		}
		// Other IP protocols are not modelled; they take member 0.
		out = append(out, OVSFlow{Priority: 90, Proto: "ip", Dst: h.IP, OutPort: cands[0].port})
	}
	return out, nil
}

// xorFlows writes the parity of sip ^ dip ^ proto ^ (sport<<16) ^ dport
// (the fields the policy lists) as flows. sport never reaches bit 0.
func xorFlows(p *Policy, proto string, dst netip.Addr, cands []neighbour) []OVSFlow {
	var konst uint8
	useSrc, usePort := false, false
	for _, f := range p.Fields {
		switch f {
		case "sip":
			useSrc = true
		case "dip":
			konst ^= uint8(u32(dst) & 1)
		case "proto":
			konst ^= map[string]uint8{"tcp": ProtoTCP, "udp": ProtoUDP, "icmp": ProtoICMP}[proto] & 1
		case "dport":
			usePort = proto != "icmp"
		}
	}
	bits := func(use bool) []*uint8 {
		if !use {
			return []*uint8{nil}
		}
		zero, one := uint8(0), uint8(1)
		return []*uint8{&zero, &one}
	}
	var out []OVSFlow
	for _, sb := range bits(useSrc) {
		for _, db := range bits(usePort) {
			member := konst
			if sb != nil {
				member ^= *sb
			}
			if db != nil {
				member ^= *db
			}
			out = append(out, OVSFlow{Priority: 100, Proto: proto, Dst: dst, SrcBit: sb, DPortBit: db, OutPort: cands[member].port})
		}
	}
	return out
}

// DevicePorts returns every port name of a device: its links' ends and its
// hosts' ports, in a stable order.
func (m *Model) DevicePorts(device string) []string {
	var out []string
	for _, n := range m.neighbours(device) {
		out = append(out, n.port)
	}
	for _, h := range m.Hosts {
		if h.Attach == device {
			out = append(out, h.PortName())
		}
	}
	return slices.Compact(out)
}
