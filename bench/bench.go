// Package bench is `make bench`: it measures keyroute against the host
// path and the overlays people use instead, side by side in one run on the
// simcluster simulated hosts — A host↔host over br-phy, B keyroute
// tunnel mode, C keyroute rewrite mode after bootstrap, K the kernel's own
// VXLAN (flannel-style, no OVS) and D a plain veth — with repetitions
// interleaved (A B C K D, A B C K D, ...), a foreign-CPU-load column per
// sample for the shared machine, an optional userspace-TSO variant, the
// control plane (time to fast path, new pairs per second, agent memory per
// pair, flow install rate), the key space (share of bytes on the fast
// path with more pairs than keys, per eviction policy), and writes raw
// JSON, a Markdown report and PNG charts. It owns nothing it did not start and removes all of it.
package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/keyroute/keyroute/api"
	"github.com/keyroute/keyroute/keyalloc"
	"github.com/keyroute/keyroute/simcluster"
	"github.com/keyroute/keyroute/simhost"
)

// Config is one run's settings.
type Config struct {
	// Quick is the CI variant: one short repetition, fewer pairs, no TSO.
	Quick bool `json:"quick"`
	// Reps is the number of interleaved repetitions.
	Reps int `json:"reps"`
	// Duration of each iperf3 run and RRDuration of each request/response
	// run.
	Duration   time.Duration `json:"duration"`
	RRDuration time.Duration `json:"rr_duration"`
	// TSO adds the userspace-TSO variant of A, B and C at the end.
	TSO bool `json:"tso"`
	// PortTypes are the OVS port types (agent ovs.port_type) A, B and C
	// are measured with, side by side: "system" (always: the baseline
	// every other table compares against) and "afxdp" (variant
	// VariantAFXDP, on two more clusters built the same way).
	PortTypes []string `json:"port_types"`
	// Paths selects the data-plane paths to measure (empty: all; O only
	// where OVN is found). A clusters that no selected path needs are not
	// built.
	Paths []Path `json:"paths,omitempty"`
	// NoDataPlane skips the data-plane phase, NoControlPlane the
	// control-plane phase.
	NoDataPlane    bool `json:"no_data_plane,omitempty"`
	NoControlPlane bool `json:"no_control_plane,omitempty"`
	// KeySpace runs the key-space phase: 200 pairs between two hosts,
	// Zipf traffic, with cache.eviction traffic and none (about 2
	// minutes, so the quick run leaves it out).
	KeySpace bool `json:"key_space"`
	// CPHosts × CPContainers containers for the control-plane phase.
	CPHosts      int `json:"cp_hosts"`
	CPContainers int `json:"cp_containers_per_host"`
	// CPPace is how many new pairs per second open in the paced phase.
	CPPace int `json:"cp_pace_pairs_per_sec"`
	// FlowInstall runs the controller's BenchmarkInstall (needs the Go
	// toolchain and the source tree).
	FlowInstall bool `json:"flow_install"`
	// OutDir receives results.json, report.md and the charts.
	OutDir string `json:"out_dir"`
	// BinDir holds keyroute-agent and keyroutectl ("" builds them).
	BinDir string `json:"bin_dir"`
	// OVNRoot is a `dpkg -x` tree of Debian's OVN packages for path O
	// ("" looks for installed ones; without OVN, O is left out).
	OVNRoot string `json:"ovn_root,omitempty"`
	// Self runs the rr subcommands in namespaces ("" = this program).
	Self string `json:"-"`
	// Logger receives progress (default: discarded).
	Logger *slog.Logger `json:"-"`
}

// DefaultConfig is the full run (≤ 15 minutes) or, with quick, the CI run
// (≤ 2 minutes).
func DefaultConfig(quick bool) Config {
	if quick {
		return Config{Quick: true, Reps: 1, Duration: 2 * time.Second, RRDuration: time.Second,
			CPHosts: 3, CPContainers: 3, CPPace: 100, FlowInstall: true, PortTypes: []string{PortSystem}}
	}
	return Config{Reps: 5, Duration: 6 * time.Second, RRDuration: 3 * time.Second, TSO: true,
		CPHosts: 5, CPContainers: 5, CPPace: 100, FlowInstall: true, KeySpace: true,
		PortTypes: []string{PortSystem, PortAFXDP}}
}

