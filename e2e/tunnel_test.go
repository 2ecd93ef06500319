package e2e

// Issue "Two-host container overlay in tunnel mode": what a user checks on
// two hosts running keyroute in tunnel mode (VXLAN only). One cluster with
// two containers per host is shared by the subtests; the ones that change
// containers run last.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/keyroute/keyroute/api"
	"github.com/keyroute/keyroute/simcluster"
	"github.com/keyroute/keyroute/simhost"
)

// podCIDR is the cluster range the harness configures.
var podCIDR = netip.MustParsePrefix("198.19.0.0/16")

func TestTunnel(t *testing.T) {
	start := time.Now()
	cl := testCluster(t, simcluster.Options{Hosts: 2, Mode: "tunnel"})
	h1, h2 := cl.Host(1), cl.Host(2)
	var cs []*simcluster.Container
	for _, c := range []struct {
		host int
		name string
	}{{1, "a1"}, {1, "a2"}, {2, "b1"}, {2, "b2"}} {
		ct, err := cl.Attach(c.host, c.name, "")
		if err != nil {
			t.Fatal(err)
		}
		cs = append(cs, ct)
	}
	a1, a2, b1, b2 := cs[0], cs[1], cs[2], cs[3]
	// A new container's endpoint reaches the other agent through etcd;
	// wait for that once, so the subtests measure steady state.
	var converge []namedCheck
	for _, p := range orderedPairs(cs) {
		converge = append(converge, namedCheck{p[0].Name + "->" + p[1].Name, func() error {
			return p[0].PingUntil(p[1].IP.String(), 15*time.Second)
		}})
	}
	if !runParallel(t, converge) {
		t.FailNow()
	}
	t.Logf("cluster up and 4 containers reachable after %s", time.Since(start).Round(time.Millisecond))

	t.Run("Status", func(t *testing.T) {
		for _, h := range cl.Hosts() {
			st := ctlStatus(t, h)
			if st.Node != h.Name || st.Mode != "tunnel" || st.HostIP != h.IP.String() {
				t.Errorf("%s status: node %q mode %q host_ip %q", h.Name, st.Node, st.Mode, st.HostIP)
			}
			if st.Datapath != cl.Datapath() || st.DatapathReason == "" {
				t.Errorf("%s status: datapath %q reason %q; want %s with a reason", h.Name, st.Datapath, st.DatapathReason, cl.Datapath())
			}
			var connected []string
			for _, b := range st.Bridges {
				if b.Connected {
					connected = append(connected, b.Name)
				}
			}
			slices.Sort(connected)
			if !slices.Equal(connected, []string{"br-int", "br-phy"}) {
				t.Errorf("%s status: connected bridges %v, want br-int and br-phy: %+v", h.Name, connected, st.Bridges)
			}
			if !st.Etcd.Healthy || st.Etcd.Error != "" {
				t.Errorf("%s status: etcd %+v, want healthy", h.Name, st.Etcd)
			}
			if st.Counts.Hosts != 2 || st.Counts.Endpoints != 2 {
				t.Errorf("%s status counts %+v, want 2 hosts and 2 endpoints", h.Name, st.Counts)
			}
			// What a person reads.
			out, err := h.Ctl("status")
			if err != nil {
				t.Fatal(err)
			}
			for _, want := range []string{`datapath:\s+` + cl.Datapath() + `: ` + regexp.QuoteMeta(st.DatapathReason),
				`bridge br-int:\s+OpenFlow connected`, `bridge br-phy:\s+OpenFlow connected`, `etcd:.*, healthy`} {
				if !regexp.MustCompile(want).MatchString(out) {
					t.Errorf("%s `keyroutectl status` does not match %q:\n%s", h.Name, want, out)
				}
			}

			var hosts []api.Host
			ctlJSON(t, h, &hosts, "hosts")
			subnets := map[string]netip.Prefix{}
			for _, x := range hosts {
				p, err := netip.ParsePrefix(x.PodSubnet)
				if err != nil || !podCIDR.Contains(p.Addr()) || p.Bits() != 24 {
					t.Errorf("%s hosts: %s has pod subnet %q, want a /24 of %s", h.Name, x.Name, x.PodSubnet, podCIDR)
				}
				subnets[x.Name] = p
				if want := hostNamed(cl, x.Name); want == nil || x.IP != want.IP.String() || x.Datapath != cl.Datapath() {
					t.Errorf("%s hosts: unexpected entry %+v", h.Name, x)
				}
			}
			if len(hosts) != 2 || subnets["h1"] == subnets["h2"] {
				t.Fatalf("%s `keyroutectl hosts`: %+v, want h1 and h2 with distinct subnets", h.Name, hosts)
			}

			fs := ctlFlows(t, h, "Forward")
			for _, peer := range cl.Hosts() {
				if peer == h {
					continue
				}
				var found []api.Flow
				for _, f := range fs {
					if f.Category == "subnet" && strings.Contains(f.Match, "nw_dst="+subnets[peer.Name].String()) {
						found = append(found, f)
					}
				}
				if len(found) != 1 {
					t.Errorf("%s Forward: %d subnet flows for %s's %s, want 1: %+v", h.Name, len(found), peer.Name, subnets[peer.Name], fs)
					continue
				}
				acts := found[0].Actions
				if !strings.Contains(acts, peer.IP.String()+"->tun_dst") || !strings.Contains(acts, fmt.Sprintf("0x%x->tun_id", cl.VNI)) {
					t.Errorf("%s Forward subnet flow for %s does not tunnel to %s with VNI %d: %s", h.Name, peer.Name, peer.IP, cl.VNI, acts)
				}
			}
			for _, f := range fs {
				if f.TableName != "Forward" || f.Bridge != "br-int" {
					t.Errorf("%s flows --table Forward returned %s/%s", h.Name, f.Bridge, f.TableName)
				}
			}
		}
	})

	t.Run("Metrics", func(t *testing.T) {
		for _, h := range cl.Hosts() {
			m, err := h.Metrics()
			if err != nil {
				t.Fatal(err)
			}
			if v, ok := metricValue(m, "keyroute_endpoints"); !ok || v != 2 {
				t.Errorf("%s keyroute_endpoints = %v (present %v), want 2", h.Name, v, ok)
			}
			if _, ok := metricValue(m, `keyroute_packet_ins_total{outcome="received"}`); !ok {
				t.Errorf("%s metrics lack keyroute_packet_ins_total{outcome=\"received\"}:\n%s", h.Name, m)
			}
		}
	})

	t.Run("Ping", func(t *testing.T) {
		var checks []namedCheck
		for _, p := range orderedPairs(cs) {
			checks = append(checks, namedCheck{p[0].Name + "->" + p[1].Name, func() error { return p[0].Ping(p[1].IP.String(), 3) }})
		}
		runParallel(t, checks)
	})

	t.Run("UDP", func(t *testing.T) {
		for i, p := range orderedPairs(cs) {
			if err := checkUDPSource(p[0], p[1], 7000+i); err != nil {
				t.Error(err)
			}
		}
	})

	t.Run("TCP", func(t *testing.T) {
		for i, p := range orderedPairs(cs) {
			if err := checkTCPPeer(p[0], p[1], 7100+i); err != nil {
				t.Error(err)
			}
		}
		// Bulk TCP both ways at once, every pair.
		for _, c := range cs {
			srv, err := c.StartIperfServer(5201)
			if err != nil {
				t.Fatal(err)
			}
			defer srv.Stop(5 * time.Second)
		}
		for i, a := range cs {
			for _, b := range cs[i+1:] {
				r, err := a.Iperf(b.IP.String(), 5201, 2*time.Second, "--bidir")
				if err == nil {
					err = checkBidirReverse(r.JSON)
				}
				if err != nil {
					t.Errorf("iperf3 %s <-> %s: %v", a.Name, b.Name, err)
					continue
				}
				t.Logf("iperf3 --bidir %s <-> %s (h%d, h%d): %.2f Gb/s forward, %d retransmits", a.Name, b.Name, a.Host.Index, b.Host.Index, r.Gbps, r.Retransmits)
			}
		}
	})

	t.Run("Fabric", func(t *testing.T) {
		const n = 5
		// etcd between the agents keeps talking; it is not ours to judge.
		filter := "not tcp port 2379"
		pkts, err := cl.CaptureDuring(cl.Fabric, simcluster.FabricBridge, filter, func() error { return a1.Ping(b1.IP.String(), n) })
		if err != nil {
			t.Fatal(err)
		}
		var requests, replies int
		for _, p := range pkts {
			if pod(p.Src) || pod(p.Dst) {
				t.Errorf("container address in the clear on the fabric: %s", p)
			}
			if p.Inner == nil || !(pod(p.Inner.Src) || pod(p.Inner.Dst)) {
				continue
			}
			ok := p.VXLAN && p.DstPort == cl.VXLANPort && p.VNI == cl.VNI
			switch {
			case !ok:
				t.Errorf("container packet not VXLAN port %d VNI %d: %s", cl.VXLANPort, cl.VNI, p)
			case p.Inner.Src == a1.IP && p.Inner.Dst == b1.IP && p.Inner.ICMPType == 8 && p.Src == h1.IP && p.Dst == h2.IP:
				requests++
			case p.Inner.Src == b1.IP && p.Inner.Dst == a1.IP && p.Inner.ICMPType == 0 && p.Src == h2.IP && p.Dst == h1.IP:
				replies++
			default:
				t.Errorf("unexpected overlay packet: %s", p)
			}
		}
		if requests != n || replies != n {
			t.Errorf("fabric saw %d echo requests h1->h2 and %d replies in VXLAN, want %d each; %s", requests, replies, n, simcluster.CountPaths(pkts))
		}

		for _, pair := range [][2]*simcluster.Container{{a1, a2}, {b2, b1}} {
			pkts, err := cl.CaptureDuring(cl.Fabric, simcluster.FabricBridge, filter, func() error { return pair[0].Ping(pair[1].IP.String(), n) })
			if err != nil {
				t.Fatal(err)
			}
			for _, p := range pkts {
				if mentions(p, pair[0].IP, pair[1].IP) {
					t.Errorf("same-host traffic %s -> %s on the fabric: %s", pair[0].Name, pair[1].Name, p)
				}
			}
		}
	})

	t.Run("HostReach", func(t *testing.T) {
		var checks []namedCheck
		for _, c := range cs {
			for _, h := range cl.Hosts() {
				checks = append(checks,
					namedCheck{fmt.Sprintf("%s (on %s) -> %s's IP", c.Name, c.Host.Name, h.Name), func() error { return c.Ping(h.IP.String(), 3) }},
					namedCheck{fmt.Sprintf("%s -> %s (on %s)", h.Name, c.Name, c.Host.Name), func() error { return hostPing(h, c.IP, 3) }})
			}
		}
		runParallel(t, checks)
	})

	t.Run("SpoofGuard", func(t *testing.T) {
		testSpoofGuard(t, cl, a1, a2, b1, b2)
	})

	t.Run("BadInputs", func(t *testing.T) {
		testBadInputs(t, cl, a1, a2)
	})

	t.Run("ReattachSameIP", func(t *testing.T) {
		testReattachSameIP(t, cl, a1, a2, b1)
	})

	t.Run("RoamingIP", func(t *testing.T) {
		testRoamingIP(t, cl, a1, b1, b2)
	})
	t.Logf("TestTunnel took %s", time.Since(start).Round(time.Millisecond))
}

