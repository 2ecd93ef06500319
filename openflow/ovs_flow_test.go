package openflow

import (
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// A real ovs-vswitchd (netdev datapath, in network namespace kra-flow)
// receives the oracle table's flows as our bytes over OpenFlow; every flow
// must be accepted, and `ovs-ofctl dump-flows` must print, after
// StripDumpFlowsStats, exactly FlowText().

const ovsNetns = "kra-flow"

type ovsHarness struct {
	dir  string
	pids []int
}

func (o *ovsHarness) env() []string {
	return append(os.Environ(), "OVS_RUNDIR="+o.dir, "OVS_LOGDIR="+o.dir, "OVS_DBDIR="+o.dir, "OVS_SYSCONFDIR="+o.dir)
}

func (o *ovsHarness) run(t *testing.T, name string, args ...string) string {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Env = o.env()
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// daemon starts a --detach'ed OVS daemon and records its PID for cleanup.
func (o *ovsHarness) daemon(t *testing.T, pidfile string, argv ...string) {
	t.Helper()
	o.run(t, argv[0], argv[1:]...)
	b, err := os.ReadFile(pidfile)
	if err != nil {
		t.Fatalf("%s did not write %s: %v", argv[0], pidfile, err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatalf("pidfile %s: %v", pidfile, err)
	}
	o.pids = append(o.pids, pid)
}

func (o *ovsHarness) stop() {
	for i := len(o.pids) - 1; i >= 0; i-- {
		p := o.pids[i]
		syscall.Kill(p, syscall.SIGTERM)
		for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
			if syscall.Kill(p, 0) != nil {
				break
			}
		}
	}
}

// startOVS runs ovsdb-server and ovs-vswitchd with bridge br0 (netdev,
// OpenFlow13 only); it fails under CI=true and skips otherwise when not
// root or a binary is missing.
func startOVS(t *testing.T) *ovsHarness {
	t.Helper()
	for _, b := range []string{"ovsdb-tool", "ovsdb-server", "ovs-vswitchd", "ovs-vsctl", "ovs-ofctl", "ip"} {
		if _, err := exec.LookPath(b); err != nil {
			if os.Getenv("CI") == "true" {
				t.Fatalf("%s is required under CI=true", b)
			}
			t.Skipf("%s not installed", b)
		}
	}
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("this test needs root under CI=true")
		}
		t.Skip("needs root to run ovs-vswitchd in a network namespace")
	}
	o := &ovsHarness{dir: t.TempDir()}
	exec.Command("ip", "netns", "del", ovsNetns).Run() // leftover of a killed run
	o.run(t, "ip", "netns", "add", ovsNetns)
	t.Cleanup(func() {
		o.stop()
		exec.Command("ip", "netns", "del", ovsNetns).Run()
	})
	db, sock := filepath.Join(o.dir, "conf.db"), filepath.Join(o.dir, "db.sock")
	o.run(t, "ovsdb-tool", "create", db, "/usr/share/openvswitch/vswitch.ovsschema")
	o.daemon(t, filepath.Join(o.dir, "ovsdb-server.pid"), "ovsdb-server", db, "--remote=punix:"+sock,
		"--pidfile="+filepath.Join(o.dir, "ovsdb-server.pid"), "--unixctl="+filepath.Join(o.dir, "ovsdb-server.ctl"),
		"--log-file="+filepath.Join(o.dir, "ovsdb-server.log"), "--detach", "--no-chdir")
	o.daemon(t, filepath.Join(o.dir, "ovs-vswitchd.pid"), "ip", "netns", "exec", ovsNetns, "ovs-vswitchd", "unix:"+sock,
		"--pidfile="+filepath.Join(o.dir, "ovs-vswitchd.pid"), "--unixctl="+filepath.Join(o.dir, "ovs-vswitchd.ctl"),
		"--log-file="+filepath.Join(o.dir, "ovs-vswitchd.log"), "-vconsole:off", "--detach", "--no-chdir")
	o.run(t, "ovs-vsctl", "--db=unix:"+sock, "--timeout=10", "add-br", "br0", "--", "set", "bridge", "br0",
		"datapath_type=netdev", "fail_mode=secure", "protocols=OpenFlow13")
	return o
}

