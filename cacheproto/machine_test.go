package cacheproto

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/keyroute/keyroute/keyalloc"
)

// One test per way the first build broke (issue "Cache protocol v2"),
// each on the machine alone; the simulator tries them all together.

var (
	t0  = time.Unix(1e9, 0)
	nh  = net.HardwareAddr{2, 0, 0, 0, 0, 2}
	pX  = Pair{netip.MustParseAddr("198.19.0.2"), netip.MustParseAddr("198.19.1.2")}
	pY  = Pair{netip.MustParseAddr("198.19.0.3"), netip.MustParseAddr("198.19.1.3")}
	cfg = Config{Quarantine: time.Second, PendingTimeout: 5 * time.Second, Retry: 300 * time.Millisecond, PuntGrace: time.Second}
)

func at(d time.Duration) time.Time { return t0.Add(d) }

// dk is key DSCP d between the two hosts' one address each.
func dk(d uint8) Key {
	return Key{Src: netip.MustParseAddr("198.18.0.1"), Dst: netip.MustParseAddr("198.18.0.2"), DSCP: d}
}

func rec(p Pair, key uint8, rev int64, state string) keyalloc.Record {
	return keyalloc.Record{SrcHost: "h1", DstHost: "h2", Key: dk(key), Src: p.Src, Dst: p.Dst, State: state, CreateRevision: rev, ModRevision: rev}
}

// synced returns a machine past start-up (started a quarantine before t0)
// with its installs confirmed.
func synced(t *testing.T) *Machine {
	start := t0.Add(-cfg.Quarantine)
	m := New(cfg, start)
	confirm(t, m, m.Start(start, nil, nil, nil, func(netip.Addr) bool { return true }), start)
	m.Reconciled(start)
	return m
}

// confirm answers every Install among effs as confirmed, and returns the
// other effects, including those the answers produced.
func confirm(t *testing.T, m *Machine, effs []Effect, now time.Time) []Effect {
	t.Helper()
	var out []Effect
	for len(effs) > 0 {
		e := effs[0]
		effs = effs[1:]
		if in, ok := e.(Install); ok {
			effs = append(effs, m.Installed(now, in.Gen, true)...)
			continue
		}
		out = append(out, e)
	}
	return out
}

func find[T Effect](effs []Effect) (T, bool) {
	for _, e := range effs {
		if x, ok := e.(T); ok {
			return x, true
		}
	}
	var zero T
	return zero, false
}

// ready brings pair p to the fast path with key k (record revision rev).
func ready(t *testing.T, m *Machine, p Pair, k uint8, rev int64, now time.Time) {
	t.Helper()
	effs := m.Punt(now, p, "h2", nh)
	if _, ok := find[Allocate](effs); !ok {
		t.Fatalf("punt of %v: no Allocate in %v", p, effs)
	}
	confirm(t, m, m.Allocated(now, p, rec(p, k, rev, keyalloc.StatePending), nil), now)
	confirm(t, m, m.SentRecord(now, rec(p, k, rev, keyalloc.StateReady)), now)
	if e, _ := m.Entry(p); e.State != StateReady {
		t.Fatalf("%v: state %v, want ready", p, e.State)
	}
}

