package agent

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/keyroute/keyroute/controller"
	"github.com/keyroute/keyroute/flows"
	"github.com/keyroute/keyroute/keyalloc"
	"github.com/keyroute/keyroute/openflow"
)

// This file is rewrite mode's cache (DESIGN.md "Cache bootstrap"). The
// agent is the sender for pairs whose source container is local and the
// receiver for pairs whose destination is local:
//
//   sender:   punt → Allocate (etcd) → pending entry (keyed VXLAN) →
//             record ready (watch) → ready entry (rewrite) → record gone
//             (watch) → entry removed
//   receiver: pair index appears (watch) → checked → Restore entry →
//             MarkReady → Restore idles out (flow-removed) → Release
//
// Cache entries are flows the controller keeps as the "cache" owner's
// desired set, so a reconnect or restart replays them with the pipeline.

const cacheOwner = "cache"

type pairKey struct{ src, dst netip.Addr }

// sendEntry is one pair this host sends on.
type sendEntry struct {
	pair    flows.Pair
	state   flows.CacheState
	rec     keyalloc.Record // zero for fallback entries
	punted  time.Time       // first punt, for time-to-fast-path
	reason  string          // why a fallback entry has no key
	peerTag string          // peer host name
	// early is a ready record seen while the allocation was still
	// running: the receiver can mark the record ready before the
	// allocating transaction's answer reaches this agent.
	early keyalloc.Record
}

// recvEntry is one key this host restores.
type recvEntry struct {
	rec  keyalloc.Record
	peer netip.Addr
}

type recvKey struct {
	peer netip.Addr
	key  uint8
}

// cache is the rewrite-mode state of one agent.
type cache struct {
	a     *Agent
	alloc *keyalloc.Allocator
	rw    flows.Rewrite

	mu     sync.Mutex
	send   map[pairKey]*sendEntry
	recv   map[recvKey]*recvEntry
	allocs chan struct{} // bounds concurrent allocations
	loaded []func(context.Context)

	flushMu sync.Mutex
	waiters []chan error
	kick    chan struct{}

	// retired counts the packets of entries that are gone, from their
	// FLOW_REMOVED: [0] egress, [1] restore (keyroute_cache_hit_packets_total).
	retired [2]atomic.Uint64
}

func newCache(a *Agent, alloc *keyalloc.Allocator, rw flows.Rewrite) *cache {
	c := &cache{a: a, alloc: alloc, rw: rw, send: map[pairKey]*sendEntry{}, recv: map[recvKey]*recvEntry{},
		allocs: make(chan struct{}, 64), kick: make(chan struct{}, 1)}
	go c.flushLoop() // lives as long as the agent process
	return c
}

// flows returns the cache owner's desired flows.
func (c *cache) flows() []*openflow.FlowMod {
	c.mu.Lock()
	defer c.mu.Unlock()
	h := c.a.host
	var fs []*openflow.FlowMod
	// A (peer, key) cookie names one pair at a time; entries are sorted so
	// the desired set is stable.
	keys := make([]pairKey, 0, len(c.send))
	for k := range c.send {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		if keys[i].src != keys[j].src {
			return keys[i].src.Less(keys[j].src)
		}
		return keys[i].dst.Less(keys[j].dst)
	})
	for _, k := range keys {
		e := c.send[k]
		if e.state < 0 { // allocation still running
			continue
		}
		fs = append(fs, flows.CacheFlow(h, c.rw, e.pair, e.state))
	}
	rk := make([]recvKey, 0, len(c.recv))
	for k := range c.recv {
		rk = append(rk, k)
	}
	sort.Slice(rk, func(i, j int) bool {
		if rk[i].peer != rk[j].peer {
			return rk[i].peer.Less(rk[j].peer)
		}
		return rk[i].key < rk[j].key
	})
	for _, k := range rk {
		e := c.recv[k]
		fs = append(fs, flows.RestoreFlow(h, c.rw, k.peer, k.key, e.rec.Src, e.rec.Dst))
	}
	return fs
}

