// Package agent is keyroute's host agent: it sets up br-int and br-phy,
// registers the host in etcd, attaches containers and keeps the OpenFlow
// pipelines equal to the cluster state.
package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"path/filepath"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/keyroute/keyroute/api"
	"github.com/keyroute/keyroute/cacheproto"
	"github.com/keyroute/keyroute/controller"
	"github.com/keyroute/keyroute/flows"
	"github.com/keyroute/keyroute/hostlayout"
	"github.com/keyroute/keyroute/internal/version"
	"github.com/keyroute/keyroute/keyalloc"
	"github.com/keyroute/keyroute/openflow"
	"github.com/keyroute/keyroute/ovsdb"
	"github.com/keyroute/keyroute/preflight"
	"github.com/keyroute/keyroute/registry"
)

// Bridge names come from the config (bridges.*); port names and numbers
// from hostlayout.
const (
	// flowOwner names the agent's desired flow set in the controller.
	flowOwner = "agent"
	// hostTTL is the etcd lease of this agent's alive/ record: how long
	// after a crash peers show its agent as down. Membership (hosts/) has
	// no lease; see registry.RegisterHost.
	hostTTL = 15 * time.Second
)

// flowOwners are the controller's desired-state owners on the bridges: the
// pipeline, rewrite mode's cache entries and the network rules.
var flowOwners = []string{flowOwner, cacheOwner, rulesOwner}

// Agent is one host's agent.
type Agent struct {
	cfg     Config
	log     *slog.Logger
	started time.Time

	dp       preflight.Result
	plan     datapathPlan
	ports    *portTypes
	db       *ovsdb.Client
	intSw    *controller.Switch
	phySw    *controller.Switch
	embedded *registry.Embedded
	reg      *registry.Client
	lease    *registry.Lease
	etcdEPs  []string
	metrics  *metrics

	host         flows.Host
	containerMTU int
	cache        *cache  // rewrite mode only
	probe        *prober // rewrite mode with cache.probe_port only
	rules        *ruleEngine

	mu        sync.Mutex
	endpoints map[string]registry.Endpoint     // local containers by name
	ofports   map[string]uint32                // container port name → ofport
	peers     map[string]registry.Host         // other hosts by name
	roaming   map[netip.Addr]registry.Endpoint // endpoints outside their host's subnet
	attachMu  sync.Mutex                       // serialises attach/detach
	programMu sync.Mutex                       // one snapshot-and-install at a time, so an older snapshot never lands last
	dirty     chan struct{}
	ready     chan struct{} // closed once the agent serves its API
	etcd      etcdHealth
	lastHosts []api.Host // the last hosts answer read from etcd, for stale answers
}

// Ready is closed once Run has set the host up and the API socket serves
// (what systemd's READY=1 means).
func (a *Agent) Ready() <-chan struct{} { return a.ready }

// New validates cfg and returns an agent ready to Run.
func New(cfg Config, log *slog.Logger) (*Agent, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &Agent{
		cfg:       cfg,
		log:       log,
		endpoints: map[string]registry.Endpoint{},
		ofports:   map[string]uint32{},
		peers:     map[string]registry.Host{},
		roaming:   map[netip.Addr]registry.Endpoint{},
		dirty:     make(chan struct{}, 1),
		ready:     make(chan struct{}),
		metrics:   newMetrics(),
	}, nil
}

// Run starts the agent and blocks until ctx ends. Flows stay installed when
// it returns: the dataplane keeps forwarding without the agent.
func (a *Agent) Run(ctx context.Context) error {
	a.started = time.Now()
	defer a.close()
	if err := a.setup(ctx); err != nil {
		return err
	}
	errc := make(chan error, 4)
	ln, err := a.listenAPI()
	if err != nil {
		return err
	}
	go func() { errc <- a.serveAPI(ctx, ln) }()
	if a.cfg.MetricsAddr != "" {
		go func() { errc <- a.serveMetrics(ctx) }()
	}
	if a.cfg.PprofAddr != "" {
		go func() { errc <- a.servePprof(ctx) }()
	}
	if a.cfg.Mode == ModeRewrite && a.cfg.Cache.ProbePort != 0 {
		p := newProber(a, a.cfg.Cache.ProbePort, a.cfg.KeySet().Keys(), a.cfg.Cache.ProbeInterval)
		if err := p.listen(a.host.IP); err != nil {
			return err
		}
		a.probe = p
		go p.run(ctx)
	}
	go a.watchHosts(ctx)
	go a.watchRoaming(ctx)
	go a.programLoop(ctx)
	if a.plan.TunnelNeighbours {
		go a.refreshTunnelNeighbours(ctx)
	}
	go a.keepRegistered(ctx)
	a.etcd.set(nil) // setup just read and wrote etcd
	go a.monitorEtcd(ctx)
	a.log.Info("agent ready", "node", a.cfg.Node, "host_ip", a.host.IP, "pod_subnet", a.host.Subnet,
		"datapath", a.dp.Datapath, "mode", a.cfg.Mode, "version", version.String())
	close(a.ready)
	select {
	case <-ctx.Done():
		a.log.Info("agent stopping; flows stay installed")
		return nil
	case err := <-errc:
		return err
	}
}