// 1. Key reuse raced the sender's eviction: a key is offered to a new pair
// only after the old pair's flow is confirmed gone and the quarantine has
// passed, and only the sender's release frees it.
func TestKeyReusedOnlyAfterConfirmedRemovalAndQuarantine(t *testing.T) {
	m := synced(t)
	ready(t, m, pX, 7, 10, t0)
	effs := m.Detach(at(time.Second), pX.Src)
	in, ok := find[Install](effs)
	if !ok || slices.ContainsFunc(in.Send, func(f FlowSend) bool { return f.Pair == pX }) {
		t.Fatalf("detach: want an install without X's flow, got %v", effs)
	}
	// Y punts before the removal is confirmed: key 7 is excluded.
	effs = m.Punt(at(time.Second), pY, "h2", nh)
	if a, ok := find[Allocate](effs); !ok || !slices.Contains(a.Exclude, dk(7)) {
		t.Fatalf("Y's allocation while X's flow may still be on the switch: %v, want key 7 excluded", effs)
	}
	effs = m.Installed(at(1100*time.Millisecond), in.Gen, true)
	if _, ok := find[Release](effs); ok {
		t.Fatalf("released at the confirmation, before the quarantine: %v", effs)
	}
	if effs = m.Tick(at(2050 * time.Millisecond)); len(effs) != 0 {
		t.Fatalf("before the quarantine ends: %v", effs)
	}
	effs = m.Tick(at(2200 * time.Millisecond))
	r, ok := find[Release](effs)
	if !ok || r.Rec.CreateRevision != 10 {
		t.Fatalf("after the quarantine: %v, want X's record released", effs)
	}
	m.Released(at(2300*time.Millisecond), r.Rec, nil)
	if ks := m.heldKeys("h2"); slices.Contains(ks, dk(7)) {
		t.Errorf("key 7 still held after its release: %v", ks)
	}
}

// 2. A restarted agent served punts before its reconcile: none is served
// until Reconciled, and keys of flows found on the switch stay held.
func TestNoPuntBeforeReconciled(t *testing.T) {
	m := New(cfg, t0)
	egress := map[Pair]EgressFlow{pY: {Peer: "h2", State: StateReady, Key: dk(9)}}
	m.Start(t0, nil, nil, egress, func(netip.Addr) bool { return true })
	if effs := m.Punt(t0, pX, "h2", nh); len(effs) != 0 || m.Count.PuntsUnsynced != 1 {
		t.Fatalf("punt before Reconciled: %v (unsynced %d)", effs, m.Count.PuntsUnsynced)
	}
	m.Reconciled(at(500 * time.Millisecond))
	if effs := m.Punt(at(500*time.Millisecond), pX, "h2", nh); len(effs) != 0 {
		t.Fatalf("punt less than a quarantine after start-up read the switch: %v, want its allocation deferred", effs)
	}
	if _, ok := find[Allocate](m.Tick(at(900 * time.Millisecond))); ok {
		t.Fatal("deferred allocation issued before the quarantine after start-up")
	}
	a, ok := find[Allocate](m.Tick(at(time.Second)))
	if !ok || !slices.Contains(a.Exclude, dk(9)) {
		t.Fatalf("after Reconciled: %+v, want an allocation excluding key 9 (a flow without record, held until the quarantine)", a)
	}
	m.Tick(at(2100 * time.Millisecond))
	if ks := m.heldKeys("h2"); slices.Contains(ks, dk(9)) {
		t.Errorf("key 9 held after the quarantine: %v", ks)
	}
}

// 3. A disconnected switch counted as installed: the receiver marks a
// record ready only after its Restore entry is confirmed.
func TestReadyOnlyAfterConfirmedInstall(t *testing.T) {
	m := synced(t)
	r := rec(pX, 7, 10, keyalloc.StatePending)
	in, ok := find[Install](m.RecvRecord(t0, r))
	if !ok || len(in.Restore) != 1 {
		t.Fatalf("no install of the Restore entry")
	}
	effs := m.Installed(t0, in.Gen, false) // not connected
	if _, ok := find[MarkReady](effs); ok {
		t.Fatal("marked ready after an unconfirmed install")
	}
	effs = m.Tick(at(400 * time.Millisecond)) // retry
	in, ok = find[Install](effs)
	if !ok {
		t.Fatalf("no retry of the install: %v", effs)
	}
	if mr, ok := find[MarkReady](m.Installed(at(500*time.Millisecond), in.Gen, true)); !ok || mr.Rec.CreateRevision != 10 {
		t.Fatalf("confirmed install: want MarkReady of revision 10")
	}
}

