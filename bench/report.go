package bench

import (
	"fmt"
	"math"
	"slices"
	"strings"
	"time"
)

// metric picks one figure out of a sample.
type metric func(Sample) Num

var (
	mGbps    metric = func(s Sample) Num { return s.Gbps }
	mRetr    metric = func(s Sample) Num { return s.Retransmits }
	mP50     metric = func(s Sample) Num { return s.P50us }
	mP99     metric = func(s Sample) Num { return s.P99us }
	mTPS     metric = func(s Sample) Num { return s.TPS }
	mCPUGB   metric = func(s Sample) Num { return s.CPUSecPerGB }
	mNsPkt   metric = func(s Sample) Num { return s.NsPerPkt }
	mPasses  metric = func(s Sample) Num { return s.PassesPerPkt }
	mUpcalls metric = func(s Sample) Num { return s.UpcallsPer10k }
	mLookups metric = func(s Sample) Num { return s.LookupsPerPass }
	// A 1-stream run uses at least one megaflow: 0 is a results.json from
	// before the count.
	mMegaflows metric = func(s Sample) Num { return zeroNaN(s.Megaflows) }
	mMasks     metric = func(s Sample) Num { return zeroNaN(s.Masks) }
	mForeign   metric = func(s Sample) Num { return s.ForeignPct }
)

func zeroNaN(n Num) Num {
	if n == 0 {
		return NaN
	}
	return n
}

// values collects m over the successful samples of path/test/variant, by
// repetition.
func values(samples []Sample, path Path, test, variant string, m metric) map[int]float64 {
	out := map[int]float64{}
	for _, s := range samples {
		if s.Path == path && s.Test == test && s.Variant == variant && s.Err == "" {
			if v := float64(m(s)); !math.IsNaN(v) {
				out[s.Rep] = v
			}
		}
	}
	return out
}

func summarize(samples []Sample, path Path, test, variant string, m metric) Summary {
	var xs []float64
	for _, v := range values(samples, path, test, variant, m) {
		xs = append(xs, v)
	}
	return Summarize(xs)
}

// ratio of path a over path b for one test and figure, pair by pair.
func ratio(samples []Sample, a, b Path, test string, m metric) Summary {
	return Summarize(PairedRatios(values(samples, a, test, "", m), values(samples, b, test, "", m)))
}

func f(x float64, prec int) string {
	if math.IsNaN(x) {
		return "–"
	}
	return fmt.Sprintf("%.*f", prec, x)
}

// rangeStr prints "median (min–max)" or just the value for one sample.
func rangeStr(s Summary, prec int) string {
	if s.N == 0 {
		return "–"
	}
	if s.N == 1 || f(s.Min, prec) == f(s.Max, prec) {
		return f(s.Median, prec)
	}
	return fmt.Sprintf("%s (%s–%s)", f(s.Median, prec), f(s.Min, prec), f(s.Max, prec))
}

// Target is one goal the report checks.
type Target struct {
	What     string
	Measured float64
	Goal     float64
	Higher   bool // higher is better
	Unit     string
	Limit    string // what limits it, when missed
}

func (t Target) met() (bool, bool) {
	if math.IsNaN(t.Measured) {
		return false, false
	}
	if t.Higher {
		return t.Measured >= t.Goal, true
	}
	return t.Measured <= t.Goal, true
}

func targets(res *Result) []Target {
	s := res.Samples
	ns := func(p Path) string { return f(summarize(s, p, TestTCP1, "", mNsPkt).Median, 0) }
	perPkt := fmt.Sprintf("vswitchd CPU per packet: A %s ns, B %s ns, C %s ns", ns(PathA), ns(PathB), ns(PathC))
	var ts []Target
	if !res.Config.NoDataPlane {
		ts = append(dataPlaneTargets(s, perPkt), afxdpTargets(res)...)
	}
	if cp := res.ControlPlane; cp != nil {
		ts = append(ts, controlPlaneTargets(cp)...)
	}
	if ks := res.KeySpace; ks != nil {
		ts = append(ts, Target{What: fmt.Sprintf("bytes on the fast path, eviction traffic (%d pairs, %d keys, Zipf)", ksPairs(ks), ks.Keys),
			Measured: 100 * ks.share("traffic"), Goal: 100 * KeySpaceGoal, Higher: true, Unit: "%",
			Limit: "the pairs that hold the keys are not the busiest: see the key swaps in “Key space” (a swap needs the busier pair at eviction_factor × the quieter one's rate for eviction_hold)"})
	}
	return ts
}

