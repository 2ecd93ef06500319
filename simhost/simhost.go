// Package simhost runs simulated hosts for tests, the demo and benchmarks:
// network namespaces and private Open vSwitch instances (ovsdb-server +
// ovs-vswitchd with their own run/db/log directories). It stops only the
// processes it started, by PID.
package simhost

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Run executes a command and returns its trimmed stdout. A failure carries
// the command line and its stderr.
func Run(name string, args ...string) (string, error) {
	return RunEnv(nil, name, args...)
}

// RunEnv is Run with extra environment variables.
func RunEnv(env []string, name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	if env != nil {
		cmd.Env = append(os.Environ(), env...)
	}
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return strings.TrimSpace(out.String()), fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(errb.String()))
	}
	return strings.TrimSpace(out.String()), nil
}

// NetNS is a named network namespace.
type NetNS struct{ Name string }

// NewNetNS creates a namespace with loopback up and IPv6 off (test traffic is
// IPv4 on 198.18.0.0/15; IPv6 router solicitations only add noise).
func NewNetNS(name string) (*NetNS, error) {
	if _, err := Run("ip", "netns", "add", name); err != nil {
		return nil, fmt.Errorf("create netns %s: %w", name, err)
	}
	n := &NetNS{Name: name}
	for _, c := range [][]string{
		{"ip", "link", "set", "lo", "up"},
		{"sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"},
		{"sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1"},
	} {
		if _, err := n.Exec(c...); err != nil {
			n.Delete()
			return nil, fmt.Errorf("set up netns %s: %w", name, err)
		}
	}
	return n, nil
}

// Exec runs a command inside the namespace.
func (n *NetNS) Exec(args ...string) (string, error) {
	return Run("ip", append([]string{"netns", "exec", n.Name}, args...)...)
}

// Delete removes the namespace; a namespace already gone is not an error.
func (n *NetNS) Delete() error {
	if _, err := os.Stat("/run/netns/" + n.Name); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	_, err := Run("ip", "netns", "del", n.Name)
	return err
}

// ListNetNS returns the names of namespaces starting with prefix.
func ListNetNS(prefix string) []string {
	ents, _ := os.ReadDir("/run/netns")
	var out []string
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), prefix) {
			out = append(out, e.Name())
		}
	}
	return out
}

// OVS is a private Open vSwitch instance: ovsdb-server and ovs-vswitchd with
// their own directories under Dir, ovs-vswitchd running in NetNS (empty: the
// caller's namespace).
type OVS struct {
	Dir   string
	NetNS string
}

// SchemaPath is where Debian's openvswitch-common installs the schema.
const SchemaPath = "/usr/share/openvswitch/vswitch.ovsschema"

// RunDir holds sockets and pidfiles; ovs-ofctl finds <bridge>.mgmt here.
func (o *OVS) RunDir() string { return filepath.Join(o.Dir, "run") }

// DBSock is the ovsdb-server unix socket.
func (o *OVS) DBSock() string { return filepath.Join(o.RunDir(), "db.sock") }

// MgmtSocket is the OpenFlow management socket of a bridge.
func (o *OVS) MgmtSocket(bridge string) string {
	return filepath.Join(o.RunDir(), bridge+".mgmt")
}

// Env is the environment the OVS command-line tools need to find this
// instance.
func (o *OVS) Env() []string {
	return []string{
		"OVS_RUNDIR=" + o.RunDir(), "OVS_LOGDIR=" + filepath.Join(o.Dir, "log"),
		"OVS_DBDIR=" + filepath.Join(o.Dir, "db"), "OVS_SYSCONFDIR=" + filepath.Join(o.Dir, "etc"),
	}
}

func (o *OVS) pidfile(daemon string) string { return filepath.Join(o.RunDir(), daemon+".pid") }

// StartOVS creates a fresh database under dir and starts ovsdb-server and
// ovs-vswitchd. On error nothing it started is left running.
func StartOVS(dir, netns string) (*OVS, error) {
	o := &OVS{Dir: dir, NetNS: netns}
	for _, d := range []string{"run", "db", "log", "etc"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			return nil, fmt.Errorf("start ovs in %s: %w", dir, err)
		}
	}
	db := filepath.Join(dir, "db", "conf.db")
	os.Remove(db)
	if _, err := RunEnv(o.Env(), "ovsdb-tool", "create", db, SchemaPath); err != nil {
		return nil, fmt.Errorf("start ovs in %s: %w", dir, err)
	}
	if _, err := RunEnv(o.Env(), "ovsdb-server", db, "--remote=punix:"+o.DBSock(),
		"--pidfile="+o.pidfile("ovsdb-server"), "--unixctl="+filepath.Join(o.RunDir(), "ovsdb-server.ctl"),
		"--log-file="+filepath.Join(dir, "log", "ovsdb-server.log"), "--detach", "--no-chdir"); err != nil {
		return nil, fmt.Errorf("start ovsdb-server in %s: %w", dir, err)
	}
	if _, err := o.Vsctl("--no-wait", "init"); err != nil {
		o.Stop()
		return nil, fmt.Errorf("init ovsdb in %s: %w", dir, err)
	}
	if err := o.StartVswitchd(); err != nil {
		o.Stop()
		return nil, err
	}
	return o, nil
}