// send writes msgs on one OpenFlow connection followed by a barrier and
// returns the errors the switch answered, by xid.
func (o *ovsHarness) send(t *testing.T, msgs []Message) map[uint32]string {
	t.Helper()
	mgmt := filepath.Join(o.dir, "br0.mgmt")
	var c net.Conn
	var err error
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if c, err = net.Dial("unix", mgmt); err == nil || time.Now().After(deadline) {
			break
		}
	}
	if err != nil {
		t.Fatalf("connect %s: %v", mgmt, err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	buf := []byte{Version13, byte(TypeHello), 0, 8, 0, 0, 0, 0}
	for i, m := range msgs {
		if buf, err = AppendMessage(buf, m, uint32(i+1)); err != nil {
			t.Fatalf("encode message %d: %v", i, err)
		}
	}
	barrierXid := uint32(len(msgs) + 1)
	buf = append(buf, Version13, byte(TypeBarrierRequest), 0, 8)
	buf = binary.BigEndian.AppendUint32(buf, barrierXid)
	if _, err := c.Write(buf); err != nil {
		t.Fatal(err)
	}
	errs := map[uint32]string{}
	hdr := make([]byte, HeaderLen)
	for {
		if _, err := io.ReadFull(c, hdr); err != nil {
			t.Fatalf("read from switch: %v", err)
		}
		h, err := ParseHeader(hdr)
		if err != nil {
			t.Fatal(err)
		}
		body := make([]byte, int(h.Length)-HeaderLen)
		if _, err := io.ReadFull(c, body); err != nil {
			t.Fatal(err)
		}
		switch {
		case h.Type == TypeError && len(body) >= 4:
			errs[h.Xid] = fmt.Sprintf("type %d code %d", binary.BigEndian.Uint16(body), binary.BigEndian.Uint16(body[2:]))
		case h.Type == TypeBarrierReply && h.Xid == barrierXid:
			return errs
		}
	}
}

func TestOVSDumpFlowsMatchesFlowText(t *testing.T) {
	o := startOVS(t)
	rows := oracleRows()
	// Each flow gets a unique cookie to find its dump-flows line; flows
	// needing a meter or group that does not exist are left out.
	// Rows that would replace an earlier one (same table, priority and
	// match) get a priority of their own.
	var msgs []Message
	byCookie := map[uint64]*FlowMod{}
	keys := map[string]bool{}
	for i, r := range rows {
		if needsMeterOrGroup(r.fm) {
			continue
		}
		fm := *r.fm
		if keys[fmt.Sprint(fm.Table, fm.Priority, fm.Match.String())] {
			fm.Priority = 1000 + uint16(i)
		}
		keys[fmt.Sprint(fm.Table, fm.Priority, fm.Match.String())] = true
		fm.Cookie = 0xc0de0000 + uint64(i)
		msgs = append(msgs, &fm)
		byCookie[fm.Cookie] = &fm
	}
	if errs := o.send(t, msgs); len(errs) > 0 {
		for xid, e := range errs {
			t.Errorf("switch rejected %s: %s", msgs[xid-1].(*FlowMod), e)
		}
	}
	out := o.run(t, "ovs-ofctl", "-O", "OpenFlow13", "dump-flows", "unix:"+filepath.Join(o.dir, "br0.mgmt"))
	seen := 0
	for _, line := range strings.Split(out, "\n") {
		i := strings.Index(line, "cookie=0x")
		if i < 0 {
			continue
		}
		var cookie uint64
		fmt.Sscanf(line[i+len("cookie="):], "0x%x", &cookie)
		fm, ok := byCookie[cookie]
		if !ok {
			t.Errorf("unexpected flow in dump: %s", line)
			continue
		}
		seen++
		if got, want := StripDumpFlowsStats(line), fm.FlowText(); got != want {
			t.Errorf("dump-flows line %q\n stripped %s\n FlowText %s", line, got, want)
		}
	}
	if seen != len(msgs) {
		t.Errorf("only %d of %d flows found in dump-flows:\n%s", seen, len(msgs), out)
	}
	t.Logf("%d flows installed, %d compared with dump-flows", len(msgs), seen)
}

func needsMeterOrGroup(fm *FlowMod) bool {
	for _, in := range fm.Instructions {
		var acts []Action
		switch in := in.(type) {
		case *MeterInst:
			return true
		case *ApplyActionsInst:
			acts = in.Actions
		case *WriteActionsInst:
			acts = in.Actions
		}
		for _, a := range acts {
			if _, ok := a.(*Group); ok {
				return true
			}
			if c, ok := a.(*Controller); ok && c.MeterID != 0 {
				return true
			}
		}
	}
	return false
}
