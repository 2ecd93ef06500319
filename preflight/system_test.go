package preflight

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/keyroute/keyroute/internal/testenv"
	"github.com/keyroute/keyroute/simhost"
)

// TestSystemEnvOnThisHost runs the real probes against this machine and a
// private ovsdb-server + ovs-vswitchd (no bridges, no namespace needed).
func TestSystemEnvOnThisHost(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.Require(t, "modprobe", "ovsdb-tool", "ovsdb-server", "ovs-vswitchd", "ovs-vsctl", "ovs-appctl")
	ctx := context.Background()
	dir := t.TempDir()

	// No ovs-vswitchd yet: the decision stands, the check says why it failed.
	r, err := Run(ctx, ModeAuto, SystemEnv(filepath.Join(dir, "run")))
	if err != nil {
		t.Fatalf("Run(auto) without ovs-vswitchd: %v\n%s", err, r)
	}
	if c := check(t, r, "ovs-vswitchd"); c.OK || !strings.Contains(c.Detail, "no ovs-vswitchd control socket in "+filepath.Join(dir, "run")) {
		t.Errorf("vswitchd check without a daemon: %+v", c)
	}

	o, err := simhost.StartOVS(dir, "")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := o.Stop(); err != nil {
			t.Errorf("stop ovs: %v", err)
		}
	})
	env := SystemEnv(o.RunDir())
	err = simhost.WaitFor(10*time.Second, func() error {
		types, err := env.DatapathTypes(ctx)
		if err == nil && len(types) == 0 {
			err = errors.New("datapath_types still empty")
		}
		return err
	})
	if err != nil {
		t.Fatalf("ovs-vswitchd never filled datapath_types: %v", err)
	}

	r, err = Run(ctx, ModeAuto, env)
	if err != nil {
		t.Fatalf("Run(auto): %v\n%s", err, r)
	}
	t.Logf("preflight on this host:\n%s", r)
	// Judge the decision by the kernel itself, after Run's modprobe attempt.
	if _, statErr := os.Stat("/sys/module/openvswitch"); errors.Is(statErr, fs.ErrNotExist) {
		if r.Datapath != DatapathNetdev || !strings.Contains(r.Reason, "openvswitch module") ||
			!strings.Contains(r.Reason, "using netdev (userspace)") {
			t.Errorf("no openvswitch module here, got datapath %q reason %q; want netdev explained by the module", r.Datapath, r.Reason)
		}
		if c := check(t, r, "modprobe openvswitch"); c.OK || c.Detail == "" {
			t.Errorf("modprobe check %+v, want its failure recorded", c)
		}
	} else if r.Datapath != DatapathSystem {
		t.Errorf("openvswitch module present, got datapath %q: %s", r.Datapath, r.Reason)
	}
	// The overlay needs veth and tun on every test host; vxlan is reported.
	for _, name := range []string{"module veth", "module tun", "/dev/net/tun"} {
		if c := check(t, r, name); !c.OK {
			t.Errorf("%s: %+v", name, c)
		}
	}
	if c := check(t, r, "module vxlan"); c.Detail == "" {
		t.Errorf("vxlan check has no detail: %+v", c)
	}
	if c := check(t, r, "ovs-vswitchd"); !c.OK || !strings.Contains(c.Detail, "Open vSwitch") {
		t.Errorf("vswitchd check %+v, want its version", c)
	}
	if c := check(t, r, "datapath_types"); !c.OK || !strings.Contains(c.Detail, "netdev") {
		t.Errorf("datapath_types check %+v, want netdev listed", c)
	}

	if r, err := Run(ctx, ModeNetdev, env); err != nil || r.Datapath != DatapathNetdev {
		t.Errorf("Run(netdev) = %q, %v; want netdev", r.Datapath, err)
	}
}
