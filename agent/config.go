package agent

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/keyroute/keyroute/flows"
	"github.com/keyroute/keyroute/hostlayout"
	"github.com/keyroute/keyroute/keyalloc"
	"github.com/keyroute/keyroute/registry"
)

// Config is the agent's configuration: one YAML file (configs/agent.yaml
// documents every field), overridden by command-line flags.
type Config struct {
	// Node is this host's name in the cluster (default: the hostname).
	Node string `yaml:"node"`
	// Uplink is the physical interface put into the physical bridge.
	Uplink string `yaml:"uplink"`
	// HostIP is the underlay address; default: the uplink's (or the
	// physical bridge's, after a restart) first IPv4 address.
	HostIP string `yaml:"host_ip"`
	// UnderlayIPs are further underlay addresses (CIDRs, e.g.
	// 198.18.1.1/16) that the fabric routes to this host; the agent puts
	// them on the physical bridge beside host_ip (moved from the uplink
	// if they are there) and rewrite mode's cache keys use them, so a
	// host pair has (1+n)×(1+m) times the keys (docs/DESIGN.md "Key
	// space"). host_ip stays the address of VXLAN and the control plane.
	UnderlayIPs []string `yaml:"underlay_ips"`
	// Bridges names this host's two OVS bridges (default br-int and
	// br-phy). The agent creates them and refuses to start if a bridge of
	// that name exists that it did not create (another OVS user's).
	Bridges hostlayout.Bridges `yaml:"bridges"`
	// Etcd selects the cluster store.
	Etcd EtcdConfig `yaml:"etcd"`
	// Cluster holds the cluster-wide addressing plan.
	Cluster ClusterConfig `yaml:"cluster"`
	// ContainerMTU for container interfaces (and the gateway port); 0 means
	// the uplink's MTU in rewrite mode, where the fast path carries packets
	// as they are and the VXLAN path answers a packet too big for it with
	// ICMP "fragmentation needed", and uplink MTU - 50 (the VXLAN
	// overhead) in tunnel mode, where every packet is encapsulated.
	ContainerMTU int `yaml:"container_mtu"`
	// FragNeededRate limits, in packets/s, the packets too big for the
	// VXLAN path that reach the agent to be answered with ICMP.
	FragNeededRate uint32 `yaml:"frag_needed_rate"`
	// Datapath is auto, system or netdev (see kernel preflight).
	Datapath string `yaml:"datapath"`
	// OVS says where the local Open vSwitch listens.
	OVS OVSConfig `yaml:"ovs"`
	// Mode is tunnel (VXLAN only) or rewrite (cached fast path).
	Mode string `yaml:"mode"`
	// Cache configures rewrite mode's cache entries.
	Cache CacheConfig `yaml:"cache"`
	// MetricsAddr serves Prometheus metrics; empty disables.
	MetricsAddr string `yaml:"metrics_addr"`
	// PprofAddr serves Go's profiler (/debug/pprof/) on its own listener;
	// empty (the default) disables it. Keep it on loopback.
	PprofAddr string `yaml:"pprof_addr"`
	// RuleMaxFlows bounds the flows all rules together may install on this
	// host; a rule set above it is not applied (the previous one stays)
	// and a rule that would exceed it is refused.
	RuleMaxFlows int `yaml:"rule_max_flows"`
	// APISocket is the local unix socket keyroutectl talks to.
	APISocket string `yaml:"api_socket"`
	// APIListen, if set (host:port, e.g. 198.18.0.1:9478 or :9478 for
	// the host IP), serves the read-only part of the API (what trace and
	// diagnose need) over TCP with the cluster's mutual TLS (etcd.ca,
	// etcd.cert, etcd.key), for keyroutectl on other hosts. The address
	// is published in this host's record.
	APIListen string `yaml:"api_listen"`
	// StateDir keeps the agent's local state: the node ID (node-id) and
	// the embedded etcd's data.
	StateDir string `yaml:"state_dir"`
	// LogLevel is debug, info, warn or error.
	LogLevel string `yaml:"log_level"`
	// AdoptClusterSettings (flag --adopt-cluster-settings only) takes the
	// cluster's settings (cluster/settings in etcd) where this config
	// differs, instead of refusing to start.
	AdoptClusterSettings bool `yaml:"-"`
}

