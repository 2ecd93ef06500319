package flows

import (
	"net"
	"net/netip"
	"sync/atomic"

	"github.com/keyroute/keyroute/openflow"
)

// Host is what the pipelines need to know about this host.
type Host struct {
	Name string
	// IP and MAC are the underlay address (on br-phy's LOCAL port).
	IP  netip.Addr
	MAC net.HardwareAddr
	// UnderlayIPs are further addresses on br-phy's LOCAL port that cache
	// keys may use (underlay_ips); the key addresses are IP, then these.
	UnderlayIPs []netip.Addr
	// Subnet is this host's pod subnet; Gateway its first address, held by
	// the gateway port.
	Subnet  netip.Prefix
	Gateway netip.Addr
	// GatewayMAC is the virtual MAC containers see for their gateway (the
	// ArpResponder answers with it); GatewayPortMAC is the gateway port's
	// own MAC, the host kernel's side.
	GatewayMAC     net.HardwareAddr
	GatewayPortMAC net.HardwareAddr
	// Cluster is the cluster-wide pod CIDR.
	Cluster netip.Prefix
	VNI     uint32
	// br-int ports.
	VXLANPort, GatewayPort, PatchPort uint32
	// br-phy ports.
	UplinkPort, PhyPatchPort uint32
	// TunnelUDPPort is the cluster's VXLAN UDP port (cluster.vxlan_port).
	TunnelUDPPort uint16
	// TunnelMTU is the largest IP packet VXLAN carries without exceeding
	// the uplink's MTU: uplink MTU - 50 (outer IPv4 20, UDP 8, VXLAN 8,
	// inner Ethernet 14).
	TunnelMTU int
	// ProtectedTCPPorts are the control plane's TCP ports on this host
	// (Config.ProtectedTCPPorts): containers may not reach them on the
	// host's own addresses (GuardFlows).
	ProtectedTCPPorts []uint16
}

// Endpoint is a container attached on this host.
type Endpoint struct {
	Name string
	IP   netip.Addr
	MAC  net.HardwareAddr
	Port uint32
}

// Peer is another host of the cluster.
type Peer struct {
	Name   string
	IP     netip.Addr
	Subnet netip.Prefix
	// UnderlayIPs are the peer's further key addresses (its host
	// record's underlay_ips).
	UnderlayIPs []netip.Addr
}

// KeyAddrs returns the host's key addresses: IP first, then UnderlayIPs.
func (h Host) KeyAddrs() []netip.Addr { return append([]netip.Addr{h.IP}, h.UnderlayIPs...) }

// KeyAddrs returns the peer's key addresses: IP first, then UnderlayIPs.
func (p Peer) KeyAddrs() []netip.Addr { return append([]netip.Addr{p.IP}, p.UnderlayIPs...) }

// Priorities, from specific to catch-all.
const (
	prioHigh    = 200
	prioNormal  = 100
	prioLow     = 50
	prioDefault = 10
	prioMiss    = 0
)

// table is either bridge's table type.
type table interface{ IntTable | PhyTable }

// flow is a small constructor so the builders read like ovs-ofctl lines.
func flow[T table](t T, prio uint16, cookie uint64, match []openflow.OXM, ins ...openflow.Instruction) *openflow.FlowMod {
	return &openflow.FlowMod{
		Command:      openflow.FlowAdd,
		Table:        uint8(t),
		Priority:     prio,
		Cookie:       cookie,
		Match:        openflow.Match{Fields: match},
		Instructions: ins,
	}
}

func apply(acts ...openflow.Action) openflow.Instruction { return openflow.ApplyActions(acts...) }

func gotoTable[T table](t T) openflow.Instruction { return openflow.GotoTable(uint8(t)) }

func m(fields ...openflow.OXM) []openflow.OXM { return fields }

func setf(o openflow.OXM) openflow.Action { return openflow.NewSetField(o) }

func out(port uint32) openflow.Action { return openflow.OutputPort(port) }

func move(src, dst openflow.Subfield) openflow.Action { return &openflow.Move{Src: src, Dst: dst} }

func pipelineCookie(t IntTable) uint64 { return Cookie(CatPipeline, uint64(t)) }

