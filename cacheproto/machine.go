// Package cacheproto is rewrite mode's key protocol as a pure state
// machine: one Machine per agent, fed events (punts, etcd record changes,
// install results, flow removals, timers), answering with effects
// (allocate, install, mark ready, release). It does no I/O; agent/cache.go
// wires effects to etcd and OVS, and the simulator in this package's tests
// drives it through random schedules of faults.
//
// A key is the triple (source address, destination address, DSCP)
// (keyalloc.Key); every rule below speaks of the whole triple.
//
// The invariant (docs/DESIGN.md "Cache protocol v2"):
//
//	If receiver R restores key k from peer P to pair X, then P's OVS has no
//	flow that sends any pair other than X with key k.
//
// Packets already on the fabric are covered by a quarantine: a sender
// frees a key only Quarantine after the removal of its last flow that
// carried it was confirmed, so every packet sent with the old key has
// arrived before any receiver can learn a new pair for it.
//
// The argument, in four rules the code below keeps:
//
//  1. Only the sender frees a key (deletes its record), and only from
//     StateReleasing, reached through a confirmed removal of the pair's
//     flow (StateDraining) and the quarantine (StateQuarantined).
//  2. The sender never allocates a key it still holds in any state for
//     the same peer (Allocate.Exclude), so its OVS never has two pairs'
//     flows for one (peer, key), even if a record vanished behind its back.
//  3. A receiver restores the record with the highest create revision per
//     (peer, key), never one older than a deletion it has seen, and marks a
//     record ready only after the install of its Restore entry was
//     confirmed on a connected switch (Installed).
//  4. The sender rewrites with a key only after its record turned ready,
//     which by 3 means the receiver's Restore names the same pair.
package cacheproto

import (
	"errors"
	"maps"
	"net"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/keyroute/keyroute/keyalloc"
)

// Pair is a container pair: Src on the sending host, Dst on the receiving one.
type Pair struct{ Src, Dst netip.Addr }

// Key is a cache key: (source address, destination address, DSCP).
type Key = keyalloc.Key

// RecvKey names a Restore entry: the sending peer host and the key.
type RecvKey struct {
	Peer string
	Key  Key
}

// State is a sender entry's place in the key lifecycle.
type State int

// Sender states. Allocating, Pending, Ready and Fallback are a pair's
// current entry; Draining, Quarantined and Releasing are keys the sender
// still holds after the pair left them ("holds").
const (
	StateAllocating  State = iota // Allocate in flight; no flow
	StatePending                  // record created; keyed VXLAN while the receiver installs
	StateReady                    // record ready; the pair is rewritten with its key
	StateFallback                 // no key: plain VXLAN without punting, until the flow idles out
	StateDraining                 // flow removed from the desired set; waiting for confirmation
	StateQuarantined              // removal confirmed; waiting for in-flight packets
	StateReleasing                // deleting the record (or waiting to retry)
)

var stateNames = [...]string{"allocating", "pending", "ready", "fallback", "draining", "quarantined", "releasing"}

func (s State) String() string {
	if int(s) < len(stateNames) {
		return stateNames[s]
	}
	return "unknown"
}

// Config holds the protocol's timing. None of it carries safety except
// Quarantine, which must exceed the longest a packet can spend between
// the sender's OVS and the receiver's (queues, fabric).
type Config struct {
	Quarantine     time.Duration // after a confirmed removal, before the record goes
	PendingTimeout time.Duration // a record not ready by then is released; the pair falls back
	Retry          time.Duration // after a failed install, mark or release
	PuntGrace      time.Duration // a punt for an entry installed longer ago means its flow is gone
	// Keys is the size of the key set, DSCPs (0: unknown). With it,
	// anti-entropy lets pairs out of keys try again when a key towards
	// their peer is free but its freeing went unseen (a lost watch event).
	Keys int
	// AddrPairs is the number of (source, destination) key address pairs
	// towards a peer (nil: 1): the peer has Keys × AddrPairs keys.
	AddrPairs func(peer string) int
	// ValidKey says whether k is a key towards peer now: its source one
	// of this host's key addresses, its destination one of the peer's
	// (nil: every key is). A pair's existing record read back by
	// Allocate may use an address that is gone.
	ValidKey func(peer string, k Key) bool
	// Eviction lets the busiest pairs have the keys (Rates).
	Eviction Eviction
}

// Eviction is the traffic policy for a peer whose keys are all taken: a
// pair out of keys that carries more than Factor times the bytes of the
// quietest keyed pair towards the same peer takes its place. The loser
// drains like an idle pair (its key is freed only through rules 1 and 2,
// so a swap is as safe as an expiry) and goes to plain VXLAN at once; the
// winner is first in line for the freed key. Factor and Hold are the
// hysteresis: a swap needs a clear difference, and a key stays with its
// pair at least Hold after it turned ready, so keys do not flap.
type Eviction struct {
	On       bool
	Factor   float64       // winner's rate must exceed Factor × loser's
	MinRate  float64       // bytes/s a winner carries at least
	Hold     time.Duration // a ready pair keeps its key at least this long
	MaxSwaps int           // swaps per peer per Rates
}

// DefaultEviction is the agents' traffic policy.
func DefaultEviction() Eviction {
	return Eviction{On: true, Factor: 2, MinRate: 500, Hold: 5 * time.Second, MaxSwaps: 8}
}

// Fallback reasons the machine gives itself; others come from the agent
// (PuntNoKey).
const (
	ReasonExhausted = "keys_exhausted" // every key towards the peer is taken
	ReasonEvicted   = "evicted"        // a busier pair took the key (Eviction)
)

// DefaultConfig is what agents run with.
func DefaultConfig() Config {
	return Config{Quarantine: time.Second, PendingTimeout: 5 * time.Second, Retry: 500 * time.Millisecond, PuntGrace: time.Second}
}