// 4. A lost FLOW_REMOVED left a ready record without its flow for good:
// a punt for an entry installed a while ago, or anti-entropy, shows the
// flow is gone, and the key goes through the quarantine; a failed release
// is retried.
func TestLostFlowRemovedIsRepaired(t *testing.T) {
	for _, how := range []string{"punt", "anti-entropy"} {
		t.Run(how, func(t *testing.T) {
			m := synced(t)
			ready(t, m, pX, 7, 10, t0)
			var effs []Effect
			if how == "punt" {
				if effs = m.Punt(at(100*time.Millisecond), pX, "h2", nh); len(effs) != 0 {
					t.Fatalf("a punt just after the install must be ignored, got %v", effs)
				}
				effs = m.Punt(at(3*time.Second), pX, "h2", nh)
			} else {
				effs = m.AntiEntropy(at(3*time.Second), m.Confirmed(), map[Pair]Key{}, []keyalloc.Record{rec(pX, 7, 10, keyalloc.StateReady)}, nil, 20)
			}
			confirm(t, m, effs, at(3*time.Second))
			if _, ok := m.Entry(pX); ok {
				t.Fatalf("entry kept after its flow was found gone")
			}
			effs = m.Tick(at(4100 * time.Millisecond))
			r, ok := find[Release](effs)
			if !ok {
				t.Fatalf("no release after the quarantine: %v", effs)
			}
			m.Released(at(4200*time.Millisecond), r.Rec, errors.New("etcd unavailable"))
			if _, ok := find[Release](m.Tick(at(4600 * time.Millisecond))); !ok {
				t.Fatal("a failed release is not retried")
			}
			if how == "anti-entropy" && m.Count.Repairs["egress_flow_lost"] != 1 {
				t.Errorf("repairs %v, want egress_flow_lost 1", m.Count.Repairs)
			}
		})
	}
}

// 5. A stale FLOW_REMOVED killed a newer entry, and a stale deletion a
// newer Restore entry: both are checked against what they name.
func TestStaleEventsIgnored(t *testing.T) {
	m := synced(t)
	ready(t, m, pX, 7, 10, t0)
	if effs := m.FlowRemoved(t0, pX, dk(8)); len(effs) != 0 || m.Count.StaleFlowRemoved != 1 {
		t.Errorf("FLOW_REMOVED for another key: %v", effs)
	}
	if e, _ := m.Entry(pX); e.State != StateReady {
		t.Errorf("entry %v after a stale FLOW_REMOVED", e.State)
	}
	// Receiver: revision 20 replaced 10; the deletion of 10 arrives late.
	confirm(t, m, m.RecvRecord(t0, rec(pY, 5, 10, keyalloc.StatePending)), t0)
	confirm(t, m, m.RecvRecord(t0, rec(pX, 5, 20, keyalloc.StatePending)), t0)
	m.RecvRecordDeleted(t0, rec(pY, 5, 10, keyalloc.StatePending))
	if r, _, ok := m.Restoring(RecvKey{"h1", dk(5)}); !ok || r.CreateRevision != 20 {
		t.Errorf("Restore for key 5 after a stale deletion: %+v %v, want revision 20", r, ok)
	}
	// And an older record never replaces a newer one or comes back after
	// its deletion.
	m.RecvRecordDeleted(t0, rec(pX, 5, 20, keyalloc.StatePending))
	m.RecvRecord(t0, rec(pY, 5, 10, keyalloc.StatePending))
	if _, _, ok := m.Restoring(RecvKey{"h1", dk(5)}); ok {
		t.Error("a record older than a seen deletion was restored")
	}
}