// keepRegistered re-registers the host whenever its lease is lost (etcd
// was unreachable for a whole TTL): only the agent's liveness (alive/)
// went with it, the dataplane and peers' flows never depended on it, and
// peers see the agent up again as soon as etcd answers.
func (a *Agent) keepRegistered(ctx context.Context) {
	lease := a.lease
	for {
		select {
		case <-ctx.Done():
			return
		case <-lease.Done():
		}
		a.log.Warn("lost the agent's etcd lease (liveness); registering again")
		a.metrics.etcdErrors.WithLabelValues("lease").Inc()
		for backoff := time.Second; ; backoff = min(2*backoff, 10*time.Second) {
			rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			l, err := a.reg.RegisterHost(rctx, a.hostRecord(), hostTTL)
			cancel()
			if err == nil {
				lease = l
				a.mu.Lock()
				a.lease = l
				a.mu.Unlock()
				a.log.Info("host registered again")
				break
			}
			select {
			case <-ctx.Done():
				return
			case <-time.After(backoff):
			}
		}
	}
}

func (a *Agent) hostRecord() registry.Host {
	return registry.Host{
		Name: a.cfg.Node, UnderlayIP: a.host.IP, UnderlayMAC: a.host.MAC,
		PodSubnet: a.host.Subnet, Datapath: a.dp.Datapath, AgentVersion: version.String(),
		Bridges:     a.cfg.Bridges,
		APIAddr:     a.cfg.APIAddr(a.host.IP),
		UnderlayIPs: a.host.UnderlayIPs,
	}
}

func (a *Agent) close() {
	a.mu.Lock()
	lease := a.lease
	a.mu.Unlock()
	if lease != nil {
		// Revoking takes only alive/: peers show the agent down at once
		// instead of after the TTL, and keep the host's flows and keys.
		// Bounded well inside a service stop's 2 s: with etcd unreachable
		// the lease simply expires.
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		if err := lease.Revoke(ctx); err != nil {
			a.log.Warn("agent liveness stays in etcd until its lease expires", "err", err)
		}
		cancel()
	}
	if a.reg != nil {
		a.reg.Close()
	}
	if a.embedded != nil {
		a.embedded.Close()
	}
	if a.db != nil {
		a.db.Close()
	}
}

