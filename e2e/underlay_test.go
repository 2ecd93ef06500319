package e2e

import (
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/keyroute/keyroute/api"
	"github.com/keyroute/keyroute/keyalloc"
	"github.com/keyroute/keyroute/simcluster"
	"github.com/keyroute/keyroute/simhost"
)

// More keys per host pair (DESIGN.md "Key space"): with one extra
// underlay address a host (underlay_ips), a key is (source address,
// destination address, DSCP) and h1→h2 has 2×2×37 = 148 keys, so 80 pairs
// — more than the 63 DSCP alone could ever give — are all on the fast
// path at once. The wire shows keyed packets on all four address pairs,
// each packet's addresses and DSCP a key record's; tagged datagrams reach
// only their receivers; and keyed packets from an address that is not the
// peer's, or to one that is not a key address, are never restored.
const (
	ulSenders   = 10 // on h1
	ulReceivers = 8  // on h2: 80 pairs
	ulExtra     = 1  // extra underlay addresses a host
)

func TestUnderlayKeyAddresses(t *testing.T) {
	cl := rwCluster(t, simcluster.Options{AgentConfig: simcluster.WithUnderlayIPs(ulExtra, nil)})
	h1, h2 := cl.Host(1), cl.Host(2)
	a1, a2 := h1.KeyAddrs(ulExtra), h2.KeyAddrs(ulExtra)
	for _, h := range []*simcluster.Host{h1, h2} {
		out, err := h.NS.Exec("ip", "-4", "-o", "addr", "show", "dev", "br-phy")
		if err != nil || !strings.Contains(out, simcluster.UnderlayIP(h.Index, 1).String()+"/24") {
			t.Fatalf("%s: underlay IP not on br-phy: %v\n%s", h.Name, err, out)
		}
	}
	var sn, rn []string
	for i := range ulSenders {
		sn = append(sn, fmt.Sprintf("s%d", i))
	}
	for j := range ulReceivers {
		rn = append(rn, fmt.Sprintf("r%d", j))
	}
	senders, receivers := rwAttach(t, cl, 1, sn...), rwAttach(t, cl, 2, rn...)
	ct := newTaggedTraffic(t, senders, receivers, churnTick)
	defer ct.close()
	ct.phase.Store(1)
	for i := range ulSenders {
		for j := range ulReceivers {
			ct.started[i][j].Store(true)
		}
	}

	// Every pair gets a key and turns ready: 80 records h1→h2, 80 keys.
	st := rwEtcd(t, cl)
	start := time.Now()
	var recs []keyalloc.Record
	err := simhost.WaitFor(30*time.Second, func() error {
		recs = recs[:0]
		ready := 0
		for _, r := range st.records(t) {
			if r.SrcHost == h1.Name && r.DstHost == h2.Name {
				recs = append(recs, r)
				if r.State == keyalloc.StateReady {
					ready++
				}
			}
		}
		if ready < ulSenders*ulReceivers {
			return fmt.Errorf("%d of %d h1->h2 pairs ready (%d records)", ready, ulSenders*ulReceivers, len(recs))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%d pairs h1->h2 on the fast path %s after their first datagram", len(recs), time.Since(start).Round(100*time.Millisecond))
	keys := map[keyalloc.Key]bool{}
	combos := map[[2]netip.Addr]int{}
	for _, r := range recs {
		if keys[r.Key] {
			t.Errorf("key %s given twice", r.Key)
		}
		keys[r.Key] = true
		if !slices.Contains(a1, r.Key.Src) || !slices.Contains(a2, r.Key.Dst) {
			t.Errorf("record %s->%s has key %s, not from h1's %v to h2's %v", r.Src, r.Dst, r.Key, a1, a2)
		}
		combos[[2]netip.Addr{r.Key.Src, r.Key.Dst}]++
	}
	if len(keys) <= 63 || len(combos) != len(a1)*len(a2) {
		t.Errorf("%d distinct keys on %d address pairs (%v), want more than 63 on all %d", len(keys), len(combos), combos, len(a1)*len(a2))
	}
	t.Logf("keys per address pair: %v", combos)
	// h1's switch rewrites every pair, and keyroutectl shows the keys'
	// address pairs as etcd has them.
	readyFlows := 0
	for _, f := range rwFlows(t, h1, false) {
		if f.Side == "egress" && f.State == "ready" {
			readyFlows++
		}
	}
	if readyFlows != ulSenders*ulReceivers {
		t.Errorf("h1 has %d ready EgressCache entries, want %d", readyFlows, ulSenders*ulReceivers)
	}
	var shown []api.Key
	if rwCtl(t, h1, "keys", &shown) {
		for _, k := range shown {
			kk := keyalloc.Key{Src: netip.MustParseAddr(k.KeySrc), Dst: netip.MustParseAddr(k.KeyDst), DSCP: k.Key}
			if k.SrcHost == h1.Name && !keys[kk] {
				t.Errorf("keyroutectl keys shows %s->%s with key %s, not in etcd", k.Src, k.Dst, kk)
			}
		}
	}

	// The wire, per address pair: keyed packets h1→h2 carry a key's
	// addresses and DSCP, on every address pair.
	pkts, err := cl.CaptureDuring(cl.Fabric, h1.Name, "ip and not port 2379 and not port "+rwProbePort, func() error {
		time.Sleep(2 * time.Second) // the senders' traffic, one datagram a pair per tick
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	onWire := map[[2]netip.Addr]int{}
	vxlan := 0
	for _, p := range pkts {
		switch {
		case p.VXLAN:
			vxlan++
		case p.DSCP != 0 && slices.Contains(a1, p.Src) && slices.Contains(a2, p.Dst):
			if !keys[keyalloc.Key{Src: p.Src, Dst: p.Dst, DSCP: p.DSCP}] {
				t.Errorf("keyed packet on the wire with no key record: %s", p)
			}
			onWire[[2]netip.Addr{p.Src, p.Dst}]++
		}
	}
	if len(onWire) != len(a1)*len(a2) {
		t.Errorf("keyed packets on the wire on %d address pairs (%v), want all %d", len(onWire), onWire, len(a1)*len(a2))
	}
	if vxlan != 0 {
		t.Errorf("%d VXLAN packets on the wire while every pair has a key", vxlan)
	}
	t.Logf("wire, 2 s: keyed packets per address pair %v, %d VXLAN", onWire, vxlan)

	// Forgery: senders pause (receivers keep listening), then keyed
	// packets with a live key's DSCP (a) from an address that is not
	// h1's, to h2's extra address, from the fabric, and (b) from h1's
	// extra address to an address of h2 that is not a key address. Both
	// must reach h2's host stack (ping answered), no Restore entry may
	// count them, and no receiver may get one.
	for i := range ct.paused {
		ct.paused[i].Store(true)
	}
	time.Sleep(300 * time.Millisecond) // in flight: a few ms
	var live keyalloc.Key
	for k := range keys {
		if k.Dst == simcluster.UnderlayIP(h2.Index, 1) {
			live = k
			break
		}
	}
	tos := int(live.DSCP) << 2
	restored := func() (n int64) {
		for _, f := range rwFlows(t, h2, true) {
			if f.Side == "restore" {
				n += f.Packets
			}
		}
		return n
	}
	before := restored()
	forger := netip.AddrFrom4([4]byte{198, 18, 1, 250})
	notKey := netip.AddrFrom4([4]byte{198, 18, 5, byte(h2.Index)})
	for _, c := range []struct {
		ns   *simhost.NetNS
		args []string
	}{
		{cl.Fabric, []string{"ip", "addr", "add", forger.String() + "/24", "dev", simcluster.FabricBridge}},
		{h2.NS, []string{"ip", "addr", "add", notKey.String() + "/24", "dev", "br-phy"}},
		{h1.NS, []string{"ip", "route", "add", "198.18.5.0/24", "dev", "br-phy", "src", simcluster.UnderlayIP(h1.Index, 1).String()}},
	} {
		if out, err := c.ns.Exec(c.args...); err != nil {
			t.Fatalf("%v: %v\n%s", c.args, err, out)
		}
	}
	t.Cleanup(func() { cl.Fabric.Exec("ip", "addr", "del", forger.String()+"/24", "dev", simcluster.FabricBridge) })
	forge := func(who string, ns *simhost.NetNS, from, to netip.Addr) {
		t.Helper()
		out, err := ns.Exec("ping", "-n", "-c", "5", "-i", "0.05", "-W", "1", "-Q", strconv.Itoa(tos), "-I", from.String(), to.String())
		if s, perr := simcluster.ParsePing(out); perr != nil || s.Received != 5 {
			t.Errorf("%s: ping -Q %d %s -> %s not answered by h2's host stack: %v %v\n%s", who, tos, from, to, err, perr, out)
		}
		var c net.PacketConn
		if err := ns.Do(func() (err error) {
			c, err = net.ListenPacket("udp4", netip.AddrPortFrom(from, 0).String())
			return err
		}); err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if err := rwSetTOS(c, tos); err != nil {
			t.Fatal(err)
		}
		for i := range 10 {
			if _, err := c.WriteTo(fmt.Appendf(nil, "forged %s %d", who, i), net.UDPAddrFromAddrPort(netip.AddrPortFrom(to, churnPort))); err != nil {
				t.Fatal(err)
			}
		}
	}
	forge("unregistered source", cl.Fabric, forger, simcluster.UnderlayIP(h2.Index, 1))
	forge("non-key destination", h1.NS, simcluster.UnderlayIP(h1.Index, 1), notKey)
	time.Sleep(300 * time.Millisecond) // in flight: a few ms
	if after := restored(); after != before {
		t.Errorf("h2's Restore entries counted %d packets while only forged ones were sent", after-before)
	}

	ct.close()
	if ct.badCount > 0 {
		t.Fatalf("%d misdelivered datagrams, e.g. %s", ct.badCount, strings.Join(ct.bad, "; "))
	}
	sent, got := ct.totals()
	for i := range sent {
		for j := range sent[i] {
			if got[i][j] == 0 {
				t.Errorf("%s->%s: none of %d datagrams delivered", senders[i].Name, receivers[j].Name, sent[i][j])
			}
		}
	}
}