// 6. Keys leaked: a record the receiver never accepts is given up after
// the pending timeout, through the quarantine, and the pair falls back.
func TestPendingTimeoutFreesKey(t *testing.T) {
	m := synced(t)
	m.Punt(t0, pX, "h2", nh)
	confirm(t, m, m.Allocated(t0, pX, rec(pX, 7, 10, keyalloc.StatePending), nil), t0)
	effs := confirm(t, m, m.Tick(at(5*time.Second)), at(5*time.Second))
	if e, _ := m.Entry(pX); e.State != StateFallback || e.Reason != "not_ready" {
		t.Fatalf("after the pending timeout: %+v, want fallback not_ready", e)
	}
	if _, ok := find[Release](effs); ok {
		t.Fatal("released before the quarantine")
	}
	if r, ok := find[Release](m.Tick(at(6100 * time.Millisecond))); !ok || r.Rec.Key != dk(7) {
		t.Fatal("pending record not released after the quarantine")
	}
}

// 7. Early releases had no quarantine, and a replay could bring back a
// flow whose record was released: a detached sender's key waits for the
// confirmed removal whatever the time, then the quarantine.
func TestNoReleaseWithoutConfirmation(t *testing.T) {
	m := synced(t)
	ready(t, m, pX, 7, 10, t0)
	effs := m.Detach(t0, pX.Src)
	in, _ := find[Install](effs)
	m.Installed(t0, in.Gen, false) // disconnected
	for s := 1; s <= 10; s++ {
		for _, e := range m.Tick(at(time.Duration(s) * time.Second)) {
			if _, ok := e.(Release); ok {
				t.Fatalf("released at %ds while the removal was never confirmed", s)
			}
			if in, ok := e.(Install); ok {
				m.Installed(at(time.Duration(s)*time.Second), in.Gen, false)
			}
		}
	}
	effs = m.Tick(at(11 * time.Second))
	in, _ = find[Install](effs)
	m.Installed(at(11*time.Second), in.Gen, true)
	if _, ok := find[Release](m.Tick(at(12100 * time.Millisecond))); !ok {
		t.Fatal("not released a quarantine after the confirmation")
	}
}

// A record deleted behind the sender's back (an operator, a bug) takes the
// pair off its key at once, and the key stays held through the quarantine.
func TestRecordDeletedElsewhere(t *testing.T) {
	m := synced(t)
	ready(t, m, pX, 7, 10, t0)
	effs := m.SentRecordDeleted(t0, rec(pX, 7, 10, keyalloc.StateReady))
	if _, ok := m.Entry(pX); ok {
		t.Fatal("entry kept after its record was deleted")
	}
	if _, ok := find[Install](effs); !ok {
		t.Fatal("no install removing the flow")
	}
	if a, ok := find[Allocate](m.Punt(t0, pY, "h2", nh)); !ok || !slices.Contains(a.Exclude, dk(7)) {
		t.Fatalf("key 7 not excluded while X's flow may still be on the switch: %+v", a)
	}
	if got := fmt.Sprint(m.Count.Repairs["record_deleted_elsewhere"]); got != "1" {
		t.Errorf("repairs %v", m.Count.Repairs)
	}
}

