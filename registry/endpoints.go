package registry

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sort"
	"strconv"
	"strings"
	"unicode"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/keyroute/keyroute/registry/kvwatch"
)

// Endpoint is one container interface. Its record at endpoints/<ip> is also
// the IP allocation: an address is in use exactly while the key exists.
type Endpoint struct {
	IP    netip.Addr
	Host  string // host the container runs on
	Name  string // unique per host, e.g. container ID + interface
	MAC   net.HardwareAddr
	Netns string
	Port  string // OVS port name on br-int
	// ContainerID and IfName are set for attachments made through CNI:
	// the runtime's container ID and the interface name inside it.
	// DEL and GC find attachments by them.
	ContainerID string
	IfName      string
}

type endpointJSON struct {
	IP    netip.Addr `json:"ip"`
	Host  string     `json:"host"`
	Name  string     `json:"name"`
	MAC   string     `json:"mac,omitempty"`
	Netns string     `json:"netns,omitempty"`
	Port  string     `json:"port,omitempty"`
	// CNI attachments only.
	ContainerID string `json:"container_id,omitempty"`
	IfName      string `json:"ifname,omitempty"`
}

// MarshalJSON writes the MAC as "aa:bb:cc:dd:ee:ff".
func (e Endpoint) MarshalJSON() ([]byte, error) {
	var mac string
	if len(e.MAC) > 0 {
		mac = e.MAC.String()
	}
	return json.Marshal(endpointJSON{e.IP, e.Host, e.Name, mac, e.Netns, e.Port, e.ContainerID, e.IfName})
}

// UnmarshalJSON reads what MarshalJSON writes; it does not validate.
func (e *Endpoint) UnmarshalJSON(b []byte) error {
	var j endpointJSON
	if err := json.Unmarshal(b, &j); err != nil {
		return err
	}
	var mac net.HardwareAddr
	if j.MAC != "" {
		var err error
		if mac, err = net.ParseMAC(j.MAC); err != nil {
			return fmt.Errorf("MAC: %w", err)
		}
	}
	*e = Endpoint{j.IP, j.Host, j.Name, mac, j.Netns, j.Port, j.ContainerID, j.IfName}
	return nil
}

// Bounds of an endpoint's free-form fields.
const (
	maxNetnsLen = 4096 // PATH_MAX
	maxPortLen  = 15   // IFNAMSIZ-1: OVS ports are kernel interfaces
)

// Validate checks e as stored: host and name valid names, the IP a
// unicast IPv4 address, the MAC (if known yet) a unicast Ethernet address,
// netns and port of sane length. The error names the field.
func (e Endpoint) Validate() error {
	if err := e.validateOwner(); err != nil {
		return err
	}
	if err := ValidateAddr(e.IP); err != nil {
		return fmt.Errorf("endpoint %s/%s: IP: %w", e.Host, e.Name, err)
	}
	return nil
}

func (e Endpoint) validateOwner() error {
	if err := ValidateName(e.Host); err != nil {
		return fmt.Errorf("endpoint host: %w", err)
	}
	if err := ValidateName(e.Name); err != nil {
		return fmt.Errorf("endpoint on %s: name: %w", e.Host, err)
	}
	if len(e.MAC) != 0 {
		if err := validateMAC(e.MAC); err != nil {
			return fmt.Errorf("endpoint %s/%s: MAC: %w", e.Host, e.Name, err)
		}
	}
	if err := validateText(e.Netns, maxNetnsLen); err != nil {
		return fmt.Errorf("endpoint %s/%s: netns: %w", e.Host, e.Name, err)
	}
	if e.Port != "" {
		if err := ValidateName(e.Port); err != nil || len(e.Port) > maxPortLen {
			return fmt.Errorf("endpoint %s/%s: port %.20q is not an interface name of at most %d bytes", e.Host, e.Name, e.Port, maxPortLen)
		}
	}
	if e.ContainerID != "" || e.IfName != "" {
		if err := ValidateContainerID(e.ContainerID); err != nil {
			return fmt.Errorf("endpoint %s/%s: container ID: %w", e.Host, e.Name, err)
		}
		if err := ValidateIfName(e.IfName); err != nil {
			return fmt.Errorf("endpoint %s/%s: interface name: %w", e.Host, e.Name, err)
		}
	}
	return nil
}

// maxContainerIDLen leaves room in an endpoint's name (253 bytes) for
// ":" and an interface name.
const maxContainerIDLen = 237