// Send is a sender entry: a pair's current entry or a key it still holds.
type Send struct {
	Pair     Pair
	Peer     string
	State    State
	Key      Key             // zero while allocating, for fallback, or for a hold of a flow without record
	Rec      keyalloc.Record // the allocation; zero CreateRevision if none
	NextHop  net.HardwareAddr
	Reason   string    // why a fallback has no key, or why a hold was taken
	Punted   time.Time // first punt, for time to fast path
	Since    time.Time // entered State
	Rate     float64   // bytes/s at the last Rates
	gen      uint64    // desired generation that added (Pending/Ready) or removed (Draining) its flow
	afterRC  bool      // Draining: removed only by the start-up reconcile
	freed    uint64    // Allocating: keys freed towards Peer when the Allocate was issued
	retryAt  time.Time // Releasing: when to try again; zero while a release is in flight
	deferred bool      // Allocating: the Allocate waits for serveFrom (Tick issues it)
}

// Recv is a receiver entry: the record a Restore entry serves.
type Recv struct {
	Rec     keyalloc.Record
	gen     uint64 // desired generation that installs it
	marked  bool   // marked ready (or found ready)
	marking bool   // MarkReady in flight
	retryAt time.Time
}

// Counters are what the machine counted since it started.
type Counters struct {
	PuntsUnsynced, PuntsBusy, PuntsStale uint64 // dropped punts: before sync; pair holding a key; flow known gone
	PuntsDeferred                        uint64 // punts whose allocation waited for serveFrom
	Fallbacks                            map[string]uint64
	Repairs                              map[string]uint64 // anti-entropy and start-up repairs, by kind
	Released, ReleaseErrors              uint64
	Retried                              uint64 // keys_exhausted fallbacks dropped to try again: a key towards their peer was freed
	Swaps                                uint64 // pairs that lost their key to a busier one (Eviction)
	StaleFlowRemoved                     uint64
}

// Machine is one agent's protocol state. Not safe for concurrent use: the
// caller serialises events.
type Machine struct {
	cfg    Config
	now    time.Time
	synced bool
	// serveFrom is a quarantine after Start read the switch: a flow that
	// idled out unseen while the agent was down may have packets in
	// flight until then, and its record may be gone (deleted by someone
	// else), so no key is handed out before.
	serveFrom time.Time

	send  map[Pair]*Send // a pair's current entry
	holds []*Send        // keys held after their pair left them
	recv  map[RecvKey]*Recv
	tomb  map[RecvKey]int64 // highest create revision seen deleted per (peer, key)
	early map[Pair]int64    // ready record seen while its allocation was in flight
	freed map[string]uint64 // keys freed so far, by peer
	// released remembers the create revisions of records released lately,
	// so that AntiEntropy does not take one read before its release for
	// an orphan.
	released    map[int64]bool
	releasedLog []int64
	// reserved lists, per peer, the pairs a swap made room for (Eviction):
	// a freed key is theirs until they allocated or the reservation
	// lapsed, so that no quieter pair takes it first.
	reserved map[string][]reservation

	gen        uint64 // bumped on every change of the desired flows
	confirmed  uint64 // highest generation confirmed installed
	installing bool
	installAt  time.Time // retry after a failed install

	Count Counters
}

// New returns a machine that serves no punt before Start and Reconciled.
func New(cfg Config, now time.Time) *Machine {
	return &Machine{cfg: cfg, now: now, send: map[Pair]*Send{}, recv: map[RecvKey]*Recv{}, tomb: map[RecvKey]int64{},
		early: map[Pair]int64{}, freed: map[string]uint64{}, released: map[int64]bool{}, reserved: map[string][]reservation{}, Count: Counters{Fallbacks: map[string]uint64{}, Repairs: map[string]uint64{}}}
}

// Effects. The caller runs each and feeds its result back as an event.
type (
	Effect interface{ isEffect() }
	// Allocate asks etcd for a key for Pair towards Peer, never one of
	// Exclude. Result: Allocated.
	Allocate struct {
		Pair    Pair
		Peer    string
		Exclude []Key
	}
	// Install puts the desired flows of generation Gen on the switch and
	// confirms them (controller.SetDesiredConfirmed). Result: Installed.
	Install struct {
		Gen     uint64
		Send    []FlowSend
		Restore []FlowRestore
	}
	// MarkReady marks Rec ready. Result: Marked.
	MarkReady struct{ Rec keyalloc.Record }
	// Release deletes Rec (compare-and-delete on its create revision).
	// Result: Released.
	Release struct{ Rec keyalloc.Record }
	// FastPath tells that Pair's entry turned ready (metrics, logs); it
	// asks for no result.
	FastPath struct {
		Pair   Pair
		Peer   string
		Key    Key
		Punted time.Time
	}
)

func (FastPath) isEffect()  {}
func (Allocate) isEffect()  {}
func (Install) isEffect()   {}
func (MarkReady) isEffect() {}
func (Release) isEffect()   {}

// FlowSend is one desired EgressCache entry.
type FlowSend struct {
	Pair    Pair
	Peer    string
	State   State // StatePending, StateReady or StateFallback
	Key     Key
	NextHop net.HardwareAddr
}

// FlowRestore is one desired Restore entry.
type FlowRestore struct {
	Peer     string
	Key      Key
	Src, Dst netip.Addr
}

// Flows returns the desired cache flows now, sorted.
func (m *Machine) Flows() ([]FlowSend, []FlowRestore) {
	var fs []FlowSend
	for _, e := range m.send {
		if e.State == StatePending || e.State == StateReady || e.State == StateFallback {
			fs = append(fs, FlowSend{Pair: e.Pair, Peer: e.Peer, State: e.State, Key: e.Key, NextHop: e.NextHop})
		}
	}
	slices.SortFunc(fs, func(a, b FlowSend) int { return comparePair(a.Pair, b.Pair) })
	rs := make([]FlowRestore, 0, len(m.recv))
	for k, e := range m.recv {
		rs = append(rs, FlowRestore{Peer: k.Peer, Key: k.Key, Src: e.Rec.Src, Dst: e.Rec.Dst})
	}
	slices.SortFunc(rs, func(a, b FlowRestore) int { return compareRecvKey(RecvKey{a.Peer, a.Key}, RecvKey{b.Peer, b.Key}) })
	return fs, rs
}

