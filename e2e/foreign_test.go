package e2e

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/keyroute/keyroute/api"
	"github.com/keyroute/keyroute/simcluster"
	"github.com/keyroute/keyroute/simhost"
	"github.com/keyroute/keyroute/trace"
)

// A host whose OVS already has another user's br-int (say OpenStack's),
// with its own external_ids, flows and traffic: keyroute with the default
// names refuses to start, naming the bridge and its owner and changing
// nothing; with bridges.* set to other names it runs beside it, and
// neither disturbs the other.
func TestForeignBridge(t *testing.T) {
	cl := testCluster(t, simcluster.Options{Mode: "rewrite", NoAgents: true})
	h1, h2 := cl.Host(1), cl.Host(2)
	fb, err := h1.AddForeignBridge("br-int", map[string]string{"owner": "neutron", "bridge-id": "int-1"}, 200,
		"cookie=0xf00d,priority=10,actions=NORMAL",
		"cookie=0xf00e,priority=100,udp,tp_dst=9,actions=drop")
	if err != nil {
		t.Fatal(err)
	}
	if out, err := fb.Ping(2); err != nil {
		t.Fatalf("foreign bridge's own traffic before keyroute: %v\n%s", err, out)
	}
	flowsBefore, err := fb.Flows()
	if err != nil {
		t.Fatal(err)
	}
	stateBefore, err := fb.State()
	if err != nil {
		t.Fatal(err)
	}
	intact := func(when string) {
		t.Helper()
		if fs, err := fb.Flows(); err != nil || !slices.Equal(fs, flowsBefore) {
			t.Errorf("%s: foreign br-int flows %q (%v), want them unchanged: %q", when, fs, err, flowsBefore)
		}
		if st, err := fb.State(); err != nil || st != stateBefore {
			t.Errorf("%s: foreign br-int %s (%v), want it unchanged:\n%s", when, st, err, stateBefore)
		}
		if out, err := fb.Ping(3); err != nil {
			t.Errorf("%s: the foreign bridge's own traffic stopped: %v\n%s", when, err, out)
		}
	}

	// (a) Default names: refused before anything on the host changes.
	out, err := h1.StartAgentRefused(30 * time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("refused: %s", out[max(0, strings.LastIndex(out, "keyroute-agent:")):])
	for _, want := range []string{"bridge br-int exists and is not keyroute's", "owner=neutron", "bridge-id=int-1",
		"bridges.integration and bridges.physical"} {
		if !strings.Contains(out, want) {
			t.Errorf("refusal does not say %q:\n%s", want, out)
		}
	}
	if brs, _ := h1.OVS.Vsctl("list-br"); brs != "br-int" {
		t.Errorf("bridges after the refusal: %q, want only the foreign br-int (no br-phy made half-way)", brs)
	}
	if addrs, _ := h1.Exec("ip", "-4", "-o", "addr", "show", "dev", simcluster.Uplink); !strings.Contains(addrs, h1.IP.String()+"/") {
		t.Errorf("host IP left the uplink in a refused start: %s", addrs)
	}
	intact("after the refused start")

	// (b) Other names: keyroute runs beside the foreign bridge. h2 keeps
	// the defaults: names are per host.
	if err := h1.RewriteConfig(func(cfg map[string]any) {
		cfg["bridges"] = map[string]any{"integration": "kr-int", "physical": "kr-phy"}
	}); err != nil {
		t.Fatal(err)
	}
	for _, h := range []*simcluster.Host{h1, h2} {
		if err := h.StartAgent(); err != nil {
			t.Fatal(err)
		}
	}
	if brs, _ := h1.OVS.Vsctl("list-br"); brs != "br-int\nkr-int\nkr-phy" {
		t.Errorf("h1 bridges %q, want br-int (foreign), kr-int, kr-phy", brs)
	}
	for _, p := range []struct{ br, port string }{{"kr-int", "patch-kr-phy"}, {"kr-phy", "patch-kr-int"}} {
		if got, err := h1.OVS.Vsctl("port-to-br", p.port); err != nil || got != p.br {
			t.Errorf("patch port %s on %q (%v), want %s", p.port, got, err, p.br)
		}
	}
	c1, err := cl.Attach(1, "c1", "")
	if err != nil {
		t.Fatal(err)
	}
	c2, err := cl.Attach(2, "c2", "")
	if err != nil {
		t.Fatal(err)
	}
	if err := c1.PingUntil(c2.IP.String(), 20*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := c2.Ping(c1.IP.String(), 3); err != nil {
		t.Fatal(err)
	}
	out, err = h2.Ctl("hosts", "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	var hs []api.Host
	if err := json.Unmarshal([]byte(out), &hs); err != nil {
		t.Fatal(err)
	}
	for _, h := range hs {
		want := map[string]string{"h1": "kr-int/kr-phy", "h2": "br-int/br-phy"}[h.Name]
		if got := h.Bridges.Integration + "/" + h.Bridges.Physical; got != want {
			t.Errorf("host %s publishes bridges %s, want %s", h.Name, got, want)
		}
	}
	intact("with keyroute running beside it")

	// Uninstall removes keyroute's bridges only.
	if err := h1.StopAgent(); err != nil {
		t.Fatal(err)
	}
	if out, err := h1.Exec(filepath.Join(cl.BinDir, "keyroute-agent"), "--config", h1.ConfigPath, "--uninstall"); err != nil {
		t.Fatalf("uninstall: %v\n%s", err, out)
	}
	if brs, _ := h1.OVS.Vsctl("list-br"); brs != "br-int" {
		t.Errorf("bridges after uninstall: %q, want only the foreign br-int", brs)
	}
	intact("after keyroute's uninstall")
}

// A trace on a cluster whose hosts use other bridge names (h1 kr-int and
// kr-phy, h2 the defaults) and another gateway MAC is built from each
// host's published names and the cluster's MAC: the packet carries the
// cluster's gateway MAC, each half runs on that host's bridges, and the
// verdict is the fast path delivered at the destination.
func TestTraceOtherLayout(t *testing.T) {
	const gwMAC = "0a:00:00:00:0a:0b"
	cl := testCluster(t, simcluster.Options{Mode: "rewrite", AgentConfig: func(i int, cfg map[string]any) {
		cfg["cluster"].(map[string]any)["gateway_mac"] = gwMAC
		cfg["cache"] = map[string]any{"send_idle": "60s"}
		if i == 1 {
			cfg["bridges"] = map[string]any{"integration": "kr-int", "physical": "kr-phy"}
		}
	}})
	c1, err := cl.Attach(1, "c1", "")
	if err != nil {
		t.Fatal(err)
	}
	c2, err := cl.Attach(2, "c2", "")
	if err != nil {
		t.Fatal(err)
	}
	if err := c1.PingUntil(c2.IP.String(), 20*time.Second); err != nil {
		t.Fatal(err)
	}
	trace1 := func(from *simcluster.Host, src, dst, peer string, peerHost *simcluster.Host) (trace.Result, error) {
		out, err := from.Ctl("trace", src, dst, "udp/5001", "--agents", peer+"="+peerHost.APISocket, "-o", "json")
		if err != nil {
			return trace.Result{}, err
		}
		var r trace.Result
		return r, json.Unmarshal([]byte(out), &r)
	}
	for _, d := range []struct {
		from, to         *simcluster.Host
		src, dst         *simcluster.Container
		srcInt, dstInt   string
		srcPhy, peerName string
	}{
		{cl.Host(1), cl.Host(2), c1, c2, "kr-int", "br-int", "kr-phy", "h2"},
		{cl.Host(2), cl.Host(1), c2, c1, "br-int", "kr-int", "br-phy", "h1"},
	} {
		var r trace.Result
		err := simhost.WaitFor(30*time.Second, func() error {
			d.src.Ping(d.dst.IP.String(), 1)
			var err error
			if r, err = trace1(d.from, d.src.Name, d.dst.Name, d.peerName, d.to); err != nil {
				return err
			}
			if r.Path != "fast-path" {
				return fmt.Errorf("trace %s -> %s: path %q (%s), want fast-path", d.src.Name, d.dst.Name, r.Path, r.Verdict)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(r.Source.Flow, "dl_dst="+gwMAC) {
			t.Errorf("%s -> %s: traced packet %s does not go to the cluster's gateway MAC %s", d.src.Name, d.dst.Name, r.Source.Flow, gwMAC)
		}
		if r.Source.Steps[0].Bridge != d.srcInt || r.Source.Steps[0].TableName != "Classify" {
			t.Errorf("%s -> %s: first source step %+v, want %s Classify", d.src.Name, d.dst.Name, r.Source.Steps[0], d.srcInt)
		}
		if !slices.ContainsFunc(r.Source.Steps, func(s api.TraceStep) bool { return s.Bridge == d.srcPhy && s.TableName == "Underlay" }) {
			t.Errorf("%s -> %s: source steps never reach %s's Underlay: %+v", d.src.Name, d.dst.Name, d.srcPhy, r.Source.Steps)
		}
		if r.Dest == nil || len(r.Dest.Steps) == 0 {
			t.Fatalf("%s -> %s: destination not traced: %s", d.src.Name, d.dst.Name, r.DestError)
		}
		last := r.Dest.Steps[len(r.Dest.Steps)-1]
		if last.Bridge != d.dstInt || last.TableName != "Deliver" || !strings.Contains(r.Verdict, "delivered by "+d.dstInt+" Deliver") {
			t.Errorf("%s -> %s: last destination step %+v, verdict %q; want delivered by %s Deliver", d.src.Name, d.dst.Name, last, r.Verdict, d.dstInt)
		}
	}
}
