package bench

import (
	"encoding/json"
	"math"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/keyroute/keyroute/simcluster"
)

func TestSummarizeIgnoresNaNAndTakesMedian(t *testing.T) {
	s := Summarize([]float64{3, math.NaN(), 1, 2, 10})
	if s.N != 4 || s.Median != 2.5 || s.Min != 1 || s.Max != 10 {
		t.Fatalf("Summarize = %+v, want N 4 median 2.5 min 1 max 10", s)
	}
	if s := Summarize(nil); s.N != 0 || !math.IsNaN(s.Median) {
		t.Fatalf("Summarize(nil) = %+v, want N 0 and NaN", s)
	}
}

func TestQuantile(t *testing.T) {
	xs := []float64{5, 1, 4, 2, 3}
	if got := Quantile(xs, 0.5); got != 3 {
		t.Errorf("p50 = %v, want 3", got)
	}
	if got := Quantile(xs, 0.99); math.Abs(got-4.96) > 1e-9 {
		t.Errorf("p99 = %v, want 4.96", got)
	}
	if xs[0] != 5 {
		t.Error("Quantile sorted its input in place")
	}
}

func TestPairedRatiosPairByRepetition(t *testing.T) {
	num := map[int]float64{1: 2, 2: 3, 3: 4, 4: 1}
	den := map[int]float64{1: 1, 2: 1.5, 4: 0} // rep 3 missing, rep 4 zero
	got := Summarize(PairedRatios(num, den))
	if got.N != 2 || got.Median != 2 {
		t.Fatalf("ratios = %+v, want 2 ratios of 2", got)
	}
}

// Buckets as the agent exports them: 0.5 ms × 2^n.
var ttfpText = `# HELP keyroute_cache_time_to_fast_path_seconds From a pair's first punt to its rewrite entry installed.
# TYPE keyroute_cache_time_to_fast_path_seconds histogram
keyroute_cache_time_to_fast_path_seconds_bucket{le="0.0005"} 0
keyroute_cache_time_to_fast_path_seconds_bucket{le="0.001"} 0
keyroute_cache_time_to_fast_path_seconds_bucket{le="0.002"} 10
keyroute_cache_time_to_fast_path_seconds_bucket{le="0.004"} 90
keyroute_cache_time_to_fast_path_seconds_bucket{le="0.008"} 100
keyroute_cache_time_to_fast_path_seconds_bucket{le="+Inf"} 100
keyroute_cache_time_to_fast_path_seconds_sum 0.3
keyroute_cache_time_to_fast_path_seconds_count 100
keyroute_cache_misses_total{outcome="received"} 7
`

func TestParseHistogramAndQuantile(t *testing.T) {
	bs, err := ParseHistogram(ttfpText, ttfpMetric)
	if err != nil {
		t.Fatal(err)
	}
	if len(bs) != 6 || !math.IsInf(bs[5].LE, 1) || bs[5].Count != 100 {
		t.Fatalf("buckets = %+v", bs)
	}
	// rank 50 lies in (2 ms, 4 ms] holding 10..90: 2 + 2×40/80 = 3 ms.
	if got := HistogramQuantile(0.5, bs); math.Abs(got-0.003) > 1e-12 {
		t.Errorf("p50 = %v, want 0.003", got)
	}
	// rank 99 in (4 ms, 8 ms] holding 90..100: 4 + 4×9/10 = 7.6 ms.
	if got := HistogramQuantile(0.99, bs); math.Abs(got-0.0076) > 1e-12 {
		t.Errorf("p99 = %v, want 0.0076", got)
	}
	if _, err := ParseHistogram("nothing here", ttfpMetric); err == nil {
		t.Error("ParseHistogram of text without the metric: no error")
	}
}

func TestBucketArithmeticAndJSON(t *testing.T) {
	a := []Bucket{{0.001, 1}, {0.002, 3}, {math.Inf(1), 4}}
	b := []Bucket{{0.001, 0}, {0.002, 1}, {math.Inf(1), 1}}
	if d := SubBuckets(a, b); d[1].Count != 2 || d[2].Count != 3 {
		t.Errorf("SubBuckets = %+v", d)
	}
	if s := AddBuckets(a, b); s[2].Count != 5 || a[2].Count != 4 {
		t.Errorf("AddBuckets = %+v (input changed: %+v)", s, a)
	}
	raw, err := json.Marshal(a)
	if err != nil {
		t.Fatalf("marshal buckets with +Inf: %v", err)
	}
	var back []Bucket
	if err := json.Unmarshal(raw, &back); err != nil {
		t.Fatal(err)
	}
	if len(back) != 3 || !math.IsInf(back[2].LE, 1) || back[1] != a[1] {
		t.Fatalf("round trip %s = %+v", raw, back)
	}
}

