// Command keyroute-demo shows keyroute working on one machine (`make demo`):
// it brings up two simulated hosts (network namespaces with private Open
// vSwitch instances and keyroute agents, h1 serving etcd over TLS with
// client certificates of a CA made for the run), attaches two containers
// to each, shows that a container cannot use etcd, pings every pair, runs
// a short iperf3 across hosts,
// watches the fabric to show which path the traffic took (VXLAN or
// rewritten with a DSCP key), prints a summary and tears everything down.
// Each step prints ✓ or ✗; any ✗ makes the exit status non-zero. Ctrl-C
// tears down too. --runtime starts the containers with podman through the
// CNI plugin instead (make demo-runtime).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/keyroute/keyroute/pki"
	"github.com/keyroute/keyroute/simcluster"
	"github.com/keyroute/keyroute/simhost"
)

// keepPrefix names a cluster left up with --keep, so `--down` and the next
// --keep can find it (a PID prefix would look stale to simcluster.CleanupStale).
const keepPrefix = "kredemo-"

func main() {
	keep := flag.Bool("keep", false, "leave the cluster up and print how to poke at it (remove it with --down)")
	mode := flag.String("mode", "rewrite", "agent mode: rewrite (the cached fast path) or tunnel (VXLAN only)")
	bin := flag.String("bin", "", "directory with keyroute-agent and keyroutectl (default: next to this program, else build them)")
	down := flag.Bool("down", false, "tear down a cluster left up by --keep, then exit")
	verbose := flag.Bool("v", false, "log the harness's progress")
	runtime := flag.Bool("runtime", false, "start the containers with podman through keyroute-cni (CNI) instead of keyroutectl")
	flag.Parse()
	if *runtime && *keep {
		fmt.Fprintln(os.Stderr, "keyroute-demo: --runtime removes its podman containers at the end; it cannot be combined with --keep")
		os.Exit(2)
	}
	if *down {
		if err := simcluster.Teardown(keepPrefix); err != nil {
			fmt.Fprintln(os.Stderr, "keyroute-demo:", err)
			os.Exit(1)
		}
		fmt.Println("✓ removed the kept demo cluster")
		return
	}
	if *mode != "tunnel" && *mode != "rewrite" {
		fmt.Fprintf(os.Stderr, "keyroute-demo: --mode %q: want tunnel or rewrite\n", *mode)
		os.Exit(2)
	}
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "keyroute-demo: needs root (network namespaces, Open vSwitch)")
		os.Exit(2)
	}
	if *runtime && *mode != "rewrite" {
		fmt.Fprintln(os.Stderr, "keyroute-demo: --runtime shows the fast path: use it with --mode rewrite")
		os.Exit(2)
	}
	os.Exit(run(*mode, simcluster.DefaultBinDir(*bin), *keep, *runtime, *verbose))
}

// demo prints steps and remembers whether any failed.
type demo struct{ failed int }

// step runs fn and prints "✓ what: detail (time)" or "✗ what: error".
func (d *demo) step(what string, fn func() (string, error)) bool {
	start := time.Now()
	detail, err := fn()
	took := time.Since(start).Round(10 * time.Millisecond)
	if err != nil {
		d.failed++
		fmt.Printf("✗ %s: %v\n", what, err)
		return false
	}
	if detail != "" {
		detail = ": " + detail
	}
	fmt.Printf("✓ %s%s (%s)\n", what, detail, took)
	return true
}

