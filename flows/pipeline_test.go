package flows

import (
	"flag"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/keyroute/keyroute/hostlayout"
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
		GatewayMAC: mac("0a:00:00:00:00:01"), GatewayPortMAC: hostlayout.GatewayPortMAC,
		Cluster: netip.MustParsePrefix("198.19.0.0/16"), VNI: 100,
		VXLANPort: hostlayout.OFPortVXLAN, PatchPort: hostlayout.OFPortPatch, GatewayPort: hostlayout.OFPortGateway,
		UplinkPort: hostlayout.OFPortUplink, PhyPatchPort: hostlayout.OFPortPhysicalPatch,
		TunnelUDPPort: 4789, ProtectedTCPPorts: []uint16{2379, 2380, 9476}, TunnelMTU: 1450,
	}
}

// bridgeFlows are one bridge's flows and its table names: golden files
// print table numbers by name, as `ovs-ofctl --names dump-flows` does
// once the agent has named the tables in OVSDB.
type bridgeFlows struct {
	tables map[uint8]string
	flows  []*openflow.FlowMod
}

func intFlows(fs []*openflow.FlowMod) bridgeFlows { return bridgeFlows{IntTableNames(), fs} }
func phyFlows(fs []*openflow.FlowMod) bridgeFlows { return bridgeFlows{PhyTableNames(), fs} }

var tableRefRE = regexp.MustCompile(`^table=(\d+)|goto_table:(\d+)`)

// namedTables rewrites a flow's table numbers (table=N, goto_table:N) as
// names; numbers without a name stay numbers, as in ovs-ofctl.
func namedTables(line string, names map[uint8]string) string {
	return tableRefRE.ReplaceAllStringFunc(line, func(ref string) string {
		i := strings.LastIndexAny(ref, "=:")
		n, err := strconv.ParseUint(ref[i+1:], 10, 8)
		if name, ok := names[uint8(n)]; ok && err == nil {
			return ref[:i+1] + name
		}
		return ref
	})
}

// numberedTables undoes namedTables, as `ovs-ofctl --names` does with the
// table names it reads from the switch. The two bridges' names differ, so
// a name alone says its number.
func numberedTables(line string) string {
	for _, names := range []map[uint8]string{IntTableNames(), PhyTableNames()} {
		for n, name := range names {
			line = regexp.MustCompile(`(^table=|goto_table:)`+name+`\b`).ReplaceAllString(line, "${1}"+strconv.Itoa(int(n)))
		}
	}
	return line
}

// parsesInOVS checks that ovs-ofctl accepts every flow of a golden file.
// parse-flows has no switch to read table names from, so the lines go to
// it numbered.
func parsesInOVS(t *testing.T, name string) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	var lines []string
	for _, l := range strings.SplitAfter(string(b), "\n") {
		lines = append(lines, numberedTables(l))
	}
	numbered := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(numbered, []byte(strings.Join(lines, "")), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("ovs-ofctl", "-O", "OpenFlow13", "parse-flows", numbered).CombinedOutput()
	if err != nil {
		t.Errorf("ovs-ofctl parse-flows %s: %v\n%s", name, err, out)
	}
}

