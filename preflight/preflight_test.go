package preflight

import (
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

const release = "6.1.0"

// fakeHost is a host as the probes see it. Modprobe of a module listed in
// modules.dep "loads" it: /proc/modules, /sys/module and (for openvswitch)
// the generic netlink family appear, as on a real kernel.
type fakeHost struct {
	files       map[string]string
	exists      map[string]bool
	modprobeErr error
	genl        bool
	genlErr     error
	version     string
	versionErr  error
	types       []string
	typesErr    error

	modprobed []string
	genlAsked int
}

func newHost() *fakeHost {
	return &fakeHost{
		files: map[string]string{
			"/proc/sys/kernel/osrelease":                   release + "\n",
			"/proc/modules":                                "veth 40960 0 - Live 0x0\nvxlan 106496 0 - Live 0x0\ntun 61440 2 - Live 0x0\n",
			"/lib/modules/" + release + "/modules.builtin": "kernel/drivers/net/dummy.ko\n",
			"/lib/modules/" + release + "/modules.dep": "kernel/drivers/net/veth.ko.zst:\n" +
				"kernel/drivers/net/vxlan/vxlan.ko.zst: kernel/net/ipv4/udp_tunnel.ko.zst\n" +
				"kernel/drivers/net/tun.ko.zst:\n",
		},
		exists:  map[string]bool{"/dev/net/tun": true, "/sys/module/veth": true, "/sys/module/vxlan": true, "/sys/module/tun": true},
		version: "ovs-vswitchd (Open vSwitch) 3.1.0",
		types:   []string{"netdev", "system"},
	}
}

// withOVS makes openvswitch loaded and its datapath registered.
func (h *fakeHost) withOVS() *fakeHost {
	h.files["/proc/modules"] += "openvswitch 188416 0 - Live 0x0\n"
	h.exists["/sys/module/openvswitch"] = true
	h.genl = true
	return h
}

// loadableOVS lists openvswitch in modules.dep only.
func (h *fakeHost) loadableOVS() *fakeHost {
	h.files["/lib/modules/"+release+"/modules.dep"] += "kernel/net/openvswitch/openvswitch.ko.zst: kernel/net/nsh/nsh.ko.zst\n"
	return h
}

func (h *fakeHost) env() Env {
	return Env{
		ReadFile: func(p string) ([]byte, error) {
			if s, ok := h.files[p]; ok {
				return []byte(s), nil
			}
			return nil, &fs.PathError{Op: "open", Path: p, Err: fs.ErrNotExist}
		},
		Stat: func(p string) error {
			if h.exists[p] {
				return nil
			}
			return &fs.PathError{Op: "stat", Path: p, Err: fs.ErrNotExist}
		},
		Modprobe: func(_ context.Context, m string) error {
			h.modprobed = append(h.modprobed, m)
			if h.modprobeErr != nil {
				return h.modprobeErr
			}
			if !strings.Contains(h.files["/lib/modules/"+release+"/modules.dep"], "/"+m+".ko") {
				return errors.New("FATAL: Module " + m + " not found in directory /lib/modules/" + release)
			}
			h.files["/proc/modules"] += m + " 1 0 - Live 0x0\n"
			h.exists["/sys/module/"+m] = true
			if m == "openvswitch" {
				h.genl = true
			}
			return nil
		},
		GenlFamily: func(_ context.Context, name string) (bool, error) {
			h.genlAsked++
			if name != "ovs_datapath" {
				return false, nil
			}
			return h.genl, h.genlErr
		},
		Vswitchd: func(context.Context) (string, error) { return h.version, h.versionErr },
		DatapathTypes: func(context.Context) ([]string, error) {
			return h.types, h.typesErr
		},
	}
}

func check(t *testing.T, r Result, name string) Check {
	t.Helper()
	i := slices.IndexFunc(r.Checks, func(c Check) bool { return c.Name == name })
	if i < 0 {
		t.Fatalf("no check %q in\n%s", name, r)
	}
	return r.Checks[i]
}

func mustRun(t *testing.T, mode Mode, h *fakeHost) Result {
	t.Helper()
	r, err := Run(context.Background(), mode, h.env())
	if err != nil {
		t.Fatalf("Run(%s): %v\n%s", mode, err, r)
	}
	return r
}

func wantReason(t *testing.T, r Result, parts ...string) {
	t.Helper()
	for _, p := range parts {
		if !strings.Contains(r.Reason, p) {
			t.Errorf("reason %q lacks %q", r.Reason, p)
		}
	}
	if strings.Contains(r.Reason, "\n") {
		t.Errorf("reason is not one line: %q", r.Reason)
	}
}

func TestAutoModuleLoaded(t *testing.T) {
	h := newHost().withOVS()
	r := mustRun(t, ModeAuto, h)
	if r.Datapath != DatapathSystem || r.Forced {
		t.Fatalf("got %s forced=%v, want system chosen automatically\n%s", r.Datapath, r.Forced, r)
	}
	wantReason(t, r, "openvswitch kernel module loaded", "using system")
	if len(h.modprobed) != 0 {
		t.Errorf("modprobe %v run although the module was loaded", h.modprobed)
	}
	if c := check(t, r, "ovs_datapath genl family"); !c.OK {
		t.Errorf("genl check: %+v", c)
	}
}

func TestAutoModprobeLoads(t *testing.T) {
	h := newHost().loadableOVS()
	r := mustRun(t, ModeAuto, h)
	if r.Datapath != DatapathSystem {
		t.Fatalf("datapath %s, want system\n%s", r.Datapath, r)
	}
	wantReason(t, r, "loaded by modprobe")
	if !slices.Equal(h.modprobed, []string{"openvswitch"}) {
		t.Errorf("modprobed %v, want [openvswitch]", h.modprobed)
	}
	if c := check(t, r, "module openvswitch"); !c.OK || !strings.Contains(c.Detail, "loadable") {
		t.Errorf("module check before loading: %+v, want loadable", c)
	}
	if c := check(t, r, "modprobe openvswitch"); !c.OK {
		t.Errorf("modprobe check: %+v", c)
	}
}

func TestAutoModuleMissingFallsBackToNetdev(t *testing.T) {
	h := newHost()
	r := mustRun(t, ModeAuto, h)
	if r.Datapath != DatapathNetdev || r.Forced {
		t.Fatalf("got %s forced=%v, want netdev chosen automatically\n%s", r.Datapath, r.Forced, r)
	}
	wantReason(t, r,
		"openvswitch module not present: /sys/module/openvswitch missing",
		"not in /proc/modules",
		"modprobe openvswitch failed: FATAL: Module openvswitch not found in directory /lib/modules/6.1.0",
		"; using netdev (userspace)")
	if c := check(t, r, "modprobe openvswitch"); c.OK {
		t.Errorf("modprobe check OK after failure: %+v", c)
	}
	for _, m := range []string{"vxlan", "tun", "veth"} {
		if c := check(t, r, "module "+m); !c.OK || !strings.Contains(c.Detail, "loaded") {
			t.Errorf("module %s: %+v, want loaded", m, c)
		}
	}
}

func TestAutoBuiltin(t *testing.T) {
	t.Run("modules.builtin", func(t *testing.T) {
		h := newHost()
		h.files["/lib/modules/"+release+"/modules.builtin"] += "kernel/net/openvswitch/openvswitch.ko\n"
		h.genl = true
		r := mustRun(t, ModeAuto, h)
		if r.Datapath != DatapathSystem || len(h.modprobed) != 0 {
			t.Fatalf("datapath %s, modprobed %v; want system without modprobe\n%s", r.Datapath, h.modprobed, r)
		}
		wantReason(t, r, "openvswitch kernel module built in")
	})
	t.Run("kernel config only", func(t *testing.T) {
		// A kernel without loadable modules: no /proc/modules, no /lib/modules.
		h := newHost()
		for _, f := range []string{"/proc/modules", "/lib/modules/" + release + "/modules.builtin", "/lib/modules/" + release + "/modules.dep"} {
			delete(h.files, f)
		}
		h.exists = map[string]bool{"/dev/net/tun": true, "/sys/module/vxlan": true}
		h.files["/proc/config.gz"] = gz(t, "CONFIG_OPENVSWITCH=y\nCONFIG_VXLAN=y\n# CONFIG_VETH is not set\nCONFIG_TUN=m\n")
		h.genl = true
		r := mustRun(t, ModeAuto, h)
		if r.Datapath != DatapathSystem {
			t.Fatalf("datapath %s, want system\n%s", r.Datapath, r)
		}
		if c := check(t, r, "module openvswitch"); !strings.Contains(c.Detail, "CONFIG_OPENVSWITCH=y in /proc/config.gz") {
			t.Errorf("openvswitch check %+v, want the config as evidence", c)
		}
		if c := check(t, r, "module veth"); c.OK || !strings.Contains(c.Detail, "CONFIG_VETH is not set (/proc/config.gz)") ||
			!strings.Contains(c.Detail, "no /proc/modules") {
			t.Errorf("veth check %+v, want missing with its evidence", c)
		}
		if c := check(t, r, "module tun"); c.OK || !strings.Contains(c.Detail, "CONFIG_TUN=m") {
			t.Errorf("tun check %+v, want missing (=m but no modules installed)", c)
		}
	})
	t.Run("boot config", func(t *testing.T) {
		h := newHost()
		h.files["/boot/config-"+release] = "CONFIG_OPENVSWITCH=y\n"
		h.genl = true
		r := mustRun(t, ModeAuto, h)
		if c := check(t, r, "module openvswitch"); r.Datapath != DatapathSystem || !strings.Contains(c.Detail, "/boot/config-"+release) {
			t.Errorf("datapath %s, check %+v; want system from /boot/config", r.Datapath, c)
		}
	})
}

func TestAutoGenlNotRegistered(t *testing.T) {
	h := newHost().withOVS()
	h.genl = false
	r := mustRun(t, ModeAuto, h)
	if r.Datapath != DatapathNetdev {
		t.Fatalf("datapath %s, want netdev\n%s", r.Datapath, r)
	}
	wantReason(t, r, "openvswitch module loaded but its generic netlink family ovs_datapath is not registered", "using netdev")
}

func TestAutoGenlQueryFails(t *testing.T) {
	t.Run("module loaded", func(t *testing.T) {
		h := newHost().withOVS()
		h.genlErr = errors.New("netlink: permission denied")
		r := mustRun(t, ModeAuto, h)
		if r.Datapath != DatapathSystem {
			t.Fatalf("datapath %s, want system from the module files\n%s", r.Datapath, r)
		}
		if c := check(t, r, "ovs_datapath genl family"); c.OK || !strings.Contains(c.Detail, "permission denied") {
			t.Errorf("genl check %+v, want the query error", c)
		}
	})
	t.Run("module missing", func(t *testing.T) {
		h := newHost()
		h.genlErr = errors.New("netlink: permission denied")
		if r := mustRun(t, ModeAuto, h); r.Datapath != DatapathNetdev {
			t.Fatalf("datapath %s, want netdev\n%s", r.Datapath, r)
		}
	})
}

func TestAutoVXLANMissing(t *testing.T) {
	h := newHost().withOVS()
	h.files["/proc/modules"] = strings.Replace(h.files["/proc/modules"], "vxlan ", "xvlan ", 1)
	h.files["/lib/modules/"+release+"/modules.dep"] = strings.Replace(h.files["/lib/modules/"+release+"/modules.dep"], "vxlan.ko", "xvlan.ko", 1)
	delete(h.exists, "/sys/module/vxlan")
	r := mustRun(t, ModeAuto, h)
	if r.Datapath != DatapathNetdev {
		t.Fatalf("datapath %s, want netdev\n%s", r.Datapath, r)
	}
	wantReason(t, r, "vxlan module not available", "/sys/module/vxlan missing", "using netdev")
}

func TestAutoVswitchdLacksSystem(t *testing.T) {
	h := newHost().withOVS()
	h.types = []string{"netdev"}
	r := mustRun(t, ModeAuto, h)
	if r.Datapath != DatapathNetdev {
		t.Fatalf("datapath %s, want netdev\n%s", r.Datapath, r)
	}
	wantReason(t, r, "ovs-vswitchd does not offer datapath type system (datapath_types: netdev)")
}

func TestAutoNoDatapath(t *testing.T) {
	h := newHost()
	delete(h.exists, "/dev/net/tun")
	r, err := Run(context.Background(), ModeAuto, h.env())
	if err == nil || !strings.Contains(err.Error(), "no usable datapath") || !strings.Contains(err.Error(), "/dev/net/tun") {
		t.Fatalf("err %v, want no usable datapath naming /dev/net/tun", err)
	}
	if r.Datapath != "" || r.Reason == "" || len(r.Checks) == 0 {
		t.Errorf("result on error: %+v, want no datapath, a reason and the checks", r)
	}
}

func TestAutoVswitchdUnreachableIsOnlyACheck(t *testing.T) {
	h := newHost().withOVS()
	h.versionErr = errors.New("no ovs-vswitchd control socket in /run/openvswitch")
	h.typesErr = errors.New("database connection failed")
	r := mustRun(t, ModeAuto, h)
	if r.Datapath != DatapathSystem {
		t.Fatalf("datapath %s, want system\n%s", r.Datapath, r)
	}
	if c := check(t, r, "ovs-vswitchd"); c.OK || !strings.Contains(c.Detail, "not reachable: no ovs-vswitchd control socket") {
		t.Errorf("vswitchd check %+v", c)
	}
	if c := check(t, r, "datapath_types"); c.OK || !strings.Contains(c.Detail, "database connection failed") {
		t.Errorf("datapath_types check %+v", c)
	}
}

func TestVswitchdChecks(t *testing.T) {
	h := newHost().withOVS()
	r := mustRun(t, ModeAuto, h)
	if c := check(t, r, "ovs-vswitchd"); !c.OK || c.Detail != "ovs-vswitchd (Open vSwitch) 3.1.0" {
		t.Errorf("vswitchd check %+v", c)
	}
	if c := check(t, r, "datapath_types"); !c.OK || c.Detail != "netdev, system" {
		t.Errorf("datapath_types check %+v", c)
	}
	h.types = []string{}
	r = mustRun(t, ModeAuto, h)
	if c := check(t, r, "datapath_types"); c.OK || !strings.Contains(c.Detail, "empty") || r.Datapath != DatapathSystem {
		t.Errorf("empty datapath_types: check %+v, datapath %s; want a failed check that rules nothing out", c, r.Datapath)
	}
}

func TestForcedSystem(t *testing.T) {
	t.Run("available", func(t *testing.T) {
		r := mustRun(t, ModeSystem, newHost().withOVS())
		if r.Datapath != DatapathSystem || !r.Forced {
			t.Fatalf("got %s forced=%v\n%s", r.Datapath, r.Forced, r)
		}
		wantReason(t, r, "datapath system set by configuration")
	})
	t.Run("module missing", func(t *testing.T) {
		h := newHost()
		r, err := Run(context.Background(), ModeSystem, h.env())
		if err == nil {
			t.Fatalf("no error; result\n%s", r)
		}
		for _, want := range []string{"datapath system requested but openvswitch module not present",
			"modprobe openvswitch failed", "`datapath: netdev`", "`datapath: auto`"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("error %q lacks %q", err, want)
			}
		}
		if r.Datapath != "" || !r.Forced || r.Reason == "" || len(r.Checks) == 0 {
			t.Errorf("result on error: %+v", r)
		}
		if !slices.Equal(h.modprobed, []string{"openvswitch"}) {
			t.Errorf("modprobed %v, want one try of openvswitch", h.modprobed)
		}
	})
	t.Run("vswitchd lacks system", func(t *testing.T) {
		h := newHost().withOVS()
		h.types = []string{"netdev", "dummy"}
		if _, err := Run(context.Background(), ModeSystem, h.env()); err == nil ||
			!strings.Contains(err.Error(), "does not offer datapath type system") {
			t.Fatalf("err %v, want the missing datapath type", err)
		}
	})
}

