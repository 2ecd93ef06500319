// Package simcluster runs keyroute end to end on one machine, for the e2e
// tests and cmd/keyroute-demo: a fabric namespace whose Linux bridge plays the
// physical network, simulated hosts (a namespace, a private Open vSwitch and a
// keyroute-agent each), containers attached through keyroutectl, and tools to
// watch the wire (tcpdump plus a pcap decoder) and drive traffic (ping,
// iperf3, UDP sockets). Every namespace it creates starts with the cluster's
// prefix, and it stops what it started by PID.
package simcluster

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/keyroute/keyroute/simhost"
)

// Fixed names and addresses of the simulated network (DESIGN.md "Test hosts").
const (
	// FabricBridge is the Linux bridge in the fabric namespace.
	FabricBridge = "fab0"
	// Uplink is each host's physical interface, the agent's uplink.
	Uplink = "eth1"
	// ExternalEtcdIP is where the fabric-namespace etcd listens
	// (Options.ExternalEtcd).
	ExternalEtcdIP = "198.18.0.254"
	// MaxHosts keeps host IPs 198.18.0.1..253 clear of ExternalEtcdIP.
	MaxHosts = 253
	// ReadyTimeout bounds how long an agent may take to come up: more than
	// the agent's own wait (60 s) for a busy ovs-vswitchd to number ports.
	ReadyTimeout = 75 * time.Second
)

// Options configures NewCluster. The zero value is two hosts in the agent's
// default mode with embedded etcd on host 1.
type Options struct {
	// Hosts is the number of simulated hosts (default 2, at most MaxHosts).
	Hosts int
	// Mode is the agents' mode, tunnel or rewrite; empty keeps the agent's
	// default.
	Mode string
	// Prefix starts every namespace name (default "kre<pid>-", with a letter
	// added for each further cluster of the same process).
	Prefix string
	// BinDir holds keyroute-agent and keyroutectl; empty builds them with
	// `go build` into the cluster's directory.
	BinDir string
	// Dir is the parent of the cluster's working directory (default: the
	// system temp dir). The working directory's name starts with Prefix.
	Dir string
	// ExternalEtcd runs Debian's etcd in the fabric namespace at
	// ExternalEtcdIP instead of host 1's embedded server.
	ExternalEtcd bool
	// PlaintextEtcd runs etcd without TLS: http:// URLs, and
	// etcd.insecure: true in every agent config (agents then warn at every
	// start). By default etcd serves https and requires client
	// certificates of a CA the harness creates (Cluster.PKIDir).
	PlaintextEtcd bool
	// PKIDir, if set, is an existing PKI directory to use instead of
	// creating one: ca.crt, h<i>.crt/.key for every host, harness.crt/.key
	// for the harness's own etcd clients and, with ExternalEtcd,
	// etcd.crt/.key for the server (keyroutectl pki writes this layout).
	PKIDir string
	// EtcdMembers, if 3, 5 or 7, runs the embedded etcd as that many
	// members on hosts 1..EtcdMembers (etcd.members), started together;
	// the other hosts' agents use all members' client URLs
	// (e2e/etcdmembers.go).
	EtcdMembers int
	// NoAgents builds the fabric, hosts and OVS instances but starts no
	// agent (for testing the harness itself, or agent-less experiments).
	NoAgents bool
	// AgentConfig, if set, may change host i's (1-based) agent config
	// before it is written as YAML.
	AgentConfig func(host int, cfg map[string]any)
	// Logger receives progress messages (default: discarded).
	Logger *slog.Logger
	// OVSFabric, if set, replaces the fab0 Linux bridge with OVS bridges
	// acting as the model's ToR/leaf/spine devices (simcluster/fabric.go).
	OVSFabric *OVSFabric
	// Datapath is every host's OVS datapath, DatapathNetdev or
	// DatapathSystem; empty takes EnvDatapath (default netdev).
	Datapath string
	// PortType is every host's ovs.port_type (auto, system or afxdp);
	// empty takes EnvPortType, unset there the agent's default (auto).
	PortType string
	// KeepUp makes Close leave the cluster running (agents, OVS, etcd,
	// namespaces, directory) and stop only traffic tools; remove it later
	// with Teardown(Prefix).
	KeepUp bool
}