func TestNumJSONNullForMissing(t *testing.T) {
	raw, err := json.Marshal(struct{ A, B Num }{1.5, NaN})
	if err != nil {
		t.Fatal(err)
	}
	if string(raw) != `{"A":1.5,"B":null}` {
		t.Fatalf("got %s", raw)
	}
	var back struct{ A, B Num }
	if err := json.Unmarshal(raw, &back); err != nil || back.A != 1.5 || !math.IsNaN(float64(back.B)) {
		t.Fatalf("round trip: %+v, %v", back, err)
	}
}

func TestParsePMDStats(t *testing.T) {
	out := `main thread:
  packets received: 120
  packet recirculations: 60
  avg. datapath passes per packet: 1.50
  emc hits: 23
  megaflow hits: 90
  avg. subtable lookups per megaflow hit: 2.00
  miss with success upcall: 6
  miss with failed upcall: 1
pmd thread numa_id 0 core_id 1:
  packets received: 80
  packet recirculations: 0
  megaflow hits: 10
  avg. subtable lookups per megaflow hit: 1.50
  miss with success upcall: 3
`
	st, err := ParsePMDStats(out)
	if err != nil {
		t.Fatal(err)
	}
	if st.Packets != 200 || st.Recirculations != 60 || st.MegaflowHits != 100 || st.SubtableLookups != 195 || st.Upcalls != 10 {
		t.Fatalf("got %+v", st)
	}
	if got := st.UpcallsPer10k(); got != 1e4*10/260 {
		t.Errorf("upcalls per 10k passes = %v", got)
	}
	if got := st.LookupsPerPass(); got != 0.75 {
		t.Errorf("subtable lookups per pass = %v, want 0.75", got)
	}
	if got := st.Add(st).Passes(); got != 1.3 {
		t.Errorf("passes = %v, want 1.3", got)
	}
	if _, err := ParsePMDStats("ovs-appctl: no such command"); err == nil {
		t.Error("output without counters: no error")
	}
}

func TestParseGoBench(t *testing.T) {
	out := "goos: linux\nBenchmarkInstall/flows=10000-2  1  81127076 ns/op  8112 ns/flow  12752 ofctl-bundle-ns/flow  80792 ofctl-ns/flow  9.959 ofctl/keyroute\nPASS\n"
	bs := ParseGoBench(out)
	if len(bs) != 1 || bs[0].Name != "BenchmarkInstall/flows=10000-2" || bs[0].Metrics["ns/flow"] != 8112 || bs[0].Metrics["ofctl/keyroute"] != 9.959 {
		t.Fatalf("got %+v", bs)
	}
}

func TestProcStat(t *testing.T) {
	sys, err := ParseProcStat([]byte("cpu  100 5 50 1000 20 3 7 2 0 0\ncpu0 1 1 1 1 1 1 1 1 0 0\n"))
	if err != nil {
		t.Fatal(err)
	}
	if sys.Busy != 167 || sys.Total != 1187 {
		t.Fatalf("got %+v, want busy 167 total 1187", sys)
	}
	// A command name with spaces and parentheses must not shift fields.
	ticks, err := ParsePIDStat([]byte("42 (ovs vswitchd (x)) S 1 2 3 4 5 6 7 8 9 10 300 45 0 0 20 0"))
	if err != nil || ticks != 345 {
		t.Fatalf("ParsePIDStat = %d, %v, want 345", ticks, err)
	}
	if _, err := ParsePIDStat([]byte("garbage")); err == nil {
		t.Error("garbage pid stat: no error")
	}
}

func TestParseFastPathLine(t *testing.T) {
	tm, ok := ParseFastPathLine(`time=2026-11-23T18:26:56.006Z level=DEBUG msg="pair on the fast path" src=198.19.1.2 dst=198.19.2.3 peer=h2 key=49`)
	if !ok || tm.Format("15:04:05.000") != "18:26:56.006" {
		t.Fatalf("got %v %v", tm, ok)
	}
	if _, ok := ParseFastPathLine(`time=2026-11-23T18:26:56.006Z level=INFO msg="attached container"`); ok {
		t.Error("another message taken for a fast-path line")
	}
}