func TestForcedNetdev(t *testing.T) {
	t.Run("never loads the module", func(t *testing.T) {
		h := newHost().loadableOVS()
		r := mustRun(t, ModeNetdev, h)
		if r.Datapath != DatapathNetdev || !r.Forced {
			t.Fatalf("got %s forced=%v\n%s", r.Datapath, r.Forced, r)
		}
		wantReason(t, r, "datapath netdev set by configuration")
		if len(h.modprobed) != 0 || h.genlAsked != 0 {
			t.Errorf("netdev mode ran modprobe %v / %d genl lookups; it must not load modules", h.modprobed, h.genlAsked)
		}
		if c := check(t, r, "module openvswitch"); !c.OK || !strings.Contains(c.Detail, "loadable") {
			t.Errorf("openvswitch check %+v, want it reported as loadable", c)
		}
	})
	t.Run("no /dev/net/tun", func(t *testing.T) {
		h := newHost()
		delete(h.exists, "/dev/net/tun")
		r, err := Run(context.Background(), ModeNetdev, h.env())
		if err == nil || !strings.Contains(err.Error(), "datapath netdev requested but /dev/net/tun unavailable") {
			t.Fatalf("err %v, want /dev/net/tun named", err)
		}
		if c := check(t, r, "/dev/net/tun"); c.OK {
			t.Errorf("tun check %+v", c)
		}
	})
	t.Run("vswitchd lacks netdev", func(t *testing.T) {
		h := newHost()
		h.types = []string{"system"}
		if _, err := Run(context.Background(), ModeNetdev, h.env()); err == nil ||
			!strings.Contains(err.Error(), "does not offer datapath type netdev") {
			t.Fatalf("err %v, want the missing datapath type", err)
		}
	})
}