// testSpoofGuard: a2 sends with another container's IP, then with another
// container's MAC. The packets provably leave a2 (captured on its host-side
// port) but neither target sees one, and SpoofGuard's drop counts them.
func testSpoofGuard(t *testing.T, cl *simcluster.Cluster, a1, a2, b1, b2 *simcluster.Container) {
	h1 := a2.Host
	gw := gatewayOf(t, h1)
	t.Cleanup(func() { a2.Exec("ip", "neigh", "del", gw.String(), "dev", "eth0") })

	cases := []struct {
		name   string
		setup  [][]string
		undo   [][]string
		ping   []string // extra ping arguments
		filter string   // selects the spoofed packets
	}{{
		name:   "source IP of b2",
		setup:  [][]string{{"ip", "addr", "add", b2.IP.String() + "/32", "dev", "eth0"}},
		undo:   [][]string{{"ip", "addr", "del", b2.IP.String() + "/32", "dev", "eth0"}},
		ping:   []string{"-I", b2.IP.String()},
		filter: "icmp and src host " + b2.IP.String(),
	}, {
		name:   "MAC of a1",
		setup:  [][]string{{"ip", "link", "set", "eth0", "address", a1.MAC.String()}},
		undo:   [][]string{{"ip", "link", "set", "eth0", "address", a2.MAC.String()}},
		filter: "icmp and ether src " + a1.MAC.String(),
	}}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			// A permanent neighbour entry for the gateway (set after a MAC
			// change, which flushes the table): the spoofed packets go out
			// as IP at once instead of waiting on an ARP the guard drops.
			for _, c := range append(tc.setup, []string{"ip", "neigh", "replace", gw.String(), "lladdr", "0a:00:00:00:00:01", "dev", "eth0", "nud", "permanent"}) {
				mustExec(t, a2, c...)
			}
			t.Cleanup(func() {
				for _, c := range tc.undo {
					a2.Exec(c...)
				}
			})
			before := dropCount(t, h1)
			// What left a2, seen in a2: the host end is OVS's, and an
			// AF_XDP port's frames pass no packet tap on the host.
			sent, err := cl.StartCapture(a2.NS, "eth0", tc.filter, 0)
			if err != nil {
				t.Fatal(err)
			}
			var seen []*simcluster.Capture
			for _, target := range []*simcluster.Container{b1, a1} {
				// Echo requests from a2 under any of its names (a1's own
				// replies carry a1's MAC, so requests only).
				c, err := cl.StartCapture(target.NS, "eth0", fmt.Sprintf("icmp[icmptype] == icmp-echo and (src host %s or src host %s or ether src %s)", a2.IP, b2.IP, a1.MAC), 0)
				if err != nil {
					t.Fatal(err)
				}
				seen = append(seen, c)
			}
			for _, target := range []*simcluster.Container{b1, a1} {
				out, _ := a2.Exec(append([]string{"ping", "-n", "-c", "3", "-i", "0.2", "-W", "1"}, append(tc.ping, target.IP.String())...)...)
				if st, err := simcluster.ParsePing(out); err == nil && st.Received > 0 {
					t.Errorf("spoofed ping a2 -> %s got %d answers:\n%s", target.Name, st.Received, out)
				}
			}
			out, err := sent.Stop()
			if err != nil {
				t.Fatal(err)
			}
			if len(out) < 6 {
				t.Fatalf("only %d spoofed packets left a2 (want 6): the test proves nothing", len(out))
			}
			for i, c := range seen {
				pkts, err := c.Stop()
				if err != nil {
					t.Fatal(err)
				}
				for _, p := range pkts {
					t.Errorf("%s received a spoofed packet: %s", []string{"b1", "a1"}[i], p)
				}
			}
			after := dropCount(t, h1)
			if after-before < uint64(len(out)) {
				t.Errorf("SpoofGuard drop flow counted %d packets (%d -> %d), but a2 sent %d spoofed ones", after-before, before, after, len(out))
			}
		})
	}
	// The guard holds nothing against a2 once it behaves (the cases'
	// cleanups have undone the spoofing).
	a2.Exec("ip", "neigh", "del", gw.String(), "dev", "eth0")
	if err := a2.PingUntil(b1.IP.String(), 5*time.Second); err != nil {
		t.Errorf("a2 after the spoofing: %v", err)
	}
}