// Validate rejects settings the run cannot use.
func (c Config) Validate() error {
	switch {
	case c.Reps < 1:
		return fmt.Errorf("reps %d: want at least 1", c.Reps)
	case c.Duration < time.Second:
		return fmt.Errorf("duration %s: want at least 1s (iperf3 -t counts whole seconds)", c.Duration)
	case c.RRDuration < 100*time.Millisecond:
		return fmt.Errorf("rr duration %s: want at least 100ms", c.RRDuration)
	case c.CPHosts < 2 || c.CPHosts > 20:
		return fmt.Errorf("control-plane hosts %d: want 2..20", c.CPHosts)
	case c.CPContainers < 1 || c.CPContainers*c.CPContainers > keyalloc.DefaultKeySet().Len():
		// per × per pairs share one host pair direction's DSCP keys.
		n := keyalloc.DefaultKeySet().Len()
		maxPer := 1
		for (maxPer+1)*(maxPer+1) <= n {
			maxPer++
		}
		return fmt.Errorf("control-plane containers per host %d: want 1..%d (per² pairs share a host pair's %d keys)", c.CPContainers, maxPer, n)
	case c.CPPace < 1:
		return fmt.Errorf("control-plane pace %d pairs/s: want at least 1", c.CPPace)
	case c.OutDir == "":
		return errors.New("no output directory")
	case c.NoDataPlane && len(c.Paths) > 0:
		return fmt.Errorf("paths %s selected with the data-plane phase off: drop one of --paths and --no-data-plane", PathNames(c.Paths, ","))
	}
	if !slices.Contains(c.PortTypes, PortSystem) {
		return fmt.Errorf("port types %v: want system or system,afxdp (system ports are the baseline every table compares against)", c.PortTypes)
	}
	for _, t := range c.PortTypes {
		if t != PortSystem && t != PortAFXDP {
			return fmt.Errorf("port type %q: want system or afxdp", t)
		}
	}
	for _, p := range c.Paths {
		if !slices.Contains(PathOrder, p) {
			return fmt.Errorf("path %q: want one of %s", p, PathNames(PathOrder, ", "))
		}
	}
	return nil
}

// Port types a run can measure (agent ovs.port_type), and the sample
// variant of the AF_XDP one.
const (
	PortSystem   = "system"
	PortAFXDP    = "afxdp"
	VariantAFXDP = "afxdp"
)

// afxdp reports whether the run measures A, B and C with AF_XDP ports too.
func (c Config) afxdp() bool { return slices.Contains(c.PortTypes, PortAFXDP) }

// afxdpPaths are the paths measured with both port types.
var afxdpPaths = []Path{PathA, PathB, PathC}

// measures reports whether the run measures path p.
func (c Config) measures(p Path) bool { return len(c.Paths) == 0 || slices.Contains(c.Paths, p) }

// Machine describes where the run happened.
type Machine struct {
	NProc      int    `json:"nproc"`
	CPUModel   string `json:"cpu_model"`
	Kernel     string `json:"kernel"`
	OVSVersion string `json:"ovs_version"`
	Iperf3     string `json:"iperf3"`
	Datapath   string `json:"datapath"`
	OVN        string `json:"ovn,omitempty"`
	Go         string `json:"go"`
}

