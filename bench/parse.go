package bench

import (
	"bufio"
	"fmt"
	"math"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/keyroute/keyroute/internal/ovstext"
)

// ParseHistogram reads the cumulative buckets of histogram name from
// Prometheus text exposition, sorted by bound.
func ParseHistogram(text, name string) ([]Bucket, error) {
	var bs []Bucket
	prefix := name + `_bucket{`
	sc := bufio.NewScanner(strings.NewReader(text))
	sc.Buffer(make([]byte, 1<<16), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, prefix) {
			continue
		}
		i := strings.Index(line, `le="`)
		j := strings.Index(line, `"}`)
		if i < 0 || j < i {
			return nil, fmt.Errorf("histogram %s: bad bucket line %q", name, line)
		}
		le, err := strconv.ParseFloat(line[i+4:j], 64)
		if err != nil {
			return nil, fmt.Errorf("histogram %s: bucket bound in %q: %w", name, line, err)
		}
		count, err := strconv.ParseFloat(strings.TrimSpace(line[j+2:]), 64)
		if err != nil {
			return nil, fmt.Errorf("histogram %s: bucket count in %q: %w", name, line, err)
		}
		bs = append(bs, Bucket{LE: le, Count: count})
	}
	if len(bs) == 0 {
		return nil, fmt.Errorf("histogram %s not found in metrics", name)
	}
	sort.Slice(bs, func(i, j int) bool { return bs[i].LE < bs[j].LE })
	if !math.IsInf(bs[len(bs)-1].LE, 1) {
		return nil, fmt.Errorf("histogram %s: no +Inf bucket", name)
	}
	return bs, nil
}

// PMDStats is the part of `ovs-appctl dpif-netdev/pmd-stats-show` the
// report uses, summed over every thread of one ovs-vswitchd. (OVS 3.1
// counts cycles only on PMD threads; the netdev datapath without DPDK
// runs on the main thread, so cost per packet comes from CPU time.)
//
// Where a packet's flow is found tells what the flow tables cost it: an
// exact-match cache hit never looks at them, a megaflow hit searches the
// datapath classifier's subtables (one per distinct wildcard mask, so
// more and narrower masks mean more lookups), and an upcall runs the whole
// OpenFlow pipeline in ovs-vswitchd.
type PMDStats struct {
	Packets        float64 `json:"packets"`
	Recirculations float64 `json:"recirculations"`
	MegaflowHits   float64 `json:"megaflow_hits"`
	// SubtableLookups is avg. subtable lookups per megaflow hit × hits.
	SubtableLookups float64 `json:"subtable_lookups"`
	// Upcalls counts misses with a successful or a failed upcall.
	Upcalls float64 `json:"upcalls"`
}

var pmdLineRE = regexp.MustCompile(`^\s*(packets received|packet recirculations|megaflow hits|avg\. subtable lookups per megaflow hit|miss with success upcall|miss with failed upcall):\s*([0-9.]+)`)

// ParsePMDStats sums the counters of every thread in the output.
func ParsePMDStats(out string) (PMDStats, error) {
	var st PMDStats
	found := false
	// One thread's average and hit count, summed when its block ends.
	var lookupsPerHit, hits float64
	for _, line := range strings.Split(out, "\n") {
		if strings.HasSuffix(strings.TrimSpace(line), ":") && !strings.HasPrefix(line, " ") {
			st.SubtableLookups += lookupsPerHit * hits
			lookupsPerHit, hits = 0, 0
			continue
		}
		m := pmdLineRE.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		v, _ := strconv.ParseFloat(m[2], 64)
		switch m[1] {
		case "packets received":
			found = true
			st.Packets += v
		case "packet recirculations":
			st.Recirculations += v
		case "megaflow hits":
			st.MegaflowHits += v
			hits = v
		case "avg. subtable lookups per megaflow hit":
			lookupsPerHit = v
		default: // upcalls
			st.Upcalls += v
		}
	}
	st.SubtableLookups += lookupsPerHit * hits
	if !found {
		return st, fmt.Errorf("no counters in pmd-stats-show output %.200q", out)
	}
	return st, nil
}

// Add sums two vswitchds' counters.
func (s PMDStats) Add(o PMDStats) PMDStats {
	return PMDStats{Packets: s.Packets + o.Packets, Recirculations: s.Recirculations + o.Recirculations,
		MegaflowHits: s.MegaflowHits + o.MegaflowHits, SubtableLookups: s.SubtableLookups + o.SubtableLookups, Upcalls: s.Upcalls + o.Upcalls}
}

