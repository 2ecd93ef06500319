// Package keyalloc allocates per host-pair cache keys in etcd.
//
// A key k = (source address, destination address, DSCP) (Key; the DSCPs
// are a KeySet) names one container pair (src, dst) in one host-pair
// direction srcHost→dstHost: a rewritten packet leaves from one of the
// source host's key addresses (its underlay IP and underlay_ips) towards
// one of the destination host's, with the DSCP. Two keys under the root
// prefix hold an allocation:
//
//	keys/<src-host>/<dst-host>/<src-addr>/<dst-addr>/<dscp>  {src, dst, state, created}
//	pairs/<dst-host>/<src-host>/<srcIP>-<dstIP>              {key, created}
//
// The record path is the key: (hosts, key) ↔ record is a bijection, so
// etcd holds at most one record per (srcHost, dstHost, k), which the cache
// protocol's argument needs. The record (keys/...) is the allocation: key k
// is in use exactly while it exists. With N and M key addresses on the two
// hosts a direction has N×M×|KeySet| keys; Allocate picks among them at
// random, so pairs spread over the address pairs (and an ECMP fabric's
// paths). The pair index (pairs/...) makes one pair get one key: both are
// created in one transaction only if both are absent, and deleted together.
//
// The index is filed under the destination host on purpose: each agent
// watches two prefixes that hold only its own pairs. As sender it watches
// keys/<me>/ (records, so it sees state turn ready); as receiver it watches
// pairs/<me>/, which tells it of every pair created or deleted towards it
// (it needs no state changes: the receiver is the one marking ready). So
// watch traffic grows with an agent's own pairs, not with the cluster, and
// no extra key is written for the receiver.
//
// Key space and its costs: a host pair direction has N×M×|KeySet| keys
// for N and M key addresses; records and writes per pair do not grow with
// it, and an allocator's view of a host pair holds at most one entry per
// key in use. A record of the layout before key triples
// (keys/<src-host>/<dst-host>/<dscp>) is skipped and counted like any bad
// record; its slot is not a key any more.
//
// etcd writes per pair lifetime: Allocate 1 (the create transaction),
// MarkReady 1 (compare-and-swap on the record's revision), Release 1 (a
// transaction deleting both keys). Re-allocating an existing pair writes
// nothing. A transaction lost to a racing allocator changes nothing and is
// retried with another key. Reads: an allocator remembers each host pair's
// keys from its last read and its own writes, so a pair new to it is
// created without reading first; the transaction's conditions keep that
// safe, and a lost one falls back to reading.
package keyalloc

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/keyroute/keyroute/flows"
	"github.com/keyroute/keyroute/registry"
	"github.com/keyroute/keyroute/registry/kvwatch"
)

// Errors returned wrapped, with context, by Allocator methods.
var (
	ErrKeysExhausted = errors.New("all cache keys of the host pair in use")
	ErrNotFound      = errors.New("key record not found")
	ErrStale         = errors.New("key record is stale") // gone or re-allocated since read
	// ErrBadRecord is registry's: one sentinel for a bad record of any
	// kind; the error is a *registry.RecordError naming the kind.
	ErrBadRecord = registry.ErrBadRecord
)

// Record states.
const (
	StatePending = "pending" // allocated; the receiver has no Restore flow yet
	StateReady   = "ready"   // the receiver restores packets with this key
)

// Key is a cache key: (source address, destination address, DSCP).
type Key = flows.Key

// Addrs are the key addresses of a host pair direction: the source
// host's and the destination host's (each its underlay IP first, then its
// underlay_ips). Keys are drawn from Src × Dst × the KeySet.
type Addrs struct{ Src, Dst []netip.Addr }

// Record is one key allocation.
type Record struct {
	SrcHost, DstHost string
	Key              Key
	Src, Dst         netip.Addr // container IPs
	// State is StatePending or StateReady. Records read through the pair
	// index (List or Watch with only DstHost set) carry the state they
	// were created with, StatePending; MarkReady on them is still right.
	State   string
	Created time.Time
	// Revisions of the record in etcd, for compare-and-swap.
	ModRevision, CreateRevision int64
}

type recordJSON struct {
	Src     netip.Addr `json:"src"`
	Dst     netip.Addr `json:"dst"`
	State   string     `json:"state"`
	Created time.Time  `json:"created"`
}