func TestValidate(t *testing.T) {
	c := DefaultConfig(false)
	c.OutDir = "x"
	if err := c.Validate(); err != nil {
		t.Fatalf("default config: %v", err)
	}
	q := DefaultConfig(true)
	q.OutDir = "x"
	if err := q.Validate(); err != nil {
		t.Fatalf("quick config: %v", err)
	}
	bad := c
	bad.CPContainers = 8 // 64 pairs per host pair > the default key set's 37 keys
	if err := bad.Validate(); err == nil {
		t.Error("8 containers per host accepted")
	}
	bad = c
	bad.Reps = 0
	if err := bad.Validate(); err == nil {
		t.Error("0 repetitions accepted")
	}
	sel := c
	sel.Paths = []Path{PathC, PathR}
	if err := sel.Validate(); err != nil || !sel.measures(PathR) || sel.measures(PathB) || !c.measures(PathB) {
		t.Errorf("paths C,R: %v; measures R %v, B %v; default measures B %v", err, sel.measures(PathR), sel.measures(PathB), c.measures(PathB))
	}
	if q.KeySpace || !c.KeySpace {
		t.Errorf("key space: quick %v, default %v; want the quick run to leave it out", q.KeySpace, c.KeySpace)
	}
	both := sel
	both.NoDataPlane = true
	if err := both.Validate(); err == nil || !strings.Contains(err.Error(), "--no-data-plane") {
		t.Errorf("paths with the data plane off: %v", err)
	}
	for _, pt := range [][]string{{"afxdp"}, {"system", "xdp"}, nil} {
		bad = c
		bad.PortTypes = pt
		if err := bad.Validate(); err == nil {
			t.Errorf("port types %v accepted", pt)
		}
	}
	if !c.afxdp() || q.afxdp() {
		t.Errorf("AF_XDP ports measured: full run %v, quick %v; want true, false", c.afxdp(), q.afxdp())
	}
	sel.Paths = []Path{PathC, "X"}
	if err := sel.Validate(); err == nil || !strings.Contains(err.Error(), `"X"`) {
		t.Errorf("unknown path: %v", err)
	}
}

