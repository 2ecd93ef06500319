package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/keyroute/keyroute/api"
	"github.com/keyroute/keyroute/keyalloc"
	"github.com/keyroute/keyroute/simcluster"
	"github.com/keyroute/keyroute/simhost"
)

// 5. etcd outage.

// The outage stays well below the agents' liveness lease (15 s, renewed every
// 5 s), so this test is about the cache alone, not re-registration.
const rwEtcdOutage = 5 * time.Second

// While etcd is down, pairs already on the fast path keep it, new pairs
// work over VXLAN and `keyroutectl status` says etcd is unhealthy; once
// etcd is back a new pair reaches the fast path again.
func TestRewriteEtcdOutage(t *testing.T) {
	p := rwStartPair(t, simcluster.Options{ExternalEtcd: true})
	cl, st, h1, h2, c1, c2 := p.cl, p.st, p.h1, p.h2, p.c1, p.c2
	c3, c4 := rwAttach(t, cl, 1, "c3")[0], rwAttach(t, cl, 2, "c4")[0]
	a, aBack := p.bothFast(t, 5*time.Second)

	// A streams through the whole outage and after it.
	const interval, count = 50 * time.Millisecond, 200 // 10 s
	waitA := rwBgPing(t, c1, c2.IP.String(), interval, count)
	time.Sleep(time.Second)
	if err := cl.StopEtcd(); err != nil {
		t.Fatal(err)
	}
	down := time.Now()
	t.Cleanup(func() { // a failing test must not leave the agents without etcd for good
		if cl.EtcdStopped() {
			cl.StartEtcd(context.Background())
		}
	})

	out, err := h1.Ctl("status", "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	var s api.Status
	if err := json.Unmarshal([]byte(out), &s); err != nil {
		t.Fatal(err)
	}
	if s.Etcd.Healthy {
		t.Errorf("keyroutectl status on h1 reports etcd healthy while it is stopped: %+v", s.Etcd)
	}

	// A new pair B, c3->c4, during the outage: answered, over VXLAN; A
	// stays rewritten.
	pkts, err := cl.CaptureDuring(cl.Fabric, h1.Name, "icmp or udp port 4789", func() error {
		return c3.Ping(c4.IP.String(), 5)
	})
	if err != nil {
		t.Fatalf("new pair during the etcd outage: %v", err)
	}
	var aFast, bVXLAN int
	for _, p := range pkts {
		switch {
		case p.VXLAN && p.Inner != nil && p.Inner.Src == c3.IP && p.Inner.Dst == c4.IP:
			bVXLAN++
		case p.VXLAN && p.Inner != nil && (p.Inner.Src == c1.IP || p.Inner.Src == c2.IP):
			t.Errorf("pair A fell back to VXLAN during the outage: %s", p)
		case !p.VXLAN && p.Src == h1.IP && p.Dst == h2.IP && p.DSCP == a.Key.DSCP:
			aFast++
		case !p.VXLAN && p.DSCP != 0 && p.DSCP != a.Key.DSCP && p.DSCP != aBack.Key.DSCP:
			t.Errorf("a keyed packet that is not pair A's during the outage: %s", p)
		}
	}
	if bVXLAN < 5 || aFast < 10 {
		t.Errorf("during the outage: %d VXLAN packets of c3->c4 (want >= 5), %d rewritten of c1->c2 (want >= 10); wire %s",
			bVXLAN, aFast, simcluster.CountPaths(pkts))
	}
	time.Sleep(time.Until(down.Add(rwEtcdOutage)))
	if err := cl.StartEtcd(t.Context()); err != nil {
		t.Fatal(err)
	}
	t.Logf("etcd was down for %s", time.Since(down).Round(10*time.Millisecond))

	as, aOut := waitA()
	if as.Sent != count || as.Sent-as.Received > 1 || as.Duplicates != 0 {
		t.Errorf("pair A at %s intervals across the outage: %d of %d answered, %d duplicates; want at most 1 lost\n%s",
			interval, as.Received, as.Sent, as.Duplicates, aOut)
	}
	if r, ok := st.record(t, c1, c2); !ok || r.CreateRevision != a.CreateRevision || r.State != keyalloc.StateReady {
		t.Errorf("pair A's record after the outage: %+v (found %v); want the same ready record", r, ok)
	}

	// Recovery: a pair that never sent before reaches the fast path.
	if err := c3.Ping(c2.IP.String(), 3); err != nil {
		t.Fatal(err)
	}
	c := rwWaitFast(t, st, c3, c2, 15*time.Second)
	pkts, err = cl.CaptureDuring(cl.Fabric, h1.Name, "icmp or udp port 4789", func() error {
		return c3.Ping(c2.IP.String(), 3)
	})
	if err != nil {
		t.Fatal(err)
	}
	var cFast int
	for _, p := range pkts {
		if !p.VXLAN && p.Src == h1.IP && p.Dst == h2.IP && p.DSCP == c.Key.DSCP && p.ICMPType == 8 {
			cFast++
		}
	}
	if cFast != 3 {
		t.Errorf("new pair c3->c2 after the outage: %d of 3 echo requests rewritten with key %d; wire %s", cFast, c.Key.DSCP, simcluster.CountPaths(pkts))
	}
	if r, ok := st.record(t, c3, c4); ok {
		t.Logf("pair B (started during the outage) now has key %d, %s", r.Key.DSCP, r.State)
	} else {
		f, _ := rwFind(rwFlows(t, h1, false), "egress", c3.IP, c4.IP)
		t.Logf("pair B (started during the outage) has no key record; h1's entry: %v", f)
	}
	for _, h := range []*simcluster.Host{h1, h2} {
		rwCheckView(t, st, h)
	}
}

// A pair that goes idle while etcd is down longer than the agents' etcd
// deadline for releasing a key (5 s) must work again once etcd is back:
// its egress entries idle out during the outage, the senders keep their
// keys (and the receivers their Restore entries) until a release goes
// through, and no sender may keep rewriting towards a key that nobody
// restores.
func TestRewriteEtcdOutageIdlePair(t *testing.T) {
	p := rwStartPair(t, simcluster.Options{ExternalEtcd: true, AgentConfig: rwIdle("1s")})
	cl, st, h1, h2, c1, c2 := p.cl, p.st, p.h1, p.h2, p.c1, p.c2
	p.bothFast(t, 5*time.Second)
	if err := c1.Ping(c2.IP.String(), 1); err != nil {
		t.Fatal(err)
	}
	// etcd goes before the egress entries idle out (send_idle 1 s).
	if err := cl.StopEtcd(); err != nil {
		t.Fatal(err)
	}
	down := time.Now()
	t.Cleanup(func() {
		if cl.EtcdStopped() {
			cl.StartEtcd(context.Background())
		}
	})
	err := simhost.WaitFor(10*time.Second, func() error {
		var egress []rwFlow
		for _, f := range append(rwFlows(t, h1, false), rwFlows(t, h2, false)...) {
			if f.Side == "egress" {
				egress = append(egress, f)
			}
		}
		if len(egress) > 0 {
			return fmt.Errorf("egress entries left: %v", egress)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	idle := time.Since(down)
	// Releases fail and are retried while etcd is away (a little longer
	// than one release's deadline); the Restore entries stay meanwhile.
	time.Sleep(6 * time.Second)
	for _, h := range []*simcluster.Host{h1, h2} {
		n := 0
		for _, f := range rwFlows(t, h, false) {
			if f.Side == "restore" {
				n++
			}
		}
		if n != 1 {
			t.Errorf("%s has %d Restore entries while etcd is down and its peer still holds the key, want 1", h.Name, n)
		}
	}
	if err := cl.StartEtcd(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Logf("etcd was down for %s; the idle pair's egress entries were gone after %s of it", time.Since(down).Round(100*time.Millisecond), idle.Round(100*time.Millisecond))
	// Until the agents' clients reconnect, a new punt waits for etcd and
	// the pair rides VXLAN; the question is what happens after.
	for _, h := range []*simcluster.Host{h1, h2} {
		rwWaitEtcdHealthy(t, h, 30*time.Second)
	}

	// The pair talks again: it must work, on whatever path.
	if err := c1.PingUntil(c2.IP.String(), 10*time.Second); err != nil {
		t.Error(err)
	}
	wait := rwBgPing(t, c1, c2.IP.String(), 200*time.Millisecond, 5)
	time.Sleep(500 * time.Millisecond)
	var b strings.Builder // the state while the pair talks, for the error
	for _, h := range []*simcluster.Host{h1, h2} {
		fmt.Fprintf(&b, "%s cache entries: %v\n", h.Name, rwFlows(t, h, false))
	}
	for _, r := range st.records(t) {
		fmt.Fprintf(&b, "etcd record %s->%s key %d %s->%s %s\n", r.SrcHost, r.DstHost, r.Key.DSCP, r.Src, r.Dst, r.State)
	}
	if ps, _ := wait(); ps.Received != 5 || ps.Duplicates != 0 {
		t.Errorf("c1<->c2 after the outage: %d of 5 pings answered (%d duplicates)\n%s", ps.Received, ps.Duplicates, b.String())
	}
	// The invariant behind it: a ready egress entry needs a Restore
	// entry for its key on the receiver.
	for _, pair := range [][2]*simcluster.Host{{h1, h2}, {h2, h1}} {
		restore := map[uint8]bool{}
		for _, f := range rwFlows(t, pair[1], false) {
			if f.Side == "restore" && f.Peer == pair[0].IP {
				restore[f.Key] = true
			}
		}
		for _, f := range rwFlows(t, pair[0], false) {
			if f.Side == "egress" && f.State == "ready" && !restore[f.Key] {
				t.Errorf("%s rewrites %s->%s with key %d, which %s does not restore", pair[0].Name, f.Src, f.Dst, f.Key, pair[1].Name)
			}
		}
	}
}

// rwWaitEtcdHealthy waits until `keyroutectl status` on h reports etcd
// healthy.
func rwWaitEtcdHealthy(t *testing.T, h *simcluster.Host, timeout time.Duration) {
	t.Helper()
	err := simhost.WaitFor(timeout, func() error {
		out, err := h.Ctl("status", "-o", "json")
		if err != nil {
			return err
		}
		var s api.Status
		if err := json.Unmarshal([]byte(out), &s); err != nil {
			return err
		}
		if !s.Etcd.Healthy {
			return fmt.Errorf("%s: etcd %+v", h.Name, s.Etcd)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
