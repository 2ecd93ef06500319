package e2e

// Cache protocol v2 end to end (DESIGN.md "Cache protocol v2: no
// misdelivery by construction"): the failure cases of the first key
// protocol, replayed on real OVS with tagged UDP streams (churnTraffic,
// rewrite_churn_test.go: every datagram names its sender and intended
// receiver, and a datagram that reaches another container is counted as
// misdelivered). Each test asserts zero misdeliveries and that the pairs
// recover within a stated bound, measured and logged.
//
//	1. key reuse:            TestRewriteV2KeyReuse
//	3. OVS restart:          TestRewriteV2OVSRestart
//	4. FLOW_REMOVED lost:    TestRewriteV2FlowRemovedLost
//	6. key leak:             TestRewriteV2KeyLeak

import (
	"fmt"
	"maps"
	"net"
	"net/netip"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/keyroute/keyroute/keyalloc"
	"github.com/keyroute/keyroute/simcluster"
	"github.com/keyroute/keyroute/simhost"
)

const (
	// v2Tick is the send interval of every tagged stream: a few pairs at
	// 50 datagrams/s each, modest on a loaded 2-core machine.
	v2Tick = 20 * time.Millisecond
	// The timing the tests configure (agent/config.go cache.*).
	v2SendIdle   = 2 * time.Second
	v2Quarantine = time.Second
	// v2Poll spaces the polls of OVS and etcd (each runs ovs-ofctl).
	v2Poll = 100 * time.Millisecond
)

// rwCache sets every agent's cache options (agent/config.go CacheConfig),
// e.g. {"keys": "7", "send_idle": "2s"}.
func rwCache(opts map[string]any) func(int, map[string]any) {
	return func(_ int, cfg map[string]any) { cfg["cache"] = maps.Clone(opts) }
}

// paced returns cond, called at most once every d (the caller's poll may
// be faster).
func paced(d time.Duration, cond func() error) func() error {
	var last time.Time
	return func() error {
		if wait := d - time.Since(last); wait > 0 {
			time.Sleep(wait)
		}
		last = time.Now()
		return cond()
	}
}

// v2Env is what a v2 test polls: its cluster and etcd.
type v2Env struct {
	t  *testing.T
	cl *simcluster.Cluster
	st *rwStore
}

// v2Up starts a two-host rewrite cluster and its key store.
func v2Up(t *testing.T, opts simcluster.Options) (e *v2Env, h1, h2 *simcluster.Host) {
	t.Helper()
	cl := rwCluster(t, opts)
	return &v2Env{t, cl, rwEtcd(t, cl)}, cl.Host(1), cl.Host(2)
}

// attach4 attaches c1 and c3 to h1, c2 and c4 to h2.
func (e *v2Env) attach4() (c1, c3, c2, c4 *simcluster.Container) {
	e.t.Helper()
	on1 := rwAttach(e.t, e.cl, 1, "c1", "c3")
	on2 := rwAttach(e.t, e.cl, 2, "c2", "c4")
	return on1[0], on1[1], on2[0], on2[1]
}

// within polls cond until it holds and fails the test unless it held
// within bound of from; it returns how long after from it held. On
// failure it logs the key records and every host's cache.
func (e *v2Env) within(what string, from time.Time, bound time.Duration, cond func() error) time.Duration {
	e.t.Helper()
	if err := simhost.WaitFor(max(time.Until(from.Add(bound)), 0), paced(v2Poll, cond)); err != nil {
		e.dump()
		e.t.Fatalf("%s: not within %s: %v", what, bound, err)
	}
	d := time.Since(from)
	e.t.Logf("%s after %s (bound %s)", what, d.Round(10*time.Millisecond), bound)
	return d
}

// holds checks cond every v2Poll for d and fails the test the first time
// it does not hold.
func (e *v2Env) holds(what string, d time.Duration, cond func() error) {
	e.t.Helper()
	for end := time.Now().Add(d); time.Now().Before(end); time.Sleep(v2Poll) {
		if err := cond(); err != nil {
			e.dump()
			e.t.Fatalf("%s: %v", what, err)
		}
	}
}

