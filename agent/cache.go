package agent

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/keyroute/keyroute/api"
	"github.com/keyroute/keyroute/cacheproto"
	"github.com/keyroute/keyroute/controller"
	"github.com/keyroute/keyroute/flows"
	"github.com/keyroute/keyroute/keyalloc"
	"github.com/keyroute/keyroute/openflow"
	"github.com/keyroute/keyroute/registry"
)

// This file wires rewrite mode's key protocol (cacheproto, DESIGN.md
// "Cache protocol v2") to etcd and OVS. The protocol's decisions are all
// in cacheproto.Machine; here events from br-int (punts, FLOW_REMOVED),
// from etcd (the keys/<me>/ and pairs/<me>/ watches) and from timers are
// fed to it under one lock, and its effects run: allocations, releases and
// marks against etcd, installs of the cache owner's flows with
// controller.SetDesiredConfirmed.

const cacheOwner = "cache"

// fallbackRetry is a fallback entry's hard timeout: a pair left on VXLAN
// (etcd was down, the receiver did not acknowledge, no next hop) that keeps
// sending tries for a key again this often.
const fallbackRetry = 30 * time.Second

// antiEntropyEvery is how often records and flows are compared both ways
// (also after every reconnect of br-int).
const antiEntropyEvery = 10 * time.Second

// cache is the rewrite-mode state of one agent.
type cache struct {
	a     *Agent
	alloc *keyalloc.Allocator
	rw    flows.Rewrite

	mu sync.Mutex
	m  *cacheproto.Machine

	allocs chan struct{} // bounds concurrent allocations

	// nextHops caches each peer's underlay next hop for nextHopTTL: a
	// burst of punts would otherwise read the neighbour table (netlink)
	// once per punt, on the controller's one packet-in goroutine.
	nhMu     sync.Mutex
	nextHops map[netip.Addr]cachedHop
	kickAE   chan struct{} // asks for an anti-entropy run now

	// retired counts the packets of entries that are gone, from their
	// FLOW_REMOVED: [0] egress, [1] restore (keyroute_cache_hit_packets_total).
	retired [2]atomic.Uint64
}

type cachedHop struct {
	mac net.HardwareAddr
	at  time.Time
}

const nextHopTTL = time.Second

func newCache(a *Agent, alloc *keyalloc.Allocator, rw flows.Rewrite, cfg cacheproto.Config) *cache {
	return &cache{a: a, alloc: alloc, rw: rw, m: cacheproto.New(cfg, time.Now()), allocs: make(chan struct{}, 64), kickAE: make(chan struct{}, 1),
		nextHops: map[netip.Addr]cachedHop{}}
}

// cachedNextHop is nextHop through a per-peer cache of nextHopTTL.
func (c *cache) cachedNextHop(peer netip.Addr, registered net.HardwareAddr) net.HardwareAddr {
	now := time.Now()
	c.nhMu.Lock()
	h, ok := c.nextHops[peer]
	c.nhMu.Unlock()
	if ok && now.Sub(h.at) < nextHopTTL {
		return h.mac
	}
	mac := c.nextHop(peer, registered)
	c.nhMu.Lock()
	c.nextHops[peer] = cachedHop{mac, now}
	c.nhMu.Unlock()
	return mac
}

// do feeds one event to the machine and runs the effects it answers.
func (c *cache) do(event func(now time.Time) []cacheproto.Effect) {
	c.mu.Lock()
	effs := event(time.Now())
	c.mu.Unlock()
	c.run(effs)
}

// run starts each effect; results come back through do.
func (c *cache) run(effs []cacheproto.Effect) {
	for _, e := range effs {
		switch e := e.(type) {
		case cacheproto.Install:
			go c.install(e)
		case cacheproto.Allocate:
			go c.allocate(e)
		case cacheproto.MarkReady:
			go c.markReady(e.Rec)
		case cacheproto.Release:
			go c.release(e.Rec)
		case cacheproto.FastPath:
			d := time.Since(e.Punted)
			c.a.metrics.timeToFastPath.Observe(d.Seconds())
			c.a.log.Debug("pair on the fast path", "src", e.Pair.Src, "dst", e.Pair.Dst, "peer", e.Peer, "key", e.Key, "since_punt", d)
		}
	}
}