// ip4ID is an IPv4 address as a cookie's object id. The builders skip
// inputs that are not IPv4 before they get here (see SkippedInputs); for
// anything else it returns 0 rather than panic, as a panic on a bad address
// from etcd would take every agent down.
func ip4ID(a netip.Addr) uint64 {
	a = a.Unmap()
	if !a.Is4() {
		return 0
	}
	b := a.As4()
	return uint64(b[0])<<24 | uint64(b[1])<<16 | uint64(b[2])<<8 | uint64(b[3])
}

// skipped counts inputs the builders left out; see SkippedInputs.
var skipped atomic.Uint64

// SkippedInputs counts, since start, the endpoints, peers and roaming
// addresses the builders left out because an address was not IPv4 (or a
// MAC not 6 bytes): the datapath matches 4-byte addresses. Records are
// validated when read from etcd, so it stays 0; it is a second line, so an
// address that slipped through costs only its own flows, not the agent (a
// panic) or every other flow (a switch refusing the batch).
func SkippedInputs() uint64 { return skipped.Load() }

func is4(a netip.Addr) bool { return a.Unmap().Is4() }

func (p Peer) valid() bool {
	return is4(p.IP) && p.Subnet.IsValid() && is4(p.Subnet.Addr())
}

func (ep Endpoint) valid() bool { return is4(ep.IP) && len(ep.MAC) == 6 }

func (r Roaming) valid() bool { return is4(r.IP) && (r.Host == nil || r.Host.valid()) }

// skip counts an input left out.
func skip() []*openflow.FlowMod {
	skipped.Add(1)
	return nil
}

// IntPipeline returns br-int's fixed flows: table misses, classification of
// the tunnel, gateway and patch ports, and the routes that do not depend on
// containers or peers.
func IntPipeline(h Host) []*openflow.FlowMod {
	var fs []*openflow.FlowMod
	// Every table drops what it does not know, except the rule tables,
	// which allow by default (no rule = allow) and the cache, whose miss
	// is the normal Forward path.
	for t := Classify; t <= TunnelOut; t++ {
		switch t {
		case EgressRules:
			fs = append(fs, flow(t, prioMiss, pipelineCookie(t), nil, gotoTable(EgressCache)))
		case EgressCache:
			fs = append(fs, flow(t, prioMiss, pipelineCookie(t), nil, gotoTable(Forward)))
		case IngressRules:
			fs = append(fs, flow(t, prioMiss, pipelineCookie(t), nil, gotoTable(Deliver)))
		case TunnelOut:
			fs = append(fs, flow(t, prioMiss, pipelineCookie(t), nil, apply(out(h.VXLANPort))))
		default:
			fs = append(fs, flow(t, prioMiss, pipelineCookie(t), nil))
		}
	}
	gw := Cookie(CatGateway, ip4ID(h.Gateway))
	fs = append(fs,
		// Classify: tunnel, patch and gateway ports (containers are added
		// per endpoint).
		flow(Classify, prioNormal, pipelineCookie(Classify), m(openflow.MatchInPort(h.VXLANPort)), gotoTable(TunnelIn)),
		flow(Classify, prioNormal, pipelineCookie(Classify), m(openflow.MatchInPort(h.PatchPort)), gotoTable(Restore)),
		flow(Classify, prioNormal, gw, m(openflow.MatchInPort(h.GatewayPort), openflow.MatchEthType(ethARP)), gotoTable(ArpResponder)),
		flow(Classify, prioNormal, gw, m(openflow.MatchInPort(h.GatewayPort), openflow.MatchEthType(ethIPv4)), gotoTable(Forward)),

		// ArpResponder: containers ask for their gateway; the host's
		// gateway port asks for any cluster address it routes to br-int.
		flow(ArpResponder, prioNormal, Cookie(CatARP, ip4ID(h.Gateway)),
			m(openflow.MatchEthType(ethARP), openflow.MatchARPOp(arpRequest), openflow.MatchARPTPA(h.Gateway)),
			apply(arpReply(h.GatewayMAC)...)),
		flow(ArpResponder, prioLow, Cookie(CatARP, ip4ID(h.Cluster.Addr())),
			m(openflow.MatchInPort(h.GatewayPort), openflow.MatchEthType(ethARP), openflow.MatchARPOp(arpRequest), openflow.MatchARPTPAMasked(h.Cluster)),
			apply(arpReply(h.GatewayMAC)...)),

		// Forward: local subnet → IngressRules; the rest of the cluster
		// without a known host is dropped; traffic from the gateway port
		// to outside the cluster has nowhere to go; containers reach the
		// outside through the gateway port.
		flow(Forward, prioNormal, pipelineCookie(Forward), m(openflow.MatchEthType(ethIPv4), openflow.MatchIPv4DstMasked(h.Subnet)), gotoTable(IngressRules)),
		flow(Forward, prioLow, pipelineCookie(Forward), m(openflow.MatchEthType(ethIPv4), openflow.MatchIPv4DstMasked(h.Cluster))),
		flow(Forward, prioDefault+1, gw, m(openflow.MatchInPort(h.GatewayPort), openflow.MatchEthType(ethIPv4))),
		flow(Forward, prioDefault, gw, m(openflow.MatchEthType(ethIPv4)),
			apply(setf(openflow.MatchEthDst(h.GatewayPortMAC)), out(h.GatewayPort))),

		// TunnelOut: a packet too big for the tunnel goes to the agent
		// (metered, the first bytes only: the ICMP quotes the IP header
		// and 8 bytes) and no further; the rest leave by the miss above.
		flow(TunnelOut, prioNormal, pipelineCookie(TunnelOut), m(TunnelTooBig.Match(1)),
			apply(&openflow.Controller{MaxLen: FragNeededMaxLen, Userdata: []byte{PuntFragNeeded}, MeterID: FragNeededMeter})),

		// Deliver: the gateway IP is the host itself.
		flow(Deliver, prioNormal, gw, m(openflow.MatchEthType(ethIPv4), openflow.MatchIPv4Dst(h.Gateway)),
			apply(setf(openflow.MatchEthDst(h.GatewayPortMAC)), out(h.GatewayPort))),
	)
	return fs
}

