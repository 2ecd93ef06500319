// Command keyroute-bench is `make bench`: keyroute against the host path
// and the overlays people use instead, side by side in one run, on
// simulated hosts (see package bench). It writes results.json, report.md
// and PNG charts into bench/results/<timestamp>/ (or --out) and exits
// non-zero only when a path did not work at all. It needs root.
//
// The hidden subcommands rr-server and rr-client are its request/response
// tool, run inside the namespaces by the benchmark itself.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/keyroute/keyroute/bench"
	"github.com/keyroute/keyroute/simcluster"
)

func main() {
	if len(os.Args) > 1 && (os.Args[1] == "rr-server" || os.Args[1] == "rr-client") {
		if err := bench.RRMain(os.Args[1:], os.Stdout); err != nil {
			fmt.Fprintln(os.Stderr, "keyroute-bench:", err)
			os.Exit(1)
		}
		return
	}
	os.Exit(run())
}

func run() int {
	quick := flag.Bool("quick", false, "CI run (≤ 2 min): 1 short repetition, fewer pairs, no TSO variant, no key-space phase")
	reps := flag.Int("reps", 0, "interleaved repetitions (default 5; --quick 1)")
	dur := flag.Duration("duration", 0, "each iperf3 run (default 6s; --quick 2s)")
	rrDur := flag.Duration("rr-duration", 0, "each request/response run (default 3s; --quick 1s)")
	tso := flag.Bool("tso", false, "add the userspace-TSO variant of A, B and C (default on; --quick: off)")
	cpHosts := flag.Int("cp-hosts", 0, "control-plane hosts (default 5; --quick 3)")
	cpPer := flag.Int("cp-containers", 0, "control-plane containers per host, at most 7 (default 5; --quick 3)")
	cpPace := flag.Int("cp-pace", 0, "new pairs per second in the paced control-plane phase (default 100)")
	noFlows := flag.Bool("no-flow-install", false, "skip the controller's flow install benchmark (needs the Go toolchain)")
	paths := flag.String("paths", "", "data-plane paths to measure, comma-separated, e.g. C,R (default: all: "+bench.PathNames(bench.PathOrder, ",")+")")
	noDP := flag.Bool("no-data-plane", false, "skip the data-plane phase (paths A–O)")
	portTypes := flag.String("port-types", "", "OVS port types to measure A, B and C with, side by side: system or system,afxdp (default system,afxdp; --quick: system)")
	noCP := flag.Bool("no-control-plane", false, "skip the control-plane phase")
	noKS := flag.Bool("no-key-space", false, "skip the key-space phase (eviction traffic vs none, about 2 min; --quick leaves it out)")
	out := flag.String("out", "", "output directory (default bench/results/<timestamp> in the source tree)")
	ovnRoot := flag.String("ovn-root", os.Getenv("KEYROUTE_OVN_ROOT"), "a `dpkg -x` tree of Debian's ovn-common, ovn-host and ovn-central for path O (env KEYROUTE_OVN_ROOT; default: installed OVN, else O is left out)")
	bin := flag.String("bin", "", "directory with keyroute-agent and keyroutectl (default: next to this program, else build them)")
	verbose := flag.Bool("v", true, "log progress to stderr")
	render := flag.String("render", "", "only rewrite report.md and the charts of this results directory from its results.json")
	flag.Parse()
	if *render != "" {
		if err := bench.Render(*render); err != nil {
			fmt.Fprintln(os.Stderr, "keyroute-bench:", err)
			return 1
		}
		return 0
	}
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "keyroute-bench: needs root (network namespaces, Open vSwitch)")
		return 2
	}
	cfg := bench.DefaultConfig(*quick)
	if *reps > 0 {
		cfg.Reps = *reps
	}
	if *dur > 0 {
		cfg.Duration = *dur
	}
	if *rrDur > 0 {
		cfg.RRDuration = *rrDur
	}
	flag.Visit(func(f *flag.Flag) {
		if f.Name == "tso" { // given: it overrides the default of the kind of run
			cfg.TSO = *tso
		}
	})
	if *cpHosts > 0 {
		cfg.CPHosts = *cpHosts
	}
	if *cpPer > 0 {
		cfg.CPContainers = *cpPer
	}
	if *cpPace > 0 {
		cfg.CPPace = *cpPace
	}
	cfg.FlowInstall = cfg.FlowInstall && !*noFlows
	cfg.NoDataPlane = *noDP
	cfg.NoControlPlane = *noCP
	cfg.KeySpace = cfg.KeySpace && !*noKS
	if *paths != "" {
		for _, p := range strings.Split(*paths, ",") {
			cfg.Paths = append(cfg.Paths, bench.Path(p))
		}
	}
	if *portTypes != "" {
		cfg.PortTypes = strings.Split(*portTypes, ",")
	}
	cfg.BinDir = simcluster.DefaultBinDir(*bin)
	cfg.OVNRoot = *ovnRoot
	cfg.OutDir = *out
	if cfg.OutDir == "" {
		root, err := simcluster.ModuleRoot()
		if err != nil {
			root = "."
		}
		cfg.OutDir = filepath.Join(root, "bench", "results", time.Now().UTC().Format("20060102-150405"))
	}
	if err := cfg.Validate(); err != nil {
		fmt.Fprintln(os.Stderr, "keyroute-bench:", err)
		return 2
	}
	level := slog.LevelWarn
	if *verbose {
		level = slog.LevelInfo
	}
	cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))

	// Ctrl-C cancels; Run then stops what it started and removes it.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	start := time.Now()
	res, err := bench.Run(ctx, cfg)
	if res != nil {
		fmt.Printf("report: %s (%s)\n", filepath.Join(cfg.OutDir, "report.md"), time.Since(start).Round(time.Second))
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "keyroute-bench:", err)
		return 1
	}
	return 0
}
