package e2e

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/keyroute/keyroute/internal/testenv"
	"github.com/keyroute/keyroute/simcluster"
)

// Paths the .deb owns or creates on this machine.
const (
	debUnit    = "/lib/systemd/system/keyroute-agent.service"
	debConfig  = "/etc/keyroute/agent.yaml"
	debState   = "/var/lib/keyroute"
	debSocket  = "/run/keyroute/agent.sock"
	debPackage = "keyroute"
)

// `make package` builds a .deb that installs with dpkg on this machine;
// the agent started as its systemd unit starts it (with systemctl where
// systemd runs, else the unit's ExecStart with NOTIFY_SOCKET) reports
// READY=1, serves keyroutectl status on the default socket, stops in
// ≤ 2 s on SIGTERM, and dpkg --purge leaves nothing behind. The agent runs
// inside a simulated host's namespace with that host's private OVS, so
// the machine's own network and OVS are never touched.
func TestDebPackage(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.Require(t, "dpkg", "dpkg-deb", "make")
	// The test installs and purges the package: never over a real one.
	if exec.Command("dpkg", "-s", debPackage).Run() == nil {
		t.Fatalf("package %s is installed on this machine; the test installs and purges its own, remove it first", debPackage)
	}
	for _, p := range []string{"/etc/keyroute", debState, debSocket} {
		if _, err := os.Stat(p); err == nil {
			t.Fatalf("%s exists on this machine; the test's purge would remove it", p)
		}
	}
	root, err := simcluster.ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	work := t.TempDir()
	mk := exec.Command("make", "-C", root, "package", "BIN="+filepath.Join(work, "bin"), "PKG_DIR="+filepath.Join(work, "dist"))
	out, err := mk.CombinedOutput()
	if err != nil {
		t.Fatalf("make package: %v\n%s", err, out)
	}
	debs, _ := filepath.Glob(filepath.Join(work, "dist", "keyroute_*.deb"))
	if len(debs) != 1 {
		t.Fatalf("make package wrote %v, want one keyroute_*.deb\n%s", debs, out)
	}
	if b, err := exec.Command("dpkg-deb", "-f", debs[0], "Version").Output(); err != nil || len(strings.TrimSpace(string(b))) == 0 {
		t.Fatalf("dpkg-deb -f Version: %v %q", err, b)
	}
	if b, err := exec.Command("dpkg-deb", "--ctrl-tarfile", debs[0]).Output(); err != nil || !strings.Contains(string(b), debConfig) {
		t.Fatalf("control archive: %v; want conffiles listing %s", err, debConfig)
	}

	// A simulated host for the agent: namespace, uplink, private OVS, PKI.
	cl := testCluster(t, simcluster.Options{Hosts: 1, NoAgents: true})
	h := cl.Host(1)

	if out, err := exec.Command("dpkg", "-i", debs[0]).CombinedOutput(); err != nil {
		t.Fatalf("dpkg -i: %v\n%s", err, out)
	}
	purged := false
	t.Cleanup(func() {
		if !purged {
			exec.Command("dpkg", "--purge", debPackage).Run()
		}
	})
	for _, p := range []string{"/usr/bin/keyroute-agent", "/usr/bin/keyroutectl", debUnit, debConfig} {
		if _, err := os.Stat(p); err != nil {
			t.Errorf("after dpkg -i: %v", err)
		}
	}
	if out, err := exec.Command("/usr/bin/keyroute-agent", "--version").Output(); err != nil || !strings.HasPrefix(string(out), "keyroute-agent ") {
		t.Errorf("installed keyroute-agent --version: %v %q", err, out)
	}

	// The operator edits the conffile: this host's settings, with the
	// package's defaults for the API socket and the state directory.
	b, err := os.ReadFile(h.ConfigPath)
	if err != nil {
		t.Fatal(err)
	}
	var cfg map[string]any
	if err := yaml.Unmarshal(b, &cfg); err != nil {
		t.Fatal(err)
	}
	delete(cfg, "api_socket")
	delete(cfg, "state_dir")
	if b, err = yaml.Marshal(cfg); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(debConfig, b, 0o644); err != nil {
		t.Fatal(err)
	}

	execStart := unitExecStart(t, debUnit)
	t.Logf("unit ExecStart: %s", strings.Join(execStart, " "))
	if systemdRuns() {
		runUnitWithSystemd(t, h.NS.Name)
	} else {
		runUnitAsSystemdWould(t, h.NS.Name, execStart, filepath.Join(work, "notify.sock"))
	}

	if out, err := exec.Command("dpkg", "--purge", debPackage).CombinedOutput(); err != nil {
		t.Fatalf("dpkg --purge: %v\n%s", err, out)
	}
	purged = true
	for _, p := range []string{"/usr/bin/keyroute-agent", "/usr/bin/keyroutectl", debUnit, "/etc/keyroute", debState, debSocket} {
		if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("after dpkg --purge, %s: %v; want it gone", p, err)
		}
	}
	if exec.Command("dpkg", "-s", debPackage).Run() == nil {
		t.Errorf("dpkg -s %s after the purge: still known", debPackage)
	}
}

// unitExecStart reads the unit's ExecStart= as argv.
func unitExecStart(t *testing.T, unit string) []string {
	t.Helper()
	f, err := os.Open(unit)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(strings.TrimSpace(sc.Text()), "ExecStart="); ok {
			return strings.Fields(v)
		}
	}
	t.Fatalf("%s: no ExecStart=", unit)
	return nil
}