// setup runs the start-up sequence; each step's error says which step.
func (a *Agent) setup(ctx context.Context) error {
	mode, err := preflight.ParseMode(a.cfg.Datapath)
	if err != nil {
		return fmt.Errorf("kernel preflight: %w", err)
	}
	a.dp, err = preflight.Run(ctx, mode, preflight.SystemEnv(a.cfg.OVS.RunDir))
	if err != nil {
		return fmt.Errorf("kernel preflight: %w", err)
	}
	if a.plan, err = planFor(a.dp); err != nil {
		return fmt.Errorf("kernel preflight: %w", err)
	}
	a.log.Info("kernel preflight", "datapath", a.dp.Datapath, "reason", a.dp.Reason,
		"isolate_ports", a.plan.IsolatePorts, "checksum_off", a.plan.ChecksumOff)

	var want netip.Addr
	if a.cfg.HostIP != "" {
		want = netip.MustParseAddr(a.cfg.HostIP)
	}
	addr, err := findHostAddr(a.cfg.Uplink, a.cfg.Bridges.Physical, want)
	if err != nil {
		return fmt.Errorf("find host IP: %w", err)
	}
	uplink, err := net.InterfaceByName(a.cfg.Uplink)
	if err != nil {
		return fmt.Errorf("uplink %s: %w", a.cfg.Uplink, err)
	}
	mtu := a.cfg.ContainerMTU
	if mtu == 0 {
		mtu = defaultContainerMTU(a.cfg.Mode, uplink.MTU)
	}
	a.containerMTU = mtu // the gateway port's too (ensureBridges)

	if a.db, err = ovsdb.Dial(ctx, a.cfg.OVS.DBSocket, ovsdb.Options{Logger: a.log, Reconnect: true}); err != nil {
		return fmt.Errorf("connect to OVSDB at %s: %w", a.cfg.OVS.DBSocket, err)
	}
	if err := a.choosePorts(ctx); err != nil {
		return err
	}
	if err := a.ensureBridges(ctx, addr.Prefix.Addr(), uplink.HardwareAddr); err != nil {
		return err
	}
	a.host = flows.Host{
		Name: a.cfg.Node, IP: addr.Prefix.Addr(), MAC: uplink.HardwareAddr,
		GatewayMAC: a.cfg.GatewayMAC(), GatewayPortMAC: hostlayout.GatewayPortMAC,
		Cluster: a.cfg.PodCIDR(), VNI: a.cfg.Cluster.VNI,
		VXLANPort: hostlayout.OFPortVXLAN, GatewayPort: hostlayout.OFPortGateway, PatchPort: hostlayout.OFPortPatch,
		UplinkPort: hostlayout.OFPortUplink, PhyPatchPort: hostlayout.OFPortPhysicalPatch,
		TunnelUDPPort: a.cfg.Cluster.VXLANPort, ProtectedTCPPorts: a.cfg.ProtectedTCPPorts(),
		TunnelMTU: uplink.MTU - vxlanOverhead,
	}
	a.newSwitches()
	// br-phy forwards before the host IP moves onto it: with fail_mode
	// secure and no flows, the host would be cut off (from etcd, too).
	if err := a.phySw.SetDesired(ctx, flowOwner, flows.PhyPipeline(a.host)); err != nil {
		return fmt.Errorf("install %s pipeline: %w", a.cfg.Bridges.Physical, err)
	}
	if err := a.startSwitch(ctx, a.phySw); err != nil {
		return err
	}
	if addr.Link == a.cfg.Uplink {
		if err := moveHostAddr(addr.Prefix, a.cfg.Uplink, a.cfg.Bridges.Physical); err != nil {
			return fmt.Errorf("move host IP onto %s: %w", a.cfg.Bridges.Physical, err)
		}
		a.log.Info("moved host IP", "addr", addr.Prefix, "from", a.cfg.Uplink, "to", a.cfg.Bridges.Physical)
	}
	if ps := a.cfg.UnderlayPrefixes(); len(ps) > 0 {
		if err := placeUnderlayAddrs(ps, a.cfg.Uplink, a.cfg.Bridges.Physical); err != nil {
			return err
		}
		for _, p := range ps {
			a.host.UnderlayIPs = append(a.host.UnderlayIPs, p.Addr())
		}
		a.log.Info("underlay IPs on the physical bridge", "addrs", a.cfg.UnderlayIPs, "bridge", a.cfg.Bridges.Physical)
	}
	if a.plan.IsolatePorts {
		if err := isolatePort(a.cfg.Uplink); err != nil {
			return fmt.Errorf("keep the host stack off the uplink %s: %w", a.cfg.Uplink, err)
		}
	} else if err := removePortChains(); err != nil {
		// Left by an earlier run on the netdev datapath, they would starve
		// OVS's kernel receive handler.
		return fmt.Errorf("remove the netdev datapath's port chains: %w", err)
	}

	if err := a.connectEtcd(ctx, addr.Prefix.Addr()); err != nil {
		return err
	}
	if err := a.claimNode(ctx, addr.Prefix.Addr()); err != nil {
		return err
	}
	adopted, err := a.agreeClusterSettings(ctx)
	if err != nil {
		return err
	}
	if adopted {
		// The bridges and br-phy's pipeline were set up with the config's
		// values; redo them with the cluster's.
		a.host.GatewayMAC, a.host.Cluster, a.host.VNI = a.cfg.GatewayMAC(), a.cfg.PodCIDR(), a.cfg.Cluster.VNI
		if err := a.ensureBridges(ctx, addr.Prefix.Addr(), uplink.HardwareAddr); err != nil {
			return err
		}
		if err := a.phySw.SetDesired(ctx, flowOwner, flows.PhyPipeline(a.host)); err != nil {
			return fmt.Errorf("install %s pipeline: %w", a.cfg.Bridges.Physical, err)
		}
	}
	subnet, err := a.reg.ClaimSubnet(ctx, a.cfg.Node, a.cfg.PodCIDR(), a.cfg.Cluster.SubnetBits)
	if err != nil {
		return fmt.Errorf("claim pod subnet: %w", err)
	}
	a.host.Subnet, a.host.Gateway = subnet, subnet.Addr().Next()
	a.lease, err = a.reg.RegisterHost(ctx, a.hostRecord(), hostTTL)
	if err != nil {
		return fmt.Errorf("register host in etcd: %w", err)
	}
	if err := ensureGatewayAddr(hostlayout.PortGateway, a.host.Gateway, subnet, a.host.Cluster); err != nil {
		return fmt.Errorf("configure gateway port: %w", err)
	}
	if err := ensureMasquerade(a.host.Cluster); err != nil {
		return fmt.Errorf("masquerade traffic leaving the cluster: %w", err)
	}
	if err := a.loadLocalEndpoints(ctx); err != nil {
		return err
	}
	hosts, err := a.reg.ListHosts(ctx)
	if err != nil {
		return fmt.Errorf("list hosts: %w", err)
	}
	a.mu.Lock()
	for _, h := range hosts {
		if h.Name != a.cfg.Node {
			a.peers[h.Name] = h
		}
	}
	a.mu.Unlock()
	if a.cfg.Mode == ModeRewrite {
		keys := a.cfg.KeySet()
		pc := cacheproto.DefaultConfig()
		pc.Quarantine, pc.PendingTimeout, pc.Keys = a.cfg.Cache.Quarantine, a.cfg.Cache.PendingTimeout, keys.Len()
		pc.AddrPairs = func(peer string) int {
			p, _, ok := a.peerByName(peer)
			if !ok {
				return 1
			}
			return len(a.host.KeyAddrs()) * len(p.KeyAddrs())
		}
		pc.ValidKey = func(peer string, k cacheproto.Key) bool {
			p, _, ok := a.peerByName(peer)
			return ok && slices.Contains(a.host.KeyAddrs(), k.Src) && slices.Contains(p.KeyAddrs(), k.Dst)
		}
		if a.cfg.Cache.Eviction == EvictionTraffic {
			pc.Eviction = cacheproto.DefaultEviction()
			pc.Eviction.Factor, pc.Eviction.Hold = a.cfg.Cache.EvictionFactor, a.cfg.Cache.EvictionHold
		}
		alloc := keyalloc.New(a.reg.Raw(), a.cfg.Etcd.Prefix, keys,
			keyalloc.WithLogger(a.log), keyalloc.WithBadRecordHandler(a.metrics.badRecord))
		a.cache = newCache(a, alloc, flows.Rewrite{SendIdle: a.cfg.Cache.SendIdle, FallbackRetry: fallbackRetry,
			Keys: keys.Keys(), ProbePort: a.cfg.Cache.ProbePort}, pc)
	}
	a.rules = startRules(ctx, a)
	// The whole desired br-int state is known before the connection's
	// replay, so a restarted agent reconciles in one step and never
	// deletes a live flow it is about to re-add.
	if err := a.program(ctx); err != nil {
		return err
	}
	if err := a.startSwitch(ctx, a.intSw); err != nil {
		return err
	}
	var sent, recv *cacheWatch
	if a.cache != nil {
		if sent, recv, err = a.cache.start(ctx); err != nil {
			return fmt.Errorf("load the cache: %w", err)
		}
	}
	// Every owner's desired set is in place: flows of ours that nobody
	// desires any more (left by an earlier run) can go.
	for _, sw := range []*controller.Switch{a.phySw, a.intSw} {
		res, err := sw.Reconcile(ctx)
		if err != nil {
			return fmt.Errorf("reconcile %s: %w", sw.Addr(), err)
		}
		if res.Added+res.Deleted > 0 {
			a.log.Info("reconciled flows", "switch", sw.Addr(), "added", res.Added, "deleted", res.Deleted)
		}
	}
	if a.cache != nil {
		a.cache.reconciled(ctx, sent, recv)
	}
	return nil
}

