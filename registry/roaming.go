package registry

import (
	"context"
	"fmt"
	"net/netip"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/keyroute/keyroute/registry/kvwatch"
)

// A roaming endpoint holds an address outside its host's pod subnet (an IP
// that moved to another host). Forwarding by subnet cannot find it, so it
// is also recorded under roaming/<ip>, a prefix small enough for every
// agent to watch: each agent adds a /32 route for every roaming endpoint.

func (c *Client) roamingKey(ip netip.Addr) string { return c.prefix + "roaming/" + ip.String() }

// AllocateRoaming records ep (ep.IP set, outside its host's subnet but in
// cluster) under endpoints/ and roaming/ in one transaction, only if the
// address is free cluster-wide; the same host and name get their existing
// record back. Cost: 1 write.
func (c *Client) AllocateRoaming(ctx context.Context, ep Endpoint, cluster netip.Prefix) (Endpoint, error) {
	fail := func(err error) (Endpoint, error) {
		return Endpoint{}, fmt.Errorf("allocate roaming %s for %s/%s: %w", ep.IP, ep.Host, ep.Name, err)
	}
	if !ep.IP.Is4() || !cluster.Contains(ep.IP) {
		return fail(fmt.Errorf("%s is not in the cluster range %s", ep.IP, cluster))
	}
	if err := ep.Validate(); err != nil {
		return fail(err)
	}
	return c.create(ctx, ep, true, fail)
}

// decodeRoaming is the one place a roaming record is read and checked: an
// endpoint record whose key is its IP, which must be in the cluster.
func (c *Client) decodeRoaming(kv *mvccpb.KeyValue) (Endpoint, error) {
	return c.decodeEndpointAt(KindRoaming, c.prefix+"roaming/", kv)
}

// WatchRoaming streams the roaming endpoints of the whole cluster.
func (c *Client) WatchRoaming(ctx context.Context) <-chan EndpointEvent {
	key := c.prefix + "roaming/"
	return kvwatch.Watch(ctx, kvwatch.Config[Endpoint]{
		Client: c.cli,
		Key:    key,
		End:    clientv3.GetPrefixRangeEnd(key),
		Decode: func(kv *mvccpb.KeyValue) (Endpoint, bool, error) {
			e, err := c.decodeRoaming(kv)
			return e, err == nil, err
		},
		OnBad:  c.badRecord,
		Logger: c.log,
	})
}