// EtcdConfig selects an external etcd cluster or the embedded server.
type EtcdConfig struct {
	// Endpoints of an etcd cluster; empty starts an embedded single-node
	// server.
	Endpoints []string `yaml:"endpoints"`
	// Prefix under which keyroute keeps its keys.
	Prefix string `yaml:"prefix"`
	// EmbeddedClientURL is where the embedded server listens for clients
	// (other agents point their endpoints here). Default
	// https://<host_ip>:2379 with CA, Cert and Key, else
	// http://<host_ip>:2379, which is refused unless Insecure.
	EmbeddedClientURL string `yaml:"embedded_client_url"`
	// EmbeddedPeerURL is the embedded server's peer URL. Default
	// https://127.0.0.1:2380 with CA, Cert and Key, else
	// http://127.0.0.1:2380.
	EmbeddedPeerURL string `yaml:"embedded_peer_url"`
	// Members makes the embedded server one member of a cluster: member
	// (node) name to peer URL, the same map on every member's agent, e.g.
	// {h1: https://198.18.0.1:2380, h2: …, h3: …}. This node must be one
	// of them; hosts that are not leave it out and list the members'
	// client URLs as Endpoints. Empty: a single-node embedded server.
	Members map[string]string `yaml:"members"`
	// DialTimeout bounds each connection attempt.
	DialTimeout time.Duration `yaml:"dial_timeout"`
	// CA, Cert and Key are PEM files with etcd's flags' meaning (etcdctl
	// --cacert, --cert, --key): CA verifies etcd's server certificate and,
	// for the embedded server, every client's (--client-cert-auth); Cert
	// and Key are this host's certificate (keyroutectl pki issue), which
	// the agent presents to etcd and the embedded server serves. All
	// three or none.
	CA   string `yaml:"ca"`
	Cert string `yaml:"cert"`
	Key  string `yaml:"key"`
	// Insecure allows plaintext (http) etcd URLs on non-loopback
	// addresses, where anyone who reaches them owns the cluster's state.
	// The agent logs a warning at every start while it is set.
	Insecure bool `yaml:"insecure"`
}

// ClusterConfig is the addressing plan every agent must agree on.
type ClusterConfig struct {
	// PodCIDR is the cluster's container address range.
	PodCIDR string `yaml:"pod_cidr"`
	// SubnetBits is the prefix length of each host's pod subnet.
	SubnetBits int `yaml:"subnet_bits"`
	// VNI is the VXLAN network identifier of the overlay.
	VNI uint32 `yaml:"vni"`
	// VXLANPort is the UDP destination port of the overlay.
	VXLANPort uint16 `yaml:"vxlan_port"`
	// GatewayMAC is the virtual MAC containers see for their gateway.
	GatewayMAC string `yaml:"gateway_mac"`
}

// OVSConfig says where the local Open vSwitch listens.
type OVSConfig struct {
	// DBSocket is ovsdb-server's unix socket.
	DBSocket string `yaml:"db_socket"`
	// RunDir holds ovs-vswitchd's <bridge>.mgmt and unixctl sockets.
	RunDir string `yaml:"run_dir"`
	// PortType is how OVS reads the ports packets enter by (the uplink
	// and the containers' veths): auto (AF_XDP on the netdev datapath
	// where the port comes up, else system), system (the device through
	// a packet socket, or the kernel datapath's own receive handler) or
	// afxdp (netdev datapath only). DESIGN.md "Port types".
	PortType string `yaml:"port_type"`
	// XDPMode is the AF_XDP ports' options:xdp-mode, set only when a port
	// is created: generic (works on any device, veths included), native,
	// native-with-zerocopy or best-effort (NICs whose driver supports
	// them).
	XDPMode string `yaml:"xdp_mode"`
}

// Port types (ovs.port_type).
const (
	PortTypeAuto   = "auto"
	PortTypeSystem = "system"
	PortTypeAFXDP  = "afxdp"
)

// xdpModes are the values of OVS's AF_XDP options:xdp-mode.
var xdpModes = []string{"generic", "native", "native-with-zerocopy", "best-effort"}