// ValidateContainerID checks a CNI container ID as the CNI spec defines
// it: an alphanumeric first character, then alphanumerics, '_', '.' or '-'.
func ValidateContainerID(id string) error {
	if id == "" {
		return errors.New("empty")
	}
	if len(id) > maxContainerIDLen {
		return fmt.Errorf("%.20q... longer than %d bytes", id, maxContainerIDLen)
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		alnum := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
		if !alnum && (i == 0 || c != '_' && c != '.' && c != '-') {
			return fmt.Errorf("%q: want an alphanumeric first character, then alphanumerics, '_', '.' or '-'", id)
		}
	}
	return nil
}

// ValidateIfName checks an interface name as the CNI spec and the kernel
// allow it: 1 to 15 bytes, not "." or "..", no '/', ':' or white space.
func ValidateIfName(name string) error {
	if name == "" || len(name) > maxPortLen {
		return fmt.Errorf("%.20q is not 1 to %d bytes", name, maxPortLen)
	}
	if name == "." || name == ".." {
		return fmt.Errorf("%q is not a usable name", name)
	}
	for _, r := range name {
		if r == '/' || r == ':' || r > unicode.MaxASCII || unicode.IsSpace(r) || !unicode.IsPrint(r) {
			return fmt.Errorf("%q contains %q", name, r)
		}
	}
	return nil
}

// CNIName is the endpoint name of a CNI attachment: ':' appears in
// neither part, so distinct pairs never share a name.
func CNIName(containerID, ifname string) string { return containerID + ":" + ifname }

// EndpointFilter selects endpoints; zero fields match everything.
type EndpointFilter struct {
	Host string
	// Subnet also narrows what is read from etcd: for IPv4 subnets of /24
	// or longer only that /24's keys are read or watched (/32: one key),
	// so filter by the host's pod subnet to keep an agent's traffic
	// proportional to its own endpoints.
	Subnet netip.Prefix
}

func (f EndpointFilter) match(e Endpoint) bool {
	return (f.Host == "" || e.Host == f.Host) && (!f.Subnet.IsValid() || f.Subnet.Contains(e.IP))
}

// EndpointEvent is one change seen by WatchEndpoints; Value is the endpoint.
type EndpointEvent = kvwatch.Event[Endpoint]

func (c *Client) endpointKey(ip netip.Addr) string { return c.prefix + "endpoints/" + ip.String() }

// keyRange returns the etcd range [key, end) holding all endpoints of p.
// Dotted-quad keys do not sort numerically, but every octet-aligned
// IPv4 prefix is a key prefix ("198.19.7."), which is what this uses.
func (c *Client) keyRange(p netip.Prefix) (key, end string) {
	base := c.prefix + "endpoints/"
	switch {
	case !p.IsValid():
	case p.IsSingleIP():
		return c.endpointKey(p.Addr()), ""
	case p.Addr().Is4() && p.Bits() >= 8:
		octets := strings.Split(p.Addr().String(), ".")
		base += strings.Join(octets[:p.Bits()/8], ".") + "."
	}
	return base, clientv3.GetPrefixRangeEnd(base)
}

// decodeEndpoint is the one place an endpoint record is read and checked.
func (c *Client) decodeEndpoint(kv *mvccpb.KeyValue) (Endpoint, error) {
	return c.decodeEndpointAt(KindEndpoint, c.prefix+"endpoints/", kv)
}

// decodeEndpointAt decodes an endpoint record of kind stored under dir, its
// key the endpoint's IP: endpoints/ and roaming/ hold the same records.
func (c *Client) decodeEndpointAt(kind, dir string, kv *mvccpb.KeyValue) (Endpoint, error) {
	fail := func(err error) (Endpoint, error) { return Endpoint{}, NewRecordError(kind, kv, err) }
	if err := CheckSize(kv); err != nil {
		return fail(err)
	}
	var e Endpoint
	if err := json.Unmarshal(kv.Value, &e); err != nil {
		return fail(err)
	}
	if err := e.Validate(); err != nil {
		return fail(err)
	}
	if err := c.cluster.checkAddr(e.IP); err != nil {
		return fail(fmt.Errorf("endpoint %s/%s: IP: %w", e.Host, e.Name, err))
	}
	if want := strings.TrimPrefix(string(kv.Key), dir); e.IP.String() != want {
		return fail(fmt.Errorf("record holds IP %s, its key %.64q", e.IP, want))
	}
	return e, nil
}

