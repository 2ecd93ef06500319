package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/keyroute/keyroute/api"
	"github.com/keyroute/keyroute/cacheproto"
	"github.com/keyroute/keyroute/controller"
	"github.com/keyroute/keyroute/flows"
	"github.com/keyroute/keyroute/internal/version"
	"github.com/keyroute/keyroute/keyalloc"
	"github.com/keyroute/keyroute/openflow"
	"github.com/keyroute/keyroute/registry"
)

// listenAPI binds the local unix socket keyroutectl talks to.
func (a *Agent) listenAPI() (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(a.cfg.APISocket), 0o755); err != nil {
		return nil, fmt.Errorf("API socket dir: %w", err)
	}
	// A socket file left by a crashed agent blocks bind; one that still
	// answers belongs to a running agent.
	if c, err := net.DialTimeout("unix", a.cfg.APISocket, time.Second); err == nil {
		c.Close()
		return nil, fmt.Errorf("another agent answers on %s", a.cfg.APISocket)
	}
	os.Remove(a.cfg.APISocket)
	return listenPrivateUnix(a.cfg.APISocket)
}

// serveAPI answers keyroutectl on ln until ctx ends.
func (a *Agent) serveAPI(ctx context.Context, ln net.Listener) error {
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+api.PathStatus, a.handle(func(r *http.Request) (any, error) { return a.Status(r.Context()), nil }))
	mux.HandleFunc("GET "+api.PathHosts, a.handle(func(r *http.Request) (any, error) { return a.Hosts(r.Context()) }))
	mux.HandleFunc("DELETE "+api.PathHost, a.handle(func(r *http.Request) (any, error) {
		name := r.PathValue("name")
		if err := a.requireEtcd("remove host " + name); err != nil {
			return nil, err
		}
		if err := a.RemoveHost(r.Context(), name, r.URL.Query().Get("force") != ""); err != nil {
			return nil, err
		}
		return map[string]string{"removed": name}, nil
	}))
	mux.HandleFunc("GET "+api.PathEndpoints, a.handle(func(r *http.Request) (any, error) {
		return a.Endpoints(r.Context(), r.URL.Query().Get("all") != "")
	}))
	mux.HandleFunc("GET "+api.PathFlows, a.handle(func(r *http.Request) (any, error) {
		return a.Flows(r.Context(), r.URL.Query().Get("table"))
	}))
	mux.HandleFunc("GET "+api.PathKeys, a.handle(func(r *http.Request) (any, error) { return a.Keys(r.Context()) }))
	mux.HandleFunc("GET "+api.PathCache, a.handle(func(r *http.Request) (any, error) { return a.Cache(r.Context()) }))
	mux.HandleFunc("POST "+api.PathAttach, a.handle(func(r *http.Request) (any, error) {
		var req api.AttachRequest
		if err := decodeBody(r, &req); err != nil {
			return nil, err
		}
		if err := a.requireEtcd("attach " + req.Name); err != nil {
			return nil, err
		}
		ep, err := a.attachFromAPI(r.Context(), req)
		if err != nil {
			return nil, err
		}
		return toAPIEndpoint(ep), nil
	}))
	mux.HandleFunc("POST "+api.PathDetach, a.handle(func(r *http.Request) (any, error) {
		var req api.DetachRequest
		if err := decodeBody(r, &req); err != nil {
			return nil, err
		}
		if err := a.requireEtcd("detach " + req.Name); err != nil {
			return nil, err
		}
		return map[string]string{"detached": req.Name}, a.Detach(r.Context(), req.Name)
	}))
	a.registerRuleRoutes(mux)
	a.traceHandlers(mux)
	a.cniHandlers(mux)
	if a.cfg.APIListen != "" {
		rln, err := a.listenRemoteAPI()
		if err != nil {
			ln.Close()
			return err
		}
		go a.serveRemoteAPI(ctx, rln, mux)
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(sctx)
	}()
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("API server: %w", err)
	}
	return nil
}

