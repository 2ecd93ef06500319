package preflight

import (
	"errors"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

func TestAFXDP(t *testing.T) {
	withXDP := []string{"afxdp", "afxdp-nonpmd", "internal", "system"}
	cases := []struct {
		name     string
		xskErr   error
		types    []string
		typesErr error
		why      string // "" means supported
	}{
		{"supported", nil, withXDP, nil, ""},
		{"kernel without XDP sockets", unix.EAFNOSUPPORT, withXDP, nil, "the kernel is built without CONFIG_XDP_SOCKETS"},
		{"socket refused", unix.EPERM, withXDP, nil, "socket(AF_XDP): operation not permitted"},
		{"OVS built without AF_XDP", nil, []string{"internal", "system", "vxlan"}, nil, "lack afxdp-nonpmd: this ovs-vswitchd is built without AF_XDP"},
		{"OVSDB unreadable", nil, nil, errors.New("connection refused"), "could not read Open_vSwitch iface_types: connection refused"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			why, checks := AFXDP(tc.xskErr, tc.types, tc.typesErr)
			if len(checks) != 2 {
				t.Fatalf("checks = %+v, want the kernel's and the build's", checks)
			}
			if tc.why == "" {
				if why != "" || !checks[0].OK || !checks[1].OK {
					t.Fatalf("why %q, checks %+v; want supported", why, checks)
				}
				return
			}
			if !strings.Contains(why, tc.why) {
				t.Fatalf("why = %q, want it to contain %q", why, tc.why)
			}
		})
	}
}