func (a *Agent) ensureBridges(ctx context.Context, hostIP netip.Addr, uplinkMAC net.HardwareAddr) error {
	br := a.cfg.Bridges
	intPatch, phyPatch := br.IntegrationPatch(), br.PhysicalPatch()
	ids := map[string]string{"keyroute-node": a.cfg.Node}
	// Nothing is written before every bridge and port is known to be free
	// or keyroute's: an existing bridge of another OVS user is never
	// taken over, not even half-way (the uplink moved into our physical
	// bridge while the integration bridge is refused).
	if err := a.db.CheckOwnership(ctx, []string{br.Physical, br.Integration},
		[]string{a.cfg.Uplink, hostlayout.PortVXLAN, intPatch, phyPatch, hostlayout.PortGateway}); err != nil {
		var fe *ovsdb.ForeignError
		switch {
		case !errors.As(err, &fe):
			return err
		case fe.Kind == "bridge":
			return fmt.Errorf("%w; keyroute never takes over a bridge it did not create: give keyroute other bridge names "+
				"(bridges.integration and bridges.physical in the agent config, e.g. kr-int and kr-phy)", err)
		case fe.Name == a.cfg.Uplink:
			return fmt.Errorf("%w; the uplink must be keyroute's alone: give keyroute another interface (uplink)", err)
		default:
			return fmt.Errorf("%w; keyroute needs this port name on its own bridges and never takes over another owner's port "+
				"(the patch ports are named after bridges.*; vxlan0 and kr-gw are fixed)", err)
		}
	}
	steps := []struct {
		what string
		fn   func() error
	}{
		{"bridge " + br.Physical, func() error {
			// The physical bridge's LOCAL port takes over the uplink's MAC
			// with its IP, so neighbours' ARP caches stay right.
			return a.db.EnsureBridge(ctx, ovsdb.BridgeSpec{Name: br.Physical, DatapathType: a.dp.Datapath,
				HWAddr: uplinkMAC, TableNames: flows.PhyTableNames(), ExternalIDs: ids})
		}},
		{"uplink port " + a.cfg.Uplink, func() error {
			// The host's neighbour entries for peers (on br-phy, where
			// its IP lives) point through the uplink.
			_, err := a.ensureDataPort(ctx, dataPort{Bridge: br.Physical, Kind: "uplink", NeighDev: br.Physical,
				Spec: ovsdb.PortSpec{Name: a.cfg.Uplink, OFPortRequest: int(hostlayout.OFPortUplink), ExternalIDs: ids}})
			return err
		}},
		{"bridge " + br.Integration, func() error {
			return a.db.EnsureBridge(ctx, ovsdb.BridgeSpec{Name: br.Integration, DatapathType: a.dp.Datapath,
				TableNames: flows.IntTableNames(), ExternalIDs: ids})
		}},
		{"tunnel port " + hostlayout.PortVXLAN, func() error {
			return a.db.EnsurePort(ctx, br.Integration, ovsdb.PortSpec{Name: hostlayout.PortVXLAN, Type: "vxlan", OFPortRequest: int(hostlayout.OFPortVXLAN),
				Options: map[string]string{"remote_ip": "flow", "key": "flow", "local_ip": hostIP.String(),
					"dst_port": fmt.Sprint(a.cfg.Cluster.VXLANPort)}, ExternalIDs: ids})
		}},
		{"patch port " + intPatch, func() error {
			return a.db.EnsurePort(ctx, br.Integration, ovsdb.PortSpec{Name: intPatch, Type: "patch",
				Options: map[string]string{"peer": phyPatch}, OFPortRequest: int(hostlayout.OFPortPatch), ExternalIDs: ids})
		}},
		{"patch port " + phyPatch, func() error {
			return a.db.EnsurePort(ctx, br.Physical, ovsdb.PortSpec{Name: phyPatch, Type: "patch",
				Options: map[string]string{"peer": intPatch}, OFPortRequest: int(hostlayout.OFPortPhysicalPatch), ExternalIDs: ids})
		}},
		{"gateway port " + hostlayout.PortGateway, func() error {
			return a.db.EnsurePort(ctx, br.Integration, ovsdb.PortSpec{Name: hostlayout.PortGateway, Type: "internal",
				OFPortRequest: int(hostlayout.OFPortGateway), MAC: hostlayout.GatewayPortMAC.String(), ExternalIDs: ids,
				// The host and the containers exchange packets of the
				// containers' MTU; OVS drops what exceeds a port's MTU.
				MTURequest: a.containerMTU})
		}},
	}
	for _, s := range steps {
		if err := s.fn(); err != nil {
			return fmt.Errorf("set up %s: %w", s.what, err)
		}
	}
	for _, p := range []string{a.cfg.Uplink, hostlayout.PortVXLAN, intPatch, phyPatch, hostlayout.PortGateway} {
		if err := a.waitPort(ctx, p); err != nil {
			return fmt.Errorf("set up port %s: %w", p, err)
		}
	}
	return nil
}