// listRange reads the endpoints of subnet (all if invalid) that match f,
// skipping bad records.
func (c *Client) listRange(ctx context.Context, f EndpointFilter) ([]Endpoint, error) {
	key, end := c.keyRange(f.Subnet)
	var opts []clientv3.OpOption
	if end != "" {
		opts = append(opts, clientv3.WithRange(end))
	}
	resp, err := c.cli.Get(ctx, key, opts...)
	if err != nil {
		return nil, err
	}
	eps := make([]Endpoint, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		e, err := c.decodeEndpoint(kv)
		if err != nil {
			c.badRecord(string(kv.Key), err)
			continue
		}
		if f.match(e) {
			eps = append(eps, e)
		}
	}
	sort.Slice(eps, func(i, j int) bool { return eps[i].IP.Less(eps[j].IP) })
	return eps, nil
}

// AllocateEndpoint records ep in subnet (the host's pod subnet) and returns
// it with its IP. With ep.IP unset it takes the lowest free address,
// skipping the network address, the gateway (first host address) and the
// last address. With ep.IP set, that address must be in subnet and must
// not be held by another endpoint anywhere in the cluster, else the error
// wraps ErrIPInUse and names the holder. If ep.Host already has an
// endpoint named ep.Name in subnet, that record is returned unchanged
// (re-attach after a restart). Cost: 1 read, then 1 write (plus 1 per lost
// race); none on re-attach.
func (c *Client) AllocateEndpoint(ctx context.Context, ep Endpoint, subnet netip.Prefix) (Endpoint, error) {
	if err := ep.validateOwner(); err != nil {
		return Endpoint{}, fmt.Errorf("allocate endpoint: %w", err)
	}
	fail := func(err error) (Endpoint, error) {
		return Endpoint{}, fmt.Errorf("allocate endpoint %s/%s in %s: %w", ep.Host, ep.Name, subnet, err)
	}
	if err := checkSubnetSize(subnet, subnet.Bits()); err != nil {
		return fail(err)
	}
	network := subnet.Addr()
	gateway := network.Next()
	last := lastAddr(subnet)
	if ep.IP.IsValid() {
		if !subnet.Contains(ep.IP) || ep.IP == network || ep.IP == gateway || ep.IP == last {
			return fail(fmt.Errorf("IP %s is not a usable address of the subnet", ep.IP))
		}
	}
	existing, err := c.listRange(ctx, EndpointFilter{Subnet: subnet})
	if err != nil {
		return fail(err)
	}
	used := make(map[netip.Addr]bool, len(existing))
	for _, e := range existing {
		if e.Host == ep.Host && e.Name == ep.Name {
			if ep.IP.IsValid() && ep.IP != e.IP {
				return fail(fmt.Errorf("endpoint already holds %s; delete it first", e.IP))
			}
			return e, nil
		}
		used[e.IP] = true
	}
	if ep.IP.IsValid() {
		return c.create(ctx, ep, false, fail)
	}
	for ip := gateway.Next(); ip != last; ip = ip.Next() {
		if used[ip] {
			continue
		}
		ep.IP = ip
		got, err := c.create(ctx, ep, false, fail)
		if !errors.Is(err, ErrIPInUse) {
			return got, err
		}
	}
	return fail(ErrAddrsExhausted)
}

// create writes ep at its IP if the key is absent. If another endpoint
// holds the IP the error wraps ErrIPInUse; if the holder is ep itself (a
// concurrent call won), that record is returned.
// create writes ep if its address is free (and, with roaming, its
// roaming record in the same transaction); the same host and name get
// their existing record back.
func (c *Client) create(ctx context.Context, ep Endpoint, roaming bool, fail func(error) (Endpoint, error)) (Endpoint, error) {
	key := c.endpointKey(ep.IP)
	val, err := json.Marshal(ep)
	if err != nil {
		return fail(err)
	}
	ops := []clientv3.Op{clientv3.OpPut(key, string(val))}
	if roaming {
		ops = append(ops, clientv3.OpPut(c.roamingKey(ep.IP), string(val)))
	}
	tx, err := c.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
		Then(ops...).
		Else(clientv3.OpGet(key)).
		Commit()
	if err != nil {
		return fail(err)
	}
	if tx.Succeeded {
		return ep, nil
	}
	kvs := tx.Responses[0].GetResponseRange().Kvs
	if len(kvs) == 0 {
		return fail(fmt.Errorf("create %s: etcd returned neither success nor the holder", key))
	}
	holder, err := c.decodeEndpoint(kvs[0])
	if err != nil {
		return fail(fmt.Errorf("%s held by an unreadable record (%v): %w", ep.IP, err, ErrIPInUse))
	}
	if holder.Host == ep.Host && holder.Name == ep.Name {
		return holder, nil
	}
	return fail(fmt.Errorf("%s held by %s/%s: %w", ep.IP, holder.Host, holder.Name, ErrIPInUse))
}

