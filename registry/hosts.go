package registry

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/keyroute/keyroute/hostlayout"
	"github.com/keyroute/keyroute/registry/kvwatch"
)

// Host is one agent's host as its peers need to know it.
type Host struct {
	Name         string
	UnderlayIP   netip.Addr
	UnderlayMAC  net.HardwareAddr
	PodSubnet    netip.Prefix
	Datapath     string // "system" or "netdev"
	AgentVersion string
	// Bridges are the host's bridge names (its config's bridges.*), which
	// a trace needs to read the host. Zero in records of agents that did
	// not publish them: those hosts use the defaults.
	Bridges hostlayout.Bridges
	// APIAddr is where the agent serves its read-only API over TCP with
	// the cluster's mutual TLS (config api_listen), for keyroutectl
	// trace and diagnose on other hosts; zero when it does not.
	APIAddr netip.AddrPort
	// UnderlayIPs are the host's further underlay addresses (config
	// underlay_ips) that cache keys may use beside UnderlayIP: keyed
	// packets towards the host go to any of them, from any of them.
	UnderlayIPs []netip.Addr
}

// MaxUnderlayIPs bounds a host's extra key addresses: with 8 addresses on
// each side a host pair direction has 64 address pairs, 2368 keys with
// the default DSCP set, and br-phy 64 admission flows per peer.
const MaxUnderlayIPs = 7

// KeyAddrs returns the host's key addresses: UnderlayIP, then UnderlayIPs.
func (h Host) KeyAddrs() []netip.Addr { return append([]netip.Addr{h.UnderlayIP}, h.UnderlayIPs...) }

type hostJSON struct {
	Name         string             `json:"name"`
	UnderlayIP   netip.Addr         `json:"underlayIP"`
	UnderlayMAC  string             `json:"underlayMAC"`
	PodSubnet    netip.Prefix       `json:"podSubnet"`
	Datapath     string             `json:"datapath,omitempty"`
	AgentVersion string             `json:"agentVersion,omitempty"`
	Bridges      hostlayout.Bridges `json:"bridges,omitzero"`
	APIAddr      string             `json:"apiAddr,omitempty"`
	UnderlayIPs  []netip.Addr       `json:"underlayIPs,omitempty"`
}

// MarshalJSON writes the MAC as "aa:bb:cc:dd:ee:ff".
func (h Host) MarshalJSON() ([]byte, error) {
	j := hostJSON{h.Name, h.UnderlayIP, h.UnderlayMAC.String(), h.PodSubnet, h.Datapath, h.AgentVersion, h.Bridges, "", h.UnderlayIPs}
	if h.APIAddr.IsValid() {
		j.APIAddr = h.APIAddr.String()
	}
	return json.Marshal(j)
}

// UnmarshalJSON reads what MarshalJSON writes; it does not validate.
func (h *Host) UnmarshalJSON(b []byte) error {
	var j hostJSON
	if err := json.Unmarshal(b, &j); err != nil {
		return err
	}
	var mac net.HardwareAddr
	if j.UnderlayMAC != "" {
		var err error
		if mac, err = net.ParseMAC(j.UnderlayMAC); err != nil {
			return fmt.Errorf("underlay MAC: %w", err)
		}
	}
	var api netip.AddrPort
	if j.APIAddr != "" {
		var err error
		if api, err = netip.ParseAddrPort(j.APIAddr); err != nil {
			return fmt.Errorf("API address: %w", err)
		}
	}
	if len(j.UnderlayIPs) == 0 {
		j.UnderlayIPs = nil // "[]" and none are the same record
	}
	*h = Host{j.Name, j.UnderlayIP, mac, j.PodSubnet, j.Datapath, j.AgentVersion, j.Bridges, api, j.UnderlayIPs}
	return nil
}

// Datapath types a host record may name (preflight's).
var datapaths = map[string]bool{"": true, "system": true, "netdev": true}

// maxVersionLen bounds AgentVersion, a free-form string shown by keyroutectl.
const maxVersionLen = 64

