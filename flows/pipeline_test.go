package flows

import (
	"flag"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/keyroute/keyroute/internal/testenv"
	"github.com/keyroute/keyroute/openflow"
)

var update = flag.Bool("update", false, "rewrite golden files")

func mac(s string) net.HardwareAddr {
	m, err := net.ParseMAC(s)
	if err != nil {
		panic(err)
	}
	return m
}

func testHost() Host {
	return Host{
		Name: "h1", IP: netip.MustParseAddr("198.18.0.1"), MAC: mac("02:00:00:00:00:01"),
		Subnet: netip.MustParsePrefix("198.19.1.0/24"), Gateway: netip.MustParseAddr("198.19.1.1"),
		GatewayMAC: mac("0a:00:00:00:00:01"), GatewayPortMAC: mac("0a:00:00:00:00:02"),
		Cluster: netip.MustParsePrefix("198.19.0.0/16"), VNI: 100,
		VXLANPort: 1, PatchPort: 2, GatewayPort: 3, UplinkPort: 1, PhyPatchPort: 2,
	}
}

func golden(t *testing.T, name string, fs []*openflow.FlowMod) {
	t.Helper()
	var b strings.Builder
	for _, f := range fs {
		b.WriteString(f.String())
		b.WriteByte('\n')
	}
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test ./flows -update to create it)", err)
	}
	if got := b.String(); got != string(want) {
		t.Errorf("%s differs from golden (go test ./flows -update, then review the diff):\n--- got\n%s--- want\n%s", name, got, want)
	}
}

func TestIntFlowsGolden(t *testing.T) {
	h := testHost()
	eps := []Endpoint{
		{Name: "a1", IP: netip.MustParseAddr("198.19.1.2"), MAC: mac("0a:58:c6:13:01:02"), Port: 4},
		{Name: "a2", IP: netip.MustParseAddr("198.19.1.3"), MAC: mac("0a:58:c6:13:01:03"), Port: 5},
	}
	peers := []Peer{{Name: "h2", IP: netip.MustParseAddr("198.18.0.2"), Subnet: netip.MustParsePrefix("198.19.2.0/24")}}
	roaming := []Roaming{
		{IP: netip.MustParseAddr("198.19.2.9"), Host: nil},
		{IP: netip.MustParseAddr("198.19.1.9"), Host: &peers[0]},
	}
	golden(t, "br-int.txt", IntFlows(h, eps, peers, roaming))
}

func TestPhyPipelineGolden(t *testing.T) {
	golden(t, "br-phy.txt", PhyPipeline(testHost()))
}

// Every flow must be unique by (table, priority, match): the controller's
// desired state is keyed that way, and a duplicate would make two owners
// of one OVS flow.
func TestFlowsUniqueAndCategorised(t *testing.T) {
	h := testHost()
	var eps []Endpoint
	for i := 2; i < 40; i++ {
		ip := netip.AddrFrom4([4]byte{198, 19, 1, byte(i)})
		eps = append(eps, Endpoint{Name: ip.String(), IP: ip, MAC: mac("0a:58:c6:13:01:02"), Port: uint32(i + 2)})
	}
	peers := []Peer{
		{Name: "h2", IP: netip.MustParseAddr("198.18.0.2"), Subnet: netip.MustParsePrefix("198.19.2.0/24")},
		{Name: "h3", IP: netip.MustParseAddr("198.18.0.3"), Subnet: netip.MustParsePrefix("198.19.3.0/24")},
	}
	seen := map[string]bool{}
	for _, f := range IntFlows(h, eps, peers, []Roaming{{IP: netip.MustParseAddr("198.19.3.7")}}) {
		k := f.String()
		k = k[:strings.Index(k, " actions=")]
		if i := strings.Index(k, ",cookie="); i >= 0 {
			j := strings.IndexByte(k[i+1:], ',')
			if j < 0 {
				k = k[:i]
			} else {
				k = k[:i] + k[i+1+j:]
			}
		}
		if seen[k] {
			t.Errorf("duplicate flow %s", k)
		}
		seen[k] = true
		if !Owned(f.Cookie) {
			t.Errorf("flow %s has a cookie with no category", f)
		}
		if _, err := openflow.Marshal(f, 1); err != nil {
			t.Errorf("flow %s does not encode: %v", f, err)
		}
	}
}