// install puts one generation of desired cache flows on br-int and
// reports whether the switch confirmed it.
func (c *cache) install(in cacheproto.Install) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	fs := c.flowMods(in)
	err := c.a.intSw.SetDesiredConfirmed(ctx, cacheOwner, fs)
	if err != nil && !errors.Is(err, controller.ErrNotConfirmed) {
		c.a.metrics.cacheErrors.Inc()
		c.a.log.Warn("install cache flows", "generation", in.Gen, "err", err)
	}
	c.a.metrics.cacheEntries.WithLabelValues("egress").Set(float64(len(in.Send)))
	c.a.metrics.cacheEntries.WithLabelValues("restore").Set(float64(len(in.Restore)))
	c.do(func(now time.Time) []cacheproto.Effect { return c.m.Installed(now, in.Gen, err == nil) })
}

// flowMods builds the flows of one generation. An entry whose peer is no
// longer known gets no flow: without it the pair takes VXLAN (sender) or
// its keyed packets are dropped (receiver), never misdelivered.
func (c *cache) flowMods(in cacheproto.Install) []*openflow.FlowMod {
	h := c.a.host
	fs := make([]*openflow.FlowMod, 0, len(in.Send)+len(in.Restore))
	for _, f := range in.Send {
		peer, _, ok := c.a.peerByName(f.Peer)
		if !ok {
			continue
		}
		st := flows.CachePending
		switch f.State {
		case cacheproto.StateReady:
			st = flows.CacheReady
		case cacheproto.StateFallback:
			st = flows.CacheFallback
		}
		fs = append(fs, flows.CacheFlow(h, c.rw, flows.Pair{Src: f.Pair.Src, Dst: f.Pair.Dst, Peer: peer, Key: f.Key, NextHop: f.NextHop}, st))
	}
	for _, f := range in.Restore {
		peer, _, ok := c.a.peerByName(f.Peer)
		if !ok {
			continue
		}
		if !slices.Contains(peer.KeyAddrs(), f.Key.Src) {
			continue // the peer no longer lists the address: KeysGone drops the entry
		}
		fs = append(fs, flows.RestoreFlow(h, f.Key, f.Src, f.Dst))
	}
	return fs
}

func (c *cache) allocate(e cacheproto.Allocate) {
	c.allocs <- struct{}{}
	defer func() { <-c.allocs }()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c.a.metrics.bootstraps.Inc()
	var rec keyalloc.Record
	peer, _, ok := c.a.peerByName(e.Peer)
	err := fmt.Errorf("allocate key towards %s: peer unknown", e.Peer)
	if ok {
		ad := keyalloc.Addrs{Src: c.a.host.KeyAddrs(), Dst: peer.KeyAddrs()}
		rec, err = c.alloc.Allocate(ctx, c.a.cfg.Node, e.Peer, e.Pair.Src, e.Pair.Dst, ad, e.Exclude...)
	}
	if err != nil && !errors.Is(err, keyalloc.ErrKeysExhausted) {
		c.a.metrics.etcdErrors.WithLabelValues("allocate_key").Inc()
	}
	if err != nil {
		c.a.log.Info("cache pair stays on VXLAN", "src", e.Pair.Src, "dst", e.Pair.Dst, "err", err)
	} else {
		c.a.log.Debug("pair key allocated", "src", e.Pair.Src, "dst", e.Pair.Dst, "key", rec.Key)
	}
	c.do(func(now time.Time) []cacheproto.Effect { return c.m.Allocated(now, e.Pair, rec, err) })
}

