package agent

import (
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/keyroute/keyroute/flows"
	"github.com/keyroute/keyroute/keyalloc"
	"github.com/keyroute/keyroute/registry"
)

func TestHostPortName(t *testing.T) {
	a, b := hostPortName("web-1"), hostPortName("web-2")
	if a == b || len(a) > 15 || !strings.HasPrefix(a, "kr") || a != hostPortName("web-1") {
		t.Fatalf("port names %q %q: must be stable, distinct, kr-prefixed and fit IFNAMSIZ", a, b)
	}
}

func TestContainerMACAndLastAddr(t *testing.T) {
	if m := containerMAC(netip.MustParseAddr("198.19.1.2")); m.String() != "0a:58:c6:13:01:02" {
		t.Fatalf("MAC %s", m)
	}
	if l := lastAddr(netip.MustParsePrefix("198.19.1.0/24")); l != netip.MustParseAddr("198.19.1.255") {
		t.Fatalf("last %s", l)
	}
}

func TestNetnsPathError(t *testing.T) {
	_, err := netnsPath("no-such-netns-kr")
	if err == nil || !strings.Contains(err.Error(), `network namespace "no-such-netns-kr" not found`) || !strings.Contains(err.Error(), "ip netns add") {
		t.Fatalf("want a clear error with the fix, got %v", err)
	}
}

func TestParseIPv4(t *testing.T) {
	pkt := make([]byte, 14+20)
	pkt[12], pkt[13] = 0x08, 0x00
	pkt[14] = 0x45
	pkt[15] = 10 << 2
	copy(pkt[26:], []byte{198, 19, 0, 2, 198, 19, 1, 2})
	src, dst, dscp, err := parseIPv4(pkt)
	if err != nil || src.String() != "198.19.0.2" || dst.String() != "198.19.1.2" || dscp != 10 {
		t.Fatalf("got %s %s %d %v", src, dst, dscp, err)
	}
	for _, bad := range [][]byte{nil, pkt[:20], append([]byte{}, pkt[:12]...)} {
		if _, _, _, err := parseIPv4(bad); err == nil {
			t.Errorf("%d-byte frame accepted", len(bad))
		}
	}
	arp := append([]byte{}, pkt...)
	arp[12], arp[13] = 0x08, 0x06
	if _, _, _, err := parseIPv4(arp); err == nil {
		t.Error("ARP frame accepted as IPv4")
	}
}

func testCache() *cache {
	a := &Agent{host: flows.Host{
		IP: netip.MustParseAddr("198.18.0.1"), MAC: net.HardwareAddr{2, 0, 0, 0, 0, 1},
		Subnet: netip.MustParsePrefix("198.19.0.0/24"), Cluster: netip.MustParsePrefix("198.19.0.0/16"),
		VNI: 100, VXLANPort: 1, PatchPort: 2, GatewayPort: 3,
	}}
	return newCache(a, nil, flows.Rewrite{SendIdle: 10 * time.Second, RecvIdle: 20 * time.Second, Keys: keyalloc.DefaultKeySet().Keys()})
}

// A key names one pair per peer at a time on the sender: installing a new
// pair with key k must evict any older entry with (peer, k), or both would
// be rewritten with the same key and the receiver would restore one as the
// other.
func TestEvictKeyKeepsOnePairPerKey(t *testing.T) {
	c := testCache()
	peer := flows.Peer{Name: "h2", IP: netip.MustParseAddr("198.18.0.2"), Subnet: netip.MustParsePrefix("198.19.1.0/24")}
	old := pairKey{netip.MustParseAddr("198.19.0.2"), netip.MustParseAddr("198.19.1.2")}
	nw := pairKey{netip.MustParseAddr("198.19.0.3"), netip.MustParseAddr("198.19.1.2")}
	fb := pairKey{netip.MustParseAddr("198.19.0.4"), netip.MustParseAddr("198.19.1.2")}
	c.send[old] = &sendEntry{pair: flows.Pair{Src: old.src, Dst: old.dst, Peer: peer, Key: 7, NextHop: peer.IP.AsSlice()}, state: flows.CacheReady}
	c.send[fb] = &sendEntry{pair: flows.Pair{Src: fb.src, Dst: fb.dst, Peer: peer}, state: flows.CacheFallback}
	c.send[nw] = &sendEntry{pair: flows.Pair{Src: nw.src, Dst: nw.dst, Peer: peer, Key: 7}, state: flows.CachePending}
	c.evictKeyLocked(nw, peer.IP, 7)
	if _, ok := c.send[old]; ok {
		t.Fatal("old pair with the same key survived")
	}
	if _, ok := c.send[nw]; !ok {
		t.Fatal("new pair evicted")
	}
	if _, ok := c.send[fb]; !ok {
		t.Fatal("fallback entries (no key) must not be evicted")
	}
}

