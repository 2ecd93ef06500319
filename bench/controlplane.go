package bench

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/keyroute/keyroute/api"
	"github.com/keyroute/keyroute/simcluster"
	"github.com/keyroute/keyroute/simhost"
)

// ttfpMetric is the agent's time-to-fast-path histogram.
const ttfpMetric = "keyroute_cache_time_to_fast_path_seconds"

// ControlPlane is what the control-plane phase measured.
type ControlPlane struct {
	Hosts             int `json:"hosts"`
	ContainersPerHost int `json:"containers_per_host"`
	// Pairs is the number of cross-host container pairs that sent;
	// Ready how many reached the fast path (histogram observations).
	Pairs int `json:"pairs"`
	Ready int `json:"ready"`
	// PacedPairs open at PacePerSec, spread over every host (phase 2);
	// Buckets is their time-to-fast-path histogram, every agent summed
	// (seconds), and P50ms/P99ms are interpolated inside its buckets.
	PacedPairs int      `json:"paced_pairs"`
	PacePerSec int      `json:"pace_pairs_per_sec"`
	Buckets    []Bucket `json:"buckets"`
	P50ms      Num      `json:"ttfp_p50_ms"`
	P99ms      Num      `json:"ttfp_p99_ms"`
	// BurstBuckets is host 1's histogram for phase 1, when its pairs all
	// start at once; BurstP50ms/BurstP99ms as above.
	BurstBuckets []Bucket `json:"burst_buckets"`
	BurstP50ms   Num      `json:"burst_ttfp_p50_ms"`
	BurstP99ms   Num      `json:"burst_ttfp_p99_ms"`
	// LonePairMs: one pair alone, from its first datagram to the agent's
	// "pair on the fast path" log line (millisecond timestamps).
	LonePairMs Num `json:"lone_pair_ms"`
	// One agent: host 1's containers start OneAgentPairs pairs at once.
	// From its log ("pair on the fast path", millisecond timestamps):
	// FirstMs is the first datagram to the first pair ready, Seconds to
	// the last; BurstRate = ready / Seconds (latency included) and
	// PipelineRate = (ready-1) / (last - first ready), the rate at which
	// the agent completes pairs once they flow.
	OneAgentPairs   int `json:"one_agent_pairs"`
	OneAgentReady   int `json:"one_agent_ready"`
	OneAgentFirstMs Num `json:"one_agent_first_ready_ms"`
	OneAgentSeconds Num `json:"one_agent_seconds"`
	BurstRate       Num `json:"one_agent_burst_pairs_per_sec"`
	PipelineRate    Num `json:"one_agent_pipeline_pairs_per_sec"`
	// VmRSS of host 1's agent (etcd runs outside it, in the fabric):
	// before any pair, after phase 1 (its own pairs) and after phase 2
	// (every pair), with its cache entries (egress + restore) at each.
	RSSBeforeKiB  int64 `json:"rss_before_kib"`
	RSSMidKiB     int64 `json:"rss_mid_kib"`
	RSSAfterKiB   int64 `json:"rss_after_kib"`
	EntriesMid    int   `json:"cached_entries_mid_h1"`
	CachedEntries int   `json:"cached_entries_h1"`
	// RSSKiBPer1000 is (after - before) / entries × 1000; the marginal
	// figure uses phase 2 only, when the agent's code paths are warm.
	RSSKiBPer1000         Num `json:"rss_kib_per_1000_pairs"`
	RSSMarginalKiBPer1000 Num `json:"rss_marginal_kib_per_1000_pairs"`
	// Stages times each bootstrap step over every pair, from the agents'
	// logs.
	Stages []StageTime `json:"stages,omitempty"`
	// EtcdFsync*: the fabric etcd's WAL fsync latency over the phase
	// (etcd_disk_wal_fsync_duration_seconds), every pair costs at least
	// two etcd writes.
	EtcdFsyncCount int       `json:"etcd_wal_fsyncs"`
	EtcdFsyncP50ms Num       `json:"etcd_wal_fsync_p50_ms"`
	EtcdFsyncP99ms Num       `json:"etcd_wal_fsync_p99_ms"`
	SetupSeconds   Num       `json:"setup_seconds"`
	Errors         []string  `json:"errors,omitempty"`
	FlowInstall    []GoBench `json:"flow_install,omitempty"`
	FlowInstallErr string    `json:"flow_install_error,omitempty"`
}