func systemdRuns() bool {
	if _, err := os.Stat("/run/systemd/system"); err != nil {
		return false
	}
	return exec.Command("systemctl", "--version").Run() == nil
}

// runUnitWithSystemd starts the installed unit with a runtime drop-in that
// puts it into the simulated host's namespace, checks status, stops it.
func runUnitWithSystemd(t *testing.T, netns string) {
	dropIn := "/run/systemd/system/keyroute-agent.service.d"
	if err := os.MkdirAll(dropIn, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		exec.Command("systemctl", "stop", "keyroute-agent.service").Run()
		os.RemoveAll(dropIn)
		exec.Command("systemctl", "daemon-reload").Run()
	})
	conf := "[Service]\nNetworkNamespacePath=/run/netns/" + netns + "\n"
	if err := os.WriteFile(filepath.Join(dropIn, "netns.conf"), []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{{"daemon-reload"}, {"start", "keyroute-agent.service"}} {
		// Type=notify: start returns once the agent sent READY=1.
		if out, err := exec.Command("systemctl", args...).CombinedOutput(); err != nil {
			j, _ := exec.Command("journalctl", "-u", "keyroute-agent", "-n", "40", "--no-pager").CombinedOutput()
			t.Fatalf("systemctl %s: %v\n%s\n%s", strings.Join(args, " "), err, out, j)
		}
	}
	checkInstalledStatus(t)
	start := time.Now()
	if out, err := exec.Command("systemctl", "stop", "keyroute-agent.service").CombinedOutput(); err != nil {
		t.Fatalf("systemctl stop: %v\n%s", err, out)
	}
	if took := time.Since(start); took > 3*time.Second {
		t.Errorf("systemctl stop took %s, want the agent stopped in ≤ 2 s", took.Round(time.Millisecond))
	}
}

// runUnitAsSystemdWould runs the unit's ExecStart in the host's namespace
// with NOTIFY_SOCKET on a socket the test reads, as systemd would for
// Type=notify (including the RuntimeDirectory and StateDirectory it
// creates), waits for READY=1, checks status, and stops it with SIGTERM.
func runUnitAsSystemdWould(t *testing.T, netns string, execStart []string, notifyPath string) {
	for _, d := range []string{filepath.Dir(debSocket), debState} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	notify, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: notifyPath, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer notify.Close()
	msgs := make(chan string, 16)
	go func() {
		buf := make([]byte, 4096)
		for {
			n, _, err := notify.ReadFromUnix(buf)
			if err != nil {
				close(msgs)
				return
			}
			msgs <- string(buf[:n])
		}
	}()
	log, err := os.Create(filepath.Join(filepath.Dir(notifyPath), "agent.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer log.Close()
	cmd := exec.Command("ip", append([]string{"netns", "exec", netns}, execStart...)...)
	cmd.Env = append(os.Environ(), "NOTIFY_SOCKET="+notifyPath)
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-done
	})
	tail := func() string { b, _ := os.ReadFile(log.Name()); return lastLines(string(b), 30) }

	waitNotify := func(want string, timeout time.Duration) {
		t.Helper()
		deadline := time.After(timeout)
		for {
			select {
			case m, ok := <-msgs:
				if !ok {
					t.Fatalf("notify socket closed before %s", want)
				}
				if strings.Contains(m, want) {
					return
				}
			case err := <-done:
				t.Fatalf("agent exited (%v) before sending %s; its log:\n%s", err, want, tail())
			case <-deadline:
				t.Fatalf("no %s on NOTIFY_SOCKET within %s; agent log:\n%s", want, timeout, tail())
			}
		}
	}
	waitNotify("READY=1", simcluster.ReadyTimeout)
	checkInstalledStatus(t)

	start := time.Now()
	cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-done:
		done <- err // for the cleanup
		took := time.Since(start)
		t.Logf("agent exited %s after SIGTERM: %v", took.Round(time.Millisecond), err)
		if err != nil || took > 2*time.Second {
			t.Errorf("agent after SIGTERM: exit %v after %s, want status 0 within 2 s; log:\n%s", err, took.Round(time.Millisecond), tail())
		}
	case <-time.After(15 * time.Second):
		t.Fatalf("agent still running 15 s after SIGTERM; log:\n%s", tail())
	}
	select {
	case m := <-msgs:
		if !strings.Contains(m, "STOPPING=1") {
			t.Errorf("after SIGTERM the agent notified %q, want STOPPING=1", m)
		}
	default:
		t.Errorf("no STOPPING=1 on NOTIFY_SOCKET after SIGTERM")
	}
}

// checkInstalledStatus runs the installed keyroutectl on its default socket.
func checkInstalledStatus(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "/usr/bin/keyroutectl", "status").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "node:") || !strings.Contains(string(out), "healthy") {
		t.Fatalf("keyroutectl status from the package: %v\n%s", err, out)
	}
	t.Logf("keyroutectl status:\n%s", out)
	v, err := exec.CommandContext(ctx, "/usr/bin/keyroutectl", "version").CombinedOutput()
	if err != nil || !strings.Contains(string(v), "agent:") {
		t.Fatalf("keyroutectl version from the package: %v\n%s", err, v)
	}
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return fmt.Sprintln(strings.Join(lines, "\n"))
}