func isExhausted(err error) bool { return errors.Is(err, keyalloc.ErrKeysExhausted) }

func comparePair(a, b Pair) int {
	if c := a.Src.Compare(b.Src); c != 0 {
		return c
	}
	return a.Dst.Compare(b.Dst)
}

// changed records a change of the desired flows and returns its generation.
func (m *Machine) changed() uint64 {
	m.gen++
	return m.gen
}

// Confirmed returns the highest generation of desired flows confirmed on
// the switch (for AntiEntropy).
func (m *Machine) Confirmed() uint64 { return m.confirmed }

// Synced reports whether the machine serves punts.
func (m *Machine) Synced() bool { return m.synced }

// Entries returns copies of the sender entries and holds, and of the
// receiver entries, for status output.
func (m *Machine) Entries() (send []Send, recv []Recv) {
	for _, e := range m.send {
		send = append(send, *e)
	}
	for _, h := range m.holds {
		send = append(send, *h)
	}
	for _, r := range m.recv {
		recv = append(recv, *r)
	}
	return send, recv
}

// RecordState returns the sender state of the entry or hold that owns the
// record with create revision rev.
func (m *Machine) RecordState(rev int64) (State, bool) {
	for _, e := range m.send {
		if e.Rec.CreateRevision == rev && rev != 0 {
			return e.State, true
		}
	}
	for _, h := range m.holds {
		if h.Rec.CreateRevision == rev && rev != 0 {
			return h.State, true
		}
	}
	return 0, false
}

// Entry returns a pair's current sender entry.
func (m *Machine) Entry(p Pair) (Send, bool) {
	e, ok := m.send[p]
	if !ok {
		return Send{}, false
	}
	return *e, true
}

// Restoring returns the record the Restore entry for k serves, and
// whether it has been marked ready.
func (m *Machine) Restoring(k RecvKey) (rec keyalloc.Record, ready, ok bool) {
	e, ok := m.recv[k]
	if !ok {
		return keyalloc.Record{}, false, false
	}
	return e.Rec, e.marked, true
}

// ----------------------------------------------------------------------
// Start-up.

// EgressFlow is a sender entry found on the switch at start-up.
type EgressFlow struct {
	Peer    string // "" if the flow's peer is unknown
	State   State  // StatePending, StateReady or StateFallback
	Key     Key
	NextHop net.HardwareAddr // a ready entry's
}

// Start loads what survived a restart: this host's records as sender
// (sent) and towards it (recv, already checked by the caller), and the
// EgressCache entries on the switch. A record whose entry is on the switch
// in the matching state is adopted; any other record is released through
// the quarantine; a flow without its record is removed by the start-up
// reconcile and its key held until the quarantine after that. Punts are
// served from Reconciled on.
func (m *Machine) Start(now time.Time, sent, recv []keyalloc.Record, egress map[Pair]EgressFlow, local func(netip.Addr) bool) []Effect {
	m.now = now
	m.serveFrom = now.Add(m.cfg.Quarantine)
	gen := m.changed()
	adopted := map[Pair]bool{}
	for _, r := range sent {
		p := Pair{r.Src, r.Dst}
		f, onSwitch := egress[p]
		st := StatePending
		if r.State == keyalloc.StateReady {
			st = StateReady
		}
		if onSwitch && f.Key == r.Key && f.State == st && f.Peer == r.DstHost && (st != StateReady || len(f.NextHop) == 6) &&
			local(r.Src) && m.send[p] == nil {
			m.send[p] = &Send{Pair: p, Peer: r.DstHost, State: st, Key: r.Key, Rec: r, NextHop: f.NextHop, Punted: now, Since: now, gen: gen}
			adopted[p] = true
			m.Count.Repairs["adopted"]++
			continue
		}
		// Its flow, if any, is deleted by the reconcile after Start.
		m.holds = append(m.holds, &Send{Pair: p, Peer: r.DstHost, State: StateDraining, Key: r.Key, Rec: r, Since: now, afterRC: true, Reason: "restart"})
		m.Count.Repairs["record_without_flow"]++
	}
	ps := make([]Pair, 0, len(egress))
	for p := range egress {
		ps = append(ps, p)
	}
	slices.SortFunc(ps, comparePair)
	for _, p := range ps {
		f := egress[p]
		if adopted[p] {
			continue
		}
		// Not desired: the reconcile after Start deletes it.
		if f.State != StateFallback && !f.Key.IsZero() {
			m.holds = append(m.holds, &Send{Pair: p, Peer: f.Peer, State: StateDraining, Key: f.Key, Since: now, afterRC: true, Reason: "restart"})
			m.Count.Repairs["flow_without_record"]++
		}
	}
	for _, r := range recv {
		m.recvPut(r)
	}
	return m.flush()
}

// Reconciled says the start-up reconcile has deleted every flow of the
// cache owner that the machine does not desire: held keys of such flows
// start their quarantine, and punts are served from now on.
func (m *Machine) Reconciled(now time.Time) []Effect {
	m.now = now
	for _, h := range m.holds {
		if h.State == StateDraining && h.afterRC {
			h.State, h.Since, h.afterRC = StateQuarantined, now, false
		}
	}
	m.synced = true
	return m.flush()
}

// ----------------------------------------------------------------------
// Sender events.

// Punt is a cache miss of Pair towards Peer's container. NextHop is the
// underlay MAC for the rewritten packets (nil: none known, the pair falls
// back).
func (m *Machine) Punt(now time.Time, p Pair, peer string, nextHop net.HardwareAddr) []Effect {
	return m.punt(now, p, peer, nextHop, "no_next_hop")
}