// testBadInputs: each mistake gets a one-line error saying what is wrong,
// changes nothing, and the agent keeps serving.
func testBadInputs(t *testing.T, cl *simcluster.Cluster, a1, a2 *simcluster.Container) {
	h1 := a1.Host
	pid := h1.AgentPID()
	portsBefore := brIntPorts(t, h1)
	spare, err := simhost.NewNetNS(cl.Prefix + "c-spare")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { spare.Delete() })
	missing := cl.Prefix + "c-nosuch"

	for _, tc := range []struct {
		name string
		args []string
		want []string // each must appear in the error
	}{
		{"missing netns", []string{"attach", "--netns", missing, "--name", "ghost"}, []string{missing, "not found"}},
		{"duplicate IP", []string{"attach", "--netns", spare.Name, "--name", "dup", "--ip", a1.IP.String()}, []string{a1.IP.String(), "in use", "h1/a1"}},
		{"name twice, other netns", []string{"attach", "--netns", spare.Name, "--name", "a1"}, []string{`"a1"`, "already attached"}},
		{"detach unknown", []string{"detach", "--name", "nosuch"}, []string{`"nosuch"`}},
		{"IP outside the cluster", []string{"attach", "--netns", spare.Name, "--name", "outside", "--ip", "198.18.7.7"}, []string{"198.18.7.7", "198.19."}},
		{"IP not an address", []string{"attach", "--netns", spare.Name, "--name", "garbage", "--ip", "198.19.0.300"}, []string{"198.19.0.300"}},
		{"bad output format", []string{"-o", "yaml", "status"}, []string{`"yaml"`, "table or json"}},
	} {
		msg, err := ctlFailure(h1, tc.args...)
		if err != nil {
			t.Errorf("%s: %v", tc.name, err)
			continue
		}
		for _, w := range tc.want {
			if !strings.Contains(msg, w) {
				t.Errorf("%s: error %q lacks %q", tc.name, msg, w)
			}
		}
	}

	if now := h1.AgentPID(); now == 0 || now != pid {
		t.Fatalf("agent pid %d before the bad inputs, %d after", pid, now)
	}
	if st := ctlStatus(t, h1); st.Counts.Endpoints != 2 || !st.Etcd.Healthy {
		t.Errorf("status after bad inputs: %+v", st)
	}
	if out, err := spare.Exec("ip", "-o", "link", "show"); err != nil || strings.Contains(out, "eth0") {
		t.Errorf("failed attaches left an interface in %s: %v\n%s", spare.Name, err, out)
	}
	if after := brIntPorts(t, h1); !slices.Equal(after, portsBefore) {
		t.Errorf("br-int ports changed by failed attaches: %v -> %v", portsBefore, after)
	}
	var eps []api.Endpoint
	ctlJSON(t, h1, &eps, "endpoints", "--all")
	var names []string
	for _, e := range eps {
		names = append(names, e.Name)
	}
	slices.Sort(names)
	if !slices.Equal(names, []string{"a1", "a2", "b1", "b2"}) {
		t.Errorf("endpoints after bad inputs: %v", names)
	}
	if err := a1.Ping(a2.IP.String(), 1); err != nil {
		t.Error(err)
	}
}