// Passes returns datapath passes per received packet (NaN without
// packets).
func (s PMDStats) Passes() float64 {
	if s.Packets == 0 {
		return math.NaN()
	}
	return (s.Packets + s.Recirculations) / s.Packets
}

// perPass divides n by the datapath passes (NaN without packets): every
// pass, a recirculated one too, looks its flow up.
func (s PMDStats) perPass(n float64) float64 {
	if s.Packets == 0 {
		return math.NaN()
	}
	return n / (s.Packets + s.Recirculations)
}

// UpcallsPer10k is upcalls per 10,000 datapath passes.
func (s PMDStats) UpcallsPer10k() float64 { return 1e4 * s.perPass(s.Upcalls) }

// LookupsPerPass is classifier subtable lookups per datapath pass.
func (s PMDStats) LookupsPerPass() float64 { return s.perPass(s.SubtableLookups) }

// GoBench is one line of `go test -bench` output: name and its metrics by
// unit ("ns/flow", "ofctl/keyroute", ...).
type GoBench struct {
	Name    string             `json:"name"`
	Metrics map[string]float64 `json:"metrics"`
}

// ParseGoBench reads every Benchmark line of `go test -bench` output.
func ParseGoBench(out string) []GoBench {
	var res []GoBench
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) < 4 || !strings.HasPrefix(f[0], "Benchmark") {
			continue
		}
		b := GoBench{Name: f[0], Metrics: map[string]float64{}}
		// f[1] is the iteration count; then value/unit pairs.
		for i := 2; i+1 < len(f); i += 2 {
			v, err := strconv.ParseFloat(f[i], 64)
			if err != nil {
				break
			}
			b.Metrics[f[i+1]] = v
		}
		res = append(res, b)
	}
	return res
}

// Megaflows counts the datapath flows of `ovs-appctl dpctl/dump-flows -m`
// that packets used in the last while, and their distinct wildcard masks
// per input port: the netdev datapath keeps one classifier per input
// port with one subtable per mask, so Masks is the subtables those flows
// occupy. Exact-match cache misses search them.
type Megaflows struct {
	Flows int `json:"flows"`
	Masks int `json:"masks"`
}

// Add sums two vswitchds' counts.
func (m Megaflows) Add(o Megaflows) Megaflows { return Megaflows{m.Flows + o.Flows, m.Masks + o.Masks} }

var usedRE = regexp.MustCompile(`, used:(never|[0-9.]+)s?,`)

// ParseMegaflows reads `dpctl/dump-flows -m`, counting the flows last
// used at most within ago.
func ParseMegaflows(out string, within time.Duration) (Megaflows, error) {
	var m Megaflows
	if !strings.Contains(out, "flow-dump") && !strings.Contains(out, "ufid:") {
		return m, fmt.Errorf("not dpctl/dump-flows output: %.200q", out)
	}
	masks := map[string]bool{}
	for _, line := range strings.Split(out, "\n") {
		match, _, ok := strings.Cut(line, ", packets:")
		if !ok {
			continue
		}
		u := usedRE.FindStringSubmatch(line)
		if u == nil || u[1] == "never" {
			continue
		}
		if ago, err := strconv.ParseFloat(u[1], 64); err != nil || ago > within.Seconds() {
			continue
		}
		if _, rest, ok := strings.Cut(match, ", "); ok && strings.HasPrefix(match, "ufid:") {
			match = rest
		}
		port, sig := maskOf(match)
		m.Flows++
		masks[port+" "+sig] = true
	}
	m.Masks = len(masks)
	return m, nil
}

// maskOf returns a flow match's input port and its mask: every field
// with each subfield's mask ("exact" where the dump prints no mask).
func maskOf(match string) (port, mask string) {
	var sig []string
	for _, f := range ovstext.SplitTop(match) {
		name, inner, ok := strings.Cut(f, "(")
		if !ok {
			continue
		}
		inner = strings.TrimSuffix(inner, ")")
		if name == "in_port" {
			port = inner
			continue
		}
		var subs []string
		for _, sub := range ovstext.SplitTop(inner) {
			k, v, hasKey := strings.Cut(sub, "=")
			if !hasKey {
				k, v = "", sub
			}
			mk := "exact"
			if _, mm, ok := strings.Cut(v, "/"); ok && !strings.Contains(v, "(") {
				mk = mm
			}
			subs = append(subs, k+":"+mk)
		}
		sig = append(sig, name+"("+strings.Join(subs, ",")+")")
	}
	return port, strings.Join(sig, ",")
}
