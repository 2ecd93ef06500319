package e2e

import (
	"fmt"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/keyroute/keyroute/api"
	"github.com/keyroute/keyroute/keyalloc"
	"github.com/keyroute/keyroute/simcluster"
	"github.com/keyroute/keyroute/simhost"
)

// hostAgentOutageWait bounds how long peers may take to see a killed
// agent as down: its lease TTL (15 s) plus etcd's expiry check.
const hostAgentOutageWait = 30 * time.Second

// An agent outage is not a host leaving (DESIGN.md "As built"): with h2's
// agent killed for longer than its lease, h1 keeps h2's flows and the keys
// they share, and c1->c2 stays on the fast path. `keyroutectl hosts
// remove` ends the membership and the flows and keys go; a restarted agent
// joins again, and its host's uninstall ends the membership too.
func TestHostAgentOutage(t *testing.T) {
	p := rwStartPair(t, simcluster.Options{ExternalEtcd: true})
	cl, st, h1, h2, c1, c2 := p.cl, p.st, p.h1, p.h2, p.c1, p.c2
	fwd, back := p.bothFast(t, 5*time.Second)

	if got := hostsAgents(t, h1); got["h2"] != api.AgentUp || got["h1"] != api.AgentUp {
		t.Fatalf("h1 keyroutectl hosts: agents %v, want h1 and h2 up", got)
	}
	subnet := hostSubnetOf(t, h1, "h2")
	peerFlows := peerFlowsOf(t, h1, h2.IP.String(), subnet)
	if len(peerFlows) == 0 {
		t.Fatalf("h1 has no peer or subnet flows for h2 (%s, %s)", h2.IP, subnet)
	}
	// Refused while h2's agent runs, naming the host; the own host always.
	if msg, err := ctlFailure(h1, "hosts", "remove", "h2"); err != nil || !strings.Contains(msg, "h2") || !strings.Contains(msg, "--force") {
		t.Errorf("hosts remove h2 with its agent up: %q, %v; want a refusal naming h2 and --force", msg, err)
	}
	if msg, err := ctlFailure(h1, "hosts", "remove", "h1"); err != nil || !strings.Contains(msg, "uninstall") {
		t.Errorf("hosts remove of the agent's own host: %q, %v; want a refusal pointing at --uninstall", msg, err)
	}

	// Crash h2's agent while c1 pings c2, and wait past its lease.
	const interval, count = 100 * time.Millisecond, 350 // 35 s: the outage, then some
	wait := rwBgPing(t, c1, c2.IP.String(), interval, count)
	if err := h2.KillAgent(); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	waitHosts(t, h1, hostAgentOutageWait, "h2's agent down", func(agents map[string]string) bool {
		return agents["h2"] == api.AgentDown
	})
	t.Logf("h1 saw h2's agent down %s after the kill", time.Since(killed).Round(100*time.Millisecond))
	if got := peerFlowsOf(t, h1, h2.IP.String(), subnet); !slices.Equal(got, peerFlows) {
		t.Errorf("h1's flows for h2 with h2's agent down:\n%s\nbefore:\n%s", strings.Join(got, "\n"), strings.Join(peerFlows, "\n"))
	}
	if n := ctlStatus(t, h1).Counts.Hosts; n != 2 {
		t.Errorf("h1 status counts %d hosts with h2's agent down, want 2", n)
	}
	ps, out := wait()
	t.Logf("ping c1->c2 across h2's agent outage: %d sent, %d received", ps.Sent, ps.Received)
	if ps.Sent != count || ps.Sent-ps.Received > 1 {
		t.Errorf("ping c1->c2 at %s with h2's agent down lost %d of %d; want at most 1\n%s", interval, ps.Sent-ps.Received, ps.Sent, out)
	}
	// Same keys, on the wire, with nothing released.
	for _, p := range []struct {
		rec      keyalloc.Record
		src, dst *simcluster.Container
	}{{fwd, c1, c2}, {back, c2, c1}} {
		if r, ok := st.record(t, p.src, p.dst); !ok || r.CreateRevision != p.rec.CreateRevision || r.State != keyalloc.StateReady {
			t.Errorf("with h2's agent down: record of %s->%s is %+v (found %v), want the same ready record with key %d", p.src.Name, p.dst.Name, r, ok, p.rec.Key.DSCP)
		}
	}
	pkts, err := cl.CaptureDuring(cl.Fabric, "h1", "icmp or udp port 4789", func() error { return c1.Ping(c2.IP.String(), 3) })
	if err != nil {
		t.Fatal(err)
	}
	if pc := simcluster.CountPaths(pkts); pc.VXLAN != 0 || pc.Rewrite != 6 {
		t.Errorf("with h2's agent down: 3 pings on the wire: %s; want 6 rewritten", pc)
	}

	// Membership ends: h1 drops h2's flows and releases their keys.
	if out, err := h1.Ctl("hosts", "remove", "h2"); err != nil || !strings.Contains(out, "removed host h2") {
		t.Fatalf("hosts remove h2 with its agent down: %q, %v", out, err)
	}
	if err := simhost.WaitFor(10*time.Second, func() error {
		if got := peerFlowsOf(t, h1, h2.IP.String(), subnet); len(got) > 0 {
			return fmt.Errorf("h1 still has flows for h2:\n%s", strings.Join(got, "\n"))
		}
		for _, r := range st.records(t) {
			if r.SrcHost == "h2" || r.DstHost == "h2" {
				return fmt.Errorf("key record %s->%s key %d still in etcd", r.SrcHost, r.DstHost, r.Key.DSCP)
			}
		}
		return nil
	}); err != nil {
		t.Errorf("after hosts remove h2: %v", err)
	}
	if got := hostsAgents(t, h1); len(got) != 1 || got["h1"] != api.AgentUp {
		t.Errorf("h1 keyroutectl hosts after removing h2: agents %v, want h1 only", got)
	}

	// A restarted agent registers again: h2 is back, with its flows.
	if err := h2.StartAgent(); err != nil {
		t.Fatal(err)
	}
	waitHosts(t, h1, 10*time.Second, "h2 back and up", func(agents map[string]string) bool {
		return agents["h2"] == api.AgentUp
	})
	if err := simhost.WaitFor(10*time.Second, func() error {
		if got := peerFlowsOf(t, h1, h2.IP.String(), subnet); !slices.Equal(got, peerFlows) {
			return fmt.Errorf("h1's flows for h2:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(peerFlows, "\n"))
		}
		return nil
	}); err != nil {
		t.Errorf("after h2 rejoined: %v", err)
	}
	if err := c1.PingUntil(c2.IP.String(), 10*time.Second); err != nil {
		t.Errorf("c1->c2 after h2 rejoined: %v", err)
	}

	// Uninstalling h2 takes its membership with it.
	if err := h2.StopAgent(); err != nil {
		t.Fatal(err)
	}
	un, err := exec.Command("ip", "netns", "exec", h2.NS.Name, filepath.Join(cl.BinDir, "keyroute-agent"),
		"--config", h2.ConfigPath, "--uninstall").CombinedOutput()
	if err != nil || !strings.Contains(string(un), "removed this host from the cluster") {
		t.Fatalf("h2 keyroute-agent --uninstall: %v\n%s", err, un)
	}
	waitHosts(t, h1, 10*time.Second, "h2 gone after its uninstall", func(agents map[string]string) bool {
		_, ok := agents["h2"]
		return !ok
	})
}

// hostsAgents returns `keyroutectl hosts` on h as host name -> agent state.
func hostsAgents(t *testing.T, h *simcluster.Host) map[string]string {
	t.Helper()
	var hs []api.Host
	ctlJSON(t, h, &hs, "hosts")
	out := map[string]string{}
	for _, x := range hs {
		out[x.Name] = x.Agent
	}
	return out
}

// waitHosts polls `keyroutectl hosts` on h until cond holds, failing t
// after timeout.
func waitHosts(t *testing.T, h *simcluster.Host, timeout time.Duration, what string, cond func(agents map[string]string) bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		got := hostsAgents(t, h)
		if cond(got) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: waiting %s for %s: keyroutectl hosts says %v", h.Name, timeout, what, got)
		}
		time.Sleep(250 * time.Millisecond) // keyroutectl is a process per poll
	}
}

func hostSubnetOf(t *testing.T, h *simcluster.Host, name string) string {
	t.Helper()
	var hs []api.Host
	ctlJSON(t, h, &hs, "hosts")
	for _, x := range hs {
		if x.Name == name {
			return x.PodSubnet
		}
	}
	t.Fatalf("%s keyroutectl hosts: no %s in %+v", h.Name, name, hs)
	return ""
}

// peerFlowsOf lists h's per-peer and subnet flows (both bridges) that
// name the peer's underlay IP or pod subnet, as sorted "bridge table
// match" lines.
func peerFlowsOf(t *testing.T, h *simcluster.Host, peerIP, subnet string) []string {
	t.Helper()
	re := regexp.MustCompile(`=(` + regexp.QuoteMeta(peerIP) + `|` + regexp.QuoteMeta(subnet) + `)(/32)?(,|$)`)
	var out []string
	for _, f := range ctlFlows(t, h, "") {
		if (f.Category == "peer" || f.Category == "subnet") && re.MatchString(f.Match) {
			out = append(out, fmt.Sprintf("%s %s %s", f.Bridge, f.TableName, f.Match))
		}
	}
	slices.Sort(out)
	return out
}
