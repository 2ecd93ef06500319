package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/netip"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/keyroute/keyroute/simcluster"
	"github.com/keyroute/keyroute/simhost"
)

// TestFullMTU runs containers at the fabric's MTU (1500, container_mtu 0
// in rewrite mode) and checks the three things that makes true
// (docs/DESIGN.md "Container MTU"):
//   - the fast path carries a 1500-byte packet whole: keyed, not
//     encapsulated, 1514 bytes on the wire;
//   - a new pair's first full-size TCP segments, too big for VXLAN while
//     the pair bootstraps, do not stall the connection: the sender gets ICMP
//     "fragmentation needed" and iperf3 completes;
//   - a pair that stays on VXLAN (no key free) learns the tunnel's MTU,
//     1450, from the ICMP, and then works at it: DF pings of 1450 bytes, a
//     TCP transfer, tagged datagrams that reach only their container.
//
// Two keys per host pair: c1→c2 and c5→c6 take them, c3→c4 finds none.
func TestFullMTU(t *testing.T) {
	start := time.Now()
	cl := rwCluster(t, simcluster.Options{AgentConfig: rwCache(map[string]any{"keys": "1-2", "eviction": "none"})})
	st := rwEtcd(t, cl)
	h1 := cl.Host(1)
	c1, c3, c5 := mtuAttach(t, cl, 1, "c1"), mtuAttach(t, cl, 1, "c3"), mtuAttach(t, cl, 1, "c5")
	c2, c4, c6 := mtuAttach(t, cl, 2, "c2"), mtuAttach(t, cl, 2, "c4"), mtuAttach(t, cl, 2, "c6")
	for _, c := range []*simcluster.Container{c1, c2, c3, c4, c5, c6} {
		if mtu := mtuLink(t, c.NS, "eth0"); mtu != 1500 {
			t.Fatalf("%s: eth0 MTU %d, want the uplink's 1500 (container_mtu 0, rewrite mode)", c.Name, mtu)
		}
	}
	if mtu := mtuLink(t, h1.NS, "kr-gw"); mtu != 1500 {
		t.Errorf("h1: gateway port MTU %d, want the containers' 1500", mtu)
	}

	// 1. The fast path carries 1500-byte packets as they are. c1→c2 and
	// back bootstrap with small pings first.
	if err := c1.PingUntil(c2.IP.String(), 10*time.Second); err != nil {
		t.Fatal(err)
	}
	fwd := rwWaitFast(t, st, c1, c2, 10*time.Second)
	back := rwWaitFast(t, st, c2, c1, 10*time.Second)
	pkts, err := cl.CaptureDuring(cl.Fabric, h1.Name, "icmp", func() error {
		out, err := c1.Exec("ping", "-n", "-c", "3", "-i", "0.2", "-W", "2", "-M", "do", "-s", "1472", c2.IP.String())
		if st, perr := simcluster.ParsePing(out); perr != nil || st.Received != 3 {
			return fmt.Errorf("1500-byte DF ping c1->c2 on the fast path: %v %v\n%s", err, perr, out)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	var req, rep int
	for _, p := range pkts {
		switch {
		case p.VXLAN:
			t.Errorf("a 1500-byte ping went through VXLAN: %s", p)
		case p.Src == c1.Host.IP && p.Dst == c2.Host.IP && p.DSCP == fwd.Key.DSCP && p.Length == 1514:
			req++
		case p.Src == c2.Host.IP && p.Dst == c1.Host.IP && p.DSCP == back.Key.DSCP && p.Length == 1514:
			rep++
		default:
			t.Errorf("unexpected packet on the wire: %s (%d bytes)", p, p.Length)
		}
	}
	if req != 3 || rep != 3 {
		t.Errorf("wire: %d requests and %d replies of 1514 bytes keyed %d/%d, want 3 and 3:\n%s", req, rep, fwd.Key.DSCP, back.Key.DSCP, rwDump(pkts))
	}
	t.Logf("fast path: 3 DF echo requests and 3 replies of 1500 bytes (IP) crossed keyed (%d, %d), un-encapsulated", fwd.Key.DSCP, back.Key.DSCP)

	// 2. A new pair's first full-size TCP segments: c5 connects to c6 and
	// writes at once, so its first 1500-byte segments leave while the pair
	// is still on VXLAN (the bootstrap takes some milliseconds of etcd
	// round trips; the handshake well under one). They are answered with
	// ICMP, c5 lowers its path MTU to c6 and the transfer goes on.
	sentBefore := rwMetric(rwMetrics(t, h1), "keyroute_frag_needed_total", `outcome="sent"`)
	retrBefore := mtuRetransSegs(t, c5)
	took := mtuTCPTransfer(t, c5, c6, 4<<20)
	sent := rwMetric(rwMetrics(t, h1), "keyroute_frag_needed_total", `outcome="sent"`) - sentBefore
	retr := mtuRetransSegs(t, c5) - retrBefore
	t.Logf("new pair c5->c6: 4 MiB over TCP from the pair's first packet in %s, %d retransmitted segments; h1 sent %v ICMP fragmentation needed", took.Round(time.Millisecond), retr, sent)
	if sent < 1 {
		t.Errorf("h1 sent no ICMP fragmentation needed for c5->c6's first full-size segments (on VXLAN while the pair bootstraps)")
	}
	if took > 5*time.Second {
		t.Errorf("4 MiB c5->c6 took %s: the connection stalled", took)
	}
	rwWaitFast(t, st, c5, c6, 10*time.Second)
	if mtu := mtuRouteMTU(t, c5, c6.IP); mtu != 1450 {
		t.Errorf("c5's route to c6 has MTU %d after the ICMP, want 1450 (kept until net.ipv4.route.mtu_expires)", mtu)
	}

	// iperf3 on that pair, now on the fast path at c5's lowered path MTU,
	// against the same run on c1->c2 (fast path at 1500 from the start):
	// the harness's userspace datapath drops under a bulk load on its own,
	// so retransmits are bounded relative to that baseline.
	srv6, err := c6.StartIperfServer(5201)
	if err != nil {
		t.Fatal(err)
	}
	defer srv6.Stop(5 * time.Second)
	srv2, err := c2.StartIperfServer(5201)
	if err != nil {
		t.Fatal(err)
	}
	defer srv2.Stop(5 * time.Second)
	base := mtuIperf(t, c1, c2, 5201, "baseline c1->c2 (fast path, 1500 from the start)")
	res := mtuIperf(t, c5, c6, 5201, "new pair c5->c6 (fast path, path MTU 1450)")
	if limit := 3*base.Retransmits + 1000; res.Retransmits > limit {
		t.Errorf("iperf3 c5->c6: %d retransmits, want at most %d (3x the baseline's %d + 1000)", res.Retransmits, limit, base.Retransmits)
	}

	// 3. A fallback pair: no key is free for c3→c4. Its first DF ping of
	// 1500 bytes is answered with the tunnel's MTU.
	out, _ := c3.Exec("ping", "-n", "-c", "1", "-W", "2", "-M", "do", "-s", "1472", c4.IP.String())
	if !strings.Contains(out, "mtu = 1450") {
		t.Errorf("c3's first 1500-byte DF ping to c4 on VXLAN: want \"Frag needed and DF set (mtu = 1450)\", got\n%s", out)
	}
	err = simhost.WaitFor(5*time.Second, func() error {
		f, ok := rwFind(rwFlows(t, h1, false), "egress", c3.IP, c4.IP)
		if !ok || f.State != "fallback" {
			return fmt.Errorf("c3->c4's egress entry is %v, want fallback (both keys taken)", f)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if mtu := mtuRouteMTU(t, c3, c4.IP); mtu != 1450 {
		t.Errorf("c3's route to c4 has MTU %d, want 1450", mtu)
	}
	if mtu := mtuRouteMTU(t, c3, c2.IP); mtu != 0 {
		t.Errorf("c3's route to c2 has MTU %d: the ICMP must lower c4's path only", mtu)
	}
	out, err = c3.Exec("ping", "-n", "-c", "3", "-i", "0.2", "-W", "2", "-M", "do", "-s", "1422", c4.IP.String())
	if st, perr := simcluster.ParsePing(out); perr != nil || st.Received != 3 {
		t.Errorf("1450-byte DF pings c3->c4 on VXLAN: %v %v\n%s", err, perr, out)
	}
	srv4, err := c4.StartIperfServer(5202)
	if err != nil {
		t.Fatal(err)
	}
	defer srv4.Stop(5 * time.Second)
	fb := mtuIperf(t, c3, c4, 5202, "fallback pair c3->c4 (VXLAN, path MTU 1450)")
	if limit := 3*base.Retransmits + 1000; fb.Retransmits > limit {
		t.Errorf("iperf3 c3->c4: %d retransmits, want at most %d (3x the baseline's %d + 1000)", fb.Retransmits, limit, base.Retransmits)
	}
	// Tagged datagrams of 1450 bytes (IP) fill the tunnel exactly: 1514
	// bytes on the wire, and reach c4 alone.
	pkts, err = cl.CaptureDuring(cl.Fabric, h1.Name, "udp port "+fmt.Sprint(cl.VXLANPort), func() error {
		mtuTagged(t, c3, c4, c2)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	full := 0
	for _, p := range pkts {
		if p.VXLAN && p.Inner != nil && p.Inner.Src == c3.IP && p.Inner.Dst == c4.IP && p.Inner.Proto == 17 {
			if p.Length != 1514 {
				t.Errorf("c3->c4 datagram in VXLAN of %d bytes on the wire, want 1514: %s", p.Length, p)
			}
			full++
		}
	}
	if full != mtuTaggedCount {
		t.Errorf("wire: %d of c3->c4's %d datagrams in VXLAN:\n%s", full, mtuTaggedCount, rwDump(pkts))
	}
	// DF clear: the packet is dropped all the same (OVS does not fragment
	// tunnel packets), but the ICMP still lowers the sender's path MTU, so
	// from the next packet on its kernel fragments to 1450 itself. c3->c2
	// is another fallback pair, its path MTU untouched so far; so is
	// c2->c3, which loses the first full-size reply the same way.
	out, err = c3.Exec("ping", "-n", "-c", "4", "-i", "0.3", "-W", "2", "-M", "dont", "-s", "1472", c2.IP.String())
	if st, perr := simcluster.ParsePing(out); perr != nil || st.Received < 2 || !strings.Contains(out, "icmp_seq=4 ") {
		t.Errorf("1500-byte pings without DF c3->c2 on VXLAN: want all but the first request and the first reply answered (%v):\n%s", err, out)
	}
	if mtu := mtuRouteMTU(t, c3, c2.IP); mtu != 1450 {
		t.Errorf("c3's route to c2 has MTU %d after a DF-clear packet too big for VXLAN, want 1450", mtu)
	}
	if n := rwMetric(rwMetrics(t, h1), "keyroute_frag_needed_total", `outcome="sent_no_df"`); n < 1 {
		t.Errorf("keyroute_frag_needed_total{outcome=\"sent_no_df\"} is %v, want at least 1", n)
	}
	// The host's own traffic to remote containers always takes VXLAN (the
	// gateway port's MTU is the containers'): it learns the tunnel's MTU
	// the same way, from the destination's address.
	out, _ = h1.Exec("ping", "-n", "-c", "1", "-W", "2", "-M", "do", "-s", "1472", c6.IP.String())
	if !strings.Contains(out, "mtu = 1450") {
		t.Errorf("h1's first 1500-byte DF ping to c6: want \"Frag needed and DF set (mtu = 1450)\", got\n%s", out)
	}
	out, err = h1.Exec("ping", "-n", "-c", "2", "-i", "0.2", "-W", "2", "-M", "do", "-s", "1422", c6.IP.String())
	if st, perr := simcluster.ParsePing(out); perr != nil || st.Received != 2 {
		t.Errorf("h1's 1450-byte DF pings to c6: %v %v\n%s", err, perr, out)
	}
	if f, _ := rwFind(rwFlows(t, h1, false), "egress", c3.IP, c4.IP); f.State != "fallback" {
		t.Errorf("c3->c4 left the fallback during the test (%v): the checks above did not run on VXLAN", f)
	}
	t.Logf("TestFullMTU took %s", time.Since(start).Round(time.Second))
}

// mtuIperf runs iperf3 from src to dst for 2 s in half-second intervals
// and fails the test if any interval carried under a tenth of the mean (a
// stall).
func mtuIperf(t *testing.T, src, dst *simcluster.Container, port int, what string) simcluster.IperfResult {
	t.Helper()
	res, err := src.Iperf(dst.IP.String(), port, 2*time.Second, "-i", "0.5")
	if err != nil {
		t.Fatalf("iperf3 %s: %v", what, err)
	}
	ivs := mtuIntervals(t, res)
	t.Logf("%s: iperf3 %.2f Gbit/s over %.1f s, %d retransmits, bytes per 0.5 s %v", what, res.Gbps, res.Seconds, res.Retransmits, ivs)
	for i, b := range ivs {
		if b*10*int64(len(ivs)) < res.Bytes {
			t.Errorf("iperf3 %s: interval %d carried %d bytes of %d: a stall", what, i, b, res.Bytes)
		}
	}
	return res
}

// mtuRetransSegs reads the TCP retransmitted segments counter of c's
// namespace.
func mtuRetransSegs(t *testing.T, c *simcluster.Container) int64 {
	t.Helper()
	out, err := c.Exec("cat", "/proc/net/snmp")
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, l := range strings.Split(out, "\n") {
		f := strings.Fields(l)
		if len(f) == 0 || f[0] != "Tcp:" {
			continue
		}
		if names == nil {
			names = f
			continue
		}
		for i, n := range names {
			if n == "RetransSegs" && i < len(f) {
				var v int64
				fmt.Sscan(f[i], &v)
				return v
			}
		}
	}
	t.Fatalf("no Tcp RetransSegs in %s's /proc/net/snmp", c.Name)
	return 0
}

// mtuTCPTransfer sends n tagged bytes from src to dst over a new TCP
// connection, writing as soon as it is up, and checks dst got exactly
// them. It returns how long from dial to the last byte read.
func mtuTCPTransfer(t *testing.T, src, dst *simcluster.Container, n int) time.Duration {
	t.Helper()
	var ln net.Listener
	if err := dst.NS.Do(func() (err error) {
		ln, err = net.Listen("tcp4", net.JoinHostPort(dst.IP.String(), "7100"))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	want := make([]byte, 0, n)
	for i := 0; len(want) < n; i++ {
		want = fmt.Appendf(want, "%s->%s %08d|", src.Name, dst.Name, i)
	}
	want = want[:n]
	got := make(chan []byte, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			got <- nil
			return
		}
		defer c.Close()
		c.SetReadDeadline(time.Now().Add(20 * time.Second))
		b, _ := io.ReadAll(c)
		got <- b
	}()
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, err := src.NS.DialContext(ctx, "tcp4", net.JoinHostPort(dst.IP.String(), "7100"))
	if err != nil {
		t.Fatal(err)
	}
	conn.SetWriteDeadline(time.Now().Add(20 * time.Second))
	if _, err := conn.Write(want); err != nil {
		t.Fatalf("TCP %s->%s: %v", src.Name, dst.Name, err)
	}
	conn.Close()
	b := <-got
	took := time.Since(start)
	if !bytes.Equal(b, want) {
		t.Fatalf("%s got %d bytes over TCP from %s, want the %d tagged bytes sent", dst.Name, len(b), src.Name, n)
	}
	return took
}

// mtuIntervals returns the bytes of each iperf3 interval.
func mtuIntervals(t *testing.T, r simcluster.IperfResult) []int64 {
	t.Helper()
	var j struct {
		Intervals []struct {
			Sum struct {
				Bytes int64 `json:"bytes"`
			} `json:"sum"`
		} `json:"intervals"`
	}
	if err := json.Unmarshal(r.JSON, &j); err != nil {
		t.Fatalf("iperf3 intervals: %v", err)
	}
	var out []int64
	for _, iv := range j.Intervals {
		out = append(out, iv.Sum.Bytes)
	}
	return out
}

func mtuAttach(t *testing.T, cl *simcluster.Cluster, host int, name string) *simcluster.Container {
	t.Helper()
	return rwAttach(t, cl, host, name)[0]
}

var mtuRE = regexp.MustCompile(`\bmtu (\d+)`)

// mtuLink returns an interface's MTU in ns.
func mtuLink(t *testing.T, ns *simhost.NetNS, dev string) int {
	t.Helper()
	out, err := ns.Exec("ip", "-o", "link", "show", "dev", dev)
	if err != nil {
		t.Fatal(err)
	}
	m := mtuRE.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no MTU in %q", out)
	}
	var n int
	fmt.Sscan(m[1], &n)
	return n
}

// mtuRouteMTU returns the path MTU c's kernel holds for dst (0: none,
// the interface's applies).
func mtuRouteMTU(t *testing.T, c *simcluster.Container, dst netip.Addr) int {
	t.Helper()
	out, err := c.Exec("ip", "route", "get", dst.String())
	if err != nil {
		t.Fatal(err)
	}
	m := mtuRE.FindStringSubmatch(out)
	if m == nil {
		return 0
	}
	var n int
	fmt.Sscan(m[1], &n)
	return n
}

const mtuTaggedCount = 20

// mtuTagged sends tagged datagrams of 1422 bytes (1450 with headers) from
// src to dst's port 9100 while other listens on the same port: every one
// reaches dst, none other.
func mtuTagged(t *testing.T, src, dst, other *simcluster.Container) {
	t.Helper()
	ln, err := dst.ListenUDP(9100)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	wrong, err := other.ListenUDP(9100)
	if err != nil {
		t.Fatal(err)
	}
	defer wrong.Close()
	conn, err := src.DialUDP(net.JoinHostPort(dst.IP.String(), "9100"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	const n = mtuTaggedCount
	buf := make([]byte, 2000)
	for i := range n {
		msg := []byte(fmt.Sprintf("mtu %s->%s %02d ", src.Name, dst.Name, i))
		msg = append(msg, make([]byte, 1422-len(msg))...)
		if _, err := conn.Write(msg); err != nil {
			t.Fatal(err)
		}
		ln.SetReadDeadline(time.Now().Add(3 * time.Second))
		k, from, err := ln.ReadFrom(buf)
		if err != nil {
			t.Fatalf("%s waiting for datagram %d of %d from %s: %v", dst.Name, i, n, src.Name, err)
		}
		if !bytes.Equal(buf[:k], msg) {
			t.Errorf("%s got %d bytes %q, want %d bytes %q", dst.Name, k, buf[:24], len(msg), msg[:24])
		}
		if ip := from.(*net.UDPAddr).AddrPort().Addr().Unmap(); ip != src.IP {
			t.Errorf("%s sees datagram %d from %s, want %s", dst.Name, i, ip, src.IP)
		}
	}
	wrong.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	if k, from, err := wrong.ReadFrom(buf); err == nil {
		t.Errorf("%s got a datagram meant for %s from %s: %q", other.Name, dst.Name, from, buf[:min(k, 24)])
	}
}
