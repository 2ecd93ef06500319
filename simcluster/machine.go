package simcluster

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/keyroute/keyroute/simhost"
)

// Machine gives a simulated host a file system of its own, so commands
// written for a real host (the README's runbook) run unchanged, with their
// default paths: /etc, /var/lib, /run and /usr/local are overlays whose
// changes land in the machine's directory (never on this machine's real
// ones), /run/openvswitch is the host's private OVS (so OVS's default
// socket paths reach it) and /sys shows the host's network namespace, as
// `ip netns exec` does. /run/netns stays this machine's, so namespaces
// made later (containers) are seen too. Everything else (/tmp, the
// cluster's directory, binaries in /usr/bin) is shared.
//
// The mount namespace is kept by a bind of its nsfs file (as `ip netns`
// keeps network namespaces), so every command sees the same files.
type Machine struct {
	Host *Host
	// Dir holds the overlays' upper and work directories and the mount
	// namespace file.
	Dir    string
	nsFile string
	nsDir  string
}

// machineOverlays are the directories a Machine has its own copy of.
var machineOverlays = []string{"/etc", "/var/lib", "/run", "/usr/local"}

// NewMachine makes h's machine view. Close it before the cluster is
// closed (the cluster's directory cannot be removed while it is mounted).
func (h *Host) NewMachine() (*Machine, error) {
	m := &Machine{Host: h, Dir: filepath.Join(h.Dir, "machine")}
	m.nsDir = filepath.Join(m.Dir, "ns")
	m.nsFile = filepath.Join(m.nsDir, "mnt")
	hold := filepath.Join(m.Dir, "netns-hold")
	for _, d := range []string{m.nsDir, hold} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, fmt.Errorf("%s machine: %w", h.Name, err)
		}
	}
	// unshare --mount=FILE binds the namespace onto FILE, which must not
	// sit on a shared mount.
	for _, c := range [][]string{
		{"mount", "--bind", m.nsDir, m.nsDir},
		{"mount", "--make-private", m.nsDir},
	} {
		if _, err := simhost.Run(c[0], c[1:]...); err != nil {
			return nil, fmt.Errorf("%s machine: %w", h.Name, err)
		}
	}
	if err := os.WriteFile(m.nsFile, nil, 0o644); err != nil {
		m.Close()
		return nil, fmt.Errorf("%s machine: %w", h.Name, err)
	}
	// Slave propagation: namespaces added to this machine's /run/netns
	// later appear in the machine's; nothing mounted in the machine leaks
	// out. /run/netns is held aside while /run is overlaid (an overlay
	// does not show the nsfs mounts of its lower directory), then put back.
	var script strings.Builder
	fmt.Fprintf(&script, "mount --rbind /run/netns %s\n", hold)
	for _, d := range machineOverlays {
		up := filepath.Join(m.Dir, "upper", strings.ReplaceAll(strings.Trim(d, "/"), "/", "_"))
		work := up + ".work"
		fmt.Fprintf(&script, "mkdir -p %s %s\nmount -t overlay overlay -o lowerdir=%s,upperdir=%s,workdir=%s %s\n", up, work, d, up, work, d)
	}
	fmt.Fprintf(&script, "mount --move %s /run/netns\n", hold)
	fmt.Fprintf(&script, "mkdir -p /run/openvswitch\nmount --bind %s /run/openvswitch\n", h.OVS.RunDir())
	// sysfs mounted from inside the host's network namespace shows its
	// interfaces (what ip netns exec does for each command).
	script.WriteString("umount -l /sys\nmount -t sysfs sysfs /sys\n")
	out, err := simhost.Run("nsenter", "--net=/run/netns/"+h.NS.Name, "--",
		"unshare", "--mount="+m.nsFile, "--propagation", "slave", "sh", "-euc", script.String())
	if err != nil {
		m.Close()
		return nil, fmt.Errorf("%s machine: set up its mounts: %w: %s", h.Name, err, out)
	}
	return m, nil
}

// Close releases the mount namespace file (processes still inside keep
// the namespace until they end).
func (m *Machine) Close() error {
	var errs []error
	for _, p := range []string{m.nsFile, m.nsDir} {
		if _, err := simhost.Run("umount", p); err != nil && !strings.Contains(err.Error(), "not mounted") {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("close %s machine: %w", m.Host.Name, err)
	}
	return nil
}

// Path returns where path of the machine (under one of its overlays)
// lives on this machine's file system once written, for reading results.
func (m *Machine) Path(path string) string {
	for _, d := range machineOverlays {
		if rest, ok := strings.CutPrefix(path, d+"/"); ok {
			return filepath.Join(m.Dir, "upper", strings.ReplaceAll(strings.Trim(d, "/"), "/", "_"), rest)
		}
	}
	return path
}

// argv runs args inside the machine (its mount and network namespaces) in
// directory dir: entering a mount namespace starts at its root.
func (m *Machine) argv(dir string, args ...string) []string {
	return append([]string{"nsenter", "--mount=" + m.nsFile, "--net=/run/netns/" + m.Host.NS.Name, "--wd=" + dir, "--"}, args...)
}

// Shell runs script with `sh -eu` inside the machine, in directory dir,
// and returns its combined output; it fails on the first failing command.
func (m *Machine) Shell(ctx context.Context, dir, script string) (string, error) {
	argv := m.argv(dir, "sh", "-euc", script)
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		if ctx.Err() != nil {
			err = errors.Join(err, ctx.Err())
		}
		return out.String(), fmt.Errorf("%s: sh -euc %q: %w: %s", m.Host.Name, script, err, strings.TrimSpace(out.String()))
	}
	return out.String(), nil
}

// Start runs one command (a line of plain words: no quoting, variables or
// operators, so it is exec'ed as it reads) inside the machine in the
// background, as a service manager would, output appended to logPath. The
// process is the host's agent for the harness (StopAgent, AgentPID) and
// is stopped when the cluster closes.
func (m *Machine) Start(logPath, command string) (*Process, error) {
	line := strings.TrimSpace(command)
	if strings.ContainsAny(line, "\n'\"$`\\;&|<>()*?#") {
		return nil, fmt.Errorf("%s: start %q: want one command of plain words", m.Host.Name, line)
	}
	p, err := startProcess(m.Host.Name+" agent", logPath, m.argv("/", strings.Fields(line)...)...)
	if err != nil {
		return nil, err
	}
	p.daemon = true
	m.Host.cl.procs.add(p)
	m.Host.agent = p
	return p, nil
}

// WaitShell runs script in the machine every half second until check
// accepts its output or timeout passes, and returns the last output.
func (m *Machine) WaitShell(dir, script string, timeout time.Duration, check func(out string) error) (string, error) {
	deadline := time.Now().Add(timeout)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		out, err := m.Shell(ctx, dir, script)
		cancel()
		if err == nil {
			if err = check(out); err == nil {
				return out, nil
			}
		}
		if time.Now().After(deadline) {
			return out, fmt.Errorf("%s: after %s: %w", m.Host.Name, timeout, err)
		}
		time.Sleep(500 * time.Millisecond)
	}
}