// arpReply turns an ARP request into the reply "tpa is at mac", sent back
// out of the port it came in on. The two protocol addresses swap through
// ARPSwap.
func arpReply(mac net.HardwareAddr) []openflow.Action {
	w := openflow.Whole
	return []openflow.Action{
		move(w(openflow.FieldEthSrc), w(openflow.FieldEthDst)),
		setf(openflow.MatchEthSrc(mac)),
		setf(openflow.MatchARPOp(arpReplyOp)),
		move(w(openflow.FieldARPSHA), w(openflow.FieldARPTHA)),
		setf(openflow.MatchARPSHA(mac)),
		move(w(openflow.FieldARPTPA), ARPSwap.Subfield()),
		move(w(openflow.FieldARPSPA), w(openflow.FieldARPTPA)),
		move(ARPSwap.Subfield(), w(openflow.FieldARPSPA)),
		out(openflow.PortInPort),
	}
}

const (
	ethIPv4    = 0x0800
	ethARP     = 0x0806
	arpRequest = 1
	arpReplyOp = 2
)

// EndpointFlows returns a local container's flows: classification of its
// port, SpoofGuard (its port, MAC and IP must agree), delivery.
func EndpointFlows(h Host, ep Endpoint) []*openflow.FlowMod {
	if !ep.valid() {
		return skip()
	}
	c := Cookie(CatEndpoint, ip4ID(ep.IP))
	return []*openflow.FlowMod{
		flow(Classify, prioNormal, c, m(openflow.MatchInPort(ep.Port)), gotoTable(SpoofGuard)),
		flow(SpoofGuard, prioNormal, c,
			m(openflow.MatchInPort(ep.Port), openflow.MatchEthSrc(ep.MAC), openflow.MatchEthType(ethIPv4), openflow.MatchIPv4Src(ep.IP)),
			gotoTable(EgressRules)),
		flow(SpoofGuard, prioNormal, c,
			m(openflow.MatchInPort(ep.Port), openflow.MatchEthSrc(ep.MAC), openflow.MatchEthType(ethARP), openflow.MatchARPSPA(ep.IP), openflow.MatchARPSHA(ep.MAC)),
			gotoTable(ArpResponder)),
		flow(Deliver, prioNormal, c, m(openflow.MatchEthType(ethIPv4), openflow.MatchIPv4Dst(ep.IP)),
			apply(setf(openflow.MatchEthSrc(h.GatewayMAC)), setf(openflow.MatchEthDst(ep.MAC)), out(ep.Port))),
	}
}