func (c *cache) markReady(r keyalloc.Record) {
	// The machine asks for a mark only once the Restore entry is confirmed.
	c.a.log.Debug("pair restore installed", "src", r.Src, "dst", r.Dst, "peer", r.SrcHost, "key", r.Key)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := c.alloc.MarkReady(ctx, r)
	stale := errors.Is(err, keyalloc.ErrStale)
	if err != nil && !stale {
		c.a.metrics.etcdErrors.WithLabelValues("mark_ready").Inc()
		c.a.log.Warn("mark key ready", "src_host", r.SrcHost, "key", r.Key, "err", err)
	} else if err == nil {
		c.a.log.Debug("pair marked ready", "src", r.Src, "dst", r.Dst, "peer", r.SrcHost, "key", r.Key)
	}
	c.do(func(now time.Time) []cacheproto.Effect { return c.m.Marked(now, r, stale, err) })
}

func (c *cache) release(r keyalloc.Record) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := c.alloc.Release(ctx, r)
	if errors.Is(err, keyalloc.ErrStale) || errors.Is(err, keyalloc.ErrNotFound) {
		err = nil // gone already: released
	}
	if err != nil {
		c.a.metrics.etcdErrors.WithLabelValues("release_key").Inc()
		c.a.log.Warn("release key; retrying", "dst_host", r.DstHost, "key", r.Key, "err", err)
	}
	c.do(func(now time.Time) []cacheproto.Effect { return c.m.Released(now, r, err) })
}

// ----------------------------------------------------------------------
// Start-up.

// cacheWatch is one of the two record streams, read up to its first
// Synced at start-up and followed afterwards.
type cacheWatch struct {
	ch   <-chan keyalloc.Event
	recs []keyalloc.Record
}

func (c *cache) openWatch(ctx context.Context, f keyalloc.Filter) (*cacheWatch, error) {
	ch, err := c.alloc.Watch(ctx, f)
	if err != nil {
		return nil, err
	}
	w := &cacheWatch{ch: ch}
	byKey := map[string]keyalloc.Record{}
	for {
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case ev, ok := <-ch:
			if !ok {
				return nil, fmt.Errorf("watch of %+v ended", f)
			}
			switch ev.Type {
			case keyalloc.EventPut:
				byKey[ev.Key] = ev.Value
			case keyalloc.EventDelete:
				delete(byKey, ev.Key)
			case keyalloc.EventSynced:
				for _, r := range byKey {
					w.recs = append(w.recs, r)
				}
				return w, nil
			}
		}
	}
}

// start loads the protocol after a (re)start. br-int is connected and has
// replayed the other owners' flows, adding only, so cache flows left by
// an earlier run are still there: entries whose record agrees are
// adopted, and the reconcile that follows start deletes the rest. The
// watches are opened first and followed from their snapshots, so no
// record change between the read and the follow is missed.
func (c *cache) start(ctx context.Context) (sent, recv *cacheWatch, err error) {
	me := c.a.cfg.Node
	if sent, err = c.openWatch(ctx, keyalloc.Filter{SrcHost: me}); err != nil {
		return nil, nil, fmt.Errorf("watch this host's keys: %w", err)
	}
	if recv, err = c.openWatch(ctx, keyalloc.Filter{DstHost: me}); err != nil {
		return nil, nil, fmt.Errorf("watch keys towards this host: %w", err)
	}
	egress, err := c.dumpEgress(ctx)
	if err != nil {
		return nil, nil, err
	}
	start := map[cacheproto.Pair]cacheproto.EgressFlow{}
	for p, f := range egress {
		start[p] = f
	}
	var valid []keyalloc.Record
	for _, r := range recv.recs {
		if c.validRecv(r) {
			valid = append(valid, r)
		}
	}
	c.mu.Lock()
	effs := c.m.Start(time.Now(), sent.recs, valid, start, c.a.isLocal)
	c.mu.Unlock()
	// The first install runs here, before the reconcile, so that the
	// adopted entries are desired when it looks for flows to delete.
	for _, e := range effs {
		if in, ok := e.(cacheproto.Install); ok {
			c.install(in)
		}
	}
	c.run(withoutInstalls(effs))
	return sent, recv, nil
}