func TestCookie(t *testing.T) {
	c := Cookie(CatEndpoint, 0xc6130102)
	if c != 0x03000000c6130102 || CookieCategory(c) != CatEndpoint || CookieID(c) != 0xc6130102 {
		t.Fatalf("cookie 0x%x", c)
	}
	if CookieCategory(c).String() != "endpoint" || Owned(0) || Owned(0xff<<56) {
		t.Fatal("category words / ownership wrong")
	}
}

func TestParseTable(t *testing.T) {
	for in, want := range map[string]Table{"Forward": Forward, "forward": Forward, "9": Deliver, "0": Classify} {
		if got, err := ParseTable(in); err != nil || got != want {
			t.Errorf("ParseTable(%q) = %v, %v", in, got, err)
		}
	}
	if _, err := ParseTable("Nope"); err == nil || !strings.Contains(err.Error(), "Classify") {
		t.Errorf("unknown table error should list names, got %v", err)
	}
}

// The golden files must be flows OVS itself accepts, so a user can paste a
// line into ovs-ofctl add-flow.
func TestGoldenParsesInOVS(t *testing.T) {
	testenv.Require(t, "ovs-ofctl")
	for _, name := range []string{"br-int.txt", "br-phy.txt", "rewrite.txt"} {
		out, err := exec.Command("ovs-ofctl", "-O", "OpenFlow13", "parse-flows", filepath.Join("testdata", name)).CombinedOutput()
		if err != nil {
			t.Errorf("ovs-ofctl parse-flows %s: %v\n%s", name, err, out)
		}
	}
}

func TestRewriteFlowsGolden(t *testing.T) {
	h := testHost()
	r := Rewrite{SendIdle: 10 * time.Second, Keys: []uint8{1, 2, 63}, ProbePort: 9473}
	peer := Peer{Name: "h2", IP: netip.MustParseAddr("198.18.0.2"), Subnet: netip.MustParsePrefix("198.19.2.0/24")}
	p := Pair{Src: netip.MustParseAddr("198.19.1.2"), Dst: netip.MustParseAddr("198.19.2.2"), Peer: peer, Key: 2, NextHop: mac("02:00:00:00:00:02")}
	var fs []*openflow.FlowMod
	fs = append(fs, RewritePipeline(h)...)
	fs = append(fs, RewritePeerFlows(h, peer)...)
	for _, st := range []CacheState{CachePending, CacheReady} {
		fs = append(fs, CacheFlow(h, r, p, st))
	}
	fb := p
	fb.Key = 0
	fs = append(fs, CacheFlow(h, r, fb, CacheFallback))
	fs = append(fs, RestoreFlow(h, peer.IP, 2, netip.MustParseAddr("198.19.2.2"), netip.MustParseAddr("198.19.1.2")))
	fs = append(fs, PhyRewriteFlows(h, r, []Peer{peer})...)
	golden(t, "rewrite.txt", fs)
	// Key DSCPs are cleared only on the host's traffic towards a peer
	// host: no Underlay flow matches a DSCP, and LOCAL's traffic reaches
	// UnderlayClear only with a peer's address as destination.
	for _, f := range PhyRewriteFlows(h, r, []Peer{peer}) {
		txt := f.String()
		if f.Table == uint8(Underlay) && strings.Contains(txt, "nw_tos") {
			t.Errorf("Underlay flow matches a DSCP: %s", txt)
		}
		if strings.Contains(txt, "goto_table:2") && !strings.Contains(txt, "nw_dst=198.18.0.2") {
			t.Errorf("flow to UnderlayClear without a peer destination: %s", txt)
		}
	}
	// The ready entry rewrites to host addresses with the key and leaves
	// un-encapsulated; the restore entry undoes exactly that.
	ready := CacheFlow(h, r, p, CacheReady).String()
	for _, want := range []string{"nw_tos=0", "set_field:198.18.0.1->ip_src", "set_field:198.18.0.2->ip_dst", "set_field:2->ip_dscp", "output:2", "idle_timeout=10", "send_flow_rem"} {
		if !strings.Contains(ready, want) {
			t.Errorf("ready entry lacks %q: %s", want, ready)
		}
	}
	if CacheCookie(peer.IP, 2) != Cookie(CatCache, 0xc612000202) {
		t.Errorf("cache cookie 0x%x", CacheCookie(peer.IP, 2))
	}
}
