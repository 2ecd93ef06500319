package flows

import (
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/keyroute/keyroute/openflow"
)

// This file builds rewrite mode's flows (DESIGN.md "Cache bootstrap"): the
// punt of cache misses, the per-pair EgressCache and Restore entries, and
// br-phy's admission and clearing of keyed packets.

// Punt userdata: the first byte of a controller action's userdata says why
// the packet was sent to the agent.
const (
	PuntMiss byte = 1 // an EgressCache miss towards another host
	// PuntFragNeeded is a packet too big for VXLAN (TunnelOut), for the
	// agent to answer with ICMP "fragmentation needed".
	PuntFragNeeded byte = 2
)

// PuntMeter is the meter that bounds cache-miss punts.
const PuntMeter = 1

// KeyedVNIFlag marks a VXLAN packet whose VNI carries a cache key in its
// low 6 bits; the plain overlay VNI must stay below it.
const KeyedVNIFlag = 0x800000

// KeyedVNI is the VNI that carries key k.
func KeyedVNI(k uint8) uint32 { return KeyedVNIFlag | uint32(k) }

// Rewrite is the configuration shared by all cache entries.
type Rewrite struct {
	SendIdle time.Duration
	// FallbackRetry is a fallback entry's hard timeout (0: none): a pair
	// that keeps sending on VXLAN without a key punts again after it and
	// retries, whatever kept it off the fast path.
	FallbackRetry time.Duration
	Keys          []uint8 // the usable key set
	// ProbePort is the agents' DSCP path probe port (UDP, the same on
	// every host; 0: no probe). Probes between peer hosts keep their
	// DSCP on br-phy and reach LOCAL, never br-int.
	ProbePort uint16
}

// Pair is one cache entry's subject: container Src on this host sending to
// container Dst on Peer.
type Pair struct {
	Src, Dst netip.Addr
	Peer     Peer
	Key      uint8 // 0: no key (plain VXLAN fallback)
	// NextHop is the underlay MAC the rewritten packet is sent to (the
	// peer's, or a router's).
	NextHop net.HardwareAddr
}

// CacheState is what an EgressCache entry does.
type CacheState int

// Cache entry states.
const (
	// CachePending sends the pair's packets through VXLAN with the key in
	// the VNI while the receiver installs its Restore entry.
	CachePending CacheState = iota
	// CacheReady rewrites the packet and sends it un-encapsulated.
	CacheReady
	// CacheFallback sends the pair through plain VXLAN without punting,
	// for pairs that cannot have a key now.
	CacheFallback
)

func (s CacheState) String() string {
	switch s {
	case CachePending:
		return "pending"
	case CacheReady:
		return "ready"
	case CacheFallback:
		return "fallback"
	}
	return fmt.Sprintf("CacheState(%d)", int(s))
}

// PairID is the object id of a pair's cache cookies: the peer's IPv4 and the
// key, so one cookie names one (peer, key) on both ends.
func PairID(peer netip.Addr, key uint8) uint64 { return ip4ID(peer)<<8 | uint64(key) }

// CacheCookie is the cookie of the EgressCache entry for (peer, key).
func CacheCookie(peer netip.Addr, key uint8) uint64 { return Cookie(CatCache, PairID(peer, key)) }

// RestoreCookie is the cookie of the Restore entry for (peer, key).
func RestoreCookie(peer netip.Addr, key uint8) uint64 { return Cookie(CatRestore, PairID(peer, key)) }

func seconds(d time.Duration) uint16 {
	s := d / time.Second
	if s < 1 {
		return 1
	}
	if s > 65535 {
		return 65535
	}
	return uint16(s)
}

// cacheMatch is the pair's EgressCache match: container addresses and no
// DSCP (a packet that already carries a DSCP keeps it and stays on VXLAN).
func cacheMatch(p Pair) []openflow.OXM {
	return m(openflow.MatchEthType(ethIPv4), openflow.MatchIPv4Src(p.Src), openflow.MatchIPv4Dst(p.Dst), openflow.MatchIPDSCP(0))
}

// CacheFlow builds the pair's EgressCache entry in the given state.
func CacheFlow(h Host, r Rewrite, p Pair, st CacheState) *openflow.FlowMod {
	var ins []openflow.Instruction
	switch st {
	case CachePending:
		ins = tunnelOut(h, p.Peer.IP, KeyedVNI(p.Key))
	case CacheFallback:
		ins = tunnelOut(h, p.Peer.IP, h.VNI)
	case CacheReady:
		// The fast path carries the packet as it is: no encapsulation, so
		// whatever fits the container's MTU fits the uplink's.
		ins = []openflow.Instruction{apply(
			setf(openflow.MatchEthSrc(h.MAC)), setf(openflow.MatchEthDst(p.NextHop)),
			setf(openflow.MatchIPv4Src(h.IP)), setf(openflow.MatchIPv4Dst(p.Peer.IP)),
			setf(openflow.MatchIPDSCP(p.Key)), out(h.PatchPort))}
	}
	f := flow(EgressCache, prioNormal, CacheCookie(p.Peer.IP, p.Key), cacheMatch(p), ins...)
	f.IdleTimeout = seconds(r.SendIdle)
	if st == CacheFallback && r.FallbackRetry > 0 {
		f.HardTimeout = seconds(r.FallbackRetry)
	}
	f.Flags = openflow.SendFlowRem
	return f
}