type keyJSON struct {
	Src  netip.Addr `json:"src"`
	Dst  netip.Addr `json:"dst"`
	DSCP uint8      `json:"dscp"`
}

type indexJSON struct {
	Key     keyJSON   `json:"key"`
	Created time.Time `json:"created"`
}

// Event is one change seen by Watch; Value is the record.
type Event = kvwatch.Event[Record]

// Event types, see kvwatch.
const (
	EventPut    = kvwatch.Put
	EventDelete = kvwatch.Delete
	EventSynced = kvwatch.Synced
)

// Filter selects records by host; empty fields match all.
type Filter struct{ SrcHost, DstHost string }

// Allocator allocates keys. Several allocators (agents) may work on the
// same host pairs concurrently; etcd transactions keep them consistent.
type Allocator struct {
	cli    *clientv3.Client
	prefix string
	keys   KeySet
	bad    atomic.Uint64
	badLog *registry.BadRecordLog
	onBad  func(key string, err error)

	// views remembers, per host pair, what this allocator last read or
	// wrote there, so a new pair's allocation can skip the read (see
	// Allocate); busy counts its own allocations trying each key now.
	mu    sync.Mutex
	views map[string]*dirView
	busy  map[string]map[Key]uint16
}

// dirView is one host pair's keys and pairs as this allocator last saw
// them. Only the source host allocates in its keys/<src>/... directory, so
// the view goes stale only by releases (keys look taken that are free) —
// never the other way round in a sound cluster, and a lost transaction
// corrects it anyway.
type dirView struct {
	used  map[Key]bool
	pairs map[[2]netip.Addr]bool
}

func newView() *dirView { return &dirView{used: map[Key]bool{}, pairs: map[[2]netip.Addr]bool{}} }

// free lists the keys of space the view does not have taken.
func (v *dirView) free(space []Key) []Key {
	var free []Key
	for _, k := range space {
		if !v.used[k] {
			free = append(free, k)
		}
	}
	return free
}

// space lists the keys of the host pair direction with addresses ad, the
// DSCPs of set, minus exclude.
func space(ad Addrs, set KeySet, exclude []Key) []Key {
	var ks []Key
	for _, s := range ad.Src {
		for _, d := range ad.Dst {
			for _, c := range set.Keys() {
				k := Key{Src: s, Dst: d, DSCP: c}
				if !slices.Contains(exclude, k) {
					ks = append(ks, k)
				}
			}
		}
	}
	return ks
}

// Option configures New.
type Option func(*Allocator)

// WithBadRecordHandler is called for every record skipped because it failed
// validation, in addition to counting and logging it; err is a
// *registry.RecordError of kind key or pair.
func WithBadRecordHandler(f func(key string, err error)) Option {
	return func(a *Allocator) { a.onBad = f }
}

// WithLogger sets where bad records are logged (default slog.Default()).
func WithLogger(l *slog.Logger) Option {
	return func(a *Allocator) { a.badLog = registry.NewBadRecordLog(l) }
}

// New returns an allocator storing under prefix (registry.DefaultPrefix if
// empty) and handing out keys (DefaultKeySet if empty).
func New(cli *clientv3.Client, prefix string, keys KeySet, opts ...Option) *Allocator {
	if prefix == "" {
		prefix = registry.DefaultPrefix
	}
	if !strings.HasSuffix(prefix, "/") {
		prefix += "/"
	}
	if keys.Len() == 0 {
		keys = DefaultKeySet()
	}
	a := &Allocator{cli: cli, prefix: prefix, keys: keys, views: map[string]*dirView{}, busy: map[string]map[Key]uint16{}}
	for _, o := range opts {
		o(a)
	}
	if a.badLog == nil {
		a.badLog = registry.NewBadRecordLog(nil)
	}
	return a
}

// BadRecords counts records skipped by Allocate, List and Watch because
// they failed validation: every skip (a bad record is logged only once).
func (a *Allocator) BadRecords() uint64 { return a.bad.Load() }

func (a *Allocator) badRecord(key string, err error) {
	a.bad.Add(1)
	a.badLog.Log(err)
	if a.onBad != nil {
		a.onBad(key, err)
	}
}

func (a *Allocator) recordKey(src, dst string, k Key) string {
	return a.prefix + "keys/" + src + "/" + dst + "/" + k.Src.String() + "/" + k.Dst.String() + "/" + strconv.Itoa(int(k.DSCP))
}