// Validate checks that h is complete and well-formed on its own: every
// address IPv4 (the datapath is IPv4 only), the underlay IP and MAC
// unicast, the pod subnet a network address. The error names the field.
func (h Host) Validate() error {
	if err := ValidateName(h.Name); err != nil {
		return fmt.Errorf("host name: %w", err)
	}
	if err := ValidateAddr(h.UnderlayIP); err != nil {
		return fmt.Errorf("host %s: underlay IP: %w", h.Name, err)
	}
	if err := validateMAC(h.UnderlayMAC); err != nil {
		return fmt.Errorf("host %s: underlay MAC: %w", h.Name, err)
	}
	if len(h.UnderlayIPs) > MaxUnderlayIPs {
		return fmt.Errorf("host %s: %d underlay IPs, at most %d", h.Name, len(h.UnderlayIPs), MaxUnderlayIPs)
	}
	for i, a := range h.UnderlayIPs {
		if err := ValidateAddr(a); err != nil {
			return fmt.Errorf("host %s: underlay IPs[%d]: %w", h.Name, i, err)
		}
		if slices.Contains(h.KeyAddrs()[:i+1], a) {
			return fmt.Errorf("host %s: underlay IPs[%d]: %s listed twice", h.Name, i, a)
		}
	}
	if err := validateSubnet(h.PodSubnet); err != nil {
		return fmt.Errorf("host %s: pod subnet: %w", h.Name, err)
	}
	if !datapaths[h.Datapath] {
		return fmt.Errorf("host %s: datapath %.20q: want system or netdev", h.Name, h.Datapath)
	}
	if err := validateText(h.AgentVersion, maxVersionLen); err != nil {
		return fmt.Errorf("host %s: agent version: %w", h.Name, err)
	}
	if h.Bridges != (hostlayout.Bridges{}) {
		if err := h.Bridges.Validate(); err != nil {
			return fmt.Errorf("host %s: bridges: %w", h.Name, err)
		}
	}
	if h.APIAddr.IsValid() || h.APIAddr.Port() != 0 {
		// keyroutectl dials it with the cluster's TLS: it must be a
		// host's unicast address, never loopback or a broadcast.
		if err := ValidateAddr(h.APIAddr.Addr()); err != nil {
			return fmt.Errorf("host %s: API address: %w", h.Name, err)
		}
		if h.APIAddr.Port() == 0 {
			return fmt.Errorf("host %s: API address %s: port 0", h.Name, h.APIAddr)
		}
	}
	return nil
}

// HostEvent is one change seen by WatchHosts; Value is the host.
type HostEvent = kvwatch.Event[Host]

// Alive is alive/<name>: the host's agent is running. It lives under the
// agent's lease, so it goes when the agent stops renewing (crash, stop,
// etcd unreachable for a TTL), while the host record stays.
type Alive struct {
	Host         string
	AgentVersion string
	// Since is when the agent registered this liveness; it restarts when a
	// lost lease is re-registered.
	Since time.Time
}

type aliveJSON struct {
	Host         string    `json:"host"`
	AgentVersion string    `json:"agentVersion,omitempty"`
	Since        time.Time `json:"since"`
}

// Validate checks that a is complete.
func (a Alive) Validate() error {
	if err := ValidateName(a.Host); err != nil {
		return fmt.Errorf("alive host name: %w", err)
	}
	if a.Since.IsZero() {
		return fmt.Errorf("alive %s: since: no start time", a.Host)
	}
	if err := validateText(a.AgentVersion, maxVersionLen); err != nil {
		return fmt.Errorf("alive %s: agent version: %w", a.Host, err)
	}
	return nil
}

// Lease keeps a host's alive/ record alive. Its keep-alive runs until
// Revoke or Close, independent of the context RegisterHost was called with.
type Lease struct {
	cli    *clientv3.Client
	id     clientv3.LeaseID
	ttl    time.Duration
	cancel context.CancelFunc
	done   chan struct{}
	once   sync.Once
}

