package preflight

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
)

// Env holds the probes Run uses. A nil field fails its probe with "probe
// not configured" rather than panicking.
type Env struct {
	// ReadFile reads /proc/sys/kernel/osrelease, /proc/modules,
	// /lib/modules/<release>/modules.{builtin,dep}, /proc/config.gz or
	// /boot/config-<release>.
	ReadFile func(path string) ([]byte, error)
	// Stat reports whether /sys/module/<m> and /dev/net/tun exist.
	Stat func(path string) error
	// Modprobe loads a kernel module; the error is the tool's message.
	Modprobe func(ctx context.Context, module string) error
	// GenlFamily reports whether a generic netlink family is registered.
	// The kernel may load the module that provides it, so Run calls it only
	// in auto and system mode.
	GenlFamily func(ctx context.Context, name string) (bool, error)
	// Vswitchd returns ovs-vswitchd's version line if it answers.
	Vswitchd func(ctx context.Context) (string, error)
	// DatapathTypes returns Open_vSwitch datapath_types from OVSDB.
	DatapathTypes func(ctx context.Context) ([]string, error)
}

func (e Env) withDefaults() Env {
	if e.ReadFile == nil {
		e.ReadFile = func(string) ([]byte, error) { return nil, errProbeUnset }
	}
	if e.Stat == nil {
		e.Stat = func(string) error { return errProbeUnset }
	}
	if e.Modprobe == nil {
		e.Modprobe = func(context.Context, string) error { return errProbeUnset }
	}
	if e.GenlFamily == nil {
		e.GenlFamily = func(context.Context, string) (bool, error) { return false, errProbeUnset }
	}
	if e.Vswitchd == nil {
		e.Vswitchd = func(context.Context) (string, error) { return "", errProbeUnset }
	}
	if e.DatapathTypes == nil {
		e.DatapathTypes = func(context.Context) ([]string, error) { return nil, errProbeUnset }
	}
	return e
}

// probeTimeout bounds each external command, so a wedged daemon cannot
// hang agent start-up.
const probeTimeout = 5 * time.Second

// SystemEnv probes this host. ovsRunDir is where ovs-vswitchd keeps its
// pidfile and control socket and ovsdb-server its db.sock; empty means
// $OVS_RUNDIR, else /var/run/openvswitch.
//
// Datapath types come from OVSDB (`ovs-vsctl get Open_vSwitch .
// datapath_types`), which ovs-vswitchd fills at start-up and which needs no
// bridge, unlike `ovs-appctl dpif/show-dp-features <bridge>`. It lists the
// datapath providers compiled into ovs-vswitchd — OVS 3.1 lists "system"
// even without the kernel module — so it only rules a type out; whether the
// kernel datapath exists is decided by the ovs_datapath generic netlink
// family, the same probe ovs-vswitchd's dpif-netlink uses.
func SystemEnv(ovsRunDir string) Env {
	if ovsRunDir == "" {
		ovsRunDir = os.Getenv("OVS_RUNDIR")
	}
	if ovsRunDir == "" {
		ovsRunDir = "/var/run/openvswitch"
	}
	return Env{
		ReadFile:   os.ReadFile,
		Stat:       func(p string) error { _, err := os.Stat(p); return err },
		Modprobe:   modprobe,
		GenlFamily: genlFamily,
		Vswitchd: func(ctx context.Context) (string, error) {
			ctl, err := vswitchdControl(ovsRunDir)
			if err != nil {
				return "", err
			}
			out, err := command(ctx, "ovs-appctl", "-T", "5", "-t", ctl, "version")
			if err != nil {
				return "", err
			}
			first, _, _ := strings.Cut(out, "\n")
			return first + " (" + ctl + ")", nil
		},
		DatapathTypes: func(ctx context.Context) ([]string, error) {
			out, err := command(ctx, "ovs-vsctl", "--db=unix:"+filepath.Join(ovsRunDir, "db.sock"),
				"--timeout=5", "get", "Open_vSwitch", ".", "datapath_types")
			if err != nil {
				return nil, err
			}
			return parseOVSSet(out), nil
		},
	}
}

func modprobe(ctx context.Context, module string) error {
	_, err := command(ctx, "modprobe", module)
	return err
}

func genlFamily(_ context.Context, name string) (bool, error) {
	_, err := netlink.GenlFamilyGet(name)
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, syscall.ENOENT):
		return false, nil
	}
	return false, fmt.Errorf("look up generic netlink family %s: %w", name, err)
}

// vswitchdControl finds ovs-vswitchd's unixctl socket in runDir: the default
// ovs-vswitchd.<pid>.ctl named by the pidfile, else a fixed
// ovs-vswitchd.ctl (what --unixctl=<rundir>/ovs-vswitchd.ctl gives).
func vswitchdControl(runDir string) (string, error) {
	pidfile := filepath.Join(runDir, "ovs-vswitchd.pid")
	fixed := filepath.Join(runDir, "ovs-vswitchd.ctl")
	b, pidErr := os.ReadFile(pidfile)
	if pidErr == nil {
		ctl := filepath.Join(runDir, "ovs-vswitchd."+strings.TrimSpace(string(b))+".ctl")
		if _, err := os.Stat(ctl); err == nil {
			return ctl, nil
		}
	}
	if _, err := os.Stat(fixed); err == nil {
		return fixed, nil
	}
	if pidErr != nil {
		return "", fmt.Errorf("no ovs-vswitchd control socket in %s (no %s, no %s)", runDir, filepath.Base(pidfile), filepath.Base(fixed))
	}
	return "", fmt.Errorf("no ovs-vswitchd control socket in %s (%s names pid %s, but neither its .ctl nor %s exists)",
		runDir, filepath.Base(pidfile), strings.TrimSpace(string(b)), filepath.Base(fixed))
}

// parseOVSSet parses ovs-vsctl's "[netdev, system]" (or a bare single value).
func parseOVSSet(s string) []string {
	s = strings.TrimSpace(s)
	s = strings.TrimSuffix(strings.TrimPrefix(s, "["), "]")
	var out []string
	for _, v := range strings.Split(s, ",") {
		if v = strings.Trim(strings.TrimSpace(v), `"`); v != "" {
			out = append(out, v)
		}
	}
	return out
}

// command runs name with a timeout and returns its trimmed stdout; the error
// is the command's own message (stderr) with any "name: " prefix removed,
// which is what a user needs to read in a Reason.
func command(ctx context.Context, name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, probeTimeout)
	defer cancel()
	var stdout, stderr strings.Builder
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		msg := strings.TrimSpace(stderr.String())
		if msg == "" {
			return "", fmt.Errorf("%s: %w", name, err)
		}
		msg = strings.ReplaceAll(msg, "\n", "; ")
		return "", errors.New(strings.TrimPrefix(msg, name+": "))
	}
	return strings.TrimSpace(stdout.String()), nil
}