func (a *Allocator) indexKey(r Record) string {
	return a.prefix + "pairs/" + r.DstHost + "/" + r.SrcHost + "/" + r.Src.String() + "-" + r.Dst.String()
}

func checkPair(srcHost, dstHost string, src, dst netip.Addr) error {
	if err := registry.ValidateName(srcHost); err != nil {
		return fmt.Errorf("source host: %w", err)
	}
	if err := registry.ValidateName(dstHost); err != nil {
		return fmt.Errorf("destination host: %w", err)
	}
	if srcHost == dstHost {
		return fmt.Errorf("source and destination host are both %s", srcHost)
	}
	// Cache flows match and rewrite 4-byte addresses.
	if err := registry.ValidateAddr(src); err != nil {
		return fmt.Errorf("source container IP: %w", err)
	}
	if err := registry.ValidateAddr(dst); err != nil {
		return fmt.Errorf("destination container IP: %w", err)
	}
	return nil
}

// checkKey checks a key's form: unicast IPv4 addresses, different, DSCP
// 1..MaxKey. Whether the addresses are the hosts' is for the receiver
// to check against the host records.
func checkKey(k Key) error {
	if err := registry.ValidateAddr(k.Src); err != nil {
		return fmt.Errorf("key source address: %w", err)
	}
	if err := registry.ValidateAddr(k.Dst); err != nil {
		return fmt.Errorf("key destination address: %w", err)
	}
	if k.Src == k.Dst {
		return fmt.Errorf("key source and destination address are both %s", k.Src)
	}
	if k.DSCP < 1 || k.DSCP > MaxKey {
		return fmt.Errorf("key DSCP %d is not 1-%d", k.DSCP, MaxKey)
	}
	return nil
}

// Validate checks r as stored: host names valid and different, container
// IPs unicast IPv4, key well formed (checkKey), state pending or ready.
// The error names the field.
func (r Record) Validate() error {
	if err := checkPair(r.SrcHost, r.DstHost, r.Src, r.Dst); err != nil {
		return err
	}
	if err := checkKey(r.Key); err != nil {
		return err
	}
	if r.State != StatePending && r.State != StateReady {
		return fmt.Errorf("state %.20q: want %s or %s", r.State, StatePending, StateReady)
	}
	return nil
}

// Allocate returns the key of the pair src@srcHost → dst@dstHost: its
// existing record (no write), else a new pending record with a free key
// chosen at random, so racing allocators rarely collide and a just freed
// key is not the next one reused. If every key of the set is in use the
// error wraps ErrKeysExhausted. Cost: 1 write for a pair new to this
// allocator's view of the host pair; else 1 read, then 1 write for a new
// pair.
//
// ad are the two hosts' key addresses: a new key is drawn from
// ad.Src × ad.Dst × the key set. exclude lists keys the caller must not
// get for a new record (keys its switch may still carry for another pair,
// see cacheproto); a pair's existing record is returned whatever its key.
func (a *Allocator) Allocate(ctx context.Context, srcHost, dstHost string, src, dst netip.Addr, ad Addrs, exclude ...Key) (Record, error) {
	fail := func(err error) (Record, error) {
		return Record{}, fmt.Errorf("allocate key for %s@%s -> %s@%s: %w", src, srcHost, dst, dstHost, err)
	}
	if err := checkPair(srcHost, dstHost, src, dst); err != nil {
		return fail(err)
	}
	if len(ad.Src) == 0 || len(ad.Dst) == 0 {
		return fail(errors.New("no key addresses for the source or destination host"))
	}
	dir := a.prefix + "keys/" + srcHost + "/" + dstHost + "/"
	r := Record{SrcHost: srcHost, DstHost: dstHost, Src: src, Dst: dst, State: StatePending,
		Created: time.Now().UTC().Truncate(time.Millisecond)}
	// A pair this allocator has not seen in the host pair is new unless
	// another allocator made it: try a key the view says is free straight
	// away. The transaction tells if the pair exists after all.
	allowed := space(ad, a.keys, exclude)
	if free, ok := a.viewFree(dir, src, dst, allowed); ok {
		won, err := a.tryKeys(ctx, dir, &r, free)
		if err != nil {
			return fail(err)
		}
		if won {
			return r, nil
		}
		// Lost: the read below finds the pair's record, or what took
		// the keys.
	}
	// Each round re-reads the host pair. A round ends when a racing
	// allocator created this very pair or took every key tried; the
	// re-read then finds the pair's record or the keys exhausted.
	for range 8 {
		resp, err := a.cli.Get(ctx, dir, clientv3.WithPrefix())
		if err != nil {
			return fail(err)
		}
		view := newView()
		var existing *Record
		for _, kv := range resp.Kvs {
			rec, err := a.decodeRecord(kv)
			if err != nil {
				a.badRecord(string(kv.Key), err)
				// The key is taken whatever its value says.
				if k, err := a.pathKey(string(kv.Key)); err == nil {
					view.used[k] = true
				}
				continue
			}
			if rec.Src == src && rec.Dst == dst {
				existing = &rec
			}
			view.used[rec.Key] = true
			view.pairs[[2]netip.Addr{rec.Src, rec.Dst}] = true
		}
		a.mu.Lock()
		a.views[dir] = view
		a.mu.Unlock()
		if existing != nil {
			return *existing, nil
		}
		free := view.free(allowed)
		if len(free) == 0 {
			return fail(fmt.Errorf("%d keys (%d×%d addresses × DSCP %s), %d held back: %w",
				len(ad.Src)*len(ad.Dst)*a.keys.Len(), len(ad.Src), len(ad.Dst), a.keys, len(exclude), ErrKeysExhausted))
		}
		won, err := a.tryKeys(ctx, dir, &r, free)
		if err != nil {
			return fail(err)
		}
		if won {
			return r, nil
		}
	}
	return fail(errors.New("gave up after 8 rounds of contention"))
}

