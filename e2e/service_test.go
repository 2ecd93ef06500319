package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/keyroute/keyroute/api"
	"github.com/keyroute/keyroute/simcluster"
)

// cliBudget is what keyroutectl may take to answer, whatever is down
// (issue 12), measured as the whole process's wall time.
const cliBudget = 2 * time.Second

// timedCtl runs keyroutectl against h's agent.
func timedCtl(t *testing.T, h *simcluster.Host, args ...string) (stdout, stderr string, took time.Duration, err error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(h.Cluster().BinDir, "keyroutectl"), append([]string{"--socket", h.APISocket}, args...)...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	start := time.Now()
	err = cmd.Run()
	return out.String(), errb.String(), time.Since(start), err
}

// The etcd host's agent stops like a service (SIGTERM returns in ≤ 2 s
// although h2's watches and lease keep-alive are open on its embedded
// etcd), and while it is down keyroutectl on h2 answers within 2 s: hosts
// from h2's own state marked stale, status and keys with an error naming
// the unreachable etcd, never "agent not running". An immediate restart
// works (ports free, data intact) and answers become fresh again.
func TestServiceStopAndCLIWithEtcdDown(t *testing.T) {
	cl := testCluster(t, simcluster.Options{Hosts: 2, Mode: "rewrite"})
	h1, h2 := cl.Host(1), cl.Host(2)

	// Versions: each host's agent in hosts, both in keyroutectl version.
	var hs []api.Host
	ctlJSON(t, h2, &hs, "hosts")
	if len(hs) != 2 {
		t.Fatalf("h2 hosts: %+v, want h1 and h2", hs)
	}
	for _, h := range hs {
		if h.AgentVersion == "" || h.Agent != api.AgentUp || h.StaleSince != "" {
			t.Fatalf("h2 hosts: %+v, want every agent up with its version, nothing stale", h)
		}
	}
	out, _, _, err := timedCtl(t, h2, "version")
	if err != nil || !strings.Contains(out, "keyroutectl:") || !strings.Contains(out, "agent:") || !strings.Contains(out, hs[1].AgentVersion+" (node h2)") {
		t.Fatalf("keyroutectl version: %v\n%s", err, out)
	}

	start := time.Now()
	if err := h1.StopAgent(); err != nil {
		t.Fatal(err)
	}
	stopTook := time.Since(start)
	t.Logf("h1 agent (embedded etcd, h2 watching) stopped %s after SIGTERM", stopTook.Round(time.Millisecond))
	if stopTook > 2*time.Second {
		t.Errorf("h1 agent took %s to stop after SIGTERM, want ≤ 2 s", stopTook.Round(time.Millisecond))
	}

	out, errOut, took, err := timedCtl(t, h2, "hosts")
	t.Logf("h2 keyroutectl hosts with etcd down (%s):\n%s%s", took.Round(time.Millisecond), errOut, out)
	if err != nil || took > cliBudget || !strings.Contains(errOut, "STALE") || !strings.Contains(errOut, "etcd at "+cl.EtcdEndpoint+" unreachable") ||
		!strings.Contains(out, "h1") || !strings.Contains(out, "(stale)") {
		t.Errorf("h2 keyroutectl hosts with etcd down: %v after %s, want the hosts marked stale naming etcd at %s within %s",
			err, took.Round(time.Millisecond), cl.EtcdEndpoint, cliBudget)
	}
	out, _, took, err = timedCtl(t, h2, "hosts", "-o", "json")
	hs = nil
	if jerr := json.Unmarshal([]byte(out), &hs); err != nil || jerr != nil || took > cliBudget || len(hs) != 2 || hs[0].StaleSince == "" || hs[0].StaleReason == "" {
		t.Errorf("h2 keyroutectl hosts -o json with etcd down: %v, %v after %s: %s", err, jerr, took.Round(time.Millisecond), out)
	}
	out, errOut, took, err = timedCtl(t, h2, "status")
	t.Logf("h2 keyroutectl status with etcd down (%s):\n%s%s", took.Round(time.Millisecond), errOut, out)
	if err != nil || took > cliBudget || !strings.Contains(out, "UNHEALTHY") || !strings.Contains(out, "etcd at "+cl.EtcdEndpoint+" unreachable") {
		t.Errorf("h2 keyroutectl status with etcd down: %v after %s, want etcd UNHEALTHY naming %s within %s", err, took.Round(time.Millisecond), cl.EtcdEndpoint, cliBudget)
	}
	for _, args := range [][]string{{"keys"}, {"endpoints"}, {"rule", "list"}} {
		_, errOut, took, err = timedCtl(t, h2, args...)
		if err == nil || took > cliBudget || !strings.Contains(errOut, "etcd at "+cl.EtcdEndpoint+" unreachable") || strings.Contains(errOut, "not running") {
			t.Errorf("h2 keyroutectl %s with etcd down: %v after %s: %q; want an error naming the unreachable etcd within %s",
				strings.Join(args, " "), err, took.Round(time.Millisecond), errOut, cliBudget)
		}
	}
	// A change is refused at once, not after the deadline.
	_, errOut, took, err = timedCtl(t, h2, "detach", "--name", "nobody")
	if err == nil || took > cliBudget || !strings.Contains(errOut, "etcd at "+cl.EtcdEndpoint+" unreachable") {
		t.Errorf("h2 keyroutectl detach with etcd down: %v after %s: %q", err, took.Round(time.Millisecond), errOut)
	}
	// h1's own CLI: the agent is really not running now.
	_, errOut, _, err = timedCtl(t, h1, "status")
	if err == nil || !strings.Contains(errOut, "agent not running") {
		t.Errorf("h1 keyroutectl status with its agent stopped: %v: %q, want agent not running", err, errOut)
	}

	// Immediate restart: etcd's ports and the API socket are free.
	if err := h1.StartAgent(); err != nil {
		t.Fatalf("h1 agent restarted right after its stop: %v", err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		hs = nil
		ctlJSON(t, h2, &hs, "hosts")
		if len(hs) == 2 && hs[0].StaleSince == "" && hs[0].Agent == api.AgentUp && hs[1].Agent == api.AgentUp {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("h2 hosts 30 s after h1's restart: %+v, want both up and fresh", hs)
		}
		time.Sleep(250 * time.Millisecond)
	}
}