func dataPlaneTargets(s []Sample, perPkt string) []Target {
	med := func(x Summary) float64 { return x.Median }
	return []Target{
		{What: "C / A throughput, 1 stream", Measured: med(ratio(s, PathC, PathA, TestTCP1, mGbps)), Goal: 1.00, Higher: true, Unit: "×",
			Limit: "every OVS path here is bound by ovs-vswitchd's single main thread moving packets through AF_PACKET/tap system calls (netdev datapath, no PMD, no kernel module), so throughput follows CPU per packet (" + perPkt + "); C's extra header rewrites and br-int pass cost a little more than A's plain br-phy pass"},
		{What: "C / A throughput, 4 streams", Measured: med(ratio(s, PathC, PathA, TestTCP4, mGbps)), Goal: 1.00, Higher: true, Unit: "×",
			Limit: "as above: one vswitchd thread per host is the bottleneck, more streams do not add capacity"},
		{What: "C / B throughput, 1 stream", Measured: med(ratio(s, PathC, PathB, TestTCP1, mGbps)), Goal: 1.03, Higher: true, Unit: "×",
			Limit: "encapsulation is cheap next to the per-packet system calls of the netdev datapath, so saving it moves throughput only a few per cent, within this machine's noise (" + perPkt + ")"},
		{What: "C / B throughput, 4 streams", Measured: med(ratio(s, PathC, PathB, TestTCP4, mGbps)), Goal: 1.03, Higher: true, Unit: "×",
			Limit: "as above"},
		{What: "C RR p50 / B RR p50", Measured: med(ratio(s, PathC, PathB, TestRR, mP50)), Goal: 1.00, Higher: false, Unit: "×",
			Limit: "a 64-byte transaction's latency is dominated by four vswitchd wake-ups per round trip, not by the encapsulation"},
		{What: "R / C throughput, 1 stream (1,000 rules vs none)", Measured: med(ratio(s, PathR, PathC, TestTCP1, mGbps)), Goal: 0.95, Higher: true, Unit: "×",
			Limit: "the rule tables are reached only by an upcall; after it, the flow's packets hit the exact-match cache or a megaflow, whose classifier lookups the “What the flow tables cost each datapath pass” table counts for R and C. Where those counts match, what is left of the gap is the machine's noise: see this ratio's min–max in the Ratios table"},
		{What: "C CPU/GB / B CPU/GB (1 stream)", Measured: med(ratio(s, PathC, PathB, TestTCP1, mCPUGB)), Goal: 0.90, Higher: false, Unit: "×",
			Limit: "ovs-vswitchd's stime (system calls, and softirq work charged to it) dominates and is the same per packet for both; the VXLAN push/pop that C saves is user time"},
	}
}