// Result is everything a run measured (results.json).
type Result struct {
	Started  time.Time          `json:"started"`
	Finished time.Time          `json:"finished"`
	Config   Config             `json:"config"`
	Machine  Machine            `json:"machine"`
	Phases   map[string]float64 `json:"phase_seconds"`
	// Paths are the measured paths in their interleaving order.
	Paths   []Path   `json:"paths"`
	Samples []Sample `json:"samples"`
	// TSONote is ovs-vswitchd's own line about userspace TSO after the
	// restart; TSOChecks what each path did with TSO on.
	TSONote   string     `json:"tso_note,omitempty"`
	TSOChecks []TSOCheck `json:"tso_checks,omitempty"`
	TSOError  string     `json:"tso_error,omitempty"`
	// PortTypeNote is what an AF_XDP cluster's agent said about its ports
	// (keyroutectl status "ports:"), fallbacks included.
	PortTypeNote string        `json:"port_type_note,omitempty"`
	ControlPlane *ControlPlane `json:"control_plane,omitempty"`
	CPError      string        `json:"control_plane_error,omitempty"`
	KeySpace     *KeySpace     `json:"key_space,omitempty"`
	KeySpaceErr  string        `json:"key_space_error,omitempty"`
	OVN          string        `json:"ovn"`
	Errors       []string      `json:"errors,omitempty"`
	Broken       []Path        `json:"broken_paths,omitempty"`
}

// ovnHowTo says how to make path O available.
const ovnHowTo = "Debian 12 has ovn-central/ovn-host 23.03.1; unpack them without maintainer scripts (no system daemons): " +
	"`apt-get download ovn-common ovn-host ovn-central && for f in ovn-*.deb; do dpkg -x $f DIR; done`, then `keyroute-bench --ovn-root DIR`."

// Run performs the whole benchmark. The returned error says which paths
// did not work at all; slow figures are never an error.
func Run(ctx context.Context, cfg Config) (*Result, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("bench config: %w", err)
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if cfg.Self == "" {
		self, err := selfExe()
		if err != nil {
			return nil, err
		}
		cfg.Self = self
	}
	if err := os.MkdirAll(filepath.Join(cfg.OutDir, "logs"), 0o755); err != nil {
		return nil, fmt.Errorf("bench output: %w", err)
	}
	res := &Result{Started: time.Now(), Config: cfg, Machine: machine(), Phases: map[string]float64{}}
	phase := func(name string, t0 time.Time) { res.Phases[name] = time.Since(t0).Round(time.Millisecond).Seconds() }

	if cfg.BinDir == "" {
		t0 := time.Now()
		cfg.BinDir = filepath.Join(cfg.OutDir, "bin")
		log.Info("building keyroute-agent and keyroutectl", "dir", cfg.BinDir)
		if err := simcluster.BuildBinaries(ctx, cfg.BinDir); err != nil {
			return res, err
		}
		defer os.RemoveAll(cfg.BinDir)
		phase("build", t0)
	}

	t0 := time.Now()
	if !cfg.NoDataPlane {
		if err := runDataPlane(ctx, cfg, log, res); err != nil {
			res.Errors = append(res.Errors, err.Error())
		}
		phase("data_plane", t0)
	}

	if !cfg.NoControlPlane && ctx.Err() == nil {
		t0 = time.Now()
		log.Info("control plane", "hosts", cfg.CPHosts, "containers_per_host", cfg.CPContainers)
		cp, err := runControlPlane(ctx, log, cfg.BinDir, filepath.Join(cfg.OutDir, "logs"), cfg.CPHosts, cfg.CPContainers, cfg.CPPace)
		res.ControlPlane = cp
		if err != nil {
			res.CPError = err.Error()
			log.Warn("control plane", "err", err)
		}
		phase("control_plane", t0)
	}
	if cfg.FlowInstall && ctx.Err() == nil {
		t0 = time.Now()
		log.Info("flow install rate (go test -bench Install ./controller)")
		fi, err := runFlowInstall(ctx)
		if res.ControlPlane == nil {
			res.ControlPlane = &ControlPlane{}
		}
		res.ControlPlane.FlowInstall = fi
		if err != nil {
			res.ControlPlane.FlowInstallErr = err.Error()
		}
		phase("flow_install", t0)
	}
	var ksErr error
	if cfg.KeySpace && ctx.Err() == nil {
		t0 = time.Now()
		res.KeySpace, ksErr = runKeySpace(ctx, log, cfg.BinDir)
		if ksErr != nil {
			res.KeySpaceErr = ksErr.Error()
			log.Warn("key space", "err", ksErr)
		}
		phase("key_space", t0)
	}
	res.Finished = time.Now()
	res.Broken = brokenPaths(res.Samples)
	if err := writeOutputs(cfg.OutDir, res); err != nil {
		return res, err
	}
	var errs []error
	if len(res.Broken) > 0 {
		errs = append(errs, fmt.Errorf("paths that did not work at all: %s", PathNames(res.Broken, ", ")))
	}
	if !cfg.NoControlPlane && (res.ControlPlane == nil || res.ControlPlane.Ready == 0) {
		errs = append(errs, fmt.Errorf("control plane: no pair reached the fast path (%s)", res.CPError))
	}
	if ksErr != nil {
		// A run that failed or misdelivered: a low share is only reported.
		errs = append(errs, ksErr)
	}
	if ctx.Err() != nil {
		errs = append(errs, ctx.Err())
	}
	return res, errors.Join(errs...)
}