func TestRRClientAgainstServer(t *testing.T) {
	pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go RRServe(pc)
	t.Cleanup(func() { pc.Close() })
	conn, err := net.Dial("udp4", pc.LocalAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	r, err := RRClient(conn, 200*time.Millisecond, 64, 200*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	if r.Transactions < 10 || r.Lost != 0 || r.P50us <= 0 || r.P99us < r.P50us || r.TPS <= 0 {
		t.Fatalf("got %+v", r)
	}
}

func TestRRClientWithoutServerFails(t *testing.T) {
	// A bound socket that never answers: every transaction times out.
	pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	conn, err := net.Dial("udp4", pc.LocalAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := RRClient(conn, 100*time.Millisecond, 64, 20*time.Millisecond); err == nil || !strings.Contains(err.Error(), "no reply") {
		t.Fatalf("got %v, want a no-reply error", err)
	}
}

func TestRRMainRejectsBadArguments(t *testing.T) {
	for _, args := range [][]string{{"rr-client"}, {"rr-client", "127.0.0.1:1", "x", "64"}, {"rr-client", "127.0.0.1:1", "1", "4"}, {"rr-other", "a"}} {
		if err := RRMain(args, nil); err == nil {
			t.Errorf("RRMain(%q): no error", args)
		}
	}
}

func TestBrokenPaths(t *testing.T) {
	samples := []Sample{
		{Rep: 1, Path: PathA, Test: TestTCP1}, {Rep: 1, Path: PathB, Test: TestTCP1, Err: "timeout"},
		{Rep: 2, Path: PathB, Test: TestTCP1}, {Rep: 1, Path: PathK, Test: TestTCP1, Err: "down"},
		{Rep: 1, Path: PathB, Test: TestTCP1, Variant: "tso", Err: "drops"},
	}
	got := brokenPaths(samples)
	if len(got) != 1 || got[0] != PathK {
		t.Fatalf("broken = %v, want [K] (B worked once; TSO failures are reported, not fatal)", got)
	}
}

// synthetic builds a result with known figures: C is 1.1× A and B on
// every repetition, whatever the repetition's speed.
func synthetic() *Result {
	res := &Result{Started: time.Now(), Finished: time.Now(), Config: DefaultConfig(false), Phases: map[string]float64{},
		Paths: []Path{PathA, PathB, PathC, PathK, PathD}, OVN: "not measured: test"}
	for rep := 1; rep <= 3; rep++ {
		speed := float64(rep) // a noisy machine: every path slower or faster together
		for _, p := range res.Paths {
			g := map[Path]float64{PathA: 1, PathB: 1, PathC: 1.1, PathK: 5, PathD: 10}[p] * speed
			for _, test := range []string{TestTCP1, TestTCP4, TestRR} {
				s := newSample(rep, p, test, "")
				s.ForeignPct = Num(10 * rep)
				if test == TestRR {
					s.P50us, s.P99us, s.TPS = Num(100/g), Num(300/g), Num(1e4*g)
				} else {
					s.Gbps, s.GB = Num(g), Num(g)
					if ovsPath(p) {
						s.CPUSecPerGB = Num(10 / g)
						s.NsPerPkt, s.PassesPerPkt = Num(1000*rep), 1
						s.Megaflows, s.Masks = Num(3+rep), 3
					}
				}
				res.Samples = append(res.Samples, s)
				// AF_XDP ports: faster by a path's own factor in every
				// repetition, at 0.7× the CPU per GB, no retransmits.
				if x, ok := map[Path]float64{PathA: 1.3, PathB: 1.4, PathC: 1.2}[p]; ok {
					xs := s
					xs.Variant = VariantAFXDP
					if test == TestRR {
						xs.P50us = Num(80 / g)
					} else {
						xs.Gbps, xs.CPUSecPerGB, xs.Retransmits = Num(g*x), Num(7/g), 0
						res.Samples[len(res.Samples)-1].Retransmits = 150
					}
					res.Samples = append(res.Samples, xs)
				}
			}
		}
	}
	res.ControlPlane = &ControlPlane{Hosts: 5, ContainersPerHost: 5, Pairs: 500, Ready: 500, P50ms: 3, P99ms: 80,
		PipelineRate: 1500, BurstRate: 900, LonePairMs: 4, BurstP50ms: NaN, BurstP99ms: NaN, OneAgentFirstMs: NaN, OneAgentSeconds: NaN, RSSKiBPer1000: NaN,
		RSSMarginalKiBPer1000: NaN, SetupSeconds: NaN, EtcdFsyncP50ms: NaN, EtcdFsyncP99ms: NaN,
		Buckets: []Bucket{{0.001, 100}, {0.004, 400}, {0.128, 500}, {math.Inf(1), 500}}}
	res.KeySpace = &KeySpace{Keys: 37, Runs: []KeySpaceRun{
		{Eviction: "traffic", Result: ksResult(0.969, 56, simcluster.TaggedStats{Sent: 1000, Received: 998})},
		{Eviction: "none", Result: ksResult(0.208, 0, simcluster.TaggedStats{Sent: 1000, Received: 1000})},
	}}
	return res
}

// ksResult is a key-space run with the given share of bytes on the fast
// path (of 1,000,000 bytes the containers sent, 100 VXLAN packets).
func ksResult(share, swaps float64, load simcluster.TaggedStats) simcluster.KeySpaceResult {
	fast := int64(share * 1e6)
	return simcluster.KeySpaceResult{Options: simcluster.KeySpaceOptions{Senders: 20, Receivers: 10, Chat: 8 * time.Second,
		Settle: 20 * time.Second, Measure: 20 * time.Second, TopRate: 140000, Exponent: 2}, Pairs: 200,
		Wire:      simcluster.PairBytes{FastBytes: fast, VXLANBytes: 1e6 - fast + 100*50, VXLANPackets: 100},
		FastShare: share, KeySwaps: swaps, Load: load}
}

func TestReportRatiosAndTargets(t *testing.T) {
	res := synthetic()
	if got := ratio(res.Samples, PathC, PathA, TestTCP1, mGbps); got.N != 3 || math.Abs(got.Median-1.1) > 1e-9 || got.Max-got.Min > 1e-9 {
		t.Fatalf("C/A paired ratio = %+v, want 1.1 on all 3 repetitions", got)
	}
	md := Report(res, []string{ChartThroughput, ChartKeySpace})
	for _, want := range []string{
		"| C/A | 1.10 | 1.10 |", // paired ratios, not ratio of medians of a noisy series
		"| C / A throughput, 1 stream | ≥ 1.00 × | 1.10 × | yes |",
		"| C / B throughput, 1 stream | ≥ 1.03 × | 1.10 × | yes |",
		"| time to fast path p99 (paced) | ≤ 50.0 ms | 80.0 ms | **no**, missed by 60% |",
		"| 2 | C | 2.200 (20) |",      // every repetition with its foreign load
		"| C | – | – | 5 (4–6) / 3 |", // megaflows used / masks
		"![throughput](throughput.png)",
		"interleaved (A B C K D, A B C K D, …)",
		"**O** (OVN Geneve) — not measured: test",
		"| bytes on the fast path, eviction traffic (200 pairs, 37 keys, Zipf) | ≥ 95.0 % | 96.9 % | yes |",
		"| traffic | 96.9% | 969000 / 31000 | 56 | 1000 / 998 | 0 |",
		"| none | 20.8% | 208000 / 792000 | 0 | 1000 / 1000 | 0 |",
		"Target (≥ 95% of the bytes on the fast path with eviction traffic): **met** (96.9%).",
		"20 containers on h1 × 10 on h2 = 200 pairs h1→h2 sharing that direction's 37 keys",
		"![key_space](key_space.png)",
		// AF_XDP against system ports, repetition by repetition.
		"| B | 2.000 (1.000–3.000) / 2.800 (1.400–4.200) | 1.40 | 1.40 | 5.00 (3.33–10.00) / 3.50 (2.33–7.00) | 0.70 | 150 / 0 | 150 / 0 | 50.0 (33.3–100.0) / 40.0 (26.7–80.0) |",
		"| A AF_XDP / system ports throughput, 1 stream | ≥ 1.25 × | 1.30 × | yes |",
		"| C AF_XDP / system ports throughput, 1 stream | ≥ 1.25 × | 1.20 × | **no**, missed by 4% |",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("report lacks %q", want)
		}
	}
	if t.Failed() {
		t.Log(md)
	}
}

func TestWriteOutputs(t *testing.T) {
	dir := t.TempDir()
	res := synthetic()
	if err := writeOutputs(dir, res); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"results.json", "report.md", ChartThroughput, ChartLatency, ChartCPU, ChartTTFP, ChartKeySpace} {
		fi, err := os.Stat(filepath.Join(dir, f))
		if err != nil || fi.Size() == 0 {
			t.Errorf("%s: %v", f, err)
		}
	}
	b, _ := os.ReadFile(filepath.Join(dir, "results.json"))
	var back Result
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatalf("results.json does not read back: %v", err)
	}
	if len(back.Samples) != len(res.Samples) || !math.IsNaN(float64(back.Samples[0].P50us)) {
		t.Errorf("results.json round trip lost samples or NaNs")
	}
	if back.KeySpace == nil || len(back.KeySpace.Runs) != 2 || back.KeySpace.Runs[0].Result.Options.Settle != 20*time.Second ||
		back.KeySpace.share("none") != 0.208 {
		t.Errorf("results.json round trip lost the key space: %+v", back.KeySpace)
	}
	before, _ := os.ReadFile(filepath.Join(dir, "report.md"))
	os.Remove(filepath.Join(dir, "report.md"))
	if err := Render(dir); err != nil {
		t.Fatal(err)
	}
	after, _ := os.ReadFile(filepath.Join(dir, "report.md"))
	if string(after) != string(before) {
		t.Error("Render from results.json gives another report than the run did")
	}
}