// PuntNoKey is a cache miss of a pair that must not have a key now for a
// reason the agent knows (e.g. "dscp_path": the fabric between the two
// hosts does not keep DSCPs): the pair gets a fallback entry with reason,
// as Punt gives one without a next hop.
func (m *Machine) PuntNoKey(now time.Time, p Pair, peer, reason string) []Effect {
	return m.punt(now, p, peer, nil, reason)
}

func (m *Machine) punt(now time.Time, p Pair, peer string, nextHop net.HardwareAddr, noKey string) []Effect {
	m.now = now
	if !m.synced {
		m.Count.PuntsUnsynced++
		return nil
	}
	if e, ok := m.send[p]; ok {
		switch {
		case e.State == StateAllocating:
			m.Count.PuntsBusy++
			return nil
		case e.gen <= m.confirmed && now.Sub(e.Since) >= m.cfg.PuntGrace:
			// The entry was installed a while ago, yet the pair misses:
			// its flow is gone (a FLOW_REMOVED lost or not yet read).
			m.Count.Repairs["punt_after_install"]++
			m.flowGone(e)
		default:
			m.Count.PuntsStale++
			return nil
		}
	}
	if m.holding(p) {
		m.Count.PuntsBusy++
		return m.flush()
	}
	if nextHop == nil {
		m.fallback(p, peer, noKey, now)
		return m.flush()
	}
	e := &Send{Pair: p, Peer: peer, State: StateAllocating, NextHop: nextHop, Punted: now, Since: now, freed: m.freed[peer]}
	m.send[p] = e
	if now.Before(m.serveFrom) {
		// Too soon after start-up to hand out a key (see serveFrom): the
		// allocation waits for the Tick that passes it.
		e.deferred = true
		m.Count.PuntsDeferred++
		return m.flush()
	}
	return append(m.flush(), Allocate{Pair: p, Peer: peer, Exclude: m.heldKeys(peer)})
}

// holding reports whether a hold of the pair still waits to be released:
// a new entry for the pair waits until it is gone, so that the pair's
// records are one at a time.
func (m *Machine) holding(p Pair) bool {
	for _, h := range m.holds {
		if h.Pair == p && h.Rec.CreateRevision != 0 {
			return true
		}
	}
	return false
}

// heldKeys lists the keys towards peer that the sender holds in any state.
func (m *Machine) heldKeys(peer string) []Key {
	var ks []Key
	add := func(e *Send) {
		if e.Peer == peer && !e.Key.IsZero() && !slices.Contains(ks, e.Key) {
			ks = append(ks, e.Key)
		}
	}
	for _, e := range m.send {
		add(e)
	}
	for _, h := range m.holds {
		add(h)
	}
	slices.SortFunc(ks, Key.Compare)
	return ks
}

func (m *Machine) fallback(p Pair, peer, reason string, now time.Time) {
	m.send[p] = &Send{Pair: p, Peer: peer, State: StateFallback, Reason: reason, Punted: now, Since: now, gen: m.changed()}
	m.Count.Fallbacks[reason]++
}

// Allocated is the result of Allocate: the record, or err (ErrKeysExhausted
// or an etcd failure). A record allocated for a pair that no longer waits
// for it (detached meanwhile) is released.
func (m *Machine) Allocated(now time.Time, p Pair, rec keyalloc.Record, err error) []Effect {
	m.now = now
	e, ok := m.send[p]
	if !ok || e.State != StateAllocating {
		if err == nil {
			m.holds = append(m.holds, &Send{Pair: p, Peer: rec.DstHost, State: StateQuarantined, Key: rec.Key, Rec: rec, Since: now, Reason: "abandoned"})
		}
		return m.flush()
	}
	if err != nil {
		reason := "etcd"
		if isExhausted(err) {
			reason = ReasonExhausted
			if e.freed != m.freed[e.Peer] {
				// A key towards the peer was freed while this allocation
				// ran, excluding it: try again rather than fall back.
				e.freed = m.freed[e.Peer]
				return append(m.flush(), Allocate{Pair: p, Peer: e.Peer, Exclude: m.heldKeys(e.Peer)})
			}
		}
		delete(m.send, p)
		m.fallback(p, e.Peer, reason, now)
		return m.flush()
	}
	if m.cfg.ValidKey != nil && !m.cfg.ValidKey(e.Peer, rec.Key) {
		// The pair's record from before an address went (its Allocated
		// was lost, so nothing held it): give it up like a conflict; the
		// pair tries again after its fallback.
		m.holds = append(m.holds, &Send{Pair: p, Peer: e.Peer, State: StateQuarantined, Key: rec.Key, Rec: rec, Since: now, Reason: "address_gone"})
		delete(m.send, p)
		m.fallback(p, e.Peer, "address_gone", now)
		return m.flush()
	}
	if slices.Contains(m.heldKeys(e.Peer), rec.Key) {
		// Exclude was not honoured (a record read back for the pair may
		// carry any key): never let two entries share a key.
		m.holds = append(m.holds, &Send{Pair: p, Peer: e.Peer, State: StateQuarantined, Key: rec.Key, Rec: rec, Since: now, Reason: "key_conflict"})
		delete(m.send, p)
		m.fallback(p, e.Peer, "key_conflict", now)
		return m.flush()
	}
	e.Rec, e.Key, e.Since = rec, rec.Key, now
	e.State = StatePending
	if rec.State == keyalloc.StateReady || m.early[p] == rec.CreateRevision {
		e.State = StateReady
	}
	delete(m.early, p)
	e.gen = m.changed()
	effs := m.flush()
	if e.State == StateReady {
		effs = append(effs, FastPath{Pair: p, Peer: e.Peer, Key: e.Key, Punted: e.Punted})
	}
	return effs
}

