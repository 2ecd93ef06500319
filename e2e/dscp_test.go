package e2e

import (
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keyroute/keyroute/api"
	"github.com/keyroute/keyroute/keyalloc"
	"github.com/keyroute/keyroute/simcluster"
	"github.com/keyroute/keyroute/simhost"
)

// DSCP that the fabric keeps (issue 11).

// A host's own traffic keeps its DSCP towards anything but a peer host; key
// DSCPs are cleared only on its traffic to peer hosts.
func TestDSCPHostTrafficKeepsMarking(t *testing.T) {
	cl := rwCluster(t, simcluster.Options{})
	h1, h2 := cl.Host(1), cl.Host(2)
	// A machine on the fabric that is not a cluster host: an address on
	// the fabric bridge itself.
	const other = "198.18.0.250"
	if _, err := cl.Fabric.Exec("ip", "addr", "add", other+"/24", "dev", simcluster.FabricBridge); err != nil {
		t.Fatal(err)
	}
	// CS6 (48) is no longer a key; a key DSCP is what br-phy would clear.
	key := keyalloc.DefaultKeySet().Keys()[0]
	tos := fmt.Sprint(int(key) << 2)
	for _, tc := range []struct {
		dst  string
		want uint8
	}{{other, key}, {h2.IP.String(), 0}} {
		for _, dscp := range []struct {
			tos  string
			want uint8
		}{{tos, tc.want}, {fmt.Sprint(48 << 2), 48}} {
			pkts, err := cl.CaptureDuring(cl.Fabric, h1.Name, "icmp[icmptype] = icmp-echo and src host "+h1.IP.String(), func() error {
				_, err := h1.NS.Exec("ping", "-n", "-c", "2", "-i", "0.2", "-W", "2", "-Q", dscp.tos, tc.dst)
				return err
			})
			if err != nil {
				t.Fatalf("ping %s with TOS %s from %s: %v", tc.dst, dscp.tos, h1.Name, err)
			}
			if len(pkts) == 0 {
				t.Fatalf("no echo request from %s to %s on the wire", h1.Name, tc.dst)
			}
			for _, p := range pkts {
				if p.DSCP != dscp.want {
					t.Errorf("%s -> %s sent with TOS %s: DSCP %d on the wire, want %d: %s", h1.Name, tc.dst, dscp.tos, p.DSCP, dscp.want, p)
				}
			}
		}
	}
}