// apply installs the current cache state and returns once the switch has
// it. Callers change state first, then apply. Concurrent callers share one
// install (a burst of new pairs costs one bundle, not one per pair): each
// waits for a flush that started after its change.
func (c *cache) apply(ctx context.Context) error {
	done := make(chan error, 1)
	c.flushMu.Lock()
	c.waiters = append(c.waiters, done)
	c.flushMu.Unlock()
	select {
	case c.kick <- struct{}{}:
	default: // a flush is already due; it will take this waiter
	}
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// flushLoop installs the cache state for every batch of waiters.
func (c *cache) flushLoop() {
	for range c.kick {
		c.flushMu.Lock()
		ws := c.waiters
		c.waiters = nil
		c.flushMu.Unlock()
		if len(ws) == 0 {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		err := c.a.intSw.SetDesired(ctx, cacheOwner, c.flows())
		cancel()
		if err != nil {
			c.a.metrics.cacheErrors.Inc()
			err = fmt.Errorf("install cache flows: %w", err)
		}
		c.a.metrics.cacheEntries.WithLabelValues("egress").Set(float64(c.count(true)))
		c.a.metrics.cacheEntries.WithLabelValues("restore").Set(float64(c.count(false)))
		for _, w := range ws {
			w <- err
		}
	}
}

func (c *cache) count(send bool) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	if send {
		return len(c.send)
	}
	return len(c.recv)
}

// load rebuilds the cache from etcd after a (re)start, before br-int's
// connection replays the desired flows, so live fast paths keep their
// flows across an agent restart.
func (c *cache) load(ctx context.Context) error {
	me := c.a.cfg.Node
	sent, err := c.alloc.List(ctx, keyalloc.Filter{SrcHost: me})
	if err != nil {
		return fmt.Errorf("list this host's keys: %w", err)
	}
	for _, r := range sent {
		c.onSenderRecord(r)
	}
	recv, err := c.alloc.List(ctx, keyalloc.Filter{DstHost: me})
	if err != nil {
		return fmt.Errorf("list keys towards this host: %w", err)
	}
	for _, r := range recv {
		// Marking ready again is harmless (idempotent) and covers a
		// receiver that stopped between installing and marking; it waits
		// until br-int has the Restore entries (markLoaded).
		if fn, _ := c.onReceiverRecord(r); fn != nil {
			c.loaded = append(c.loaded, fn)
		}
	}
	return nil
}

// markLoaded runs the follow-ups of the records load found, once br-int's
// connection has replayed their Restore entries.
func (c *cache) markLoaded(ctx context.Context) {
	for _, fn := range c.loaded {
		fn(ctx)
	}
	c.loaded = nil
}

// watch follows both sides' records until ctx ends.
func (c *cache) watch(ctx context.Context) error {
	me := c.a.cfg.Node
	sendCh, err := c.alloc.Watch(ctx, keyalloc.Filter{SrcHost: me})
	if err != nil {
		return err
	}
	recvCh, err := c.alloc.Watch(ctx, keyalloc.Filter{DstHost: me})
	if err != nil {
		return err
	}
	go c.follow(ctx, sendCh, c.onSenderRecord, c.onSenderDelete)
	go c.follow(ctx, recvCh, c.onReceiverRecord, c.onReceiverDelete)
	return nil
}

// follow consumes a record stream in batches: every event already queued
// updates the state, one apply installs the result, then each event's
// follow-up work (marking a record ready, metrics) runs. Under a burst of
// new pairs this costs one OpenFlow bundle per batch, not per pair; events
// keep their order within the stream.
func (c *cache) follow(ctx context.Context, ch <-chan keyalloc.Event, put func(keyalloc.Record) (func(context.Context), bool), del func(keyalloc.Record) bool) {
	for ev := range ch {
		batch := []keyalloc.Event{ev}
	drain:
		for len(batch) < 512 {
			select {
			case e, ok := <-ch:
				if !ok {
					break drain
				}
				batch = append(batch, e)
			default:
				break drain
			}
		}
		changed := false
		var after []func(context.Context)
		for _, e := range batch {
			switch e.Type {
			case keyalloc.EventPut:
				fn, ch := put(e.Value)
				changed = changed || ch
				if fn != nil {
					after = append(after, fn)
				}
			case keyalloc.EventDelete:
				changed = del(e.Value) || changed
			}
		}
		if !changed {
			continue
		}
		if err := c.apply(ctx); err != nil {
			c.a.log.Warn("install cache entries", "records", len(batch), "err", err)
			continue
		}
		var wg sync.WaitGroup
		for _, fn := range after {
			wg.Go(func() { fn(ctx) })
		}
		wg.Wait()
	}
}

// peerByName returns a known peer host.
func (a *Agent) peerByName(name string) (flows.Peer, net.HardwareAddr, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	h, ok := a.peers[name]
	if !ok || !h.PodSubnet.IsValid() {
		return flows.Peer{}, nil, false
	}
	return flows.Peer{Name: h.Name, IP: h.UnderlayIP, Subnet: h.PodSubnet}, h.UnderlayMAC, true
}

// peerFor returns the peer host that holds ip: a roaming endpoint's host,
// else the host whose pod subnet holds it.
func (a *Agent) peerFor(ip netip.Addr) (flows.Peer, net.HardwareAddr, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if ep, ok := a.roaming[ip]; ok {
		h, ok := a.peers[ep.Host]
		if !ok {
			return flows.Peer{}, nil, false
		}
		return flows.Peer{Name: h.Name, IP: h.UnderlayIP, Subnet: h.PodSubnet}, h.UnderlayMAC, true
	}
	for _, h := range a.peers {
		if h.PodSubnet.Contains(ip) {
			return flows.Peer{Name: h.Name, IP: h.UnderlayIP, Subnet: h.PodSubnet}, h.UnderlayMAC, true
		}
	}
	return flows.Peer{}, nil, false
}

// isLocal reports whether ip is a container attached here.
func (a *Agent) isLocal(ip netip.Addr) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, ep := range a.endpoints {
		if ep.IP == ip {
			return true
		}
	}
	return false
}