// PeerFlows returns the flows for another host: Forward its pod subnet
// through VXLAN, and accept VXLAN from it.
func PeerFlows(h Host, p Peer) []*openflow.FlowMod {
	if !p.valid() {
		return skip()
	}
	c := Cookie(CatPeer, ip4ID(p.IP))
	return []*openflow.FlowMod{
		flow(Forward, prioNormal, Cookie(CatSubnet, ip4ID(p.Subnet.Addr())),
			m(openflow.MatchEthType(ethIPv4), openflow.MatchIPv4DstMasked(p.Subnet)),
			tunnelOut(h, p.IP, h.VNI)...),
		flow(TunnelIn, prioNormal, c,
			m(openflow.MatchInPort(h.VXLANPort), openflow.MatchTunnelID(uint64(h.VNI)), openflow.MatchTunSrc(p.IP), openflow.MatchEthType(ethIPv4), openflow.MatchIPv4DstMasked(h.Subnet)),
			gotoTable(IngressRules)),
	}
}

// tunnelOut sends a packet through VXLAN to peer with VNI vni: it sets
// the tunnel's metadata and whether the packet fits, and TunnelOut sends it
// or punts it. check_pkt_larger counts the Ethernet frame the tunnel
// carries whole, so the limit is the inner IP packet's TunnelMTU plus the
// 14-byte Ethernet header (container frames carry no VLAN tag: SpoofGuard
// admits only untagged IPv4 and ARP).
func tunnelOut(h Host, peer netip.Addr, vni uint32) []openflow.Instruction {
	return []openflow.Instruction{
		apply(setf(openflow.MatchTunDst(peer)), setf(openflow.MatchTunnelID(uint64(vni))),
			&openflow.CheckPktLarger{PktLen: uint16(h.TunnelMTU + ethHeaderLen), Dst: TunnelTooBig.Subfield()}),
		gotoTable(TunnelOut),
	}
}

// The meter and punt length of the packets too big for the tunnel
// (userdata PuntFragNeeded).
const (
	// FragNeededMeter bounds them (the agent answers each with an ICMP).
	FragNeededMeter = 2
	// FragNeededMaxLen is what the agent needs of one: Ethernet 14, an IP
	// header with options 60, 8 bytes of payload; rounded up.
	FragNeededMaxLen = 128
	ethHeaderLen     = 14
)

// PhyPipeline returns br-phy's flows: the uplink and the host stack on
// LOCAL talk to each other directly (no MAC learning on the hot path); the
// patch port reaches the uplink.
func PhyPipeline(h Host) []*openflow.FlowMod {
	c := Cookie(CatUnderlay, 0)
	return []*openflow.FlowMod{
		flow(Underlay, prioMiss, c, nil, apply(out(openflow.PortNormal))),
		flow(Underlay, prioDefault, c, m(openflow.MatchInPort(h.UplinkPort)), apply(out(openflow.PortLocal))),
		flow(Underlay, prioDefault, c, m(openflow.MatchInPort(openflow.PortLocal)), apply(out(h.UplinkPort))),
		flow(Underlay, prioDefault, c, m(openflow.MatchInPort(h.PhyPatchPort)), apply(out(h.UplinkPort))),
	}
}

// IntFlows is br-int's whole desired flow set for a host state.
func IntFlows(h Host, eps []Endpoint, peers []Peer, roaming []Roaming) []*openflow.FlowMod {
	fs := IntPipeline(h)
	fs = append(fs, GuardFlows(h, peers)...)
	for _, ep := range eps {
		fs = append(fs, EndpointFlows(h, ep)...)
	}
	for _, p := range peers {
		fs = append(fs, PeerFlows(h, p)...)
	}
	for _, r := range roaming {
		fs = append(fs, RoamingFlows(h, r, peers)...)
	}
	return fs
}

// Roaming is a container address outside its host's pod subnet (an IP that
// moved hosts). Host is nil when the container is attached here.
type Roaming struct {
	IP   netip.Addr
	Host *Peer
}

