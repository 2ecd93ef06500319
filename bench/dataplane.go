package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/keyroute/keyroute/simcluster"
	"github.com/keyroute/keyroute/simhost"
)

// Tests of one sample.
const (
	TestTCP1 = "tcp1" // iperf3, 1 stream
	TestTCP4 = "tcp4" // iperf3, 4 streams
	TestRR   = "rr"   // UDP request/response, 64 bytes
)

const (
	iperfPort = 5201
	rrPort    = 7001
	rrSize    = 64
)

// Sample is one measurement of one test on one path. Figures that do not
// apply (no OVS on the path, another test) are NaN in memory and null in
// JSON.
type Sample struct {
	Rep  int    `json:"rep"`
	Path Path   `json:"path"`
	Test string `json:"test"`
	// Variant is "" for the default configuration, "tso" for userspace TSO.
	Variant string    `json:"variant,omitempty"`
	Start   time.Time `json:"start"`

	Gbps        Num `json:"gbps"`
	GB          Num `json:"gb"`
	Retransmits Num `json:"retransmits"`

	P50us Num `json:"rtt_p50_us"`
	P99us Num `json:"rtt_p99_us"`
	TPS   Num `json:"tps"`
	Lost  Num `json:"rr_lost"`

	VswitchdSec Num `json:"vswitchd_cpu_sec"`
	CPUSecPerGB Num `json:"vswitchd_cpu_sec_per_gb"`
	// NsPerPkt is vswitchd CPU time per packet its datapath received.
	NsPerPkt     Num `json:"vswitchd_cpu_ns_per_packet"`
	PassesPerPkt Num `json:"dp_passes_per_packet"`
	// UpcallsPer10k and LookupsPerPass say what the flow tables cost each
	// datapath pass (see PMDStats).
	UpcallsPer10k  Num `json:"dp_upcalls_per_10k_passes"`
	LookupsPerPass Num `json:"dp_subtable_lookups_per_pass"`
	// Megaflows and Masks: datapath flows packets used during a 1-stream
	// run and their distinct masks (see Megaflows), both hosts summed.
	Megaflows Num `json:"dp_megaflows"`
	Masks     Num `json:"dp_masks"`

	BusyPct     Num `json:"busy_pct"`
	ForeignPct  Num `json:"foreign_pct"`
	SoftirqdPct Num `json:"ksoftirqd_pct"`

	Note string `json:"note,omitempty"`
	Err  string `json:"error,omitempty"`
}

// Num is a float64 whose NaN is JSON null.
type Num float64

// NaN is a missing figure.
var NaN = Num(math.NaN())

// MarshalJSON writes null for NaN and ±Inf.
func (n Num) MarshalJSON() ([]byte, error) {
	f := float64(n)
	if math.IsNaN(f) || math.IsInf(f, 0) {
		return []byte("null"), nil
	}
	return []byte(strconv.FormatFloat(f, 'g', -1, 64)), nil
}

// UnmarshalJSON reads null as NaN.
func (n *Num) UnmarshalJSON(b []byte) error {
	if string(b) == "null" {
		*n = NaN
		return nil
	}
	f, err := strconv.ParseFloat(string(b), 64)
	*n = Num(f)
	return err
}

func newSample(rep int, p Path, test, variant string) Sample {
	return Sample{Rep: rep, Path: p, Test: test, Variant: variant, Start: time.Now(),
		Gbps: NaN, GB: NaN, Retransmits: NaN, P50us: NaN, P99us: NaN, TPS: NaN, Lost: NaN,
		VswitchdSec: NaN, CPUSecPerGB: NaN, NsPerPkt: NaN, PassesPerPkt: NaN, UpcallsPer10k: NaN, LookupsPerPass: NaN,
		Megaflows: NaN, Masks: NaN, BusyPct: NaN, ForeignPct: NaN, SoftirqdPct: NaN}
}

// sampler runs samples; ours lists where this benchmark's processes live.
type sampler struct {
	log  *slog.Logger
	self string
	dir  string
	// ourPrefixes are namespace prefixes whose processes count as ours;
	// ourExtra are our processes outside any namespace (ovsdb-servers).
	ourPrefixes []string
	ourExtra    func() []int
	servers     []*server
}

// startServers starts iperf3 -s and the rr server on p's server side.
func (s *sampler) startServers(p *path) error {
	tag := strings.ToLower(string(p.name))
	ip, err := startServer("iperf3 server "+string(p.name), p.server.ns, filepath.Join(s.dir, "iperf3-server-"+tag+".log"),
		"iperf3", "-s", "-p", strconv.Itoa(iperfPort))
	if err != nil {
		return err
	}
	s.servers = append(s.servers, ip)
	if err := waitListening(p.server.ns, "t", iperfPort, ip); err != nil {
		return fmt.Errorf("path %s: %w", p.name, err)
	}
	rr, err := startServer("rr server "+string(p.name), p.server.ns, filepath.Join(s.dir, "rr-server-"+tag+".log"),
		s.self, "rr-server", "0.0.0.0:"+strconv.Itoa(rrPort))
	if err != nil {
		return err
	}
	s.servers = append(s.servers, rr)
	if err := waitListening(p.server.ns, "u", rrPort, rr); err != nil {
		return fmt.Errorf("path %s: %w", p.name, err)
	}
	return nil
}

func (s *sampler) stopServers() error {
	var errs []error
	for _, sv := range s.servers {
		errs = append(errs, sv.stop())
	}
	s.servers = nil
	return errors.Join(errs...)
}

func (s *sampler) ours() []int {
	pids := append(nsPIDs(s.ourPrefixes...), os.Getpid())
	if s.ourExtra != nil {
		pids = append(pids, s.ourExtra()...)
	}
	return pids
}