func TestStageTimes(t *testing.T) {
	h1 := `time=2026-12-03T13:32:21.703Z level=DEBUG msg="pair punted" src=198.19.0.2 dst=198.19.2.2 peer=h2
time=2026-12-03T13:32:21.707Z level=DEBUG msg="pair key allocated" src=198.19.0.2 dst=198.19.2.2 key=47 err=<nil> since_punt=3.8ms
time=2026-12-03T13:32:21.713Z level=DEBUG msg="pair on the fast path" src=198.19.0.2 dst=198.19.2.2 peer=h2 key=47 since_punt=10ms
time=2026-12-03T13:32:22.000Z level=DEBUG msg="pair punted" src=198.19.0.3 dst=198.19.2.2 peer=h2
time=2026-12-03T13:32:22.001Z level=INFO msg="pairs punted" src=198.19.0.9 dst=198.19.2.9
not a log line msg="pair punted" src=198.19.0.9 dst=198.19.2.9`
	h2 := `time=2026-12-03T13:32:21.708Z level=DEBUG msg="pair restore installed" src=198.19.0.2 dst=198.19.2.2 peer=h1 key=47
time=2026-12-03T13:32:21.711Z level=DEBUG msg="pair marked ready" src=198.19.0.2 dst=198.19.2.2 peer=h1 key=47`
	got := StageTimes([]string{h1, h2})
	want := []struct {
		stage string
		pairs int
		ms    float64
	}{
		{"punted → key allocated", 1, 4}, {"punted → restore installed", 1, 5}, {"punted → marked ready", 1, 8},
		{"punted → on the fast path", 1, 10},
	}
	if len(got) != len(want) {
		t.Fatalf("got %d stages: %+v", len(got), got)
	}
	for i, w := range want {
		g := got[i]
		if g.Stage != w.stage || g.Pairs != w.pairs || math.Abs(float64(g.P50ms)-w.ms) > 1e-9 || g.MaxMs != g.P50ms {
			t.Errorf("stage %d = %+v, want %s over %d pair(s), %v ms", i, g, w.stage, w.pairs, w.ms)
		}
		if _, ok := stageWhat[g.Stage]; !ok {
			t.Errorf("stage %q has no description", g.Stage)
		}
	}
	if st := StageTimes(nil); st[0].Pairs != 0 || !math.IsNaN(float64(st[0].P50ms)) {
		t.Errorf("no logs: %+v", st[0])
	}
}