// RegisterHost writes h as a cluster member and its agent as running:
// hosts/<name> without a lease, so membership survives agent outages, and
// alive/<name> under a new lease of ttl (rounded up to whole seconds; etcd
// may raise very short TTLs to its minimum), which it keeps alive. Previous
// records of the same name are replaced. Cost: 2 etcd writes (lease grant,
// one transaction of two puts); keep-alives are not writes.
func (c *Client) RegisterHost(ctx context.Context, h Host, ttl time.Duration) (*Lease, error) {
	if err := h.Validate(); err != nil {
		return nil, fmt.Errorf("register host: %w", err)
	}
	if ttl <= 0 {
		return nil, fmt.Errorf("register host %s: TTL %v must be positive", h.Name, ttl)
	}
	val, err := json.Marshal(h)
	if err != nil {
		return nil, fmt.Errorf("register host %s: %w", h.Name, err)
	}
	alive, err := json.Marshal(aliveJSON{Host: h.Name, AgentVersion: h.AgentVersion, Since: time.Now().UTC()})
	if err != nil {
		return nil, fmt.Errorf("register host %s: %w", h.Name, err)
	}
	grant, err := c.cli.Grant(ctx, int64(math.Ceil(ttl.Seconds())))
	if err != nil {
		return nil, fmt.Errorf("register host %s: grant lease: %w", h.Name, err)
	}
	// A put without a lease also detaches a hosts/ record that an older
	// agent wrote under its lease.
	if _, err := c.cli.Txn(ctx).Then(
		clientv3.OpPut(c.hostKey(h.Name), string(val)),
		clientv3.OpPut(c.aliveKey(h.Name), string(alive), clientv3.WithLease(grant.ID)),
	).Commit(); err != nil {
		_, _ = c.cli.Revoke(context.WithoutCancel(ctx), grant.ID)
		return nil, fmt.Errorf("register host %s: %w", h.Name, err)
	}
	kctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	ch, err := c.cli.KeepAlive(kctx, grant.ID)
	if err != nil {
		cancel()
		return nil, fmt.Errorf("register host %s: keep lease alive: %w", h.Name, err)
	}
	l := &Lease{cli: c.cli, id: grant.ID, ttl: time.Duration(grant.TTL) * time.Second, cancel: cancel, done: make(chan struct{})}
	go func() {
		for range ch { // drain renewals; the channel closes when the lease is lost
		}
		close(l.done)
	}()
	return l, nil
}

// ID returns the etcd lease ID.
func (l *Lease) ID() clientv3.LeaseID { return l.id }

// TTL returns the TTL etcd granted.
func (l *Lease) TTL() time.Duration { return l.ttl }

// Done is closed when the lease is no longer kept alive: it expired or was
// revoked in etcd, renewals failed for a whole TTL, or Close/Revoke was
// called. The alive/ record is then gone or about to go; re-register.
func (l *Lease) Done() <-chan struct{} { return l.done }

// Close stops renewing; the alive/ record disappears when the TTL runs
// out. The host record stays.
func (l *Lease) Close() error {
	l.cancel()
	<-l.done
	return nil
}

// Revoke stops renewing and deletes the alive/ record now (1 write); the
// host record stays. Revoking a lease that already expired is not an error.
func (l *Lease) Revoke(ctx context.Context) error {
	l.cancel()
	<-l.done
	var err error
	l.once.Do(func() {
		_, err = l.cli.Revoke(ctx, l.id)
		if errors.Is(err, rpctypes.ErrLeaseNotFound) {
			err = nil
		}
	})
	if err != nil {
		return fmt.Errorf("revoke host lease %x: %w", int64(l.id), err)
	}
	return nil
}

// RemoveHost ends a host's membership: it deletes hosts/<name>,
// alive/<name> and the node name's claim nodes/<name> in one transaction,
// so peers drop the host's flows and the keys they share with it, and
// another machine may take the name. Unless force, it refuses with
// ErrHostAlive while the host's agent is running (alive/<name> exists),
// checked in the same transaction. ErrNotFound if there was neither a host
// record nor a node claim. Cost: 1 write.
func (c *Client) RemoveHost(ctx context.Context, name string, force bool) error {
	if err := ValidateName(name); err != nil {
		return fmt.Errorf("remove host: %w", err)
	}
	txn := c.cli.Txn(ctx)
	if !force {
		txn = txn.If(clientv3.Compare(clientv3.CreateRevision(c.aliveKey(name)), "=", 0))
	}
	resp, err := txn.Then(clientv3.OpDelete(c.hostKey(name)), clientv3.OpDelete(c.aliveKey(name)),
		clientv3.OpDelete(c.nodeKey(name))).
		Else(clientv3.OpGet(c.aliveKey(name))).Commit()
	if err != nil {
		return fmt.Errorf("remove host %s: %w", name, err)
	}
	if !resp.Succeeded {
		kvs := resp.Responses[0].GetResponseRange().Kvs
		if len(kvs) > 0 {
			if a, err := c.decodeAlive(kvs[0]); err == nil {
				return fmt.Errorf("remove host %s: %w (agent %s alive since %s)", name, ErrHostAlive,
					a.AgentVersion, a.Since.Format(time.RFC3339))
			}
		}
		return fmt.Errorf("remove host %s: %w", name, ErrHostAlive)
	}
	if resp.Responses[0].GetResponseDeleteRange().Deleted == 0 && resp.Responses[2].GetResponseDeleteRange().Deleted == 0 {
		return fmt.Errorf("remove host %s: %w", name, ErrNotFound)
	}
	return nil
}