// RoamingFlows routes one roaming address with a /32 that beats every
// subnet route: through VXLAN to the host that holds it, or, when it is
// local, into IngressRules (and accepted from every peer's tunnel).
func RoamingFlows(h Host, r Roaming, peers []Peer) []*openflow.FlowMod {
	if !r.valid() {
		return skip()
	}
	c := Cookie(CatSubnet, ip4ID(r.IP))
	if r.Host != nil {
		return []*openflow.FlowMod{flow(Forward, prioHigh, c,
			m(openflow.MatchEthType(ethIPv4), openflow.MatchIPv4Dst(r.IP)),
			tunnelOut(h, r.Host.IP, h.VNI)...)}
	}
	fs := []*openflow.FlowMod{flow(Forward, prioHigh, c, m(openflow.MatchEthType(ethIPv4), openflow.MatchIPv4Dst(r.IP)), gotoTable(IngressRules))}
	for _, p := range peers {
		if !p.valid() {
			continue // counted by PeerFlows
		}
		fs = append(fs, flow(TunnelIn, prioNormal, Cookie(CatPeer, ip4ID(p.IP)),
			m(openflow.MatchInPort(h.VXLANPort), openflow.MatchTunnelID(uint64(h.VNI)), openflow.MatchTunSrc(p.IP), openflow.MatchEthType(ethIPv4), openflow.MatchIPv4Dst(r.IP)),
			gotoTable(IngressRules)))
	}
	return fs
}

const (
	protoTCP = 6
	protoUDP = 17
)

// GuardCookie is the cookie of the SpoofGuard drop for container traffic
// to dst on proto/port: the id packs dst<<24 | proto<<16 | port, so a
// counter read from flow stats names what was dropped.
func GuardCookie(dst netip.Addr, proto uint8, port uint16) uint64 {
	return Cookie(CatGuard, ip4ID(dst)<<24|uint64(proto)<<16|uint64(port))
}

// GuardTarget decodes a guard cookie's id into what it drops.
func GuardTarget(cookie uint64) (dst netip.Addr, proto uint8, port uint16) {
	id := CookieID(cookie)
	a := uint32(id >> 24)
	return netip.AddrFrom4([4]byte{byte(a >> 24), byte(a >> 16), byte(a >> 8), byte(a)}), uint8(id >> 16), uint16(id)
}

// GuardFlows keeps containers off the control plane. SpoofGuard is only
// entered from container ports (Classify), so these drops, above the
// per-endpoint accepts, see every packet a container sends, on any
// datapath and before any address check:
//   - TCP to this host's own addresses (underlay IP, gateway IP) on the
//     protected ports (etcd client and peer, a non-loopback metrics or
//     pprof listener);
//   - UDP to the cluster's VXLAN port on any cluster host's underlay
//     address (this host's and every peer's) and on the gateway IP: the
//     host would masquerade such a packet to its own IP and the peer's
//     TunnelIn would take it for this host's tunnel traffic, an inner
//     packet with any source address past every SpoofGuard.
func GuardFlows(h Host, peers []Peer) []*openflow.FlowMod {
	var fs []*openflow.FlowMod
	own := []netip.Addr{h.IP, h.Gateway}
	for _, dst := range own {
		if !dst.Is4() {
			continue
		}
		for _, port := range h.ProtectedTCPPorts {
			fs = append(fs, flow(SpoofGuard, prioHigh, GuardCookie(dst, protoTCP, port),
				m(openflow.MatchEthType(ethIPv4), openflow.MatchIPProto(protoTCP), openflow.MatchIPv4Dst(dst), openflow.MatchTCPDst(port))))
		}
	}
	if h.TunnelUDPPort == 0 {
		return fs
	}
	tunnelDsts := own
	for _, p := range peers {
		if p.valid() { // the others are left out (and counted) by IntFlows
			tunnelDsts = append(tunnelDsts, p.IP)
		}
	}
	seen := map[netip.Addr]bool{}
	for _, dst := range tunnelDsts {
		if !dst.Is4() || seen[dst] {
			continue
		}
		seen[dst] = true
		fs = append(fs, flow(SpoofGuard, prioHigh, GuardCookie(dst, protoUDP, h.TunnelUDPPort),
			m(openflow.MatchEthType(ethIPv4), openflow.MatchIPProto(protoUDP), openflow.MatchIPv4Dst(dst), openflow.MatchUDPDst(h.TunnelUDPPort))))
	}
	return fs
}