// viewFree returns the keys free in dir by this allocator's view, if it
// has one and it does not know the pair (which must then be read).
func (a *Allocator) viewFree(dir string, src, dst netip.Addr, allowed []Key) ([]Key, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	v, ok := a.views[dir]
	if !ok || v.pairs[[2]netip.Addr{src, dst}] {
		return nil, false
	}
	free := v.free(allowed)
	return free, len(free) > 0
}

// tryKeys creates r with one of keys, in random order but those no other
// allocation of this allocator is trying first, skipping keys the view
// learns are taken, until one wins or the pair turns out to be taken. The
// view learns every key found taken and the key won.
func (a *Allocator) tryKeys(ctx context.Context, dir string, r *Record, keys []Key) (won bool, err error) {
	rand.Shuffle(len(keys), func(i, j int) { keys[i], keys[j] = keys[j], keys[i] })
	a.mu.Lock()
	busy := a.busy[dir]
	if busy == nil {
		busy = map[Key]uint16{}
		a.busy[dir] = busy
	}
	sort.SliceStable(keys, func(i, j int) bool { return busy[keys[i]] < busy[keys[j]] })
	a.mu.Unlock()
	for _, k := range keys {
		a.mu.Lock()
		v := a.views[dir]
		if v != nil && v.used[k] {
			a.mu.Unlock()
			continue
		}
		busy[k]++
		a.mu.Unlock()
		r.Key = k
		won, pairTaken, err := a.create(ctx, r)
		a.mu.Lock()
		if busy[k]--; busy[k] == 0 {
			delete(busy, k)
		}
		if v != nil && err == nil && !pairTaken {
			v.used[k] = true // ours now, or another allocator's
			if won {
				v.pairs[[2]netip.Addr{r.Src, r.Dst}] = true
			}
		}
		a.mu.Unlock()
		if err != nil || won || pairTaken {
			return won, err
		}
	}
	return false, nil
}

// create writes r and its pair index if both are absent, setting r's
// revisions. If it loses, pairTaken says whether the pair itself was
// allocated meanwhile (rather than only the key).
func (a *Allocator) create(ctx context.Context, r *Record) (won, pairTaken bool, err error) {
	rk, ik := a.recordKey(r.SrcHost, r.DstHost, r.Key), a.indexKey(*r)
	rv, err := json.Marshal(recordJSON{r.Src, r.Dst, r.State, r.Created})
	if err != nil {
		return false, false, err
	}
	iv, err := json.Marshal(indexJSON{keyJSON{r.Key.Src, r.Key.Dst, r.Key.DSCP}, r.Created})
	if err != nil {
		return false, false, err
	}
	tx, err := a.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(rk), "=", 0),
			clientv3.Compare(clientv3.CreateRevision(ik), "=", 0)).
		Then(clientv3.OpPut(rk, string(rv)), clientv3.OpPut(ik, string(iv))).
		Else(clientv3.OpGet(ik, clientv3.WithCountOnly())).
		Commit()
	if err != nil {
		return false, false, err
	}
	if tx.Succeeded {
		r.ModRevision, r.CreateRevision = tx.Header.Revision, tx.Header.Revision
		return true, false, nil
	}
	return false, tx.Responses[0].GetResponseRange().Count > 0, nil
}

