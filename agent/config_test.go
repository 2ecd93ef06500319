package agent

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestDefaultConfigNeedsOnlyUplink(t *testing.T) {
	c := DefaultConfig()
	c.Node = "h1"
	err := c.Validate()
	if err == nil || !strings.Contains(err.Error(), "config field uplink=") {
		t.Fatalf("want an uplink error, got %v", err)
	}
	c.Uplink = "eth1"
	if err := c.Validate(); err != nil {
		t.Fatalf("defaults + uplink: %v", err)
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
		{func(c *Config) { c.Etcd.Endpoints = []string{"198.18.0.1:2379"} }, "etcd.endpoints=198.18.0.1:2379: endpoints are URLs"},
		{func(c *Config) { c.HostIP = "::1" }, "host_ip=::1: give an IPv4 address"},
		{func(c *Config) { c.Cluster.VNI = 1 << 24 }, "cluster.vni=16777216: must be 1..16777215"},
		{func(c *Config) { c.MetricsAddr = "9476" }, "metrics_addr=9476: give host:port"},
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
	if err != nil || c.Uplink != "eth9" || c.Cache.SendIdle != 5*time.Second || c.Cache.Quarantine != time.Second {
		t.Fatalf("got %+v, %v", c, err)
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
	// The documented example must load and validate as it stands.
	c, err = LoadConfig("../configs/agent.yaml")
	if err != nil {
		t.Fatalf("configs/agent.yaml: %v", err)
	}
	c.Node = "h1"
	if err := c.Validate(); err != nil {
		t.Fatalf("configs/agent.yaml does not validate: %v", err)
	}
}