// A pair that fell back because the keys were exhausted kept its fallback
// entry, and with it stayed on VXLAN, as long as it kept sending, even
// with a key free again (e2e TestRewriteV2KeyReuse): a freed key towards
// its peer drops the entry, so its next packet punts and bootstraps.
func TestExhaustedPairRetriesWhenKeyFreed(t *testing.T) {
	m := synced(t)
	ready(t, m, pX, 7, 10, t0)
	if _, ok := find[Allocate](m.Punt(t0, pY, "h2", nh)); !ok {
		t.Fatal("Y's punt: no Allocate")
	}
	exhausted := fmt.Errorf("one key: %w", keyalloc.ErrKeysExhausted)
	confirm(t, m, m.Allocated(t0, pY, keyalloc.Record{}, exhausted), t0)
	if e, _ := m.Entry(pY); e.State != StateFallback || e.Reason != "keys_exhausted" {
		t.Fatalf("Y: %+v, want fallback keys_exhausted", e)
	}
	// X leaves; its key is freed a quarantine after the confirmed removal.
	confirm(t, m, m.Detach(at(time.Second), pX.Src), at(time.Second))
	if _, ok := m.Entry(pY); !ok {
		t.Fatal("Y's fallback entry dropped while key 7 is still held")
	}
	r, ok := find[Release](confirm(t, m, m.Tick(at(2100*time.Millisecond)), at(2100*time.Millisecond)))
	if !ok {
		t.Fatal("X's key not released after the quarantine")
	}
	effs := m.Released(at(2200*time.Millisecond), r.Rec, nil)
	if _, ok := m.Entry(pY); ok {
		t.Fatal("Y still on its fallback entry after key 7 was freed")
	}
	if in, ok := find[Install](effs); !ok || slices.ContainsFunc(in.Send, func(f FlowSend) bool { return f.Pair == pY }) {
		t.Fatalf("after the release: %v, want an install without Y's fallback flow", effs)
	}
	confirm(t, m, effs, at(2200*time.Millisecond))
	if a, ok := find[Allocate](m.Punt(at(2300*time.Millisecond), pY, "h2", nh)); !ok || len(a.Exclude) != 0 {
		t.Fatalf("Y's next punt: %+v, want an Allocate excluding nothing", a)
	}
	if m.Count.Retried != 1 {
		t.Errorf("retried %d, want 1", m.Count.Retried)
	}
}

// An allocation that ran while a key was being freed, excluding it, comes
// back exhausted: it is tried again rather than falling back.
func TestExhaustedAllocationRetriedAfterFree(t *testing.T) {
	m := synced(t)
	ready(t, m, pX, 7, 10, t0)
	confirm(t, m, m.Detach(t0, pX.Src), t0)
	a, ok := find[Allocate](m.Punt(t0, pY, "h2", nh))
	if !ok || !slices.Contains(a.Exclude, dk(7)) {
		t.Fatalf("Y's allocation while X's key is held: %+v, want 7 excluded", a)
	}
	r, _ := find[Release](m.Tick(at(1100 * time.Millisecond)))
	m.Released(at(1200*time.Millisecond), r.Rec, nil)
	exhausted := fmt.Errorf("one key: %w", keyalloc.ErrKeysExhausted)
	effs := m.Allocated(at(1300*time.Millisecond), pY, keyalloc.Record{}, exhausted)
	if a, ok := find[Allocate](effs); !ok || len(a.Exclude) != 0 {
		t.Fatalf("exhausted answer after key 7 was freed: %v, want a new Allocate excluding nothing", effs)
	}
	if e, _ := m.Entry(pY); e.State != StateAllocating {
		t.Fatalf("Y: %+v, want allocating", e)
	}
	// A second exhausted answer with nothing freed meanwhile falls back.
	confirm(t, m, m.Allocated(at(1400*time.Millisecond), pY, keyalloc.Record{}, exhausted), at(1400*time.Millisecond))
	if e, _ := m.Entry(pY); e.State != StateFallback {
		t.Fatalf("Y: %+v, want fallback", e)
	}
}