func controlPlaneTargets(cp *ControlPlane) []Target {
	return []Target{
		{What: "time to fast path p50 (paced)", Measured: float64(cp.P50ms), Goal: 5, Unit: "ms",
			Limit: fmt.Sprintf("each pair waits, in sequence, for two etcd writes (the sender's allocation, the receiver's ready mark; WAL fsync p50 %s ms), "+
				"two watch deliveries and two cache installs on two switches (a bundle each: two round trips to an ovs-vswitchd whose one main thread "+
				"also forwards all the traffic) — “Where a pair's time goes” below times each. Installs are batched (pairs that arrive together "+
				"share one bundle) but not shortened; on ~2 shared cores every step also queues behind the senders' traffic", fmtNum(cp.EtcdFsyncP50ms, 2))},
		{What: "time to fast path p99 (paced)", Measured: float64(cp.P99ms), Goal: 50, Unit: "ms",
			Limit: "as for p50; the tail grows when arrivals bunch up, as the burst row shows"},
		{What: "new pairs per second, one agent (pipeline rate)", Measured: float64(cp.PipelineRate), Goal: 1000, Higher: true, Unit: "pairs/s",
			Limit: "the bootstrap steps above, with batched installs; above that the metered punt (cache.punt_rate, default 1,000 packets/s for all misses) would cap it"},
	}
}

// stageWhat says what each bootstrap stage waits for.
var stageWhat = map[string]string{
	"punted → key allocated":     "the sender's allocation: one etcd transaction (1 write)",
	"punted → restore installed": "and the receiver's watch delivery, then a cache install on its br-int (a bundle: two switch round trips)",
	"punted → marked ready":      "and the receiver's compare-and-swap in etcd (1 write)",
	"punted → on the fast path":  "and the sender's watch delivery, then a cache install on its br-int: the whole bootstrap",
}

