package flows

import (
	"fmt"
	"net"
	"net/netip"
	"slices"
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

// Key is a cache key (DESIGN.md "Key space"): the underlay address pair a
// rewritten packet travels on — Src one of the sending host's key
// addresses, Dst one of the receiving host's — and the DSCP it carries.
// The zero Key (DSCP 0) is "no key". With one address a host, Src and Dst
// are the hosts' underlay IPs and only DSCP varies.
type Key struct {
	Src, Dst netip.Addr
	DSCP     uint8
}

// IsZero reports whether k is "no key".
func (k Key) IsZero() bool { return k.DSCP == 0 }

// String reads "198.18.0.1>198.18.0.2/5".
func (k Key) String() string {
	if k.IsZero() {
		return "none"
	}
	return fmt.Sprintf("%s>%s/%d", k.Src, k.Dst, k.DSCP)
}

// Compare orders keys by source, destination, DSCP.
func (k Key) Compare(o Key) int {
	if c := k.Src.Compare(o.Src); c != 0 {
		return c
	}
	if c := k.Dst.Compare(o.Dst); c != 0 {
		return c
	}
	return int(k.DSCP) - int(o.DSCP)
}

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
	Key      Key // zero: no key (plain VXLAN fallback)
	// NextHop is the underlay MAC the rewritten packet is sent to (the
	// one of Key.Dst: the peer's, or a router's).
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

// PairID is the object id of a pair's cache cookies: the index of the
// key's address on this host among h.KeyAddrs() (bits 40-47), the key's
// address on the peer's side (bits 8-39) and the DSCP (bits 0-7). So a
// cookie names one key, and with one address a host (index 0) it reads
// peer IPv4<<8 | DSCP.
func PairID(h Host, local, peer netip.Addr, dscp uint8) uint64 {
	idx := slices.Index(h.KeyAddrs(), local)
	if idx < 0 {
		idx = 0
	}
	return uint64(idx)<<40 | ip4ID(peer)<<8 | uint64(dscp)
}

// CacheCookie is the cookie of the EgressCache entry for key k towards
// peer (k zero: a fallback entry, cookie of peer's IP).
func CacheCookie(h Host, peer netip.Addr, k Key) uint64 {
	if k.IsZero() {
		return Cookie(CatCache, PairID(h, h.IP, peer, 0))
	}
	return Cookie(CatCache, PairID(h, k.Src, k.Dst, k.DSCP))
}

// RestoreCookie is the cookie of the Restore entry for key k.
func RestoreCookie(h Host, k Key) uint64 { return Cookie(CatRestore, PairID(h, k.Dst, k.Src, k.DSCP)) }

// CookieKey reads the key a cache or restore cookie names (the inverse of
// CacheCookie and RestoreCookie): zero if the cookie names none or an
// address index h does not have.
func CookieKey(h Host, cookie uint64) (peer netip.Addr, k Key) {
	id := CookieID(cookie)
	peer = netip.AddrFrom4([4]byte{byte(id >> 32), byte(id >> 24), byte(id >> 16), byte(id >> 8)})
	addrs, idx := h.KeyAddrs(), int(id>>40&0xff)
	if uint8(id) == 0 || idx >= len(addrs) {
		return peer, Key{}
	}
	switch CookieCategory(cookie) {
	case CatCache:
		return peer, Key{Src: addrs[idx], Dst: peer, DSCP: uint8(id)}
	case CatRestore:
		return peer, Key{Src: peer, Dst: addrs[idx], DSCP: uint8(id)}
	}
	return peer, Key{}
}

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
		ins = tunnelOut(h, p.Peer.IP, KeyedVNI(p.Key.DSCP))
	case CacheFallback:
		ins = tunnelOut(h, p.Peer.IP, h.VNI)
	case CacheReady:
		// The fast path carries the packet as it is: no encapsulation, so
		// whatever fits the container's MTU fits the uplink's.
		ins = []openflow.Instruction{apply(
			setf(openflow.MatchEthSrc(h.MAC)), setf(openflow.MatchEthDst(p.NextHop)),
			setf(openflow.MatchIPv4Src(p.Key.Src)), setf(openflow.MatchIPv4Dst(p.Key.Dst)),
			setf(openflow.MatchIPDSCP(p.Key.DSCP)), out(h.PatchPort))}
	}
	f := flow(EgressCache, prioNormal, CacheCookie(h, p.Peer.IP, p.Key), cacheMatch(p), ins...)
	f.IdleTimeout = seconds(r.SendIdle)
	if st == CacheFallback && r.FallbackRetry > 0 {
		f.HardTimeout = seconds(r.FallbackRetry)
	}
	f.Flags = openflow.SendFlowRem
	return f
}

// RestoreFlow builds the receiver's entry for key k (its source one of the
// sending peer's addresses, its destination one of this host's): the keyed
// packet gets its container addresses back and continues to IngressRules
// and Deliver as if it had arrived through the tunnel. It has no idle
// timeout: it lives exactly as long as its key record, which only the
// sender ends (DESIGN.md "Cache protocol v2"). send_flow_rem reports its
// final packet count.
func RestoreFlow(h Host, k Key, src, dst netip.Addr) *openflow.FlowMod {
	f := flow(Restore, prioNormal, RestoreCookie(h, k),
		m(openflow.MatchInPort(h.PatchPort), openflow.MatchEthType(ethIPv4), openflow.MatchIPv4Src(k.Src), openflow.MatchIPv4Dst(k.Dst), openflow.MatchIPDSCP(k.DSCP)),
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
// they keep their DSCP on the way out and go to LOCAL on the way in.
// Every key address counts: from the uplink, a peer address to one of
// this host's goes to UnderlayKeys (N×M flows for a peer with N key
// addresses and a host with M); from LOCAL, anything to a peer address
// goes to UnderlayClear (N flows). Plus two per DSCP: linear in peers and
// in DSCPs, not peers × DSCPs.
func PhyRewriteFlows(h Host, r Rewrite, peers []Peer) []*openflow.FlowMod {
	var fs []*openflow.FlowMod
	for _, p := range peers {
		if !p.valid() {
			skip()
			continue
		}
		pc := Cookie(CatPeer, ip4ID(p.IP))
		for _, pa := range p.KeyAddrs() {
			if !is4(pa) {
				skip()
				continue
			}
			for _, ha := range h.KeyAddrs() {
				fs = append(fs, flow(Underlay, prioNormal, pc,
					m(openflow.MatchInPort(h.UplinkPort), openflow.MatchEthType(ethIPv4), openflow.MatchIPv4Src(pa), openflow.MatchIPv4Dst(ha)),
					gotoTable(UnderlayKeys)))
			}
			fs = append(fs, flow(Underlay, prioNormal, pc,
				m(openflow.MatchInPort(openflow.PortLocal), openflow.MatchEthType(ethIPv4), openflow.MatchIPv4Dst(pa)),
				gotoTable(UnderlayClear)))
		}
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
