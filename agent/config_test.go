package agent

import (
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/keyroute/keyroute/pki"
)

// The defaults need an uplink and, since the embedded etcd serves on the
// host's IP, the host's certificate (or an explicit choice of loopback or
// plaintext).
func TestDefaultConfigNeedsUplinkAndCertificate(t *testing.T) {
	c := DefaultConfig()
	c.Node = "h1"
	err := c.Validate()
	if err == nil || !strings.Contains(err.Error(), "config field uplink=") {
		t.Fatalf("want an uplink error, got %v", err)
	}
	c.Uplink = "eth1"
	err = c.Validate()
	for _, want := range []string{"config field etcd.embedded_client_url=http://<host_ip>:2379", "plaintext on the host's IP",
		"keyroutectl pki init --dir /etc/keyroute/pki; keyroutectl pki issue h1", "etcd.ca, etcd.cert and etcd.key", "etcd.insecure: true"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("defaults + uplink: want an error containing %q, got %v", want, err)
		}
	}
	withCert := c
	withCert.Etcd.CA, withCert.Etcd.Cert, withCert.Etcd.Key = testPKI(t, "h1")
	if err := withCert.Validate(); err != nil {
		t.Fatalf("defaults + uplink + certificate: %v", err)
	}
	single := c
	single.Etcd.EmbeddedClientURL = "http://127.0.0.1:2379"
	if err := single.Validate(); err != nil {
		t.Fatalf("defaults + uplink + loopback client URL: %v", err)
	}
}