// onPunt handles a cache miss copied to the agent. It never blocks the
// controller's delivery goroutine: allocation runs in its own goroutine,
// bounded by c.allocs; a full set drops the punt (the next one retries).
func (c *cache) onPunt(pin *openflow.PacketIn2) {
	c.a.metrics.punts.WithLabelValues("received").Inc()
	if len(pin.Userdata) == 0 || pin.Userdata[0] != flows.PuntMiss {
		c.a.metrics.punts.WithLabelValues("bad").Inc()
		return
	}
	src, dst, dscp, err := parseIPv4(pin.Packet)
	if err != nil || dscp != 0 {
		c.a.metrics.punts.WithLabelValues("bad").Inc()
		return
	}
	peer, regMAC, ok := c.a.peerFor(dst)
	if !ok || !c.a.isLocal(src) {
		c.a.metrics.punts.WithLabelValues("unknown").Inc()
		return
	}
	pk := pairKey{src, dst}
	c.mu.Lock()
	if _, ok := c.send[pk]; ok {
		c.mu.Unlock()
		c.a.metrics.punts.WithLabelValues("duplicate").Inc()
		return
	}
	// A placeholder dedupes further punts while the allocation runs.
	e := &sendEntry{pair: flows.Pair{Src: src, Dst: dst, Peer: peer}, state: -1, punted: time.Now(), peerTag: peer.Name}
	c.send[pk] = e
	c.mu.Unlock()
	c.a.log.Debug("pair punted", "src", src, "dst", dst, "peer", peer.Name)
	select {
	case c.allocs <- struct{}{}:
	default:
		c.mu.Lock()
		delete(c.send, pk)
		c.mu.Unlock()
		c.a.metrics.punts.WithLabelValues("dropped").Inc()
		return
	}
	go func() {
		defer func() { <-c.allocs }()
		c.bootstrap(pk, e, regMAC)
	}()
}