// CacheConfig sets rewrite mode's cache (DESIGN.md "Cache protocol v2").
type CacheConfig struct {
	// SendIdle is the EgressCache idle_timeout.
	SendIdle time.Duration `yaml:"send_idle"`
	// RecvIdle is no longer used: a Restore entry lives as long as its key
	// record. Kept only to name the fix when an old config sets it.
	RecvIdle time.Duration `yaml:"recv_idle"`
	// Quarantine is how long a sender keeps a key after the confirmed
	// removal of its last flow, before it frees the key: longer than any
	// packet spends between two hosts' OVS.
	Quarantine time.Duration `yaml:"quarantine"`
	// PendingTimeout ends a key the receiver has not marked ready by then;
	// the pair stays on VXLAN until its entry idles out.
	PendingTimeout time.Duration `yaml:"pending_timeout"`
	// Keys is the usable DSCP key set, e.g. "1-63,!46,!48-63"; the default,
	// keyalloc.DefaultKeys, leaves out the code points fabrics treat
	// specially.
	Keys string `yaml:"keys"`
	// PuntRate limits cache-miss copies to the agent, packets per second.
	PuntRate uint32 `yaml:"punt_rate"`
	// ProbePort is the UDP port of the DSCP path check between agents
	// (the same on every host). A host pair uses keys only after probes
	// with every key's DSCP arrived unchanged. 0 turns the check off: keys
	// are used on every path, unchecked.
	ProbePort uint16 `yaml:"probe_port"`
	// ProbeInterval is how often each path is checked again.
	ProbeInterval time.Duration `yaml:"probe_interval"`
	// Eviction is what happens when every key towards a peer is taken:
	// "traffic" lets a pair carrying more than EvictionFactor times the
	// bytes/s of the quietest keyed pair take its key (the loser goes to
	// VXLAN), "none" leaves keys with the pairs that have them until they
	// idle out (DESIGN.md "Key space").
	Eviction string `yaml:"eviction"`
	// EvictionFactor is how much busier a pair must be to take a key.
	EvictionFactor float64 `yaml:"eviction_factor"`
	// EvictionHold is how long a pair keeps a new key before it can lose
	// it to a busier one.
	EvictionHold time.Duration `yaml:"eviction_hold"`
}

// Eviction policies (cache.eviction).
const (
	EvictionNone    = "none"
	EvictionTraffic = "traffic"
)

// Modes.
const (
	ModeTunnel  = "tunnel"
	ModeRewrite = "rewrite"
)

// vxlanOverhead is what VXLAN adds to an IP packet: outer IPv4 20, UDP 8,
// VXLAN 8, inner Ethernet 14.
const vxlanOverhead = 50

// defaultContainerMTU is container_mtu 0's value: in rewrite mode the
// uplink's (a pair's packets take the fast path as they are; while on
// VXLAN, one too big gets ICMP "fragmentation needed" and its sender
// lowers the path MTU for that destination), in tunnel mode the uplink's
// less VXLAN's overhead (every packet is encapsulated, and every new
// destination would otherwise start with a lost full-size packet).
func defaultContainerMTU(mode string, uplinkMTU int) int {
	if mode == ModeTunnel {
		return uplinkMTU - vxlanOverhead
	}
	return uplinkMTU
}

// DefaultConfig returns the built-in defaults.
func DefaultConfig() Config {
	host, _ := os.Hostname()
	return Config{
		Node:           host,
		Bridges:        hostlayout.Default(),
		Datapath:       "auto",
		Mode:           ModeRewrite,
		FragNeededRate: 100,
		Etcd: EtcdConfig{
			Prefix:      "/keyroute/",
			DialTimeout: 5 * time.Second,
		},
		Cluster: ClusterConfig{
			PodCIDR:    "198.19.0.0/16",
			SubnetBits: 24,
			VNI:        100,
			VXLANPort:  4789,
			GatewayMAC: "0a:00:00:00:00:01",
		},
		OVS: OVSConfig{
			DBSocket: "/var/run/openvswitch/db.sock",
			RunDir:   "/var/run/openvswitch",
			PortType: PortTypeAuto,
			XDPMode:  "generic",
		},
		Cache: CacheConfig{
			SendIdle:       10 * time.Second,
			Quarantine:     time.Second,
			PendingTimeout: 5 * time.Second,
			Keys:           keyalloc.DefaultKeys,
			PuntRate:       1000,
			ProbePort:      9477,
			ProbeInterval:  30 * time.Second,
			Eviction:       EvictionTraffic,
			EvictionFactor: 2,
			EvictionHold:   5 * time.Second,
		},
		MetricsAddr:  "127.0.0.1:9476",
		RuleMaxFlows: 10000,
		APISocket:    "/run/keyroute/agent.sock",
		StateDir:     "/var/lib/keyroute",
		LogLevel:     "info",
	}
}