// listenPrivateUnix listens on a unix socket at path that is mode 0600 from
// the moment anyone can reach it. The socket is bound inside a fresh 0700
// directory next to path (only the agent's user can enter it), set to
// 0600 there, and renamed into place: a rename is atomic, so path never
// names a socket with looser permissions. (Not syscall.Umask around bind:
// the umask is process-wide and would race with every other goroutine
// creating files.) The listener removes path when it closes.
func listenPrivateUnix(path string) (net.Listener, error) {
	tmp, err := os.MkdirTemp(filepath.Dir(path), ".keyroute-sock-")
	if err != nil {
		return nil, fmt.Errorf("listen on %s: private directory: %w", path, err)
	}
	defer os.RemoveAll(tmp)
	if err := os.Chmod(tmp, 0o700); err != nil {
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	bound := filepath.Join(tmp, "sock")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: bound, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	ln.SetUnlinkOnClose(false)
	if err := os.Chmod(bound, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	if err := os.Rename(bound, path); err != nil {
		ln.Close()
		return nil, fmt.Errorf("listen on %s: move the socket into place: %w", path, err)
	}
	return &removeOnClose{UnixListener: ln, path: path}, nil
}

// removeOnClose removes the renamed socket file when the listener closes
// (the listener itself only knows the path it was bound at).
type removeOnClose struct {
	*net.UnixListener
	path string
	once sync.Once
}

func (l *removeOnClose) Close() error {
	err := l.UnixListener.Close()
	l.once.Do(func() { os.Remove(l.path) })
	return err
}

func decodeBody(r *http.Request, v any) error {
	dec := json.NewDecoder(http.MaxBytesReader(nil, r.Body, 1<<20))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return badRequest("request body: %v", err)
	}
	return nil
}

func (a *Agent) handle(fn func(*http.Request) (any, error)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		v, err := fn(r)
		w.Header().Set("Content-Type", "application/json")
		if err != nil {
			code, kind := errorClass(err)
			if errors.Is(err, ErrBadRequest) {
				err = errors.New(strings.TrimPrefix(err.Error(), ErrBadRequest.Error()+": "))
			}
			a.log.Warn("API request failed", "path", r.URL.Path, "err", err)
			w.WriteHeader(code)
			json.NewEncoder(w).Encode(api.Error{Error: err.Error(), Kind: kind})
			return
		}
		json.NewEncoder(w).Encode(v)
	}
}

// Status reports the agent's state for keyroutectl status.
func (a *Agent) Status(ctx context.Context) api.Status {
	eps, peers, _ := a.snapshot()
	s := api.Status{
		Node: a.cfg.Node, Version: version.String(), Mode: a.cfg.Mode, HostIP: a.host.IP.String(), HostMAC: a.host.MAC.String(),
		PodSubnet: a.host.Subnet.String(), Gateway: a.host.Gateway.String(), GatewayMAC: a.host.GatewayMAC.String(),
		Datapath: a.dp.Datapath, DatapathReason: a.dp.Reason, PortType: a.ports.status(),
		Etcd:   api.EtcdStatus{Endpoints: a.etcdEPs, Embedded: a.embedded != nil},
		Counts: api.StatusCounts{Hosts: len(peers) + 1, Endpoints: len(eps)},
		Uptime: time.Since(a.started).Round(time.Second).String(),
	}
	if a.cache != nil {
		cs := a.cache.status()
		s.Cache = &cs
	}
	s.DSCPPaths = a.dscpPaths()
	for _, b := range []struct {
		name string
		sw   *controller.Switch
	}{{a.cfg.Bridges.Integration, a.intSw}, {a.cfg.Bridges.Physical, a.phySw}} {
		br := api.Bridge{Name: b.name, Connected: b.sw.Connected()}
		ports, err := a.db.ListPorts(ctx, b.name)
		if err == nil {
			for _, p := range ports {
				of := uint32(0)
				if p.OFPort > 0 {
					of = uint32(p.OFPort)
				}
				br.Ports = append(br.Ports, api.Port{Name: p.Name, OFPort: of, Type: p.Type, Error: p.Error})
			}
		}
		s.Bridges = append(s.Bridges, br)
		for _, owner := range flowOwners {
			s.Counts.Flows += len(b.sw.Desired(owner))
		}
	}
	if err := a.checkEtcd(ctx); err != nil {
		s.Etcd.Error = a.unreachableError("health check", err).Error()
	} else {
		s.Etcd.Healthy = true
	}
	return s
}