// bootstrap allocates the pair's key and installs its pending (or, for a
// pair whose record is already ready, its ready) entry; without a key the
// pair gets a fallback entry and stays on VXLAN.
func (c *cache) bootstrap(pk pairKey, e *sendEntry, regMAC net.HardwareAddr) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c.a.metrics.bootstraps.Inc()
	rec, err := c.alloc.Allocate(ctx, c.a.cfg.Node, e.peerTag, pk.src, pk.dst)
	c.a.log.Debug("pair key allocated", "src", pk.src, "dst", pk.dst, "key", rec.Key, "err", err, "since_punt", time.Since(e.punted))
	nh := c.nextHop(e.pair.Peer.IP, regMAC)
	c.mu.Lock()
	if c.send[pk] != e { // detached or invalidated meanwhile
		c.mu.Unlock()
		return
	}
	c.allocatedLocked(pk, e, rec, err, nh)
	state, reason := e.state, e.reason
	c.mu.Unlock()
	if state == flows.CacheFallback {
		c.a.metrics.fallbacks.WithLabelValues(reason).Inc()
		c.a.log.Info("cache pair stays on VXLAN", "src", pk.src, "dst", pk.dst, "reason", reason, "err", err)
	}
	if err := c.apply(ctx); err != nil {
		c.a.log.Warn("install cache entry", "src", pk.src, "dst", pk.dst, "err", err)
		c.mu.Lock()
		delete(c.send, pk)
		c.mu.Unlock()
		return
	}
	if state == flows.CacheReady {
		c.onFastPath(pk.src, pk.dst, e.peerTag, rec.Key, e.punted)
	}
}

// onFastPath records a pair's arrival on the fast path: the
// time-to-fast-path histogram and the debug line the bench times.
func (c *cache) onFastPath(src, dst netip.Addr, peer string, key uint8, punted time.Time) {
	d := time.Since(punted)
	c.a.metrics.timeToFastPath.Observe(d.Seconds())
	c.a.log.Debug("pair on the fast path", "src", src, "dst", dst, "peer", peer, "key", key, "since_punt", d)
}

// allocatedLocked records an allocation's outcome in the pair's entry: a
// fallback without a key, else the key in state pending — or ready, if the
// record is ready already (an existing pair, or one the receiver marked
// before the allocation's answer came back).
func (c *cache) allocatedLocked(pk pairKey, e *sendEntry, rec keyalloc.Record, err error, nh net.HardwareAddr) {
	switch {
	case errors.Is(err, keyalloc.ErrKeysExhausted):
		e.state, e.reason = flows.CacheFallback, "keys_exhausted"
	case err != nil:
		e.state, e.reason = flows.CacheFallback, "etcd"
		c.a.metrics.etcdErrors.WithLabelValues("allocate_key").Inc()
	case nh == nil:
		e.state, e.reason = flows.CacheFallback, "no_next_hop"
		e.rec = rec
		e.pair.Key = 0
	default:
		if e.early.CreateRevision == rec.CreateRevision && e.early.State == keyalloc.StateReady {
			rec = e.early
		}
		e.rec, e.pair.Key, e.pair.NextHop = rec, rec.Key, nh
		e.state = flows.CachePending
		if rec.State == keyalloc.StateReady {
			e.state = flows.CacheReady
		}
		c.evictKeyLocked(pk, e.pair.Peer.IP, rec.Key)
	}
	e.early = keyalloc.Record{}
}

// evictKeyLocked removes any other entry of this host that still uses
// (peer, key): a key is reused only once its old record is gone, and the
// old entry's flow must go in the same bundle that adds the new one, or
// the old pair's packets would be restored as the new pair's.
func (c *cache) evictKeyLocked(keep pairKey, peer netip.Addr, key uint8) {
	for k, o := range c.send {
		if k != keep && o.pair.Key == key && o.pair.Peer.IP == peer && o.state != flows.CacheFallback {
			delete(c.send, k)
		}
	}
}

// nextHop resolves the underlay MAC for a peer: the neighbour entry of the
// route's gateway or of the peer itself, else the MAC the peer registered
// (same L2 segment).
func (c *cache) nextHop(peer netip.Addr, registered net.HardwareAddr) net.HardwareAddr {
	target := peer
	if routes, err := netlink.RouteGet(peer.AsSlice()); err == nil && len(routes) > 0 && routes[0].Gw != nil {
		if gw, ok := netip.AddrFromSlice(routes[0].Gw.To4()); ok {
			target = gw
		}
	}
	if link, err := netlink.LinkByName(BridgePhy); err == nil {
		if neighs, err := netlink.NeighList(link.Attrs().Index, netlink.FAMILY_V4); err == nil {
			for _, n := range neighs {
				if ip, ok := netip.AddrFromSlice(n.IP.To4()); ok && ip == target && len(n.HardwareAddr) == 6 &&
					n.State&(netlink.NUD_REACHABLE|netlink.NUD_STALE|netlink.NUD_PERMANENT|netlink.NUD_DELAY|netlink.NUD_PROBE) != 0 {
					return n.HardwareAddr
				}
			}
		}
	}
	if target == peer && len(registered) == 6 {
		return registered
	}
	return nil
}