// run measures one test on p.
func (s *sampler) run(ctx context.Context, rep int, p *path, test, variant string, d time.Duration) Sample {
	smp := newSample(rep, p.name, test, variant)
	if err := s.measure(ctx, &smp, p, test, d); err != nil {
		smp.Err = err.Error()
		s.log.Warn("sample failed", "rep", rep, "path", p.name, "test", test, "variant", variant, "err", err)
	} else {
		s.log.Info("sample", "rep", rep, "path", p.name, "test", test, "variant", variant, "gbps", fmtNum(smp.Gbps, 3),
			"p50_us", fmtNum(smp.P50us, 1), "cpu_s_per_gb", fmtNum(smp.CPUSecPerGB, 2), "foreign_pct", fmtNum(smp.ForeignPct, 0))
	}
	return smp
}

func (s *sampler) measure(ctx context.Context, smp *Sample, p *path, test string, d time.Duration) error {
	if p.prepare != nil {
		note, err := p.prepare(ctx)
		if err != nil {
			return fmt.Errorf("prepare: %w", err)
		}
		smp.Note = note
	}
	var vsdPIDs []int
	for _, o := range p.ovs {
		pid, err := o.PID("ovs-vswitchd")
		if err != nil {
			return fmt.Errorf("ovs-vswitchd pid: %w", err)
		}
		vsdPIDs = append(vsdPIDs, pid)
		if _, err := o.Appctl("dpif-netdev/pmd-stats-clear"); err != nil {
			return err
		}
	}
	w, err := startWindow(s.ours(), vsdPIDs)
	if err != nil {
		return err
	}
	dst := p.server.ip.String()
	switch test {
	case TestTCP1, TestTCP4:
		streams := "1"
		if test == TestTCP4 {
			streams = "4"
		}
		secs := strconv.Itoa(max(1, int(d.Round(time.Second)/time.Second)))
		var r simcluster.IperfResult
		for attempt := 1; ; attempt++ {
			out, runErr := runIn(ctx, d+30*time.Second, p.client.ns, "iperf3", "-c", dst, "-p", strconv.Itoa(iperfPort),
				"-t", secs, "-P", streams, "-J", "--connect-timeout", "3000")
			r, err = simcluster.ParseIperf(out)
			if err == nil {
				break
			}
			// The server takes a moment to finish the previous test.
			if attempt < 5 && strings.Contains(err.Error(), "server is busy") {
				time.Sleep(300 * time.Millisecond)
				continue
			}
			return errors.Join(err, runErr)
		}
		w.addClient(r.ClientCPUSec)
		smp.Gbps, smp.GB, smp.Retransmits = Num(r.Gbps), Num(float64(r.Bytes)/1e9), Num(r.Retransmits)
	case TestRR:
		out, err := runIn(ctx, d+30*time.Second, p.client.ns, s.self, "rr-client",
			dst+":"+strconv.Itoa(rrPort), strconv.FormatFloat(d.Seconds(), 'f', 3, 64), strconv.Itoa(rrSize))
		if err != nil {
			return err
		}
		var r RRResult
		if err := json.Unmarshal(out, &r); err != nil {
			return fmt.Errorf("rr client output %q: %w", out, err)
		}
		w.addClient(r.CPUSec)
		smp.P50us, smp.P99us, smp.TPS, smp.Lost = Num(r.P50us), Num(r.P99us), Num(r.TPS), Num(r.Lost)
	default:
		return fmt.Errorf("unknown test %q", test)
	}
	res, err := w.stop()
	if err != nil {
		return err
	}
	smp.BusyPct, smp.ForeignPct, smp.SoftirqdPct = Num(res.BusyPct), Num(res.ForeignPct), Num(res.SoftirqdPct)
	if len(p.ovs) > 0 {
		smp.VswitchdSec = Num(res.VswitchdSec)
		if !math.IsNaN(float64(smp.GB)) && smp.GB > 0 {
			smp.CPUSecPerGB = Num(res.VswitchdSec / float64(smp.GB))
		}
		var st PMDStats
		for _, o := range p.ovs {
			out, err := o.Appctl("dpif-netdev/pmd-stats-show")
			if err != nil {
				return err
			}
			one, err := ParsePMDStats(out)
			if err != nil {
				return err
			}
			st = st.Add(one)
		}
		if test == TestTCP1 {
			var mf Megaflows
			for _, o := range p.ovs {
				out, err := o.Appctl("dpctl/dump-flows", "-m")
				if err != nil {
					return err
				}
				one, err := ParseMegaflows(out, d)
				if err != nil {
					return err
				}
				mf = mf.Add(one)
			}
			smp.Megaflows, smp.Masks = Num(mf.Flows), Num(mf.Masks)
		}
		smp.PassesPerPkt = Num(st.Passes())
		smp.UpcallsPer10k, smp.LookupsPerPass = Num(st.UpcallsPer10k()), Num(st.LookupsPerPass())
		if st.Packets > 0 {
			smp.NsPerPkt = Num(res.VswitchdSec * 1e9 / st.Packets)
		}
	}
	if p.check != nil {
		note, err := p.check()
		if err != nil {
			return err
		}
		if smp.Note != "" && note != "" {
			note = "; " + note
		}
		smp.Note += note
	}
	return nil
}

func fmtNum(n Num, prec int) string {
	if math.IsNaN(float64(n)) {
		return "–"
	}
	return strconv.FormatFloat(float64(n), 'f', prec, 64)
}

// ovsdbPIDs lists the ovsdb-servers of the given OVS instances (they run
// outside the host namespaces).
func ovsdbPIDs(ovs []*simhost.OVS) []int {
	var pids []int
	for _, o := range ovs {
		if pid, err := o.PID("ovsdb-server"); err == nil {
			pids = append(pids, pid)
		}
	}
	return pids
}