// testReattachSameIP: a2 goes, a3 comes on the same host with a2's IP; the
// IP now leads to a3, and nothing of a2 is left in OVS.
func testReattachSameIP(t *testing.T, cl *simcluster.Cluster, a1, a2, b1 *simcluster.Container) {
	h1 := a2.Host
	ip, oldPort := a2.IP, a2.Port
	oldOF := ofportOf(t, h1, oldPort)
	if err := cl.Detach(a2); err != nil {
		t.Fatal(err)
	}
	if slices.Contains(brIntPorts(t, h1), oldPort) {
		t.Errorf("port %s of the detached a2 still on br-int", oldPort)
	}
	if _, err := h1.Exec("ip", "link", "show", oldPort); err == nil {
		t.Errorf("veth %s of the detached a2 still in %s", oldPort, h1.NS.Name)
	}
	a3, err := cl.Attach(1, "a3", ip.String())
	if err != nil {
		t.Fatal(err)
	}
	if a3.IP != ip {
		t.Fatalf("a3 attached with %s, asked for %s", a3.IP, ip)
	}
	for _, from := range []*simcluster.Container{b1, a1} {
		if err := from.PingUntil(ip.String(), 10*time.Second); err != nil {
			t.Fatal(err)
		}
		if err := checkUDPSource(from, a3, 7200); err != nil {
			t.Error(err)
		}
	}
	if newOF := ofportOf(t, h1, a3.Port); newOF == oldOF {
		t.Logf("OVS gave a3's port the old ofport %d again; checking by name only", oldOF)
	} else {
		checkNoPortFlows(t, h1, oldOF, "a2's old port "+oldPort)
	}
	var eps []api.Endpoint
	ctlJSON(t, h1, &eps, "endpoints")
	for _, e := range eps {
		if e.IP == ip.String() && (e.Name != "a3" || e.Port != a3.Port) {
			t.Errorf("endpoint for %s: %+v, want a3 on %s", ip, e, a3.Port)
		}
		if e.Name == "a2" {
			t.Errorf("detached a2 still listed: %+v", e)
		}
	}
}