// onSenderRecord follows a record of a pair this host sends: ready means
// the receiver restores the key, so the entry may rewrite. It changes state
// only; the caller installs.
func (c *cache) onSenderRecord(r keyalloc.Record) (func(context.Context), bool) {
	peer, regMAC, ok := c.a.peerByName(r.DstHost)
	if !ok {
		return nil, false
	}
	pk := pairKey{r.Src, r.Dst}
	c.mu.Lock()
	e, ok := c.send[pk]
	switch {
	case ok && e.state < 0 && r.State == keyalloc.StateReady:
		// The allocation has not returned yet; it takes this from here.
		e.early = r
		c.mu.Unlock()
		return nil, false
	case ok && e.rec.CreateRevision == r.CreateRevision && e.state == flows.CachePending && r.State == keyalloc.StateReady:
		e.rec, e.state = r, flows.CacheReady
	case !ok && r.State == keyalloc.StateReady && c.a.isLocal(r.Src):
		// After a restart: the pair was on the fast path.
		nh := c.nextHop(peer.IP, regMAC)
		if nh == nil {
			c.mu.Unlock()
			return nil, false
		}
		e = &sendEntry{pair: flows.Pair{Src: r.Src, Dst: r.Dst, Peer: peer, Key: r.Key, NextHop: nh}, state: flows.CacheReady,
			rec: r, punted: time.Now(), peerTag: peer.Name}
		c.evictKeyLocked(pk, peer.IP, r.Key)
		c.send[pk] = e
	default:
		c.mu.Unlock()
		return nil, false
	}
	punted := e.punted
	c.mu.Unlock()
	return func(context.Context) { c.onFastPath(r.Src, r.Dst, r.DstHost, r.Key, punted) }, true
}

// onSenderDelete drops the entry of a record that is gone: its key may be
// handed to another pair from now on.
func (c *cache) onSenderDelete(r keyalloc.Record) bool {
	pk := pairKey{r.Src, r.Dst}
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.send[pk]
	if !ok || e.rec.CreateRevision != r.CreateRevision || e.state == flows.CacheFallback {
		return false
	}
	delete(c.send, pk)
	return true
}

// onReceiverRecord checks a new pair towards this host against what this
// host knows (the peer, the destination container) and adds its Restore
// entry; once the caller has installed it, the returned func marks the
// record ready.
func (c *cache) onReceiverRecord(r keyalloc.Record) (func(context.Context), bool) {
	peer, _, ok := c.a.peerByName(r.SrcHost)
	holder, _, held := c.a.peerFor(r.Src)
	if !ok || !held || holder.Name != r.SrcHost || !c.a.isLocal(r.Dst) || !c.rwKey(r.Key) {
		c.a.log.Debug("ignoring key record", "src_host", r.SrcHost, "src", r.Src, "dst", r.Dst, "key", r.Key)
		return nil, false
	}
	rk := recvKey{peer.IP, r.Key}
	c.mu.Lock()
	if e, ok := c.recv[rk]; ok && e.rec.CreateRevision == r.CreateRevision {
		c.mu.Unlock()
		return nil, false
	}
	c.recv[rk] = &recvEntry{rec: r, peer: peer.IP}
	c.mu.Unlock()
	return func(ctx context.Context) {
		c.a.log.Debug("pair restore installed", "src", r.Src, "dst", r.Dst, "peer", r.SrcHost, "key", r.Key)
		if err := c.alloc.MarkReady(ctx, r); err != nil && !errors.Is(err, keyalloc.ErrStale) {
			c.a.metrics.etcdErrors.WithLabelValues("mark_ready").Inc()
			c.a.log.Warn("mark key ready", "src_host", r.SrcHost, "key", r.Key, "err", err)
			return
		}
		c.a.log.Debug("pair marked ready", "src", r.Src, "dst", r.Dst, "peer", r.SrcHost, "key", r.Key)
	}, true
}