// StartVswitchd starts ovs-vswitchd (again).
func (o *OVS) StartVswitchd() error {
	// The unixctl socket keeps its default name, <rundir>/ovs-vswitchd.<pid>.ctl,
	// so `ovs-appctl -t ovs-vswitchd` with OVS_RUNDIR finds it, as the agent does.
	args := []string{"ovs-vswitchd", "unix:" + o.DBSock(), "--pidfile=" + o.pidfile("ovs-vswitchd"),
		"--log-file=" + filepath.Join(o.Dir, "log", "ovs-vswitchd.log"),
		"-vconsole:off", "--detach", "--no-chdir"}
	if o.NetNS != "" {
		args = append([]string{"netns", "exec", o.NetNS}, args...)
		_, err := RunEnv(o.Env(), "ip", args...)
		if err != nil {
			return fmt.Errorf("start ovs-vswitchd in %s: %w", o.Dir, err)
		}
		return nil
	}
	if _, err := RunEnv(o.Env(), args[0], args[1:]...); err != nil {
		return fmt.Errorf("start ovs-vswitchd in %s: %w", o.Dir, err)
	}
	return nil
}

// VswitchdCtl is ovs-vswitchd's unixctl socket.
func (o *OVS) VswitchdCtl() string {
	pid, err := o.PID("ovs-vswitchd")
	if err != nil {
		return filepath.Join(o.RunDir(), "ovs-vswitchd.ctl")
	}
	return filepath.Join(o.RunDir(), fmt.Sprintf("ovs-vswitchd.%d.ctl", pid))
}

// Vsctl runs ovs-vsctl against this instance.
func (o *OVS) Vsctl(args ...string) (string, error) {
	return RunEnv(o.Env(), "ovs-vsctl", append([]string{"--db=unix:" + o.DBSock(), "--timeout=30"}, args...)...)
}

// Ofctl runs ovs-ofctl -O OpenFlow13 against this instance.
func (o *OVS) Ofctl(args ...string) (string, error) {
	return RunEnv(o.Env(), "ovs-ofctl", append([]string{"-O", "OpenFlow13"}, args...)...)
}

// Appctl runs ovs-appctl against ovs-vswitchd.
func (o *OVS) Appctl(args ...string) (string, error) {
	return RunEnv(o.Env(), "ovs-appctl", append([]string{"-t", o.VswitchdCtl()}, args...)...)
}

// PID returns the PID a daemon ("ovs-vswitchd" or "ovsdb-server") wrote.
func (o *OVS) PID(daemon string) (int, error) {
	b, err := os.ReadFile(o.pidfile(daemon))
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.TrimSpace(string(b)))
}

// StopVswitchd stops ovs-vswitchd and waits until it has exited.
func (o *OVS) StopVswitchd() error { return o.stop("ovs-vswitchd") }

// Stop stops both daemons. Safe to call more than once.
func (o *OVS) Stop() error {
	return errors.Join(o.stop("ovs-vswitchd"), o.stop("ovsdb-server"))
}

func (o *OVS) stop(daemon string) error {
	pid, err := o.PID(daemon)
	if err != nil {
		return nil // never started or already stopped
	}
	if err := KillPID(pid, daemon, 10*time.Second); err != nil {
		return fmt.Errorf("stop %s of %s: %w", daemon, o.Dir, err)
	}
	os.Remove(o.pidfile(daemon))
	return nil
}

// KillPID sends SIGTERM to pid if its command line still contains want (so a
// recycled PID is left alone), waits up to grace, then SIGKILLs it.
func KillPID(pid int, want string, grace time.Duration) error {
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil || !bytes.Contains(cmdline, []byte(want)) {
		return nil
	}
	if err := syscall.Kill(pid, syscall.SIGTERM); err != nil {
		return nil
	}
	deadline := time.Now().Add(grace)
	for time.Now().Before(deadline) {
		if !alive(pid) {
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	syscall.Kill(pid, syscall.SIGKILL)
	for i := 0; i < 100 && alive(pid); i++ {
		time.Sleep(20 * time.Millisecond)
	}
	if alive(pid) {
		return fmt.Errorf("pid %d (%s) did not exit", pid, want)
	}
	return nil
}

// alive reports whether pid exists and is not a zombie.
func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// state is the field after the ")" that closes the command name
	i := bytes.LastIndexByte(b, ')')
	return i < 0 || i+2 >= len(b) || b[i+2] != 'Z'
}

// WaitFor polls cond every 20 ms until it returns nil or timeout passes, and
// returns the last error.
func WaitFor(timeout time.Duration, cond func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("after %s: %w", timeout, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// AddVeth creates a veth pair a (in namespace aNS) <-> b (in bNS), brings
// both ends up and turns TX checksum offload off on both: OVS's netdev
// datapath reads packets through AF_PACKET and ignores CHECKSUM_PARTIAL, so
// with offload on, TCP leaves with bad checksums. An empty namespace is the
// caller's.
func AddVeth(a, aNS, b, bNS string) error {
	args := []string{"link", "add", a}
	if aNS != "" {
		args = append(args, "netns", aNS)
	}
	args = append(args, "type", "veth", "peer", "name", b)
	if bNS != "" {
		args = append(args, "netns", bNS)
	}
	if _, err := Run("ip", args...); err != nil {
		return fmt.Errorf("add veth %s<->%s: %w", a, b, err)
	}
	for _, end := range [][2]string{{a, aNS}, {b, bNS}} {
		pre := []string{}
		if end[1] != "" {
			pre = []string{"ip", "netns", "exec", end[1]}
		}
		for _, c := range [][]string{{"ip", "link", "set", end[0], "up"}, {"ethtool", "-K", end[0], "tx", "off"}} {
			full := append(append([]string{}, pre...), c...)
			if _, err := Run(full[0], full[1:]...); err != nil {
				return fmt.Errorf("set up veth end %s: %w", end[0], err)
			}
		}
	}
	return nil
}