const cpPort = 9999

// runControlPlane starts a rewrite cluster of hosts × perHost containers
// (etcd outside the agents, so an agent's RSS is its own), lets host 1's
// containers open pairs to every remote container, then every host's.
func runControlPlane(ctx context.Context, log *slog.Logger, binDir, logDir string, hosts, perHost, pace int) (*ControlPlane, error) {
	cp := &ControlPlane{Hosts: hosts, ContainersPerHost: perHost, PacePerSec: pace, P50ms: NaN, P99ms: NaN, BurstP50ms: NaN, BurstP99ms: NaN, LonePairMs: NaN, OneAgentFirstMs: NaN, OneAgentSeconds: NaN,
		BurstRate: NaN, PipelineRate: NaN, RSSKiBPer1000: NaN, RSSMarginalKiBPer1000: NaN, SetupSeconds: NaN,
		EtcdFsyncP50ms: NaN, EtcdFsyncP99ms: NaN}
	start := time.Now()
	cl, err := simcluster.NewCluster(ctx, simcluster.Options{Hosts: hosts, Mode: "rewrite", BinDir: binDir, ExternalEtcd: true, Logger: log})
	if err != nil {
		return cp, fmt.Errorf("control plane cluster: %w", err)
	}
	defer cl.Close()
	defer func() {
		// The agents' logs hold every pair's bootstrap: kept for a closer
		// look, and timed stage by stage.
		var logs []string
		for _, h := range cl.Hosts() {
			if b, err := os.ReadFile(h.LogPath); err == nil {
				os.WriteFile(filepath.Join(logDir, "cp-"+h.Name+"-agent.log"), b, 0o644)
				logs = append(logs, string(b))
			}
		}
		cp.Stages = StageTimes(logs)
	}()
	var cs []*simcluster.Container
	for h := 1; h <= hosts; h++ {
		for i := 1; i <= perHost; i++ {
			c, err := cl.Attach(h, fmt.Sprintf("h%dc%d", h, i), "")
			if err != nil {
				return cp, err
			}
			cs = append(cs, c)
		}
	}
	// Every agent must know every endpoint, or a first packet finds no
	// route and is no cache miss.
	for _, h := range cl.Hosts() {
		err := simhost.WaitFor(30*time.Second, func() error {
			eps, err := api.NewClient(h.APISocket).Endpoints(ctx, true)
			if err != nil {
				return err
			}
			if len(eps) < len(cs) {
				return fmt.Errorf("%s knows %d of %d endpoints", h.Name, len(eps), len(cs))
			}
			return nil
		})
		if err != nil {
			return cp, err
		}
	}
	cp.SetupSeconds = Num(time.Since(start).Seconds())
	conns := map[*simcluster.Container]net.PacketConn{}
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for _, c := range cs {
		pc, err := c.ListenUDP(cpPort) // a bound port: no ICMP unreachable, so no reverse pairs
		if err != nil {
			return cp, err
		}
		conns[c] = pc
		go drain(pc)
	}
	h1 := cl.Host(1)
	fsync0, _ := etcdFsync(cl)
	defer func() {
		if fsync1, err := etcdFsync(cl); err == nil && fsync0 != nil {
			d := SubBuckets(fsync1, fsync0)
			cp.EtcdFsyncCount = int(d[len(d)-1].Count)
			cp.EtcdFsyncP50ms = Num(1e3 * HistogramQuantile(0.5, d))
			cp.EtcdFsyncP99ms = Num(1e3 * HistogramQuantile(0.99, d))
		}
	}()
	before := map[int][]Bucket{}
	for _, h := range cl.Hosts() {
		if before[h.Index], err = agentTTFP(h); err != nil {
			return cp, err
		}
	}
	if cp.RSSBeforeKiB, err = vmRSSKiB(h1.AgentPID()); err != nil {
		return cp, err
	}

	// Phase 1: host 1's containers open a pair to every remote container,
	// all at once.
	var burst, paced []cpPair
	for _, c := range cs {
		for _, d := range cs {
			if d.Host == c.Host {
				continue
			}
			if c.Host == h1 {
				burst = append(burst, cpPair{c, d.IP})
			} else {
				paced = append(paced, cpPair{c, d.IP})
			}
		}
	}
	// Interleave hosts and containers so the pace spreads over agents.
	rand.New(rand.NewPCG(1, 2)).Shuffle(len(paced), func(i, j int) { paced[i], paced[j] = paced[j], paced[i] })
	// Phase 0: one pair alone, the latency without any queueing.
	lone := burst[:1]
	burst = burst[1:]
	t00 := time.Now()
	err = sendPairs(ctx, conns, nil, lone, 0, 5*time.Millisecond, 15*time.Second, func() (bool, error) {
		n, err := ttfpCount(h1, before[h1.Index])
		return n >= 1, err
	})
	if err != nil {
		cp.Errors = append(cp.Errors, fmt.Sprintf("lone pair: %v", err))
	} else if n, first, _, err := fastPathLog(h1.LogPath, t00); err == nil && n > 0 {
		cp.LonePairMs = Num(first.Sub(t00).Seconds() * 1e3)
	}
	cp.OneAgentPairs = len(burst)
	t0 := time.Now()
	err = sendPairs(ctx, conns, lone, burst, 0, 10*time.Millisecond, 30*time.Second, func() (bool, error) {
		n, err := ttfpCount(h1, before[h1.Index])
		return n >= 1+cp.OneAgentPairs, err
	})
	if err != nil {
		cp.Errors = append(cp.Errors, fmt.Sprintf("one agent: %v", err))
	}
	mid := map[int][]Bucket{}
	for _, h := range cl.Hosts() {
		if mid[h.Index], err = agentTTFP(h); err != nil {
			return cp, err
		}
	}
	cp.BurstBuckets = SubBuckets(mid[h1.Index], before[h1.Index])
	cp.BurstP50ms = Num(1e3 * HistogramQuantile(0.50, cp.BurstBuckets))
	cp.BurstP99ms = Num(1e3 * HistogramQuantile(0.99, cp.BurstBuckets))
	if n, first, last, err := fastPathLog(h1.LogPath, t0); err != nil {
		cp.Errors = append(cp.Errors, err.Error())
	} else if n > 0 {
		cp.OneAgentReady = n
		cp.OneAgentFirstMs = Num(first.Sub(t0).Seconds() * 1e3)
		secs := last.Sub(t0).Seconds()
		cp.OneAgentSeconds = Num(secs)
		if secs > 0 {
			cp.BurstRate = Num(float64(n) / secs)
		}
		if spread := last.Sub(first).Seconds(); n > 1 && spread > 0 {
			cp.PipelineRate = Num(float64(n-1) / spread)
		}
	}
	if cp.RSSMidKiB, err = vmRSSKiB(h1.AgentPID()); err != nil {
		return cp, err
	}
	es, err := api.NewClient(h1.APISocket).Cache(ctx)
	if err != nil {
		return cp, err
	}
	cp.EntriesMid = len(es)

	// Phase 2: every other host's containers open their pairs at a steady
	// pace, as new containers and connections arrive in a running
	// cluster; host 1's pairs keep sending so they stay cached.
	cp.PacedPairs = len(paced)
	cp.Pairs = len(lone) + len(burst) + len(paced)
	err = sendPairs(ctx, conns, append(lone, burst...), paced, pace, 20*time.Millisecond, 60*time.Second, func() (bool, error) {
		total := 0
		for _, h := range cl.Hosts() {
			n, err := ttfpCount(h, mid[h.Index])
			if err != nil {
				return false, err
			}
			total += n
		}
		return total >= cp.PacedPairs, nil
	})
	if err != nil {
		cp.Errors = append(cp.Errors, fmt.Sprintf("paced pairs: %v", err))
	}
	var deltas [][]Bucket
	for _, h := range cl.Hosts() {
		after, err := agentTTFP(h)
		if err != nil {
			return cp, err
		}
		deltas = append(deltas, SubBuckets(after, mid[h.Index]))
		d := SubBuckets(after, before[h.Index])
		cp.Ready += int(d[len(d)-1].Count)
	}
	cp.Buckets = AddBuckets(deltas...)
	if len(cp.Buckets) > 0 {
		cp.P50ms = Num(1e3 * HistogramQuantile(0.50, cp.Buckets))
		cp.P99ms = Num(1e3 * HistogramQuantile(0.99, cp.Buckets))
	}
	if cp.RSSAfterKiB, err = vmRSSKiB(h1.AgentPID()); err != nil {
		return cp, err
	}
	if es, err = api.NewClient(h1.APISocket).Cache(ctx); err != nil {
		return cp, err
	}
	cp.CachedEntries = len(es)
	if len(es) > 0 {
		cp.RSSKiBPer1000 = Num(float64(cp.RSSAfterKiB-cp.RSSBeforeKiB) / float64(len(es)) * 1000)
	}
	if d := len(es) - cp.EntriesMid; d > 0 {
		cp.RSSMarginalKiBPer1000 = Num(float64(cp.RSSAfterKiB-cp.RSSMidKiB) / float64(d) * 1000)
	}
	return cp, nil
}