// Hosts lists the cluster's hosts with their agents' state. When etcd does
// not answer within etcdAnswerTimeout it answers from the agent's own
// state, each host marked stale.
func (a *Agent) Hosts(ctx context.Context) ([]api.Host, error) {
	ectx, cancel := context.WithTimeout(ctx, etcdAnswerTimeout)
	defer cancel()
	hs, err := a.reg.ListHosts(ectx)
	var alive map[string]registry.Alive
	if err == nil {
		alive, err = a.reg.ListAlive(ectx)
	}
	if err != nil {
		if ctx.Err() != nil || !etcdUnreachable(err) {
			return nil, fmt.Errorf("list hosts from etcd: %w", err)
		}
		a.etcd.set(err)
		return a.staleHosts(a.unreachableError("", err)), nil
	}
	out := make([]api.Host, 0, len(hs))
	for _, h := range hs {
		ah := api.Host{Name: h.Name, IP: h.UnderlayIP.String(), MAC: h.UnderlayMAC.String(),
			PodSubnet: h.PodSubnet.String(), Datapath: h.Datapath, Bridges: h.Bridges.OrDefault(), Agent: api.AgentDown, AgentVersion: h.AgentVersion}
		if h.APIAddr.IsValid() {
			ah.API = h.APIAddr.String()
		}
		if al, ok := alive[h.Name]; ok {
			ah.Agent, ah.AgentSince = api.AgentUp, al.Since.Format(time.RFC3339)
			if al.AgentVersion != "" {
				ah.AgentVersion = al.AgentVersion
			}
		}
		out = append(out, ah)
	}
	a.etcd.set(nil)
	a.mu.Lock()
	a.lastHosts = out
	a.mu.Unlock()
	return out, nil
}

// staleHosts answers hosts from the agent's own state: the last answer
// etcd gave, else the membership its watch saw (agents' state unknown).
func (a *Agent) staleHosts(why error) []api.Host {
	_, lastOK, _ := a.etcd.get()
	a.mu.Lock()
	defer a.mu.Unlock()
	var out []api.Host
	if a.lastHosts != nil {
		out = append(out, a.lastHosts...)
	} else {
		self := a.hostRecord()
		for _, h := range append([]registry.Host{self}, slices.Collect(maps.Values(a.peers))...) {
			ah := api.Host{Name: h.Name, IP: h.UnderlayIP.String(), MAC: h.UnderlayMAC.String(),
				PodSubnet: h.PodSubnet.String(), Datapath: h.Datapath, Agent: api.AgentUnknown, AgentVersion: h.AgentVersion}
			if h.Name == a.cfg.Node {
				ah.Agent, ah.AgentSince = api.AgentUp, a.started.UTC().Format(time.RFC3339)
			}
			out = append(out, ah)
		}
		slices.SortFunc(out, func(x, y api.Host) int { return strings.Compare(x.Name, y.Name) })
	}
	for i := range out {
		out[i].StaleSince, out[i].StaleReason = lastOK.UTC().Format(time.RFC3339), why.Error()
	}
	return out
}

// RemoveHost ends another host's membership, so every agent drops its
// flows and the keys shared with it. Unless force, it is refused while
// that host's agent runs: an agent outage is not a host leaving.
func (a *Agent) RemoveHost(ctx context.Context, name string, force bool) error {
	if err := registry.ValidateName(name); err != nil {
		return badRequest("host: %v", err)
	}
	if name == a.cfg.Node {
		return badRequest("%s is this agent's own host; to take it out of the cluster, stop its agent and run keyroute-agent --uninstall there", name)
	}
	err := a.reg.RemoveHost(ctx, name, force)
	switch {
	case errors.Is(err, registry.ErrHostAlive):
		return badRequest("%v; stop host %s's agent first, or remove it anyway with --force", err, name)
	case errors.Is(err, registry.ErrNotFound):
		return badRequest("no host %s in the cluster", name)
	case err != nil:
		return err
	}
	a.log.Info("host removed from the cluster", "host", name, "force", force)
	return nil
}

