package e2e

// Issue 16, AF_XDP ports: the harness's hosts run with the agent's default
// port type (auto: AF_XDP on these netdev hosts), so the whole suite
// exercises it; these tests run the core tunnel and rewrite checks with
// the other port type, and the fallback from AF_XDP to system ports.

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/keyroute/keyroute/internal/testenv"
	"github.com/keyroute/keyroute/preflight"
	"github.com/keyroute/keyroute/simcluster"
	"github.com/keyroute/keyroute/simhost"
)

// requireAFXDP skips t where the hosts cannot have AF_XDP ports: on the
// kernel datapath (a netdev-datapath feature), or (unavailable, see
// internal/testenv) without the kernel's XDP sockets.
func requireAFXDP(t *testing.T) {
	t.Helper()
	if dp, err := simcluster.DatapathFromEnv(); err != nil {
		t.Fatal(err)
	} else if dp != simcluster.DatapathNetdev {
		t.Skipf("%s=%s: AF_XDP ports are a netdev (userspace) datapath feature", simcluster.EnvDatapath, dp)
	}
	if err := preflight.XDPSocket(); err != nil {
		testenv.Unavailable(t, "no AF_XDP sockets in this kernel: %v", err)
	}
}

// ovsPortType is the OVS Interface type an agent port type makes.
var ovsPortType = map[string]string{simcluster.PortTypeSystem: "", simcluster.PortTypeAFXDP: "afxdp-nonpmd"}

// otherPortTypes are the port types the rest of the suite does not run
// with: system, unless KEYROUTE_E2E_PORT_TYPE=system makes every other
// test use system ports, then afxdp.
func otherPortTypes(t *testing.T) []string {
	pt, err := simcluster.PortTypeFromEnv()
	if err != nil {
		t.Fatal(err)
	}
	if pt == simcluster.PortTypeSystem {
		return []string{simcluster.PortTypeAFXDP}
	}
	return []string{simcluster.PortTypeSystem}
}

// TestPortTypes: the tunnel (a pair's first packets, VXLAN) and the fast
// path (rewritten, keyed; TCP across it) work with each port type.
func TestPortTypes(t *testing.T) {
	for _, pt := range otherPortTypes(t) {
		t.Run(pt, func(t *testing.T) {
			if pt == simcluster.PortTypeAFXDP {
				requireAFXDP(t)
			}
			start := time.Now()
			defer func() { t.Logf("TestPortTypes/%s took %s", pt, time.Since(start).Round(time.Millisecond)) }()
			p := rwStartPair(t, simcluster.Options{PortType: pt})
			for _, h := range p.cl.Hosts() {
				checkPortTypes(t, h, pt, "ovs.port_type: "+pt, nil)
			}
			corePaths(t, p)
		})
	}
}