// testRoamingIP: b1 leaves h2 and its IP comes back on h1 (an explicit --ip
// from another host's subnet, free cluster-wide). h2's containers reach it
// through the tunnel, and h2 has no port or delivery flow left for it.
func testRoamingIP(t *testing.T, cl *simcluster.Cluster, a1, b1, b2 *simcluster.Container) {
	h1, h2 := a1.Host, b1.Host
	ip, oldPort := b1.IP, b1.Port
	oldOF := ofportOf(t, h2, oldPort)

	// While b1 holds the address it is taken cluster-wide.
	taken, err := simhost.NewNetNS(cl.Prefix + "c-taken")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { taken.Delete() })
	msg, err := ctlFailure(h1, "attach", "--netns", taken.Name, "--name", "taken", "--ip", ip.String())
	if err != nil || !strings.Contains(msg, "h2/b1") {
		t.Errorf("attach on h1 with b1's IP while b1 holds it: %q %v; want an error naming the holder h2/b1", msg, err)
	}

	if err := cl.Detach(b1); err != nil {
		t.Fatal(err)
	}
	r1, err := cl.Attach(1, "r1", ip.String())
	if err != nil {
		t.Fatalf("roaming IP (--ip from h2's subnet on h1): %v", err)
	}
	if r1.IP != ip {
		t.Fatalf("r1 attached with %s, asked for %s", r1.IP, ip)
	}
	if err := b2.PingUntil(ip.String(), 15*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := a1.PingUntil(ip.String(), 5*time.Second); err != nil {
		t.Error(err)
	}
	if err := checkUDPSource(b2, r1, 7300); err != nil {
		t.Error(err)
	}
	if err := checkUDPSource(r1, b2, 7301); err != nil {
		t.Error(err)
	}
	pkts, err := cl.CaptureDuring(cl.Fabric, simcluster.FabricBridge, "udp port "+strconv.Itoa(int(cl.VXLANPort)), func() error {
		return b2.Ping(ip.String(), 3)
	})
	if err != nil {
		t.Fatal(err)
	}
	var toR1 int
	for _, p := range pkts {
		if p.Inner != nil && p.Inner.Dst == ip && p.Src == h2.IP && p.Dst == h1.IP && p.VNI == cl.VNI {
			toR1++
		}
	}
	if toR1 != 3 {
		t.Errorf("%d VXLAN packets h2 -> h1 for %s, want 3: %s", toR1, ip, simcluster.CountPaths(pkts))
	}

	// Nothing on h2 still leads to b1.
	if slices.Contains(brIntPorts(t, h2), oldPort) {
		t.Errorf("port %s of the detached b1 still on h2's br-int", oldPort)
	}
	checkNoPortFlows(t, h2, oldOF, "b1's old port "+oldPort)
	for _, f := range ctlFlows(t, h2, "Deliver") {
		if strings.Contains(f.Match, "nw_dst="+ip.String()) {
			t.Errorf("h2 still delivers %s locally: %+v", ip, f)
		}
	}
	var route bool
	for _, f := range ctlFlows(t, h2, "Forward") {
		if matchesDst(f.Match, ip) && strings.Contains(f.Actions, h1.IP.String()+"->tun_dst") {
			route = true
		}
	}
	if !route {
		t.Errorf("h2 has no Forward flow sending %s to h1 (%s):\n%s", ip, h1.IP, flowLines(ctlFlows(t, h2, "Forward")))
	}
}