// dump logs the key records in etcd and each host's view of its cache.
func (e *v2Env) dump() {
	e.t.Helper()
	var b strings.Builder
	for _, r := range e.st.records(e.t) {
		fmt.Fprintf(&b, "  etcd: %s->%s key %d %s->%s %s (create revision %d)\n", r.SrcHost, r.DstHost, r.Key.DSCP, r.Src, r.Dst, r.State, r.CreateRevision)
	}
	for _, h := range e.cl.Hosts() {
		if h.AgentPID() == 0 {
			continue
		}
		out, err := h.Ctl("cache")
		fmt.Fprintf(&b, "  %s keyroutectl cache (%v):\n%s", h.Name, err, out)
		for _, f := range rwFlows(e.t, h, false) {
			fmt.Fprintf(&b, "  %s OVS: %s\n", h.Name, f)
		}
	}
	e.t.Logf("state:\n%s", b.String())
}

// rwFastErr says why src→dst is not on the fast path (nil if it is): its
// etcd record is ready and src's host has a ready EgressCache entry with
// its key.
func rwFastErr(t *testing.T, st *rwStore, src, dst *simcluster.Container) (keyalloc.Record, error) {
	t.Helper()
	r, ok := st.record(t, src, dst)
	if !ok {
		return r, fmt.Errorf("no key record for %s->%s in etcd", src.Name, dst.Name)
	}
	if r.State != keyalloc.StateReady {
		return r, fmt.Errorf("record of %s->%s (key %d) is %s", src.Name, dst.Name, r.Key.DSCP, r.State)
	}
	f, ok := rwFind(rwFlows(t, src.Host, false), "egress", src.IP, dst.IP)
	if !ok || f.State != "ready" || f.Key != r.Key.DSCP {
		return r, fmt.Errorf("%s: egress entry of %s->%s is %v, record has key %d", src.Host.Name, src.Name, dst.Name, f, r.Key.DSCP)
	}
	return r, nil
}

// rwEgress returns src's host's EgressCache entry for src→dst.
func rwEgress(t *testing.T, src, dst *simcluster.Container) (rwFlow, bool) {
	t.Helper()
	return rwFind(rwFlows(t, src.Host, false), "egress", src.IP, dst.IP)
}

// v2Fallback waits until src→dst has a fallback EgressCache entry and no
// key record.
func (e *v2Env) fallback(src, dst *simcluster.Container, bound time.Duration) {
	e.t.Helper()
	t, st := e.t, e.st
	e.within(fmt.Sprintf("%s->%s on its fallback entry (keys exhausted)", src.Name, dst.Name), time.Now(), bound, func() error {
		if r, ok := st.record(t, src, dst); ok {
			return fmt.Errorf("%s->%s has key record %d", src.Name, dst.Name, r.Key.DSCP)
		}
		if f, ok := rwEgress(t, src, dst); !ok || f.State != "fallback" {
			return fmt.Errorf("egress entry of %s->%s is %v (found %v), want fallback", src.Name, dst.Name, f, ok)
		}
		return nil
	})
}

