package keyalloc_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/keyroute/keyroute/keyalloc"
	"github.com/keyroute/keyroute/registry"
	"github.com/keyroute/keyroute/registry/etcdtest"
)

// The server starts on first use, so the pure KeySet tests run without it.
func TestMain(m *testing.M) { os.Exit(etcdtest.Main(m)) }

func client(tb testing.TB) *clientv3.Client { return etcdtest.Client(tb) }

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func ip(s string) netip.Addr { return netip.MustParseAddr(s) }

// one gives each host one key address: keys are the DSCPs, as before
// underlay_ips.
var one = keyalloc.Addrs{Src: []netip.Addr{ip("198.18.0.1")}, Dst: []netip.Addr{ip("198.18.0.2")}}

// dscp is key d of one.
func dscp(d uint8) keyalloc.Key { return keyalloc.Key{Src: one.Src[0], Dst: one.Dst[0], DSCP: d} }

func keys(t *testing.T, s string) keyalloc.KeySet {
	t.Helper()
	ks, err := keyalloc.ParseKeySet(s)
	if err != nil {
		t.Fatal(err)
	}
	return ks
}

// revision returns etcd's current revision, which counts writes.
func revision(t *testing.T, cli *clientv3.Client) int64 {
	t.Helper()
	resp, err := cli.Get(context.Background(), "/krf-revision-probe")
	if err != nil {
		t.Fatal(err)
	}
	return resp.Header.Revision
}

type pair struct{ src, dst netip.Addr }

func TestAllocateRace(t *testing.T) {
	ctx := ctxT(t)
	prefix := etcdtest.Prefix(t)
	var pairs []pair
	for i := range 200 {
		pairs = append(pairs, pair{netip.AddrFrom4([4]byte{198, 19, 1, byte(10 + i%100)}), netip.AddrFrom4([4]byte{198, 19, 2, byte(10 + i/100)})})
	}
	const allocators = 8
	type result struct {
		key keyalloc.Key
		err error
	}
	results := make([][]result, allocators)
	var wg sync.WaitGroup
	for a := range allocators {
		al := keyalloc.New(client(t), prefix, keyalloc.KeySet{})
		results[a] = make([]result, len(pairs))
		wg.Go(func() {
			for _, i := range rand.Perm(len(pairs)) {
				r, err := al.Allocate(ctx, "h1", "h2", pairs[i].src, pairs[i].dst, one)
				results[a][i] = result{r.Key, err}
			}
		})
	}
	wg.Wait()

	owner := map[keyalloc.Key]int{} // key -> pair index
	for i := range pairs {
		first := results[0][i]
		for a := range allocators {
			r := results[a][i]
			if r.err != nil && !errors.Is(r.err, keyalloc.ErrKeysExhausted) {
				t.Fatalf("allocator %d, pair %d: %v", a, i, r.err)
			}
			// Without releases a pair is either keyed for everyone or
			// for no one, and always with the same key.
			if (r.err == nil) != (first.err == nil) || r.key != first.key {
				t.Fatalf("pair %d: allocator 0 got (%s, %v), allocator %d got (%s, %v)", i, first.key, first.err, a, r.key, r.err)
			}
		}
		if first.err != nil {
			continue
		}
		if !keyalloc.DefaultKeySet().Contains(first.key.DSCP) {
			t.Errorf("pair %d got key %s outside the default set %s", i, first.key, keyalloc.DefaultKeySet())
		}
		if j, dup := owner[first.key]; dup {
			t.Errorf("key %s given to pairs %d and %d", first.key, j, i)
		}
		owner[first.key] = i
	}
	nkeys := keyalloc.DefaultKeySet().Len()
	if len(owner) != nkeys {
		t.Errorf("%d keys allocated for 200 pairs, want all %d", len(owner), nkeys)
	}

	// etcd agrees: one record per key, each the pair it was returned for, and as many
	// index entries seen from the receiver.
	al := keyalloc.New(client(t), prefix, keyalloc.KeySet{})
	recs, err := al.List(ctx, keyalloc.Filter{SrcHost: "h1", DstHost: "h2"})
	if err != nil || len(recs) != nkeys {
		t.Fatalf("List = %d records, %v; want %d", len(recs), err, nkeys)
	}
	for _, r := range recs {
		if p := pairs[owner[r.Key]]; r.Src != p.src || r.Dst != p.dst || r.State != keyalloc.StatePending {
			t.Errorf("record of key %s is %v->%v %s, want %v->%v pending", r.Key, r.Src, r.Dst, r.State, p.src, p.dst)
		}
	}
	idx, err := al.List(ctx, keyalloc.Filter{DstHost: "h2"})
	if err != nil || len(idx) != nkeys {
		t.Fatalf("List by destination = %d records, %v; want %d", len(idx), err, nkeys)
	}
}