// SentRecord is a change of one of this host's records as sender (the
// keys/<me>/ watch, or a re-read): ready lets the pending entry rewrite.
func (m *Machine) SentRecord(now time.Time, rec keyalloc.Record) []Effect {
	m.now = now
	p := Pair{rec.Src, rec.Dst}
	e, ok := m.send[p]
	switch {
	case ok && e.State == StateAllocating && rec.State == keyalloc.StateReady:
		m.early[p] = rec.CreateRevision
	case ok && e.State == StatePending && e.Rec.CreateRevision == rec.CreateRevision && rec.State == keyalloc.StateReady:
		e.Rec, e.State, e.Since, e.gen = rec, StateReady, now, m.changed()
		return append(m.flush(), FastPath{Pair: p, Peer: e.Peer, Key: e.Key, Punted: e.Punted})
	}
	return m.flush()
}

// SentRecordDeleted is the deletion of one of this host's records. The
// sender's own release ends there; a record deleted by anyone else takes
// the pair off its key at once (the receiver no longer restores it).
func (m *Machine) SentRecordDeleted(now time.Time, rec keyalloc.Record) []Effect {
	m.now = now
	if m.released[rec.CreateRevision] {
		return m.flush() // our own release, whose result came first: the key was freed there
	}
	// A key left etcd, whoever deleted it; pairs out of keys try again
	// (those whose key this still is here find it held and fall back).
	m.keyFreed(rec.DstHost)
	for i, h := range m.holds {
		if h.Rec.CreateRevision == rec.CreateRevision && h.Rec.CreateRevision != 0 {
			if h.State == StateReleasing {
				m.holds = slices.Delete(m.holds, i, i+1)
				m.releasedRec(rec.CreateRevision)
			} else {
				// Still draining or quarantined: keep the key until then,
				// with no record left to release.
				h.Rec = keyalloc.Record{}
			}
			return m.flush()
		}
	}
	p := Pair{rec.Src, rec.Dst}
	if e, ok := m.send[p]; ok && e.Rec.CreateRevision == rec.CreateRevision && (e.State == StatePending || e.State == StateReady) {
		m.Count.Repairs["record_deleted_elsewhere"]++
		m.drain(e, "record_deleted")
		m.holds[len(m.holds)-1].Rec = keyalloc.Record{}
	}
	return m.flush()
}

// FlowRemoved is an EgressCache entry of Pair with Key that OVS removed
// (idle timeout). One for an entry the machine no longer has in that form
// is stale and ignored.
func (m *Machine) FlowRemoved(now time.Time, p Pair, key Key) []Effect {
	m.now = now
	e, ok := m.send[p]
	if !ok || e.Key != key || e.State == StateAllocating {
		m.Count.StaleFlowRemoved++
		return nil
	}
	m.flowGone(e)
	return m.flush()
}

// flowGone handles a pair whose flow left OVS by itself.
func (m *Machine) flowGone(e *Send) {
	if e.State == StateFallback {
		delete(m.send, e.Pair)
		m.changed()
		return
	}
	m.drain(e, "idle")
}

// drain takes a keyed entry off the switch: its flow leaves the desired
// set now, its key is held until that removal is confirmed, the
// quarantine has passed and the record is released.
func (m *Machine) drain(e *Send, reason string) {
	delete(m.send, e.Pair)
	h := *e
	h.State, h.Since, h.Reason, h.gen, h.NextHop = StateDraining, m.now, reason, m.changed(), nil
	m.holds = append(m.holds, &h)
}

// Detach is a local container that left: its pairs as sender drain.
// Restore entries towards it stay until their senders release them or
// anti-entropy finds their record no longer checks (the caller leaves it
// out); either way they only deliver to an address that has no port now.
func (m *Machine) Detach(now time.Time, ip netip.Addr) []Effect {
	m.now = now
	return m.dropSend(func(e *Send) bool { return e.Pair.Src == ip }, "detached")
}

// Moved is a remote address now held by another host: pairs towards it
// through any other peer drain.
func (m *Machine) Moved(now time.Time, ip netip.Addr, peer string) []Effect {
	m.now = now
	return m.dropSend(func(e *Send) bool { return e.Pair.Dst == ip && e.Peer != peer }, "moved")
}

func (m *Machine) dropSend(sel func(*Send) bool, reason string) []Effect {
	for _, e := range m.sortedSend() {
		if !sel(e) {
			continue
		}
		switch e.State {
		case StateAllocating:
			delete(m.send, e.Pair) // Allocated releases what it gets
		case StateFallback:
			delete(m.send, e.Pair)
			m.changed()
		default:
			m.drain(e, reason)
		}
	}
	return m.flush()
}

// PathLost is a peer whose path no longer keeps DSCPs (the agent's probe
// saw a key re-marked): every keyed pair towards it drains, since a
// re-marked key could be restored as another pair's; the pairs punt again
// and fall back with the reason the agent gives.
func (m *Machine) PathLost(now time.Time, peer string) []Effect {
	m.now = now
	return m.dropSend(func(e *Send) bool { return e.Peer == peer && e.State != StateFallback }, "dscp_path")
}

// PathOK is a peer whose path keeps DSCPs again: its pairs on a fallback
// for reason leave it, so that their next packet punts and gets a key.
func (m *Machine) PathOK(now time.Time, peer, reason string) []Effect {
	m.now = now
	return m.dropSend(func(e *Send) bool { return e.Peer == peer && e.State == StateFallback && e.Reason == reason }, "")
}

