package agent

import (
	"context"
	"io/fs"
	"testing"

	"github.com/keyroute/keyroute/preflight"
)

// fakeKernel is a host for preflight: veth, vxlan and tun loaded, and the
// openvswitch module (with its ovs_datapath family) only if ovs.
func fakeKernel(ovs bool) preflight.Env {
	modules := "veth 1 0 - Live 0x0\nvxlan 1 0 - Live 0x0\ntun 1 0 - Live 0x0\n"
	exists := map[string]bool{"/dev/net/tun": true, "/sys/module/veth": true, "/sys/module/vxlan": true, "/sys/module/tun": true}
	if ovs {
		modules += "openvswitch 1 0 - Live 0x0\n"
		exists["/sys/module/openvswitch"] = true
	}
	files := map[string]string{"/proc/sys/kernel/osrelease": "6.1.0-test\n", "/proc/modules": modules}
	return preflight.Env{
		ReadFile: func(p string) ([]byte, error) {
			if s, ok := files[p]; ok {
				return []byte(s), nil
			}
			return nil, &fs.PathError{Op: "open", Path: p, Err: fs.ErrNotExist}
		},
		Stat: func(p string) error {
			if exists[p] {
				return nil
			}
			return &fs.PathError{Op: "stat", Path: p, Err: fs.ErrNotExist}
		},
		Modprobe: func(context.Context, string) error { return fs.ErrNotExist },
		GenlFamily: func(_ context.Context, name string) (bool, error) {
			return ovs && name == "ovs_datapath", nil
		},
		Vswitchd:      func(context.Context) (string, error) { return "ovs-vswitchd (Open vSwitch) 3.1.0", nil },
		DatapathTypes: func(context.Context) ([]string, error) { return []string{"netdev", "system"}, nil },
	}
}

// The isolation and offload rules follow the datapath preflight picks:
// netdev needs the ingress drop chains and checksums filled in, system must
// not have the chains (they run before OVS's receive handler and would
// black-hole the host).
func TestPlanForPreflightResult(t *testing.T) {
	netdev := datapathPlan{IsolatePorts: true, ChecksumOff: true, TunnelNeighbours: true}
	system := datapathPlan{}
	for _, tc := range []struct {
		name string
		mode preflight.Mode
		ovs  bool
		want datapathPlan
	}{
		{"auto without the kernel module", preflight.ModeAuto, false, netdev},
		{"auto with the kernel module", preflight.ModeAuto, true, system},
		{"system", preflight.ModeSystem, true, system},
		{"netdev beside a loaded kernel module", preflight.ModeNetdev, true, netdev},
	} {
		r, err := preflight.Run(context.Background(), tc.mode, fakeKernel(tc.ovs))
		if err != nil {
			t.Fatalf("%s: preflight: %v", tc.name, err)
		}
		got, err := planFor(r)
		if err != nil || got != tc.want {
			t.Errorf("%s (preflight chose %s): planFor = %+v, %v; want %+v", tc.name, r.Datapath, got, err, tc.want)
		}
	}
	// A failed preflight (system requested, no module) has no datapath:
	// no plan, rather than a guess.
	r, err := preflight.Run(context.Background(), preflight.ModeSystem, fakeKernel(false))
	if err == nil {
		t.Fatalf("preflight system without the module: chose %s", r.Datapath)
	}
	if p, err := planFor(r); err == nil {
		t.Errorf("plan for a failed preflight: %+v", p)
	}
}