// A run of the key space alone: no data-plane section, charts or targets,
// a missed target and misdeliveries shown as such.
func TestReportKeySpaceOnly(t *testing.T) {
	res := &Result{Started: time.Now(), Finished: time.Now(), Config: DefaultConfig(false), Phases: map[string]float64{"key_space": 150}}
	res.Config.NoDataPlane, res.Config.NoControlPlane, res.Config.FlowInstall = true, true, false
	bad := simcluster.TaggedStats{Sent: 1000, Received: 990, Misdeliveries: 2, Examples: []string{"r1 (198.19.2.3) got \"kr|s0|r2|7|\" from 198.19.1.2: meant for r2"},
		LossyPairs: 1, LossyExamples: []string{"s0→r1: 90 of 100 delivered"}}
	res.KeySpace = &KeySpace{Keys: 37, Runs: []KeySpaceRun{
		{Eviction: "traffic", Result: ksResult(0.9, 12, bad)},
		{Eviction: "none", Err: "cluster: etcd did not start"},
	}}
	dir := t.TempDir()
	if err := writeOutputs(dir, res); err != nil {
		t.Fatal(err)
	}
	if len(res.Errors) != 0 {
		t.Errorf("errors: %v (no data-plane chart may be attempted)", res.Errors)
	}
	b, _ := os.ReadFile(filepath.Join(dir, "report.md"))
	md := string(b)
	for _, want := range []string{
		"## Data plane\n\nNot run (`--no-data-plane`).",
		"## Control plane\n\nNot run (`--no-control-plane`).",
		"| bytes on the fast path, eviction traffic (200 pairs, 37 keys, Zipf) | ≥ 95.0 % | 90.0 % | **no**, missed by 5% |",
		"Target (≥ 95% of the bytes on the fast path with eviction traffic): **missed** (90.0%).",
		"| traffic | 90.0% | 900000 / 100000 | 12 | 1000 / 990 | **2** |",
		"| none | failed: cluster: etcd did not start |",
		"- misdelivered (eviction traffic): r1 (198.19.2.3) got",
		"- not all delivered (eviction traffic): s0→r1: 90 of 100 delivered",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("report lacks %q", want)
		}
	}
	for _, unwanted := range []string{"C / A throughput", "## Every repetition", "## Userspace TSO"} {
		if strings.Contains(md, unwanted) {
			t.Errorf("report of a run without the data plane has %q", unwanted)
		}
	}
	if t.Failed() {
		t.Log(md)
	}
	quick := &Result{Config: DefaultConfig(true), Phases: map[string]float64{}}
	if md := Report(quick, nil); !strings.Contains(md, "Not run: `--quick` leaves it out") {
		t.Errorf("quick report does not say the key space was left out:\n%s", md)
	}
}