// KeysGone is a change of key addresses between this host and peer (the
// peer's host record lost one): keyed pairs towards peer whose key fails
// valid drain like idle ones (their packets would go to an address
// nobody restores; the key is freed through rules 1 and 2) and punt again
// for a key on the addresses left; Restore entries from peer whose key
// fails valid go (dropping a Restore entry can only drop packets).
func (m *Machine) KeysGone(now time.Time, peer string, valid func(Key) bool) []Effect {
	m.now = now
	effs := m.dropSend(func(e *Send) bool {
		return e.Peer == peer && e.State != StateFallback && !e.Key.IsZero() && !valid(e.Key)
	}, "address_gone")
	for _, k := range m.recvKeys() {
		if k.Peer == peer && !valid(k.Key) {
			delete(m.recv, k)
			m.changed()
		}
	}
	return append(effs, m.flush()...)
}

// PeerGone is a host that left the cluster (its membership ended): its
// pairs drain on this side, and its records towards this host are
// released here, since their sender cannot.
func (m *Machine) PeerGone(now time.Time, peer string) []Effect {
	m.now = now
	effs := m.dropSend(func(e *Send) bool { return e.Peer == peer }, "peer_gone")
	for _, k := range m.recvKeys() {
		if r := m.recv[k]; k.Peer == peer {
			delete(m.recv, k)
			m.tombstone(k, r.Rec.CreateRevision)
			m.changed()
			effs = append(effs, Release{Rec: r.Rec})
		}
	}
	return append(effs, m.flush()...)
}

// Released is the result of Release. Success (or a record already gone)
// ends the hold; a failure is retried after cfg.Retry.
func (m *Machine) Released(now time.Time, rec keyalloc.Record, err error) []Effect {
	m.now = now
	for i, h := range m.holds {
		if h.Rec.CreateRevision != rec.CreateRevision || h.State != StateReleasing {
			continue
		}
		if err != nil {
			m.Count.ReleaseErrors++
			h.retryAt = now.Add(m.cfg.Retry)
			break
		}
		m.holds = slices.Delete(m.holds, i, i+1)
		m.releasedRec(rec.CreateRevision)
		m.keyFreed(rec.DstHost)
		break
	}
	return m.flush()
}

// keyFreed is a key towards peer that the sender no longer holds. A pair
// that fell back because the keys were exhausted has a fallback entry
// that stops its punts until it idles out — never, while it keeps
// sending — so every such entry towards peer is dropped: the pair's next
// packet takes VXLAN and punts, and it bootstraps again (or falls back
// again if another pair took the key first); an allocation in flight
// that comes back exhausted is tried again (Allocated). Dropping a
// fallback entry never misdelivers: without it the pair takes VXLAN.
//
// With Eviction, a pair a swap made room for goes first: while one waits
// towards peer, the freed key is its turn alone.
func (m *Machine) keyFreed(peer string) {
	m.freed[peer]++
	if m.keyFreedReserved(peer) {
		return
	}
	for _, e := range m.sortedSend() {
		if e.State == StateFallback && e.Reason == ReasonExhausted && e.Peer == peer {
			delete(m.send, e.Pair)
			m.changed()
			m.Count.Retried++
		}
	}
}

// reservation is a pair a swap made room for.
type reservation struct {
	pair    Pair
	until   time.Time
	dropped bool // its fallback entry was dropped: it punts for the key
}

// keyFreedReserved gives a freed key towards peer to a reserved pair, and
// reports whether a reservation is still open (then nobody else gets it).
// A reservation ends when its pair allocates (it has an entry that is not
// a fallback one) or lapses (PendingTimeout, e.g. the pair went quiet).
func (m *Machine) keyFreedReserved(peer string) bool {
	rs := m.reserved[peer][:0]
	for _, r := range m.reserved[peer] {
		e, ok := m.send[r.pair]
		if m.now.After(r.until) || ok && e.State != StateFallback || !ok && !r.dropped {
			continue
		}
		rs = append(rs, r)
	}
	if len(rs) == 0 {
		delete(m.reserved, peer)
		return false
	}
	m.reserved[peer] = rs
	for i := range rs {
		if e, ok := m.send[rs[i].pair]; ok && !rs[i].dropped && e.State == StateFallback {
			delete(m.send, rs[i].pair)
			m.changed()
			m.Count.Retried++
			rs[i].dropped = true
			break
		}
	}
	return true
}

func (m *Machine) isReserved(p Pair, peer string) bool {
	return slices.ContainsFunc(m.reserved[peer], func(r reservation) bool { return r.pair == p && !m.now.After(r.until) })
}

// Rates is each pair's traffic in bytes/s since the last Rates, from its
// EgressCache entry's counters (a keyed or a fallback entry alike). With
// Eviction on, it is also when keys change hands.
func (m *Machine) Rates(now time.Time, rates map[Pair]float64) []Effect {
	m.now = now
	for p, r := range rates {
		if e, ok := m.send[p]; ok {
			e.Rate = r
		}
	}
	ev := m.cfg.Eviction
	if !ev.On || !m.synced || now.Before(m.serveFrom) {
		return m.flush()
	}
	type side struct{ winners, losers []*Send }
	peers := map[string]*side{}
	at := func(peer string) *side {
		if peers[peer] == nil {
			peers[peer] = &side{}
		}
		return peers[peer]
	}
	for _, e := range m.sortedSend() {
		switch {
		case e.State == StateFallback && e.Reason == ReasonExhausted && e.Rate >= ev.MinRate && !m.isReserved(e.Pair, e.Peer):
			at(e.Peer).winners = append(at(e.Peer).winners, e)
		case e.State == StateReady && now.Sub(e.Since) >= ev.Hold:
			at(e.Peer).losers = append(at(e.Peer).losers, e)
		}
	}
	for _, peer := range slices.Sorted(maps.Keys(peers)) {
		sd := peers[peer]
		// Busiest winners against quietest losers; ties in pair order, so
		// a schedule replays the same.
		slices.SortStableFunc(sd.winners, func(a, b *Send) int { return cmpRate(b.Rate, a.Rate) })
		slices.SortStableFunc(sd.losers, func(a, b *Send) int { return cmpRate(a.Rate, b.Rate) })
		for i := 0; i < len(sd.winners) && i < len(sd.losers) && i < ev.MaxSwaps; i++ {
			w, l := sd.winners[i], sd.losers[i]
			if w.Rate <= ev.Factor*l.Rate {
				break
			}
			m.drain(l, ReasonEvicted)
			m.fallback(l.Pair, l.Peer, ReasonEvicted, now)
			m.send[l.Pair].Rate = l.Rate
			m.reserved[peer] = append(m.reserved[peer], reservation{pair: w.Pair, until: now.Add(m.cfg.PendingTimeout)})
			m.Count.Swaps++
		}
	}
	return m.flush()
}

