package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/keyroute/keyroute/api"
	"github.com/keyroute/keyroute/simcluster"
)

// A store that survives a host: three agents each run an embedded etcd
// member (etcd.members). Stopping the agent (and so the etcd member) of
// the raft leader's host changes nothing for the others: every
// established pair keeps flowing, keyroutectl on the remaining hosts
// answers within 2 s, and a new pair between the remaining hosts reaches
// the fast path (DSCP key on the wire, no VXLAN). The stopped agent
// restarts with its data dir and rejoins.
func TestEtcdMembersSurviveAHost(t *testing.T) {
	cl := rwCluster(t, simcluster.Options{Hosts: 3, EtcdMembers: 3})
	st := rwEtcd(t, cl)
	cs := map[int][]*simcluster.Container{}
	for i := 1; i <= 3; i++ {
		cs[i] = rwAttach(t, cl, i, fmt.Sprintf("a%d", i), fmt.Sprintf("b%d", i))
	}

	// The raft leader's host is the one to lose: it forces an election.
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	var leader uint64
	down := 0
	for i, ep := range cl.EtcdEndpoints() {
		s, err := st.cli.Status(ctx, ep)
		if err != nil {
			t.Fatalf("etcd status of member %s: %v", ep, err)
		}
		if leader != 0 && s.Leader != leader {
			t.Fatalf("members disagree on the leader: %x and %x", leader, s.Leader)
		}
		leader = s.Leader
		if s.Header.MemberId == s.Leader {
			down = i + 1
		}
	}
	if down == 0 {
		t.Fatalf("no member is the leader (%x)", leader)
	}
	var left []int
	for i := 1; i <= 3; i++ {
		if i != down {
			left = append(left, i)
		}
	}
	r1, r2 := left[0], left[1]
	t.Logf("etcd leader on h%d; stopping its agent, h%d and h%d stay", down, r1, r2)

	// Established pairs around the ring, all on the fast path.
	type pair struct{ src, dst *simcluster.Container }
	est := []pair{{cs[1][0], cs[2][0]}, {cs[2][0], cs[3][0]}, {cs[3][0], cs[1][0]}}
	for _, p := range est {
		if err := p.src.PingUntil(p.dst.IP.String(), 10*time.Second); err != nil {
			t.Fatal(err)
		}
		if err := p.src.Ping(p.dst.IP.String(), 2); err != nil {
			t.Fatal(err)
		}
		rwWaitFast(t, st, p.src, p.dst, 10*time.Second)
	}

	// They stream across the stop and the election after it.
	const interval, count = 50 * time.Millisecond, 160 // 8 s
	var waits []func() (simcluster.PingStats, string)
	for _, p := range est {
		waits = append(waits, rwBgPing(t, p.src, p.dst.IP.String(), interval, count))
	}
	time.Sleep(time.Second)

	// keyroutectl on the remaining hosts answers within 2 s while the
	// agent stops (its member leaves) and for 5 s after, through the
	// election.
	stopped := time.Now()
	stopErr := make(chan error, 1)
	go func() { stopErr <- cl.Host(down).StopAgent() }()
	var stopTook, slowest time.Duration
	answers := 0
	for stopTook == 0 || time.Since(stopped) < stopTook+5*time.Second {
		select {
		case err := <-stopErr:
			if err != nil {
				t.Fatal(err)
			}
			stopTook = time.Since(stopped)
		default:
		}
		for _, i := range left {
			for _, cmd := range []string{"hosts", "status"} {
				start := time.Now()
				out, err := cl.Host(i).CtlContext(t.Context(), 2*time.Second, cmd, "-o", "json")
				took := time.Since(start)
				slowest = max(slowest, took)
				answers++
				if err != nil || took > 2*time.Second {
					t.Fatalf("h%d: keyroutectl %s with h%d stopping or down: %v after %s: %s", i, cmd, down, err, took, out)
				}
				if cmd == "hosts" {
					var hs []api.Host
					if err := json.Unmarshal([]byte(out), &hs); err != nil || len(hs) != 3 {
						t.Fatalf("h%d: keyroutectl hosts with h%d down: %v, %d hosts: %s", i, down, err, len(hs), out)
					}
				}
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("h%d's agent stopped in %s; %d keyroutectl answers on h%d/h%d meanwhile and in the 5 s after", down, stopTook.Round(time.Millisecond), answers, r1, r2)
	t.Logf("slowest keyroutectl answer on h%d/h%d while h%d was down: %s", r1, r2, down, slowest.Round(time.Millisecond))
	for _, i := range left {
		var s api.Status
		rwCtl(t, cl.Host(i), "status", &s)
		if !s.Etcd.Healthy {
			t.Errorf("h%d: etcd unhealthy with one of three members down: %+v", i, s.Etcd)
		}
	}

	for i, w := range waits {
		ps, out := w()
		if ps.Sent != count || ps.Sent-ps.Received > 1 {
			t.Errorf("pair %s->%s across h%d's stop: %d of %d answered; want at most 1 lost\n%s", est[i].src.Name, est[i].dst.Name, down, ps.Received, ps.Sent, out)
		}
	}

	// A pair that never talked, between the remaining hosts.
	src, dst := cs[r1][1], cs[r2][1]
	if err := src.PingUntil(dst.IP.String(), 10*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := src.Ping(dst.IP.String(), 2); err != nil {
		t.Fatal(err)
	}
	rec := rwWaitFast(t, st, src, dst, 15*time.Second)
	pkts, err := cl.CaptureDuring(cl.Fabric, cl.Host(r1).Name, "icmp or udp port 4789", func() error {
		return src.Ping(dst.IP.String(), 5)
	})
	if err != nil {
		t.Fatal(err)
	}
	var fast int
	for _, p := range pkts {
		switch {
		case p.VXLAN && p.Inner != nil && p.Inner.Src == src.IP && p.Inner.Dst == dst.IP:
			t.Errorf("new pair %s->%s still on VXLAN: %s", src.Name, dst.Name, p)
		case !p.VXLAN && p.Src == src.Host.IP && p.Dst == dst.Host.IP && p.DSCP == rec.Key.DSCP && p.ICMPType == 8:
			fast++
		}
	}
	if fast != 5 {
		t.Errorf("new pair %s->%s with h%d down: %d of 5 echo requests rewritten with key %d; wire %s", src.Name, dst.Name, down, fast, rec.Key.DSCP, simcluster.CountPaths(pkts))
	}

	// The stopped member rejoins with its data dir: its agent starts and
	// sees the cluster, key records written while it was down included.
	if err := cl.Host(down).StartAgent(); err != nil {
		t.Fatal(err)
	}
	var hs []api.Host
	rwCtl(t, cl.Host(down), "hosts", &hs)
	up := 0
	for _, h := range hs {
		if h.Agent == api.AgentUp {
			up++
		}
	}
	if up != 3 {
		t.Errorf("h%d after rejoining: hosts %+v, want 3 agents up", down, hs)
	}
	var keys []api.Key
	rwCtl(t, cl.Host(down), "keys", &keys)
	found := false
	for _, k := range keys {
		found = found || k.Src == src.IP.String() && k.Dst == dst.IP.String() && k.Key == rec.Key.DSCP
	}
	if !found {
		t.Errorf("h%d after rejoining does not see key %d of %s->%s, written while it was down: %+v", down, rec.Key.DSCP, src.Name, dst.Name, keys)
	}
}