// LoadConfig reads a YAML file over the defaults. Unknown fields are an
// error, so a typo never silently falls back to a default.
func LoadConfig(path string) (Config, error) {
	cfg := DefaultConfig()
	if path == "" {
		return cfg, nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return cfg, fmt.Errorf("read config: %w", err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	// An empty file (io.EOF) means all defaults.
	if err := dec.Decode(&cfg); err != nil && !errors.Is(err, io.EOF) {
		return cfg, fmt.Errorf("config %s: %w", path, err)
	}
	return cfg, nil
}

// FieldError names the config field at fault and how to fix it.
type FieldError struct {
	Field string
	Value any
	Fix   string
}

func (e *FieldError) Error() string {
	return fmt.Sprintf("config field %s=%v: %s", e.Field, e.Value, e.Fix)
}

// Validate checks every field and returns all problems at once.
func (c *Config) Validate() error {
	var errs []error
	bad := func(field string, v any, fix string, args ...any) {
		errs = append(errs, &FieldError{Field: field, Value: v, Fix: fmt.Sprintf(fix, args...)})
	}
	if c.Node == "" || strings.ContainsAny(c.Node, "/ \t") {
		bad("node", c.Node, "set a host name without '/' or spaces")
	}
	if c.Uplink == "" {
		bad("uplink", c.Uplink, "name the physical interface to put into the physical bridge (e.g. eth1)")
	}
	c.validateBridges(bad)
	if c.HostIP != "" {
		if a, err := netip.ParseAddr(c.HostIP); err != nil || !a.Is4() {
			bad("host_ip", c.HostIP, "give an IPv4 address, or leave empty to use the uplink's")
		}
	}
	pod, err := netip.ParsePrefix(c.Cluster.PodCIDR)
	c.validateUnderlayIPs(bad, pod)
	switch {
	case err != nil || !pod.Addr().Is4():
		bad("cluster.pod_cidr", c.Cluster.PodCIDR, "give an IPv4 CIDR such as 198.19.0.0/16")
	case pod.Masked() != pod:
		bad("cluster.pod_cidr", c.Cluster.PodCIDR, "use the network address: %s", pod.Masked())
	case c.Cluster.SubnetBits <= pod.Bits() || c.Cluster.SubnetBits > 30:
		bad("cluster.subnet_bits", c.Cluster.SubnetBits, "must be longer than the pod CIDR's /%d and at most 30", pod.Bits())
	}
	if c.Cluster.VNI == 0 || c.Cluster.VNI >= 1<<24 {
		bad("cluster.vni", c.Cluster.VNI, "must be 1..16777215")
	}
	if c.Cluster.VXLANPort == 0 {
		bad("cluster.vxlan_port", c.Cluster.VXLANPort, "must be a UDP port, usually 4789")
	}
	if mac, err := net.ParseMAC(c.Cluster.GatewayMAC); err != nil || len(mac) != 6 || mac[0]&1 == 1 {
		bad("cluster.gateway_mac", c.Cluster.GatewayMAC, "give a unicast MAC such as 0a:00:00:00:00:01")
	}
	if c.ContainerMTU != 0 && (c.ContainerMTU < 576 || c.ContainerMTU > 9000) {
		bad("container_mtu", c.ContainerMTU, "must be 576..9000, or 0 for the uplink's MTU (rewrite mode) or uplink MTU - 50 (tunnel mode)")
	}
	if c.FragNeededRate == 0 {
		bad("frag_needed_rate", c.FragNeededRate, "must be at least 1 packet/s")
	}
	switch c.Datapath {
	case "auto", "system", "netdev":
	default:
		bad("datapath", c.Datapath, "must be auto, system or netdev")
	}
	switch c.Mode {
	case ModeTunnel, ModeRewrite:
	default:
		bad("mode", c.Mode, "must be tunnel or rewrite")
	}
	if c.Cache.SendIdle <= 0 || c.Cache.SendIdle > 65535*time.Second || c.Cache.SendIdle%time.Second != 0 {
		bad("cache.send_idle", c.Cache.SendIdle, "must be whole seconds between 1s and 65535s")
	}
	if c.Cache.RecvIdle != 0 {
		bad("cache.recv_idle", c.Cache.RecvIdle, "is no longer used: a Restore entry now lives as long as its key record, which only the sender ends (docs/DESIGN.md \"Cache protocol v2\"); remove the setting")
	}
	if c.Cache.Quarantine < 100*time.Millisecond || c.Cache.Quarantine > time.Minute {
		bad("cache.quarantine", c.Cache.Quarantine, "must be between 100ms and 1m: longer than a packet can take between two hosts' OVS (1s is ample on a data-centre fabric)")
	}
	if c.Cache.PendingTimeout < time.Second || c.Cache.PendingTimeout > 10*time.Minute {
		bad("cache.pending_timeout", c.Cache.PendingTimeout, "must be between 1s and 10m")
	}
	if _, err := keyalloc.ParseKeySet(c.Cache.Keys); err != nil {
		bad("cache.keys", c.Cache.Keys, "%v", err)
	}
	if c.Mode == ModeRewrite && c.Cluster.VNI >= flows.KeyedVNIFlag {
		bad("cluster.vni", c.Cluster.VNI, "must be below %d in rewrite mode (the VNI's top bit marks keyed VXLAN packets)", flows.KeyedVNIFlag)
	}
	if c.Cache.ProbePort != 0 && (c.Cache.ProbeInterval < time.Second || c.Cache.ProbeInterval > time.Hour) {
		bad("cache.probe_interval", c.Cache.ProbeInterval, "must be between 1s and 1h")
	}
	switch c.Cache.Eviction {
	case EvictionNone:
	case EvictionTraffic:
		if c.Cache.EvictionFactor < 1.1 || c.Cache.EvictionFactor > 1000 {
			bad("cache.eviction_factor", c.Cache.EvictionFactor, "must be between 1.1 and 1000: a pair must be clearly busier to take a key, or keys flap")
		}
		if c.Cache.EvictionHold < time.Second || c.Cache.EvictionHold > time.Hour {
			bad("cache.eviction_hold", c.Cache.EvictionHold, "must be between 1s and 1h")
		}
	default:
		bad("cache.eviction", c.Cache.Eviction, "use %q or %q", EvictionTraffic, EvictionNone)
	}
	if c.Cache.PuntRate == 0 {
		bad("cache.punt_rate", c.Cache.PuntRate, "must be at least 1 packet/s")
	}
	if c.OVS.DBSocket == "" {
		bad("ovs.db_socket", c.OVS.DBSocket, "give ovsdb-server's unix socket, usually /var/run/openvswitch/db.sock")
	}
	if c.OVS.RunDir == "" {
		bad("ovs.run_dir", c.OVS.RunDir, "give ovs-vswitchd's run directory, usually /var/run/openvswitch")
	}
	switch c.OVS.PortType {
	case PortTypeAuto, PortTypeSystem:
	case PortTypeAFXDP:
		if c.Datapath == "system" {
			bad("ovs.port_type", c.OVS.PortType, "AF_XDP ports are a userspace (netdev) datapath feature and datapath is system: set ovs.port_type: auto or system, or datapath: netdev")
		}
	default:
		bad("ovs.port_type", c.OVS.PortType, "must be %s, %s or %s", PortTypeAuto, PortTypeSystem, PortTypeAFXDP)
	}
	if !slices.Contains(xdpModes, c.OVS.XDPMode) {
		bad("ovs.xdp_mode", c.OVS.XDPMode, "must be one of %s (generic works on every device)", strings.Join(xdpModes, ", "))
	}
	if c.APISocket == "" {
		bad("api_socket", c.APISocket, "give a unix socket path for keyroutectl")
	}
	c.validateAPIListen(bad)
	if c.MetricsAddr != "" {
		if _, _, err := net.SplitHostPort(c.MetricsAddr); err != nil {
			bad("metrics_addr", c.MetricsAddr, "give host:port, or empty to disable")
		}
	}
	if c.PprofAddr != "" {
		if _, _, err := net.SplitHostPort(c.PprofAddr); err != nil {
			bad("pprof_addr", c.PprofAddr, "give host:port (e.g. 127.0.0.1:6060), or empty to disable")
		}
	}
	if c.RuleMaxFlows < 1 || c.RuleMaxFlows > 1000000 {
		bad("rule_max_flows", c.RuleMaxFlows, "must be 1..1000000 (default 10000)")
	}
	c.validateEtcd(bad)
	if c.Etcd.Prefix == "" || !strings.HasPrefix(c.Etcd.Prefix, "/") || !strings.HasSuffix(c.Etcd.Prefix, "/") {
		bad("etcd.prefix", c.Etcd.Prefix, "must start and end with '/', e.g. /keyroute/")
	}
	if c.StateDir == "" {
		bad("state_dir", c.StateDir, "give a state directory: it keeps this machine's node ID (and the embedded etcd's data), usually /var/lib/keyroute")
	}
	switch c.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		bad("log_level", c.LogLevel, "must be debug, info, warn or error")
	}
	return errors.Join(errs...)
}

// validateBridges checks bridges.*: each a valid name, the two distinct,
// none the name of a port keyroute creates.
func (c *Config) validateBridges(bad func(field string, v any, fix string, args ...any)) {
	const fix = "%v: give a name of up to 15 letters, digits, '-', '_' or '.' (e.g. %s)"
	b := c.Bridges
	okInt, okPhy := hostlayout.ValidateName(b.Integration), hostlayout.ValidateName(b.Physical)
	if okInt != nil {
		bad("bridges.integration", b.Integration, fix, okInt, hostlayout.DefaultIntegration)
	}
	if okPhy != nil {
		bad("bridges.physical", b.Physical, fix, okPhy, hostlayout.DefaultPhysical)
	}
	if okInt == nil && okPhy == nil {
		if err := b.Validate(); err != nil {
			bad("bridges.physical", b.Physical, "%v: give the two bridges distinct names that are not keyroute's port names (e.g. kr-int and kr-phy)", err)
		}
	}
	if c.Uplink != "" && (c.Uplink == b.Integration || c.Uplink == b.Physical) {
		bad("uplink", c.Uplink, "is also a bridge name (bridges.*): name the physical interface, e.g. eth1")
	}
}

// plaintextFix is the fix named for a plaintext etcd URL on a
// non-loopback address.
const plaintextFix = "plaintext etcd on a non-loopback address lets every machine and container that reaches it read and rewrite the cluster's state: " +
	"create the cluster CA and this host's certificate (keyroutectl pki init --dir /etc/keyroute/pki; keyroutectl pki issue %s --dir /etc/keyroute/pki --ip <host IP>), " +
	"set etcd.ca, etcd.cert and etcd.key and use https; or accept plaintext with etcd.insecure: true"

// validateEtcd checks the etcd section: TLS files all or none and
// loadable, URLs well-formed, https only with TLS files, plaintext only on
// loopback unless etcd.insecure.
func (c *Config) validateEtcd(bad func(field string, v any, fix string, args ...any)) {
	e := &c.Etcd
	embedded := len(e.Endpoints) == 0
	withTLS := e.CA != "" && e.Cert != "" && e.Key != ""
	if !withTLS && (e.CA != "" || e.Cert != "" || e.Key != "") {
		for _, f := range []struct{ name, v string }{{"etcd.ca", e.CA}, {"etcd.cert", e.Cert}, {"etcd.key", e.Key}} {
			if f.v == "" {
				bad(f.name, `""`, "etcd.ca, etcd.cert and etcd.key go together: give all three (ca.crt of keyroutectl pki init; <node>.crt and <node>.key of keyroutectl pki issue)")
			}
		}
	}
	if withTLS {
		// Loaded now, so --check-config and a start fail on a missing or
		// wrong file before anything on the host changes.
		if _, err := c.EtcdTLS().Check(embedded); err != nil {
			bad("etcd.cert", e.Cert, "%v; issue this host's certificate with keyroutectl pki issue %s --ip <host IP> and give the cluster's ca.crt as etcd.ca", err, c.Node)
		}
	}
	checkURL := func(field, u string) {
		pu, err := url.Parse(u)
		switch {
		case err != nil || pu.Scheme != "http" && pu.Scheme != "https" || pu.Port() == "":
			bad(field, u, "give a URL such as https://198.18.0.1:2379")
		case pu.Scheme == "https" && !withTLS:
			bad(field, u, "https needs etcd.ca, etcd.cert and etcd.key (keyroutectl pki issue %s)", c.Node)
		case registry.PlaintextURL(u) && !e.Insecure:
			bad(field, u, plaintextFix, c.Node)
		}
	}
	schemes := map[string]bool{}
	for _, ep := range e.Endpoints {
		checkURL("etcd.endpoints", ep)
		schemes[strings.SplitN(ep, ":", 2)[0]] = true
	}
	if len(schemes) > 1 {
		bad("etcd.endpoints", e.Endpoints, "use one scheme for every endpoint: the etcd client takes TLS or plaintext from the first one")
	}
	if len(e.Members) > 0 {
		c.validateMembers(bad, withTLS)
	}
	if !embedded {
		return
	}
	if e.EmbeddedClientURL != "" {
		checkURL("etcd.embedded_client_url", e.EmbeddedClientURL)
	} else if !withTLS && !e.Insecure {
		bad("etcd.embedded_client_url", "http://<host_ip>:2379 (the default without etcd.cert)",
			"the embedded etcd would serve the cluster's state in plaintext on the host's IP, to every machine and container that reaches it: "+
				"create the cluster CA and this host's certificate (keyroutectl pki init --dir /etc/keyroute/pki; keyroutectl pki issue %s --dir /etc/keyroute/pki --ip <host IP>) and set etcd.ca, etcd.cert and etcd.key; "+
				"or, on a single host, set etcd.embedded_client_url: http://127.0.0.1:2379; or accept plaintext with etcd.insecure: true", c.Node)
	}
	if e.EmbeddedPeerURL != "" {
		checkURL("etcd.embedded_peer_url", e.EmbeddedPeerURL)
	}
}

// ProtectedTCPPorts are the control plane's TCP ports on this host, which
// containers may not reach on the host's own addresses (flows.GuardFlows):
// etcd's client and peer ports (2379, 2380 and those of the embedded
// server's URLs and this node's etcd.members entry), and the metrics,
// pprof and api_listen (the read-only API over TCP) listeners when they
// listen on a non-loopback address. The one place this set is made.
func (c *Config) ProtectedTCPPorts() []uint16 {
	set := map[uint16]bool{2379: true, 2380: true}
	for _, u := range []string{c.Etcd.EmbeddedClientURL, c.Etcd.EmbeddedPeerURL, c.Etcd.Members[c.Node]} {
		if pu, err := url.Parse(u); err == nil && pu.Port() != "" {
			if p, err := strconv.ParseUint(pu.Port(), 10, 16); err == nil && p != 0 {
				set[uint16(p)] = true
			}
		}
	}
	for _, addr := range []string{c.MetricsAddr, c.PprofAddr, c.APIListen} {
		host, port, err := net.SplitHostPort(addr)
		if err != nil {
			continue
		}
		if a, err := netip.ParseAddr(host); err == nil && a.IsLoopback() || host == "localhost" {
			continue // the host's kernel never routes a container's packet to loopback
		}
		if p, err := strconv.ParseUint(port, 10, 16); err == nil && p != 0 {
			set[uint16(p)] = true
		}
	}
	ports := make([]uint16, 0, len(set))
	for p := range set {
		ports = append(ports, p)
	}
	slices.Sort(ports)
	return ports
}

// EtcdTLS returns the etcd TLS files, or nil when none are set.
func (c *Config) EtcdTLS() *registry.TLSFiles {
	if c.Etcd.CA == "" && c.Etcd.Cert == "" && c.Etcd.Key == "" {
		return nil
	}
	return &registry.TLSFiles{CA: c.Etcd.CA, Cert: c.Etcd.Cert, Key: c.Etcd.Key}
}

// EmbeddedURLs returns the embedded server's client and peer URLs, the
// defaults filled in for hostIP: https with TLS files, http without.
func (c *Config) EmbeddedURLs(hostIP string) (client, peer string) {
	scheme := "http"
	if c.EtcdTLS() != nil {
		scheme = "https"
	}
	client, peer = c.Etcd.EmbeddedClientURL, c.Etcd.EmbeddedPeerURL
	if client == "" {
		client = scheme + "://" + net.JoinHostPort(hostIP, "2379")
	}
	if peer == "" {
		peer = scheme + "://127.0.0.1:2380"
		if m, ok := c.Etcd.Members[c.Node]; ok {
			peer = m
		}
	}
	return client, peer
}

// ClientTLS returns the TLS files for a client of endpoints: nil for http
// endpoints (loopback, or allowed by etcd.insecure), which the etcd client
// would use in plaintext anyway.
func (c *Config) ClientTLS(endpoints []string) *registry.TLSFiles {
	if len(endpoints) == 0 || !strings.HasPrefix(endpoints[0], "https://") {
		return nil
	}
	return c.EtcdTLS()
}

// InsecureWarning is the warning the agent logs at every start while
// etcd.insecure is set ("" when it is not), naming the plaintext URLs on
// non-loopback addresses it allows (hostIP fills in the embedded server's
// default client URL).
func (c *Config) InsecureWarning(hostIP string) string {
	if !c.Etcd.Insecure {
		return ""
	}
	urls := c.Etcd.Endpoints
	if len(urls) == 0 {
		client, peer := c.EmbeddedURLs(hostIP)
		urls = []string{client, peer}
	}
	var plain []string
	for _, u := range urls {
		if registry.PlaintextURL(u) {
			plain = append(plain, u)
		}
	}
	if len(plain) == 0 {
		return "etcd.insecure: true is set but unused (every etcd URL is TLS or loopback); remove it"
	}
	return fmt.Sprintf("etcd.insecure: true: etcd is plaintext and unauthenticated at %s; every machine and container that reaches it can read and rewrite the cluster's state; set up TLS with keyroutectl pki and etcd.ca, etcd.cert, etcd.key",
		strings.Join(plain, ", "))
}

// validateUnderlayIPs checks underlay_ips: IPv4 unicast CIDRs, at most
// registry.MaxUnderlayIPs, none twice, none host_ip, none in the pod CIDR.
func (c *Config) validateUnderlayIPs(bad func(string, any, string, ...any), pod netip.Prefix) {
	if len(c.UnderlayIPs) > registry.MaxUnderlayIPs {
		bad("underlay_ips", c.UnderlayIPs, "list at most %d addresses: keys grow with the product of two hosts' addresses, and br-phy's flows per peer with it", registry.MaxUnderlayIPs)
	}
	seen := map[netip.Addr]bool{}
	if a, err := netip.ParseAddr(c.HostIP); err == nil {
		seen[a] = true
	}
	for i, s := range c.UnderlayIPs {
		field := fmt.Sprintf("underlay_ips[%d]", i)
		p, err := netip.ParsePrefix(s)
		switch {
		case err != nil || !p.Addr().Is4():
			bad(field, s, "give an IPv4 address with its prefix length, such as 198.18.1.1/16")
		case registry.ValidateAddr(p.Addr()) != nil:
			bad(field, s, "give a unicast address (%v)", registry.ValidateAddr(p.Addr()))
		case seen[p.Addr()]:
			bad(field, s, "list each address once, and not host_ip")
		case pod.IsValid() && pod.Contains(p.Addr()):
			bad(field, s, "give an underlay address outside the pod CIDR %s", pod)
		}
		if err == nil {
			seen[p.Addr()] = true
		}
	}
}

// UnderlayPrefixes returns underlay_ips parsed (call after Validate).
func (c *Config) UnderlayPrefixes() []netip.Prefix {
	out := make([]netip.Prefix, 0, len(c.UnderlayIPs))
	for _, s := range c.UnderlayIPs {
		out = append(out, netip.MustParsePrefix(s))
	}
	return out
}

// PodCIDR returns the parsed cluster pod CIDR (valid after Validate).
func (c *Config) PodCIDR() netip.Prefix { return netip.MustParsePrefix(c.Cluster.PodCIDR) }

// KeySet returns the parsed cache key set (valid after Validate).
func (c *Config) KeySet() keyalloc.KeySet {
	k, _ := keyalloc.ParseKeySet(c.Cache.Keys)
	return k
}

// GatewayMAC returns the parsed virtual gateway MAC (valid after Validate).
func (c *Config) GatewayMAC() net.HardwareAddr {
	m, _ := net.ParseMAC(c.Cluster.GatewayMAC)
	return m
}
