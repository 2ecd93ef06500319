package main

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"

	"github.com/keyroute/keyroute/api"
)

func TestParseConf(t *testing.T) {
	c, err := parseConf([]byte(`{"cniVersion":"1.1.0","name":"keyroute","type":"keyroute-cni","runtimeConfig":{"ips":["198.19.1.9/24"]}}`))
	if err != nil || c.Socket != DefaultSocket || c.RuntimeConfig.IPs[0] != "198.19.1.9/24" {
		t.Fatalf("good config: %+v, %v", c, err)
	}
	for _, tc := range []struct {
		conf string
		code uint
		want string
	}{
		{`{"name":"k","type":"keyroute-cni","sockett":"/run/x.sock"}`, types.ErrUnsupportedField, `unsupported field "sockett": "/run/x.sock"`},
		{`{"name":"k","type":"keyroute-cni","socket":"run/x.sock"}`, types.ErrInvalidNetworkConfig, `socket "run/x.sock": give the absolute path`},
		{`{"name":"k","type":"keyroute-cni","timeout":"soon"}`, types.ErrInvalidNetworkConfig, `timeout "soon"`},
		{`{"name":"k","type":"keyroute-cni","ipam":{"type":"host-local"}}`, types.ErrInvalidNetworkConfig, `remove the ipam section`},
		{`[1]`, types.ErrDecodingFailure, `not a JSON object`},
	} {
		_, err := parseConf([]byte(tc.conf))
		if err == nil || err.Code != tc.code || !strings.Contains(err.Msg, tc.want) {
			t.Errorf("%s: got %+v, want code %d and %q", tc.conf, err, tc.code, tc.want)
		}
	}
}

func TestRequestedIP(t *testing.T) {
	c := &NetConf{}
	if ip, err := requestedIP(c, "K8S_POD_NAME=x;IP=198.19.1.7"); err != nil || ip != "198.19.1.7" {
		t.Errorf("CNI_ARGS IP: %q, %v", ip, err)
	}
	c.RuntimeConfig.IPs = []string{"198.19.1.8/24"}
	if ip, err := requestedIP(c, ""); err != nil || ip != "198.19.1.8" {
		t.Errorf("ips capability: %q, %v", ip, err)
	}
	if _, err := requestedIP(c, "IP=198.19.1.9"); err == nil || !strings.Contains(err.Msg, "2 different IPs") {
		t.Errorf("two IPs: %v", err)
	}
	c.RuntimeConfig.IPs = []string{"2001:db8::1"}
	if _, err := requestedIP(c, ""); err == nil || !strings.Contains(err.Msg, "not IPv4") {
		t.Errorf("IPv6: %v", err)
	}
	if ip, err := requestedIP(&NetConf{}, ""); err != nil || ip != "" {
		t.Errorf("none: %q, %v", ip, err)
	}
}

func TestCNIError(t *testing.T) {
	for _, tc := range []struct {
		op   string
		err  error
		code uint
	}{
		{"ADD", fmt.Errorf("%w: no socket", api.ErrAgentDown), types.ErrTryAgainLater},
		{"STATUS", fmt.Errorf("%w: no socket", api.ErrAgentDown), types.ErrPluginNotAvailable},
		{"ADD", &api.AgentError{Kind: api.KindPoolExhausted, Msg: "full"}, ErrPoolExhausted},
		{"ADD", &api.AgentError{Kind: api.KindIPInUse, Msg: "held"}, ErrIPInUse},
		{"ADD", &api.AgentError{Kind: api.KindBadNetNS, Msg: "gone"}, types.ErrInvalidNetNS},
		{"CHECK", &api.AgentError{Kind: api.KindNotFound, Msg: "none"}, types.ErrUnknownContainer},
		{"ADD", errors.New("boom"), types.ErrInternal},
	} {
		if got := cniError(tc.op, "/run/s", tc.err); got.Code != tc.code || !strings.Contains(got.Msg, tc.op) {
			t.Errorf("%s %v: %+v, want code %d", tc.op, tc.err, got, tc.code)
		}
	}
}

func TestResult(t *testing.T) {
	r, err := result(api.CNIAddResult{Endpoint: api.Endpoint{IP: "198.19.1.5", MAC: "0a:58:c6:13:01:05", IfName: "eth0"},
		Gateway: "198.19.1.1", MTU: 1450}, "/run/netns/x", types.DNS{})
	if err != nil {
		t.Fatal(err)
	}
	if r.Interfaces[0].Mtu != 1450 || r.Interfaces[0].Mac != "0a:58:c6:13:01:05" || r.IPs[0].Address.String() != "198.19.1.5/32" ||
		r.IPs[0].Gateway.String() != "198.19.1.1" || r.Routes[0].Dst.String() != "0.0.0.0/0" || r.Routes[0].GW.String() != "198.19.1.1" {
		t.Errorf("result %+v", r)
	}
}

// TestShippedConflist: configs/10-keyroute.conflist loads in libcni and
// its plugin configuration passes the plugin's own checks.
func TestShippedConflist(t *testing.T) {
	b, err := os.ReadFile("../../configs/10-keyroute.conflist")
	if err != nil {
		t.Fatal(err)
	}
	list, err := libcni.NetworkConfFromBytes(b)
	if err != nil {
		t.Fatalf("libcni: %v", err)
	}
	if list.Name != "keyroute" || len(list.Plugins) != 1 || list.Plugins[0].Network.Type != "keyroute-cni" || !list.Plugins[0].Network.Capabilities["ips"] {
		t.Fatalf("conflist %s: want network keyroute with one keyroute-cni plugin declaring ips", b)
	}
	c, cerr := parseConf(list.Plugins[0].Bytes)
	if cerr != nil || c.Socket != DefaultSocket {
		t.Fatalf("plugin config: %+v, %v; want socket %s", c, cerr, DefaultSocket)
	}
}