func (c *cache) rwKey(k uint8) bool {
	for _, x := range c.rw.Keys {
		if x == k {
			return true
		}
	}
	return false
}

func (c *cache) onReceiverDelete(r keyalloc.Record) bool {
	peer, _, ok := c.a.peerByName(r.SrcHost)
	if !ok {
		return false
	}
	rk := recvKey{peer.IP, r.Key}
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.recv[rk]
	if !ok || e.rec.CreateRevision != r.CreateRevision {
		return false
	}
	delete(c.recv, rk)
	return true
}

// onFlowRemoved handles idle expiry. A sender entry that idles out just
// goes (the record stays until the receiver expires it); a Restore entry
// that idles out releases its record, which frees the key on both ends.
func (c *cache) onFlowRemoved(fr *openflow.FlowRemoved) {
	switch flows.CookieCategory(fr.Cookie) {
	case flows.CatCache:
		c.retired[0].Add(fr.PacketCount)
	case flows.CatRestore:
		c.retired[1].Add(fr.PacketCount)
	}
	if fr.Reason != openflow.FlowRemovedIdleTimeout && fr.Reason != openflow.FlowRemovedHardTimeout {
		return
	}
	switch flows.CookieCategory(fr.Cookie) {
	case flows.CatCache:
		src, dst := matchIPv4(fr.Match, openflow.FieldIPv4Src), matchIPv4(fr.Match, openflow.FieldIPv4Dst)
		pk := pairKey{src, dst}
		c.mu.Lock()
		e, ok := c.send[pk]
		if ok && flows.CacheCookie(e.pair.Peer.IP, e.pair.Key) == fr.Cookie {
			delete(c.send, pk)
		}
		c.mu.Unlock()
		c.a.metrics.expiries.WithLabelValues("egress").Inc()
	case flows.CatRestore:
		id := flows.CookieID(fr.Cookie)
		peer := netip.AddrFrom4([4]byte{byte(id >> 32), byte(id >> 24), byte(id >> 16), byte(id >> 8)})
		rk := recvKey{peer, uint8(id)}
		c.mu.Lock()
		e, ok := c.recv[rk]
		if ok {
			delete(c.recv, rk)
		}
		c.mu.Unlock()
		c.a.metrics.expiries.WithLabelValues("restore").Inc()
		if ok {
			// Record the removal first: the controller only re-sends a
			// flow it believes is gone.
			actx, acancel := context.WithTimeout(context.Background(), 10*time.Second)
			if err := c.apply(actx); err != nil {
				c.a.log.Warn("update cache after expiry", "err", err)
			}
			acancel()
			rctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			err := c.alloc.Release(rctx, e.rec)
			cancel()
			if err != nil && !errors.Is(err, keyalloc.ErrStale) && !errors.Is(err, keyalloc.ErrNotFound) {
				// The record still exists (etcd did not answer), so the
				// sender may still use the key: its Restore entry goes
				// back, and the release is tried again at its next expiry.
				c.a.metrics.etcdErrors.WithLabelValues("release_key").Inc()
				c.a.log.Warn("release expired key; keeping its restore entry", "peer", peer, "key", rk.key, "err", err)
				c.mu.Lock()
				if _, taken := c.recv[rk]; !taken {
					c.recv[rk] = e
				}
				c.mu.Unlock()
			}
		}
	default:
		return
	}
	// The flow is gone from OVS already; dropping it from the desired set
	// keeps a later replay from resurrecting it.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.apply(ctx); err != nil {
		c.a.log.Warn("update cache after expiry", "err", err)
	}
}

// invalidateEndpoint removes every entry involving a detached container and
// releases their records, so peers drop theirs too.
func (c *cache) invalidateEndpoint(ctx context.Context, ip netip.Addr) {
	c.invalidate(ctx, "detached container "+ip.String(),
		func(k pairKey, _ *sendEntry) bool { return k.src == ip },
		func(_ recvKey, e *recvEntry) bool { return e.rec.Dst == ip })
}