// Cluster is a running simulated cluster.
type Cluster struct {
	// Prefix starts the name of every namespace of this cluster.
	Prefix string
	// Dir is the working directory: configs, logs, OVS state, captures.
	Dir string
	// BinDir holds keyroute-agent and keyroutectl.
	BinDir string
	// Fabric is the namespace holding FabricBridge.
	Fabric *simhost.NetNS
	// EtcdEndpoint is the etcd URL the agents use.
	EtcdEndpoint string
	// PKIDir holds the cluster CA and the certificates (pki package
	// layout): one per host, "harness" for the harness's own etcd
	// clients, "etcd" for the external etcd. Empty with PlaintextEtcd.
	PKIDir string
	// VNI and VXLANPort are the overlay's, as configured on host 1 (for
	// reading captures).
	VNI       uint32
	VXLANPort uint16

	opts  Options
	log   *slog.Logger
	hosts []*Host
	procs procSet
	etcd  *Process
	// etcdTLS is the harness's client TLS config for etcd (nil in
	// plaintext).
	etcdTLS *tls.Config
	seq     atomic.Int64 // names capture files

	mu         sync.Mutex
	containers map[string]*Container
	closed     bool

	closeOnce sync.Once
	closeErr  error
}

var clusterSeq atomic.Int64

var prefixRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,15}$`)

// DefaultPrefix returns "kre<pid>-" for the first cluster of the process and
// "kre<pid>b-", "kre<pid>c-", … after it: no prefix is the start of another,
// so closing one cluster never touches another's namespaces.
func DefaultPrefix() string {
	n := clusterSeq.Add(1) - 1
	suffix := ""
	for ; n > 0; n /= 26 {
		suffix = string(rune('a'+n%26)) + suffix
	}
	return fmt.Sprintf("kre%d%s-", os.Getpid(), suffix)
}

// NewCluster builds the fabric and the hosts and starts the agents (host 1
// first when it serves etcd), waiting until every agent answers `status`. On
// failure it tears down whatever it started; the error carries the tail of
// the failing agent's log.
func NewCluster(ctx context.Context, opts Options) (*Cluster, error) {
	if opts.Hosts == 0 {
		opts.Hosts = 2
	}
	if opts.Hosts < 1 || opts.Hosts > MaxHosts {
		return nil, fmt.Errorf("new cluster: Hosts=%d: want 1..%d", opts.Hosts, MaxHosts)
	}
	switch opts.Mode {
	case "", "tunnel", "rewrite":
	default:
		return nil, fmt.Errorf("new cluster: Mode=%q: want tunnel or rewrite", opts.Mode)
	}
	if opts.Datapath == "" {
		dp, err := DatapathFromEnv()
		if err != nil {
			return nil, fmt.Errorf("new cluster: %w", err)
		}
		opts.Datapath = dp
	}
	switch opts.Datapath {
	case DatapathNetdev, DatapathSystem:
	default:
		return nil, fmt.Errorf("new cluster: Datapath=%q: want %s or %s", opts.Datapath, DatapathNetdev, DatapathSystem)
	}
	if err := resolvePortType(&opts); err != nil {
		return nil, err
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Prefix == "" {
		opts.Prefix = DefaultPrefix()
		// Default prefixes carry the owner's PID, so runs that died
		// without cleaning up can be recognised and removed.
		if err := CleanupStale("kre"); err != nil {
			opts.Logger.Warn("clean up stale namespaces", "err", err)
		}
	}
	if err := (&Cluster{opts: opts}).checkEtcdMembers(); err != nil {
		return nil, err
	}
	if !prefixRE.MatchString(opts.Prefix) {
		return nil, fmt.Errorf("new cluster: Prefix=%q: use up to 16 letters, digits, '.', '_' or '-'", opts.Prefix)
	}
	if left := simhost.ListNetNS(opts.Prefix); len(left) > 0 {
		return nil, fmt.Errorf("new cluster: namespaces with prefix %q already exist (%v); remove them with simcluster.Teardown(%q)", opts.Prefix, left, opts.Prefix)
	}
	dir, err := os.MkdirTemp(opts.Dir, opts.Prefix)
	if err == nil {
		dir, err = filepath.Abs(dir) // agents and daemons get these paths
	}
	if err != nil {
		return nil, fmt.Errorf("new cluster: %w", err)
	}
	cl := &Cluster{
		Prefix: opts.Prefix, Dir: dir, BinDir: opts.BinDir, opts: opts, log: opts.Logger,
		containers: map[string]*Container{}, VNI: 100, VXLANPort: 4789,
	}
	if err := cl.start(ctx); err != nil {
		cl.opts.KeepUp = false // a half-built cluster is no use to anyone
		return nil, errors.Join(err, cl.Close())
	}
	return cl, nil
}

func (cl *Cluster) start(ctx context.Context) error {
	if !cl.opts.NoAgents && cl.BinDir == "" {
		cl.BinDir = filepath.Join(cl.Dir, "bin")
		cl.log.Info("building keyroute-agent and keyroutectl", "dir", cl.BinDir)
		if err := BuildBinaries(ctx, cl.BinDir); err != nil {
			return err
		}
	}
	if err := cl.startFabric(); err != nil {
		return err
	}
	for i := 1; i <= cl.opts.Hosts; i++ {
		if err := ctx.Err(); err != nil {
			return err
		}
		h, err := cl.startHost(i)
		if err != nil {
			return err
		}
		cl.hosts = append(cl.hosts, h)
	}
	scheme := "https"
	if cl.opts.PlaintextEtcd {
		scheme = "http"
	} else if err := cl.setupPKI(); err != nil {
		return err
	}
	cl.EtcdEndpoint = scheme + "://" + cl.hosts[0].IP.String() + ":2379"
	if cl.opts.ExternalEtcd {
		cl.EtcdEndpoint = scheme + "://" + ExternalEtcdIP + ":2379"
		if err := cl.startEtcd(ctx); err != nil {
			return err
		}
	}
	for _, h := range cl.hosts {
		if err := h.writeConfig(); err != nil {
			return err
		}
	}
	if cl.opts.NoAgents {
		return nil
	}
	first := 0
	if cl.opts.EtcdMembers > 0 {
		if err := cl.startMembers(ctx); err != nil {
			return err
		}
		first = cl.opts.EtcdMembers
	} else if !cl.opts.ExternalEtcd {
		// The others need host 1's embedded etcd to come up at all.
		if err := cl.hosts[0].startAgent(ctx); err != nil {
			return err
		}
		first = 1
	}
	for _, h := range cl.hosts[first:] {
		if err := h.spawnAgent(); err != nil {
			return err
		}
	}
	for _, h := range cl.hosts[first:] {
		if err := h.waitReady(ctx); err != nil {
			return err
		}
	}
	cl.log.Info("cluster up", "prefix", cl.Prefix, "hosts", len(cl.hosts), "dir", cl.Dir)
	return nil
}

func (cl *Cluster) startFabric() error {
	fab, err := simhost.NewNetNS(cl.Prefix + "fab")
	if err != nil {
		return err
	}
	cl.Fabric = fab
	if cl.opts.OVSFabric != nil {
		return cl.startOVSFabric()
	}
	cmds := [][]string{
		{"ip", "link", "add", FabricBridge, "type", "bridge", "stp_state", "0", "forward_delay", "0"},
		{"ip", "link", "set", FabricBridge, "up"},
	}
	if cl.opts.ExternalEtcd {
		cmds = append(cmds, []string{"ip", "addr", "add", ExternalEtcdIP + "/24", "dev", FabricBridge})
	}
	for _, c := range cmds {
		if _, err := fab.Exec(c...); err != nil {
			return fmt.Errorf("set up fabric: %w", err)
		}
	}
	return nil
}

// startHost creates host i's namespace, its uplink on the fabric and its
// private OVS.
func (cl *Cluster) startHost(i int) (*Host, error) {
	h := &Host{
		Index: i, Name: "h" + strconv.Itoa(i),
		IP:  netip.AddrFrom4([4]byte{198, 18, 0, byte(i)}),
		MAC: net.HardwareAddr{0x02, 0, 0, 0, 0, byte(i)},
		cl:  cl,
	}
	h.Dir = filepath.Join(cl.Dir, h.Name)
	h.APISocket = filepath.Join(h.Dir, "agent.sock")
	h.LogPath = filepath.Join(h.Dir, "agent.log")
	h.ConfigPath = filepath.Join(h.Dir, "agent.yaml")
	ns, err := simhost.NewNetNS(cl.Prefix + h.Name)
	if err != nil {
		return nil, err
	}
	h.NS = ns
	if err := simhost.AddVeth(Uplink, ns.Name, h.Name, cl.Fabric.Name); err != nil {
		return nil, fmt.Errorf("wire %s to the fabric: %w", h.Name, err)
	}
	if _, err := cl.Fabric.Exec("ip", "link", "set", h.Name, "master", FabricBridge); err != nil {
		return nil, fmt.Errorf("wire %s to the fabric: %w", h.Name, err)
	}
	for _, c := range [][]string{
		{"ip", "link", "set", Uplink, "address", h.MAC.String()},
		{"ip", "addr", "add", h.IP.String() + "/24", "dev", Uplink},
	} {
		if _, err := ns.Exec(c...); err != nil {
			return nil, fmt.Errorf("address %s: %w", h.Name, err)
		}
	}
	ovs, err := simhost.StartOVS(filepath.Join(h.Dir, "ovs"), ns.Name)
	if err != nil {
		return nil, err
	}
	h.OVS = ovs
	cl.log.Info("host ready", "host", h.Name, "ip", h.IP, "netns", ns.Name)
	return h, nil
}

// Host returns host i (1-based), or nil if there is none.
func (cl *Cluster) Host(i int) *Host {
	if i < 1 || i > len(cl.hosts) {
		return nil
	}
	return cl.hosts[i-1]
}

// Hosts returns every host, in order.
func (cl *Cluster) Hosts() []*Host { return append([]*Host(nil), cl.hosts...) }

// Containers returns the attached containers sorted by name.
func (cl *Cluster) Containers() []*Container {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	out := make([]*Container, 0, len(cl.containers))
	for _, c := range cl.containers {
		out = append(out, c)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// Close stops every agent, tcpdump, iperf3, etcd and OVS the cluster started
// (by PID), deletes every namespace with its prefix and removes its
// directory. With KeepUp it stops only traffic tools and leaves the rest.
// Concurrent and repeated calls wait for the first and return its result.
func (cl *Cluster) Close() error {
	cl.closeOnce.Do(func() {
		cl.mu.Lock()
		cl.closed = true
		cl.mu.Unlock()
		cl.closeErr = cl.close()
	})
	return cl.closeErr
}

func (cl *Cluster) close() error {
	if cl.opts.KeepUp {
		err := cl.procs.stopAll(func(p *Process) bool { return p.daemon })
		cl.log.Info("cluster left up", "prefix", cl.Prefix, "dir", cl.Dir, "teardown", fmt.Sprintf("simcluster.Teardown(%q)", cl.Prefix))
		return err
	}
	errs := []error{cl.procs.stopAll(nil)}
	for _, h := range cl.hosts {
		if h.OVS != nil {
			errs = append(errs, h.OVS.Stop())
		}
	}
	for _, name := range simhost.ListNetNS(cl.Prefix) {
		if err := (&simhost.NetNS{Name: name}).Delete(); err != nil {
			errs = append(errs, fmt.Errorf("delete netns %s: %w", name, err))
		}
	}
	errs = append(errs, os.RemoveAll(cl.Dir))
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("close cluster %s: %w", cl.Prefix, err)
	}
	return nil
}