func TestCacheFlowsSkipPlaceholders(t *testing.T) {
	c := testCache()
	peer := flows.Peer{Name: "h2", IP: netip.MustParseAddr("198.18.0.2"), Subnet: netip.MustParsePrefix("198.19.1.0/24")}
	pk := pairKey{netip.MustParseAddr("198.19.0.2"), netip.MustParseAddr("198.19.1.2")}
	c.send[pk] = &sendEntry{pair: flows.Pair{Src: pk.src, Dst: pk.dst, Peer: peer}, state: -1}
	if fs := c.flows(); len(fs) != 0 {
		t.Fatalf("an entry whose allocation is running must not install a flow, got %v", fs)
	}
	c.send[pk].state = flows.CachePending
	c.send[pk].pair.Key = 5
	c.recv[recvKey{peer.IP, 9}] = &recvEntry{rec: keyalloc.Record{Src: netip.MustParseAddr("198.19.1.3"), Dst: pk.src, Key: 9}, peer: peer.IP}
	fs := c.flows()
	if len(fs) != 2 {
		t.Fatalf("want a pending and a restore flow, got %d", len(fs))
	}
	if got := fs[0].String(); !strings.Contains(got, "set_field:0x800005->tun_id") {
		t.Errorf("pending entry must carry the key in the VNI: %s", got)
	}
	if got := fs[1].String(); !strings.Contains(got, "nw_tos=36") || !strings.Contains(got, "set_field:198.19.1.3->ip_src") {
		t.Errorf("restore entry: %s", got)
	}
}

// The receiver can mark a new pair's record ready before the allocating
// transaction's answer reaches the sender. The ready event, seen while the
// allocation still runs, must not be lost: the entry goes straight to
// ready, not to a pending state that waits for an event already past.
func TestReadyBeforeAllocationReturns(t *testing.T) {
	c := testCache()
	peer := flows.Peer{Name: "h2", IP: netip.MustParseAddr("198.18.0.2"), Subnet: netip.MustParsePrefix("198.19.1.0/24")}
	c.a.peers = map[string]registry.Host{"h2": {Name: "h2", UnderlayIP: peer.IP, PodSubnet: peer.Subnet}}
	pk := pairKey{netip.MustParseAddr("198.19.0.2"), netip.MustParseAddr("198.19.1.2")}
	nh := net.HardwareAddr{2, 0, 0, 0, 0, 2}
	rec := keyalloc.Record{SrcHost: "h1", DstHost: "h2", Key: 5, Src: pk.src, Dst: pk.dst, State: keyalloc.StatePending, CreateRevision: 42, ModRevision: 42}
	ready := rec
	ready.State, ready.ModRevision = keyalloc.StateReady, 43

	for _, tc := range []struct {
		name  string
		early keyalloc.Record // the ready event seen during the allocation
		want  flows.CacheState
	}{
		{"ready first", ready, flows.CacheReady},
		{"an older record of the pair ready", func() keyalloc.Record { r := ready; r.CreateRevision = 7; return r }(), flows.CachePending},
		{"no event yet", keyalloc.Record{}, flows.CachePending},
	} {
		e := &sendEntry{pair: flows.Pair{Src: pk.src, Dst: pk.dst, Peer: peer}, state: -1, peerTag: "h2"}
		c.send[pk] = e
		if tc.early.CreateRevision != 0 {
			if fn, changed := c.onSenderRecord(tc.early); fn != nil || changed {
				t.Errorf("%s: a ready event during the allocation changed the flows", tc.name)
			}
		}
		c.mu.Lock()
		c.allocatedLocked(pk, e, rec, nil, nh)
		c.mu.Unlock()
		if e.state != tc.want || e.pair.Key != 5 {
			t.Errorf("%s: state %v key %d, want state %v key 5", tc.name, e.state, e.pair.Key, tc.want)
		}
		if tc.want == flows.CacheReady && e.rec.ModRevision != 43 {
			t.Errorf("%s: entry keeps record revision %d, want the ready one (43)", tc.name, e.rec.ModRevision)
		}
		delete(c.send, pk)
	}
}
