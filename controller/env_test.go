package controller

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keyroute/keyroute/simhost"
)

// integrationRequired: in CI (or when asked) a missing OVS fails the test
// instead of skipping it.
func integrationRequired() bool {
	return os.Getenv("CI") == "true" || os.Getenv("KEYROUTE_REQUIRE_INTEGRATION") == "1"
}

func requireOVS(tb testing.TB) {
	tb.Helper()
	skip := func(why string) {
		tb.Helper()
		if integrationRequired() {
			tb.Fatalf("integration test cannot run: %s", why)
		}
		tb.Skipf("skipping OVS integration test: %s", why)
	}
	if os.Geteuid() != 0 {
		skip("needs root (network namespaces, ovs-vswitchd)")
	}
	for _, bin := range []string{"ovs-vswitchd", "ovsdb-server", "ovsdb-tool", "ovs-vsctl", "ovs-ofctl", "ip", "ethtool", "ping"} {
		if _, err := exec.LookPath(bin); err != nil {
			skip(bin + " not installed")
		}
	}
}

var envSeq atomic.Int32

// ovsEnv is a private ovs-vswitchd in its own namespace with bridge br0
// (netdev datapath, OpenFlow 1.3, fail_mode=secure) and a Switch running
// against its management socket.
type ovsEnv struct {
	t      testing.TB
	prefix string
	ns     *simhost.NetNS
	o      *simhost.OVS
	sw     *Switch
	seq    int
}

func newOVSEnv(tb testing.TB, opts Options) *ovsEnv {
	tb.Helper()
	requireOVS(tb)
	seq := int(envSeq.Add(1))
	e := &ovsEnv{t: tb, seq: seq, prefix: fmt.Sprintf("krc-%d-%d-", os.Getpid(), seq)}
	ns, err := simhost.NewNetNS(e.prefix + "ovs")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { ns.Delete() })
	e.ns = ns
	dir, err := os.MkdirTemp("", "krc-ovs-")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { os.RemoveAll(dir) })
	o, err := simhost.StartOVS(dir, ns.Name)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		if err := o.Stop(); err != nil {
			tb.Errorf("stop ovs: %v", err)
		}
	})
	e.o = o
	if _, err := o.Vsctl("add-br", "br0", "--", "set", "bridge", "br0", "datapath_type=netdev",
		"fail_mode=secure", "protocols=OpenFlow13"); err != nil {
		tb.Fatal(err)
	}
	// Wait for the management socket (vswitchd creates it asynchronously).
	if err := simhost.WaitFor(10*time.Second, func() error {
		_, err := os.Stat(o.MgmtSocket("br0"))
		return err
	}); err != nil {
		tb.Fatal(err)
	}
	if opts.Logger == nil {
		opts.Logger = testOptions().Logger
	}
	e.sw = New("unix:"+o.MgmtSocket("br0"), opts)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.sw.Run(ctx) }()
	tb.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				tb.Errorf("Run: %v", err)
			}
		case <-time.After(10 * time.Second):
			tb.Errorf("Run did not stop")
		}
	})
	wctx, wcancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer wcancel()
	if err := e.sw.WaitConnected(wctx); err != nil {
		tb.Fatal(err)
	}
	return e
}

// host is a namespace with eth0 (198.18.<seq>.<n>/24) wired to br0 port ofport.
type host struct {
	ns  *simhost.NetNS
	ip  string
	mac string
}

func (e *ovsEnv) addHost(name string, ofport int) *host {
	e.t.Helper()
	ns, err := simhost.NewNetNS(e.prefix + name)
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { ns.Delete() })
	port := "p" + name
	if err := simhost.AddVeth(port, e.ns.Name, "eth0", ns.Name); err != nil {
		e.t.Fatal(err)
	}
	ip := fmt.Sprintf("198.18.%d.%d", 100+e.seq%100, ofport)
	if _, err := ns.Exec("ip", "addr", "add", ip+"/24", "dev", "eth0"); err != nil {
		e.t.Fatal(err)
	}
	if _, err := e.o.Vsctl("add-port", "br0", port, "--", "set", "interface", port, "ofport_request="+strconv.Itoa(ofport)); err != nil {
		e.t.Fatal(err)
	}
	mac, err := ns.Exec("cat", "/sys/class/net/eth0/address")
	if err != nil {
		e.t.Fatal(err)
	}
	return &host{ns: ns, ip: ip, mac: strings.TrimSpace(mac)}
}

// ofctl runs ovs-ofctl -O OpenFlow13 against br0.
func (e *ovsEnv) ofctl(args ...string) string {
	e.t.Helper()
	out, err := e.o.Ofctl(args...)
	if err != nil {
		e.t.Fatal(err)
	}
	return out
}

// dumpFlows returns br0's flows without statistics, one per line, as
// ovs-ofctl prints them.
func (e *ovsEnv) dumpFlows(args ...string) []string {
	e.t.Helper()
	out := e.ofctl(append([]string{"--no-stats", "dump-flows", "br0"}, args...)...)
	var lines []string
	for _, l := range strings.Split(out, "\n") {
		if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "OFPST_FLOW") {
			lines = append(lines, l)
		}
	}
	return lines
}

// icmpInEchos reads the host's count of ICMP echo requests received.
func (h *host) icmpInEchos(t testing.TB) int {
	t.Helper()
	out, err := h.ns.Exec("cat", "/proc/net/snmp")
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, l := range strings.Split(out, "\n") {
		if !strings.HasPrefix(l, "Icmp: ") {
			continue
		}
		f := strings.Fields(l)[1:]
		if names == nil {
			names = f
			continue
		}
		for i, n := range names {
			if n == "InEchos" && i < len(f) {
				v, _ := strconv.Atoi(f[i])
				return v
			}
		}
	}
	t.Fatalf("no Icmp InEchos in /proc/net/snmp of %s", h.ns.Name)
	return 0
}