// RestoreFlow builds the receiver's entry for key k from peer: the keyed
// packet gets its container addresses back and continues to IngressRules
// and Deliver as if it had arrived through the tunnel. It has no idle
// timeout: it lives exactly as long as its key record, which only the
// sender ends (DESIGN.md "Cache protocol v2"). send_flow_rem reports its
// final packet count.
func RestoreFlow(h Host, peer netip.Addr, key uint8, src, dst netip.Addr) *openflow.FlowMod {
	f := flow(Restore, prioNormal, RestoreCookie(peer, key),
		m(openflow.MatchInPort(h.PatchPort), openflow.MatchEthType(ethIPv4), openflow.MatchIPv4Src(peer), openflow.MatchIPv4Dst(h.IP), openflow.MatchIPDSCP(key)),
		apply(setf(openflow.MatchIPv4Src(src)), setf(openflow.MatchIPv4Dst(dst)), setf(openflow.MatchIPDSCP(0))),
		gotoTable(IngressRules))
	f.Flags = openflow.SendFlowRem
	return f
}

// RewritePipeline returns the fixed flows rewrite mode adds to br-int: the
// metered punt of cache misses towards other hosts, and acceptance of
// keyed VXLAN packets from peers (added per peer by RewritePeerFlows).
func RewritePipeline(h Host) []*openflow.FlowMod {
	c := Cookie(CatPunt, 0)
	punt := &openflow.Controller{MaxLen: 0xffff, Userdata: []byte{PuntMiss}, MeterID: PuntMeter}
	return []*openflow.FlowMod{
		// Same-host traffic never needs a cache entry.
		flow(EgressCache, prioDefault+1, c, m(openflow.MatchEthType(ethIPv4), openflow.MatchIPv4DstMasked(h.Subnet)), gotoTable(Forward)),
		// Another host's container, no DSCP yet: a copy goes to the agent
		// (metered) while the packet itself takes the VXLAN path.
		flow(EgressCache, prioDefault, c, m(openflow.MatchEthType(ethIPv4), openflow.MatchIPv4DstMasked(h.Cluster), openflow.MatchIPDSCP(0)),
			apply(punt), gotoTable(Forward)),
	}
}

// RewritePeerFlows returns the per-peer flows of rewrite mode on br-int:
// keyed VXLAN packets from the peer are accepted like plain ones.
func RewritePeerFlows(h Host, p Peer) []*openflow.FlowMod {
	if !p.valid() {
		return skip()
	}
	return []*openflow.FlowMod{
		flow(TunnelIn, prioNormal, Cookie(CatPeer, ip4ID(p.IP)),
			m(openflow.MatchInPort(h.VXLANPort), openflow.MatchTunnelIDMasked(KeyedVNIFlag, 0xffffc0), openflow.MatchTunSrc(p.IP), openflow.MatchEthType(ethIPv4), openflow.MatchIPv4DstMasked(h.Subnet)),
			gotoTable(IngressRules)),
	}
}

// PhyRewriteFlows returns br-phy's rewrite-mode flows: keyed packets from
// known peers go to br-int for Restore (UnderlayKeys decides by DSCP), and
// key DSCPs on what the host itself sends towards a peer host are cleared
// (UnderlayClear), so no local process or container can forge a keyed
// packet; the host's traffic to anything else keeps its DSCP (a router's
// CS6 BGP session, say). The agents' DSCP probes are the one exception:
// they keep their DSCP on the way out and go to LOCAL on the way in. One
// flow per peer in each direction plus two per key: linear, not peers ×
// keys.
func PhyRewriteFlows(h Host, r Rewrite, peers []Peer) []*openflow.FlowMod {
	var fs []*openflow.FlowMod
	for _, p := range peers {
		if !p.valid() {
			skip()
			continue
		}
		pc := Cookie(CatPeer, ip4ID(p.IP))
		fs = append(fs,
			flow(Underlay, prioNormal, pc,
				m(openflow.MatchInPort(h.UplinkPort), openflow.MatchEthType(ethIPv4), openflow.MatchIPv4Src(p.IP), openflow.MatchIPv4Dst(h.IP)),
				gotoTable(UnderlayKeys)),
			flow(Underlay, prioNormal, pc,
				m(openflow.MatchInPort(openflow.PortLocal), openflow.MatchEthType(ethIPv4), openflow.MatchIPv4Dst(p.IP)),
				gotoTable(UnderlayClear)),
		)
	}
	c := Cookie(CatUnderlay, 1)
	fs = append(fs,
		flow(UnderlayKeys, prioMiss, c, nil, apply(out(openflow.PortLocal))),
		flow(UnderlayClear, prioMiss, c, nil, apply(out(h.UplinkPort))),
	)
	if r.ProbePort != 0 {
		probe := m(openflow.MatchEthType(ethIPv4), openflow.MatchIPProto(ProtoUDP), openflow.MatchUDPSrc(r.ProbePort), openflow.MatchUDPDst(r.ProbePort))
		fs = append(fs,
			flow(UnderlayKeys, prioHigh, c, probe, apply(out(openflow.PortLocal))),
			flow(UnderlayClear, prioHigh, c, probe, apply(out(h.UplinkPort))),
		)
	}
	for _, k := range r.Keys {
		fs = append(fs,
			flow(UnderlayKeys, prioNormal, c, m(openflow.MatchEthType(ethIPv4), openflow.MatchIPDSCP(k)), apply(out(h.PhyPatchPort))),
			flow(UnderlayClear, prioNormal, c, m(openflow.MatchEthType(ethIPv4), openflow.MatchIPDSCP(k)),
				apply(setf(openflow.MatchIPDSCP(0)), out(h.UplinkPort))),
		)
	}
	return fs
}