// A key freed without this agent seeing it (its watch event lost) is found
// by anti-entropy, which knows the size of the key set.
func TestAntiEntropyFindsFreeKeyForExhaustedPair(t *testing.T) {
	for _, tc := range []struct {
		name  string
		sent  []keyalloc.Record // this host's records, as anti-entropy reads them
		retry bool
	}{
		{"key in use", []keyalloc.Record{rec(pX, 7, 10, keyalloc.StateReady)}, false},
		{"key free", nil, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := cfg
			c.Keys = 1
			start := t0.Add(-c.Quarantine)
			m := New(c, start)
			confirm(t, m, m.Start(start, nil, nil, nil, func(netip.Addr) bool { return true }), start)
			m.Reconciled(start)
			m.Punt(t0, pY, "h2", nh)
			exhausted := fmt.Errorf("one key: %w", keyalloc.ErrKeysExhausted)
			confirm(t, m, m.Allocated(t0, pY, keyalloc.Record{}, exhausted), t0)
			confirm(t, m, m.AntiEntropy(at(time.Second), m.Confirmed(), map[Pair]Key{pY: {}}, tc.sent, nil, 20), at(time.Second))
			e, ok := m.Entry(pY)
			if tc.retry && ok {
				t.Fatalf("Y kept its fallback entry with the only key free: %+v", e)
			}
			if !tc.retry && (!ok || e.State != StateFallback) {
				t.Fatalf("Y with the only key in use: %+v (found %v), want its fallback entry", e, ok)
			}
			if n := m.Count.Repairs["exhausted_key_free"]; (n == 1) != tc.retry {
				t.Errorf("repairs %v", m.Count.Repairs)
			}
		})
	}
}

// The DSCP path check: a pair towards a peer whose path re-marks DSCPs
// gets a fallback with the reason and no key; when the path is lost, keyed
// pairs drain; when it is good again, the fallbacks go and the next punt
// allocates.
func TestDSCPPathFallback(t *testing.T) {
	m := synced(t)
	ready(t, m, pX, 7, 10, t0)
	effs := m.PathLost(at(time.Second), "h2")
	if in, ok := find[Install](effs); !ok || slices.ContainsFunc(in.Send, func(f FlowSend) bool { return f.Pair == pX }) {
		t.Fatalf("path lost: want an install without X's keyed flow, got %v", effs)
	}
	confirm(t, m, effs, at(time.Second))
	effs = m.PuntNoKey(at(time.Second), pY, "h2", "dscp_path")
	if _, ok := find[Allocate](effs); ok {
		t.Fatalf("allocation towards a re-marking path: %v", effs)
	}
	if e, _ := m.Entry(pY); e.State != StateFallback || e.Reason != "dscp_path" || !e.Key.IsZero() {
		t.Fatalf("Y: %+v, want a dscp_path fallback", e)
	}
	if m.Count.Fallbacks["dscp_path"] != 1 {
		t.Errorf("fallbacks %v", m.Count.Fallbacks)
	}
	m.PathOK(at(2*time.Second), "h2", "dscp_path")
	if _, ok := m.Entry(pY); ok {
		t.Fatalf("Y's fallback survived PathOK")
	}
	if _, ok := find[Allocate](m.Punt(at(2*time.Second), pY, "h2", nh)); !ok {
		t.Fatalf("no allocation after the path is good again")
	}
}