// Endpoints lists containers, this host's or all.
func (a *Agent) Endpoints(ctx context.Context, all bool) ([]api.Endpoint, error) {
	f := registry.EndpointFilter{Host: a.cfg.Node}
	if all {
		f = registry.EndpointFilter{}
	}
	ectx, cancel := context.WithTimeout(ctx, etcdAnswerTimeout)
	defer cancel()
	eps, err := a.reg.ListEndpoints(ectx, f)
	if etcdUnreachable(err) {
		return nil, a.unreachableError("list endpoints", err)
	}
	if err != nil {
		return nil, fmt.Errorf("list endpoints from etcd: %w", err)
	}
	out := make([]api.Endpoint, 0, len(eps))
	for _, ep := range eps {
		out = append(out, toAPIEndpoint(ep))
	}
	return out, nil
}

func toAPIEndpoint(ep registry.Endpoint) api.Endpoint {
	return api.Endpoint{Name: ep.Name, IP: ep.IP.String(), MAC: endpointMAC(ep).String(), Host: ep.Host, Port: ep.Port, NetNS: ep.Netns,
		ContainerID: ep.ContainerID, IfName: ep.IfName}
}

// Flows dumps both bridges' flows with counters; table filters br-int's.
func (a *Agent) Flows(ctx context.Context, table string) ([]api.Flow, error) {
	var only *flows.IntTable
	if table != "" {
		t, err := flows.ParseIntTable(table)
		if err != nil {
			return nil, badRequest("%v", err)
		}
		only = &t
	}
	var out []api.Flow
	for _, b := range []struct {
		name  string
		sw    *controller.Switch
		names map[uint8]string
	}{{a.cfg.Bridges.Integration, a.intSw, flows.IntTableNames()}, {a.cfg.Bridges.Physical, a.phySw, flows.PhyTableNames()}} {
		if only != nil && b.name != a.cfg.Bridges.Integration {
			continue
		}
		req := &openflow.FlowStatsRequest{Table: openflow.TableAll, OutPort: openflow.PortAny, OutGroup: openflow.GroupAny}
		if only != nil {
			req.Table = uint8(*only)
		}
		stats, err := b.sw.FlowStats(ctx, req)
		if err != nil {
			return nil, fmt.Errorf("dump %s flows: %w", b.name, err)
		}
		for _, st := range stats {
			out = append(out, api.Flow{
				Bridge: b.name, Table: st.Table, TableName: b.names[st.Table], Priority: st.Priority,
				Cookie: fmt.Sprintf("0x%x", st.Cookie), Category: flows.CookieCategory(st.Cookie).String(),
				Match: st.Match.String(), Actions: openflow.InstructionsString(st.Instructions),
				IdleTimeout: st.IdleTimeout, Packets: st.PacketCount, Bytes: st.ByteCount, DurationSec: st.DurationSec,
			})
		}
	}
	return out, nil
}

// errNotRewrite answers cache questions in tunnel mode.
var errNotRewrite = fmt.Errorf("%w: this agent runs in tunnel mode; keys and cache exist in rewrite mode (mode: rewrite)", ErrBadRequest)

// Keys lists every cache key allocation in the cluster.
func (a *Agent) Keys(ctx context.Context) ([]api.Key, error) {
	if a.cache == nil {
		return nil, errNotRewrite
	}
	ectx, cancel := context.WithTimeout(ctx, etcdAnswerTimeout)
	defer cancel()
	recs, err := a.cache.alloc.List(ectx, keyalloc.Filter{})
	if etcdUnreachable(err) {
		return nil, a.unreachableError("list keys", err)
	}
	if err != nil {
		return nil, fmt.Errorf("list keys from etcd: %w", err)
	}
	out := make([]api.Key, 0, len(recs))
	for _, r := range recs {
		k := api.Key{SrcHost: r.SrcHost, DstHost: r.DstHost, Key: r.Key.DSCP, KeySrc: r.Key.Src.String(), KeyDst: r.Key.Dst.String(), Src: r.Src.String(), Dst: r.Dst.String(),
			State: r.State, AgeSec: int64(time.Since(r.Created).Seconds())}
		// This host's own keys on their way out say so: the record stays
		// until the release, after the quarantine.
		if r.SrcHost == a.cfg.Node {
			if st, ok := a.cache.recordState(r.CreateRevision); ok && st >= cacheproto.StateDraining {
				k.State = st.String()
			}
			if e, ok := a.cache.entry(cacheproto.Pair{Src: r.Src, Dst: r.Dst}); ok && e.Rec.CreateRevision == r.CreateRevision {
				k.RateBps = e.Rate
			}
		}
		out = append(out, k)
	}
	return out, nil
}