func run(mode, bin string, keep, runtime, verbose bool) int {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// Ctrl-C: while the cluster starts, cancel (NewCluster cleans up after
	// itself); once it is up, tear it down at once, whatever step is
	// running (its commands fail when their namespaces go), and exit.
	var (
		mu sync.Mutex
		up *simcluster.Cluster
	)
	sigc := make(chan os.Signal, 1)
	signal.Notify(sigc, os.Interrupt, syscall.SIGTERM)
	go func() {
		<-sigc
		cancel()
		mu.Lock()
		cl := up
		mu.Unlock()
		if cl != nil {
			fmt.Println("\ninterrupted: tearing down")
			teardown(cl, keep)
			os.Exit(130)
		}
	}()

	logger := slog.New(slog.DiscardHandler)
	if verbose {
		logger = slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	opts := simcluster.Options{Hosts: 2, Mode: mode, BinDir: bin, Logger: logger, KeepUp: keep}
	if keep {
		opts.Prefix = keepPrefix
		if left := simhost.ListNetNS(keepPrefix); len(left) > 0 {
			fmt.Println("note: replacing the previously kept demo cluster")
			if err := simcluster.Teardown(keepPrefix); err != nil {
				fmt.Printf("✗ remove the previously kept demo cluster: %v\n", err)
				return 1
			}
		}
	}
	d := &demo{}
	var cl *simcluster.Cluster
	if !d.step(fmt.Sprintf("start 2 hosts (mode %s, etcd embedded in h1's agent, TLS with client certificates)", mode), func() (string, error) {
		var err error
		cl, err = simcluster.NewCluster(ctx, opts)
		if err != nil {
			return "", err
		}
		return fmt.Sprintf("prefix %s, files in %s", cl.Prefix, cl.Dir), nil
	}) {
		return 1
	}
	mu.Lock()
	up = cl
	mu.Unlock()
	if ctx.Err() != nil { // interrupted just as the cluster came up
		teardown(cl, keep)
		return 130
	}

	if runtime {
		runtimeDemo(d, cl)
	} else {
		s := &summary{cl: cl, mode: mode}
		s.run(d)
	}
	signal.Stop(sigc) // from here on Ctrl-C just ends the program
	if keep && d.failed == 0 {
		cl.Close() // stops traffic tools only
		printPoke(cl)
	} else {
		d.step("tear down", func() (string, error) { return "", teardown(cl, keep) })
	}
	if d.failed > 0 {
		fmt.Printf("\n%d step(s) failed\n", d.failed)
		return 1
	}
	return 0
}

// teardown removes the cluster, also when it was started to be kept.
func teardown(cl *simcluster.Cluster, keep bool) error {
	err := cl.Close()
	if keep {
		err = errors.Join(err, simcluster.Teardown(cl.Prefix))
	}
	return err
}

func printPoke(cl *simcluster.Cluster) {
	h1 := cl.Host(1)
	ctl := filepath.Join(cl.BinDir, "keyroutectl")
	var peer string
	for _, c := range cl.Containers() {
		if c.Host != h1 {
			peer = c.IP.String()
			break
		}
	}
	fmt.Printf(`
The cluster is still up (namespaces %s*, files in %s). Try:
  ip netns exec %sc-a1 ping -c 3 %s
  ip netns exec %sfab tcpdump -nn -v -i %s
  %s --socket %s flows
  %s --socket %s hosts
  OVS_RUNDIR=%s ovs-ofctl -O OpenFlow13 --names dump-flows br-int
  ovs-vsctl --db=unix:%s show
  ip netns exec %sh1 curl --cacert %s --cert %s --key %s %s/health
  less %s
Remove it with: %s --down
`, cl.Prefix, cl.Dir, cl.Prefix, peer, cl.Prefix, simcluster.FabricBridge, ctl, h1.APISocket, ctl, h1.APISocket,
		h1.OVS.RunDir(), h1.OVS.DBSock(),
		cl.Prefix, filepath.Join(cl.PKIDir, pki.CACertFile), pki.CertPath(cl.PKIDir, simcluster.HarnessCert), pki.KeyPath(cl.PKIDir, simcluster.HarnessCert), cl.EtcdEndpoint,
		h1.LogPath, os.Args[0])
}

// summary runs the checks and collects what the final report shows.
type summary struct {
	cl    *simcluster.Cluster
	mode  string
	paths []string // "a1 -> b1: VXLAN 10 (VNI 100)"
}

func (s *summary) run(d *demo) {
	cl := s.cl
	for _, c := range []struct {
		host int
		name string
	}{{1, "a1"}, {1, "a2"}, {2, "b1"}, {2, "b2"}} {
		d.step(fmt.Sprintf("attach %s to h%d", c.name, c.host), func() (string, error) {
			ct, err := cl.Attach(c.host, c.name, "")
			if err != nil {
				return "", err
			}
			return ct.IP.String(), nil
		})
	}
	cs := cl.Containers()
	if c := containerOn(cs, 2); c != nil {
		d.step(fmt.Sprintf("etcd turns away container %s on h2 (no cluster certificate)", c.Name), func() (string, error) {
			return refused(cl, c)
		})
	}
	for i, a := range cs {
		for _, b := range cs[i+1:] {
			d.step(fmt.Sprintf("ping %s (h%d) -> %s (h%d)", a.Name, a.Host.Index, b.Name, b.Host.Index), func() (string, error) {
				return s.pingPair(a, b)
			})
		}
	}
	if cross := crossPair(cs); cross[0] != nil {
		a, b := cross[0], cross[1]
		d.step(fmt.Sprintf("iperf3 %s -> %s, 3 s", a.Name, b.Name), func() (string, error) {
			srv, err := b.StartIperfServer(5201)
			if err != nil {
				return "", err
			}
			defer srv.Stop(5 * time.Second)
			r, err := a.Iperf(b.IP.String(), 5201, 3*time.Second)
			if err != nil {
				return "", err
			}
			return fmt.Sprintf("%.2f Gb/s, %d retransmits", r.Gbps, r.Retransmits), nil
		})
	}
	d.step("summary", func() (string, error) { return "", s.print() })
}

// containerOn returns the first container on host i, or nil.
func containerOn(cs []*simcluster.Container, i int) *simcluster.Container {
	for _, c := range cs {
		if c.Host.Index == i {
			return c
		}
	}
	return nil
}

// refused has container c try to read and write the cluster's etcd the
// ways someone without the cluster's certificates would (simcluster.ProbeEtcd),
// and fails if any worked.
func refused(cl *simcluster.Cluster, c *simcluster.Container) (string, error) {
	ctx := context.Background()
	if err := cl.DialEtcd(ctx, c.NS); err != nil {
		return "", err
	}
	probes, err := cl.ProbeEtcd(ctx, c.NS)
	if err != nil {
		return "", err
	}
	var ways []string
	for _, p := range probes {
		if p.Read == nil || p.Write == nil {
			return "", fmt.Errorf("%s reached %s (%s): read error %v, write error %v", c.Name, cl.EtcdEndpoint, p.Way, p.Read, p.Write)
		}
		ways = append(ways, p.Way)
	}
	return fmt.Sprintf("%s reaches %s but can neither read nor write it: %s", c.Name, cl.EtcdEndpoint, strings.Join(ways, "; ")), nil
}

// pings is how many echo requests each pair sends while the fabric is
// watched.
const pings = 10

// pingPair waits until b answers a, then pings while watching the fabric,
// and says which path the pair's packets took.
func (s *summary) pingPair(a, b *simcluster.Container) (string, error) {
	cl := s.cl
	if err := a.PingUntil(b.IP.String(), 15*time.Second); err != nil {
		return "", err
	}
	filter := fmt.Sprintf("udp port %d or icmp", cl.VXLANPort)
	pkts, err := cl.CaptureDuring(cl.Fabric, simcluster.FabricBridge, filter, func() error { return a.Ping(b.IP.String(), pings) })
	if err != nil {
		return "", err
	}
	tr := pairTrafficOf(pkts, a.IP, b.IP, a.Host.IP, b.Host.IP)
	path := tr.Paths.String()
	if a.Host == b.Host {
		path = "local on br-int, " + path + " on the fabric"
	}
	if tr.HostErrors > 0 {
		path += fmt.Sprintf(", %d ICMP errors between the hosts", tr.HostErrors)
	}
	s.paths = append(s.paths, fmt.Sprintf("%s -> %s: %s", a.Name, b.Name, path))
	overlay := tr.Paths.VXLAN + tr.Paths.Rewrite
	switch {
	case a.Host == b.Host && overlay > 0:
		return path, fmt.Errorf("same-host traffic crossed the fabric: %s", path)
	case a.Host == b.Host:
	case overlay == 0:
		return path, fmt.Errorf("no overlay packets on the fabric: %s", path)
	case overlay > 2*pings:
		return path, fmt.Errorf("%d overlay packets for %d echo requests and replies (duplicates): %s", overlay, 2*pings, path)
	case tr.HostErrors > 0:
		return path, fmt.Errorf("a host kernel answered overlay packets with ICMP errors: %s", path)
	case s.mode == "rewrite" && tr.Paths.Rewrite == 0:
		return path, fmt.Errorf("rewrite mode, but every packet took VXLAN: %s", path)
	case s.mode == "tunnel" && tr.Paths.Rewrite > 0:
		return path, fmt.Errorf("tunnel mode, but packets carried DSCP keys: %s", path)
	}
	return path, nil
}

// pairTraffic is one container pair's ping as seen on the fabric.
type pairTraffic struct {
	// Paths counts the pair's echo packets: VXLAN carrying the pair's
	// addresses, or rewritten echo packets between their hosts.
	Paths simcluster.PathCounts
	// HostErrors counts ICMP errors between the two hosts, e.g. a host
	// kernel answering VXLAN with "port unreachable".
	HostErrors int
}

// pairTrafficOf picks the packets of containers a and b (on hosts ha and
// hb) out of a fabric capture.
func pairTrafficOf(pkts []simcluster.CapturedPacket, a, b, ha, hb netip.Addr) pairTraffic {
	var tr pairTraffic
	var mine []simcluster.CapturedPacket
	for _, p := range pkts {
		switch {
		case p.Inner != nil:
			if pairOf(p.Inner.Src, p.Inner.Dst, a, b) {
				mine = append(mine, p)
			}
		case p.Proto != 1 || !pairOf(p.Src, p.Dst, ha, hb):
		case p.ICMPType == 0 || p.ICMPType == 8:
			mine = append(mine, p)
		default:
			tr.HostErrors++
		}
	}
	tr.Paths = simcluster.CountPaths(mine)
	return tr
}

// pairOf reports whether src/dst are x and y, in either direction.
func pairOf(src, dst, x, y netip.Addr) bool {
	return src == x && dst == y || src == y && dst == x
}

// crossPair returns the first two containers on different hosts.
func crossPair(cs []*simcluster.Container) [2]*simcluster.Container {
	for i, a := range cs {
		for _, b := range cs[i+1:] {
			if a.Host != b.Host {
				return [2]*simcluster.Container{a, b}
			}
		}
	}
	return [2]*simcluster.Container{}
}

// print writes the report: hosts, containers, paths, flows per table.
func (s *summary) print() error {
	cl := s.cl
	var errs []error
	fmt.Println("\nHosts")
	out, err := cl.Host(1).Ctl("hosts", "-o", "json")
	hosts, perr := parseHosts([]byte(out))
	if err = errors.Join(err, perr); err != nil {
		errs = append(errs, fmt.Errorf("keyroutectl hosts: %w", err))
	}
	fmt.Printf("  %-6s %-15s %-18s %s\n", "NAME", "IP", "SUBNET", "DATAPATH")
	for _, h := range hosts {
		fmt.Printf("  %-6s %-15s %-18s %s\n", h.Name, h.IP, h.PodSubnet, h.Datapath)
	}
	fmt.Println("\nContainers")
	fmt.Printf("  %-6s %-6s %s\n", "NAME", "HOST", "IP")
	for _, c := range cl.Containers() {
		fmt.Printf("  %-6s %-6s %s\n", c.Name, c.Host.Name, c.IP)
	}
	fmt.Printf("\nPath on the fabric, per pair (%d pings)\n", pings)
	for _, p := range s.paths {
		fmt.Println("  " + p)
	}
	for _, h := range cl.Hosts() {
		fmt.Printf("\nFlows on %s (tables in pipeline order, packets matched)\n", h.Name)
		out, err := h.Ctl("flows", "-o", "json")
		tables, perr := parseFlows([]byte(out))
		if err = errors.Join(err, perr); err != nil {
			errs = append(errs, fmt.Errorf("keyroutectl flows on %s: %w", h.Name, err))
			continue
		}
		for _, t := range tables {
			fmt.Printf("  %-7s %2d %-14s %3d flows %10d packets\n", t.Bridge, t.Table, t.TableName, t.Flows, t.Packets)
		}
	}
	fmt.Println()
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	return nil
}
