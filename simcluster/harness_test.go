package simcluster

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/keyroute/keyroute/internal/testenv"
	"github.com/keyroute/keyroute/simhost"
)

func requireSim(t *testing.T) {
	t.Helper()
	testenv.RequireRoot(t)
	testenv.Require(t, "ip", "ethtool", "ping", "tcpdump", "ss", "ovsdb-tool", "ovsdb-server", "ovs-vswitchd", "ovs-vsctl")
}

// pingHost pings from a host namespace and fails unless all answered.
func pingHost(t *testing.T, h *Host, extra ...string) {
	t.Helper()
	out, err := h.Exec(append([]string{"ping", "-n", "-c", "3", "-i", "0.2", "-W", "2"}, extra...)...)
	st, perr := ParsePing(out)
	if err != nil || perr != nil || st != (PingStats{Sent: 3, Received: 3}) {
		t.Fatalf("ping from %s %v: %+v: %v %v\n%s", h.Name, extra, st, err, perr, out)
	}
}

// The fabric alone, without agents: host namespaces reach each other over
// fab0 on their plain eth1 addresses, the wire can be watched, and Close
// leaves nothing behind.
func TestFabricWithoutAgents(t *testing.T) {
	requireSim(t)
	cl, err := NewCluster(context.Background(), Options{NoAgents: true, Logger: TestLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cl.Close() })
	if !strings.HasPrefix(cl.Prefix, fmt.Sprintf("kre%d", os.Getpid())) {
		t.Errorf("default prefix %q does not carry our pid", cl.Prefix)
	}
	want := []string{cl.Prefix + "fab", cl.Prefix + "h1", cl.Prefix + "h2"}
	if got := simhost.ListNetNS(cl.Prefix); !slices.Equal(got, want) {
		t.Fatalf("namespaces %v, want %v", got, want)
	}
	h1, h2 := cl.Host(1), cl.Host(2)
	if cl.Host(0) != nil || cl.Host(3) != nil {
		t.Error("Host() out of range returned a host")
	}
	for _, h := range []*Host{h1, h2} {
		out, err := h.Exec("ip", "-br", "addr", "show", Uplink)
		if err != nil || !strings.Contains(out, h.IP.String()+"/24") || !strings.Contains(out, "UP") {
			t.Errorf("%s %s: %q %v; want %s/24 and UP", h.Name, Uplink, out, err, h.IP)
		}
		out, err = h.Exec("ip", "-br", "link", "show", Uplink)
		if err != nil || !strings.Contains(out, h.MAC.String()) {
			t.Errorf("%s %s: %q %v; want MAC %s", h.Name, Uplink, out, err, h.MAC)
		}
		out, err = h.Exec("ethtool", "-k", Uplink)
		if err != nil || !strings.Contains(out, "tx-checksumming: off") {
			t.Errorf("%s %s offloads: tx checksumming not off: %v\n%s", h.Name, Uplink, err, out)
		}
		if _, err := h.OVS.Vsctl("show"); err != nil {
			t.Errorf("%s OVS not answering: %v", h.Name, err)
		}
		b, err := os.ReadFile(h.ConfigPath)
		etcd := "embedded_client_url: https://198.18.0.1:2379"
		if h.Index != 1 {
			etcd = "- https://198.18.0.1:2379"
		}
		if err != nil || !strings.Contains(string(b), etcd) || !strings.Contains(string(b), "node: "+h.Name) {
			t.Errorf("%s agent config lacks %q (%v):\n%s", h.Name, etcd, err, b)
		}
	}
	if h1.IP != netip.MustParseAddr("198.18.0.1") || h2.MAC.String() != "02:00:00:00:00:02" {
		t.Errorf("host addressing: h1 %s, h2 %s", h1.IP, h2.MAC)
	}
	out, err := cl.Fabric.Exec("ip", "-br", "link", "show", "master", FabricBridge)
	if err != nil || !strings.Contains(out, "h1@") || !strings.Contains(out, "h2@") {
		t.Errorf("fabric bridge ports: %q %v", out, err)
	}

	// Plain underlay, with a DSCP the capture must report (TOS 0x28 = DSCP 10).
	pkts, err := cl.CaptureDuring(cl.Fabric, FabricBridge, "icmp", func() error {
		pingHost(t, h1, "-Q", "0x28", h2.IP.String())
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	var req, rep int
	for _, p := range pkts {
		switch {
		case p.Src == h1.IP && p.Dst == h2.IP && p.ICMPType == 8 && p.DSCP == 10 && p.Path() == PathRewrite:
			req++
		case p.Src == h2.IP && p.Dst == h1.IP && p.ICMPType == 0:
			rep++
		}
	}
	if req != 3 || rep != 3 {
		t.Errorf("fabric saw %d requests with DSCP 10 and %d replies, want 3 and 3: %v", req, rep, pkts)
	}

	// Real kernel VXLAN between the hosts: the decoder must read the wire
	// the same way it reads the crafted testdata.
	for i, h := range []*Host{h1, h2} {
		peer := []*Host{h2, h1}[i]
		for _, c := range [][]string{
			{"ip", "link", "add", "vx42", "type", "vxlan", "id", "42", "local", h.IP.String(), "remote", peer.IP.String(), "dstport", "4789", "dev", Uplink},
			{"ip", "addr", "add", fmt.Sprintf("198.18.42.%d/24", h.Index), "dev", "vx42"},
			{"ip", "link", "set", "vx42", "up"},
		} {
			if _, err := h.Exec(c...); err != nil {
				t.Fatal(err)
			}
		}
	}
	pingHost(t, h1, "198.18.42.2") // resolves the inner ARP first
	c, err := cl.StartCapture(cl.Fabric, "h1", "udp port 4789", 2)
	if err != nil {
		t.Fatal(err)
	}
	pingHost(t, h1, "198.18.42.2")
	pkts, err = c.Wait(5 * time.Second)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range pkts {
		if !p.VXLAN || p.VNI != 42 || p.Inner == nil || p.Inner.Proto != 1 || !p.Inner.Src.IsValid() ||
			!strings.HasPrefix(p.Inner.Src.String(), "198.18.42.") || !(p.Src == h1.IP || p.Src == h2.IP) {
			t.Errorf("kernel VXLAN decoded as %s", p)
		}
	}
	if len(pkts) != 2 {
		t.Errorf("capture with count 2 returned %d packets", len(pkts))
	}

	// Close stops everything and deletes everything.
	var pids []int
	for _, h := range []*Host{h1, h2} {
		for _, d := range []string{"ovsdb-server", "ovs-vswitchd"} {
			pid, err := h.OVS.PID(d)
			if err != nil {
				t.Fatal(err)
			}
			pids = append(pids, pid)
		}
	}
	pids = append(pids, c.proc.PID())
	if err := cl.Close(); err != nil {
		t.Fatal(err)
	}
	if left := simhost.ListNetNS(cl.Prefix); len(left) > 0 {
		t.Errorf("namespaces left after Close: %v", left)
	}
	for _, pid := range pids {
		if simhost.PIDAlive(pid) {
			t.Errorf("pid %d still running after Close", pid)
		}
	}
	if _, err := os.Stat(cl.Dir); !os.IsNotExist(err) {
		t.Errorf("working directory %s left after Close (%v)", cl.Dir, err)
	}
	if err := cl.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

// NewCluster rejects bad options before touching the system.
func TestNewClusterBadOptions(t *testing.T) {
	for _, o := range []Options{
		{Hosts: -1}, {Hosts: MaxHosts + 1}, {Mode: "fast"}, {Prefix: "bad/prefix-"}, {Prefix: "a-very-long-prefix-indeed-"},
	} {
		if cl, err := NewCluster(context.Background(), o); err == nil {
			cl.Close()
			t.Errorf("NewCluster(%+v) succeeded", o)
		}
	}
}

// A failing agent makes NewCluster fail with its log, leaving nothing behind.
func TestNewClusterAgentFails(t *testing.T) {
	requireSim(t)
	bin := t.TempDir()
	// A stand-in agent that complains and exits.
	for name, script := range map[string]string{
		"keyroute-agent": "#!/bin/sh\necho 'fatal: cannot open br-phy (stand-in agent)' >&2\nexit 3\n",
		"keyroutectl":    "#!/bin/sh\nexit 1\n",
	} {
		if err := os.WriteFile(bin+"/"+name, []byte(script), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	prefix := fmt.Sprintf("kre%dx-", os.Getpid())
	cl, err := NewCluster(context.Background(), Options{Hosts: 1, BinDir: bin, Prefix: prefix, Logger: TestLogger(t)})
	if err == nil {
		cl.Close()
		t.Fatal("NewCluster succeeded with an agent that exits")
	}
	if !strings.Contains(err.Error(), "cannot open br-phy (stand-in agent)") || !strings.Contains(err.Error(), "h1 agent exited") {
		t.Errorf("error does not carry the agent's log: %v", err)
	}
	if left := simhost.ListNetNS(prefix); len(left) > 0 {
		t.Errorf("namespaces left after a failed NewCluster: %v", left)
	}
}

// CleanupStale removes namespaces (and what runs in them) of dead owners
// and leaves live owners' alone.
func TestCleanupStale(t *testing.T) {
	requireSim(t)
	dead := exec.Command("true")
	if err := dead.Run(); err != nil {
		t.Fatal(err)
	}
	stale := fmt.Sprintf("kre%d-h1", dead.Process.Pid)
	live := fmt.Sprintf("kre%dzz-h1", os.Getpid())
	for _, name := range []string{stale, live} {
		ns, err := simhost.NewNetNS(name)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ns.Delete() })
	}
	sleeper, err := startProcess("sleeper", t.TempDir()+"/sleep.log", "ip", "netns", "exec", stale, "sleep", "300")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sleeper.Stop(time.Second) })
	// Generous: on a loaded 2-core machine `ip netns exec` can take seconds.
	if err := simhost.WaitFor(20*time.Second, func() error {
		out, _ := simhost.Run("ip", "netns", "pids", stale)
		if !strings.Contains(out, fmt.Sprint(sleeper.PID())) {
			return fmt.Errorf("sleeper not in %s yet", stale)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}

	if err := CleanupStale("kre"); err != nil {
		t.Fatal(err)
	}
	if err := sleeper.Wait(5 * time.Second); err == nil || strings.Contains(err.Error(), "still running") {
		t.Errorf("process in the stale namespace: %v; want it killed", err)
	}
	if slices.Contains(simhost.ListNetNS("kre"), stale) {
		t.Errorf("stale namespace %s left", stale)
	}
	if !slices.Contains(simhost.ListNetNS("kre"), live) {
		t.Errorf("live namespace %s removed", live)
	}
	if err := CleanupStale("pp-"); err == nil {
		t.Error("CleanupStale outside the kre family succeeded")
	}
}

func TestStalePrefixes(t *testing.T) {
	alive := func(pid int) bool { return pid == 42 }
	got := stalePrefixes("kre", []string{
		"kre7-fab", "kre7-h1", "kre7b-h2", "kre42-h1", "kredemo-h1", "kre9", "kre8X-h1", "kre10-c-a1",
	}, alive)
	want := []string{"kre10-", "kre7-", "kre7b-"}
	if !slices.Equal(got, want) {
		t.Errorf("stalePrefixes = %v, want %v", got, want)
	}
}

func TestDefaultPrefixesDoNotNest(t *testing.T) {
	var ps []string
	for range 30 {
		ps = append(ps, DefaultPrefix())
	}
	for i, a := range ps {
		for j, b := range ps {
			if i != j && strings.HasPrefix(b, a) {
				t.Fatalf("prefix %q starts %q: closing one would delete the other's namespaces", a, b)
			}
		}
	}
}

// With ExternalEtcd, etcd runs in the fabric namespace, hosts reach it over
// fab0, every agent config points at it, and it can be stopped and
// restarted for outage tests.
func TestExternalEtcd(t *testing.T) {
	requireSim(t)
	testenv.Require(t, "etcd")
	cl, err := NewCluster(context.Background(), Options{
		Hosts: 1, NoAgents: true, ExternalEtcd: true, Logger: TestLogger(t),
		AgentConfig: func(host int, cfg map[string]any) { cfg["log_level"] = "warn" },
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cl.Close() })
	h1 := cl.Host(1)
	health := func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		return etcdHealthy(ctx, cl.EtcdHTTPClient(h1.NS), cl.EtcdEndpoint+"/health")
	}
	if err := health(); err != nil {
		t.Fatalf("etcd not reachable from %s: %v", h1.Name, err)
	}
	b, err := os.ReadFile(h1.ConfigPath)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"https://198.18.0.254:2379", "cert: " + cl.PKIDir + "/h1.crt", "log_level: warn", "uplink: eth1", "datapath: " + cl.Datapath(), "db_socket: " + h1.OVS.DBSock()} {
		if !strings.Contains(string(b), want) {
			t.Errorf("agent config lacks %q:\n%s", want, b)
		}
	}
	if strings.Contains(string(b), "embedded_client_url") {
		t.Errorf("agent config asks for embedded etcd with ExternalEtcd:\n%s", b)
	}

	pid := cl.etcd.PID()
	if err := cl.StopEtcd(); err != nil {
		t.Fatal(err)
	}
	if err := health(); err == nil {
		t.Fatal("etcd healthy after StopEtcd")
	}
	if err := cl.StartEtcd(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := health(); err != nil {
		t.Fatalf("etcd after StartEtcd: %v", err)
	}
	newPID := cl.etcd.PID()
	if err := cl.Close(); err != nil {
		t.Fatal(err)
	}
	for _, p := range []int{pid, newPID} {
		if simhost.PIDAlive(p) {
			t.Errorf("etcd pid %d alive after Close", p)
		}
	}
}

// The agent lifecycle against stand-in binaries (testdata/stub): agents run
// in their host's namespace, readiness waits for `status`, Attach/Detach
// manage container namespaces, and agents restart by PID.
func TestAgentLifecycleWithStub(t *testing.T) {
	requireSim(t)
	bin, err := filepath.Abs("testdata/stub")
	if err != nil {
		t.Fatal(err)
	}
	cl, err := NewCluster(context.Background(), Options{BinDir: bin, Mode: "rewrite", Logger: TestLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cl.Close() })
	h1, h2 := cl.Host(1), cl.Host(2)
	for _, h := range cl.Hosts() {
		b, err := os.ReadFile(h.APISocket + ".netns")
		if err != nil || !strings.Contains(string(b), h.IP.String()) {
			t.Errorf("%s agent did not run in its namespace: saw %q (%v)", h.Name, b, err)
		}
		if b, _ := os.ReadFile(h.ConfigPath); !strings.Contains(string(b), "mode: rewrite") {
			t.Errorf("%s config lacks the mode:\n%s", h.Name, b)
		}
		if _, err := h.Ctl("status", "-o", "json"); err != nil {
			t.Errorf("%s status: %v", h.Name, err)
		}
	}

	c, err := cl.Attach(1, "a1", "198.19.1.5")
	if err != nil {
		t.Fatal(err)
	}
	if c.IP != netip.MustParseAddr("198.19.1.5") || c.Port != "kr-a1" || c.Host != h1 || c.NS.Name != cl.Prefix+"c-a1" {
		t.Errorf("attached %+v", c)
	}
	if !slices.Contains(simhost.ListNetNS(cl.Prefix), c.NS.Name) {
		t.Errorf("container namespace %s missing", c.NS.Name)
	}
	for _, bad := range []struct {
		host int
		name string
	}{{1, "a1"}, {3, "a2"}, {1, "Bad_Name"}, {1, ""}} {
		if _, err := cl.Attach(bad.host, bad.name, ""); err == nil {
			t.Errorf("Attach(%d, %q) succeeded", bad.host, bad.name)
		}
	}
	if got := cl.Containers(); len(got) != 1 || got[0] != c {
		t.Errorf("Containers() = %v", got)
	}
	if err := cl.Detach(c); err != nil {
		t.Fatal(err)
	}
	if slices.Contains(simhost.ListNetNS(cl.Prefix), c.NS.Name) || len(cl.Containers()) != 0 {
		t.Errorf("container %s still there after Detach", c.Name)
	}

	old := h2.AgentPID()
	if err := h2.StopAgent(); err != nil {
		t.Fatal(err)
	}
	if h2.AgentPID() != 0 || simhost.PIDAlive(old) {
		t.Fatalf("agent pid %d still running after StopAgent", old)
	}
	if _, err := h2.Ctl("status"); err == nil {
		t.Error("status succeeded with the agent stopped")
	}
	if err := h2.StartAgent(); err != nil {
		t.Fatal(err)
	}
	if now := h2.AgentPID(); now == 0 || now == old {
		t.Errorf("agent pid after restart %d (before %d)", now, old)
	}
	if b, _ := os.ReadFile(h2.LogPath); strings.Count(string(b), "stub agent up") != 2 {
		t.Errorf("agent log not kept across the restart:\n%s", b)
	}
	if err := h2.StartAgent(); err == nil {
		t.Error("StartAgent with the agent running succeeded")
	}

	pids := []int{h1.AgentPID(), h2.AgentPID()}
	if err := cl.Close(); err != nil {
		t.Fatal(err)
	}
	for _, pid := range pids {
		if simhost.PIDAlive(pid) {
			t.Errorf("agent pid %d alive after Close", pid)
		}
	}
	if left := simhost.ListNetNS(cl.Prefix); len(left) > 0 {
		t.Errorf("namespaces left: %v", left)
	}
}

// KeepUp leaves the cluster running after Close; Teardown then removes it
// from nothing but its prefix, OVS daemons outside the namespaces included.
func TestKeepUpAndTeardown(t *testing.T) {
	requireSim(t)
	prefix := fmt.Sprintf("kre%dk-", os.Getpid())
	t.Cleanup(func() { Teardown(prefix) })
	cl, err := NewCluster(context.Background(), Options{Hosts: 1, NoAgents: true, KeepUp: true, Prefix: prefix, Logger: TestLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	var pids []int
	for _, d := range []string{"ovsdb-server", "ovs-vswitchd"} {
		pid, err := cl.Host(1).OVS.PID(d)
		if err != nil {
			t.Fatal(err)
		}
		pids = append(pids, pid)
	}
	if err := cl.Close(); err != nil {
		t.Fatal(err)
	}
	if got := simhost.ListNetNS(prefix); len(got) != 2 {
		t.Fatalf("namespaces after Close with KeepUp: %v, want fab and h1", got)
	}
	for _, pid := range pids {
		if !simhost.PIDAlive(pid) {
			t.Fatalf("OVS pid %d stopped by Close with KeepUp", pid)
		}
	}
	if err := Teardown(prefix); err != nil {
		t.Fatal(err)
	}
	for _, pid := range pids {
		if simhost.PIDAlive(pid) {
			t.Errorf("OVS pid %d alive after Teardown", pid)
		}
	}
	if got := simhost.ListNetNS(prefix); len(got) != 0 {
		t.Errorf("namespaces after Teardown: %v", got)
	}
	if _, err := os.Stat(cl.Dir); !os.IsNotExist(err) {
		t.Errorf("directory %s after Teardown: %v", cl.Dir, err)
	}
}
