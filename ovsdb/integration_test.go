package ovsdb

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/keyroute/keyroute/simhost"
)

// requireOVS skips (or, in CI / with KEYROUTE_REQUIRE_INTEGRATION=1, fails)
// when the test cannot run a private Open vSwitch.
func requireOVS(t testing.TB) {
	t.Helper()
	var missing []string
	if os.Geteuid() != 0 {
		missing = append(missing, "root")
	}
	for _, bin := range []string{"ovsdb-server", "ovs-vswitchd", "ovsdb-tool", "ovs-vsctl", "ovs-ofctl", "ip", "ethtool"} {
		if _, err := exec.LookPath(bin); err != nil {
			missing = append(missing, bin)
		}
	}
	if _, err := os.Stat(simhost.SchemaPath); err != nil {
		missing = append(missing, simhost.SchemaPath)
	}
	if len(missing) == 0 {
		return
	}
	if os.Getenv("CI") == "true" || os.Getenv("KEYROUTE_REQUIRE_INTEGRATION") == "1" {
		t.Fatalf("integration test needs %s", strings.Join(missing, ", "))
	}
	t.Skipf("integration test needs %s", strings.Join(missing, ", "))
}

var nsSeq atomic.Int32

// startHost starts a private OVS with ovs-vswitchd in a fresh namespace
// krd-<pid>-<n>; both go away when the test ends.
func startHost(t testing.TB) (*simhost.OVS, *simhost.NetNS) {
	t.Helper()
	requireOVS(t)
	ns, err := simhost.NewNetNS(fmt.Sprintf("krd-%d-%d", os.Getpid(), nsSeq.Add(1)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Delete() })
	o, err := simhost.StartOVS(t.TempDir(), ns.Name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { o.Stop() })
	return o, ns
}

