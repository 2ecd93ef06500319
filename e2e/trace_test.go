package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/keyroute/keyroute/api"
	"github.com/keyroute/keyroute/fabric"
	"github.com/keyroute/keyroute/internal/testenv"
	"github.com/keyroute/keyroute/simcluster"
	"github.com/keyroute/keyroute/simhost"
	"github.com/keyroute/keyroute/trace"
)

// The trace tests run a rewrite-mode cluster whose hosts are joined by a
// simulated routed fabric (OVSFabric): h1 on tor1, h2 on tor2, each ToR
// linked to spine1 and spine2 and hashing (sip ^ dip ^ (sport<<16 | dport))
// mod 2 over them, and a gateway gw1 behind both spines for outside
// addresses. The same model drives the fabric's flows and keyroutectl's
// predictions, so the tests check that the predicted hops are the hops
// whose counters move, and that diagnose names each injected fault.

func traceModel() *fabric.Model {
	xor := &fabric.Policy{Function: fabric.FuncXOR, Fields: []string{"sip", "dip", "sport", "dport"}, Members: 2}
	return &fabric.Model{
		Hosts: []fabric.Host{
			{Name: "h1", IP: netip.MustParseAddr("198.18.0.1"), Attach: "tor1"},
			{Name: "h2", IP: netip.MustParseAddr("198.18.0.2"), Attach: "tor2"},
		},
		Devices: []fabric.Device{
			{Name: "tor1", Tier: fabric.TierToR, ECMP: xor},
			{Name: "tor2", Tier: fabric.TierToR, ECMP: xor},
			{Name: "spine1", Tier: fabric.TierSpine},
			{Name: "spine2", Tier: fabric.TierSpine},
			{Name: "gw1", Tier: fabric.TierGateway, ECMP: xor, Outside: []netip.Prefix{netip.MustParsePrefix("198.18.255.0/24")}},
		},
		Links: []fabric.Link{
			{A: "tor1", B: "spine1"}, {A: "tor1", B: "spine2"},
			{A: "tor2", B: "spine1"}, {A: "tor2", B: "spine2"},
			{A: "spine1", B: "gw1"}, {A: "spine2", B: "gw1"},
		},
	}
}

type traceEnv struct {
	t      *testing.T
	cl     *simcluster.Cluster
	fab    *simcluster.OVSFabric
	c1, c2 *simcluster.Container // h1, h2: the fast-path pair
	c3     *simcluster.Container // h1: same host as c1
	c4     *simcluster.Container // h2: never talked to, so c1 -> c4 is VXLAN
}

func newTraceEnv(t *testing.T) *traceEnv {
	fab := &simcluster.OVSFabric{Model: traceModel()}
	cl := testCluster(t, simcluster.Options{Mode: "rewrite", OVSFabric: fab, AgentConfig: func(_ int, cfg map[string]any) {
		// Long idle timeouts: the warm fast path must outlive the test's
		// pauses.
		cfg["cache"] = map[string]any{"send_idle": "60s"}
	}})
	e := &traceEnv{t: t, cl: cl, fab: fab}
	var err error
	for _, a := range []struct {
		c    **simcluster.Container
		host int
		name string
	}{{&e.c1, 1, "c1"}, {&e.c2, 2, "c2"}, {&e.c3, 1, "c3"}, {&e.c4, 2, "c4"}} {
		if *a.c, err = cl.Attach(a.host, a.name, ""); err != nil {
			t.Fatal(err)
		}
	}
	// Warm c1 -> c2's cache: its fast path needs a ready entry.
	if err := e.c1.PingUntil(e.c2.IP.String(), 20*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := simhost.WaitFor(20*time.Second, func() error {
		e.c1.Ping(e.c2.IP.String(), 1)
		out, err := cl.Host(1).Ctl("cache", "-o", "json")
		if err != nil {
			return err
		}
		var es []api.CacheEntry
		if err := json.Unmarshal([]byte(out), &es); err != nil {
			return err
		}
		for _, ce := range es {
			if ce.Side == "egress" && ce.Src == e.c1.IP.String() && ce.Dst == e.c2.IP.String() && ce.State == "ready" {
				return nil
			}
		}
		return fmt.Errorf("no ready cache entry c1 -> c2: %s", out)
	}); err != nil {
		t.Fatal(err)
	}
	return e
}

func (e *traceEnv) ctlArgs(args ...string) []string {
	return append(args, "--agents", "h2="+e.cl.Host(2).APISocket, "--fabric", e.fab.ModelPath(), "-o", "json")
}

func (e *traceEnv) trace(args ...string) trace.Result {
	e.t.Helper()
	out, err := e.cl.Host(1).Ctl(e.ctlArgs(append([]string{"trace"}, args...)...)...)
	if err != nil {
		e.t.Fatal(err)
	}
	var r trace.Result
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		e.t.Fatalf("trace %v: %v\n%s", args, err, out)
	}
	return r
}