func withoutInstalls(effs []cacheproto.Effect) []cacheproto.Effect {
	out := effs[:0:0]
	for _, e := range effs {
		if _, ok := e.(cacheproto.Install); !ok {
			out = append(out, e)
		}
	}
	return out
}

// reconciled follows start once br-int's reconcile has deleted the cache
// flows nobody desires: punts are served from now on, the watches are
// followed, and timers and anti-entropy run until ctx ends.
func (c *cache) reconciled(ctx context.Context, sent, recv *cacheWatch) {
	c.do(c.m.Reconciled)
	// Records adopted at start may use an address a peer dropped while
	// this agent was down (its watch saw no change): drain them now.
	for _, name := range c.a.peerNames() {
		if p, _, ok := c.a.peerByName(name); ok {
			c.keysGone(p)
		}
	}
	go c.follow(ctx, sent.ch, c.onSent)
	go c.follow(ctx, recv.ch, c.onRecv)
	go c.tick(ctx)
	go c.antiEntropyLoop(ctx)
	go c.rateLoop(ctx)
}

// dumpEgress reads br-int's EgressCache entries.
func (c *cache) dumpEgress(ctx context.Context) (map[cacheproto.Pair]cacheproto.EgressFlow, error) {
	stats, err := c.a.intSw.FlowStats(ctx, &openflow.FlowStatsRequest{Table: uint8(flows.EgressCache), OutPort: openflow.PortAny, OutGroup: openflow.GroupAny})
	if err != nil {
		return nil, fmt.Errorf("dump %s: %w", flows.EgressCache.Name(), err)
	}
	out := map[cacheproto.Pair]cacheproto.EgressFlow{}
	for _, st := range stats {
		if flows.CookieCategory(st.Cookie) != flows.CatCache {
			continue
		}
		// An entry whose key uses an address index this host no longer
		// has (underlay_ips changed across a restart) reads as keyless:
		// not adopted, removed by the start-up reconcile.
		peerIP, key := flows.CookieKey(c.a.host, st.Cookie)
		f := cacheproto.EgressFlow{Key: key, State: cacheproto.StatePending}
		if name, ok := c.a.peerNameByIP(peerIP); ok {
			f.Peer = name
		}
		tunnel, ethDst := setFields(st.Instructions)
		switch {
		case key.IsZero():
			f.State = cacheproto.StateFallback
		case !tunnel:
			f.State, f.NextHop = cacheproto.StateReady, ethDst
		}
		out[cacheproto.Pair{Src: matchIPv4(st.Match, openflow.FieldIPv4Src), Dst: matchIPv4(st.Match, openflow.FieldIPv4Dst)}] = f
	}
	return out, nil
}

// setFields reads an EgressCache entry's actions: whether it sets tun_dst
// (keyed or plain VXLAN, not a rewrite) and the eth_dst a rewrite sets
// (its next hop).
func setFields(ins []openflow.Instruction) (tunnel bool, ethDst net.HardwareAddr) {
	for _, in := range ins {
		aa, ok := in.(*openflow.ApplyActionsInst)
		if !ok {
			continue
		}
		for _, a := range aa.Actions {
			sf, ok := a.(*openflow.SetField)
			if !ok {
				continue
			}
			switch sf.Field {
			case openflow.FieldTunDst:
				tunnel = true
			case openflow.FieldEthDst:
				ethDst = net.HardwareAddr(slices.Clone(sf.Value))
			}
		}
	}
	return tunnel, ethDst
}

// ----------------------------------------------------------------------
// Following etcd.

// follow feeds a record stream to the machine: every event already queued
// goes in under one lock, so a burst costs one install.
func (c *cache) follow(ctx context.Context, ch <-chan keyalloc.Event, feed func(time.Time, keyalloc.Event) []cacheproto.Effect) {
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
		c.do(func(now time.Time) []cacheproto.Effect {
			var effs []cacheproto.Effect
			for _, e := range batch {
				effs = append(effs, feed(now, e)...)
			}
			return effs
		})
	}
}

