package e2e

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/keyroute/keyroute/simcluster"
)

// Key space (DESIGN.md "Key space"): 200 pairs between two hosts share
// the default key set's 37 keys. Traffic is skewed (Zipf, exponent 2:
// pair of rank r sends 140/r² kB/s), so with cache.eviction: traffic the
// busiest pairs must end up with the keys — at least 95% of the bytes on
// the fabric on the fast path — while keys change hands without a single
// misdelivered datagram. With eviction off the keys stay with the pairs
// that asked first; its figure is logged beside.
const (
	ksSenders   = 20 // on h1
	ksReceivers = 10 // on h2: 200 pairs h1->h2
	ksTick      = 10 * time.Millisecond
	ksTopRate   = 140_000.0 // bytes/s of the busiest pair
	ksChat      = 8 * time.Second
	ksSettle    = 20 * time.Second
	ksMeasure   = 20 * time.Second
)

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
	h1, h2 := cl.Host(1), cl.Host(2)
	var sn, rn []string
	for i := range ksSenders {
		sn = append(sn, fmt.Sprintf("s%d", i))
	}
	for j := range ksReceivers {
		rn = append(rn, fmt.Sprintf("r%d", j))
	}
	senders, receivers := rwAttach(t, cl, 1, sn...), rwAttach(t, cl, 2, rn...)
	ct := newTaggedTraffic(t, senders, receivers, ksTick)
	// Ranks in a fixed random order, so the busiest pairs are not the
	// first to start (and so to ask for a key).
	rng := rand.New(rand.NewPCG(1, 2))
	rank := rng.Perm(ksSenders * ksReceivers)
	// First every pair chats quietly (64 bytes every 4 s, well inside
	// send_idle, so no key comes free by idling out): the keys go to the
	// pairs that ask first, whatever they will carry.
	for i := range ksSenders {
		for j := range ksReceivers {
			ct.setShape(i, j, 64, 400)
		}
	}
	ct.phase.Store(1)
	for i := range ksSenders {
		for j := range ksReceivers {
			ct.started[i][j].Store(true)
		}
	}
	time.Sleep(ksChat)
	// Then the traffic turns skewed.
	perTick := ksTick.Seconds()
	for i := range ksSenders {
		for j := range ksReceivers {
			r := float64(rank[i*ksReceivers+j] + 1)
			bytesPerTick := ksTopRate / (r * r) * perTick
			size := min(1400, max(64, int(bytesPerTick)))
			ct.setShape(i, j, size, min(400, int(float64(size)/bytesPerTick+0.5)))
		}
	}
	time.Sleep(ksSettle)
	before := ksWireCounters(t, cl, h1, h2)
	time.Sleep(ksMeasure)
	after := ksWireCounters(t, cl, h1, h2)
	ct.finish()

	fast := after.fastBytes - before.fastBytes
	// VXLAN adds 50 bytes a packet (outer Ethernet, IP, UDP, VXLAN): the
	// shares compare what the containers sent.
	tunnel := (after.vxlanBytes - before.vxlanBytes) - 50*(after.vxlanPkts-before.vxlanPkts)
	if fast+tunnel == 0 {
		t.Fatal("no h1->h2 traffic counted on the fabric")
	}
	share := float64(fast) / float64(fast+tunnel)
	m := rwMetrics(t, h1)
	t.Logf("eviction %s: fast path %d B, VXLAN %d B (inner): %.1f%% on the fast path; %v key swaps",
		policy, fast, tunnel, 100*share, rwMetric(m, "keyroute_cache_key_swaps_total"))
	if ct.badCount > 0 {
		t.Fatalf("%d misdelivered datagrams while keys moved, e.g. %s", ct.badCount, strings.Join(ct.bad, "; "))
	}
	return share
}

type ksCounters struct{ fastBytes, vxlanBytes, vxlanPkts int64 }

// ksWireCounters reads (and first installs) nftables counters on the
// fabric's bridge: h1->h2 packets with a DSCP key (the fast path; the DSCP
// path check's probes aside) and h1->h2 VXLAN.
func ksWireCounters(t *testing.T, cl *simcluster.Cluster, h1, h2 *simcluster.Host) ksCounters {
	t.Helper()
	const table = "krksp"
	if _, err := cl.Fabric.Exec("nft", "list", "table", "bridge", table); err != nil {
		script := fmt.Sprintf(`table bridge %[1]s {
	counter fast {}
	counter vxlan {}
	chain pairs {
		type filter hook forward priority 0; policy accept;
		ip saddr %[2]s ip daddr %[3]s udp dport 4789 counter name vxlan
		ip saddr %[2]s ip daddr %[3]s ip dscp != 0 udp dport != %[4]s counter name fast
	}
}`, table, h1.IP, h2.IP, rwProbePort)
		if out, err := cl.Fabric.Exec("sh", "-c", "nft -f - <<'EOF'\n"+script+"\nEOF"); err != nil {
			t.Fatalf("fabric counters: %v: %s", err, out)
		}
	}
	out, err := cl.Fabric.Exec("nft", "-j", "list", "counters", "table", "bridge", table)
	if err != nil {
		t.Fatalf("read fabric counters: %v: %s", err, out)
	}
	var doc struct {
		Nftables []struct {
			Counter *struct {
				Name    string `json:"name"`
				Packets int64  `json:"packets"`
				Bytes   int64  `json:"bytes"`
			} `json:"counter"`
		} `json:"nftables"`
	}
	if err := json.Unmarshal([]byte(out), &doc); err != nil {
		t.Fatalf("fabric counters: %v: %s", err, out)
	}
	var c ksCounters
	for _, e := range doc.Nftables {
		switch {
		case e.Counter == nil:
		case e.Counter.Name == "fast":
			c.fastBytes = e.Counter.Bytes
		case e.Counter.Name == "vxlan":
			c.vxlanBytes, c.vxlanPkts = e.Counter.Bytes, e.Counter.Packets
		}
	}
	return c
}