// A fabric that re-marks DSCP between h1 and h2: h1's path check names the
// cause, h1->h2 pairs stay on VXLAN with no key and nothing misdelivered;
// once the fabric keeps DSCPs again, the pairs move to the fast path.
func TestDSCPRemarkingFabric(t *testing.T) {
	cl := rwCluster(t, simcluster.Options{AgentConfig: func(_ int, cfg map[string]any) {
		cfg["cache"] = map[string]any{"send_idle": "2s", "probe_interval": "2s"}
	}})
	st := rwEtcd(t, cl)
	h1, h2 := cl.Host(1), cl.Host(2)
	c1 := rwAttach(t, cl, 1, "c1")[0]
	rs := rwAttach(t, cl, 2, "c2", "c3")

	// The fabric re-marks every marked packet from h1 to h2 to CS1.
	remark := func(on bool) {
		t.Helper()
		var err error
		if on {
			for _, c := range [][]string{
				{"nft", "add", "table", "bridge", "krdscp"},
				{"nft", "add", "chain", "bridge", "krdscp", "remarking", "{ type filter hook forward priority 0 ; policy accept ; }"},
				{"nft", "add", "rule", "bridge", "krdscp", "remarking", "ip", "saddr", h1.IP.String(), "ip", "daddr", h2.IP.String(),
					"ip", "dscp", "!=", "0", "ip", "dscp", "set", "cs1"},
			} {
				if _, err = cl.Fabric.Exec(c...); err != nil {
					break
				}
			}
		} else {
			_, err = cl.Fabric.Exec("nft", "delete table bridge krdscp")
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	pathTo := func(h *simcluster.Host, peer string) api.DSCPPath {
		var s api.Status
		rwCtl(t, h, "status", &s)
		for _, p := range s.DSCPPaths {
			if p.Peer == peer {
				return p
			}
		}
		return api.DSCPPath{}
	}
	remark(true)
	if err := simhost.WaitFor(15*time.Second, func() error {
		if p := pathTo(h1, h2.Name); p.State != "re-marked" || !strings.Contains(p.Detail, "got 8") {
			return fmt.Errorf("h1's path to h2: %+v", p)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if p := pathTo(h2, h1.Name); p.State != "verified" {
		t.Errorf("h2's path to h1 (not re-marked): %+v", p)
	}
	out, err := h1.Ctl("status")
	if err != nil || !strings.Contains(out, "re-marked: sent") || !strings.Contains(out, "pairs stay on VXLAN") {
		t.Errorf("keyroutectl status on h1 does not name the cause: %v\n%s", err, out)
	}

	// Tagged traffic: c1 sends to c2 and c3, each datagram naming its
	// intended receiver; a receiver getting another's is a misdelivery.
	var mu sync.Mutex
	var got [2]int
	var bad []string
	for i, r := range rs {
		ln, err := r.ListenUDP(9000)
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		go func() {
			buf := make([]byte, 256)
			for {
				n, from, err := ln.ReadFrom(buf)
				if err != nil {
					return
				}
				mu.Lock()
				if msg := string(buf[:n]); !strings.HasPrefix(msg, "to="+r.Name+" ") || from.(*net.UDPAddr).IP.String() != c1.IP.String() {
					bad = append(bad, fmt.Sprintf("%s got %q from %s", r.Name, msg, from))
				} else {
					got[i]++
				}
				mu.Unlock()
			}
		}()
	}
	var conns []net.Conn
	for _, r := range rs {
		c, err := c1.DialUDP(netip.AddrPortFrom(r.IP, 9000).String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		conns = append(conns, c)
	}
	send := func(d time.Duration) {
		for n := 0; n < int(d/(50*time.Millisecond)); n++ {
			for i, c := range conns {
				fmt.Fprintf(c, "to=%s n=%d", rs[i].Name, n)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	pkts, err := cl.CaptureDuring(cl.Fabric, h1.Name, "not port 2379 and not port "+rwProbePort, func() error { send(4 * time.Second); return nil })
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range rwBetween(pkts, h1.IP, h2.IP) {
		if !p.VXLAN && p.DSCP != 0 {
			t.Errorf("keyed packet h1->h2 over a re-marking fabric: %s", p)
		}
	}
	if recs := rwKeyMap(st.records(t), h1.Name, h2.Name); len(recs) != 0 {
		t.Errorf("h1->h2 key records over a re-marking fabric: %v", recs)
	}
	var cache []rwCacheEntry
	if rwCtl(t, h1, "cache", &cache) {
		n := 0
		for _, e := range cache {
			if e.Side == "egress" && e.State == "fallback (dscp_path)" {
				n++
			}
		}
		if n != 2 {
			t.Errorf("h1: %d egress entries in fallback (dscp_path), want 2: %+v", n, cache)
		}
	}
	m1 := rwMetrics(t, h1)
	if rwMetric(m1, "keyroute_dscp_path_checks_total", `peer="h2"`, `result="remarked"`) < 1 || rwMetric(m1, "keyroute_cache_fallbacks_total", `reason="dscp_path"`) < 2 {
		t.Errorf("h1 metrics: checks remarked %v, fallbacks dscp_path %v", rwMetric(m1, "keyroute_dscp_path_checks_total", `peer="h2"`, `result="remarked"`),
			rwMetric(m1, "keyroute_cache_fallbacks_total", `reason="dscp_path"`))
	}

	// The fabric keeps DSCPs again: the path is verified and the pairs
	// move to the fast path while they keep sending.
	remark(false)
	done := make(chan struct{})
	go func() { send(20 * time.Second); close(done) }()
	if err := simhost.WaitFor(15*time.Second, func() error {
		if p := pathTo(h1, h2.Name); p.State != "verified" {
			return fmt.Errorf("h1's path to h2: %+v", p)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	for _, r := range rs {
		rwWaitFast(t, st, c1, r, 15*time.Second)
	}
	<-done
	time.Sleep(200 * time.Millisecond)
	mu.Lock()
	defer mu.Unlock()
	if len(bad) > 0 {
		t.Errorf("%d datagrams misdelivered: %s", len(bad), strings.Join(bad[:min(len(bad), 5)], "; "))
	}
	if got[0] == 0 || got[1] == 0 {
		t.Errorf("received %v datagrams", got)
	}
	t.Logf("c2, c3 received %v datagrams, none misdelivered; h1's path to h2: %+v", got, pathTo(h1, h2.Name))
}
