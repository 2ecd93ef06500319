package trace

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/keyroute/keyroute/api"
	"github.com/keyroute/keyroute/hostlayout"
)

// The testdata files are ofproto/trace answers captured from a live
// rewrite-mode cluster (OVS 3.1): h1's a1 (198.19.0.2, port 4) sends to
// h2's b1 (ready cache entry, key 1) and b2 (no entry yet).
func load(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestParseFastPath(t *testing.T) {
	tr, err := ParseOFProto(hostlayout.Default(), "br-int", load(t, "fastpath-src.txt"))
	if err != nil {
		t.Fatal(err)
	}
	if tr.Verdict != api.VerdictOutput || len(tr.Steps) != 5 {
		t.Fatalf("verdict %s, %d steps: %+v", tr.Verdict, len(tr.Steps), tr.Steps)
	}
	c := tr.Steps[3]
	if c.TableName != "EgressCache" || c.Priority != 100 || c.Category != "cache" || c.Cookie != "0x70000c612000201" ||
		c.Match != "ip,nw_src=198.19.0.2,nw_dst=198.19.1.2,nw_tos=0" || len(c.Actions) != 6 || c.Actions[4] != "set_field:1->ip_dscp" {
		t.Errorf("cache step %+v", c)
	}
	if u := tr.Steps[4]; u.Bridge != "br-phy" || u.TableName != "Underlay" || u.Category != "underlay" {
		t.Errorf("br-phy step %+v", u)
	}
	if tr.Steps[2].Match != "(any)" || tr.Steps[2].TableName != "EgressRules" || tr.Steps[0].Category != "endpoint" {
		t.Errorf("steps %+v", tr.Steps[:3])
	}
	h, err := FinalHeader(tr.FinalFlow)
	if err != nil || h.Src.String() != "198.18.0.1" || h.Dst.String() != "198.18.0.2" || h.DSCP != 1 || h.Proto != 17 || h.SPort != 1000 || h.DPort != 2000 {
		t.Errorf("final header %+v, %v", h, err)
	}
	if tr.Tunnel != nil || tr.DropStep != -1 {
		t.Errorf("tunnel %+v, drop %d", tr.Tunnel, tr.DropStep)
	}
}

func TestParseVXLAN(t *testing.T) {
	tr, err := ParseOFProto(hostlayout.Default(), "br-int", load(t, "vxlan-src.txt"))
	if err != nil {
		t.Fatal(err)
	}
	if tr.Verdict != api.VerdictTunnel || tr.Tunnel == nil {
		t.Fatalf("verdict %s tunnel %+v", tr.Verdict, tr.Tunnel)
	}
	tun := *tr.Tunnel
	if tun.VNI != 100 || tun.Src != "198.18.0.1" || tun.Dst != "198.18.0.2" || tun.UDPDst != 4789 || tun.DstMAC != "02:00:00:00:00:02" || !tun.SportTBD {
		t.Errorf("tunnel %+v", tun)
	}
	punt := tr.Steps[3]
	if punt.Category != "punt" || punt.Actions[0] != "controller(userdata=01,meter_id=1)" {
		t.Errorf("punt step %+v", punt)
	}
	fwd := tr.Steps[4]
	if fwd.TableName != "Forward" || fwd.Category != "subnet" || len(fwd.Notes) != 3 || !strings.Contains(fwd.Notes[1], "tunneling to 198.18.0.2") {
		t.Errorf("forward step %+v", fwd)
	}
	if tr.Steps[5].Match != "in_port=LOCAL" {
		t.Errorf("br-phy step %+v", tr.Steps[5])
	}
}

func TestParseDrop(t *testing.T) {
	tr, err := ParseOFProto(hostlayout.Default(), "br-int", load(t, "spoof-drop.txt"))
	if err != nil {
		t.Fatal(err)
	}
	if tr.Verdict != api.VerdictDrop || tr.DropStep != 1 || tr.Steps[1].TableName != "SpoofGuard" || tr.Steps[1].Category != "pipeline" {
		t.Fatalf("verdict %s drop step %d: %+v", tr.Verdict, tr.DropStep, tr.Steps)
	}
}

func TestParseDestination(t *testing.T) {
	tr, err := ParseOFProto(hostlayout.Default(), "br-phy", load(t, "fastpath-dst.txt"))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, s := range tr.Steps {
		names = append(names, s.Bridge+"/"+s.TableName+"/"+s.Category)
	}
	want := "br-phy/Underlay/peer br-phy/UnderlayKeys/underlay br-int/Classify/pipeline br-int/Restore/restore br-int/IngressRules/pipeline br-int/Deliver/endpoint"
	if strings.Join(names, " ") != want || tr.Verdict != api.VerdictOutput {
		t.Errorf("steps %v verdict %s", names, tr.Verdict)
	}
	tr, err = ParseOFProto(hostlayout.Default(), "br-int", load(t, "vxlan-dst.txt"))
	if err != nil || tr.Steps[1].TableName != "TunnelIn" || tr.Verdict != api.VerdictOutput {
		t.Errorf("vxlan dst: %+v %v", tr, err)
	}
}

func TestParseErrors(t *testing.T) {
	if _, err := ParseOFProto(hostlayout.Default(), "br-int", "Bad openflow flow syntax: x"); err == nil || !strings.Contains(err.Error(), "Bad openflow") {
		t.Errorf("error %v", err)
	}
}

// A cache miss towards an address no host holds (hand-written in the
// format of the captured files): a copy is punted to the
// agent, the packet itself is dropped by Forward.
func TestParsePuntThenDrop(t *testing.T) {
	tr, err := ParseOFProto(hostlayout.Default(), "br-int", load(t, "punt-drop.txt"))
	if err != nil {
		t.Fatal(err)
	}
	if tr.Verdict != api.VerdictDrop || tr.DropStep != len(tr.Steps)-1 || tr.Steps[tr.DropStep].TableName != "Forward" {
		t.Errorf("verdict %s, drop step %d: %+v", tr.Verdict, tr.DropStep, tr.Steps)
	}
}

// A host with other bridge names (bridges.*) reads the same: table names
// follow the bridge's role, not its name.
func TestParseOtherBridgeNames(t *testing.T) {
	raw := strings.NewReplacer("br-int", "kr-int", "br-phy", "kr-phy").Replace(load(t, "fastpath-dst.txt"))
	tr, err := ParseOFProto(hostlayout.Bridges{Integration: "kr-int", Physical: "kr-phy"}, "kr-phy", raw)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, s := range tr.Steps {
		got = append(got, s.Bridge+"/"+s.TableName)
	}
	want := "kr-phy/Underlay kr-phy/UnderlayKeys kr-int/Classify kr-int/Restore kr-int/IngressRules kr-int/Deliver"
	if strings.Join(got, " ") != want {
		t.Errorf("steps %v, want %s", got, want)
	}
	// The default names mean nothing on such a host.
	tr, _ = ParseOFProto(hostlayout.Default(), "kr-phy", raw)
	if tr.Steps[0].TableName != "table0" {
		t.Errorf("kr-phy read with default names: table %q, want table0", tr.Steps[0].TableName)
	}
}