// invalidatePeer removes every entry shared with a host that left and
// releases their records: the departed host cannot release its side, and a
// host that comes back simply bootstraps its pairs again.
func (c *cache) invalidatePeer(ctx context.Context, name string, ip netip.Addr) {
	c.invalidate(ctx, "departed host "+name,
		func(_ pairKey, e *sendEntry) bool { return e.peerTag == name },
		func(k recvKey, _ *recvEntry) bool { return k.peer == ip })
}

// invalidate removes the entries the predicates select, installs the
// result, then releases their records.
func (c *cache) invalidate(ctx context.Context, why string, send func(pairKey, *sendEntry) bool, recv func(recvKey, *recvEntry) bool) {
	var release []keyalloc.Record
	c.mu.Lock()
	for k, e := range c.send {
		if send(k, e) {
			delete(c.send, k)
			if e.rec.CreateRevision != 0 {
				release = append(release, e.rec)
			}
		}
	}
	for k, e := range c.recv {
		if recv(k, e) {
			delete(c.recv, k)
			release = append(release, e.rec)
		}
	}
	c.mu.Unlock()
	if err := c.apply(ctx); err != nil {
		c.a.log.Warn("remove cache entries", "of", why, "err", err)
	}
	for _, r := range release {
		if err := c.alloc.Release(ctx, r); err != nil && !errors.Is(err, keyalloc.ErrStale) {
			c.a.metrics.etcdErrors.WithLabelValues("release_key").Inc()
			c.a.log.Warn("release key", "of", why, "key", r.Key, "err", err)
		}
	}
}

// ensureMeter installs the punt meter, or updates it on a switch that
// already has it (a reconnect to a running ovs-vswitchd).
func ensureMeter(ctx context.Context, sw *controller.Switch, id uint32, pps uint32) error {
	mm := &openflow.MeterMod{Command: openflow.MeterAdd, Flags: openflow.MeterFlagPktps | openflow.MeterFlagBurst | openflow.MeterFlagStats,
		MeterID: id, Bands: []openflow.MeterBand{{Type: openflow.MeterBandDrop, Rate: pps, BurstSize: pps / 10}}}
	err := sw.Apply(ctx, mm)
	var em *openflow.ErrorMsg
	if errors.As(err, &em) && em.ErrType == openflow.ErrTypeMeterModFailed && em.Code == 1 { // OFPMMFC_METER_EXISTS
		mm.Command = openflow.MeterModify
		err = sw.Apply(ctx, mm)
	}
	if err != nil {
		return fmt.Errorf("install punt meter %d (%d pkt/s): %w", id, pps, err)
	}
	return nil
}

// parseIPv4 reads the addresses and DSCP of an Ethernet/IPv4 frame.
func parseIPv4(pkt []byte) (src, dst netip.Addr, dscp uint8, err error) {
	if len(pkt) < 14+20 || binary.BigEndian.Uint16(pkt[12:]) != 0x0800 || pkt[14]>>4 != 4 {
		return src, dst, 0, errors.New("not an IPv4 frame")
	}
	ip := pkt[14:]
	return netip.AddrFrom4([4]byte(ip[12:16])), netip.AddrFrom4([4]byte(ip[16:20])), ip[1] >> 2, nil
}

// matchIPv4 returns an IPv4 field's value from a match, or the zero Addr.
func matchIPv4(m openflow.Match, f *openflow.Field) netip.Addr {
	for _, o := range m.Fields {
		if o.Field == f && len(o.Value) == 4 {
			return netip.AddrFrom4([4]byte(o.Value))
		}
	}
	return netip.Addr{}
}

// stateOf names a sender entry's state for keyroutectl cache.
func (c *cache) stateOf(pk pairKey) string {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.send[pk]; ok && e.state >= 0 {
		if e.state == flows.CacheFallback {
			return "fallback (" + e.reason + ")"
		}
		return e.state.String()
	}
	return "unknown"
}

// recvRecord returns the record a Restore entry serves.
func (c *cache) recvRecord(rk recvKey) (keyalloc.Record, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.recv[rk]
	if !ok {
		return keyalloc.Record{}, false
	}
	return e.rec, true
}