// TestTunnelAgentBadConfig: an invalid config stops keyroute-agent before
// it touches anything, with an error that names the field.
func TestTunnelAgentBadConfig(t *testing.T) {
	if testing.Short() {
		t.Skip("skipped: builds and runs keyroute-agent")
	}
	bin := filepath.Join(testBinaries(t), "keyroute-agent")
	dir := t.TempDir()
	// Harmless even if it validated: no such uplink, OVS or etcd, so the
	// agent would stop at its first step.
	base := func() map[string]any {
		return map[string]any{
			"node": "cfgtest", "uplink": "kr-nosuch0", "datapath": "netdev", "mode": "tunnel",
			"etcd":         map[string]any{"endpoints": []string{"http://127.0.0.1:1"}},
			"cluster":      map[string]any{"pod_cidr": "198.19.0.0/16", "subnet_bits": 24},
			"cache":        map[string]any{"send_idle": "10s"},
			"ovs":          map[string]any{"db_socket": filepath.Join(dir, "db.sock"), "run_dir": dir},
			"api_socket":   filepath.Join(dir, "agent.sock"),
			"state_dir":    filepath.Join(dir, "state"),
			"metrics_addr": "",
		}
	}
	run := func(t *testing.T, cfg map[string]any, args ...string) (string, error) {
		b, err := yaml.Marshal(cfg)
		if err != nil {
			t.Fatal(err)
		}
		path := filepath.Join(t.TempDir(), "agent.yaml")
		if err := os.WriteFile(path, b, 0o644); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		out, err := exec.CommandContext(ctx, bin, append([]string{"--config", path}, args...)...).CombinedOutput()
		return string(out), err
	}
	// The base is valid, so each case below fails for its one change.
	if out, err := run(t, base(), "--check-config"); err != nil {
		t.Fatalf("base config rejected: %v\n%s", err, out)
	}
	for _, tc := range []struct {
		name   string
		change func(map[string]any)
		want   []string // all on one line of the output
	}{
		{"pod_cidr not a CIDR", func(c map[string]any) { c["cluster"].(map[string]any)["pod_cidr"] = "198.19.0.0/33" }, []string{"cluster.pod_cidr", "198.19.0.0/33"}},
		{"pod_cidr not the network", func(c map[string]any) { c["cluster"].(map[string]any)["pod_cidr"] = "198.19.1.0/16" }, []string{"cluster.pod_cidr", "198.19.0.0/16"}},
		{"recv_idle from an old config", func(c map[string]any) { c["cache"] = map[string]any{"send_idle": "10s", "recv_idle": "20s"} }, []string{"cache.recv_idle", "no longer used", "remove the setting"}},
		{"quarantine too short", func(c map[string]any) { c["cache"] = map[string]any{"quarantine": "10ms"} }, []string{"cache.quarantine", "100ms"}},
		{"unknown field", func(c map[string]any) { c["bogus_field"] = 1 }, []string{"bogus_field"}},
		{"unknown nested field", func(c map[string]any) { c["cluster"].(map[string]any)["vnii"] = 7 }, []string{"vnii"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := base()
			tc.change(cfg)
			out, err := run(t, cfg)
			var exit *exec.ExitError
			if !errors.As(err, &exit) || exit.ExitCode() == 0 {
				t.Fatalf("keyroute-agent: %v, want a non-zero exit\n%s", err, out)
			}
			if strings.Contains(out, "panic") || strings.Contains(out, "goroutine ") {
				t.Fatalf("keyroute-agent panicked:\n%s", out)
			}
			var line bool
			for _, l := range strings.Split(out, "\n") {
				all := true
				for _, w := range tc.want {
					all = all && strings.Contains(l, w)
				}
				line = line || all
			}
			if !line {
				t.Errorf("no line of the output names %q:\n%s", tc.want, out)
			}
			if n := strings.Count(strings.TrimSpace(out), "\n") + 1; n > 2 {
				t.Errorf("%d lines of output for one bad field, want a heading and one line:\n%s", n, out)
			}
		})
	}
}

// namedCheck is one check of runParallel.
type namedCheck struct {
	name string
	fn   func() error
}

// runParallel runs the checks at once and reports each failure by name; it
// returns whether all passed.
func runParallel(t *testing.T, checks []namedCheck) bool {
	t.Helper()
	errs := make([]error, len(checks))
	var wg sync.WaitGroup
	for i, c := range checks {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = c.fn()
		}()
	}
	wg.Wait()
	ok := true
	for i, err := range errs {
		if err != nil {
			t.Errorf("%s: %v", checks[i].name, err)
			ok = false
		}
	}
	return ok
}

// orderedPairs returns every (from, to) pair of distinct containers.
func orderedPairs(cs []*simcluster.Container) [][2]*simcluster.Container {
	var out [][2]*simcluster.Container
	for _, a := range cs {
		for _, b := range cs {
			if a != b {
				out = append(out, [2]*simcluster.Container{a, b})
			}
		}
	}
	return out
}