func TestRunBadInput(t *testing.T) {
	if _, err := Run(context.Background(), Mode("kernel"), newHost().env()); err == nil ||
		!strings.Contains(err.Error(), "auto, system, netdev") {
		t.Errorf("Run(kernel): err %v, want the valid modes listed", err)
	}
	// A zero Env must not panic; with nothing known there is no datapath.
	r, err := Run(context.Background(), ModeAuto, Env{})
	if err == nil || !strings.Contains(err.Error(), "probe not configured") {
		t.Errorf("zero Env: err %v, want probe not configured", err)
	}
	if len(r.Checks) == 0 {
		t.Error("zero Env: no checks recorded")
	}
}

func TestParseMode(t *testing.T) {
	for in, want := range map[string]Mode{"": ModeAuto, "auto": ModeAuto, " System ": ModeSystem, "NETDEV": ModeNetdev} {
		if got, err := ParseMode(in); err != nil || got != want {
			t.Errorf("ParseMode(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, in := range []string{"kernel", "userspace", "auto,netdev"} {
		_, err := ParseMode(in)
		if err == nil || !strings.Contains(err.Error(), "auto, system, netdev") || !strings.Contains(err.Error(), in) {
			t.Errorf("ParseMode(%q): err %v, want one naming the input and the valid values", in, err)
		}
	}
}

func TestResultString(t *testing.T) {
	r := mustRun(t, ModeAuto, newHost())
	s := r.String()
	lines := strings.Split(strings.TrimSuffix(s, "\n"), "\n")
	if lines[0] != "datapath: netdev (chosen automatically)" {
		t.Errorf("first line %q", lines[0])
	}
	if lines[1] != "reason:   "+r.Reason || lines[2] != "checks:" {
		t.Errorf("reason/checks header: %q %q", lines[1], lines[2])
	}
	if len(lines) != 3+len(r.Checks) {
		t.Fatalf("%d lines for %d checks:\n%s", len(lines), len(r.Checks), s)
	}
	// Details line up in one column.
	col := -1
	for i, c := range r.Checks {
		l := lines[3+i]
		mark := "  ok    "
		if !c.OK {
			mark = "  FAIL  "
		}
		if !strings.HasPrefix(l, mark+c.Name) {
			t.Errorf("line %q, want prefix %q", l, mark+c.Name)
		}
		at := strings.Index(l, c.Detail)
		if col == -1 {
			col = at
		}
		if at != col {
			t.Errorf("detail of %q at column %d, want %d:\n%s", c.Name, at, col, s)
		}
	}
	forced, err := Run(context.Background(), ModeSystem, newHost().env())
	if err == nil || !strings.HasPrefix(forced.String(), "datapath: none (set by configuration)\n") {
		t.Errorf("failed forced result renders as:\n%s", forced)
	}
}

func TestModuleName(t *testing.T) {
	for in, want := range map[string]string{
		"kernel/net/openvswitch/openvswitch.ko":     "openvswitch",
		"kernel/net/openvswitch/openvswitch.ko.zst": "openvswitch",
		"kernel/drivers/net/vxlan/vxlan.ko.xz":      "vxlan",
		"kernel/drivers/net/ethernet/foo-bar.ko.gz": "foo_bar",
		"updates/dkms/openvswitch.ko":               "openvswitch",
	} {
		if got := moduleName(in); got != want {
			t.Errorf("moduleName(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestParseOVSSet(t *testing.T) {
	for in, want := range map[string][]string{
		"[netdev, system]\n": {"netdev", "system"},
		"[]":                 nil,
		"netdev":             {"netdev"},
		`["netdev"]`:         {"netdev"},
	} {
		if got := parseOVSSet(in); !slices.Equal(got, want) {
			t.Errorf("parseOVSSet(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestVswitchdControl(t *testing.T) {
	dir := t.TempDir()
	touch := func(name string, content string) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := vswitchdControl(dir); err == nil || !strings.Contains(err.Error(), "no ovs-vswitchd.pid") {
		t.Errorf("empty dir: err %v", err)
	}
	touch("ovs-vswitchd.pid", "4242\n")
	if _, err := vswitchdControl(dir); err == nil || !strings.Contains(err.Error(), "names pid 4242") {
		t.Errorf("stale pidfile: err %v", err)
	}
	touch("ovs-vswitchd.ctl", "")
	if got, err := vswitchdControl(dir); err != nil || got != filepath.Join(dir, "ovs-vswitchd.ctl") {
		t.Errorf("fixed socket: %q, %v", got, err)
	}
	touch("ovs-vswitchd.4242.ctl", "")
	if got, err := vswitchdControl(dir); err != nil || got != filepath.Join(dir, "ovs-vswitchd.4242.ctl") {
		t.Errorf("pid socket: %q, %v; want the pidfile's socket first", got, err)
	}
}

func gz(t *testing.T, s string) string {
	t.Helper()
	var b bytes.Buffer
	w := gzip.NewWriter(&b)
	if _, err := w.Write([]byte(s)); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return b.String()
}

// FuzzRun feeds arbitrary kernel files to Run: it must not panic, must pick
// a known datapath or say why not, and must keep its reason on one line.
func FuzzRun(f *testing.F) {
	f.Add("openvswitch 1 0 - Live 0x0\n", "kernel/net/openvswitch/openvswitch.ko.zst:\n", "CONFIG_VXLAN=y\n", true, "auto")
	f.Add("", "", "# CONFIG_OPENVSWITCH is not set\n", false, "system")
	f.Add("vxlan\n\n", ":\n.ko", "CONFIG_TUN=m\n=\n", true, "netdev")
	f.Fuzz(func(t *testing.T, modules, dep, config string, genl bool, mode string) {
		h := newHost()
		h.files["/proc/modules"] = modules
		h.files["/lib/modules/"+release+"/modules.dep"] = dep
		h.files["/boot/config-"+release] = config
		h.genl = genl
		r, err := Run(context.Background(), Mode(mode), h.env())
		switch {
		case err != nil && r.Datapath != "":
			t.Errorf("error %v with datapath %q", err, r.Datapath)
		case err == nil && r.Datapath != DatapathSystem && r.Datapath != DatapathNetdev:
			t.Errorf("no error but datapath %q", r.Datapath)
		}
		if r.Reason == "" || strings.Contains(r.Reason, "\n") {
			t.Errorf("reason %q: want one non-empty line", r.Reason)
		}
	})
}