func (e *traceEnv) diagnose(args ...string) api.Diagnosis {
	e.t.Helper()
	out, err := e.cl.Host(1).Ctl(e.ctlArgs(append([]string{"diagnose", "--probes", "100"}, args...)...)...)
	if err != nil {
		e.t.Fatal(err)
	}
	var d api.Diagnosis
	if err := json.Unmarshal([]byte(out), &d); err != nil {
		e.t.Fatalf("diagnose %v: %v\n%s", args, err, out)
	}
	e.t.Logf("diagnose %v: %s", args, d.Verdict)
	return d
}

func steps(t *api.OFTrace) []string {
	var out []string
	for _, s := range t.Steps {
		out = append(out, s.TableName+"/"+s.Category)
	}
	return out
}

func TestTraceOutputs(t *testing.T) {
	e := newTraceEnv(t)

	// Fast path: the cache entry rewrites, the fabric sees host IPs and
	// the key in DSCP, h2 restores and delivers.
	r := e.trace("c1", "c2", "udp/5001", "--sport", "7000")
	if r.Path != trace.PathFast || r.Wire == nil || r.Wire.Kind != trace.WireRewritten || r.Wire.Key == 0 || r.Wire.DSCP != r.Wire.Key {
		t.Fatalf("fast path: path %q wire %+v (verdict %s)", r.Path, r.Wire, r.Verdict)
	}
	if w := r.Wire.Tuple; w.Src.String() != "198.18.0.1" || w.Dst.String() != "198.18.0.2" || w.SPort != 7000 || w.DPort != 5001 {
		t.Errorf("fast path wire tuple %v", w)
	}
	if s := steps(r.Source); !slices.Contains(s, "EgressCache/cache") {
		t.Errorf("source steps %v lack the cache entry", s)
	}
	if s := steps(r.Dest); !slices.Contains(s, "Restore/restore") || s[len(s)-1] != "Deliver/endpoint" {
		t.Errorf("destination steps %v", s)
	}
	// (198.18.0.1 ^ 198.18.0.2 ^ (7000<<16 | 5001)) mod 2 = 1^1 = 0: spine1.
	if len(r.Fabric) != 1 || r.Fabric[0].Path.String() != "tor1 > spine1 > tor2" {
		t.Errorf("fast path fabric %+v", r.Fabric)
	}

	// VXLAN: c1 has never sent to c4.
	r = e.trace("c1", "c4", "tcp/80")
	if r.Path != trace.PathVXLAN || r.Wire == nil || r.Wire.VNI != e.cl.VNI || !r.Wire.SportUnknown || r.Wire.Tuple.DPort != e.cl.VXLANPort {
		t.Fatalf("vxlan: path %q wire %+v", r.Path, r.Wire)
	}
	if s := steps(r.Dest); !slices.Contains(s, "TunnelIn/peer") || s[len(s)-1] != "Deliver/endpoint" {
		t.Errorf("vxlan destination steps %v", s)
	}
	if len(r.Fabric) == 0 || r.FabricError != "" {
		t.Errorf("vxlan fabric %+v %s", r.Fabric, r.FabricError)
	}

	// Same host.
	r = e.trace("c1", "c3", "icmp")
	if r.Path != trace.PathSameHost || r.Wire != nil || !strings.Contains(r.Verdict, "same host") {
		t.Errorf("same host: path %q wire %+v verdict %s", r.Path, r.Wire, r.Verdict)
	}

	// Outside: through the gateway port, masqueraded, towards gw1.
	r = e.trace("c1", "198.18.255.9", "udp/53")
	if r.Path != trace.PathOutside || r.Wire == nil || r.Wire.Tuple.Src.String() != "198.18.0.1" || len(r.Fabric) != 1 ||
		r.Fabric[0].Path.Hops[len(r.Fabric[0].Path.Hops)-1].Device != "gw1" {
		t.Errorf("outside: path %q wire %+v fabric %+v err %s", r.Path, r.Wire, r.Fabric, r.FabricError)
	}

	// Dropped: no host holds 198.19.250.0/24; Forward drops it.
	r = e.trace("c1", "198.19.250.9", "udp/9")
	if r.Path != trace.PathDropped || r.Source.DropStep < 0 || r.Source.Steps[r.Source.DropStep].TableName != "Forward" || !strings.Contains(r.Verdict, "Forward") {
		t.Errorf("dropped: path %q verdict %s", r.Path, r.Verdict)
	}

	// Host to host (the host stack leaves through br-phy LOCAL).
	r = e.trace("h1", "h2", "tcp/2379")
	if r.Path != trace.PathHostStack || r.Wire == nil || r.Wire.Tuple.Src.String() != "198.18.0.1" {
		t.Errorf("host to host: path %q wire %+v verdict %s", r.Path, r.Wire, r.Verdict)
	}

	// The text output names tables, categories and the verdict.
	out, err := e.cl.Host(1).Ctl("trace", "c1", "c2", "udp/5001", "--agents", "h2="+e.cl.Host(2).APISocket, "--fabric", e.fab.ModelPath())
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"EgressCache", "cache", "Restore", "tor1 (tor)", "spine1 (spine)", "ecmp xor", "verdict: fast path"} {
		if !strings.Contains(out, want) {
			t.Errorf("text trace lacks %q:\n%s", want, out)
		}
	}
	if _, err := e.cl.Host(1).Ctl("trace", "c1", "nowhere"); err == nil || !strings.Contains(err.Error(), "not a container, host or IPv4") {
		t.Errorf("unknown destination: %v", err)
	}
}