func (c *cache) onSent(now time.Time, ev keyalloc.Event) []cacheproto.Effect {
	switch ev.Type {
	case keyalloc.EventPut:
		return c.m.SentRecord(now, ev.Value)
	case keyalloc.EventDelete:
		return c.m.SentRecordDeleted(now, ev.Value)
	}
	return nil
}

func (c *cache) onRecv(now time.Time, ev keyalloc.Event) []cacheproto.Effect {
	switch ev.Type {
	case keyalloc.EventPut:
		if !c.validRecv(ev.Value) {
			c.a.log.Debug("ignoring key record", "src_host", ev.Value.SrcHost, "src", ev.Value.Src, "dst", ev.Value.Dst, "key", ev.Value.Key)
			return nil
		}
		return c.m.RecvRecord(now, ev.Value)
	case keyalloc.EventDelete:
		return c.m.RecvRecordDeleted(now, ev.Value)
	}
	return nil
}

// validRecv checks a record towards this host against what this host
// knows: the sending peer, that the source address is that peer's, the
// destination container here, the key's DSCP in the set, its source one
// of the peer's registered key addresses and its destination one of this
// host's. A record that fails gets no Restore entry; its sender's pending
// timeout collects it.
func (c *cache) validRecv(r keyalloc.Record) bool {
	peer, _, ok := c.a.peerByName(r.SrcHost)
	holder, _, held := c.a.peerFor(r.Src)
	return ok && held && holder.Name == r.SrcHost && c.a.isLocal(r.Dst) && slices.Contains(c.rw.Keys, r.Key.DSCP) &&
		slices.Contains(peer.KeyAddrs(), r.Key.Src) && slices.Contains(c.a.host.KeyAddrs(), r.Key.Dst)
}

// keysGone takes keys shared with peer off the addresses its host record
// no longer lists (see cacheproto.Machine.KeysGone).
func (c *cache) keysGone(peer flows.Peer) {
	mine, theirs := c.a.host.KeyAddrs(), peer.KeyAddrs()
	c.do(func(now time.Time) []cacheproto.Effect {
		return c.m.KeysGone(now, peer.Name, func(k keyalloc.Key) bool {
			return (slices.Contains(mine, k.Src) && slices.Contains(theirs, k.Dst)) || (slices.Contains(theirs, k.Src) && slices.Contains(mine, k.Dst))
		})
	})
}

// ----------------------------------------------------------------------
// Timers and anti-entropy.

func (c *cache) tick(ctx context.Context) {
	every(ctx, 100*time.Millisecond, func() { c.do(c.m.Tick) })
}

// antiEntropyLoop compares records and flows both ways every
// antiEntropyEvery and after every reconnect of br-int.
func (c *cache) antiEntropyLoop(ctx context.Context) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	last, connects := time.Now(), c.a.intSw.Stats().Connects
	for {
		kicked := false
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-c.kickAE:
			kicked = true
		}
		n := c.a.intSw.Stats().Connects
		if !kicked && n == connects && time.Since(last) < antiEntropyEvery {
			continue
		}
		if err := c.antiEntropy(ctx); err != nil {
			c.a.log.Debug("cache anti-entropy skipped", "err", err)
			continue
		}
		last, connects = time.Now(), n
	}
}

// kickAntiEntropy asks for an anti-entropy run now (a container attached:
// records towards it may have lost their Restore entries while it was
// away).
func (c *cache) kickAntiEntropy() {
	select {
	case c.kickAE <- struct{}{}:
	default:
	}
}