// Cache lists this host's EgressCache and Restore entries with the
// counters OVS keeps for their flows.
func (a *Agent) Cache(ctx context.Context) ([]api.CacheEntry, error) {
	if a.cache == nil {
		return nil, errNotRewrite
	}
	var out []api.CacheEntry
	for _, t := range []flows.IntTable{flows.EgressCache, flows.Restore} {
		stats, err := a.intSw.FlowStats(ctx, &openflow.FlowStatsRequest{Table: uint8(t), OutPort: openflow.PortAny, OutGroup: openflow.GroupAny})
		if err != nil {
			return nil, fmt.Errorf("dump %s: %w", t.Name(), err)
		}
		for _, st := range stats {
			peer, key := flows.CookieKey(a.host, st.Cookie)
			e := api.CacheEntry{Peer: peer.String(), Key: key.DSCP, KeySrc: keyAddr(key.Src), KeyDst: keyAddr(key.Dst), Packets: st.PacketCount, Bytes: st.ByteCount, IdleTimeout: st.IdleTimeout}
			switch flows.CookieCategory(st.Cookie) {
			case flows.CatCache:
				e.Side = "egress"
				e.Src, e.Dst = matchIPv4(st.Match, openflow.FieldIPv4Src).String(), matchIPv4(st.Match, openflow.FieldIPv4Dst).String()
				e.State = a.cache.stateOf(cacheproto.Pair{Src: matchIPv4(st.Match, openflow.FieldIPv4Src), Dst: matchIPv4(st.Match, openflow.FieldIPv4Dst)})
			case flows.CatRestore:
				e.Side = "restore"
				if name, ok := a.peerNameByIP(peer); ok {
					if r, st, ok := a.cache.recvState(cacheproto.RecvKey{Peer: name, Key: key}); ok {
						e.Src, e.Dst, e.State = r.Src.String(), r.Dst.String(), st
					}
				}
			default:
				continue
			}
			out = append(out, e)
		}
	}
	// Keys still held for pairs that left them have no flow; they show
	// with their state and no counters.
	for _, h := range a.cache.holds() {
		peer := ""
		if p, _, ok := a.peerByName(h.Peer); ok {
			peer = p.IP.String()
		}
		out = append(out, api.CacheEntry{Side: "egress", Peer: peer, Key: h.Key.DSCP, KeySrc: keyAddr(h.Key.Src), KeyDst: keyAddr(h.Key.Dst), Src: h.Pair.Src.String(), Dst: h.Pair.Dst.String(), State: h.State.String()})
	}
	return out, nil
}

// keyAddr is a key address as the API shows it: "" for none.
func keyAddr(a netip.Addr) string {
	if !a.IsValid() {
		return ""
	}
	return a.String()
}

// attachFromAPI attaches a container namespace (NetNS) or a pre-made port
// (Port: a VM's tap or veth end, named after the port unless Name is set).
func (a *Agent) attachFromAPI(ctx context.Context, req api.AttachRequest) (registry.Endpoint, error) {
	r := attachRequest{NetNS: req.NetNS, Name: req.Name, IP: req.IP, Port: req.Port, MAC: req.MAC}
	switch {
	case req.Port != "" && req.NetNS != "":
		return registry.Endpoint{}, badRequest("give --netns (a container) or --port (an existing interface), not both")
	case req.Port != "":
		if r.Name == "" {
			r.Name = req.Port
		}
	case req.NetNS == "":
		return registry.Endpoint{}, badRequest("attach needs --netns (a container namespace) or --port (an existing interface such as a VM's tap)")
	}
	return a.attach(ctx, r)
}