// lastAddr returns the highest address of p.
func lastAddr(p netip.Prefix) netip.Addr {
	a := p.Addr().As16()
	hostBits := p.Addr().BitLen() - p.Bits()
	for i := 15; hostBits > 0; i-- {
		n := min(hostBits, 8)
		a[i] |= byte(1<<n - 1)
		hostBits -= n
	}
	addr := netip.AddrFrom16(a)
	if p.Addr().Is4() {
		addr = addr.Unmap()
	}
	return addr
}

// DeleteEndpoint frees ip if host holds it. ErrNotFound if nobody holds
// it, ErrNotOwner if another host does. Cost: 1 read, 1 write.
func (c *Client) DeleteEndpoint(ctx context.Context, ip netip.Addr, host string) error {
	key := c.endpointKey(ip)
	for {
		resp, err := c.cli.Get(ctx, key)
		if err != nil {
			return fmt.Errorf("delete endpoint %s of %s: %w", ip, host, err)
		}
		if len(resp.Kvs) == 0 {
			return fmt.Errorf("delete endpoint %s of %s: %w", ip, host, ErrNotFound)
		}
		kv := resp.Kvs[0]
		// A bad record cannot name its owner; it may be removed by anyone.
		if e, err := c.decodeEndpoint(kv); err == nil && e.Host != host {
			return fmt.Errorf("delete endpoint %s of %s: held by %s/%s: %w", ip, host, e.Host, e.Name, ErrNotOwner)
		}
		tx, err := c.cli.Txn(ctx).
			If(clientv3.Compare(clientv3.ModRevision(key), "=", kv.ModRevision)).
			Then(clientv3.OpDelete(key), clientv3.OpDelete(c.roamingKey(ip))).
			Commit()
		if err != nil {
			return fmt.Errorf("delete endpoint %s of %s: %w", ip, host, err)
		}
		if tx.Succeeded {
			return nil
		}
		// The record changed between read and delete: decide again.
	}
}

// GetEndpoint returns the endpoint holding ip; ErrNotFound if none, an
// error wrapping ErrBadRecord if the record is invalid.
func (c *Client) GetEndpoint(ctx context.Context, ip netip.Addr) (Endpoint, error) {
	resp, err := c.cli.Get(ctx, c.endpointKey(ip))
	if err != nil {
		return Endpoint{}, fmt.Errorf("get endpoint %s: %w", ip, err)
	}
	if len(resp.Kvs) == 0 {
		return Endpoint{}, fmt.Errorf("get endpoint %s: %w", ip, ErrNotFound)
	}
	return c.decodeEndpoint(resp.Kvs[0])
}

// ListEndpoints returns the endpoints matching f sorted by IP, skipping
// bad records.
func (c *Client) ListEndpoints(ctx context.Context, f EndpointFilter) ([]Endpoint, error) {
	eps, err := c.listRange(ctx, f)
	if err != nil {
		return nil, fmt.Errorf("list endpoints (%s): %w", f, err)
	}
	return eps, nil
}

// WatchEndpoints streams the endpoints matching f like WatchHosts does
// hosts. An endpoint that stops matching f is reported as deleted.
func (c *Client) WatchEndpoints(ctx context.Context, f EndpointFilter) <-chan EndpointEvent {
	key, end := c.keyRange(f.Subnet)
	return kvwatch.Watch(ctx, kvwatch.Config[Endpoint]{
		Client: c.cli,
		Key:    key,
		End:    end,
		Decode: func(kv *mvccpb.KeyValue) (Endpoint, bool, error) {
			e, err := c.decodeEndpoint(kv)
			return e, err == nil && f.match(e), err
		},
		OnBad:  c.badRecord,
		Logger: c.log,
	})
}

func (f EndpointFilter) String() string {
	parts := []string{}
	if f.Host != "" {
		parts = append(parts, "host "+strconv.Quote(f.Host))
	}
	if f.Subnet.IsValid() {
		parts = append(parts, "subnet "+f.Subnet.String())
	}
	if len(parts) == 0 {
		return "all"
	}
	return strings.Join(parts, ", ")
}