// etcdFsync reads the fabric etcd's WAL fsync histogram.
func etcdFsync(cl *simcluster.Cluster) ([]Bucket, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, cl.EtcdEndpoint+"/metrics", nil)
	if err != nil {
		return nil, err
	}
	resp, err := cl.EtcdHTTPClient(cl.Fabric).Do(req)
	if err != nil {
		return nil, fmt.Errorf("etcd metrics: %w", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("etcd metrics: %w", err)
	}
	return ParseHistogram(string(b), "etcd_disk_wal_fsync_duration_seconds")
}

func drain(pc net.PacketConn) {
	buf := make([]byte, 2048)
	for {
		if _, _, err := pc.ReadFrom(buf); err != nil {
			return
		}
	}
}

// cpPair is one container pair of the control-plane phase.
type cpPair struct {
	src *simcluster.Container
	dst netip.Addr
}

// sendPairs sends one datagram per active pair every interval until done
// says so: keep pairs are active from the start, fresh ones open at pace
// pairs per second (0: all at once).
func sendPairs(ctx context.Context, conns map[*simcluster.Container]net.PacketConn, keep, fresh []cpPair, pace int,
	interval, timeout time.Duration, done func() (bool, error)) error {
	start := time.Now()
	deadline := start.Add(timeout)
	msg := []byte("keyroute-bench")
	lastPoll := time.Time{}
	send := func(ps []cpPair) {
		for _, p := range ps {
			conns[p.src].WriteTo(msg, net.UDPAddrFromAddrPort(netip.AddrPortFrom(p.dst, cpPort)))
		}
	}
	for {
		send(keep)
		open := len(fresh)
		if pace > 0 {
			open = min(open, 1+int(time.Since(start).Seconds()*float64(pace)))
		}
		send(fresh[:open])
		if time.Since(lastPoll) >= 50*time.Millisecond {
			lastPoll = time.Now()
			ok, err := done()
			if ok {
				return nil
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("not every pair on the fast path after %s (%v)", timeout, err)
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(interval):
		}
	}
}

func agentTTFP(h *simcluster.Host) ([]Bucket, error) {
	text, err := h.Metrics()
	if err != nil {
		return nil, err
	}
	return ParseHistogram(text, ttfpMetric)
}

// ttfpCount is how many observations h's histogram gained since before.
func ttfpCount(h *simcluster.Host, before []Bucket) (int, error) {
	now, err := agentTTFP(h)
	if err != nil {
		return 0, err
	}
	d := SubBuckets(now, before)
	return int(d[len(d)-1].Count), nil
}

// Bootstrap stages, as the agents log them (debug level): the sender's
// punt and allocation, the receiver's Restore install and ready mark, the
// sender's rewrite entry.
var bootstrapSteps = []string{"punted", "key allocated", "restore installed", "marked ready", "on the fast path"}

// StageTime is the time from the punt to one bootstrap step, over every
// pair that logged both.
type StageTime struct {
	Stage string `json:"stage"`
	Pairs int    `json:"pairs"`
	P50ms Num    `json:"p50_ms"`
	P90ms Num    `json:"p90_ms"`
	MaxMs Num    `json:"max_ms"`
}

// StageTimes times each bootstrap step from the punt, from the agents'
// logs (slog text, millisecond times; a pair's steps span two agents on
// one clock). A pair bootstrapped more than once counts its last time.
func StageTimes(logs []string) []StageTime {
	type pairKey struct{ src, dst string }
	at := map[pairKey]map[string]time.Time{}
	for _, l := range logs {
		for _, line := range strings.Split(l, "\n") {
			if !strings.HasPrefix(line, "time=") {
				continue
			}
			_, rest, ok := strings.Cut(line, ` msg="pair `)
			if !ok {
				continue
			}
			step, attrs, ok := strings.Cut(rest, `"`)
			if !ok || !slices.Contains(bootstrapSteps, step) {
				continue
			}
			ts, _, _ := strings.Cut(strings.TrimPrefix(line, "time="), " ")
			t, err := time.Parse(time.RFC3339Nano, ts)
			if err != nil {
				continue
			}
			var k pairKey
			for _, f := range strings.Fields(attrs) {
				if v, ok := strings.CutPrefix(f, "src="); ok {
					k.src = v
				} else if v, ok := strings.CutPrefix(f, "dst="); ok {
					k.dst = v
				}
			}
			if at[k] == nil {
				at[k] = map[string]time.Time{}
			}
			at[k][step] = t
		}
	}
	// Times are counted from the punt: the receiver's steps can come
	// before the sender hears its own allocation back.
	var out []StageTime
	for _, step := range bootstrapSteps[1:] {
		var ms []float64
		for _, steps := range at {
			a, okA := steps[bootstrapSteps[0]]
			b, okB := steps[step]
			if okA && okB && !b.Before(a) {
				ms = append(ms, float64(b.Sub(a))/float64(time.Millisecond))
			}
		}
		st := StageTime{Stage: bootstrapSteps[0] + " → " + step, Pairs: len(ms), P50ms: NaN, P90ms: NaN, MaxMs: NaN}
		if len(ms) > 0 {
			slices.Sort(ms)
			st.P50ms, st.P90ms, st.MaxMs = Num(ms[len(ms)/2]), Num(ms[len(ms)*9/10]), Num(ms[len(ms)-1])
		}
		out = append(out, st)
	}
	return out
}

// fastPathLog counts the agent's "pair on the fast path" lines logged at
// or after since and returns the first and last one's time.
func fastPathLog(path string, since time.Time) (n int, first, last time.Time, err error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, first, last, fmt.Errorf("read agent log: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<16), 1<<20)
	// slog's text handler writes millisecond times.
	floor := since.Truncate(time.Millisecond)
	for sc.Scan() {
		t, ok := ParseFastPathLine(sc.Text())
		if !ok || t.Before(floor) {
			continue
		}
		n++
		if first.IsZero() || t.Before(first) {
			first = t
		}
		if t.After(last) {
			last = t
		}
	}
	return n, first, last, sc.Err()
}

// ParseFastPathLine reads an agent log line (slog text format) and
// reports when it announced a pair on the fast path (false: it did not).
func ParseFastPathLine(line string) (time.Time, bool) {
	if !strings.Contains(line, `msg="pair on the fast path"`) || !strings.HasPrefix(line, "time=") {
		return time.Time{}, false
	}
	ts, _, _ := strings.Cut(strings.TrimPrefix(line, "time="), " ")
	t, err := time.Parse(time.RFC3339Nano, ts)
	if err != nil {
		return time.Time{}, false
	}
	return t, true
}

// runFlowInstall runs the controller's BenchmarkInstall (10,000 flows:
// keyroute's pipelined install against `ovs-ofctl add-flows` and
// `--bundle add-flows` on the same bridge) from the source tree.
func runFlowInstall(ctx context.Context) ([]GoBench, error) {
	root, err := simcluster.ModuleRoot()
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", "test", "-run", "^$", "-bench", "^BenchmarkInstall$/^flows=10000$",
		"-benchtime", "1x", "-count", "1", "./controller")
	cmd.Dir = root
	out, err := cmd.CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("go test -bench Install ./controller: %w\n%s", err, out)
	}
	res := ParseGoBench(string(out))
	if len(res) == 0 {
		return nil, errors.New("go test -bench Install printed no benchmark line")
	}
	return res, nil
}