func TestParseMegaflows(t *testing.T) {
	// Two flows from one port with one mask, one with another mask from a
	// second port, one too old, one never used (keyroute's C path, OVS 3.1).
	out := `flow-dump from the main thread:
ufid:5811c6b2-0e2b-4e24-a39e-0bc7c00638d9, skb_priority(0/0),skb_mark(0/0),recirc_id(0),dp_hash(0/0),in_port(krd0f631ca1dd),packet_type(ns=0,id=0),eth(src=7e:2b:36:ea:d5:89,dst=0a:00:00:00:00:01),eth_type(0x0800),ipv4(src=198.19.0.2,dst=198.19.1.2,proto=6,tos=0/0xfc,ttl=64/0,frag=no),tcp(src=38288/0,dst=5201/0),tcp_flags(0/0), packets:58502, bytes:85633831, used:0.027s, flags:SP., dp:ovs, actions:set(eth(src=02:00:00:00:00:01,dst=02:00:00:00:00:02)),set(ipv4(src=198.18.0.1,dst=198.18.0.2,tos=0x88/0xfc)),eth1, dp-extra-info:miniflow_bits(5,2)
ufid:889a7b0f-6acb-4837-9f88-c739a7a64cf5, skb_priority(0/0),skb_mark(0/0),recirc_id(0),dp_hash(0/0),in_port(krd0f631ca1dd),packet_type(ns=0,id=0),eth(src=7e:2b:36:ea:d5:89,dst=0a:00:00:00:00:01),eth_type(0x0800),ipv4(src=198.19.0.2,dst=198.19.1.3,proto=1,tos=0/0xfc,ttl=64/0,frag=no),icmp(type=8/0,code=0/0), packets:3, bytes:294, used:1.5s, flags:SP., dp:ovs, actions:eth1
ufid:77effb31-d3a0-47a5-8e72-214043c13e5b, skb_priority(0/0),tunnel(tun_id=0x64,src=198.18.0.2,dst=198.18.0.1,ttl=64/0,tp_src=59628/0,tp_dst=4789/0,flags(-df-csum+key)),recirc_id(0),in_port(vxlan_sys_4789),eth(src=96:19:05:11:b1:37,dst=0a:00:00:00:00:01),eth_type(0x0800),ipv4(src=198.19.1.2/0.0.0.0,dst=198.19.0.2,proto=1/0,tos=0/0,ttl=64/0,frag=no),icmp(type=0/0,code=0/0), packets:11, bytes:810, used:2.950s, flags:SP., dp:ovs, actions:krd0f631ca1dd
ufid:3e7d6158-404e-4391-be0d-d6c59c2d0f95, skb_priority(0/0),in_port(eth1),eth_type(0x0800),ipv4(src=198.18.0.2,dst=198.18.0.1,proto=17,tos=0x8/0,ttl=64/0,frag=no),udp(src=9477,dst=9477), packets:73, bytes:4125, used:9.629s, dp:ovs, actions:br-phy
ufid:734d0aff-7e0d-438d-9cd6-cd0af93a9d23, skb_priority(0/0),in_port(krd0f631ca1dd),eth_type(0x0806),arp(sip=198.19.0.2,tip=198.19.0.1,op=1), packets:0, bytes:0, used:never, dp:ovs, actions:userspace(pid=0,slow_path(action))
`
	m, err := ParseMegaflows(out, 6*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	// The ICMP flow's icmp() field makes its mask another than the TCP one.
	if m.Flows != 3 || m.Masks != 3 {
		t.Fatalf("got %+v, want 3 flows, 3 masks", m)
	}
	same := strings.Replace(out, "proto=1,tos=0/0xfc,ttl=64/0,frag=no),icmp(type=8/0,code=0/0)", "proto=6,tos=0/0xfc,ttl=64/0,frag=no),tcp(src=1/0,dst=2/0),tcp_flags(0/0)", 1)
	if m, _ := ParseMegaflows(same, 6*time.Second); m.Flows != 3 || m.Masks != 2 {
		t.Errorf("two TCP flows of one mask on one port: %+v, want 3 flows, 2 masks", m)
	}
	if m, _ := ParseMegaflows("flow-dump from the main thread:\n", time.Second); m != (Megaflows{}) {
		t.Errorf("empty datapath: %+v", m)
	}
	if _, err := ParseMegaflows("ovs-appctl: cannot connect", time.Second); err == nil {
		t.Error("not a flow dump: no error")
	}
}