// v2Delivering waits until pair (i, j) of ct has delivered n more
// datagrams than now.
func v2Delivering(t *testing.T, ct *churnTraffic, i, j, n int, bound time.Duration) {
	t.Helper()
	n0 := ct.delivered(i, j)
	err := simhost.WaitFor(bound, func() error {
		if got := ct.delivered(i, j) - n0; got < n {
			return fmt.Errorf("%s->%s delivered %d of %d datagrams", ct.send[i].Name, ct.recv[j].Name, got, n)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// v2Traffic is newTaggedTraffic at v2Tick; a test that fails before
// v2Report still logs the misdeliveries found until then.
func v2Traffic(t *testing.T, send, recv []*simcluster.Container) *churnTraffic {
	t.Helper()
	ct := newTaggedTraffic(t, send, recv, v2Tick)
	t.Cleanup(func() {
		if n, bad := ct.misdelivered(); t.Failed() && n > 0 {
			t.Logf("%d datagrams misdelivered before the failure; first ones:\n%s", n, rwJoinLines(bad))
		}
	})
	return ct
}

// v2Report stops ct, fails t on any misdelivery and logs every pair's
// figures: sent, delivered, longest gap between deliveries.
func v2Report(t *testing.T, ct *churnTraffic) {
	t.Helper()
	ct.finish()
	sent, got := ct.totals()
	ct.mu.Lock()
	for i := range sent {
		for j := range sent[i] {
			if sent[i][j] > 0 {
				t.Logf("%s->%s: %d datagrams sent, %d delivered, longest gap between deliveries %s",
					ct.send[i].Name, ct.recv[j].Name, sent[i][j], got[i][j], ct.maxGap[i][j].Round(time.Millisecond))
			}
		}
	}
	sendErrs := ct.sendErrs
	ct.mu.Unlock()
	n, bad := ct.misdelivered()
	t.Logf("misdelivered: %d; send errors (a detached sender): %d", n, sendErrs)
	if n > 0 {
		t.Errorf("%d datagrams reached a container they were not meant for; first ones:\n%s", n, rwJoinLines(bad))
	}
}

// v2Wire captures h1's fabric port until pair (i, j) of ct has delivered
// n more datagrams and returns the packets of src→dst (UDP to churnPort
// rewritten between the hosts, or VXLAN whose inner packet is src→dst).
func v2Wire(t *testing.T, cl *simcluster.Cluster, ct *churnTraffic, i, j, n int) (rewritten, vxlan []simcluster.CapturedPacket) {
	t.Helper()
	src, dst := ct.send[i], ct.recv[j]
	pkts, err := cl.CaptureDuring(cl.Fabric, src.Host.Name, fmt.Sprintf("udp port %d or udp port %d", churnPort, cl.VXLANPort), func() error {
		v2Delivering(t, ct, i, j, n, 10*time.Second)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range pkts {
		switch {
		case p.VXLAN && p.Inner != nil && p.Inner.Src == src.IP && p.Inner.Dst == dst.IP:
			vxlan = append(vxlan, p)
		case !p.VXLAN && p.Src == src.Host.IP && p.Dst == dst.Host.IP && p.DstPort == churnPort:
			rewritten = append(rewritten, p)
		}
	}
	return rewritten, vxlan
}

// ===================================================================
// 1. Key reuse.

// One key between h1 and h2: A = c1@h1→c2@h2 has it, B = c3@h1→c4@h2
// falls back (keys exhausted); both stream. c1 is detached: A's key is
// freed (A's flow removed, confirmed, quarantine, record deleted, h2's
// Restore entry with it) and B, still streaming, takes it — without a
// single datagram of B reaching c2 and within keyReuseBound of the
// detach. Then the other side: c1 comes back (A falls back, B holds the
// key) and B's receiver c4 is detached. In v2 only the sender frees a key,
// so B keeps key 7 while c3 sends (h2 restores it towards an address with
// no port, where it is dropped, or drops the entry once its anti-entropy
// finds that the record no longer checks); once c3 stops, h1's entry idles out after send_idle
// and the key is freed a quarantine later, and A, streaming all along,
// takes it.
func TestRewriteV2KeyReuse(t *testing.T) {
	// From a detach to the fast path of the pair that waited: removal
	// confirmed (~ms), quarantine (1 s), release, B's punt, allocation,
	// h2's Restore install and mark (~ms each). 10 s leaves room for a
	// loaded machine.
	const keyReuseBound = 10 * time.Second
	// From a sender's last datagram to its key's release: send_idle, the
	// FLOW_REMOVED, the quarantine, the etcd delete; plus 4 s of slack.
	const releaseBound = v2SendIdle + v2Quarantine + 4*time.Second
	e, h1, h2 := v2Up(t, simcluster.Options{AgentConfig: rwCache(map[string]any{"keys": "7", "send_idle": "2s", "quarantine": "1s"})})
	cl, st := e.cl, e.st
	c1, c3, c2, c4 := e.attach4()
	ct := v2Traffic(t, []*simcluster.Container{c1, c3}, []*simcluster.Container{c2, c4})
	const a, b = 0, 1 // sender/receiver indexes of A (c1->c2) and B (c3->c4)

	ct.phase.Store(1)
	ct.started[a][a].Store(true)
	recA := rwWaitFast(t, st, c1, c2, 10*time.Second)
	if recA.Key.DSCP != 7 {
		t.Fatalf("A has key %d, want 7 (the only key)", recA.Key.DSCP)
	}
	ct.started[b][b].Store(true)
	e.fallback(c3, c4, 10*time.Second)
	v2Delivering(t, ct, b, b, 25, 10*time.Second) // B works over VXLAN

	// Round 1: the sender of the pair holding the key goes away.
	ct.phase.Store(2)
	detached := time.Now()
	if err := cl.Detach(c1); err != nil {
		t.Fatal(err)
	}
	ct.paused[a].Store(true) // its socket has no interface left
	var recB keyalloc.Record
	e.within("round 1: B (c3->c4) on the fast path with the freed key, from c1's detach", detached, keyReuseBound, func() error {
		r, err := rwFastErr(t, st, c3, c4)
		recB = r
		return err
	})
	if recB.Key.DSCP != 7 {
		t.Errorf("B's key is %d, want 7", recB.Key.DSCP)
	}
	if recB.CreateRevision <= recA.CreateRevision {
		t.Errorf("B's record has create revision %d, not after A's %d", recB.CreateRevision, recA.CreateRevision)
	}
	if _, ok := st.record(t, c1, c2); ok {
		t.Errorf("A's record is still in etcd after B took its key")
	}
	rw, vx := v2Wire(t, cl, ct, b, b, 20)
	t.Logf("round 1 wire, B: %d rewritten (%s), %d VXLAN", len(rw), simcluster.CountPaths(rw), len(vx))
	if len(rw) < 10 || len(vx) != 0 {
		t.Errorf("B on the wire after taking the key: %d rewritten, %d VXLAN; want >= 10 rewritten and no VXLAN:\n%s", len(rw), len(vx), rwDump(append(rw, vx...)))
	}
	for _, p := range rw {
		if p.DSCP != 7 {
			t.Errorf("B rewritten with DSCP %d, want 7: %s", p.DSCP, p)
		}
	}
	if r, ok := rwFind(rwFlows(t, h2, false), "restore", c3.IP, c4.IP); !ok || r.Key != 7 || r.Peer != h1.IP {
		t.Errorf("h2's Restore entry for B: %v (found %v), want key 7 from %s", r, ok, h1.IP)
	}
	rwCheckKeyAgreement(t, h1, h2)

	// Round 2: c1 is back (A falls back: B holds the key), then the
	// receiver of the pair holding the key goes away.
	ct.phase.Store(3)
	c1, err := cl.Attach(1, "c1", c1.IP.String())
	if err != nil {
		t.Fatal(err)
	}
	ct.resend(c1)
	ct.paused[a].Store(false)
	e.fallback(c1, c2, 10*time.Second)
	v2Delivering(t, ct, a, a, 25, 10*time.Second)
	c4IP := c4.IP
	if err := cl.Detach(c4); err != nil {
		t.Fatal(err)
	}
	// v2: the receiver never frees a key. While c3 sends, B keeps its
	// record and h1 its ready entry, and A stays on VXLAN. h2 restores
	// key 7 as B (towards an address without a port: dropped) or, once
	// its anti-entropy has found the record no longer checks (c4 is not
	// here), not at all — never as anything else.
	var restoring, polls int
	e.holds("round 2: B keeps its key while c3 sends to the detached c4", 3*time.Second, func() error {
		polls++
		if r, err := rwFastErr(t, st, c3, c4); err != nil || r.CreateRevision != recB.CreateRevision {
			return fmt.Errorf("B left its record (create revision %d, now %d): %v", recB.CreateRevision, r.CreateRevision, err)
		}
		for _, r := range rwFlows(t, h2, false) {
			if r.Side == "restore" && r.Peer == h1.IP && r.Key == 7 {
				if r.Src != c3.IP || r.Dst != c4IP {
					return fmt.Errorf("h2 restores key 7 from h1 as %s->%s while B holds it", r.Src, r.Dst)
				}
				restoring++
			}
		}
		if f, ok := rwEgress(t, c1, c2); !ok || f.State != "fallback" {
			return fmt.Errorf("A's egress entry is %v (found %v), want fallback", f, ok)
		}
		return nil
	})
	t.Logf("round 2: h2 restored key 7 as B in %d of %d polls after c4's detach", restoring, polls)
	ct.paused[b].Store(true)
	quiet := time.Now()
	// The entry went between the last read that saw it (from that read's
	// start) and the first that did not, so the gap between it and the
	// record's deletion is at most recordGone - lastEgress: below the
	// quarantine only if the agent freed the key early, however slowly
	// a loaded machine polls.
	var egressGone, lastEgress time.Duration
	recordGone := e.within("round 2: B's key released after c3 stopped", quiet, releaseBound, func() error {
		start := time.Since(quiet)
		_, egress := rwEgress(t, c3, c4)
		if egress {
			lastEgress = start
		} else if egressGone == 0 {
			egressGone = start
		}
		if _, ok := st.record(t, c3, c4); ok {
			return fmt.Errorf("B's record still in etcd (egress entry on h1: %v)", egress)
		}
		if egress {
			t.Errorf("B's record left etcd while h1 still had its egress entry")
		}
		return nil
	})
	t.Logf("round 2: B's egress entry last seen %s and gone %s after c3 stopped (send_idle %s), its record gone %s after (quarantine %s)",
		lastEgress.Round(10*time.Millisecond), egressGone.Round(10*time.Millisecond), v2SendIdle, recordGone.Round(10*time.Millisecond), v2Quarantine)
	if lastEgress > 0 && recordGone-lastEgress < v2Quarantine {
		t.Errorf("B's key freed at most %s after its egress entry went, want the quarantine (%s) at least", recordGone-lastEgress, v2Quarantine)
	}
	e.within("round 2: A (c1->c2) on the fast path with the freed key, from c3's last datagram", quiet, releaseBound+keyReuseBound, func() error {
		_, err := rwFastErr(t, st, c1, c2)
		return err
	})
	v2Delivering(t, ct, a, a, 25, 10*time.Second)
	rwCheckKeyAgreement(t, h1, h2)
	v2Report(t, ct)
}

// ===================================================================
// 3. OVS restart on the receiver.

// With A = c1@h1→c2@h2 and its reverse R = c2→c1 on the fast path (key 7
// each way, the only key) and B = c3@h1→c4@h2 on VXLAN, all streaming,
// h2's ovs-vswitchd is restarted: h2 loses every flow — A's Restore
// entry, R's egress entry, B's delivery — and its agent reconnects and
// replays. No datagram may reach a wrong container, and within
// ovsRestartBound of the restart every pair delivers again, A and R on
// the fast path with key 7 (on the wire too).
func TestRewriteV2OVSRestart(t *testing.T) {
	// The restart itself (stop, start, host IP back on br-phy) takes a
	// second or two; then the agent's reconnect (backoff up to a few s)
	// and replay, and anti-entropy right after it.
	const ovsRestartBound = 20 * time.Second
	e, h1, h2 := v2Up(t, simcluster.Options{AgentConfig: rwCache(map[string]any{"keys": "7", "send_idle": "2s", "quarantine": "1s"})})
	cl, st := e.cl, e.st
	c1, c3, c2, c4 := e.attach4()
	// Senders c1, c2, c3; receivers c2, c1, c4.
	ct := v2Traffic(t, []*simcluster.Container{c1, c2, c3}, []*simcluster.Container{c2, c1, c4})
	ct.phase.Store(1)
	ct.started[0][0].Store(true) // A
	ct.started[1][1].Store(true) // R
	recA := rwWaitFast(t, st, c1, c2, 10*time.Second)
	recR := rwWaitFast(t, st, c2, c1, 10*time.Second)
	ct.started[2][2].Store(true) // B
	e.fallback(c3, c4, 10*time.Second)
	for i := range 3 {
		v2Delivering(t, ct, i, i, 25, 10*time.Second)
	}

	ct.phase.Store(2)
	replays := len(v2Replays(t, h2, "br-int"))
	restarted := time.Now()
	if err := h2.RestartVswitchd(ovsRestartBound); err != nil {
		t.Fatal(err)
	}
	t.Logf("h2's ovs-vswitchd restarted, agent reconnected after %s", time.Since(restarted).Round(10*time.Millisecond))
	n0 := make([]int, 3)
	for i := range 3 {
		n0[i] = ct.delivered(i, i)
	}
	e.within("every pair delivering again, A and R on the fast path, from the restart", restarted, ovsRestartBound, func() error {
		for i := range 3 {
			if ct.delivered(i, i) < n0[i]+10 {
				return fmt.Errorf("%s->%s not delivering yet", ct.send[i].Name, ct.recv[i].Name)
			}
		}
		if _, err := rwFastErr(t, st, c1, c2); err != nil {
			return err
		}
		if _, err := rwFastErr(t, st, c2, c1); err != nil {
			return err
		}
		if r, ok := rwFind(rwFlows(t, h2, false), "restore", c1.IP, c2.IP); !ok || r.Key != 7 {
			return fmt.Errorf("h2's Restore entry for A is %v (found %v)", r, ok)
		}
		return nil
	})
	// The flows were lost: the agent's replay after the reconnect had to
	// add them back (it adds only what is missing).
	if added := v2Replays(t, h2, "br-int")[replays:]; len(added) == 0 || added[0] == 0 {
		t.Errorf("h2's agent log: replays of br-int after the restart added %v flows, want a replay that added the lost ones", added)
	} else {
		t.Logf("h2's agent replayed %d flows onto br-int after the restart", added[0])
	}
	for _, p := range []struct {
		name     string
		rec      keyalloc.Record
		src, dst *simcluster.Container
	}{{"A", recA, c1, c2}, {"R", recR, c2, c1}} {
		r, _ := st.record(t, p.src, p.dst)
		t.Logf("%s after the restart: key %d, create revision %d (before: key %d, revision %d; same record: %v)",
			p.name, r.Key.DSCP, r.CreateRevision, p.rec.Key.DSCP, p.rec.CreateRevision, r.CreateRevision == p.rec.CreateRevision)
	}
	rw, vx := v2Wire(t, cl, ct, 0, 0, 20)
	if len(rw) < 10 || len(vx) != 0 {
		t.Errorf("A on the wire after the restart: %d rewritten, %d VXLAN; want >= 10 rewritten and no VXLAN", len(rw), len(vx))
	}
	rwCheckKeyAgreement(t, h1, h2)
	rwCheckKeyAgreement(t, h2, h1)
	m2 := rwMetrics(t, h2)
	t.Logf("h2 repairs after the restart: egress_flow_lost %v, restore_missing %v, punt_after_install %v",
		rwMetric(m2, "keyroute_cache_repairs_total", `kind="egress_flow_lost"`),
		rwMetric(m2, "keyroute_cache_repairs_total", `kind="restore_missing"`),
		rwMetric(m2, "keyroute_cache_repairs_total", `kind="punt_after_install"`))
	v2Report(t, ct)
}

var v2ReplayRE = regexp.MustCompile(`msg="replayed desired flows" switch=\S*/([a-z-]+)\.mgmt added=(\d+)`)

// v2Replays returns how many flows each of the agent's replays onto
// bridge added, from its log (controller/desired.go), oldest first.
func v2Replays(t *testing.T, h *simcluster.Host, bridge string) []int {
	t.Helper()
	b, err := os.ReadFile(h.LogPath)
	if err != nil {
		t.Fatal(err)
	}
	var out []int
	for _, m := range v2ReplayRE.FindAllStringSubmatch(string(b), -1) {
		if m[1] == bridge {
			n, _ := strconv.Atoi(m[2])
			out = append(out, n)
		}
	}
	return out
}

// ===================================================================
// 4. FLOW_REMOVED lost.

// A = c1@h1→c2@h2 and B = c3@h1→c4@h2 stream on the fast path (keys 7
// and 8). h1's agent is killed, A stops sending, and A's egress entry
// idles out with nobody to hear its FLOW_REMOVED. The restarted agent
// finds A's record without a flow: it must release it through the
// quarantine (repairs{kind="record_without_flow"}), keep B's entry
// (adopted), and A, sending again from the restart on, must reach the
// fast path again — no datagram reaching a wrong container throughout.
func TestRewriteV2FlowRemovedLost(t *testing.T) {
	// From the agent being ready: the start-up reconcile, the quarantine,
	// the etcd delete; 4 s of slack.
	const releaseBound = v2Quarantine + 4*time.Second
	// From the agent being ready to A on the fast path: the release, then
	// A's next punt, allocation, h2's install and mark.
	const fastBound = releaseBound + 6*time.Second
	e, h1, h2 := v2Up(t, simcluster.Options{ExternalEtcd: true, AgentConfig: rwCache(map[string]any{"keys": "7,8", "send_idle": "2s", "quarantine": "1s"})})
	st := e.st
	c1, c3, c2, c4 := e.attach4()
	ct := v2Traffic(t, []*simcluster.Container{c1, c3}, []*simcluster.Container{c2, c4})
	const a, b = 0, 1
	ct.phase.Store(1)
	ct.started[a][a].Store(true)
	ct.started[b][b].Store(true)
	recA := rwWaitFast(t, st, c1, c2, 10*time.Second)
	recB := rwWaitFast(t, st, c3, c4, 10*time.Second)
	t.Logf("A has key %d, B key %d", recA.Key.DSCP, recB.Key.DSCP)

	ct.phase.Store(2)
	if err := h1.KillAgent(); err != nil {
		t.Fatal(err)
	}
	ct.paused[a].Store(true)
	stopped := time.Now()
	e.within("A's egress entry idled out on h1 with its agent down", stopped, v2SendIdle+5*time.Second, func() error {
		if f, ok := rwEgress(t, c1, c2); ok {
			return fmt.Errorf("A's egress entry is still on h1: %v", f)
		}
		return nil
	})
	if r, ok := st.record(t, c1, c2); !ok || r.CreateRevision != recA.CreateRevision {
		t.Fatalf("A's record with h1's agent down: %+v (found %v), want the one of before the kill", r, ok)
	}
	if f, ok := rwEgress(t, c3, c4); !ok || f.State != "ready" {
		t.Fatalf("B's egress entry with h1's agent down: %v (found %v), want ready", f, ok)
	}

	ct.phase.Store(3)
	if err := h1.StartAgent(); err != nil {
		t.Fatal(err)
	}
	ready := time.Now()
	ct.paused[a].Store(false)
	var gone time.Duration
	e.within("A's stale record released and A on the fast path again, from the agent's restart", ready, fastBound, func() error {
		r, ok := st.record(t, c1, c2)
		if gone == 0 && (!ok || r.CreateRevision != recA.CreateRevision) {
			gone = time.Since(ready)
		}
		if gone == 0 {
			return fmt.Errorf("A's stale record (create revision %d) still in etcd", recA.CreateRevision)
		}
		_, err := rwFastErr(t, st, c1, c2)
		return err
	})
	t.Logf("A's stale record went %s after the agent was ready (bound %s)", gone.Round(10*time.Millisecond), releaseBound)
	if gone > releaseBound {
		t.Errorf("A's stale record released %s after the restart, want within %s", gone, releaseBound)
	}
	if r, _ := st.record(t, c3, c4); r.CreateRevision != recB.CreateRevision {
		t.Errorf("B's record changed across h1's agent restart: create revision %d, before %d", r.CreateRevision, recB.CreateRevision)
	}
	v2Delivering(t, ct, a, a, 25, 10*time.Second)
	rwCheckKeyAgreement(t, h1, h2)
	m1 := rwMetrics(t, h1)
	rwf, adopted := rwMetric(m1, "keyroute_cache_repairs_total", `kind="record_without_flow"`), rwMetric(m1, "keyroute_cache_repairs_total", `kind="adopted"`)
	t.Logf("h1 repairs after the restart: record_without_flow %v, adopted %v", rwf, adopted)
	if rwf < 1 {
		t.Errorf(`h1 keyroute_cache_repairs_total{kind="record_without_flow"} is %v, want >= 1`, rwf)
	}
	if adopted < 1 {
		t.Errorf(`h1 keyroute_cache_repairs_total{kind="adopted"} is %v, want >= 1 (B's entry)`, adopted)
	}
	v2Report(t, ct)
}

// ===================================================================
// 6. Key leak.

// Two keys between h1 and h2; c1@h1 sends a tagged datagram to each of 10
// addresses of h2's pod subnet that no container has. The first two take
// both keys, records h2 never marks ready (it has no such container);
// the rest fall back. Within pending_timeout the sender gives the two up,
// and a quarantine later their keys are free: c1→c2, streaming from the
// moment both keys were taken, must reach the fast path within
// pending_timeout + quarantine + slack of the probes, no record for an
// unused address may remain after that, and none of the probes may reach
// c2.
func TestRewriteV2KeyLeak(t *testing.T) {
	const pendingTimeout = 2 * time.Second
	const leakBound = pendingTimeout + v2Quarantine + 5*time.Second
	// send_idle well above pending_timeout: the unused addresses' pending
	// entries must be given up by the timeout, not by idling out first
	// (either frees the key; only the timeout counts not_ready).
	e, h1, h2 := v2Up(t, simcluster.Options{AgentConfig: rwCache(map[string]any{"keys": "7,8", "send_idle": "4s", "quarantine": "1s", "pending_timeout": "2s"})})
	cl, st := e.cl, e.st
	c1, c2 := rwAttach(t, cl, 1, "c1")[0], rwAttach(t, cl, 2, "c2")[0]
	ct := v2Traffic(t, []*simcluster.Container{c1}, []*simcluster.Container{c2})

	// Ten unused addresses in c2's /24 (h2's pod subnet), high enough to
	// be clear of the containers and the gateway.
	base := c2.IP.As4()
	var ghosts []netip.Addr
	for i := range 10 {
		g := netip.AddrFrom4([4]byte{base[0], base[1], base[2], byte(200 + i)})
		if g == c2.IP {
			t.Fatalf("c2 has %s, the test's unused address", g)
		}
		ghosts = append(ghosts, g)
	}
	isGhost := func(r keyalloc.Record) bool {
		for _, g := range ghosts {
			if r.Dst == g {
				return true
			}
		}
		return false
	}
	var conn net.PacketConn
	if err := c1.NS.Do(func() (err error) {
		conn, err = net.ListenPacket("udp4", netip.AddrPortFrom(c1.IP, 0).String())
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	probed := time.Now()
	for i, g := range ghosts {
		msg := fmt.Appendf(nil, "kr|c1|ghost%d|0|%d", i, i)
		if _, err := conn.WriteTo(msg, net.UDPAddrFromAddrPort(netip.AddrPortFrom(g, churnPort))); err != nil {
			t.Fatal(err)
		}
	}
	var taken []keyalloc.Record
	e.within("both keys taken by records for unused addresses", probed, 5*time.Second, func() error {
		taken = taken[:0]
		for _, r := range st.records(t) {
			if isGhost(r) {
				taken = append(taken, r)
			}
		}
		if len(taken) != 2 {
			return fmt.Errorf("%d records for unused addresses, want 2 (both keys)", len(taken))
		}
		return nil
	})
	for _, r := range taken {
		t.Logf("leaked: %s->%s key %d %s", r.Src, r.Dst, r.Key.DSCP, r.State)
	}

	// c1->c2 starts now, with both keys taken.
	ct.phase.Store(1)
	ct.started[0][0].Store(true)
	e.within("c1->c2 on the fast path and no record for an unused address, from the probes", probed, leakBound, func() error {
		for _, r := range st.records(t) {
			if isGhost(r) {
				return fmt.Errorf("record for unused address %s (key %d, %s) still in etcd", r.Dst, r.Key.DSCP, r.State)
			}
		}
		_, err := rwFastErr(t, st, c1, c2)
		return err
	})
	v2Delivering(t, ct, 0, 0, 25, 10*time.Second)
	// h2 never restored a key towards an unused address.
	for _, f := range rwFlows(t, h2, false) {
		for _, g := range ghosts {
			if f.Dst == g {
				t.Errorf("h2 has a cache entry towards the unused address %s: %s", g, f)
			}
		}
	}
	m1 := rwMetrics(t, h1)
	notReady, exhausted := rwMetric(m1, "keyroute_cache_fallbacks_total", `reason="not_ready"`), rwMetric(m1, "keyroute_cache_fallbacks_total", `reason="keys_exhausted"`)
	t.Logf("h1 fallbacks: not_ready %v, keys_exhausted %v; keys released %v", notReady, exhausted, rwMetric(m1, "keyroute_cache_keys_released_total"))
	if notReady < 2 {
		t.Errorf(`h1 keyroute_cache_fallbacks_total{reason="not_ready"} is %v, want >= 2 (the two leaked records)`, notReady)
	}
	v2Report(t, ct)
}