// MarkReady sets r's state to ready if the record is unchanged since r was
// read (compare-and-swap on its ModRevision). Marking a record that is
// already ready succeeds; if the record is gone or was re-allocated the
// error wraps ErrStale. Cost: 1 write.
func (a *Allocator) MarkReady(ctx context.Context, r Record) error {
	fail := func(err error) error {
		return fmt.Errorf("mark key %s of %s->%s ready: %w", r.Key, r.SrcHost, r.DstHost, err)
	}
	if err := checkPair(r.SrcHost, r.DstHost, r.Src, r.Dst); err != nil {
		return fail(err)
	}
	if r.ModRevision == 0 {
		return fail(errors.New("record carries no revision; read it with Get"))
	}
	rk := a.recordKey(r.SrcHost, r.DstHost, r.Key)
	rv, err := json.Marshal(recordJSON{r.Src, r.Dst, StateReady, r.Created})
	if err != nil {
		return fail(err)
	}
	tx, err := a.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.ModRevision(rk), "=", r.ModRevision)).
		Then(clientv3.OpPut(rk, string(rv))).
		Else(clientv3.OpGet(rk)).
		Commit()
	if err != nil {
		return fail(err)
	}
	if tx.Succeeded {
		return nil
	}
	kvs := tx.Responses[0].GetResponseRange().Kvs
	if len(kvs) == 0 {
		return fail(fmt.Errorf("record deleted: %w", ErrStale))
	}
	cur, err := a.decodeRecord(kvs[0])
	if err != nil {
		return fail(err)
	}
	if cur.CreateRevision == r.CreateRevision && cur.State == StateReady {
		return nil
	}
	return fail(fmt.Errorf("record now %s for %s->%s (revision %d, had %d): %w",
		cur.State, cur.Src, cur.Dst, cur.ModRevision, r.ModRevision, ErrStale))
}

// Release deletes r's record and pair index, freeing the key, unless the
// record has since been re-allocated (it then belongs to someone else).
// Releasing a released record succeeds. A Record built by hand (no
// CreateRevision) releases whatever record the pair holds at that key.
// Cost: 1 write, plus 1 read without CreateRevision.
func (a *Allocator) Release(ctx context.Context, r Record) error {
	fail := func(err error) error {
		return fmt.Errorf("release key %s of %s@%s -> %s@%s: %w", r.Key, r.Src, r.SrcHost, r.Dst, r.DstHost, err)
	}
	if err := checkPair(r.SrcHost, r.DstHost, r.Src, r.Dst); err != nil {
		return fail(err)
	}
	rk := a.recordKey(r.SrcHost, r.DstHost, r.Key)
	for {
		crev := r.CreateRevision
		if crev == 0 {
			resp, err := a.cli.Get(ctx, rk)
			if err != nil {
				return fail(err)
			}
			if len(resp.Kvs) == 0 {
				return nil
			}
			cur, err := a.decodeRecord(resp.Kvs[0])
			if err != nil {
				return fail(err)
			}
			if cur.Src != r.Src || cur.Dst != r.Dst {
				return nil // the key now belongs to another pair
			}
			crev = cur.CreateRevision
		}
		tx, err := a.cli.Txn(ctx).
			If(clientv3.Compare(clientv3.CreateRevision(rk), "=", crev)).
			Then(clientv3.OpDelete(rk), clientv3.OpDelete(a.indexKey(r))).
			Commit()
		if err != nil {
			return fail(err)
		}
		if tx.Succeeded || r.CreateRevision != 0 {
			return nil
		}
		// Re-allocated between read and delete: look again.
	}
}

