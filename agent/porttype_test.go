package agent

import (
	"errors"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/keyroute/keyroute/api"
	"github.com/keyroute/keyroute/ovsdb"
)

func TestChoosePortType(t *testing.T) {
	withXDP := ovsdb.SwitchInfo{IfaceTypes: []string{"afxdp", "afxdp-nonpmd", "internal", "system", "vxlan"}}
	noXDP := ovsdb.SwitchInfo{IfaceTypes: []string{"internal", "system", "vxlan"}}
	tso := ovsdb.SwitchInfo{IfaceTypes: withXDP.IfaceTypes, OtherConfig: map[string]string{"userspace-tso-enable": "true"}}
	cases := []struct {
		name, setting, datapath string
		xskErr                  error
		sw                      ovsdb.SwitchInfo
		swErr                   error
		use, reason, err        string
	}{
		{"auto on netdev", "auto", "netdev", nil, withXDP, nil, "afxdp", "auto: netdev datapath", ""},
		{"auto on the kernel datapath", "auto", "system", nil, withXDP, nil, "system", "auto: the system (kernel) datapath reads ports itself; AF_XDP ports are a userspace (netdev) datapath feature", ""},
		{"auto without AF_XDP in the build", "auto", "netdev", nil, noXDP, nil, "system", "auto: Open_vSwitch iface_types [internal system vxlan] lack afxdp-nonpmd: this ovs-vswitchd is built without AF_XDP", ""},
		{"auto with userspace TSO", "auto", "netdev", nil, tso, nil, "system", "auto: userspace TSO is on", ""},
		{"auto, OVSDB unreadable", "auto", "netdev", nil, ovsdb.SwitchInfo{}, errors.New("broken pipe"), "system", "auto: could not read Open_vSwitch iface_types: broken pipe", ""},
		{"auto, kernel without XDP sockets", "auto", "netdev", unix.EAFNOSUPPORT, withXDP, nil, "system", "auto: socket(AF_XDP): address family not supported: the kernel is built without CONFIG_XDP_SOCKETS", ""},
		{"system", "system", "netdev", nil, withXDP, nil, "system", "ovs.port_type: system", ""},
		{"afxdp on netdev", "afxdp", "netdev", nil, withXDP, nil, "afxdp", "ovs.port_type: afxdp", ""},
		{"afxdp on the kernel datapath", "afxdp", "system", nil, withXDP, nil, "", "",
			"ovs.port_type afxdp: the system (kernel) datapath reads ports itself; AF_XDP ports are a userspace (netdev) datapath feature: set ovs.port_type: auto (AF_XDP where it works, else system) or system"},
		{"afxdp without AF_XDP in the build", "afxdp", "netdev", nil, noXDP, nil, "", "", "ovs.port_type afxdp: Open_vSwitch iface_types [internal system vxlan] lack afxdp-nonpmd"},
		{"afxdp with userspace TSO", "afxdp", "netdev", nil, tso, nil, "", "", "userspace TSO is on"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			use, reason, err := choosePortType(tc.setting, tc.datapath, tc.xskErr, tc.sw, tc.swErr)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err = %v, want it to contain %q", err, tc.err)
				}
				return
			}
			if err != nil || use != tc.use || !strings.HasPrefix(reason, tc.reason) {
				t.Fatalf("= %q, %q, %v; want %q, %q…", use, reason, err, tc.use, tc.reason)
			}
		})
	}
}

// An AF_XDP port gets its xdp-mode at creation; a system port none, even
// when the base spec came from an AF_XDP one.
func TestPortSpecByType(t *testing.T) {
	p := &portTypes{xdpMode: "generic"}
	base := ovsdb.PortSpec{Name: "c-web1", OFPortRequest: 1}
	x := p.spec(base, PortTypeAFXDP)
	if x.Type != "afxdp-nonpmd" || x.Options["xdp-mode"] != "generic" || len(x.Options) != 1 || x.Name != "c-web1" || x.OFPortRequest != 1 {
		t.Errorf("afxdp spec = %+v", x)
	}
	if s := p.spec(x, PortTypeSystem); s.Type != "" || s.Options != nil {
		t.Errorf("system spec = %+v", s)
	}
}

func TestPortTypeStatusLine(t *testing.T) {
	p := &portTypes{setting: "auto", use: "afxdp", reason: "auto: netdev datapath", fallbacks: map[string]string{}}
	if got, want := p.status().String(), "afxdp (auto: netdev datapath)"; got != want {
		t.Errorf("status = %q, want %q", got, want)
	}
	p.setFallback("c-web2", "could not add network device c-web2 to ofproto (Invalid argument)")
	p.setFallback("c-web1", "could not open network device c-web1 (No such device)")
	s := p.status()
	want := "afxdp (auto: netdev datapath); system on c-web1 (auto: afxdp failed: could not open network device c-web1 (No such device)); " +
		"system on c-web2 (auto: afxdp failed: could not add network device c-web2 to ofproto (Invalid argument))"
	if got := s.String(); got != want {
		t.Errorf("status = %q\nwant     %q", got, want)
	}
	if s.Fallbacks[0] != (api.PortFallback{Port: "c-web1", Type: "system", Error: "could not open network device c-web1 (No such device)"}) {
		t.Errorf("fallbacks = %+v", s.Fallbacks)
	}
	p.setFallback("c-web1", "") // came up as AF_XDP again
	if n := len(p.status().Fallbacks); n != 1 {
		t.Errorf("after c-web1 came up: %d fallbacks, want 1", n)
	}
}