func (c *Client) hostKey(name string) string  { return c.prefix + "hosts/" + name }
func (c *Client) aliveKey(name string) string { return c.prefix + "alive/" + name }

// decodeHost is the one place a host record is read and checked.
func (c *Client) decodeHost(kv *mvccpb.KeyValue) (Host, error) {
	fail := func(err error) (Host, error) { return Host{}, NewRecordError(KindHost, kv, err) }
	if err := CheckSize(kv); err != nil {
		return fail(err)
	}
	var h Host
	if err := json.Unmarshal(kv.Value, &h); err != nil {
		return fail(err)
	}
	if err := h.Validate(); err != nil {
		return fail(err)
	}
	if err := c.cluster.checkSubnet(h.PodSubnet); err != nil {
		return fail(fmt.Errorf("host %s: pod subnet: %w", h.Name, err))
	}
	if want := strings.TrimPrefix(string(kv.Key), c.prefix+"hosts/"); h.Name != want {
		return fail(fmt.Errorf("record names host %q, its key %.64q", h.Name, want))
	}
	return h, nil
}

// decodeAlive is the one place an alive record is read and checked.
func (c *Client) decodeAlive(kv *mvccpb.KeyValue) (Alive, error) {
	fail := func(err error) (Alive, error) { return Alive{}, NewRecordError(KindAlive, kv, err) }
	if err := CheckSize(kv); err != nil {
		return fail(err)
	}
	var j aliveJSON
	if err := json.Unmarshal(kv.Value, &j); err != nil {
		return fail(err)
	}
	a := Alive(j)
	if err := a.Validate(); err != nil {
		return fail(err)
	}
	if want := strings.TrimPrefix(string(kv.Key), c.prefix+"alive/"); a.Host != want {
		return fail(fmt.Errorf("record names host %q, its key %.64q", a.Host, want))
	}
	return a, nil
}

// ListAlive returns the hosts whose agent is running, by name, skipping
// bad records.
func (c *Client) ListAlive(ctx context.Context) (map[string]Alive, error) {
	resp, err := c.cli.Get(ctx, c.prefix+"alive/", clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("list alive hosts: %w", err)
	}
	out := make(map[string]Alive, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		a, err := c.decodeAlive(kv)
		if err != nil {
			c.badRecord(string(kv.Key), err)
			continue
		}
		out[a.Host] = a
	}
	return out, nil
}

// GetHost returns one host; ErrNotFound if it is not registered.
func (c *Client) GetHost(ctx context.Context, name string) (Host, error) {
	if err := ValidateName(name); err != nil {
		return Host{}, fmt.Errorf("get host: %w", err)
	}
	resp, err := c.cli.Get(ctx, c.hostKey(name))
	if err != nil {
		return Host{}, fmt.Errorf("get host %s: %w", name, err)
	}
	if len(resp.Kvs) == 0 {
		return Host{}, fmt.Errorf("get host %s: %w", name, ErrNotFound)
	}
	return c.decodeHost(resp.Kvs[0])
}

// ListHosts returns all member hosts sorted by name, whether their agent
// runs or not, skipping bad records.
func (c *Client) ListHosts(ctx context.Context) ([]Host, error) {
	resp, err := c.cli.Get(ctx, c.prefix+"hosts/", clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("list hosts: %w", err)
	}
	hosts := make([]Host, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		h, err := c.decodeHost(kv)
		if err != nil {
			c.badRecord(string(kv.Key), err)
			continue
		}
		hosts = append(hosts, h)
	}
	sort.Slice(hosts, func(i, j int) bool { return hosts[i].Name < hosts[j].Name })
	return hosts, nil
}

// WatchHosts streams all member hosts: a Put per host record, Synced, then
// every change, until ctx ends. A Delete means the membership ended
// (RemoveHost, or a record that no longer validates), never that an agent
// stopped. After etcd compacted the history under the
// watch it re-lists and reports only the difference, then Synced again.
func (c *Client) WatchHosts(ctx context.Context) <-chan HostEvent {
	key := c.prefix + "hosts/"
	return kvwatch.Watch(ctx, kvwatch.Config[Host]{
		Client: c.cli,
		Key:    key,
		End:    clientv3.GetPrefixRangeEnd(key),
		Decode: func(kv *mvccpb.KeyValue) (Host, bool, error) {
			h, err := c.decodeHost(kv)
			return h, err == nil, err
		},
		OnBad:  c.badRecord,
		Logger: c.log,
	})
}