// antiEntropy reads both sides and lets the machine repair differences.
func (c *cache) antiEntropy(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	c.mu.Lock()
	gen := c.m.Confirmed()
	c.mu.Unlock()
	flowsOn, err := c.dumpEgress(ctx)
	if err != nil {
		return err
	}
	egress := make(map[cacheproto.Pair]cacheproto.Key, len(flowsOn))
	for p, f := range flowsOn {
		egress[p] = f.Key
	}
	me := c.a.cfg.Node
	sent, rev1, err := c.alloc.ListAt(ctx, keyalloc.Filter{SrcHost: me})
	if err != nil {
		return err
	}
	recvAll, rev2, err := c.alloc.ListAt(ctx, keyalloc.Filter{DstHost: me})
	if err != nil {
		return err
	}
	var recv []keyalloc.Record
	for _, r := range recvAll {
		if c.validRecv(r) {
			recv = append(recv, r)
		}
	}
	c.do(func(now time.Time) []cacheproto.Effect {
		before := total(c.m.Count.Repairs)
		effs := c.m.AntiEntropy(now, gen, egress, sent, recv, min(rev1, rev2))
		if after := total(c.m.Count.Repairs); after != before {
			c.a.log.Info("cache anti-entropy repaired entries", "repairs", after-before, "totals", fmt.Sprint(c.m.Count.Repairs))
		}
		return effs
	})
	return nil
}

func total(m map[string]uint64) (n uint64) {
	for _, v := range m {
		n += v
	}
	return n
}

// ----------------------------------------------------------------------
// Events from br-int and the agent.

// onPunt handles a cache miss copied to the agent. It never blocks the
// controller's delivery goroutine for long: etcd work runs in effects.
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
	p := cacheproto.Pair{Src: src, Dst: dst}
	nh := c.cachedNextHop(peer.IP, regMAC)
	c.do(func(now time.Time) []cacheproto.Effect {
		var effs []cacheproto.Effect
		if c.a.probe.usable(peer.Name) {
			effs = c.m.Punt(now, p, peer.Name, nh)
		} else {
			// The fabric between us has not been seen to keep every
			// key's DSCP: no key, the pair stays on VXLAN.
			effs = c.m.PuntNoKey(now, p, peer.Name, "dscp_path")
		}
		if len(effs) > 0 {
			c.a.log.Debug("pair punted", "src", src, "dst", dst, "peer", peer.Name)
		}
		return effs
	})
}

// onFlowRemoved handles FLOW_REMOVED: packet counts of gone entries, and
// an EgressCache entry that idled out.
func (c *cache) onFlowRemoved(fr *openflow.FlowRemoved) {
	switch flows.CookieCategory(fr.Cookie) {
	case flows.CatCache:
		c.retired[0].Add(fr.PacketCount)
	case flows.CatRestore:
		c.retired[1].Add(fr.PacketCount)
		return
	default:
		return
	}
	if fr.Reason != openflow.FlowRemovedIdleTimeout && fr.Reason != openflow.FlowRemovedHardTimeout {
		return
	}
	c.a.metrics.expiries.WithLabelValues("egress").Inc()
	_, key := flows.CookieKey(c.a.host, fr.Cookie)
	p := cacheproto.Pair{Src: matchIPv4(fr.Match, openflow.FieldIPv4Src), Dst: matchIPv4(fr.Match, openflow.FieldIPv4Dst)}
	c.do(func(now time.Time) []cacheproto.Effect { return c.m.FlowRemoved(now, p, key) })
}

// invalidateEndpoint takes a detached container's pairs off their keys.
func (c *cache) invalidateEndpoint(_ context.Context, ip netip.Addr) {
	c.do(func(now time.Time) []cacheproto.Effect { return c.m.Detach(now, ip) })
}

// invalidatePeer ends every entry shared with a host that left the
// cluster; its records towards this host are released here.
func (c *cache) invalidatePeer(_ context.Context, name string, _ netip.Addr) {
	c.do(func(now time.Time) []cacheproto.Effect { return c.m.PeerGone(now, name) })
}

// moved takes pairs towards ip off their keys when ip is now another
// host's (a roaming address).
func (c *cache) moved(ip netip.Addr, host string) {
	c.do(func(now time.Time) []cacheproto.Effect { return c.m.Moved(now, ip, host) })
}

// ----------------------------------------------------------------------
// Helpers.

// peerByName returns a known peer host.
func (a *Agent) peerByName(name string) (flows.Peer, net.HardwareAddr, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	h, ok := a.peers[name]
	if !ok || !h.PodSubnet.IsValid() {
		return flows.Peer{}, nil, false
	}
	return a.peerOf(h), h.UnderlayMAC, true
}