// For several 5-tuples, the spine trace predicts is the spine whose
// counters move under real traffic from the container.
func TestTracePredictsFabricCounters(t *testing.T) {
	e := newTraceEnv(t)
	const n = 300
	for _, dport := range []int{5001, 5002, 6003, 6004} {
		// A listener keeps c2 from answering with port unreachable.
		ln, err := e.c2.ListenUDP(dport)
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		conn, err := e.c1.DialUDP(netip.AddrPortFrom(e.c2.IP, uint16(dport)).String())
		if err != nil {
			t.Fatal(err)
		}
		sport := netip.MustParseAddrPort(conn.LocalAddr().String()).Port()
		r := e.trace("c1", "c2", "udp/"+strconv.Itoa(dport), "--sport", strconv.Itoa(int(sport)))
		if r.Path != trace.PathFast || len(r.Fabric) != 1 {
			t.Fatalf("dport %d: path %s fabric %+v", dport, r.Path, r.Fabric)
		}
		want := r.Fabric[0].Path.Hops[1].Device
		other := map[string]string{"spine1": "spine2", "spine2": "spine1"}[want]
		before := map[string]uint64{}
		for _, s := range []string{want, other} {
			if before[s], err = e.fab.FlowPackets(s, "nw_dst=198.18.0.2"); err != nil {
				t.Fatal(err)
			}
		}
		// Paced, so the userspace datapath does not drop any.
		for i := 0; i < n; i++ {
			if _, err := conn.Write([]byte("keyroute trace test")); err != nil {
				t.Fatal(err)
			}
			if i%10 == 9 {
				time.Sleep(5 * time.Millisecond)
			}
		}
		conn.Close()
		var got, noise uint64
		err = simhost.WaitFor(5*time.Second, func() error {
			a, _ := e.fab.FlowPackets(want, "nw_dst=198.18.0.2")
			b, _ := e.fab.FlowPackets(other, "nw_dst=198.18.0.2")
			got, noise = a-before[want], b-before[other]
			if got < n {
				return fmt.Errorf("%s counted %d of %d", want, got, n)
			}
			return nil
		})
		if err != nil {
			t.Errorf("dport %d sport %d: trace predicted %s: %v (%s counted %d)", dport, sport, want, err, other, noise)
		}
		// The other spine only sees the hosts' own traffic (etcd).
		if noise >= n/2 {
			t.Errorf("dport %d: %s, not predicted, counted %d packets", dport, other, noise)
		}
		t.Logf("udp %d -> %d: %s counted %d, %s %d", sport, dport, want, got, other, noise)
	}
}