// waitPort waits for a port's ofport. A patch port reports "no usable peer"
// until ovs-vswitchd has created its peer too, so errors count only if they
// persist.
//
// ovs-vswitchd numbers ports only when it reconfigures, which on a busy
// host (its main thread forwarding, the kernel's RTNL lock held by
// namespace or device teardown) has taken over 20 s; so it waits up to
// portWait, saying every 10 s what it waits for, and the error names the
// port's last state rather than only the deadline.
func (a *Agent) waitPort(ctx context.Context, name string) error {
	start := time.Now()
	deadline := start.Add(portWait)
	lastLog := start
	var last error
	for {
		wctx, cancel := context.WithDeadline(ctx, deadline)
		_, err := a.db.WaitOFPort(wctx, name)
		cancel()
		switch {
		case err == nil:
			return nil
		case ctx.Err() != nil:
			return err
		case time.Now().After(deadline):
			if last == nil || !errors.Is(err, context.DeadlineExceeded) {
				last = err
			}
			return fmt.Errorf("port %s has no OpenFlow port number after %s (is ovs-vswitchd running and not stuck? see its log); last state: %w",
				name, portWait, last)
		}
		if !errors.Is(err, context.DeadlineExceeded) {
			last = err
		}
		if time.Since(lastLog) >= 10*time.Second {
			lastLog = time.Now()
			a.log.Warn("still waiting for ovs-vswitchd to number a port", "port", name, "waited", time.Since(start).Round(time.Second), "last", last)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// portWait bounds the wait for a port's OpenFlow number (waitPort, addPort).
const portWait = 60 * time.Second

func (a *Agent) newSwitches() {
	opts := controller.Options{
		Logger:      a.log,
		OwnedCookie: flows.Owned,
	}
	a.phySw = controller.New("unix:"+filepath.Join(a.cfg.OVS.RunDir, a.cfg.Bridges.Physical+".mgmt"), opts)
	// Handlers reach a.cache, which exists before br-int connects.
	opts.OnPacketIn = a.onPacketIn
	opts.OnConnected = func(ctx context.Context, sw *controller.Switch) error {
		if err := ensureMeter(ctx, sw, flows.FragNeededMeter, a.cfg.FragNeededRate); err != nil {
			return err
		}
		if a.cfg.Mode != ModeRewrite {
			return nil
		}
		return ensureMeter(ctx, sw, flows.PuntMeter, a.cfg.Cache.PuntRate)
	}
	if a.cfg.Mode == ModeRewrite {
		opts.OnFlowRemoved = func(fr *openflow.FlowRemoved) { a.cache.onFlowRemoved(fr) }
	}
	a.intSw = controller.New("unix:"+filepath.Join(a.cfg.OVS.RunDir, a.cfg.Bridges.Integration+".mgmt"), opts)
}

// startSwitch runs a switch connection (for the agent's lifetime) and waits
// for its first handshake and replay.
func (a *Agent) startSwitch(ctx context.Context, sw *controller.Switch) error {
	go sw.Run(ctx)
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := sw.WaitConnected(wctx); err != nil {
		return fmt.Errorf("OpenFlow connection to %s: %w", sw.Addr(), err)
	}
	return nil
}

func (a *Agent) connectEtcd(ctx context.Context, hostIP netip.Addr) error {
	// Every start says so while plaintext is allowed, so the setting is
	// not forgotten.
	if w := a.cfg.InsecureWarning(hostIP.String()); w != "" {
		a.log.Warn(w)
	}
	a.etcdEPs = a.cfg.Etcd.Endpoints
	if len(a.etcdEPs) == 0 {
		clientURL, peerURL := a.cfg.EmbeddedURLs(hostIP.String())
		e, err := registry.StartEmbedded(ctx, registry.EmbeddedConfig{
			DataDir: filepath.Join(a.cfg.StateDir, "etcd"), ClientURL: clientURL,
			PeerURL: peerURL, Name: a.cfg.Node, Logger: a.log, Members: a.cfg.Etcd.Members,
			TLS: a.cfg.EtcdTLS(), Insecure: a.cfg.Etcd.Insecure,
		})
		if err != nil {
			return fmt.Errorf("start embedded etcd: %w", err)
		}
		a.embedded = e
		a.etcdEPs = e.Endpoints()
	}
	// The registry checks records against this agent's cluster settings
	// too: a peer's pod subnet of another size, or an endpoint outside the
	// pod CIDR, is skipped like any other bad record.
	opts := []registry.Option{registry.WithPrefix(a.cfg.Etcd.Prefix), registry.WithLogger(a.log),
		registry.WithDialTimeout(a.cfg.Etcd.DialTimeout), registry.WithTLS(a.cfg.ClientTLS(a.etcdEPs)),
		registry.WithCluster(a.cfg.PodCIDR(), a.cfg.Cluster.SubnetBits),
		registry.WithBadRecordHandler(a.metrics.badRecord)}
	if len(a.cfg.Etcd.Members) > 0 {
		// A member's agent starts with its own member's URL and learns
		// the others' from etcd, so it fails over to them like any client.
		opts = append(opts, registry.WithAutoSync(30*time.Second))
	}
	reg, err := registry.New(a.etcdEPs, opts...)
	if err != nil {
		return fmt.Errorf("connect to etcd %v: %w", a.etcdEPs, err)
	}
	if len(a.cfg.Etcd.Members) > 0 {
		a.etcdEPs = reg.Raw().Endpoints()
	}
	a.reg = reg
	return nil
}

// loadLocalEndpoints picks up containers attached before a restart.
func (a *Agent) loadLocalEndpoints(ctx context.Context) error {
	eps, err := a.reg.ListEndpoints(ctx, registry.EndpointFilter{Host: a.cfg.Node})
	if err != nil {
		return fmt.Errorf("list this host's endpoints: %w", err)
	}
	for _, ep := range eps {
		info, err := a.db.Interface(ctx, ep.Port)
		if err != nil || info.OFPort <= 0 {
			a.log.Warn("endpoint's port is gone; keeping the record until detach", "name", ep.Name, "port", ep.Port, "err", err)
			continue
		}
		if ep.Netns != "" {
			// A restart with another ovs.port_type (or an earlier
			// fallback) leaves the port's type to change: ensureDataPort
			// creates it again only then.
			of, err := a.ensureDataPort(ctx, dataPort{Bridge: a.cfg.Bridges.Integration, Kind: "container",
				NeighDev: hostlayout.PortGateway, NeighAddr: ep.IP, Spec: ovsdb.PortSpec{Name: ep.Port}})
			if err != nil {
				a.log.Warn("endpoint's port did not come back with this host's port type; keeping the record until detach", "name", ep.Name, "port", ep.Port, "err", err)
				continue
			}
			info.OFPort = int(of)
		}
		ep.MAC = endpointMAC(ep)
		a.mu.Lock()
		a.endpoints[ep.Name] = ep
		a.ofports[ep.Port] = uint32(info.OFPort)
		a.mu.Unlock()
	}
	return nil
}

// watchHosts follows the cluster's members and marks the pipeline dirty on
// every change. Peers are members, whether their agents run or not: an
// agent outage leaves its host's OVS forwarding, so flows and keys shared
// with it stay until its host record is deleted (keyroutectl hosts remove,
// or that host's uninstall).
func (a *Agent) watchHosts(ctx context.Context) {
	for ev := range a.reg.WatchHosts(ctx) {
		if ev.Value.Name == a.cfg.Node {
			if ev.Type == registry.EventDelete {
				a.log.Warn("this host's membership record left etcd (removed with --force, or no longer valid); peers drop its flows; restart the agent to rejoin")
			}
			continue
		}
		a.mu.Lock()
		old, had := a.peers[ev.Value.Name]
		var before flows.Peer
		if had {
			before = a.peerOf(old)
		}
		switch ev.Type {
		case registry.EventPut:
			a.peers[ev.Value.Name] = ev.Value
		case registry.EventDelete:
			delete(a.peers, ev.Value.Name)
		}
		var after flows.Peer
		if ev.Type == registry.EventPut {
			after = a.peerOf(ev.Value)
			for _, ip := range ev.Value.UnderlayIPs {
				if !slices.Contains(after.UnderlayIPs, ip) {
					a.log.Warn("host record claims a key address another host has; keys leave it out", "host", ev.Value.Name, "addr", ip)
					a.metrics.badRecord("", &registry.RecordError{Kind: registry.KindHost})
				}
			}
		}
		a.mu.Unlock()
		if ev.Type == registry.EventDelete && a.cache != nil {
			a.cache.invalidatePeer(ctx, ev.Value.Name, ev.Value.UnderlayIP)
		}
		if ev.Type == registry.EventPut && had && a.cache != nil && !slices.Equal(before.KeyAddrs(), after.KeyAddrs()) {
			// Keys on addresses the peer no longer has drain.
			a.cache.keysGone(after)
		}
		if a.probe != nil {
			if ev.Type == registry.EventDelete {
				a.probe.peerGone(ev.Value.Name)
			} else {
				a.probe.peerSeen(ev.Value.Name)
			}
		}
		if ev.Type == registry.EventPut {
			a.setTunnelNeighbour(ev.Value)
		}
		a.markDirty()
	}
}

// watchRoaming follows the cluster's roaming endpoints (/32 routes).
func (a *Agent) watchRoaming(ctx context.Context) {
	for ev := range a.reg.WatchRoaming(ctx) {
		a.mu.Lock()
		switch ev.Type {
		case registry.EventPut:
			a.roaming[ev.Value.IP] = ev.Value
		case registry.EventDelete:
			delete(a.roaming, ev.Value.IP)
		}
		a.mu.Unlock()
		if a.cache != nil {
			// Pairs towards the address through another host go off
			// their keys; the next punt finds the new host.
			if peer, _, ok := a.peerFor(ev.Value.IP); ok {
				a.cache.moved(ev.Value.IP, peer.Name)
			}
		}
		a.markDirty()
	}
}

func (a *Agent) markDirty() {
	select {
	case a.dirty <- struct{}{}:
	default:
	}
}

// programLoop reprograms br-int whenever the state changed; changes that
// arrive together are applied together.
func (a *Agent) programLoop(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-a.dirty:
		}
		if err := a.program(ctx); err != nil && ctx.Err() == nil {
			a.log.Error("program br-int", "err", err)
			time.AfterFunc(time.Second, a.markDirty)
		}
	}
}

// program makes br-int's flows equal to the current state.
func (a *Agent) program(ctx context.Context) error {
	a.programMu.Lock()
	defer a.programMu.Unlock()
	a.rules.endpointsChanged(ctx)
	eps, peers, roaming := a.snapshot()
	fs := flows.IntFlows(a.host, eps, peers, roaming)
	if a.cfg.Mode == ModeRewrite {
		fs = append(fs, flows.RewritePipeline(a.host)...)
		for _, p := range peers {
			fs = append(fs, flows.RewritePeerFlows(a.host, p)...)
		}
		phy := append(flows.PhyPipeline(a.host), flows.PhyRewriteFlows(a.host, a.cache.rw, peers)...)
		if err := a.phySw.SetDesired(ctx, flowOwner, phy); err != nil {
			return fmt.Errorf("install %s flows: %w", a.cfg.Bridges.Physical, err)
		}
	}
	if err := a.intSw.SetDesired(ctx, flowOwner, fs); err != nil {
		return fmt.Errorf("install %s flows: %w", a.cfg.Bridges.Integration, err)
	}
	a.metrics.setCounts(len(eps), len(peers))
	return nil
}

func (a *Agent) snapshot() ([]flows.Endpoint, []flows.Peer, []flows.Roaming) {
	a.mu.Lock()
	defer a.mu.Unlock()
	eps := make([]flows.Endpoint, 0, len(a.endpoints))
	for _, ep := range a.endpoints {
		eps = append(eps, flows.Endpoint{Name: ep.Name, IP: ep.IP, MAC: ep.MAC, Port: a.ofports[ep.Port]})
	}
	sort.Slice(eps, func(i, j int) bool { return eps[i].IP.Less(eps[j].IP) })
	peers := make([]flows.Peer, 0, len(a.peers))
	for _, h := range a.peers {
		if h.PodSubnet.IsValid() && h.UnderlayIP.IsValid() {
			peers = append(peers, flows.Peer{Name: h.Name, IP: h.UnderlayIP, Subnet: h.PodSubnet})
		}
	}
	sort.Slice(peers, func(i, j int) bool { return peers[i].Name < peers[j].Name })
	var roaming []flows.Roaming
	for ip, ep := range a.roaming {
		r := flows.Roaming{IP: ip}
		if ep.Host != a.cfg.Node {
			h, ok := a.peers[ep.Host]
			if !ok || !h.UnderlayIP.IsValid() {
				continue
			}
			r.Host = &flows.Peer{Name: h.Name, IP: h.UnderlayIP, Subnet: h.PodSubnet}
		}
		roaming = append(roaming, r)
	}
	sort.Slice(roaming, func(i, j int) bool { return roaming[i].IP.Less(roaming[j].IP) })
	return eps, peers, roaming
}

// refreshTunnelNeighbours re-installs OVS's native-tunnel neighbour entries
// for every peer: OVS 3.1 ages them out, and a missing entry drops tunnel
// packets until an ARP round trip completes.
func (a *Agent) refreshTunnelNeighbours(ctx context.Context) {
	every(ctx, 30*time.Second, func() {
		a.mu.Lock()
		peers := make([]registry.Host, 0, len(a.peers))
		for _, h := range a.peers {
			peers = append(peers, h)
		}
		a.mu.Unlock()
		for _, h := range peers {
			a.setTunnelNeighbour(h)
		}
	})
}

// every runs fn every d until ctx ends (the first run after d).
func every(ctx context.Context, d time.Duration, fn func()) {
	t := time.NewTicker(d)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			fn()
		}
	}
}

func (a *Agent) setTunnelNeighbour(h registry.Host) {
	if !a.plan.TunnelNeighbours || !h.UnderlayIP.IsValid() || len(h.UnderlayMAC) == 0 {
		return
	}
	if _, err := a.appctl("tnl/arp/set", a.cfg.Bridges.Physical, h.UnderlayIP.String(), h.UnderlayMAC.String()); err != nil {
		a.log.Warn("set tunnel neighbour", "peer", h.Name, "err", err)
	}
}
