package agent

import (
	"context"
	"io"
	"log/slog"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/keyroute/keyroute/registry"
)

// probeAgent is an agent with only what the prober uses: its peers, log
// and metrics.
func probeAgent(name string, peers ...registry.Host) *Agent {
	a := &Agent{cfg: Config{Node: name, Mode: ModeRewrite}, log: slog.New(slog.NewTextHandler(io.Discard, nil)),
		peers: map[string]registry.Host{}, metrics: newMetrics()}
	for _, h := range peers {
		a.peers[h.Name] = h
	}
	return a
}

// Two probers on loopback addresses: every key's DSCP arrives unchanged,
// so the path is verified; a key set the responder re-marks (simulated by
// a verdict with a wrong answer) is not.
func TestDSCPProbeLoopback(t *testing.T) {
	ip1, ip2 := netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("127.0.0.2")
	const port = 19477
	keys := []uint8{2, 3, 10, 39}
	a1 := probeAgent("h1", registry.Host{Name: "h2", UnderlayIP: ip2})
	a2 := probeAgent("h2", registry.Host{Name: "h1", UnderlayIP: ip1})
	p1, p2 := newProber(a1, port, keys, time.Hour), newProber(a2, port, keys, time.Hour)
	if err := p1.listen(ip1); err != nil {
		t.Skipf("loopback: %v", err)
	}
	if err := p2.listen(ip2); err != nil {
		t.Skipf("loopback: %v", err)
	}
	a1.probe, a2.probe = p1, p2
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go p1.run(ctx)
	go p2.run(ctx)
	if p1.usable("h2") {
		t.Fatal("path usable before any check")
	}
	deadline := time.Now().Add(5 * time.Second)
	for !p1.usable("h2") && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if !p1.usable("h2") {
		t.Fatalf("path h1->h2 not verified: %+v", a1.dscpPaths())
	}
	ps := a1.dscpPaths()
	if len(ps) != 1 || ps[0].Peer != "h2" || ps[0].State != PathVerified || ps[0].Checked == "" {
		t.Errorf("status %+v", ps)
	}

	// A re-check of the verified path probes a rotating sample.
	if ks := p1.roundKeys("h2"); len(ks) != len(keys) {
		t.Errorf("re-check keys %v, want all %d (fewer keys than a sample)", ks, len(keys))
	}
	all := make([]uint8, 20)
	for i := range all {
		all[i] = uint8(i + 2)
	}
	p1.keys = all
	seen := map[uint8]bool{}
	for range 3 {
		ks := p1.roundKeys("h2")
		if len(ks) != probeSample {
			t.Fatalf("re-check keys %v, want %d", ks, probeSample)
		}
		for _, k := range ks {
			seen[k] = true
		}
	}
	if len(seen) != len(all) {
		t.Errorf("3 re-checks probed %d of %d keys", len(seen), len(all))
	}
	p1.keys = keys

	// A re-marking verdict takes the path off keys and names the cause.
	p1.verdict("h2", keys, map[uint8]uint8{2: 2, 3: 8, 10: 10, 39: 39})
	if p1.usable("h2") {
		t.Error("re-marked path usable")
	}
	if ps := a1.dscpPaths(); ps[0].State != PathRemarked || !strings.Contains(ps[0].Detail, "sent 3 got 8") {
		t.Errorf("status after re-marking: %+v", ps)
	}
	// Nobody answering keeps the last verdict.
	p1.verdict("h2", keys, map[uint8]uint8{})
	if ps := a1.dscpPaths(); ps[0].State != PathRemarked {
		t.Errorf("status after no answer: %+v", ps)
	}
	// Some keys lost: not usable either.
	p1.verdict("h2", keys, map[uint8]uint8{2: 2, 3: 3})
	if ps := a1.dscpPaths(); ps[0].State != PathUnanswered || p1.usable("h2") {
		t.Errorf("status after lost probes: %+v", ps)
	}
}