// runDataPlane builds what the selected paths need, measures them
// interleaved, then (with TSO) the TSO variant, and removes everything.
func runDataPlane(ctx context.Context, cfg Config, log *slog.Logger, res *Result) (err error) {
	t0 := time.Now()
	want := func(ps ...Path) bool {
		for _, p := range ps {
			if cfg.measures(p) {
				return true
			}
		}
		return false
	}
	paths := map[Path]*path{}
	var prefixes []string
	var allOVS []*simhost.OVS
	if want(PathK, PathD) {
		kprefix := fmt.Sprintf("krbench-%d-", os.Getpid())
		cleanupStaleKernelNets()
		k := &kernelNet{prefix: kprefix}
		defer func() { err = errors.Join(err, k.teardown()) }()
		log.Info("kernel paths K and D", "prefix", kprefix)
		if err := k.setup(); err != nil {
			return err
		}
		for _, p := range k.paths() {
			paths[p.name] = p
		}
		prefixes = append(prefixes, kprefix)
	}
	var ovB, ovC *overlay
	sys := simcluster.Options{Logger: log, PortType: PortSystem}
	if want(PathB) {
		log.Info("keyroute cluster: tunnel (B)")
		if ovB, err = startOverlay(ctx, "tunnel", cfg.BinDir, sys); err != nil {
			return err
		}
		defer func() { err = errors.Join(err, ovB.cl.Close()) }()
		paths[PathB] = ovB.containerPath(PathB, 0)
		prefixes, allOVS = append(prefixes, ovB.cl.Prefix), append(allOVS, ovB.vswitchds()...)
	}
	if want(PathA, PathC, PathR) {
		log.Info("keyroute cluster: rewrite (A, C, R)")
		if ovC, err = startOverlay(ctx, "rewrite", cfg.BinDir, sys); err != nil {
			return err
		}
		defer func() { err = errors.Join(err, ovC.cl.Close()) }()
		if st, err := api.NewClient(ovC.cl.Host(1).APISocket).Status(ctx); err == nil {
			res.Machine.Datapath = st.Datapath + " (" + st.DatapathReason + ")"
		}
		paths[PathA], paths[PathC], paths[PathR] = ovC.hostPath(), ovC.containerPath(PathC, 0), ovC.containerPath(PathR, RulesLoad)
		prefixes, allOVS = append(prefixes, ovC.cl.Prefix), append(allOVS, ovC.vswitchds()...)
	}
	// The same clusters again with AF_XDP ports, up at the same time, so
	// each repetition measures both port types of a path back to back.
	xpaths := map[Path]*path{}
	if cfg.afxdp() {
		xopts := simcluster.Options{Logger: log, PortType: PortAFXDP}
		for _, c := range []struct {
			mode  string
			paths []Path
		}{{"tunnel", []Path{PathB}}, {"rewrite", []Path{PathA, PathC}}} {
			if !want(c.paths...) {
				continue
			}
			log.Info("keyroute cluster with AF_XDP ports: "+c.mode, "paths", PathNames(c.paths, ","))
			var ov *overlay
			if ov, err = startOverlay(ctx, c.mode, cfg.BinDir, xopts); err != nil {
				return fmt.Errorf("AF_XDP ports: %w", err)
			}
			defer func() { err = errors.Join(err, ov.cl.Close()) }()
			if st, err := api.NewClient(ov.cl.Host(1).APISocket).Status(ctx); err == nil {
				res.PortTypeNote = "AF_XDP clusters: ports " + st.PortType.String()
			}
			for _, p := range c.paths {
				if p == PathA {
					xpaths[p] = ov.hostPath()
				} else {
					xpaths[p] = ov.containerPath(p, 0)
				}
			}
			prefixes, allOVS = append(prefixes, ov.cl.Prefix), append(allOVS, ov.vswitchds()...)
		}
	}
	s := &sampler{log: log, self: cfg.Self, dir: filepath.Join(cfg.OutDir, "logs"), ourPrefixes: prefixes,
		ourExtra: func() []int { return ovsdbPIDs(allOVS) }}
	if !want(PathO) {
		res.OVN = "not measured: not selected (--paths)"
	} else if l, err := findOVN(cfg.OVNRoot); err != nil {
		res.OVN = "not measured: " + err.Error() + ". " + ovnHowTo
	} else if ovn, err := startOVN(ctx, cfg.OVNRoot, simcluster.Options{Logger: log}); err != nil {
		res.OVN = "not measured: " + err.Error()
		log.Warn("OVN", "err", err)
	} else {
		log.Info("OVN (path O)")
		defer func() { err = errors.Join(err, ovn.close()) }()
		res.Machine.OVN = ovnVersion(l)
		res.OVN = "measured: " + res.Machine.OVN
		paths[PathO] = ovn.path()
		s.ourPrefixes = append(s.ourPrefixes, ovn.cl.Prefix)
		s.ourExtra = func() []int { return append(ovsdbPIDs(allOVS), ovn.extraPIDs()...) }
	}
	defer func() { err = errors.Join(err, s.stopServers()) }()
	serving := map[string]bool{} // C and R share c2's servers
	for _, name := range PathOrder {
		if p := paths[name]; p != nil && cfg.measures(name) {
			res.Paths = append(res.Paths, name)
			if serving[p.server.ns] {
				continue
			}
			serving[p.server.ns] = true
			if err := s.startServers(p); err != nil {
				return err
			}
		}
	}
	for _, name := range afxdpPaths {
		if p := xpaths[name]; p != nil && cfg.measures(name) && !serving[p.server.ns] {
			serving[p.server.ns] = true
			if err := s.startServers(p); err != nil {
				return err
			}
		}
	}
	res.Phases["data_plane_setup"] = time.Since(t0).Round(time.Millisecond).Seconds()

	for rep := 1; rep <= cfg.Reps; rep++ {
		for _, name := range res.Paths {
			for _, test := range []string{TestTCP1, TestTCP4, TestRR} {
				if ctx.Err() != nil {
					return ctx.Err()
				}
				d := cfg.Duration
				if test == TestRR {
					d = cfg.RRDuration
				}
				res.Samples = append(res.Samples, s.run(ctx, rep, paths[name], test, "", d))
				if xp := xpaths[name]; xp != nil {
					res.Samples = append(res.Samples, s.run(ctx, rep, xp, test, VariantAFXDP, d))
				}
			}
		}
	}
	if !cfg.TSO || ctx.Err() != nil {
		return nil
	}
	t0 = time.Now()
	defer func() { res.Phases["tso"] = time.Since(t0).Round(time.Millisecond).Seconds() }()
	log.Info("userspace TSO variant: restarting the vswitchds, offloads on")
	for _, ov := range []*overlay{ovB, ovC} {
		if ov == nil {
			continue
		}
		note, err := enableTSO(ctx, ov)
		if err != nil {
			res.TSOError = fmt.Sprintf("%s cluster: %v", ov.mode, err)
			log.Warn("userspace TSO", "err", err)
			return nil
		}
		res.TSONote = note
	}
	for _, name := range []Path{PathA, PathB, PathC} {
		p := paths[name]
		if p == nil || !cfg.measures(name) {
			continue
		}
		ov := ovC
		if name == PathB {
			ov = ovB
		}
		tc := TSOCheck{Path: name}
		checkWire(ctx, ov, p, &tc)
		res.TSOChecks = append(res.TSOChecks, tc)
		for rep := 1; rep <= min(cfg.Reps, 2); rep++ {
			res.Samples = append(res.Samples, s.run(ctx, rep, p, TestTCP1, "tso", cfg.Duration))
		}
	}
	return nil
}

