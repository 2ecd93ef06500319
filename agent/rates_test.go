package agent

import (
	"net/netip"
	"testing"
	"time"

	"github.com/keyroute/keyroute/cacheproto"
	"github.com/keyroute/keyroute/flows"
	"github.com/keyroute/keyroute/openflow"
)

func cacheStat(cookie uint64, src, dst string, bytes uint64, age time.Duration) openflow.FlowStats {
	return openflow.FlowStats{Cookie: cookie, ByteCount: bytes, DurationSec: uint32(age / time.Second), DurationNsec: uint32(age % time.Second),
		Match: openflow.Match{Fields: []openflow.OXM{
			{Field: openflow.FieldIPv4Src, Value: netip.MustParseAddr(src).AsSlice()},
			{Field: openflow.FieldIPv4Dst, Value: netip.MustParseAddr(dst).AsSlice()},
		}}}
}

func TestRateMeter(t *testing.T) {
	peer := netip.MustParseAddr("198.18.0.2")
	h := flows.Host{IP: netip.MustParseAddr("198.18.0.1")}
	k7 := flows.Key{Src: h.IP, Dst: peer, DSCP: 7}
	ck := flows.CacheCookie(h, peer, k7)
	p := cacheproto.Pair{Src: netip.MustParseAddr("198.19.0.2"), Dst: netip.MustParseAddr("198.19.1.2")}
	var m rateMeter
	// First read: bytes over the flow's own age.
	r := m.update([]openflow.FlowStats{cacheStat(ck, "198.19.0.2", "198.19.1.2", 4000, 4*time.Second)}, 2*time.Second)
	if r[p] != 1000 {
		t.Fatalf("first read: %v B/s, want 1000", r[p])
	}
	// Then the difference over the interval.
	r = m.update([]openflow.FlowStats{cacheStat(ck, "198.19.0.2", "198.19.1.2", 10000, 6*time.Second)}, 2*time.Second)
	if r[p] != 3000 {
		t.Fatalf("second read: %v B/s, want 3000", r[p])
	}
	// A replaced entry (another cookie: new key or fallback) starts over.
	r = m.update([]openflow.FlowStats{cacheStat(flows.CacheCookie(h, peer, flows.Key{}), "198.19.0.2", "198.19.1.2", 500, time.Second)}, 2*time.Second)
	if r[p] != 500 {
		t.Fatalf("replaced entry: %v B/s, want 500", r[p])
	}
	// Flows of other categories are not pairs.
	if r = m.update([]openflow.FlowStats{cacheStat(flows.RestoreCookie(h, flows.Key{Src: peer, Dst: h.IP, DSCP: 7}), "198.19.0.2", "198.19.1.2", 1, time.Second)}, time.Second); len(r) != 0 {
		t.Fatalf("restore flow counted: %v", r)
	}
}