func golden(t *testing.T, name string, parts ...bridgeFlows) {
	t.Helper()
	var b strings.Builder
	for _, p := range parts {
		for _, f := range p.flows {
			b.WriteString(namedTables(f.String(), p.tables))
			b.WriteByte('\n')
		}
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
	golden(t, "br-int.txt", intFlows(IntFlows(h, eps, peers, roaming)))
}

func TestPhyPipelineGolden(t *testing.T) {
	golden(t, "br-phy.txt", phyFlows(PhyPipeline(testHost())))
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

func TestParseIntTable(t *testing.T) {
	for in, want := range map[string]IntTable{"Forward": Forward, "forward": Forward, "9": Deliver, "0": Classify} {
		if got, err := ParseIntTable(in); err != nil || got != want {
			t.Errorf("ParseIntTable(%q) = %v, %v", in, got, err)
		}
	}
	if _, err := ParseIntTable("Nope"); err == nil || !strings.Contains(err.Error(), "Classify") {
		t.Errorf("unknown table error should list names, got %v", err)
	}
}

// The golden files must be flows OVS itself accepts, so a user can paste a
// line into ovs-ofctl add-flow.
func TestGoldenParsesInOVS(t *testing.T) {
	testenv.Require(t, "ovs-ofctl")
	for _, name := range []string{"br-int.txt", "br-phy.txt", "rewrite.txt", "rewrite-multi.txt"} {
		parsesInOVS(t, name)
	}
}

func TestRewriteFlowsGolden(t *testing.T) {
	h := testHost()
	r := Rewrite{SendIdle: 10 * time.Second, FallbackRetry: 30 * time.Second, Keys: []uint8{1, 2, 63}, ProbePort: 9473}
	peer := Peer{Name: "h2", IP: netip.MustParseAddr("198.18.0.2"), Subnet: netip.MustParsePrefix("198.19.2.0/24")}
	p := Pair{Src: netip.MustParseAddr("198.19.1.2"), Dst: netip.MustParseAddr("198.19.2.2"), Peer: peer, Key: Key{Src: h.IP, Dst: peer.IP, DSCP: 2}, NextHop: mac("02:00:00:00:00:02")}
	var fs []*openflow.FlowMod
	fs = append(fs, RewritePipeline(h)...)
	fs = append(fs, RewritePeerFlows(h, peer)...)
	for _, st := range []CacheState{CachePending, CacheReady} {
		fs = append(fs, CacheFlow(h, r, p, st))
	}
	fb := p
	fb.Key = Key{}
	fs = append(fs, CacheFlow(h, r, fb, CacheFallback))
	fs = append(fs, RestoreFlow(h, Key{Src: peer.IP, Dst: h.IP, DSCP: 2}, netip.MustParseAddr("198.19.2.2"), netip.MustParseAddr("198.19.1.2")))
	golden(t, "rewrite.txt", intFlows(fs), phyFlows(PhyRewriteFlows(h, r, []Peer{peer})))
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
	if c := CacheCookie(h, peer.IP, p.Key); c != Cookie(CatCache, 0xc612000202) {
		t.Errorf("cache cookie 0x%x", c)
	}
}

// Two key addresses a host: the ready entry leaves from and to the key's
// addresses, the restore entry matches exactly its key, br-phy admits
// keyed packets from every peer address to every own one and clears key
// DSCPs towards every peer address; cookies name the whole key.
func TestRewriteFlowsMultiAddrGolden(t *testing.T) {
	h := testHost()
	h.UnderlayIPs = []netip.Addr{netip.MustParseAddr("198.18.1.1")}
	r := Rewrite{SendIdle: 10 * time.Second, FallbackRetry: 30 * time.Second, Keys: []uint8{2}}
	peer := Peer{Name: "h2", IP: netip.MustParseAddr("198.18.0.2"), Subnet: netip.MustParsePrefix("198.19.2.0/24"),
		UnderlayIPs: []netip.Addr{netip.MustParseAddr("198.18.1.2")}}
	k := Key{Src: netip.MustParseAddr("198.18.1.1"), Dst: netip.MustParseAddr("198.18.1.2"), DSCP: 2}
	p := Pair{Src: netip.MustParseAddr("198.19.1.2"), Dst: netip.MustParseAddr("198.19.2.2"), Peer: peer, Key: k, NextHop: mac("02:00:00:00:00:02")}
	back := Key{Src: netip.MustParseAddr("198.18.1.2"), Dst: netip.MustParseAddr("198.18.0.1"), DSCP: 2}
	fs := []*openflow.FlowMod{CacheFlow(h, r, p, CacheReady), RestoreFlow(h, back, p.Dst, p.Src)}
	golden(t, "rewrite-multi.txt", intFlows(fs), phyFlows(PhyRewriteFlows(h, r, []Peer{peer})))
	ready := fs[0].String()
	for _, want := range []string{"set_field:198.18.1.1->ip_src", "set_field:198.18.1.2->ip_dst", "set_field:2->ip_dscp"} {
		if !strings.Contains(ready, want) {
			t.Errorf("ready entry lacks %q: %s", want, ready)
		}
	}
	restore := fs[1].String()
	for _, want := range []string{"nw_src=198.18.1.2", "nw_dst=198.18.0.1", "nw_tos=8"} {
		if !strings.Contains(restore, want) {
			t.Errorf("restore entry lacks %q: %s", want, restore)
		}
	}
	admit := 0
	for _, f := range PhyRewriteFlows(h, r, []Peer{peer}) {
		if f.Table == uint8(Underlay) && strings.Contains(f.String(), "goto_table:1") {
			admit++
		}
	}
	if admit != 4 {
		t.Errorf("%d admission flows from the uplink, want 2×2", admit)
	}
	for _, c := range []struct {
		cookie uint64
		want   Key
	}{{fs[0].Cookie, k}, {fs[1].Cookie, back}} {
		if _, got := CookieKey(h, c.cookie); got != c.want {
			t.Errorf("CookieKey(0x%x) = %s, want %s", c.cookie, got, c.want)
		}
	}
}

// Addresses that are not IPv4 never reach the datapath: the builders leave
// their input out (counted) instead of panicking in ip4ID or producing a
// flow the switch would refuse, and every other flow is still built and
// encodes.
func TestNonIPv4InputsSkipped(t *testing.T) {
	h := testHost()
	v6 := netip.MustParseAddr("2001:db8::1")
	good := Peer{Name: "h2", IP: netip.MustParseAddr("198.18.0.2"), Subnet: netip.MustParsePrefix("198.19.2.0/24")}
	evil := Peer{Name: "evil", IP: v6, Subnet: netip.MustParsePrefix("198.19.9.0/24")}
	evilNet := Peer{Name: "evil2", IP: netip.MustParseAddr("198.18.0.9"), Subnet: netip.MustParsePrefix("fd00::/64")}
	peers := []Peer{good, evil, evilNet}
	eps := []Endpoint{
		{Name: "a1", IP: netip.MustParseAddr("198.19.1.2"), MAC: mac("0a:58:c6:13:01:02"), Port: 4},
		{Name: "v6", IP: v6, MAC: mac("0a:58:c6:13:01:03"), Port: 5},
		{Name: "nomac", IP: netip.MustParseAddr("198.19.1.4"), Port: 6},
	}
	roaming := []Roaming{
		{IP: netip.MustParseAddr("2001:db8::5")},
		{IP: netip.MustParseAddr("198.19.1.9"), Host: &evil},
		{IP: netip.MustParseAddr("198.19.2.9")},
	}
	if id := ip4ID(v6); id != 0 {
		t.Errorf("ip4ID(%s) = %d, want 0", v6, id)
	}
	if id := ip4ID(netip.MustParseAddr("::ffff:1.2.3.4")); id != 0x01020304 {
		t.Errorf("ip4ID of a 4in6 address = %#x", id)
	}
	before := SkippedInputs()
	fs := IntFlows(h, eps, peers, roaming)
	fs = append(fs, RewritePeerFlows(h, evil)...)
	fs = append(fs, PhyRewriteFlows(h, Rewrite{Keys: []uint8{5}}, peers)...)
	// 2 peers, 2 endpoints, 2 roaming addresses, and 1 + 2 rewrite peers.
	if n := SkippedInputs() - before; n != 9 {
		t.Errorf("SkippedInputs moved by %d, want 9", n)
	}
	want := len(IntFlows(h, eps[:1], peers[:1], roaming[2:])) + len(PhyRewriteFlows(h, Rewrite{Keys: []uint8{5}}, peers[:1]))
	if len(fs) != want {
		t.Errorf("%d flows, want %d (those of the IPv4 inputs)", len(fs), want)
	}
	for _, f := range fs {
		if _, err := f.AppendBody(nil); err != nil {
			t.Errorf("flow %s does not encode: %v", f, err)
		}
	}
}

func TestGuardFlows(t *testing.T) {
	h := testHost()
	peers := []Peer{{Name: "h2", IP: netip.MustParseAddr("198.18.0.2"), Subnet: netip.MustParsePrefix("198.19.2.0/24")}}
	fs := GuardFlows(h, peers)
	// 2 own addresses x 3 TCP ports, VXLAN to 2 own addresses + 1 peer.
	if len(fs) != 9 {
		t.Fatalf("got %d guard flows, want 9", len(fs))
	}
	for _, f := range fs {
		if f.Table != uint8(SpoofGuard) || f.Priority <= prioNormal || len(f.Instructions) != 0 {
			t.Errorf("guard flow %s: want a drop in SpoofGuard above the endpoint accepts", f)
		}
		if CookieCategory(f.Cookie) != CatGuard {
			t.Errorf("guard flow %s: category %s", f, CookieCategory(f.Cookie))
		}
	}
	dst, proto, port := GuardTarget(GuardCookie(netip.MustParseAddr("198.18.0.2"), 17, 4789))
	if dst != netip.MustParseAddr("198.18.0.2") || proto != 17 || port != 4789 {
		t.Errorf("GuardTarget round trip: %v %d %d", dst, proto, port)
	}
	h.ProtectedTCPPorts, h.TunnelUDPPort = nil, 0
	if fs := GuardFlows(h, peers); len(fs) != 0 {
		t.Errorf("no ports: got %d flows", len(fs))
	}
}
