package e2e

import (
	"context"
	"strings"
	"testing"

	"github.com/keyroute/keyroute/simcluster"
)

// Key space (DESIGN.md "Key space"): 200 pairs between two hosts share
// the default key set's 37 keys. Traffic is skewed (Zipf, exponent 2:
// pair of rank r sends 140/r² kB/s), so with cache.eviction: traffic the
// busiest pairs must end up with the keys — at least 95% of the bytes on
// the fabric on the fast path — while keys change hands without a single
// misdelivered datagram. With eviction off the keys stay with the pairs
// that asked first; its figure is logged beside. The experiment is
// simcluster.RunKeySpace's defaults, which `make bench` reports too.
func TestKeySpaceEviction(t *testing.T) {
	share := map[string]float64{}
	for _, policy := range []string{"traffic", "none"} {
		t.Run(policy, func(t *testing.T) {
			share[policy] = ksRun(t, policy)
			if policy == "traffic" && share[policy] < 0.95 {
				t.Errorf("eviction traffic: %.1f%% of the bytes on the fast path, want ≥ 95%%", 100*share[policy])
			}
		})
	}
	t.Logf("bytes on the fast path, 200 pairs, 37 keys, Zipf traffic: eviction traffic %.1f%%, none %.1f%%", 100*share["traffic"], 100*share["none"])
}

func ksRun(t *testing.T, policy string) float64 {
	cl := rwCluster(t, simcluster.Options{AgentConfig: rwCache(map[string]any{"eviction": policy})})
	res, err := simcluster.RunKeySpace(context.Background(), cl, simcluster.KeySpaceOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("eviction %s: fast path %d B, VXLAN %d B (inner): %.1f%% on the fast path; %v key swaps; %d of %d datagrams delivered (%d pairs lost some)",
		policy, res.Wire.FastBytes, res.Wire.TunnelBytes(), 100*res.FastShare, res.KeySwaps, res.Load.Received, res.Load.Sent, res.Load.LossyPairs)
	if res.Load.Misdeliveries > 0 {
		t.Fatalf("%d misdelivered datagrams while keys moved, e.g. %s", res.Load.Misdeliveries, strings.Join(res.Load.Examples, "; "))
	}
	// A swap moves the loser to VXLAN in the same bundle that removes its
	// rewrite flow: nothing is lost but what UDP on a loaded machine loses.
	if lost := res.Load.Sent - res.Load.Received; float64(lost) > 0.001*float64(res.Load.Sent) {
		t.Errorf("%d of %d datagrams lost (more than 0.1%%), %d pairs lost some, e.g. %s", lost, res.Load.Sent, res.Load.LossyPairs,
			strings.Join(res.Load.LossyExamples, "; "))
	}
	if policy == "none" && res.KeySwaps != 0 {
		t.Errorf("eviction none: %v key swaps", res.KeySwaps)
	}
	return res.FastShare
}