// checkUDPSource sends a datagram from one container to another and checks
// that the receiving socket sees the sender's container IP (recvfrom).
func checkUDPSource(from, to *simcluster.Container, port int) error {
	ln, err := to.ListenUDP(port)
	if err != nil {
		return fmt.Errorf("udp %s -> %s: %w", from.Name, to.Name, err)
	}
	defer ln.Close()
	dst := netip.AddrPortFrom(to.IP, uint16(port)).String()
	conn, err := from.DialUDP(dst)
	if err != nil {
		return fmt.Errorf("udp %s -> %s: %w", from.Name, to.Name, err)
	}
	defer conn.Close()
	msg := "hello from " + from.Name
	buf := make([]byte, 1500)
	// A datagram may be lost; three tries, a second each.
	for try := 0; try < 3; try++ {
		if _, err := conn.Write([]byte(msg)); err != nil {
			return fmt.Errorf("udp %s -> %s: %w", from.Name, to.Name, err)
		}
		ln.SetReadDeadline(time.Now().Add(time.Second))
		n, addr, err := ln.ReadFrom(buf)
		if err != nil {
			continue
		}
		src := addr.(*net.UDPAddr).AddrPort().Addr().Unmap()
		if string(buf[:n]) != msg || src != from.IP {
			return fmt.Errorf("udp %s -> %s: received %q from %s, want %q from %s", from.Name, to.Name, buf[:n], addr, msg, from.IP)
		}
		return nil
	}
	return fmt.Errorf("udp %s -> %s (%s): nothing received in 3 tries", from.Name, to.Name, dst)
}

// checkTCPPeer connects from one container to a listener in another and
// checks that accept sees the sender's container IP.
func checkTCPPeer(from, to *simcluster.Container, port int) error {
	addr := netip.AddrPortFrom(to.IP, uint16(port)).String()
	var ln *net.TCPListener
	err := to.NS.Do(func() error {
		l, err := net.Listen("tcp4", addr)
		if err == nil {
			ln = l.(*net.TCPListener)
		}
		return err
	})
	if err != nil {
		return fmt.Errorf("tcp %s -> %s: %w", from.Name, to.Name, err)
	}
	defer ln.Close()
	ln.SetDeadline(time.Now().Add(5 * time.Second))
	type accepted struct {
		peer netip.Addr
		msg  string
		err  error
	}
	got := make(chan accepted, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			got <- accepted{err: err}
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		b, err := io.ReadAll(c)
		got <- accepted{peer: c.RemoteAddr().(*net.TCPAddr).AddrPort().Addr().Unmap(), msg: string(b), err: err}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, err := from.NS.DialContext(ctx, "tcp4", addr)
	if err != nil {
		return fmt.Errorf("tcp %s -> %s: %w", from.Name, to.Name, err)
	}
	msg := "hello from " + from.Name
	_, err = conn.Write([]byte(msg))
	conn.Close()
	if err != nil {
		return fmt.Errorf("tcp %s -> %s: %w", from.Name, to.Name, err)
	}
	a := <-got
	switch {
	case a.err != nil:
		return fmt.Errorf("tcp %s -> %s: %w", from.Name, to.Name, a.err)
	case a.peer != from.IP || a.msg != msg:
		return fmt.Errorf("tcp %s -> %s: accepted %s sending %q, want %s sending %q", from.Name, to.Name, a.peer, a.msg, from.IP, msg)
	}
	return nil
}

// checkBidirReverse checks that an iperf3 --bidir run moved data in the
// reverse direction too (IperfResult covers the forward one).
func checkBidirReverse(report []byte) error {
	var r struct {
		End struct {
			Rev struct {
				Bytes int64 `json:"bytes"`
			} `json:"sum_received_bidir_reverse"`
		} `json:"end"`
	}
	if err := json.Unmarshal(report, &r); err != nil {
		return fmt.Errorf("parse iperf3 report: %w", err)
	}
	if r.End.Rev.Bytes == 0 {
		return errors.New("nothing received in the reverse direction")
	}
	return nil
}

// hostPing pings a container from a host's own namespace.
func hostPing(h *simcluster.Host, dst netip.Addr, count int) error {
	out, err := h.Exec("ping", "-n", "-c", strconv.Itoa(count), "-i", "0.2", "-W", "2", dst.String())
	st, perr := simcluster.ParsePing(out)
	if perr != nil || st.Received != count || st.Duplicates != 0 {
		return fmt.Errorf("ping %s from %s: %+v: %v", dst, h.Name, st, errors.Join(err, perr))
	}
	return nil
}

func pod(a netip.Addr) bool { return a.IsValid() && podCIDR.Contains(a) }

// mentions reports whether a packet carries either address, outside or
// inside a tunnel.
func mentions(p simcluster.CapturedPacket, ips ...netip.Addr) bool {
	for _, ip := range ips {
		if p.Src == ip || p.Dst == ip || p.Inner != nil && (p.Inner.Src == ip || p.Inner.Dst == ip) {
			return true
		}
	}
	return false
}

func hostNamed(cl *simcluster.Cluster, name string) *simcluster.Host {
	for _, h := range cl.Hosts() {
		if h.Name == name {
			return h
		}
	}
	return nil
}

func mustExec(t *testing.T, c *simcluster.Container, args ...string) {
	t.Helper()
	if out, err := c.Exec(args...); err != nil {
		t.Fatalf("%s: %v\n%s", c.Name, err, out)
	}
}

// ctlFailure runs keyroutectl expecting it to fail, and returns what it
// printed on stderr. It is an error if keyroutectl succeeded, printed on
// stdout, panicked, or said more (or less) than one line.
func ctlFailure(h *simcluster.Host, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(h.Cluster().BinDir, "keyroutectl"), append([]string{"--socket", h.APISocket}, args...)...)
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	msg := strings.TrimSpace(stderr.String())
	var exit *exec.ExitError
	switch {
	case err == nil:
		return msg, fmt.Errorf("keyroutectl %s succeeded: %s", strings.Join(args, " "), stdout.String())
	case !errors.As(err, &exit):
		return msg, fmt.Errorf("keyroutectl %s: %w", strings.Join(args, " "), err)
	case stdout.Len() > 0 || msg == "" || strings.Contains(msg, "\n") || strings.Contains(msg, "panic"):
		return msg, fmt.Errorf("keyroutectl %s: want one line on stderr and nothing on stdout, got stdout %q stderr %q",
			strings.Join(args, " "), stdout.String(), msg)
	}
	return msg, nil
}