func TestOnePairLifetimeWrites(t *testing.T) {
	ctx := ctxT(t)
	cli := client(t)
	al := keyalloc.New(cli, etcdtest.Prefix(t), keyalloc.KeySet{})
	src, dst := ip("198.19.1.5"), ip("198.19.2.7")

	rev0 := revision(t, cli)
	r, err := al.Allocate(ctx, "h1", "h2", src, dst, one)
	if err != nil {
		t.Fatal(err)
	}
	if d := revision(t, cli) - rev0; d != 1 {
		t.Errorf("allocating a new pair cost %d writes, want 1", d)
	}
	if r.State != keyalloc.StatePending || r.Key.IsZero() || r.ModRevision != rev0+1 || r.Created.IsZero() {
		t.Errorf("new record %+v", r)
	}
	again, err := al.Allocate(ctx, "h1", "h2", src, dst, one)
	if err != nil || again.Key != r.Key || again.CreateRevision != r.CreateRevision {
		t.Fatalf("second Allocate = %+v, %v; want key %s", again, err, r.Key)
	}
	if !again.Created.Equal(r.Created) {
		t.Errorf("stored created time %v, returned %v", again.Created, r.Created)
	}
	if d := revision(t, cli) - rev0; d != 1 {
		t.Errorf("re-allocating an existing pair wrote %d times, want 0", d-1)
	}
	if err := al.MarkReady(ctx, again); err != nil {
		t.Fatal(err)
	}
	got, err := al.Get(ctx, "h1", "h2", r.Key)
	if err != nil || got.State != keyalloc.StateReady || got.Src != src || got.Dst != dst {
		t.Fatalf("after MarkReady Get = %+v, %v", got, err)
	}
	if err := al.Release(ctx, got); err != nil {
		t.Fatal(err)
	}
	if d := revision(t, cli) - rev0; d != 3 {
		t.Errorf("pair lifetime cost %d writes, want 3", d)
	}
	if err := al.Release(ctx, got); err != nil {
		t.Errorf("second Release: %v", err)
	}
	if d := revision(t, cli) - rev0; d != 3 {
		t.Errorf("second Release wrote")
	}
	if _, err := al.Get(ctx, "h1", "h2", r.Key); !errors.Is(err, keyalloc.ErrNotFound) {
		t.Errorf("Get after release: %v, want ErrNotFound", err)
	}
	if recs, err := al.List(ctx, keyalloc.Filter{DstHost: "h2"}); err != nil || len(recs) != 0 {
		t.Errorf("pair index after release: %v, %v", recs, err)
	}

	for _, bad := range []struct {
		s, d     string
		src, dst netip.Addr
	}{
		{"h1", "h1", src, dst},
		{"h1", "", src, dst},
		{"a/b", "h2", src, dst},
		{"h1", "h2", netip.Addr{}, dst},
		{"h1", "h2", src, ip("fd00::1")},
		{"h1", "h2", ip("fe80::1%eth0"), ip("fd00::1")},
	} {
		if _, err := al.Allocate(ctx, bad.s, bad.d, bad.src, bad.dst, one); err == nil {
			t.Errorf("Allocate(%q, %q, %v, %v) accepted", bad.s, bad.d, bad.src, bad.dst)
		}
	}
}

func TestReleaseFreesKey(t *testing.T) {
	ctx := ctxT(t)
	al := keyalloc.New(client(t), etcdtest.Prefix(t), keys(t, "7"))
	a, err := al.Allocate(ctx, "h1", "h2", ip("198.19.1.1"), ip("198.19.2.1"), one)
	if err != nil || a.Key != dscp(7) {
		t.Fatalf("Allocate = %+v, %v; want key 7", a, err)
	}
	_, err = al.Allocate(ctx, "h1", "h2", ip("198.19.1.2"), ip("198.19.2.1"), one)
	if !errors.Is(err, keyalloc.ErrKeysExhausted) {
		t.Fatalf("second pair with one key: %v, want ErrKeysExhausted", err)
	}
	// The reverse direction has its own keys.
	if r, err := al.Allocate(ctx, "h2", "h1", ip("198.19.2.1"), ip("198.19.1.1"), one); err != nil || r.Key != dscp(7) {
		t.Errorf("reverse direction = %+v, %v; want key 7", r, err)
	}
	if err := al.Release(ctx, a); err != nil {
		t.Fatal(err)
	}
	b, err := al.Allocate(ctx, "h1", "h2", ip("198.19.1.2"), ip("198.19.2.1"), one)
	if err != nil || b.Key != dscp(7) {
		t.Fatalf("after release = %+v, %v; want key 7", b, err)
	}
}

