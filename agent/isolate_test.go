package agent

import (
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/keyroute/keyroute/registry"
	"github.com/keyroute/keyroute/rules"
)

func TestProtectedTCPPorts(t *testing.T) {
	c := DefaultConfig()
	if got := c.ProtectedTCPPorts(); !slices.Equal(got, []uint16{2379, 2380}) {
		t.Errorf("defaults (metrics on loopback): %v, want [2379 2380]", got)
	}
	c.MetricsAddr = "0.0.0.0:9476"
	c.PprofAddr = ":6060"
	c.Etcd.EmbeddedClientURL = "https://198.18.0.1:12379"
	c.Etcd.EmbeddedPeerURL = "https://127.0.0.1:12380"
	want := []uint16{2379, 2380, 6060, 9476, 12379, 12380}
	if got := c.ProtectedTCPPorts(); !slices.Equal(got, want) {
		t.Errorf("got %v, want %v", got, want)
	}
	c.PprofAddr = "localhost:6060"
	if got := c.ProtectedTCPPorts(); slices.Contains(got, 6060) {
		t.Errorf("pprof on localhost protected: %v", got)
	}
}

func TestPprofOptIn(t *testing.T) {
	if DefaultConfig().PprofAddr != "" {
		t.Fatal("pprof_addr must default to off")
	}
	rec := httptest.NewRecorder()
	metricsMux(newMetrics().reg).ServeHTTP(rec, httptest.NewRequest("GET", "/debug/pprof/", nil))
	if rec.Code != http.StatusNotFound {
		t.Errorf("metrics listener serves /debug/pprof/: %d", rec.Code)
	}
	rec = httptest.NewRecorder()
	pprofMux().ServeHTTP(rec, httptest.NewRequest("GET", "/debug/pprof/", nil))
	if rec.Code != http.StatusOK {
		t.Errorf("pprof listener /debug/pprof/: %d", rec.Code)
	}
	c := DefaultConfig()
	c.Uplink, c.PprofAddr = "eth1", "6060"
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "pprof_addr") {
		t.Errorf("bad pprof_addr accepted: %v", err)
	}
}

func TestAPISocketPrivate(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "agent.sock")
	ln, err := listenPrivateUnix(path)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm() != 0o600 {
		t.Errorf("socket mode %v, want socket 0600", fi.Mode())
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		t.Errorf("left behind: %v", ents)
	}
	go func() {
		if c, err := ln.Accept(); err == nil {
			c.Close()
		}
	}()
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatalf("dial the renamed socket: %v", err)
	}
	c.Close()
	ln.Close()
	if _, err := os.Lstat(path); !os.IsNotExist(err) {
		t.Errorf("socket left after close: %v", err)
	}
}

func TestCaptureFilter(t *testing.T) {
	for _, f := range []string{"", "udp port 4789", "ip and len > 100", "portrange 1-100", "host 198.18.0.2 and not arp"} {
		if err := checkCaptureFilter(f); err != nil {
			t.Errorf("%q refused: %v", f, err)
		}
	}
	for _, f := range []string{"-w /tmp/x", " -z sh", "--version", "udp; rm", "-r/etc/shadow"} {
		if err := checkCaptureFilter(f); err == nil {
			t.Errorf("%q accepted", f)
		}
	}
}

func TestRuleFlowLimit(t *testing.T) {
	if err := ruleFlowLimit(10000, 10000); err != nil {
		t.Errorf("at the limit: %v", err)
	}
	err := ruleFlowLimit(12345, 10000)
	if err == nil {
		t.Fatal("above the limit accepted")
	}
	for _, s := range []string{"12345", "10000", "rule_max_flows"} {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("error %q does not name %s", err, s)
		}
	}
	c := DefaultConfig()
	c.Uplink, c.RuleMaxFlows = "eth1", 0
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "rule_max_flows") {
		t.Errorf("rule_max_flows 0 accepted: %v", err)
	}
}

func TestRuleMaxFlowsRefusesRule(t *testing.T) {
	cfg := DefaultConfig()
	cfg.RuleMaxFlows = 10
	a := &Agent{cfg: cfg, endpoints: map[string]registry.Endpoint{}}
	for i := range 4 {
		n := fmt.Sprintf("web-%d", i)
		a.endpoints[n] = registry.Endpoint{Name: n, IP: netip.AddrFrom4([4]byte{198, 19, 1, byte(10 + i)})}
	}
	e := &ruleEngine{a: a, log: slog.New(slog.NewTextHandler(io.Discard, nil)), rules: map[string]rules.Rule{}}
	small := rules.Rule{ID: "small", Direction: rules.Egress, Local: rules.Selector{Name: "web-*"}, Remote: rules.Selector{CIDR: "10.0.0.0/8"},
		Protocol: rules.ProtoTCP, Ports: "80", Action: rules.Deny, Priority: 10}
	if err := e.checkWith(small); err != nil {
		t.Fatalf("4 flows refused: %v", err)
	}
	e.rules["small"] = small
	big := small
	big.ID, big.Ports = "big", "1000-1100" // several port blocks x 4 containers
	err := e.checkWith(big)
	if err == nil {
		t.Fatal("a rule set above rule_max_flows accepted")
	}
	for _, s := range []string{"limit of 10", "rule_max_flows"} {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("error %q does not name %q", err, s)
		}
	}
	t.Log(err)
}
