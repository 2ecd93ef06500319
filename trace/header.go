package trace

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	"github.com/keyroute/keyroute/fabric"
)

// Header is a packet's header fields as ofproto/trace reads and prints
// them.
type Header struct {
	SrcMAC string     `json:"src_mac,omitempty"`
	DstMAC string     `json:"dst_mac,omitempty"`
	Src    netip.Addr `json:"src"`
	Dst    netip.Addr `json:"dst"`
	Proto  uint8      `json:"proto"`
	DSCP   uint8      `json:"dscp"`
	SPort  uint16     `json:"sport"`
	DPort  uint16     `json:"dport"`
}

// ParseProto reads "tcp", "udp", "icmp" with an optional "/port".
func ParseProto(s string) (proto uint8, port uint16, err error) {
	name, p, hasPort := strings.Cut(s, "/")
	switch strings.ToLower(name) {
	case "tcp":
		proto = fabric.ProtoTCP
	case "udp", "":
		proto = fabric.ProtoUDP
	case "icmp":
		proto = fabric.ProtoICMP
	default:
		return 0, 0, fmt.Errorf("protocol %q: use tcp, udp or icmp, optionally with /port", s)
	}
	if hasPort {
		if proto == fabric.ProtoICMP {
			return 0, 0, fmt.Errorf("protocol %q: icmp has no ports", s)
		}
		n, err := strconv.ParseUint(p, 10, 16)
		if err != nil || n == 0 {
			return 0, 0, fmt.Errorf("protocol %q: port must be 1-65535", s)
		}
		port = uint16(n)
	}
	return proto, port, nil
}

// OVSFlow writes h as an ofproto/trace flow arriving on inPort.
func (h Header) OVSFlow(inPort string, extra ...string) string {
	parts := []string{"in_port=" + inPort}
	parts = append(parts, extra...)
	parts = append(parts, fabric.ProtoName(h.Proto))
	if h.SrcMAC != "" {
		parts = append(parts, "dl_src="+h.SrcMAC)
	}
	if h.DstMAC != "" {
		parts = append(parts, "dl_dst="+h.DstMAC)
	}
	parts = append(parts, "nw_src="+h.Src.String(), "nw_dst="+h.Dst.String(), fmt.Sprintf("nw_tos=%d", h.DSCP<<2), "nw_ttl=64")
	switch h.Proto {
	case fabric.ProtoTCP:
		parts = append(parts, fmt.Sprintf("tcp_src=%d,tcp_dst=%d", h.SPort, h.DPort))
	case fabric.ProtoUDP:
		parts = append(parts, fmt.Sprintf("udp_src=%d,udp_dst=%d", h.SPort, h.DPort))
	case fabric.ProtoICMP:
		parts = append(parts, "icmp_type=8,icmp_code=0")
	}
	return strings.Join(parts, ",")
}

// Tuple is the header's 5-tuple for the fabric model.
func (h Header) Tuple() fabric.Tuple {
	return fabric.Tuple{Src: h.Src, Dst: h.Dst, Proto: h.Proto, SPort: h.SPort, DPort: h.DPort}
}

// FinalHeader reads the header fields out of an OVS flow string (a trace's
// "Flow:" or "Final flow:" line).
func FinalHeader(flow string) (Header, error) {
	var h Header
	for i, f := range strings.Split(flow, ",") {
		k, v, ok := strings.Cut(f, "=")
		if !ok {
			if i == 0 {
				switch k {
				case "tcp":
					h.Proto = fabric.ProtoTCP
				case "udp":
					h.Proto = fabric.ProtoUDP
				case "icmp":
					h.Proto = fabric.ProtoICMP
				}
			}
			continue
		}
		var err error
		switch k {
		case "dl_src":
			h.SrcMAC = v
		case "dl_dst":
			h.DstMAC = v
		case "nw_src":
			h.Src, err = netip.ParseAddr(v)
		case "nw_dst":
			h.Dst, err = netip.ParseAddr(v)
		case "nw_tos":
			var n uint64
			n, err = strconv.ParseUint(v, 10, 8)
			h.DSCP = uint8(n >> 2)
		case "tp_src":
			var n uint64
			n, err = strconv.ParseUint(v, 10, 16)
			h.SPort = uint16(n)
		case "tp_dst":
			var n uint64
			n, err = strconv.ParseUint(v, 10, 16)
			h.DPort = uint16(n)
		}
		if err != nil {
			return h, fmt.Errorf("flow %q: %s: %w", flow, k, err)
		}
	}
	if !h.Src.IsValid() || !h.Dst.IsValid() {
		return h, fmt.Errorf("flow %q has no IPv4 addresses", flow)
	}
	return h, nil
}