// Get returns the record of key k for srcHost→dstHost; ErrNotFound if the
// key is free.
func (a *Allocator) Get(ctx context.Context, srcHost, dstHost string, k Key) (Record, error) {
	rk := a.recordKey(srcHost, dstHost, k)
	resp, err := a.cli.Get(ctx, rk)
	if err != nil {
		return Record{}, fmt.Errorf("get %s: %w", rk, err)
	}
	if len(resp.Kvs) == 0 {
		return Record{}, fmt.Errorf("get key %s of %s->%s: %w", k, srcHost, dstHost, ErrNotFound)
	}
	return a.decodeRecord(resp.Kvs[0])
}

// source returns where records matching f live and how to decode them:
// the records themselves if SrcHost is set (or nothing is), else the
// destination host's pair index.
func (a *Allocator) source(f Filter) (key string, decode func(*mvccpb.KeyValue) (Record, error)) {
	switch {
	case f.SrcHost != "" && f.DstHost != "":
		return a.prefix + "keys/" + f.SrcHost + "/" + f.DstHost + "/", a.decodeRecord
	case f.SrcHost != "":
		return a.prefix + "keys/" + f.SrcHost + "/", a.decodeRecord
	case f.DstHost != "":
		return a.prefix + "pairs/" + f.DstHost + "/", a.decodeIndex
	}
	return a.prefix + "keys/", a.decodeRecord
}

func checkFilter(f Filter) error {
	for _, h := range []string{f.SrcHost, f.DstHost} {
		if h != "" {
			if err := registry.ValidateName(h); err != nil {
				return fmt.Errorf("filter: %w", err)
			}
		}
	}
	return nil
}

// List returns the records matching f, sorted by source host, destination
// host and key, skipping bad records.
func (a *Allocator) List(ctx context.Context, f Filter) ([]Record, error) {
	recs, _, err := a.ListAt(ctx, f)
	return recs, err
}

// ListAt is List that also returns the etcd revision the records were read at.
func (a *Allocator) ListAt(ctx context.Context, f Filter) ([]Record, int64, error) {
	if err := checkFilter(f); err != nil {
		return nil, 0, fmt.Errorf("list keys: %w", err)
	}
	key, decode := a.source(f)
	resp, err := a.cli.Get(ctx, key, clientv3.WithPrefix())
	if err != nil {
		return nil, 0, fmt.Errorf("list %s: %w", key, err)
	}
	recs := make([]Record, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		r, err := decode(kv)
		if err != nil {
			a.badRecord(string(kv.Key), err)
			continue
		}
		recs = append(recs, r)
	}
	sort.Slice(recs, func(i, j int) bool {
		x, y := recs[i], recs[j]
		if x.SrcHost != y.SrcHost {
			return x.SrcHost < y.SrcHost
		}
		if x.DstHost != y.DstHost {
			return x.DstHost < y.DstHost
		}
		return x.Key.Compare(y.Key) < 0
	})
	return recs, resp.Header.Revision, nil
}

// Watch streams the records matching f: a Put per record, Synced, then
// every change, until ctx ends (see kvwatch). An agent watches
// Filter{SrcHost: me} for the pairs it sends and Filter{DstHost: me} for
// those it receives; the latter reports creations and deletions only.
func (a *Allocator) Watch(ctx context.Context, f Filter) (<-chan Event, error) {
	if err := checkFilter(f); err != nil {
		return nil, fmt.Errorf("watch keys: %w", err)
	}
	key, decode := a.source(f)
	return kvwatch.Watch(ctx, kvwatch.Config[Record]{
		Client: a.cli,
		Key:    key,
		End:    clientv3.GetPrefixRangeEnd(key),
		Decode: func(kv *mvccpb.KeyValue) (Record, bool, error) {
			r, err := decode(kv)
			return r, err == nil, err
		},
		OnBad: a.badRecord,
	}), nil
}

// splitKey splits key below a.prefix+dir into n segments.
func (a *Allocator) splitKey(key, dir string, n int) ([]string, error) {
	rest, ok := strings.CutPrefix(key, a.prefix+dir)
	parts := strings.Split(rest, "/")
	if !ok || len(parts) != n {
		return nil, fmt.Errorf("key is not %s followed by %d segments", dir, n)
	}
	return parts, nil
}

