package e2e

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/keyroute/keyroute/simcluster"
)

// Node identity and cluster settings (issue 11): a third machine started
// with h2's node name is refused, naming both machines; an agent whose VNI
// differs from the cluster's is refused naming cluster.vni and both values,
// and starts with --adopt-cluster-settings, forwarding on the cluster's VNI.
func TestIdentityNodeNameAndClusterSettings(t *testing.T) {
	cl := testCluster(t, simcluster.Options{Hosts: 3})
	h1, h2, h3 := cl.Host(1), cl.Host(2), cl.Host(3)
	wantLines := func(t *testing.T, log string, want ...string) {
		t.Helper()
		for _, w := range want {
			if !strings.Contains(log, w) {
				t.Errorf("refusal does not say %q; agent log of this start:\n%s", w, log)
			}
		}
		for _, l := range strings.Split(log, "\n") {
			if strings.HasPrefix(l, "keyroute-agent:") {
				t.Logf("refused: %s", l)
			}
		}
		if strings.Contains(log, "panic") {
			t.Errorf("agent panicked:\n%s", log)
		}
	}

	// h3's machine (its own netns, OVS and state_dir, so its own node ID)
	// starts as "h2".
	if err := h3.StopAgent(); err != nil {
		t.Fatal(err)
	}
	if err := h3.RewriteConfig(func(cfg map[string]any) { cfg["node"] = "h2" }); err != nil {
		t.Fatal(err)
	}
	log, err := h3.StartAgentRefused(90 * time.Second)
	if err != nil {
		t.Fatalf("%v\n%s", err, log)
	}
	wantLines(t, log, `node name "h2" is held by another machine`,
		"host IP "+h2.IP.String(), "host IP "+h3.IP.String(), "keyroutectl hosts remove h2")
	if h2.AgentPID() == 0 {
		t.Fatal("h2's agent stopped")
	}
	if out, err := h1.Ctl("hosts"); err != nil || !strings.Contains(out, h2.IP.String()) {
		t.Errorf("h1 keyroutectl hosts after the refusal: %v\n%s\nwant h2 at %s", err, out, h2.IP)
	}

	// h3 again, under its own name, with another VNI.
	vni := cl.VNI + 100
	if err := h3.RewriteConfig(func(cfg map[string]any) { cfg["cluster"].(map[string]any)["vni"] = int(vni) }); err != nil {
		t.Fatal(err)
	}
	log, err = h3.StartAgentRefused(90 * time.Second)
	if err != nil {
		t.Fatalf("%v\n%s", err, log)
	}
	wantLines(t, log, fmt.Sprintf("cluster.vni: config %d, cluster %d", vni, cl.VNI), "--adopt-cluster-settings")
	if strings.Contains(log, "cluster.vxlan_port") || strings.Contains(log, "cache.keys") {
		t.Errorf("refusal names fields that agree:\n%s", log)
	}

	// With --adopt-cluster-settings it starts on the cluster's VNI.
	h3.AgentArgs = []string{"--adopt-cluster-settings"}
	if err := h3.StartAgent(); err != nil {
		t.Fatal(err)
	}
	tail := h3.Agent().LogTail(400)
	if !strings.Contains(tail, "adopted the cluster's setting") || !strings.Contains(tail, "field=cluster.vni") {
		t.Errorf("h3 log does not record the adopted VNI:\n%s", tail)
	}
	c1, err := cl.Attach(1, "c1", "")
	if err != nil {
		t.Fatal(err)
	}
	c3, err := cl.Attach(3, "c3", "")
	if err != nil {
		t.Fatal(err)
	}
	if err := c3.PingUntil(c1.IP.String(), 20*time.Second); err != nil {
		t.Fatalf("c3 (h3, adopted settings) -> c1: %v", err)
	}
	if err := c1.Ping(c3.IP.String(), 2); err != nil {
		t.Fatalf("c1 -> c3: %v", err)
	}
}