// ctlJSON runs `keyroutectl <args> -o json` and decodes its output.
func ctlJSON(t *testing.T, h *simcluster.Host, v any, args ...string) {
	t.Helper()
	out, err := h.Ctl(append(args, "-o", "json")...)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal([]byte(out), v); err != nil {
		t.Fatalf("%s keyroutectl %v: %v\n%s", h.Name, args, err, out)
	}
}

func ctlStatus(t *testing.T, h *simcluster.Host) api.Status {
	t.Helper()
	var st api.Status
	ctlJSON(t, h, &st, "status")
	return st
}

func ctlFlows(t *testing.T, h *simcluster.Host, table string) []api.Flow {
	t.Helper()
	var fs []api.Flow
	ctlJSON(t, h, &fs, "flows", "--table", table)
	return fs
}

func flowLines(fs []api.Flow) string {
	var b strings.Builder
	for _, f := range fs {
		fmt.Fprintf(&b, "  prio %d %s %s: %s -> %s\n", f.Priority, f.Category, f.TableName, f.Match, f.Actions)
	}
	return b.String()
}

// matchesDst reports whether a flow match selects exactly ip as nw_dst.
func matchesDst(match string, ip netip.Addr) bool {
	for _, f := range strings.Split(match, ",") {
		if f == "nw_dst="+ip.String() || f == "nw_dst="+ip.String()+"/32" {
			return true
		}
	}
	return false
}

// dropCount is the packet count of SpoofGuard's catch-all drop.
func dropCount(t *testing.T, h *simcluster.Host) uint64 {
	t.Helper()
	for _, f := range ctlFlows(t, h, "SpoofGuard") {
		if f.Priority == 0 && f.Match == "" {
			if f.Actions != "drop" {
				t.Fatalf("%s SpoofGuard catch-all does %q, want drop", h.Name, f.Actions)
			}
			return f.Packets
		}
	}
	t.Fatalf("%s SpoofGuard has no priority-0 catch-all flow", h.Name)
	return 0
}

func gatewayOf(t *testing.T, h *simcluster.Host) netip.Addr {
	t.Helper()
	gw, err := netip.ParseAddr(ctlStatus(t, h).Gateway)
	if err != nil {
		t.Fatalf("%s gateway: %v", h.Name, err)
	}
	return gw
}

// brIntPorts lists br-int's ports as OVS has them.
func brIntPorts(t *testing.T, h *simcluster.Host) []string {
	t.Helper()
	out, err := h.OVS.Vsctl("list-ports", "br-int")
	if err != nil {
		t.Fatal(err)
	}
	return strings.Fields(out)
}

func ofportOf(t *testing.T, h *simcluster.Host, port string) int {
	t.Helper()
	out, err := h.OVS.Vsctl("get", "Interface", port, "ofport")
	n, perr := strconv.Atoi(strings.TrimSpace(out))
	if err != nil || perr != nil || n <= 0 {
		t.Fatalf("%s ofport of %s: %q %v %v", h.Name, port, out, err, perr)
	}
	return n
}

var portRefRE = regexp.MustCompile(`(?:in_port=|output:)(\d+)\b`)

// checkNoPortFlows fails if any br-int flow in OVS (owned by the agent or
// not) still matches on or outputs to ofport.
func checkNoPortFlows(t *testing.T, h *simcluster.Host, ofport int, what string) {
	t.Helper()
	out, err := h.OVS.Ofctl("-O", "OpenFlow13", "--no-names", "dump-flows", "br-int")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(out, "\n") {
		for _, m := range portRefRE.FindAllStringSubmatch(line, -1) {
			if m[1] == strconv.Itoa(ofport) {
				t.Errorf("%s: flow still uses %s (ofport %d): %s", h.Name, what, ofport, strings.TrimSpace(line))
			}
		}
	}
}

// metricValue finds an unlabelled or fully labelled sample in Prometheus
// text.
func metricValue(text, sample string) (float64, bool) {
	for _, l := range strings.Split(text, "\n") {
		if rest, ok := strings.CutPrefix(l, sample+" "); ok {
			v, err := strconv.ParseFloat(strings.TrimSpace(rest), 64)
			return v, err == nil
		}
	}
	return 0, false
}