func TestMarkReadyAndReleaseStale(t *testing.T) {
	ctx := ctxT(t)
	al := keyalloc.New(client(t), etcdtest.Prefix(t), keys(t, "7"))
	old, err := al.Allocate(ctx, "h1", "h2", ip("198.19.1.1"), ip("198.19.2.1"), one)
	if err != nil {
		t.Fatal(err)
	}
	if err := al.Release(ctx, old); err != nil {
		t.Fatal(err)
	}
	cur, err := al.Allocate(ctx, "h1", "h2", ip("198.19.1.2"), ip("198.19.2.1"), one)
	if err != nil || cur.Key != old.Key {
		t.Fatalf("re-allocation = %+v, %v; want key %s", cur, err, old.Key)
	}
	// The receiver still holding the old record must not mark the new pair.
	if err := al.MarkReady(ctx, old); !errors.Is(err, keyalloc.ErrStale) {
		t.Fatalf("MarkReady of a re-allocated key: %v, want ErrStale", err)
	}
	// Nor may releasing the old record free the key under the new pair.
	if err := al.Release(ctx, old); err != nil {
		t.Fatal(err)
	}
	got, err := al.Get(ctx, "h1", "h2", cur.Key)
	if err != nil || got.Src != cur.Src || got.State != keyalloc.StatePending {
		t.Fatalf("new pair's record after stale calls = %+v, %v", got, err)
	}
	if err := al.MarkReady(ctx, cur); err != nil {
		t.Fatal(err)
	}
	// A receiver repeating MarkReady with its (now older) copy succeeds:
	// the record is ready and still the same allocation.
	if err := al.MarkReady(ctx, cur); err != nil {
		t.Errorf("repeated MarkReady: %v", err)
	}
	// A hand-built record (e.g. from a flow after an agent restart)
	// releases the pair's record.
	if err := al.Release(ctx, keyalloc.Record{SrcHost: "h1", DstHost: "h2", Key: cur.Key, Src: cur.Src, Dst: cur.Dst}); err != nil {
		t.Fatal(err)
	}
	if _, err := al.Get(ctx, "h1", "h2", cur.Key); !errors.Is(err, keyalloc.ErrNotFound) {
		t.Errorf("after hand-built release: %v, want ErrNotFound", err)
	}
	if err := al.MarkReady(ctx, cur); !errors.Is(err, keyalloc.ErrStale) {
		t.Errorf("MarkReady of a released record: %v, want ErrStale", err)
	}
}

func next(t *testing.T, ch <-chan keyalloc.Event) keyalloc.Event {
	t.Helper()
	select {
	case ev, ok := <-ch:
		if !ok {
			t.Fatal("watch closed")
		}
		return ev
	case <-time.After(10 * time.Second):
		t.Fatal("no event within 10s")
	}
	panic("unreachable")
}