// peerNames lists the known peer hosts.
func (a *Agent) peerNames() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return slices.Sorted(maps.Keys(a.peers))
}

// peerNameByIP returns the name of the peer host with key address ip
// (its underlay IP or one of its underlay_ips).
func (a *Agent) peerNameByIP(ip netip.Addr) (string, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	// As peerOf(h).KeyAddrs() holds ip, without building every peer's
	// view (which checks each extra address against every host) for
	// each flow a dump reads.
	for _, h := range a.peers {
		if ip == h.UnderlayIP || slices.Contains(h.UnderlayIPs, ip) && !a.addrClaimedBesides(h.Name, ip) {
			return h.Name, true
		}
	}
	return "", false
}

// peerOf is the flows' view of a peer host record. An extra key address
// another host also claims (this one, or a peer by its underlay IP or its
// underlay_ips) is left out on both sides: keyed packets to it could
// reach either, so neither gets keys on it. Called with a.mu held.
func (a *Agent) peerOf(h registry.Host) flows.Peer {
	p := flows.Peer{Name: h.Name, IP: h.UnderlayIP, Subnet: h.PodSubnet}
	for _, ip := range h.UnderlayIPs {
		if a.addrClaimedBesides(h.Name, ip) {
			continue
		}
		p.UnderlayIPs = append(p.UnderlayIPs, ip)
	}
	return p
}

// addrClaimedBesides reports whether a host other than name claims ip as
// a key address. Called with a.mu held.
func (a *Agent) addrClaimedBesides(name string, ip netip.Addr) bool {
	if name != a.cfg.Node && slices.Contains(a.host.KeyAddrs(), ip) {
		return true
	}
	for _, o := range a.peers {
		if o.Name != name && slices.Contains(o.KeyAddrs(), ip) {
			return true
		}
	}
	return false
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
		return a.peerOf(h), h.UnderlayMAC, true
	}
	for _, h := range a.peers {
		if h.PodSubnet.Contains(ip) {
			return a.peerOf(h), h.UnderlayMAC, true
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
	if link, err := netlink.LinkByName(c.a.cfg.Bridges.Physical); err == nil {
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

// entry is a pair's sender entry.
func (c *cache) entry(p cacheproto.Pair) (cacheproto.Send, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.m.Entry(p)
}

// stateOf names a pair's sender entry state for keyroutectl cache.
func (c *cache) stateOf(p cacheproto.Pair) string {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.m.Entry(p)
	if !ok {
		return "unknown"
	}
	if e.State == cacheproto.StateFallback {
		return "fallback (" + e.Reason + ")"
	}
	return e.State.String()
}

// recvState returns the pair a Restore entry serves and its state.
func (c *cache) recvState(k cacheproto.RecvKey) (keyalloc.Record, string, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	r, ready, ok := c.m.Restoring(k)
	if ready {
		return r, "ready", ok
	}
	return r, "pending", ok
}

// status sums up the key protocol for keyroutectl status.
func (c *cache) status() api.CacheStatus {
	c.mu.Lock()
	defer c.mu.Unlock()
	send, recv := c.m.Entries()
	st := api.CacheStatus{Synced: c.m.Synced(), States: map[string]int{}, Restores: len(recv), Released: c.m.Count.Released,
		Repairs: maps.Clone(c.m.Count.Repairs), Fallbacks: maps.Clone(c.m.Count.Fallbacks)}
	for _, e := range send {
		st.States[e.State.String()]++
	}
	return st
}

// recordState returns the state of this host's entry or hold for a record.
func (c *cache) recordState(rev int64) (cacheproto.State, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.m.RecordState(rev)
}

// holds returns the keys this host holds as sender for pairs that left
// them (draining, quarantined, releasing): they have no flow.
func (c *cache) holds() []cacheproto.Send {
	c.mu.Lock()
	defer c.mu.Unlock()
	send, _ := c.m.Entries()
	var out []cacheproto.Send
	for _, e := range send {
		if e.State >= cacheproto.StateDraining {
			out = append(out, e)
		}
	}
	return out
}