// cleanupStaleKernelNets removes K/D namespaces of earlier runs that died
// (their PID is in the name and no longer runs).
func cleanupStaleKernelNets() {
	for _, ns := range simhost.ListNetNS("krbench-") {
		rest := strings.TrimPrefix(ns, "krbench-")
		pidStr, _, ok := strings.Cut(rest, "-")
		pid, err := strconv.Atoi(pidStr)
		if !ok || err != nil || simhost.PIDAlive(pid) {
			continue
		}
		for _, p := range nsPIDs(ns) {
			simhost.KillPID(p, "", 5*time.Second)
		}
		(&simhost.NetNS{Name: ns}).Delete()
	}
}

// brokenPaths lists paths (and variants) of which no sample succeeded.
func brokenPaths(samples []Sample) []Path {
	ok := map[Path]bool{}
	var order []Path
	for _, s := range samples {
		if s.Variant != "" {
			continue // the TSO and AF_XDP variants are reported, not required
		}
		if _, seen := ok[s.Path]; !seen {
			order = append(order, s.Path)
			ok[s.Path] = false
		}
		if s.Err == "" {
			ok[s.Path] = true
		}
	}
	var out []Path
	for _, p := range order {
		if !ok[p] {
			out = append(out, p)
		}
	}
	return out
}