// testPKI creates a CA and certificates for names in a temporary
// directory and returns the CA, certificate and key paths of the first.
func testPKI(t *testing.T, names ...string) (ca, cert, key string) {
	t.Helper()
	dir := t.TempDir()
	if _, err := pki.InitCA(dir, pki.InitOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, n := range names {
		if _, err := pki.Issue(dir, n, pki.IssueOptions{IPs: []netip.Addr{netip.MustParseAddr("198.18.0.1")}}); err != nil {
			t.Fatal(err)
		}
	}
	return filepath.Join(dir, pki.CACertFile), pki.CertPath(dir, names[0]), pki.KeyPath(dir, names[0])
}

func TestValidateEtcdTLS(t *testing.T) {
	ca, cert, key := testPKI(t, "h1")
	otherCA, _, _ := testPKI(t, "h1")
	withTLS := func(c *Config) { c.Etcd.CA, c.Etcd.Cert, c.Etcd.Key = ca, cert, key }
	cases := []struct {
		name string
		mut  func(*Config)
		want []string // "" means valid
	}{
		{"certificate alone", func(c *Config) { c.Etcd.Cert = cert },
			[]string{`etcd.ca="": etcd.ca, etcd.cert and etcd.key go together`, `etcd.key="": etcd.ca, etcd.cert and etcd.key go together`}},
		{"missing key file", func(c *Config) { withTLS(c); c.Etcd.Key = "/nonexistent/h1.key" },
			[]string{"etcd.cert=" + cert + ": load certificate", "/nonexistent/h1.key", "keyroutectl pki issue h1"}},
		{"certificate of another CA", func(c *Config) { withTLS(c); c.Etcd.CA = otherCA },
			[]string{"etcd.cert=" + cert, "unknown authority"}},
		{"https endpoint without TLS", func(c *Config) { c.Etcd.Endpoints = []string{"https://10.0.0.1:2379"} },
			[]string{"etcd.endpoints=https://10.0.0.1:2379: https needs etcd.ca, etcd.cert and etcd.key"}},
		{"plaintext endpoint", func(c *Config) { withTLS(c); c.Etcd.Endpoints = []string{"http://10.0.0.1:2379"} },
			[]string{"etcd.endpoints=http://10.0.0.1:2379: plaintext etcd on a non-loopback address", "keyroutectl pki issue h1", "etcd.insecure: true"}},
		{"plaintext endpoint by name", func(c *Config) { c.Etcd.Endpoints = []string{"http://etcd.example:2379"} },
			[]string{"etcd.endpoints=http://etcd.example:2379: plaintext etcd"}},
		{"mixed schemes", func(c *Config) {
			withTLS(c)
			c.Etcd.Endpoints = []string{"https://10.0.0.1:2379", "http://127.0.0.1:2379"}
		}, []string{"etcd.endpoints=[https://10.0.0.1:2379 http://127.0.0.1:2379]: use one scheme"}},
		{"not a URL", func(c *Config) { c.Etcd.Endpoints = []string{"198.18.0.1:2379"} },
			[]string{"etcd.endpoints=198.18.0.1:2379: give a URL such as https://198.18.0.1:2379"}},
		{"plaintext embedded client URL", func(c *Config) { withTLS(c); c.Etcd.EmbeddedClientURL = "http://198.18.0.1:2379" },
			[]string{"etcd.embedded_client_url=http://198.18.0.1:2379: plaintext etcd"}},
		{"plaintext embedded peer URL", func(c *Config) { withTLS(c); c.Etcd.EmbeddedPeerURL = "http://198.18.0.1:2380" },
			[]string{"etcd.embedded_peer_url=http://198.18.0.1:2380: plaintext etcd"}},
		{"https embedded without TLS", func(c *Config) {
			c.Etcd.EmbeddedClientURL, c.Etcd.EmbeddedPeerURL = "https://127.0.0.1:2379", "http://127.0.0.1:2380"
		}, []string{"etcd.embedded_client_url=https://127.0.0.1:2379: https needs"}},
		{"external over TLS", func(c *Config) {
			withTLS(c)
			c.Etcd.Endpoints = []string{"https://10.0.0.1:2379", "https://10.0.0.2:2379"}
		}, nil},
		{"external on loopback in plaintext", func(c *Config) { c.Etcd.Endpoints = []string{"http://127.0.0.1:2379"} }, nil},
		{"plaintext allowed by insecure", func(c *Config) { c.Etcd.Insecure = true; c.Etcd.Endpoints = []string{"http://10.0.0.1:2379"} }, nil},
		{"embedded plaintext allowed by insecure", func(c *Config) { c.Etcd.Insecure, c.Etcd.EmbeddedClientURL = true, "" }, nil},
	}
	for _, tc := range cases {
		c := DefaultConfig()
		c.Node, c.Uplink = "h1", "eth1"
		// Valid without TLS: the embedded server on loopback.
		c.Etcd.EmbeddedClientURL = "http://127.0.0.1:2379"
		tc.mut(&c)
		err := c.Validate()
		if len(tc.want) == 0 {
			if err != nil {
				t.Errorf("%s: %v", tc.name, err)
			}
			continue
		}
		for _, w := range tc.want {
			if err == nil || !strings.Contains(err.Error(), w) {
				t.Errorf("%s: want an error containing %q, got %v", tc.name, w, err)
			}
		}
	}
}

func TestEtcdURLsAndInsecureWarning(t *testing.T) {
	c := DefaultConfig()
	c.Node, c.Uplink = "h1", "eth1"
	if cl, p := c.EmbeddedURLs("198.18.0.1"); cl != "http://198.18.0.1:2379" || p != "http://127.0.0.1:2380" {
		t.Errorf("plaintext defaults: %s %s", cl, p)
	}
	if w := c.InsecureWarning("198.18.0.1"); w != "" {
		t.Errorf("warning without insecure: %q", w)
	}
	c.Etcd.Insecure = true
	if err := c.Validate(); err != nil {
		t.Fatalf("insecure embedded default: %v", err)
	}
	w := c.InsecureWarning("198.18.0.1")
	for _, want := range []string{"etcd.insecure: true", "plaintext and unauthenticated at http://198.18.0.1:2379", "keyroutectl pki"} {
		if !strings.Contains(w, want) {
			t.Errorf("warning %q lacks %q", w, want)
		}
	}
	if strings.Contains(w, "127.0.0.1:2380") {
		t.Errorf("warning %q names the loopback peer URL", w)
	}
	c.Etcd.Endpoints = []string{"http://10.0.0.1:2379", "http://10.0.0.2:2379"}
	if w := c.InsecureWarning("198.18.0.1"); !strings.Contains(w, "http://10.0.0.1:2379, http://10.0.0.2:2379") || strings.Contains(w, "198.18.0.1") {
		t.Errorf("external plaintext warning: %q", w)
	}
	if c.ClientTLS(c.Etcd.Endpoints) != nil {
		t.Error("TLS for http endpoints")
	}

	c.Etcd.CA, c.Etcd.Cert, c.Etcd.Key = testPKI(t, "h1")
	c.Etcd.Endpoints = nil
	if cl, p := c.EmbeddedURLs("198.18.0.1"); cl != "https://198.18.0.1:2379" || p != "https://127.0.0.1:2380" {
		t.Errorf("TLS defaults: %s %s", cl, p)
	}
	if w := c.InsecureWarning("198.18.0.1"); !strings.Contains(w, "set but unused") {
		t.Errorf("insecure with TLS everywhere: %q", w)
	}
	if tf := c.ClientTLS([]string{"https://198.18.0.1:2379"}); tf == nil || tf.Cert != c.Etcd.Cert {
		t.Errorf("ClientTLS for https: %+v", tf)
	}
}

func TestValidateNamesFieldAndFix(t *testing.T) {
	cases := []struct {
		mut  func(*Config)
		want string
	}{
		{func(c *Config) { c.Cluster.PodCIDR = "198.19.1.0/16" }, "config field cluster.pod_cidr=198.19.1.0/16: use the network address: 198.19.0.0/16"},
		{func(c *Config) { c.Cluster.PodCIDR = "nonsense" }, "cluster.pod_cidr=nonsense: give an IPv4 CIDR"},
		{func(c *Config) { c.Cluster.SubnetBits = 16 }, "cluster.subnet_bits=16: must be longer than the pod CIDR's /16"},
		{func(c *Config) { c.Cache.RecvIdle = 20 * time.Second }, "cache.recv_idle=20s: is no longer used"},
		{func(c *Config) { c.Cache.Quarantine = 0 }, "cache.quarantine=0s: must be between 100ms and 1m"},
		{func(c *Config) { c.Cache.PendingTimeout = time.Hour }, "cache.pending_timeout=1h0m0s: must be between 1s and 10m"},
		{func(c *Config) { c.Cache.SendIdle = 1500 * time.Millisecond }, "cache.send_idle=1.5s"},
		{func(c *Config) { c.Mode = "fast" }, "mode=fast: must be tunnel or rewrite"},
		{func(c *Config) { c.Datapath = "kernel" }, "datapath=kernel: must be auto, system or netdev"},
		{func(c *Config) { c.Cluster.GatewayMAC = "01:00:00:00:00:01" }, "cluster.gateway_mac=01:00:00:00:00:01: give a unicast MAC"},
		{func(c *Config) { c.HostIP = "::1" }, "host_ip=::1: give an IPv4 address"},
		{func(c *Config) { c.Cluster.VNI = 1 << 24 }, "cluster.vni=16777216: must be 1..16777215"},
		{func(c *Config) { c.MetricsAddr = "9476" }, "metrics_addr=9476: give host:port"},
		{func(c *Config) { c.Bridges.Integration = "" }, "bridges.integration=: empty: give a name of up to 15 letters"},
		{func(c *Config) { c.Bridges.Physical = "a-physical-bridge" }, "bridges.physical=a-physical-bridge: \"a-physical-bridge\" is longer than 15"},
		{func(c *Config) { c.Bridges.Integration = "br int" }, "bridges.integration=br int: \"br int\": use letters"},
		{func(c *Config) { c.Bridges.Physical = "br-int" }, "bridges.physical=br-int: integration and physical bridge are both \"br-int\": give the two bridges distinct names"},
		{func(c *Config) { c.Bridges.Integration = "kr-gw" }, "is also the name of keyroute's port kr-gw"},
		{func(c *Config) { c.Uplink = "br-phy" }, "uplink=br-phy: is also a bridge name"},
		{func(c *Config) { c.ContainerMTU = 500 }, "container_mtu=500: must be 576..9000, or 0 for the uplink's MTU (rewrite mode) or uplink MTU - 50 (tunnel mode)"},
		{func(c *Config) { c.FragNeededRate = 0 }, "frag_needed_rate=0: must be at least 1 packet/s"},
		{func(c *Config) { c.OVS.PortType = "xdp" }, "ovs.port_type=xdp: must be auto, system or afxdp"},
		{func(c *Config) { c.OVS.PortType, c.Datapath = "afxdp", "system" },
			"ovs.port_type=afxdp: AF_XDP ports are a userspace (netdev) datapath feature and datapath is system: set ovs.port_type: auto or system, or datapath: netdev"},
		{func(c *Config) { c.OVS.XDPMode = "skb" }, "ovs.xdp_mode=skb: must be one of generic, native, native-with-zerocopy, best-effort"},
		{func(c *Config) { c.UnderlayIPs = []string{"198.18.1.1"} }, "underlay_ips[0]=198.18.1.1: give an IPv4 address with its prefix length"},
		{func(c *Config) { c.UnderlayIPs = []string{"fd00::1/64"} }, "underlay_ips[0]=fd00::1/64: give an IPv4 address"},
		{func(c *Config) { c.UnderlayIPs = []string{"224.0.0.1/24"} }, "underlay_ips[0]=224.0.0.1/24: give a unicast address"},
		{func(c *Config) { c.UnderlayIPs = []string{"198.18.1.1/24", "198.18.1.1/16"} }, "underlay_ips[1]=198.18.1.1/16: list each address once, and not host_ip"},
		{func(c *Config) { c.HostIP, c.UnderlayIPs = "198.18.0.1", []string{"198.18.0.1/24"} }, "underlay_ips[0]=198.18.0.1/24: list each address once, and not host_ip"},
		{func(c *Config) { c.UnderlayIPs = []string{"198.19.0.9/24"} }, "underlay_ips[0]=198.19.0.9/24: give an underlay address outside the pod CIDR"},
		{func(c *Config) {
			c.UnderlayIPs = []string{"198.18.1.1/24", "198.18.1.2/24", "198.18.1.3/24", "198.18.1.4/24", "198.18.1.5/24", "198.18.1.6/24", "198.18.1.7/24", "198.18.1.8/24"}
		}, "underlay_ips=[198.18.1.1/24"},
	}
	for _, tc := range cases {
		c := DefaultConfig()
		c.Node, c.Uplink = "h1", "eth1"
		tc.mut(&c)
		err := c.Validate()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("want error containing %q, got %v", tc.want, err)
		}
	}
}