// Eviction: with the only key on a quiet pair X, a busy pair Y out of
// keys takes it. X drains like an idle pair (the key is freed only after
// the confirmed removal and the quarantine) and goes to VXLAN at once;
// the freed key is Y's turn alone, not that of another pair out of keys.
func TestEvictionSwapsQuietForBusy(t *testing.T) {
	c := cfg
	c.Eviction = Eviction{On: true, Factor: 2, MinRate: 100, Hold: time.Second, MaxSwaps: 1}
	start := t0.Add(-c.Quarantine)
	m := New(c, start)
	confirm(t, m, m.Start(start, nil, nil, nil, func(netip.Addr) bool { return true }), start)
	m.Reconciled(start)
	pZ := Pair{netip.MustParseAddr("198.19.0.4"), netip.MustParseAddr("198.19.1.4")}
	ready(t, m, pX, 7, 10, t0)
	exhausted := fmt.Errorf("one key: %w", keyalloc.ErrKeysExhausted)
	for _, p := range []Pair{pY, pZ} {
		m.Punt(t0, p, "h2", nh)
		confirm(t, m, m.Allocated(t0, p, keyalloc.Record{}, exhausted), t0)
	}
	// Before Hold, and below Factor, nothing moves.
	confirm(t, m, m.Rates(at(500*time.Millisecond), map[Pair]float64{pX: 10, pY: 1e6, pZ: 500}), at(500*time.Millisecond))
	confirm(t, m, m.Rates(at(2*time.Second), map[Pair]float64{pX: 1e6, pY: 1.5e6, pZ: 500}), at(2*time.Second))
	if m.Count.Swaps != 0 {
		t.Fatalf("%d swaps before Hold or within Factor, want 0", m.Count.Swaps)
	}
	effs := m.Rates(at(3*time.Second), map[Pair]float64{pX: 10, pY: 1e6, pZ: 500})
	if m.Count.Swaps != 1 {
		t.Fatalf("%d swaps, want 1", m.Count.Swaps)
	}
	if e, _ := m.Entry(pX); e.State != StateFallback || e.Reason != ReasonEvicted {
		t.Fatalf("X after the swap: %+v, want fallback %s", e, ReasonEvicted)
	}
	in, ok := find[Install](effs)
	if !ok {
		t.Fatal("swap: no install")
	}
	for _, f := range in.Send {
		if f.Pair == pX && f.State != StateFallback {
			t.Fatalf("X still rewritten with key %s after the swap", f.Key)
		}
	}
	if _, ok := find[Release](confirm(t, m, effs, at(3*time.Second))); ok {
		t.Fatal("key released at once, before the quarantine")
	}
	r, ok := find[Release](confirm(t, m, m.Tick(at(4100*time.Millisecond)), at(4100*time.Millisecond)))
	if !ok || r.Rec.Key != dk(7) {
		t.Fatalf("after the quarantine: %+v, want the release of key 7", r)
	}
	confirm(t, m, m.Released(at(4200*time.Millisecond), r.Rec, nil), at(4200*time.Millisecond))
	// The watch's delete of the same record frees nothing more.
	confirm(t, m, m.SentRecordDeleted(at(4300*time.Millisecond), r.Rec), at(4300*time.Millisecond))
	if _, ok := m.Entry(pY); ok {
		t.Fatal("Y still on its fallback entry after the swap freed key 7")
	}
	if e, ok := m.Entry(pZ); !ok || e.Reason != ReasonExhausted {
		t.Fatalf("Z: %+v, want still on fallback: the freed key is Y's turn", e)
	}
	if e, ok := m.Entry(pX); !ok || e.Reason != ReasonEvicted {
		t.Fatalf("X: %+v, want still on fallback: it does not race Y for its old key", e)
	}
	if _, ok := find[Allocate](m.Punt(at(4400*time.Millisecond), pY, "h2", nh)); !ok {
		t.Fatal("Y's punt after the swap: no Allocate")
	}
}

// Eviction off: a busy pair out of keys stays on VXLAN.
func TestEvictionOff(t *testing.T) {
	m := synced(t)
	ready(t, m, pX, 7, 10, t0)
	m.Punt(t0, pY, "h2", nh)
	confirm(t, m, m.Allocated(t0, pY, keyalloc.Record{}, fmt.Errorf("x: %w", keyalloc.ErrKeysExhausted)), t0)
	confirm(t, m, m.Rates(at(time.Minute), map[Pair]float64{pX: 0, pY: 1e9}), at(time.Minute))
	if e, _ := m.Entry(pX); m.Count.Swaps != 0 || e.State != StateReady {
		t.Fatalf("eviction off: %d swaps, X %v", m.Count.Swaps, e.State)
	}
}