// corePaths: a new pair's first packets go through VXLAN and it reaches
// the fast path; pings and TCP then travel rewritten with the pair's keys,
// arriving from the sender's container IP.
func corePaths(t *testing.T, p rwPair) {
	t.Helper()
	fwd, back := p.bothFast(t, 10*time.Second)
	pkts, err := p.cl.CaptureDuring(p.cl.Fabric, p.h1.Name, "icmp or udp port 4789", func() error { return p.c1.Ping(p.c2.IP.String(), 3) })
	if err != nil {
		t.Fatal(err)
	}
	if pc := simcluster.CountPaths(pkts); pc.VXLAN != 0 || pc.Rewrite != 6 || !slices.Equal(pc.Keys, rwSortedKeys(fwd.Key.DSCP, back.Key.DSCP)) {
		t.Errorf("3 pings c1<->c2 on the wire: %s; want 6 rewritten with keys %d and %d", pc, fwd.Key.DSCP, back.Key.DSCP)
	}
	// A new pair: c3 on h2 to c1. Its first packets are VXLAN.
	c3 := rwAttach(t, p.cl, 2, "c3")[0]
	first, err := p.cl.CaptureDuring(p.cl.Fabric, p.h1.Name, "udp port 4789", func() error { return c3.PingUntil(p.c1.IP.String(), 10*time.Second) })
	if err != nil {
		t.Fatal(err)
	}
	var tunnelled int
	for _, pkt := range first {
		if rwIsPair(pkt, c3, p.c1, 0) {
			tunnelled++
		}
	}
	if tunnelled == 0 {
		t.Errorf("c3->c1's first packets: none in VXLAN on the wire:\n%s", rwDump(first))
	}
	if err := checkTCPPeer(c3, p.c1, 7002); err != nil {
		t.Error(err)
	}
	rwWaitFast(t, p.st, c3, p.c1, 10*time.Second)
	srv, err := p.c2.StartIperfServer(5201)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Stop(5 * time.Second)
	wire, err := p.cl.StartCapture(p.cl.Fabric, p.h1.Name, "tcp port 5201 or udp port 4789", 200)
	if err != nil {
		t.Fatal(err)
	}
	res, err := p.c1.Iperf(p.c2.IP.String(), 5201, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	tcp, err := wire.Wait(5 * time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if pc := simcluster.CountPaths(tcp); pc.VXLAN != 0 || pc.Rewrite != len(tcp) || len(tcp) == 0 {
		t.Errorf("iperf3 c1->c2 on the wire: %s; want every packet rewritten", pc)
	}
	t.Logf("iperf3 c1->c2: %.2f Gbit/s, %d retransmits", res.Gbps, res.Retransmits)
}

// checkPortTypes checks h's status line and its OVS ports: the uplink and
// every container port of the type want (fallbacks: the ports that fell
// back to system, with a reason containing the value).
func checkPortTypes(t *testing.T, h *simcluster.Host, want, reason string, fallbacks map[string]string) {
	t.Helper()
	st := ctlStatus(t, h)
	if st.PortType.Type != want || st.PortType.Reason != reason {
		t.Errorf("%s status: ports %q, want %s (%s)", h.Name, st.PortType, want, reason)
	}
	got := map[string]string{}
	for _, f := range st.PortType.Fallbacks {
		got[f.Port] = f.Error
		if f.Type != simcluster.PortTypeSystem {
			t.Errorf("%s: fallback %+v: type %q, want system", h.Name, f, f.Type)
		}
	}
	for port, why := range fallbacks {
		if !strings.Contains(got[port], why) {
			t.Errorf("%s status: fallback of %s is %q, want a reason containing %q (all: %s)", h.Name, port, got[port], why, st.PortType)
		}
	}
	if len(got) != len(fallbacks) {
		t.Errorf("%s status: %d fallbacks, want %d: %s", h.Name, len(got), len(fallbacks), st.PortType)
	}
	ours := map[string]bool{simcluster.Uplink: true}
	for _, ep := range allEndpoints(t, h) {
		if ep.Host == h.Name {
			ours[ep.Port] = true
		}
	}
	for _, b := range st.Bridges {
		for _, port := range b.Ports {
			if !ours[port.Name] {
				continue
			}
			wantType := ovsPortType[want]
			if _, fell := fallbacks[port.Name]; fell {
				wantType = ""
			}
			if port.Type != wantType || port.Error != "" {
				t.Errorf("%s: port %s on %s has type %q (error %q), want %q", h.Name, port.Name, b.Name, port.Type, port.Error, wantType)
			}
			delete(ours, port.Name)
		}
	}
	for port := range ours {
		t.Errorf("%s: port %s not on any bridge", h.Name, port)
	}
}

// TestPortTypeFallback: AF_XDP ports that cannot come up (xdp-mode
// native-with-zerocopy on veths, which have no zero-copy driver) become
// system ports, status names each with OVS's error, the metric counts
// them, and traffic flows; an agent restart with a mode that works creates
// them again as AF_XDP ports (delete and re-add, never a live change).
func TestPortTypeFallback(t *testing.T) {
	requireAFXDP(t)
	start := time.Now()
	defer func() { t.Logf("TestPortTypeFallback took %s", time.Since(start).Round(time.Millisecond)) }()
	zeroCopy := func(host int, cfg map[string]any) {
		if host == 1 {
			ovs := cfg["ovs"].(map[string]any)
			ovs["port_type"], ovs["xdp_mode"] = simcluster.PortTypeAFXDP, "native-with-zerocopy"
		}
	}
	p := rwStartPair(t, simcluster.Options{AgentConfig: zeroCopy})
	h1 := p.h1
	const ovsErr = "could not add network device"
	checkPortTypes(t, h1, simcluster.PortTypeAFXDP, "ovs.port_type: afxdp",
		map[string]string{simcluster.Uplink: ovsErr, p.c1.Port: ovsErr})
	checkPortTypes(t, p.h2, simcluster.PortTypeAFXDP, "auto: netdev datapath", nil)
	out, err := h1.Ctl("status")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, "system on "+p.c1.Port+" (afxdp failed: "+ovsErr) {
		t.Errorf("keyroutectl status on h1 does not name %s's fallback:\n%s", p.c1.Port, out)
	}
	m := rwMetrics(t, h1)
	if up, ct := rwMetric(m, "keyroute_port_fallbacks_total", `kind="uplink"`), rwMetric(m, "keyroute_port_fallbacks_total", `kind="container"`); up != 1 || ct != 1 {
		t.Errorf("h1 keyroute_port_fallbacks_total: uplink %v, container %v; want 1 and 1", up, ct)
	}
	fwd, back := p.bothFast(t, 10*time.Second)
	pkts, err := p.cl.CaptureDuring(p.cl.Fabric, h1.Name, "icmp or udp port 4789", func() error { return p.c1.Ping(p.c2.IP.String(), 3) })
	if err != nil {
		t.Fatal(err)
	}
	if pc := simcluster.CountPaths(pkts); pc.Rewrite != 6 || !slices.Equal(pc.Keys, rwSortedKeys(fwd.Key.DSCP, back.Key.DSCP)) {
		t.Errorf("3 pings c1<->c2 with h1 on fallback ports: %s; want 6 rewritten", pc)
	}

	// The next start with a mode that works: every port AF_XDP again.
	if err := h1.StopAgent(); err != nil {
		t.Fatal(err)
	}
	if err := h1.RewriteConfig(func(cfg map[string]any) { delete(cfg["ovs"].(map[string]any), "xdp_mode") }); err != nil {
		t.Fatal(err)
	}
	if err := h1.StartAgent(); err != nil {
		t.Fatal(err)
	}
	checkPortTypes(t, h1, simcluster.PortTypeAFXDP, "ovs.port_type: afxdp", nil)
	err = simhost.WaitFor(10*time.Second, func() error {
		if err := p.c1.Ping(p.c2.IP.String(), 1); err != nil {
			return fmt.Errorf("c1 -> c2 after h1's ports became AF_XDP: %w", err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := checkTCPPeer(p.c2, p.c1, 7003); err != nil {
		t.Error(err)
	}
}