// Report renders report.md.
func Report(res *Result, charts []string) string {
	var b strings.Builder
	w := func(format string, a ...any) { fmt.Fprintf(&b, format, a...) }
	s := res.Samples
	c := res.Config
	kind := "default"
	if c.Quick {
		kind = "quick (CI)"
	}
	w("# keyroute benchmark: %s\n\n", res.Started.UTC().Format("2006-01-02 15:04 UTC"))
	order := PathNames(res.Paths, " ")
	if c.NoDataPlane {
		w("%s run without the data-plane phase; whole run %s.\n\n", kind, res.Finished.Sub(res.Started).Round(time.Second))
	} else {
		w("%s run, %d repetition(s) interleaved (%s, %s, …), iperf3 %s per run (1 and 4 streams), "+
			"UDP request/response %s per run; whole run %s.\n\n", kind, c.Reps, order, order, c.Duration, c.RRDuration,
			res.Finished.Sub(res.Started).Round(time.Second))
		w("**Read the foreign-load column first.** The machine is shared: “foreign %%” is the share of all CPUs that was busy " +
			"during a sample but not spent by this benchmark's processes (daemons, servers, clients, itself) — other tenants. " +
			"Samples with high foreign load are slower; interleaving spreads that noise over all paths, and ratios are taken " +
			"repetition by repetition so a slow phase hits both sides of a ratio. (Packet work the kernel defers to ksoftirqd threads cannot be " +
			"told apart by owner; it counts as foreign here, and results.json has its share per sample as ksoftirqd_pct.)\n\n")
	}

	m := res.Machine
	w("## Machine\n\n| | |\n|---|---|\n| CPUs (nproc) | %d |\n| CPU | %s |\n| kernel | %s |\n| Open vSwitch | %s |\n| datapath | %s |\n| iperf3 | %s |\n| Go | %s |\n\n",
		m.NProc, m.CPUModel, m.Kernel, m.OVSVersion, m.Datapath, m.Iperf3, m.Go)
	w("Config: reps %d, iperf3 %s, RR %s (64-byte UDP, one transaction outstanding), TSO variant %v, control plane %d hosts × %d containers, flow install bench %v, key space %v. "+
		"Phases (s): %s.\n\n", c.Reps, c.Duration, c.RRDuration, c.TSO, c.CPHosts, c.CPContainers, c.FlowInstall, c.KeySpace, phases(res.Phases))

	if c.NoDataPlane {
		w("## Data plane\n\nNot run (`--no-data-plane`).\n")
	} else {
		w("## Paths\n\n")
		for _, p := range res.Paths {
			w("- **%s** — %s\n", p, PathInfo[p])
		}
		if !slices.Contains(res.Paths, PathO) {
			w("- **O** (OVN Geneve) — %s\n", mdEscape(res.OVN))
		}
		w("\n")
		w("All on the simcluster simulated hosts (network namespaces on one machine). B and C are two clusters of two hosts each, " +
			"built the same way (same harness, same agent defaults, so container MTU 1450 in B, tunnel mode, and 1500, the uplink's, in C) and up at the same time: " +
			"re-creating one cluster per mode per repetition would add minutes and a fresh-start bias; idle, the other cluster costs " +
			"little CPU and that shows in the foreign column as ours, not foreign. A runs on the rewrite cluster's hosts, so C/A compares " +
			"the same two vswitchds. OVS veths have TX checksum offload off (the netdev datapath needs it, DESIGN.md); K and D keep the " +
			"kernel's default offloads (TSO/GSO/checksum), as flannel and a veth do in production — that, not encapsulation, is most of " +
			"the gap between OVS paths and K/D.\n\n")

		w("## Data plane (medians, min–max over repetitions)\n\n")
		w("| path | TCP 1 stream Gb/s | TCP 4 streams Gb/s | retransmits (1 / 4) | RR p50 µs | RR p99 µs | transactions/s | vswitchd CPU s/GB (1 / 4) | vswitchd CPU ns/pkt | DP passes/pkt | foreign %% (median, max) |\n")
		w("|---|---|---|---|---|---|---|---|---|---|---|\n")
		for _, p := range res.Paths {
			fs := Summarize(mapVals(values(s, p, TestTCP1, "", mForeign), values(s, p, TestTCP4, "", mForeign), values(s, p, TestRR, "", mForeign)))
			cpu := "n/a (no OVS)"
			cyc, pas := "n/a", "n/a"
			if ovsPath(p) {
				cpu = rangeStr(summarize(s, p, TestTCP1, "", mCPUGB), 2) + " / " + rangeStr(summarize(s, p, TestTCP4, "", mCPUGB), 2)
				cyc = rangeStr(summarize(s, p, TestTCP1, "", mNsPkt), 0)
				pas = rangeStr(summarize(s, p, TestTCP1, "", mPasses), 2)
			}
			w("| %s | %s | %s | %s / %s | %s | %s | %s | %s | %s | %s | %s, %s |\n", p,
				rangeStr(summarize(s, p, TestTCP1, "", mGbps), 3), rangeStr(summarize(s, p, TestTCP4, "", mGbps), 3),
				f(summarize(s, p, TestTCP1, "", mRetr).Median, 0), f(summarize(s, p, TestTCP4, "", mRetr).Median, 0),
				rangeStr(summarize(s, p, TestRR, "", mP50), 1), rangeStr(summarize(s, p, TestRR, "", mP99), 1),
				rangeStr(summarize(s, p, TestRR, "", mTPS), 0), cpu, cyc, pas, f(fs.Median, 0), f(fs.Max, 0))
		}
		w("\nvswitchd CPU is utime+stime of both hosts' ovs-vswitchd over the iperf3 run, per GB received. Per packet: " +
			"`ovs-appctl dpif-netdev/pmd-stats-show` of both vswitchds, cleared before each 1-stream run, counts every packet each datapath received " +
			"(ACKs included) and its recirculations; passes/pkt = (received + recirculated) / received. OVS 3.1 counts cycles only on PMD threads " +
			"and the netdev datapath without DPDK runs on the main thread, so the cost per packet is vswitchd CPU time / packets received.\n\n")

		w("### What the flow tables cost each datapath pass (TCP 1 stream)\n\n| path | upcalls per 10k passes | classifier subtable lookups per pass | megaflows used / their masks (both hosts) |\n|---|---|---|---|\n")
		for _, p := range res.Paths {
			if ovsPath(p) {
				w("| %s | %s | %s | %s / %s |\n", p, rangeStr(summarize(s, p, TestTCP1, "", mUpcalls), 2), rangeStr(summarize(s, p, TestTCP1, "", mLookups), 3),
					rangeStr(summarize(s, p, TestTCP1, "", mMegaflows), 0), rangeStr(summarize(s, p, TestTCP1, "", mMasks), 0))
			}
		}
		w("\nFrom the same pmd-stats-show counters. A packet whose flow is in the exact-match cache never reaches the flow tables; a megaflow hit " +
			"searches the datapath classifier's subtables (one per distinct wildcard mask, so rules that unwildcard more fields add subtables); an upcall " +
			"runs the OpenFlow pipeline, rule tables included. These counts, unlike throughput, are not moved by the machine's noise: R against C is " +
			"what 1,000 rules cost a flow's packets. Megaflows used: the flows of `ovs-appctl dpctl/dump-flows -m` on both vswitchds that packets used " +
			"during the run (the host's own traffic — etcd, DSCP path probes — included), and their distinct wildcard masks per input port (the netdev " +
			"datapath's classifier keeps one subtable per mask for each input port).\n\n")

		w("## Ratios (per repetition, then median, min–max)\n\n| ratio | TCP 1 stream | TCP 4 streams | RR p50 | RR transactions/s | vswitchd CPU/GB (1 stream) |\n|---|---|---|---|---|---|\n")
		pairs := [][2]Path{{PathC, PathA}, {PathC, PathB}, {PathC, PathK}, {PathB, PathA}, {PathR, PathC}}
		if slices.Contains(res.Paths, PathO) {
			pairs = append(pairs, [2]Path{PathC, PathO}, [2]Path{PathO, PathB})
		}
		for _, pr := range pairs {
			cpu := "n/a"
			if ovsPath(pr[1]) {
				cpu = rangeStr(ratio(s, pr[0], pr[1], TestTCP1, mCPUGB), 2)
			}
			w("| %s/%s | %s | %s | %s | %s | %s |\n", pr[0], pr[1], rangeStr(ratio(s, pr[0], pr[1], TestTCP1, mGbps), 2),
				rangeStr(ratio(s, pr[0], pr[1], TestTCP4, mGbps), 2), rangeStr(ratio(s, pr[0], pr[1], TestRR, mP50), 2),
				rangeStr(ratio(s, pr[0], pr[1], TestRR, mTPS), 2), cpu)
		}
	}
	w("\n%s", afxdpSection(res))
	w("## Targets (reported, not asserted)\n\n| target | goal | measured | met | what limits it (our reading of the figures, not a profile) |\n|---|---|---|---|---|\n")
	for _, t := range targets(res) {
		op := "≤"
		if t.Higher {
			op = "≥"
		}
		met, known := t.met()
		verdict, limit := "–", ""
		if known {
			verdict = "yes"
			if !met {
				by := 100 * math.Abs(t.Measured-t.Goal) / t.Goal
				prec := 0
				if by < 1 {
					prec = 1
				}
				verdict = fmt.Sprintf("**no**, missed by %.*f%%", prec, by)
				limit = t.Limit
			}
		}
		prec := 2
		if t.Unit != "×" {
			prec = 1
		}
		w("| %s | %s %s %s | %s %s | %s | %s |\n", t.What, op, f(t.Goal, prec), t.Unit, f(t.Measured, prec), t.Unit, verdict, limit)
	}

	if !c.NoDataPlane {
		w("\n## Every repetition, with foreign load\n\n| rep | path | TCP 1 Gb/s (foreign %%) | TCP 4 Gb/s (foreign %%) | RR p50 µs (foreign %%) | errors / notes |\n|---|---|---|---|---|---|\n")
		for rep := 1; rep <= c.Reps; rep++ {
			for _, p := range res.Paths {
				var cells [3]string
				var notes []string
				for i, test := range []string{TestTCP1, TestTCP4, TestRR} {
					cells[i] = "–"
					for _, x := range s {
						if x.Rep != rep || x.Path != p || x.Test != test || x.Variant != "" {
							continue
						}
						if x.Err != "" {
							cells[i] = "failed"
							notes = append(notes, test+": "+x.Err)
							continue
						}
						v := x.Gbps
						prec := 3
						if test == TestRR {
							v, prec = x.P50us, 1
						}
						cells[i] = fmt.Sprintf("%s (%s)", fmtNum(v, prec), fmtNum(x.ForeignPct, 0))
						if x.Note != "" && test == TestTCP1 {
							notes = append(notes, x.Note)
						}
					}
				}
				w("| %d | %s | %s | %s | %s | %s |\n", rep, p, cells[0], cells[1], cells[2], mdEscape(strings.Join(notes, "; ")))
			}
		}

		w("\n## Userspace TSO variant\n\n")
		switch {
		case !c.TSO:
			w("Not run (`--tso` off%s). It restarts both vswitchds of each cluster with `other_config:userspace-tso-enable=true` and turns veth TX offloads back on.\n", map[bool]string{true: "; `--quick` leaves it out", false: ""}[c.Quick])
		case res.TSOError != "":
			w("Could not be set up: %s\n", mdEscape(res.TSOError))
		default:
			w("Both vswitchds of each cluster restarted with `other_config:userspace-tso-enable=true` (vswitchd says: `%s`), TX checksum and TSO "+
				"offloads on for every veth on the path; the agents reconnected and replayed their flows; the host IP was put back on br-phy "+
				"and the tunnel neighbours re-set (a restarted vswitchd recreates br-phy's tap and forgets them).\n\n", mdEscape(strings.TrimSpace(res.TSONote)))
			w("| path | ping | TCP 1 stream Gb/s (TSO) | vs. without TSO | retransmits | vswitchd CPU s/GB | TCP frames captured on the fabric | incorrect TCP checksums | frames > 1500 B |\n|---|---|---|---|---|---|---|---|---|\n")
			for _, tc := range res.TSOChecks {
				tso := summarize(s, tc.Path, TestTCP1, "tso", mGbps)
				base := summarize(s, tc.Path, TestTCP1, "", mGbps)
				rel := "–"
				if tso.N > 0 && base.N > 0 {
					rel = f(tso.Median/base.Median, 2) + "×"
				}
				ping := "ok"
				if !tc.PingOK {
					ping = "**fails**"
				}
				got := rangeStr(tso, 3)
				if tso.N == 0 {
					got = "**no traffic**: " + firstErr(s, tc.Path, "tso")
				}
				w("| %s | %s | %s | %s | %s | %s | %d | %d | %d |\n", tc.Path, ping, mdEscape(got), rel, f(summarize(s, tc.Path, TestTCP1, "tso", mRetr).Median, 0),
					rangeStr(summarize(s, tc.Path, TestTCP1, "tso", mCPUGB), 2),
					tc.Segments, tc.Incorrect, tc.Large)
			}
			w("\nOVS 3.1 cannot segment packets it encapsulates in userspace, so with TSO on the VXLAN path (B) is expected to drop large " +
				"frames while rewrite (C) and the host path (A) pass them. tcpdump on a veth shows a frame whose checksum the receiver " +
				"would fill in (CHECKSUM_PARTIAL) as “incorrect” although it is delivered fine; a path where incorrect checksums come " +
				"with retransmits and no throughput really is broken.\n")
		}
	}

	w("\n## Control plane\n\n")
	if res.ControlPlane == nil && res.CPError == "" {
		w("Not run (`--no-control-plane`).\n")
	}
	if cp := res.ControlPlane; cp != nil {
		if cp.Hosts > 0 {
			w("A rewrite cluster of %d hosts × %d containers (etcd in the fabric namespace, outside the agents), set up in %s s. "+
				"Containers send UDP datagrams to containers on other hosts (to a bound port, so no ICMP reply opens reverse pairs), "+
				"every 5–20 ms per pair until it is on the fast path. Phase 0: one pair alone. Phase 1 (burst): host 1's other %d pairs all start at once — how fast "+
				"one agent sets up pairs. Phase 2 (paced): the other hosts' %d pairs open at %d new pairs per second, spread over all agents "+
				"— time to fast path as new pairs arrive in a running cluster.\n\n",
				cp.Hosts, cp.ContainersPerHost, fmtNum(cp.SetupSeconds, 1), cp.OneAgentPairs, cp.PacedPairs, cp.PacePerSec)
			w("| figure | value |\n|---|---|\n")
			w("| pairs started / reached the fast path | %d / %d |\n", cp.Pairs, cp.Ready)
			w("| time to fast path of one pair alone (first datagram → ready, from h1's log) | %s ms |\n", fmtNum(cp.LonePairMs, 0))
			w("| time to fast path, paced (%d pairs at %d/s): p50 / p99 | %s ms / %s ms |\n", cp.PacedPairs, cp.PacePerSec, fmtNum(cp.P50ms, 2), fmtNum(cp.P99ms, 2))
			w("| time to fast path, burst (h1's %d pairs at once): p50 / p99 | %s ms / %s ms |\n", cp.OneAgentPairs, fmtNum(cp.BurstP50ms, 2), fmtNum(cp.BurstP99ms, 2))
			w("| fabric etcd WAL fsyncs during the phase / p50 / p99 | %d / %s ms / %s ms |\n", cp.EtcdFsyncCount, fmtNum(cp.EtcdFsyncP50ms, 2), fmtNum(cp.EtcdFsyncP99ms, 2))
			w("| one agent (h1): pairs started at once / ready | %d / %d |\n", cp.OneAgentPairs, cp.OneAgentReady)
			w("| one agent: first pair ready / last pair ready after | %s ms / %s ms |\n", fmtNum(cp.OneAgentFirstMs, 0), fmtNum(cp.OneAgentSeconds*1000, 0))
			w("| new pairs per second, one agent: pipeline (first→last ready) / burst (incl. first latency) | %s / %s |\n", fmtNum(cp.PipelineRate, 0), fmtNum(cp.BurstRate, 0))
			w("| h1 agent VmRSS: before / after its own pairs / after all pairs | %d / %d / %d KiB (cache entries: 0 / %d / %d) |\n",
				cp.RSSBeforeKiB, cp.RSSMidKiB, cp.RSSAfterKiB, cp.EntriesMid, cp.CachedEntries)
			w("| agent RSS per 1,000 cached pairs: overall / marginal (phase 2 only) | %s / %s KiB — **extrapolated** from %d entries; Go heap growth is stepwise, so rough |\n",
				fmtNum(cp.RSSKiBPer1000, 0), fmtNum(cp.RSSMarginalKiBPer1000, 0), cp.CachedEntries)
			w("\nTime to fast path is the agents' own `%s` histogram (first punt → rewrite entry installed), summed over all agents; "+
				"p50/p99 are interpolated inside its buckets (0.5 ms × 2ⁿ), so they are estimates at bucket resolution. "+
				"New pairs per second: host 1's containers start all their pairs at once (phase 1), then every host's (phase 2); times come from "+
				"the “pair on the fast path” lines in h1's log (millisecond timestamps). The pipeline rate is the target's measure (pairs completed per "+
				"second once they flow); the burst rate adds the first pair's latency.\n", ttfpMetric)
			if len(cp.Stages) > 0 {
				w("\n**Where a pair's time goes** (every pair of all phases, from the agents' debug lines; the sender logs punted, key allocated " +
					"and on the fast path, the receiver restore installed and marked ready; one clock, millisecond times):\n\n" +
					"| from → to | what it waits for | pairs | p50 ms | p90 ms | max ms |\n|---|---|---|---|---|---|\n")
				for _, st := range cp.Stages {
					w("| %s | %s | %d | %s | %s | %s |\n", st.Stage, stageWhat[st.Stage], st.Pairs, fmtNum(st.P50ms, 0), fmtNum(st.P90ms, 0), fmtNum(st.MaxMs, 0))
				}
			}
			for _, e := range cp.Errors {
				w("\n- problem: %s", mdEscape(e))
			}
			if len(cp.Errors) > 0 {
				w("\n")
			}
		}
		if len(cp.FlowInstall) > 0 {
			w("\n**Flow install rate** (`go test -run='^$' -bench='^BenchmarkInstall$/^flows=10000$' -benchtime=1x ./controller`: the same 10,000 per-pair flows into one netdev bridge):\n\n| benchmark | keyroute ns/flow (flows/s) | ovs-ofctl add-flows ns/flow (flows/s) | ovs-ofctl --bundle ns/flow | add-flows / keyroute |\n|---|---|---|---|---|\n")
			for _, g := range cp.FlowInstall {
				ours, theirs := g.Metrics["ns/flow"], g.Metrics["ofctl-ns/flow"]
				w("| %s | %.0f (%.0f) | %.0f (%.0f) | %.0f | %.1f× |\n", g.Name, ours, 1e9/ours, theirs, 1e9/theirs, g.Metrics["ofctl-bundle-ns/flow"], g.Metrics["ofctl/keyroute"])
			}
		}
		if cp.FlowInstallErr != "" {
			w("\nFlow install bench failed: %s\n", mdEscape(firstLine(cp.FlowInstallErr)))
		}
	}
	if res.CPError != "" {
		w("\nControl-plane phase failed: %s\n", mdEscape(res.CPError))
	}

	writeKeySpace(w, res)

	if len(charts) > 0 {
		w("\n## Charts\n\n")
		for _, ch := range charts {
			w("![%s](%s)\n", strings.TrimSuffix(ch, ".png"), ch)
		}
	}
	w("\n## Missing, and caveats\n\n")
	if c.NoDataPlane {
		w("- Data plane: not run.\n")
	} else if !slices.Contains(res.Paths, PathO) {
		w("- O (OVN Geneve): %s\n", mdEscape(res.OVN))
	} else {
		w("- O runs OVN's own choices (Geneve with UDP checksums, MTU 1442), not tuned; the userspace-TSO variant leaves O out.\n")
	}
	if len(res.Broken) > 0 {
		w("- Paths with no successful sample: %s.\n", PathNames(res.Broken, ", "))
	}
	for _, e := range res.Errors {
		w("- error: %s\n", mdEscape(firstLine(e)))
	}
	w("- Everything runs on one shared machine: the fabric is a Linux bridge, “hosts” share CPUs with each other and with other tenants. " +
		"Absolute figures are this machine's; ratios are the portable part.\n")
	w("- The agent RSS per 1,000 pairs is extrapolated from one agent's few hundred entries at most (37 keys per host-pair direction with the default key set).\n")
	w("- Raw data: results.json (every sample, with its start time, busy and foreign CPU).\n")
	return b.String()
}

func phases(p map[string]float64) string {
	var ks []string
	for k := range p {
		ks = append(ks, k)
	}
	slices.Sort(ks)
	var out []string
	for _, k := range ks {
		out = append(out, fmt.Sprintf("%s %.0f", k, p[k]))
	}
	return strings.Join(out, ", ")
}

func mapVals(ms ...map[int]float64) []float64 {
	var out []float64
	for _, m := range ms {
		for _, v := range m {
			out = append(out, v)
		}
	}
	return out
}

func firstErr(samples []Sample, path Path, variant string) string {
	for _, s := range samples {
		if s.Path == path && s.Variant == variant && s.Err != "" {
			return firstLine(s.Err)
		}
	}
	return ""
}

func firstLine(s string) string {
	l, _, _ := strings.Cut(s, "\n")
	if len(l) > 300 {
		l = l[:300] + "…"
	}
	return l
}

func mdEscape(s string) string {
	return strings.NewReplacer("|", `\|`, "\n", " ").Replace(s)
}