// parseKeyPath reads a key from a record path's last three segments. Every
// segment must be canonical ("5", not "05"; addresses as
// netip.Addr.String writes them): two paths naming one key would let two
// records hold it.
func parseKeyPath(parts []string) (Key, error) {
	src, err1 := netip.ParseAddr(parts[0])
	dst, err2 := netip.ParseAddr(parts[1])
	if err := errors.Join(err1, err2); err != nil {
		return Key{}, fmt.Errorf("key addresses %.40q/%.40q: %w", parts[0], parts[1], err)
	}
	if src.String() != parts[0] || dst.String() != parts[1] {
		return Key{}, fmt.Errorf("key addresses %.40q/%.40q are not in canonical form", parts[0], parts[1])
	}
	d, err := strconv.ParseUint(parts[2], 10, 8)
	if err != nil || d < 1 || d > MaxKey || strconv.Itoa(int(d)) != parts[2] {
		return Key{}, fmt.Errorf("key DSCP %.20q is not 1-%d", parts[2], MaxKey)
	}
	return Key{Src: src, Dst: dst, DSCP: uint8(d)}, nil
}

// pathKey reads the key of a record path, whatever its value.
func (a *Allocator) pathKey(path string) (Key, error) {
	parts, err := a.splitKey(path, "keys/", 5)
	if err != nil {
		return Key{}, err
	}
	return parseKeyPath(parts[2:])
}

// decodeRecord is the one place a key record,
// keys/<src-host>/<dst-host>/<src-addr>/<dst-addr>/<dscp>, is read and
// checked. A record of the old layout keys/<src-host>/<dst-host>/<dscp>
// fails here like any malformed one: skipped and counted.
func (a *Allocator) decodeRecord(kv *mvccpb.KeyValue) (Record, error) {
	fail := func(err error) (Record, error) { return Record{}, registry.NewRecordError(registry.KindKey, kv, err) }
	if err := registry.CheckSize(kv); err != nil {
		return fail(err)
	}
	parts, err := a.splitKey(string(kv.Key), "keys/", 5)
	if err != nil {
		return fail(err)
	}
	k, err := parseKeyPath(parts[2:])
	if err != nil {
		return fail(err)
	}
	var j recordJSON
	if err := json.Unmarshal(kv.Value, &j); err != nil {
		return fail(err)
	}
	r := Record{SrcHost: parts[0], DstHost: parts[1], Key: k, Src: j.Src, Dst: j.Dst,
		State: j.State, Created: j.Created, ModRevision: kv.ModRevision, CreateRevision: kv.CreateRevision}
	if err := r.Validate(); err != nil {
		return fail(err)
	}
	return r, nil
}

// decodeIndex is the one place a pair index entry,
// pairs/<dst-host>/<src-host>/<srcIP>-<dstIP>, is read and checked; it
// returns the record as created. The index is written once, in the
// record's creating transaction, so its revisions are the record's at
// creation.
func (a *Allocator) decodeIndex(kv *mvccpb.KeyValue) (Record, error) {
	fail := func(err error) (Record, error) { return Record{}, registry.NewRecordError(registry.KindPair, kv, err) }
	if err := registry.CheckSize(kv); err != nil {
		return fail(err)
	}
	parts, err := a.splitKey(string(kv.Key), "pairs/", 3)
	if err != nil {
		return fail(err)
	}
	srcIP, dstIP, _ := strings.Cut(parts[2], "-")
	src, err1 := netip.ParseAddr(srcIP)
	dst, err2 := netip.ParseAddr(dstIP)
	if err := errors.Join(err1, err2); err != nil {
		return fail(fmt.Errorf("pair %.64q: %w", parts[2], err))
	}
	var j indexJSON
	if err := json.Unmarshal(kv.Value, &j); err != nil {
		return fail(err)
	}
	r := Record{SrcHost: parts[1], DstHost: parts[0], Key: Key{Src: j.Key.Src, Dst: j.Key.Dst, DSCP: j.Key.DSCP}, Src: src, Dst: dst,
		State: StatePending, Created: j.Created, ModRevision: kv.ModRevision, CreateRevision: kv.CreateRevision}
	if err := r.Validate(); err != nil {
		return fail(err)
	}
	// One pair, one index key: the canonical form is the only one the
	// allocator writes and deletes.
	if want := src.String() + "-" + dst.String(); parts[2] != want {
		return fail(fmt.Errorf("pair %.64q is not in canonical form %s", parts[2], want))
	}
	return r, nil
}