// container_mtu 0: the uplink's MTU where the fast path carries packets as
// they are, the VXLAN MTU where every packet is encapsulated.
func TestDefaultContainerMTU(t *testing.T) {
	if got := defaultContainerMTU(ModeRewrite, 1500); got != 1500 {
		t.Errorf("rewrite mode on a 1500 uplink: %d, want 1500", got)
	}
	if got := defaultContainerMTU(ModeTunnel, 9000); got != 8950 {
		t.Errorf("tunnel mode on a 9000 uplink: %d, want 8950", got)
	}
}

func TestLoadConfig(t *testing.T) {
	dir := t.TempDir()
	write := func(s string) string {
		p := filepath.Join(dir, "c.yaml")
		if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	c, err := LoadConfig(write("uplink: eth9\ncache:\n  send_idle: 5s\n"))
	if err != nil || c.Uplink != "eth9" || c.Cache.SendIdle != 5*time.Second || c.Cache.Quarantine != time.Second ||
		c.Bridges.Integration != "br-int" || c.Bridges.Physical != "br-phy" {
		t.Fatalf("got %+v, %v", c, err)
	}
	c, err = LoadConfig(write("uplink: eth9\nbridges:\n  integration: kr-int\n  physical: kr-phy\n"))
	if err != nil || c.Bridges.Integration != "kr-int" || c.Bridges.Physical != "kr-phy" {
		t.Fatalf("bridges: got %+v, %v", c.Bridges, err)
	}
	if _, err := LoadConfig(write("uplnk: eth9\n")); err == nil || !strings.Contains(err.Error(), "field uplnk not found") {
		t.Fatalf("typo must be an error, got %v", err)
	}
	if c, err := LoadConfig(write("")); err != nil || c.Mode != ModeRewrite {
		t.Fatalf("empty file: %+v %v", c, err)
	}
	if _, err := LoadConfig(filepath.Join(dir, "missing.yaml")); err == nil {
		t.Fatal("missing file must be an error")
	}
	// The documented example must load, and validate once the host's
	// certificate is given (it serves etcd on the host IP); without one,
	// the refusal names the fix.
	c, err = LoadConfig("../configs/agent.yaml")
	if err != nil {
		t.Fatalf("configs/agent.yaml: %v", err)
	}
	c.Node = "h1"
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "keyroutectl pki issue h1") {
		t.Fatalf("configs/agent.yaml without a certificate: %v, want the refusal naming keyroutectl pki", err)
	}
	c.Etcd.CA, c.Etcd.Cert, c.Etcd.Key = testPKI(t, "h1")
	if err := c.Validate(); err != nil {
		t.Fatalf("configs/agent.yaml with a certificate does not validate: %v", err)
	}
}