// A peer's host record loses an address: the pair keyed on it drains like
// an idle one (its key freed only after the confirmed removal and the
// quarantine) and punts again; the pair keyed on the address left keeps
// its key; the Restore entry from the lost address goes.
func TestKeysGoneDrainsKeysOnLostAddress(t *testing.T) {
	m := synced(t)
	lost := netip.MustParseAddr("198.18.1.2")
	ready(t, m, pX, 7, 10, t0)
	// pY's record uses the address the peer then drops.
	effs := m.Punt(t0, pY, "h2", nh)
	if _, ok := find[Allocate](effs); !ok {
		t.Fatalf("punt of Y: %v", effs)
	}
	rY := rec(pY, 7, 11, keyalloc.StatePending)
	rY.Key.Dst = lost
	confirm(t, m, m.Allocated(t0, pY, rY, nil), t0)
	rY.State = keyalloc.StateReady
	confirm(t, m, m.SentRecord(t0, rY), t0)
	if e, _ := m.Entry(pY); e.State != StateReady || e.Key.Dst != lost {
		t.Fatalf("Y: %+v, want ready on %s", e, lost)
	}
	// A Restore entry from the peer's lost address.
	back := keyalloc.Record{SrcHost: "h2", DstHost: "h1", Key: Key{Src: lost, Dst: netip.MustParseAddr("198.18.0.1"), DSCP: 9},
		Src: pY.Dst, Dst: pY.Src, State: keyalloc.StatePending, CreateRevision: 12, ModRevision: 12}
	confirm(t, m, m.RecvRecord(t0, back), t0)
	if _, _, ok := m.Restoring(RecvKey{"h2", back.Key}); !ok {
		t.Fatal("no Restore entry for the record from the lost address")
	}

	valid := func(k Key) bool { return k.Dst != lost && k.Src != lost }
	effs = m.KeysGone(at(100*time.Millisecond), "h2", valid)
	if e, ok := m.Entry(pX); !ok || e.State != StateReady {
		t.Errorf("X on the address left: %+v, want still ready", e)
	}
	if e, ok := m.Entry(pY); ok {
		t.Errorf("Y still has an entry after its key's address went: %+v", e)
	}
	if _, _, ok := m.Restoring(RecvKey{"h2", back.Key}); ok {
		t.Error("Restore entry from the lost address still desired")
	}
	if !slices.Contains(m.heldKeys("h2"), rY.Key) {
		t.Errorf("Y's key %s not held while it drains: %v", rY.Key, m.heldKeys("h2"))
	}
	// Released only after the confirmed removal and the quarantine.
	confirm(t, m, effs, at(100*time.Millisecond))
	if _, ok := find[Release](m.Tick(at(600 * time.Millisecond))); ok {
		t.Fatal("Y's key released before the quarantine")
	}
	r, ok := find[Release](m.Tick(at(1200 * time.Millisecond)))
	if !ok || r.Rec.Key != rY.Key {
		t.Fatalf("after the quarantine: %v, want Y's record released", r)
	}
}

// A pair's record read back on an address that is gone is not used: it
// is held and released through the quarantine, the pair falls back.
func TestAllocatedOnGoneAddressGivenUp(t *testing.T) {
	c := cfg
	c.ValidKey = func(_ string, k Key) bool { return k.Dst != netip.MustParseAddr("198.18.1.2") }
	start := t0.Add(-c.Quarantine)
	m := New(c, start)
	confirm(t, m, m.Start(start, nil, nil, nil, func(netip.Addr) bool { return true }), start)
	m.Reconciled(start)
	if _, ok := find[Allocate](m.Punt(t0, pX, "h2", nh)); !ok {
		t.Fatal("no Allocate")
	}
	r := rec(pX, 7, 10, keyalloc.StateReady)
	r.Key.Dst = netip.MustParseAddr("198.18.1.2")
	confirm(t, m, m.Allocated(t0, pX, r, nil), t0)
	if e, _ := m.Entry(pX); e.State != StateFallback || e.Reason != "address_gone" {
		t.Fatalf("X: %+v, want a fallback for address_gone", e)
	}
	if rel, ok := find[Release](m.Tick(at(1100 * time.Millisecond))); !ok || rel.Rec.Key != r.Key {
		t.Fatalf("after the quarantine: %v, want the record released", rel)
	}
}