func cmpRate(a, b float64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// releasedRec counts a release and remembers it for AntiEntropy (the last
// 4096).
func (m *Machine) releasedRec(rev int64) {
	m.Count.Released++
	m.released[rev] = true
	m.releasedLog = append(m.releasedLog, rev)
	if len(m.releasedLog) > 4096 {
		delete(m.released, m.releasedLog[0])
		m.releasedLog = m.releasedLog[1:]
	}
}

// ----------------------------------------------------------------------
// Receiver events.

// RecvRecord is a record towards this host (the pairs/<me>/ watch, or a
// re-read), already checked by the caller against its peers and local
// containers.
func (m *Machine) RecvRecord(now time.Time, rec keyalloc.Record) []Effect {
	m.now = now
	m.recvPut(rec)
	return m.flush()
}

func (m *Machine) recvPut(rec keyalloc.Record) {
	k := RecvKey{rec.SrcHost, rec.Key}
	if rec.CreateRevision <= m.tomb[k] {
		return
	}
	if e, ok := m.recv[k]; ok && e.Rec.CreateRevision >= rec.CreateRevision {
		return
	}
	m.recv[k] = &Recv{Rec: rec, gen: m.changed()}
}

// RecvRecordDeleted is a record towards this host that its sender released.
func (m *Machine) RecvRecordDeleted(now time.Time, rec keyalloc.Record) []Effect {
	m.now = now
	k := RecvKey{rec.SrcHost, rec.Key}
	m.tombstone(k, rec.CreateRevision)
	if e, ok := m.recv[k]; ok && e.Rec.CreateRevision <= rec.CreateRevision {
		delete(m.recv, k)
		m.changed()
	}
	return m.flush()
}

func (m *Machine) tombstone(k RecvKey, rev int64) {
	if rev > m.tomb[k] {
		m.tomb[k] = rev
	}
}

// Marked is the result of MarkReady: stale means the record is gone or was
// re-allocated (nothing to do); another failure is retried.
func (m *Machine) Marked(now time.Time, rec keyalloc.Record, stale bool, err error) []Effect {
	m.now = now
	e, ok := m.recv[RecvKey{rec.SrcHost, rec.Key}]
	if !ok || e.Rec.CreateRevision != rec.CreateRevision {
		return m.flush()
	}
	e.marking = false
	switch {
	case err == nil || stale:
		e.marked = true
	default:
		e.retryAt = now.Add(m.cfg.Retry)
	}
	return m.flush()
}

// ----------------------------------------------------------------------
// Switch events.

// Installed is the result of Install{Gen}: ok means the desired flows of
// generation gen are confirmed on a connected switch.
func (m *Machine) Installed(now time.Time, gen uint64, ok bool) []Effect {
	m.now = now
	m.installing = false
	if ok {
		m.confirmed = max(m.confirmed, gen)
	} else {
		m.installAt = now.Add(m.cfg.Retry)
	}
	return m.flush()
}

// Tick advances time: quarantines end, pending entries time out, failed
// work is retried.
func (m *Machine) Tick(now time.Time) []Effect {
	m.now = now
	var effs []Effect
	if !now.Before(m.serveFrom) {
		for _, e := range m.sortedSend() {
			if e.State == StateAllocating && e.deferred {
				e.deferred, e.freed = false, m.freed[e.Peer]
				effs = append(effs, Allocate{Pair: e.Pair, Peer: e.Peer, Exclude: m.heldKeys(e.Peer)})
			}
		}
	}
	if len(effs) > 0 {
		return append(effs, m.tick(now)...)
	}
	return m.tick(now)
}

func (m *Machine) tick(now time.Time) []Effect {
	due := false
	for _, e := range m.send {
		due = due || e.State == StatePending && now.Sub(e.Since) >= m.cfg.PendingTimeout
	}
	if !due { // the common case, cheaply: ticks are frequent
		return m.flush()
	}
	for _, e := range m.sortedSend() {
		if e.State == StatePending && now.Sub(e.Since) >= m.cfg.PendingTimeout {
			m.drain(e, "not_ready")
			m.fallback(e.Pair, e.Peer, "not_ready", now)
		}
	}
	return m.flush()
}

// AntiEntropy compares the machine with a fresh read of both sides, taken
// after generation confirmedGen was confirmed: egress is the switch's
// EgressCache entries (pair → key, 0 for fallback), sent this host's
// records as sender and recv the checked records towards it, both read at
// etcd revision rev. Each difference is repaired and counted.
func (m *Machine) AntiEntropy(now time.Time, confirmedGen uint64, egress map[Pair]Key, sent, recv []keyalloc.Record, rev int64) []Effect {
	m.now = now
	if !m.synced {
		return nil
	}
	sentBy := map[int64]keyalloc.Record{}
	for _, r := range sent {
		sentBy[r.CreateRevision] = r
	}
	for _, e := range m.sortedSend() {
		if e.State != StatePending && e.State != StateReady && e.State != StateFallback {
			continue
		}
		if k, on := egress[e.Pair]; e.gen <= confirmedGen && (!on || k != e.Key) {
			m.Count.Repairs["egress_flow_lost"]++
			m.flowGone(e)
			continue
		}
		if e.State != StateFallback && e.Rec.CreateRevision <= rev {
			if _, ok := sentBy[e.Rec.CreateRevision]; !ok {
				m.Count.Repairs["record_lost"]++
				m.drain(e, "record_lost")
				m.holds[len(m.holds)-1].Rec = keyalloc.Record{}
			}
		}
	}
	// A record of ours that nothing here holds (an allocation whose answer
	// was lost) is released through the quarantine.
	known := map[int64]bool{}
	for _, e := range m.send {
		known[e.Rec.CreateRevision] = true
	}
	for _, h := range m.holds {
		known[h.Rec.CreateRevision] = true
	}
	for _, r := range sent {
		p := Pair{r.Src, r.Dst}
		if e, ok := m.send[p]; ok && e.State == StateAllocating {
			continue
		}
		if !known[r.CreateRevision] && !m.released[r.CreateRevision] {
			m.Count.Repairs["orphan_record"]++
			m.holds = append(m.holds, &Send{Pair: p, Peer: r.DstHost, State: StateQuarantined, Key: r.Key, Rec: r, Since: now, Reason: "orphan"})
		}
	}
	// Pairs out of keys while a key towards their peer is free (its
	// freeing was not seen here) try again.
	if m.cfg.Keys > 0 {
		used := map[string]map[Key]bool{}
		use := func(peer string, k Key) {
			if used[peer] == nil {
				used[peer] = map[Key]bool{}
			}
			if !k.IsZero() {
				used[peer][k] = true
			}
		}
		for _, r := range sent {
			use(r.DstHost, r.Key)
		}
		for _, e := range m.send {
			use(e.Peer, e.Key)
		}
		for _, h := range m.holds {
			use(h.Peer, h.Key)
		}
		peers := map[string]bool{}
		for _, e := range m.send {
			if e.State == StateFallback && e.Reason == ReasonExhausted && len(used[e.Peer]) < m.keysTo(e.Peer) {
				peers[e.Peer] = true
			}
		}
		for _, p := range slices.Sorted(maps.Keys(peers)) {
			m.Count.Repairs["exhausted_key_free"]++
			m.keyFreed(p)
		}
	}
	// Receiver: records missed by the watch are added, entries whose record
	// is gone are removed.
	recvBy := map[RecvKey]keyalloc.Record{}
	for _, r := range recv {
		recvBy[RecvKey{r.SrcHost, r.Key}] = r
		k := RecvKey{r.SrcHost, r.Key}
		if e, ok := m.recv[k]; (!ok || e.Rec.CreateRevision < r.CreateRevision) && r.CreateRevision > m.tomb[k] {
			m.Count.Repairs["restore_missing"]++
			m.recvPut(r)
		}
	}
	for _, k := range m.recvKeys() {
		e := m.recv[k]
		if r, ok := recvBy[k]; e.Rec.CreateRevision <= rev && (!ok || r.CreateRevision != e.Rec.CreateRevision) {
			// No tombstone: a record left out because it does not check
			// now (its container detached) comes back when it does.
			m.Count.Repairs["restore_stale"]++
			delete(m.recv, k)
			m.changed()
		}
	}
	return m.flush()
}

// ----------------------------------------------------------------------

func (m *Machine) recvKeys() []RecvKey {
	ks := make([]RecvKey, 0, len(m.recv))
	for k := range m.recv {
		ks = append(ks, k)
	}
	slices.SortFunc(ks, compareRecvKey)
	return ks
}

func compareRecvKey(a, b RecvKey) int {
	if c := strings.Compare(a.Peer, b.Peer); c != 0 {
		return c
	}
	return a.Key.Compare(b.Key)
}

// keysTo is the size of the key space towards peer.
func (m *Machine) keysTo(peer string) int {
	if m.cfg.AddrPairs == nil {
		return m.cfg.Keys
	}
	return m.cfg.Keys * m.cfg.AddrPairs(peer)
}

func (m *Machine) sortedSend() []*Send {
	es := make([]*Send, 0, len(m.send))
	for _, e := range m.send {
		es = append(es, e)
	}
	slices.SortFunc(es, func(a, b *Send) int { return comparePair(a.Pair, b.Pair) })
	return es
}

// flush moves holds along and returns the effects now due: an install of
// a changed desired set, marks of confirmed Restore entries, releases of
// quarantined keys.
func (m *Machine) flush() []Effect {
	var effs []Effect
	now := m.now
	kept := m.holds[:0]
	for _, h := range m.holds {
		if h.State == StateDraining && !h.afterRC && h.gen <= m.confirmed {
			h.State, h.Since = StateQuarantined, now
		}
		if h.State == StateQuarantined && now.Sub(h.Since) >= m.cfg.Quarantine {
			if h.Rec.CreateRevision == 0 {
				m.keyFreed(h.Peer) // no record to release: the key is free now
				continue
			}
			h.State, h.Since, h.retryAt = StateReleasing, now, now
		}
		if h.State == StateReleasing && !h.retryAt.IsZero() && !now.Before(h.retryAt) {
			h.retryAt = time.Time{}
			effs = append(effs, Release{Rec: h.Rec})
		}
		kept = append(kept, h)
	}
	clear(m.holds[len(kept):])
	m.holds = kept
	markDue := func(e *Recv) bool { return !e.marked && !e.marking && e.gen <= m.confirmed && !now.Before(e.retryAt) }
	due := false
	for _, e := range m.recv {
		due = due || markDue(e)
	}
	if due {
		for _, k := range m.recvKeys() {
			if e := m.recv[k]; markDue(e) {
				e.marking = true
				effs = append(effs, MarkReady{Rec: e.Rec})
			}
		}
	}
	if !m.installing && m.gen > m.confirmed && !now.Before(m.installAt) {
		m.installing = true
		s, r := m.Flows()
		effs = append(effs, Install{Gen: m.gen, Send: s, Restore: r})
	}
	return effs
}