// Faults injected one at a time; diagnose names each.
func TestDiagnoseFaults(t *testing.T) {
	e := newTraceEnv(t)
	pair := []string{"c1", "c2", "udp/5001", "--sport", "7000"}
	spine := "spine1" // see TestTraceOutputs

	key := e.trace(pair...).Wire.Key
	d := e.diagnose(append(pair, "--capture")...)
	if d.Suspect != nil || d.Probes != 100 {
		t.Fatalf("healthy path: suspect %+v, %d probes; checks %+v", d.Suspect, d.Probes, d.Checks)
	}
	// The capture at h2's uplink sees the probes as the fabric carries
	// them: host addresses, the container's ports, the key in DSCP.
	if len(d.Capture) < 2 || !strings.Contains(d.Capture[0], "100 of 100 probes seen") ||
		!strings.Contains(d.Capture[1], fmt.Sprintf("tos 0x%x,", key<<2)) || !strings.Contains(d.Capture[1], "198.18.0.1.7000 > 198.18.0.2.5001") {
		t.Errorf("capture %q (key %d)", d.Capture, key)
	}
	for _, c := range d.Checks {
		if c.Point != "" && !c.Passed {
			t.Errorf("healthy path: %s did not count the probes: %+v", c.Node, c)
		}
	}

	expect := func(name string, d api.Diagnosis, kind, node, where string) {
		t.Helper()
		if d.Suspect == nil || d.Suspect.Kind != kind || d.Suspect.Node != node || !strings.Contains(d.Suspect.Where+" "+d.Suspect.Why, where) {
			t.Errorf("%s: suspect %+v, want %s %s (%q); checks %+v", name, d.Suspect, kind, node, where, d.Checks)
		}
	}

	// A fabric link down.
	if err := e.fab.SetLink("tor1", spine, false); err != nil {
		t.Fatal(err)
	}
	expect("link down", e.diagnose(pair...), api.SuspectLink, "tor1-"+spine, "link down")
	if err := e.fab.SetLink("tor1", spine, true); err != nil {
		t.Fatal(err)
	}

	// A drop flow on the spine.
	if _, err := e.fab.Ofctl("add-flow", spine, "priority=200,ip,nw_dst=198.18.0.2 actions=drop"); err != nil {
		t.Fatal(err)
	}
	expect("spine drop flow", e.diagnose(pair...), api.SuspectDevice, spine, "actions drop")
	if _, err := e.fab.Ofctl("--strict", "del-flows", spine, "priority=200,ip,nw_dst=198.18.0.2"); err != nil {
		t.Fatal(err)
	}

	// A deny rule on the source host (EgressRules).
	if _, err := e.cl.Host(1).Ctl("rule", "add", "--id", "trace-deny", "--direction", "egress", "--action", "deny",
		"--local", "c1", "--remote", e.c2.IP.String()+"/32", "--proto", "udp", "--ports", "5001"); err != nil {
		t.Fatal(err)
	}
	if err := simhost.WaitFor(5*time.Second, func() error {
		if r := e.trace(pair...); r.Path != trace.PathDropped {
			return fmt.Errorf("trace after the deny rule: %s", r.Verdict)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	expect("deny rule", e.diagnose(pair...), api.SuspectHostTable, "h1", "EgressRules")
	if _, err := e.cl.Host(1).Ctl("rule", "delete", "trace-deny"); err != nil {
		t.Fatal(err)
	}

	// The Restore entry deleted by hand on h2 (the agent ignores deletes
	// it did not make; its flows come back on reconnect).
	h2 := e.cl.Host(2)
	if _, err := h2.OVS.Ofctl("del-flows", "br-int", "table=7,ip,nw_src=198.18.0.1"); err != nil {
		t.Fatal(err)
	}
	expect("deleted Restore", e.diagnose(pair...), api.SuspectHostTable, "h2", "Restore")

	// The destination's agent stopped (last: the cluster ends with it).
	if err := h2.StopAgent(); err != nil {
		t.Fatal(err)
	}
	expect("stopped agent", e.diagnose(pair...), api.SuspectAgent, "h2", "not answering")

	// Every diagnosis was stored; stats count the recurring nodes.
	out, err := e.cl.Host(1).Ctl("diagnose", "stats", "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	var st []trace.NodeCount
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatal(err)
	}
	counts := map[string]int{}
	for _, s := range st {
		counts[s.Kind+" "+s.Node] = s.Count
	}
	if counts["host-table h2"] != 1 || counts["agent h2"] != 1 || counts["fabric-device "+spine] != 1 || counts["host-table h1"] != 1 {
		t.Errorf("diagnose stats %v", counts)
	}
	out, err = e.cl.Host(1).Ctl("diagnose", "list")
	if err != nil || strings.Count(out, "\n") != 7 { // header + 6 diagnoses
		t.Errorf("diagnose list (%v):\n%s", err, out)
	}
}

// A model the harness cannot build is refused with the reason, and
// nothing is left behind.
func TestOVSFabricBadModel(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.Require(t, "ovs-vswitchd", "ovsdb-server", "ovsdb-tool", "ip")
	for _, c := range []struct {
		name string
		edit func(*simcluster.Options)
		want string
	}{
		{"host names", func(o *simcluster.Options) { o.OVSFabric.Model.Hosts[1].Name = "web" }, "want h2/198.18.0.2"},
		{"host count", func(o *simcluster.Options) { o.Hosts = 3 }, "model has 2 hosts, cluster 3"},
		{"external etcd", func(o *simcluster.Options) { o.ExternalEtcd = true }, "ExternalEtcd"},
		{"crc32", func(o *simcluster.Options) {
			o.OVSFabric.Model.Devices[0].ECMP = &fabric.Policy{Function: fabric.FuncCRC32, Fields: []string{"sip"}}
		}, "xor"},
	} {
		o := simcluster.Options{NoAgents: true, OVSFabric: &simcluster.OVSFabric{Model: traceModel()}, Logger: simcluster.TestLogger(t)}
		c.edit(&o)
		cl, err := simcluster.NewCluster(context.Background(), o)
		if err == nil {
			cl.Close()
			t.Errorf("%s: no error", c.name)
			continue
		}
		if !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %v, want %q", c.name, err, c.want)
		}
	}
}