func dialHost(t testing.TB, o *simhost.OVS, opts Options) *Client {
	t.Helper()
	if opts.Logger == nil {
		opts.Logger = quiet()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := Dial(ctx, "unix:"+o.DBSock(), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func mustMAC(s string) net.HardwareAddr {
	hw, err := net.ParseMAC(s)
	if err != nil {
		panic(err)
	}
	return hw
}

// writeCounter counts the write transactions one client sends, as
// ovsdb-server's jsonrpc debug log records them: unlike a monitor, this also
// sees writes that store a value the column already had.
type writeCounter struct {
	o       *simhost.OVS
	c       *Client
	logPath string
	seq     int
}

func newWriteCounter(t *testing.T, o *simhost.OVS, c *Client) *writeCounter {
	t.Helper()
	if _, err := simhost.RunEnv(o.Env(), "ovs-appctl", "-t", filepath.Join(o.RunDir(), "ovsdb-server.ctl"),
		"vlog/set", "jsonrpc:file:dbg"); err != nil {
		t.Fatal(err)
	}
	return &writeCounter{o: o, c: c, logPath: filepath.Join(o.Dir, "log", "ovsdb-server.log")}
}

var writeOp = regexp.MustCompile(`"op":"(insert|update|mutate|delete)"`)

// count runs f and returns how many transactions with a write operation the
// client sent meanwhile; comment operations mark the start and the end.
func (w *writeCounter) count(t *testing.T, ctx context.Context, f func()) int {
	t.Helper()
	w.seq++
	start, end := fmt.Sprintf("krd-start-%d", w.seq), fmt.Sprintf("krd-end-%d", w.seq)
	if _, err := w.c.Transact(ctx, DB, Comment(start)); err != nil {
		t.Fatal(err)
	}
	f()
	if _, err := w.c.Transact(ctx, DB, Comment(end)); err != nil {
		t.Fatal(err)
	}
	var lines []string
	// ovsdb-server writes its log asynchronously.
	if err := simhost.WaitFor(10*time.Second, func() error {
		b, err := os.ReadFile(w.logPath)
		if err != nil {
			return err
		}
		i, j := bytes.Index(b, []byte(start)), bytes.Index(b, []byte(end))
		if i < 0 || j < 0 {
			return errors.New("markers not logged yet")
		}
		i = bytes.LastIndexByte(b[:i], '\n') + 1
		lines = strings.Split(string(b[i:j]), "\n")
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	// "...|jsonrpc|DBG|unix#7: received request, method=..." — keep our connection only.
	conn := lines[0][:strings.Index(lines[0], ": received")]
	conn = conn[strings.LastIndexByte(conn, '|')+1:]
	n := 0
	for _, l := range lines {
		if strings.Contains(l, "|"+conn+": received request, method=\"transact\"") && writeOp.MatchString(l) {
			n++
		}
	}
	return n
}

// rowUUIDs maps "Table/name" to the row UUID for every named row we manage.
func rowUUIDs(t *testing.T, ctx context.Context, c *Client) map[string]UUID {
	t.Helper()
	tables := []string{"Bridge", "Port", "Interface", "Flow_Table"}
	var ops []Operation
	for _, tb := range tables {
		ops = append(ops, Select(tb, nil, "_uuid", "name"))
	}
	res, err := c.Transact(ctx, DB, ops...)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]UUID{}
	for i, tb := range tables {
		for _, r := range res[i].Rows {
			out[tb+"/"+r.String("name")] = r.UUID()
		}
	}
	return out
}

func TestIntegrationEnsure(t *testing.T) {
	o, ns := startHost(t)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	const owner = "krd-test"
	c := dialHost(t, o, Options{Owner: owner})
	if err := simhost.AddVeth("sys0", ns.Name, "sys0p", ns.Name); err != nil {
		t.Fatal(err)
	}

	// ofports as a monitor sees them
	var ofMu sync.Mutex
	ofports := map[string]int64{}
	if _, err := c.Monitor(ctx, DB, map[string][]string{"Interface": {"name", "ofport"}}, func(u TableUpdates) {
		ofMu.Lock()
		defer ofMu.Unlock()
		for _, ru := range u["Interface"] {
			if ru.New == nil {
				delete(ofports, ru.Old.String("name"))
			} else {
				ofports[ru.New.String("name")] = ru.New.Int("ofport")
			}
		}
	}); err != nil {
		t.Fatal(err)
	}
	writes := newWriteCounter(t, o, c)

	bridges := []BridgeSpec{
		{Name: "br-int", DatapathType: "netdev", HWAddr: mustMAC("02:00:00:00:00:01"),
			TableNames:  map[uint8]string{0: "Classify", 1: "SpoofGuard", 2: "EgressRules"},
			ExternalIDs: map[string]string{"role": "integration"}},
		{Name: "br-phy", DatapathType: "netdev", HWAddr: mustMAC("02:00:00:00:00:02"),
			OtherConfig: map[string]string{"disable-in-band": "true"}},
	}
	type portOn struct {
		bridge string
		spec   PortSpec
	}
	ports := []portOn{
		{"br-int", PortSpec{Name: "sys0", OFPortRequest: 1, ExternalIDs: map[string]string{"container": "c1"}}},
		{"br-int", PortSpec{Name: "gw0", Type: "internal", MAC: "02:00:00:00:AA:01", OFPortRequest: 2, MTURequest: 1400}},
		{"br-int", PortSpec{Name: "patch-phy", Type: "patch", Options: map[string]string{"peer": "patch-int"}, OFPortRequest: 3}},
		{"br-int", PortSpec{Name: "vx0", Type: "vxlan", OFPortRequest: 4,
			Options: map[string]string{"remote_ip": "flow", "key": "flow", "local_ip": "198.18.0.1"}}},
		{"br-phy", PortSpec{Name: "patch-int", Type: "patch", Options: map[string]string{"peer": "patch-phy"}, OFPortRequest: 2}},
	}
	ensureAll := func() {
		t.Helper()
		for _, b := range bridges {
			if err := c.EnsureBridge(ctx, b); err != nil {
				t.Fatal(err)
			}
		}
		for _, p := range ports {
			if err := c.EnsurePort(ctx, p.bridge, p.spec); err != nil {
				t.Fatal(err)
			}
		}
	}
	if n := writes.count(t, ctx, ensureAll); n != len(bridges)+len(ports) {
		t.Errorf("first ensure round sent %d write transactions, want one per object (%d)", n, len(bridges)+len(ports))
	}

	for _, p := range ports {
		got, err := c.WaitOFPort(ctx, p.spec.Name)
		if err != nil || got != uint32(p.spec.OFPortRequest) {
			t.Errorf("WaitOFPort(%s) = %d, %v; want %d", p.spec.Name, got, err, p.spec.OFPortRequest)
		}
	}
	if err := simhost.WaitFor(10*time.Second, func() error {
		ofMu.Lock()
		defer ofMu.Unlock()
		for _, p := range ports {
			if ofports[p.spec.Name] != int64(p.spec.OFPortRequest) {
				return fmt.Errorf("monitor: ofport of %s = %d, want %d", p.spec.Name, ofports[p.spec.Name], p.spec.OFPortRequest)
			}
		}
		return nil
	}); err != nil {
		t.Error(err)
	}

	// What ovs-ofctl and ovs-vsctl say.
	desc, err := o.Ofctl("--names", "dump-ports-desc", "br-int")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{" 1(sys0): ", " 2(gw0): addr:02:00:00:00:aa:01", " 3(patch-phy): ", " 4(vx0): ", " LOCAL(br-int): addr:02:00:00:00:00:01"} {
		if !strings.Contains(desc, want) {
			t.Errorf("dump-ports-desc br-int lacks %q:\n%s", want, desc)
		}
	}
	if _, err := o.Ofctl("add-flow", "br-int", "table=Classify,priority=1,actions=goto_table:SpoofGuard"); err != nil {
		t.Fatal(err)
	}
	flows, err := o.Ofctl("--names", "dump-flows", "br-int")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(flows, "table=Classify,") || !strings.Contains(flows, "actions=goto_table:SpoofGuard") {
		t.Errorf("dump-flows --names does not show table names:\n%s", flows)
	}
	show, err := o.Vsctl("show")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"Bridge br-int\n        fail_mode: secure\n        datapath_type: netdev",
		"Bridge br-phy\n        fail_mode: secure\n        datapath_type: netdev",
		"Interface vx0\n                type: vxlan\n                options: {key=flow, local_ip=\"198.18.0.1\", remote_ip=flow}",
		"Interface patch-phy\n                type: patch\n                options: {peer=patch-int}",
		"Interface patch-int\n                type: patch\n                options: {peer=patch-phy}",
		"Interface gw0\n                type: internal",
	} {
		if !strings.Contains(show, want) {
			t.Errorf("ovs-vsctl show lacks %q:\n%s", want, show)
		}
	}
	for args, want := range map[[3]string]string{
		{"br-int", "protocols", ""}:                   `[OpenFlow13]`,
		{"br-int", "external_ids", ""}:                `{keyroute-owner=krd-test, role=integration}`,
		{"br-phy", "other_config", "hwaddr"}:          `"02:00:00:00:00:02"`,
		{"br-phy", "other_config", "disable-in-band"}: `"true"`,
	} {
		col := args[1]
		if args[2] != "" {
			col += ":" + args[2]
		}
		if got, err := o.Vsctl("get", "bridge", args[0], col); err != nil || got != want {
			t.Errorf("ovs-vsctl get bridge %s %s = %s, %v; want %s", args[0], col, got, err, want)
		}
	}

	if err := simhost.WaitFor(10*time.Second, func() error {
		if got, err := o.Vsctl("get", "interface", "gw0", "mtu"); err != nil || got != "1400" {
			return fmt.Errorf("ovs-vsctl get interface gw0 mtu = %s, %v; want the requested 1400", got, err)
		}
		return nil
	}); err != nil {
		t.Error(err)
	}

	list, err := c.ListPorts(ctx, "br-int")
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, p := range list {
		names = append(names, p.Name)
		switch p.Name {
		case "br-int":
			if p.OFPort != 65534 || p.Type != "internal" || p.MAC != "02:00:00:00:00:01" {
				t.Errorf("LOCAL port = %+v", p)
			}
		case "gw0":
			if p.MAC != "02:00:00:00:aa:01" || p.OFPort != 2 {
				t.Errorf("gw0 = %+v", p)
			}
		case "sys0":
			if p.ExternalIDs["container"] != "c1" || p.ExternalIDs[OwnerKey] != owner || p.Bridge != "br-int" || p.Error != "" {
				t.Errorf("sys0 = %+v", p)
			}
		}
	}
	if want := []string{"br-int", "gw0", "patch-phy", "sys0", "vx0"}; !slices.Equal(names, want) {
		t.Errorf("ListPorts(br-int) = %v, want %v", names, want)
	}
	if info, err := c.Interface(ctx, "vx0"); err != nil || info.Bridge != "br-int" || info.Type != "vxlan" || info.OFPort != 4 {
		t.Errorf("Interface(vx0) = %+v, %v", info, err)
	}
	if _, err := c.ListPorts(ctx, "br-nope"); !errors.Is(err, ErrNotFound) {
		t.Errorf("ListPorts(br-nope): err = %v, want ErrNotFound", err)
	}
	if dts, err := c.DatapathTypes(ctx); err != nil || !slices.Contains(dts, "netdev") {
		t.Errorf("DatapathTypes = %v, %v", dts, err)
	}

	// Second round: nothing to do, so nothing written and every row kept.
	before := rowUUIDs(t, ctx, c)
	if n := writes.count(t, ctx, ensureAll); n != 0 {
		t.Errorf("second ensure round sent %d write transactions, want 0", n)
	}
	if after := rowUUIDs(t, ctx, c); !reflect.DeepEqual(before, after) {
		t.Errorf("row UUIDs changed:\nbefore %v\nafter  %v", before, after)
	}

	// Updates happen in place.
	vx := ports[3].spec
	vx.Options = map[string]string{"remote_ip": "flow", "key": "flow", "local_ip": "198.18.0.1", "dst_port": "4790"}
	if err := c.EnsurePort(ctx, "br-int", vx); err != nil {
		t.Fatal(err)
	}
	if got, _ := o.Vsctl("get", "interface", "vx0", "options:dst_port"); got != `"4790"` {
		t.Errorf("vx0 dst_port = %s after update", got)
	}
	spec := bridges[0]
	spec.TableNames = map[uint8]string{0: "Classify", 1: "Spoof"}
	spec.FailMode = "standalone"
	if err := c.EnsureBridge(ctx, spec); err != nil {
		t.Fatal(err)
	}
	if got, _ := o.Vsctl("get", "bridge", "br-int", "fail_mode"); got != "standalone" {
		t.Errorf("fail_mode = %s after update", got)
	}
	if got, _ := o.Vsctl("--columns=name", "list", "flow_table"); strings.Contains(got, "EgressRules") || !strings.Contains(got, "Spoof") {
		t.Errorf("flow tables after rename: %s", got)
	}
	if after := rowUUIDs(t, ctx, c); after["Bridge/br-int"] != before["Bridge/br-int"] || after["Interface/vx0"] != before["Interface/vx0"] {
		t.Error("update replaced rows instead of changing them in place")
	}

	// A port on a missing device: WaitOFPort reports OVS's error text.
	if err := c.EnsurePort(ctx, "br-int", PortSpec{Name: "ghost0"}); err != nil {
		t.Fatal(err)
	}
	_, err = c.WaitOFPort(ctx, "ghost0")
	var pe *PortError
	if !errors.As(err, &pe) || err.Error() != "port ghost0 on br-int: could not open network device ghost0 (No such device)" {
		t.Errorf("WaitOFPort(ghost0) err = %v", err)
	}
	if err := c.DeletePort(ctx, "br-int", "ghost0"); err != nil {
		t.Fatal(err)
	}
	if err := c.DeletePort(ctx, "br-int", "ghost0"); !errors.Is(err, ErrNotFound) {
		t.Errorf("second DeletePort: err = %v, want ErrNotFound", err)
	}
	if _, err := c.WaitOFPort(ctx, "ghost0"); !errors.Is(err, ErrNotFound) {
		t.Errorf("WaitOFPort(deleted): err = %v, want ErrNotFound", err)
	}
	if _, err := c.Interface(ctx, "ghost0"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Interface(deleted): err = %v, want ErrNotFound", err)
	}
	if got, _ := o.Vsctl("list-ports", "br-int"); strings.Contains(got, "ghost0") {
		t.Errorf("ghost0 still on br-int: %s", got)
	}
	if err := c.EnsurePort(ctx, "br-nope", ports[0].spec); !errors.Is(err, ErrNotFound) {
		t.Errorf("EnsurePort on missing bridge: err = %v, want ErrNotFound", err)
	}

	// Moving: our port moves, a foreign one does not.
	if err := c.EnsurePort(ctx, "br-phy", ports[0].spec); err != nil {
		t.Fatal(err)
	}
	if got, _ := o.Vsctl("port-to-br", "sys0"); got != "br-phy" {
		t.Errorf("sys0 on %s after move, want br-phy", got)
	}
	if _, err := o.Vsctl("add-port", "br-int", "fp0", "--", "set", "interface", "fp0", "type=internal"); err != nil {
		t.Fatal(err)
	}
	if err := c.EnsurePort(ctx, "br-phy", PortSpec{Name: "fp0", Type: "internal"}); err == nil || !strings.Contains(err.Error(), "not owned") {
		t.Errorf("moving a foreign port: err = %v, want refusal", err)
	}

	// A per-operation error from the real server names the operation.
	_, err = c.Transact(ctx, DB, Comment("krd"), Insert("Interface", Row{"name": "bad0", "ofport_request": 70000}, ""))
	var oe *OpError
	if !errors.As(err, &oe) || !strings.HasPrefix(err.Error(), "transact op 1 (insert Interface): constraint violation: ") {
		t.Errorf("bad insert: err = %v", err)
	}

	// DeleteOwned removes our bridges and our ports on foreign bridges only.
	for _, args := range [][]string{
		{"add-br", "br-foreign", "--", "set", "bridge", "br-foreign", "datapath_type=netdev"},
		{"add-port", "br-foreign", "fp1", "--", "set", "interface", "fp1", "type=internal"},
		{"add-br", "br-other", "--", "set", "bridge", "br-other", "datapath_type=netdev", "external_ids:" + OwnerKey + "=someone-else"},
	} {
		if _, err := o.Vsctl(args...); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.EnsureBridge(ctx, BridgeSpec{Name: "br-other", DatapathType: "netdev"}); err == nil || !strings.Contains(err.Error(), "someone-else") {
		t.Errorf("EnsureBridge on another owner's bridge: err = %v", err)
	}
	// A bridge without our mark is another OVS user's: refused, untouched,
	// and CheckOwnership says so before anything is written.
	foreignBefore, _ := o.Vsctl("--columns=datapath_type,fail_mode,protocols,external_ids", "list", "bridge", "br-foreign")
	var fe *ForeignError
	err = c.EnsureBridge(ctx, BridgeSpec{Name: "br-foreign", DatapathType: "netdev", ExternalIDs: map[string]string{"x": "y"}})
	if !errors.As(err, &fe) || fe.Kind != "bridge" || fe.Name != "br-foreign" {
		t.Errorf("EnsureBridge on an unmarked bridge: err = %v, want a ForeignError", err)
	}
	if after, _ := o.Vsctl("--columns=datapath_type,fail_mode,protocols,external_ids", "list", "bridge", "br-foreign"); after != foreignBefore {
		t.Errorf("refused EnsureBridge changed br-foreign:\n%s\n->\n%s", foreignBefore, after)
	}
	if _, err := o.Vsctl("br-set-external-id", "br-foreign", "owner", "neutron"); err != nil {
		t.Fatal(err)
	}
	err = c.CheckOwnership(ctx, []string{"br-int", "br-nope", "br-foreign"}, nil)
	if !errors.As(err, &fe) || fe.Name != "br-foreign" || !strings.Contains(err.Error(), "owner=neutron") {
		t.Errorf("CheckOwnership(br-foreign): err = %v, want a ForeignError naming owner=neutron", err)
	}
	err = c.CheckOwnership(ctx, []string{"br-int"}, []string{"sys0", "ghost9", "fp1"})
	if !errors.As(err, &fe) || fe.Kind != "port" || fe.Name != "fp1" || fe.Bridge != "br-foreign" {
		t.Errorf("CheckOwnership(fp1): err = %v, want a ForeignError for port fp1 on br-foreign", err)
	}
	if err := c.CheckOwnership(ctx, []string{"br-int", "br-phy", "br-nope"}, []string{"sys0", "ghost9"}); err != nil {
		t.Errorf("CheckOwnership of our own and absent objects: %v", err)
	}
	if err := c.EnsurePort(ctx, "br-foreign", PortSpec{Name: "own0", Type: "internal"}); err != nil {
		t.Fatal(err)
	}
	if err := c.DeleteOwned(ctx, "nobody"); err != nil {
		t.Fatal(err)
	}
	if got, _ := o.Vsctl("list-br"); got != "br-foreign\nbr-int\nbr-other\nbr-phy" {
		t.Errorf("after DeleteOwned(nobody): bridges %q", got)
	}
	if err := c.DeleteOwned(ctx, owner); err != nil {
		t.Fatal(err)
	}
	if got, _ := o.Vsctl("list-br"); got != "br-foreign\nbr-other" {
		t.Errorf("after DeleteOwned: bridges %q, want br-foreign and br-other", got)
	}
	if got, _ := o.Vsctl("list-ports", "br-foreign"); got != "fp1" {
		t.Errorf("after DeleteOwned: br-foreign ports %q, want fp1", got)
	}
	if err := c.DeleteBridge(ctx, "br-foreign"); err != nil {
		t.Fatal(err)
	}
	if err := c.DeleteBridge(ctx, "br-foreign"); !errors.Is(err, ErrNotFound) {
		t.Errorf("second DeleteBridge: err = %v, want ErrNotFound", err)
	}
	if got, _ := o.Vsctl("list-br"); got != "br-other" {
		t.Errorf("after DeleteBridge: bridges %q", got)
	}
}

func TestIntegrationRPC(t *testing.T) {
	o, _ := startHost(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c := dialHost(t, o, Options{})
	dbs, err := c.ListDBs(ctx)
	if err != nil || !slices.Contains(dbs, DB) {
		t.Errorf("ListDBs = %v, %v", dbs, err)
	}
	s, err := c.GetSchema(ctx, DB)
	if err != nil {
		t.Fatal(err)
	}
	file, err := os.ReadFile(simhost.SchemaPath)
	if err != nil {
		t.Fatal(err)
	}
	var want struct{ Version string }
	json.Unmarshal(file, &want)
	if s.Name != DB || s.Version != want.Version || s.Tables["Interface"].Columns["ofport"].Type == nil || !s.Tables["Open_vSwitch"].IsRoot {
		t.Errorf("schema %s %s (file %s), Interface.ofport %s", s.Name, s.Version, want.Version, s.Tables["Interface"].Columns["ofport"].Type)
	}
	if _, err := c.GetSchema(ctx, "nodb"); err == nil {
		t.Error("GetSchema(nodb): no error")
	}

	// insert with named-uuid references, then wait / mutate / update / delete
	res, err := c.Transact(ctx, DB,
		Insert("Flow_Table", Row{"name": "t0", "external_ids": map[string]string{"a": "1"}}, "ft"),
		Select("Open_vSwitch", nil, "_uuid"),
		Comment("krd rpc test"))
	if err != nil {
		t.Fatal(err)
	}
	// Flow_Table is not a root table: unreferenced, the row is collected at commit.
	if res[0].UUID == "" {
		t.Errorf("insert result has no uuid: %+v", res[0])
	}
	if r, err := c.Transact(ctx, DB, Select("Flow_Table", eq("_uuid", res[0].UUID))); err != nil || len(r[0].Rows) != 0 {
		t.Errorf("unreferenced Flow_Table row survived: %v, %v", r, err)
	}
	_, err = c.Transact(ctx, DB, Wait("Open_vSwitch", nil, []string{"bridges"}, "!=", []Row{{"bridges": Set{}}}, 50*time.Millisecond))
	if err == nil || !strings.Contains(err.Error(), "transact op 0 (wait Open_vSwitch): timed out") {
		t.Errorf("wait: err = %v", err)
	}
	root := res[1].Rows[0].UUID()
	r, err := c.Transact(ctx, DB,
		Mutate("Open_vSwitch", byUUID(root), Mut("external_ids", "insert", Map{"krd": "x"})),
		Update("Open_vSwitch", byUUID(root), Row{"other_config": map[string]string{"krd": "y"}}),
		Select("Open_vSwitch", nil, "external_ids", "other_config"),
		Delete("Bridge", Cond("name", "==", "no-such-bridge")))
	if err != nil {
		t.Fatal(err)
	}
	if r[0].Count != 1 || r[1].Count != 1 || r[3].Count != 0 ||
		r[2].Rows[0].StringMap("external_ids")["krd"] != "x" || r[2].Rows[0].StringMap("other_config")["krd"] != "y" {
		t.Errorf("mutate/update/select/delete results = %+v", r)
	}
	if err := c.SetOpenvSwitchOtherConfig(ctx, map[string]string{"krd": "", "userspace-tso-enable": "true"}); err != nil {
		t.Fatal(err)
	}
	if got, _ := o.Vsctl("get", "open_vswitch", ".", "other_config"); got != `{userspace-tso-enable="true"}` {
		t.Errorf("other_config = %s", got)
	}
	// iface_types is what ovs-vswitchd wrote at start: system devices
	// ("") and internal ports are in every build.
	if sw, err := c.Switch(ctx); err != nil || !slices.Contains(sw.IfaceTypes, "internal") || sw.OtherConfig["userspace-tso-enable"] != "true" {
		t.Errorf("Switch = %+v, %v", sw, err)
	}
}

// syncBuffer collects log output from the client's goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) count(sub string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return strings.Count(s.b.String(), sub)
}

func TestIntegrationReconnect(t *testing.T) {
	o, _ := startHost(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var logs syncBuffer
	c := dialHost(t, o, Options{Reconnect: true, EchoInterval: 250 * time.Millisecond,
		Logger: slog.New(slog.NewTextHandler(&logs, nil))})

	var mu sync.Mutex
	bridges := map[string]bool{}
	if _, err := c.Monitor(ctx, DB, map[string][]string{"Bridge": {"name"}}, func(u TableUpdates) {
		mu.Lock()
		defer mu.Unlock()
		for _, ru := range u["Bridge"] {
			if ru.New == nil {
				delete(bridges, ru.Old.String("name"))
			} else {
				bridges[ru.New.String("name")] = true
			}
		}
	}); err != nil {
		t.Fatal(err)
	}
	seen := func(name string, want bool) func() error {
		return func() error {
			mu.Lock()
			defer mu.Unlock()
			if bridges[name] != want {
				return fmt.Errorf("monitor: bridge %s present=%v, want %v (have %v)", name, bridges[name], want, bridges)
			}
			return nil
		}
	}
	if err := c.EnsureBridge(ctx, BridgeSpec{Name: "br-a", DatapathType: "netdev"}); err != nil {
		t.Fatal(err)
	}
	if err := simhost.WaitFor(10*time.Second, seen("br-a", true)); err != nil {
		t.Fatal(err)
	}

	// 1. ovsdb-server exits and comes back on the same database.
	if err := o.StopOVSDB(); err != nil {
		t.Fatal(err)
	}
	if err := simhost.WaitFor(5*time.Second, func() error {
		if logs.count("connection lost") == 0 {
			return errors.New("client did not notice ovsdb-server exit")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	// A call made while the server is down waits for it.
	done := make(chan error, 1)
	go func() {
		_, err := c.ListPorts(ctx, "br-a")
		done <- err
	}()
	if err := o.StartOVSDB(); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Errorf("call made during the outage: %v", err)
	}
	if _, err := o.Vsctl("--no-wait", "add-br", "br-b", "--", "set", "bridge", "br-b", "datapath_type=netdev"); err != nil {
		t.Fatal(err)
	}
	if err := simhost.WaitFor(10*time.Second, seen("br-b", true)); err != nil {
		t.Errorf("monitor did not resume after restart: %v", err)
	}

	// 2. ovsdb-server hangs (SIGSTOP): only the echo keepalive can tell.
	pid, err := o.PID("ovsdb-server")
	if err != nil {
		t.Fatal(err)
	}
	reconnects := logs.count("ovsdb reconnected")
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	stopped := true
	t.Cleanup(func() {
		if stopped {
			syscall.Kill(pid, syscall.SIGCONT)
		}
	})
	if err := simhost.WaitFor(5*time.Second, func() error {
		if logs.count("no echo reply") == 0 {
			return errors.New("keepalive did not declare the hung server dead")
		}
		return nil
	}); err != nil {
		t.Error(err)
	}
	syscall.Kill(pid, syscall.SIGCONT)
	stopped = false
	if err := simhost.WaitFor(10*time.Second, func() error {
		if logs.count("ovsdb reconnected") <= reconnects {
			return errors.New("no reconnect after SIGCONT")
		}
		return nil
	}); err != nil {
		t.Error(err)
	}
	if _, err := o.Vsctl("--no-wait", "del-br", "br-b"); err != nil {
		t.Fatal(err)
	}
	if err := simhost.WaitFor(10*time.Second, seen("br-b", false)); err != nil {
		t.Errorf("monitor did not resume after hang: %v", err)
	}
	if err := c.DeleteBridge(ctx, "br-a"); err != nil {
		t.Errorf("DeleteBridge after reconnects: %v", err)
	}
}

func BenchmarkTransactSelect(b *testing.B) {
	o, _ := startHost(b)
	c := dialHost(b, o, Options{})
	ctx := context.Background()
	if err := c.EnsureBridge(ctx, BridgeSpec{Name: "br-int", DatapathType: "netdev"}); err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		res, err := c.Transact(ctx, DB, Select("Interface", eq("name", "br-int"), "_uuid", "ofport"))
		if err != nil || len(res[0].Rows) != 1 {
			b.Fatalf("select: %v, %v", res, err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "ops/s")
}