func TestWatchSenderAndReceiver(t *testing.T) {
	ctx := ctxT(t)
	al := keyalloc.New(client(t), etcdtest.Prefix(t), keyalloc.KeySet{})
	alloc := func(s, d string, src, dst string) keyalloc.Record {
		t.Helper()
		r, err := al.Allocate(ctx, s, d, ip(src), ip(dst), one)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	pre := alloc("h1", "h2", "198.19.1.1", "198.19.2.1")
	sender, err := al.Watch(ctx, keyalloc.Filter{SrcHost: "h1"})
	if err != nil {
		t.Fatal(err)
	}
	receiver, err := al.Watch(ctx, keyalloc.Filter{DstHost: "h2"})
	if err != nil {
		t.Fatal(err)
	}
	for name, ch := range map[string]<-chan keyalloc.Event{"sender": sender, "receiver": receiver} {
		if ev := next(t, ch); ev.Type != keyalloc.EventPut || ev.Value.Key != pre.Key || ev.Value.Src != pre.Src {
			t.Fatalf("%s snapshot: %v %+v", name, ev.Type, ev.Value)
		}
		if ev := next(t, ch); ev.Type != keyalloc.EventSynced {
			t.Fatalf("%s: %v, want synced", name, ev.Type)
		}
	}
	alloc("h3", "h4", "198.19.3.1", "198.19.4.1") // neither side's business
	toH3 := alloc("h1", "h3", "198.19.1.1", "198.19.3.1")
	fromH3 := alloc("h3", "h2", "198.19.3.1", "198.19.2.1")
	r := alloc("h1", "h2", "198.19.1.2", "198.19.2.2")

	if ev := next(t, sender); ev.Value.DstHost != "h3" || ev.Value.Key != toH3.Key {
		t.Fatalf("sender: %v %+v, want h1->h3", ev.Type, ev.Value)
	}
	if ev := next(t, sender); ev.Type != keyalloc.EventPut || ev.Value.Src != r.Src || ev.Value.State != keyalloc.StatePending {
		t.Fatalf("sender: %v %+v, want put of the new pair", ev.Type, ev.Value)
	}
	if ev := next(t, receiver); ev.Value.SrcHost != "h3" || ev.Value.Key != fromH3.Key {
		t.Fatalf("receiver: %v %+v, want h3->h2", ev.Type, ev.Value)
	}
	ev := next(t, receiver)
	if ev.Type != keyalloc.EventPut || ev.Value.Src != r.Src || ev.Value.Dst != r.Dst || ev.Value.Key != r.Key || !ev.Value.Created.Equal(r.Created) {
		t.Fatalf("receiver: %v %+v, want put of %+v", ev.Type, ev.Value, r)
	}
	// The receiver marks ready with what it saw; the sender sees it.
	if err := al.MarkReady(ctx, ev.Value); err != nil {
		t.Fatal(err)
	}
	if ev := next(t, sender); ev.Type != keyalloc.EventPut || ev.Value.Key != r.Key || ev.Value.State != keyalloc.StateReady {
		t.Fatalf("sender: %v %+v, want ready", ev.Type, ev.Value)
	}
	if err := al.Release(ctx, r); err != nil {
		t.Fatal(err)
	}
	for name, ch := range map[string]<-chan keyalloc.Event{"sender": sender, "receiver": receiver} {
		if ev := next(t, ch); ev.Type != keyalloc.EventDelete || ev.Value.Key != r.Key || ev.Value.Src != r.Src {
			t.Fatalf("%s: %v %+v, want delete of key %s", name, ev.Type, ev.Value, r.Key)
		}
	}
	if _, err := al.Watch(ctx, keyalloc.Filter{SrcHost: "a/b"}); err == nil {
		t.Error("Watch with a bad host name accepted")
	}
}

func TestBadRecordsSkipped(t *testing.T) {
	ctx := ctxT(t)
	cli := client(t)
	p := etcdtest.Prefix(t)
	var mu sync.Mutex
	kinds := map[string]int{}
	al := keyalloc.New(cli, p, keys(t, "5-6"), keyalloc.WithBadRecordHandler(func(_ string, err error) {
		mu.Lock()
		defer mu.Unlock()
		kinds[registry.RecordKind(err)]++
	}))
	for k, v := range map[string]string{
		"keys/h1/h2/198.18.0.1/198.18.0.2/5":  "{garbage",
		"keys/h1/h2/5":                        `{"src":"198.19.1.1","dst":"198.19.2.1","state":"pending"}`, // the layout before key triples
		"keys/h1/h2/198.18.0.1/198.18.0.2/99": `{"src":"198.19.1.1","dst":"198.19.2.1","state":"pending"}`,
		"keys/h1/h2/198.18.0.1/198.18.0.2/x":  `{}`,
		"keys/h1/h3/198.18.0.1/198.18.0.2/4":  `{"src":"198.19.1.1","dst":"198.19.2.1","state":"weird"}`,
		"pairs/h2/h1/1.2.3.4-nope":            `{"key":5}`,
	} {
		if _, err := cli.Put(ctx, p+k, v); err != nil {
			t.Fatal(err)
		}
	}
	// The slot under a bad record stays taken.
	r, err := al.Allocate(ctx, "h1", "h2", ip("198.19.1.1"), ip("198.19.2.1"), one)
	if err != nil || r.Key != dscp(6) {
		t.Fatalf("Allocate next to a bad record = %+v, %v; want key 6", r, err)
	}
	if n := al.BadRecords(); n != 4 {
		t.Errorf("BadRecords after Allocate = %d, want 4", n)
	}
	recs, err := al.List(ctx, keyalloc.Filter{SrcHost: "h1"})
	if err != nil || len(recs) != 1 || recs[0].Key != dscp(6) {
		t.Errorf("List = %+v, %v; want only key 6", recs, err)
	}
	if n := al.BadRecords(); n != 9 {
		t.Errorf("BadRecords after List = %d, want 9", n)
	}
	ch, err := al.Watch(ctx, keyalloc.Filter{DstHost: "h2"})
	if err != nil {
		t.Fatal(err)
	}
	if ev := next(t, ch); ev.Type != keyalloc.EventPut || ev.Value.Key != dscp(6) {
		t.Fatalf("receiver snapshot: %v %+v", ev.Type, ev.Value)
	}
	if n := al.BadRecords(); n != 10 {
		t.Errorf("BadRecords after watch snapshot = %d, want 10", n)
	}
	if _, err := al.Get(ctx, "h1", "h2", dscp(5)); !errors.Is(err, keyalloc.ErrBadRecord) {
		t.Errorf("Get of a bad record: %v, want ErrBadRecord", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if kinds[registry.KindKey] != 9 || kinds[registry.KindPair] != 1 || len(kinds) != 2 {
		t.Errorf("handler saw kinds %v, want 9 key and 1 pair", kinds)
	}
}

// BenchmarkAllocate measures allocations of new pairs (each one etcd
// write) against the embedded server, one after another.
func BenchmarkAllocate(b *testing.B) {
	ctx := context.Background()
	al := keyalloc.New(client(b), etcdtest.Prefix(b), keyalloc.KeySet{})
	i := 0
	for b.Loop() {
		src := netip.AddrFrom4([4]byte{198, 19, 1, byte(i % 60)})
		if _, err := al.Allocate(ctx, "h1", fmt.Sprintf("d%d", i/60), src, netip.MustParseAddr("198.19.2.1"), one); err != nil {
			b.Fatal(err)
		}
		i++
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "allocs/s")
}

// BenchmarkAllocateParallel is the same with concurrent callers, each on
// its own host pairs.
func BenchmarkAllocateParallel(b *testing.B) {
	ctx := context.Background()
	al := keyalloc.New(client(b), etcdtest.Prefix(b), keyalloc.KeySet{})
	var mu sync.Mutex
	worker := 0
	b.SetParallelism(4)
	b.RunParallel(func(pb *testing.PB) {
		mu.Lock()
		w := worker
		worker++
		mu.Unlock()
		for i := 0; pb.Next(); i++ {
			src := netip.AddrFrom4([4]byte{198, 19, 1, byte(i % 60)})
			if _, err := al.Allocate(ctx, fmt.Sprintf("s%d", w), fmt.Sprintf("d%d", i/60), src, netip.MustParseAddr("198.19.2.1"), one); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "allocs/s")
}

// countingKV counts the reads an allocator makes.
type countingKV struct {
	clientv3.KV
	gets atomic.Int64
}

func (c *countingKV) Get(ctx context.Context, key string, opts ...clientv3.OpOption) (*clientv3.GetResponse, error) {
	c.gets.Add(1)
	return c.KV.Get(ctx, key, opts...)
}

// An allocator remembers what it read and wrote in a host pair: a pair new
// to it costs one write and no read. What another allocator did meanwhile
// (the same pair allocated, a key taken or freed) is still honoured.
func TestAllocateFromView(t *testing.T) {
	ctx := ctxT(t)
	prefix := etcdtest.Prefix(t)
	cli := client(t)
	kv := &countingKV{KV: cli.KV}
	cli.KV = kv
	al := keyalloc.New(cli, prefix, keys(t, "1-4"))
	other := keyalloc.New(client(t), prefix, keys(t, "1-4"))
	p := func(i int) (netip.Addr, netip.Addr) {
		return netip.AddrFrom4([4]byte{198, 19, 1, byte(i)}), ip("198.19.2.1")
	}

	first, err := al.Allocate(ctx, "h1", "h2", ip("198.19.1.1"), ip("198.19.2.1"), one)
	if err != nil || kv.gets.Load() != 1 {
		t.Fatalf("first Allocate = %+v, %v after %d reads; want 1 read", first, err, kv.gets.Load())
	}
	rev0 := revision(t, cli)
	kv.gets.Store(0)
	src, dst := p(2)
	second, err := al.Allocate(ctx, "h1", "h2", src, dst, one)
	if err != nil || second.Key == first.Key {
		t.Fatalf("second pair = %+v, %v (first has key %s)", second, err, first.Key)
	}
	if g, w := kv.gets.Load(), revision(t, cli)-rev0; g != 0 || w != 1 {
		t.Errorf("a pair new to the allocator's view cost %d reads and %d writes, want 0 and 1", g, w)
	}

	// Another allocator allocates pair 3; asked for it, al returns that
	// record and writes nothing.
	src, dst = p(3)
	theirs, err := other.Allocate(ctx, "h1", "h2", src, dst, one)
	if err != nil {
		t.Fatal(err)
	}
	rev0 = revision(t, cli)
	ours, err := al.Allocate(ctx, "h1", "h2", src, dst, one)
	if err != nil || ours.Key != theirs.Key || ours.CreateRevision != theirs.CreateRevision {
		t.Fatalf("pair allocated by another allocator: got %+v, %v; want %+v", ours, err, theirs)
	}
	if w := revision(t, cli) - rev0; w != 0 {
		t.Errorf("returning another allocator's record wrote %d times", w)
	}

	// Pair 4 takes the last key; the view now has every key used. Freed
	// by another allocator, a key is found again by a read.
	src, dst = p(4)
	last, err := al.Allocate(ctx, "h1", "h2", src, dst, one)
	if err != nil {
		t.Fatal(err)
	}
	src, dst = p(5)
	if _, err := al.Allocate(ctx, "h1", "h2", src, dst, one); !errors.Is(err, keyalloc.ErrKeysExhausted) {
		t.Fatalf("fifth pair with 4 keys: %v, want ErrKeysExhausted", err)
	}
	if err := other.Release(ctx, last); err != nil {
		t.Fatal(err)
	}
	if r, err := al.Allocate(ctx, "h1", "h2", src, dst, one); err != nil || r.Key != last.Key {
		t.Fatalf("after another allocator released key %s: %+v, %v", last.Key, r, err)
	}
}

// With two key addresses a host, one DSCP gives four keys, one per address
// pair; an excluded key is not handed out.
func TestAllocateAddressPairs(t *testing.T) {
	ctx := ctxT(t)
	al := keyalloc.New(client(t), etcdtest.Prefix(t), keys(t, "5"))
	two := keyalloc.Addrs{Src: []netip.Addr{ip("198.18.0.1"), ip("198.18.1.1")}, Dst: []netip.Addr{ip("198.18.0.2"), ip("198.18.1.2")}}
	held := keyalloc.Key{Src: ip("198.18.1.1"), Dst: ip("198.18.1.2"), DSCP: 5}
	got := map[keyalloc.Key]bool{}
	for i := range 3 {
		r, err := al.Allocate(ctx, "h1", "h2", netip.AddrFrom4([4]byte{198, 19, 1, byte(i + 1)}), ip("198.19.2.1"), two, held)
		if err != nil {
			t.Fatalf("pair %d: %v", i, err)
		}
		if got[r.Key] || r.Key == held || r.Key.DSCP != 5 || !slices.Contains(two.Src, r.Key.Src) || !slices.Contains(two.Dst, r.Key.Dst) {
			t.Fatalf("pair %d got key %s (have %v, %s held)", i, r.Key, got, held)
		}
		got[r.Key] = true
	}
	if _, err := al.Allocate(ctx, "h1", "h2", ip("198.19.1.9"), ip("198.19.2.1"), two, held); !errors.Is(err, keyalloc.ErrKeysExhausted) {
		t.Fatalf("fourth pair with the fourth key held: %v, want ErrKeysExhausted", err)
	}
	r, err := al.Allocate(ctx, "h1", "h2", ip("198.19.1.9"), ip("198.19.2.1"), two)
	if err != nil || r.Key != held {
		t.Fatalf("fourth pair, nothing held: %+v, %v; want key %s", r, err, held)
	}
	if got, err := al.Get(ctx, "h1", "h2", held); err != nil || got.Src != r.Src {
		t.Fatalf("Get(%s) = %+v, %v", held, got, err)
	}
}