func machine() Machine {
	m := Machine{NProc: runtime.NumCPU(), Go: runtime.Version()}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPUModel = strings.TrimSpace(v)
				break
			}
		}
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(b))
	}
	if out, err := exec.Command("ovs-vswitchd", "--version").Output(); err == nil {
		m.OVSVersion, _, _ = strings.Cut(strings.TrimSpace(string(out)), "\n")
	}
	if out, err := exec.Command("iperf3", "--version").Output(); err == nil {
		m.Iperf3, _, _ = strings.Cut(strings.TrimSpace(string(out)), "\n")
	}
	return m
}

// Render rewrites report.md and the charts of dir from its results.json
// (after a change to the report, or to look at an old run again).
func Render(dir string) error {
	b, err := os.ReadFile(filepath.Join(dir, "results.json"))
	if err != nil {
		return fmt.Errorf("render: %w", err)
	}
	var res Result
	if err := json.Unmarshal(b, &res); err != nil {
		return fmt.Errorf("render %s: %w", dir, err)
	}
	return writeOutputs(dir, &res)
}

// writeOutputs writes the charts, results.json and report.md. A chart
// that cannot be drawn (no data) is noted in the report, not an error.
func writeOutputs(dir string, res *Result) error {
	charts, chartErr := WriteCharts(dir, res)
	if chartErr != nil {
		res.Errors = append(res.Errors, chartErr.Error())
	}
	b, err := json.MarshalIndent(res, "", "  ")
	if err != nil {
		return fmt.Errorf("encode results: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "results.json"), b, 0o644); err != nil {
		return fmt.Errorf("write results: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "report.md"), []byte(Report(res, charts)), 0o644); err != nil {
		return fmt.Errorf("write report: %w", err)
	}
	return nil
}
