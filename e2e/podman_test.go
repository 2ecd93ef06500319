package e2e

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/keyroute/keyroute/api"
	"github.com/keyroute/keyroute/internal/testenv"
	"github.com/keyroute/keyroute/simcluster"
	"github.com/keyroute/keyroute/simhost"
)

// TestPodmanCNIFastPath: containers that podman (Debian's, CNI network
// backend) starts on two simulated hosts through keyroute-cni reach each
// other over the fast path — on the wire plain IPv4 between the hosts'
// IPs with the pair's DSCP key, no VXLAN — and `podman rm` removes their
// attachments, OVS ports and records. `podman run --ip` gets its address.
func TestPodmanCNIFastPath(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.Require(t, "podman", "runc", "conmon", "nsenter")
	cl := testCluster(t, simcluster.Options{Hosts: 2, Mode: "rewrite"})
	h1, h2 := cl.Host(1), cl.Host(2)
	podWaitDSCPVerified(t, cl)

	type ctr struct {
		pm       *simcluster.Podman
		name, id string
		ip       string
	}
	start := func(h *simcluster.Host, name string) ctr {
		pm, err := simcluster.NewPodman(h)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if err := pm.Close(); err != nil {
				t.Errorf("close podman of %s: %v", h.Name, err)
			}
		})
		if err := pm.ImportBusybox(); err != nil {
			t.Fatal(err)
		}
		id, err := pm.Run(2*time.Minute, "run", "-d", "--name", name, "--network", simcluster.CNINetwork, "--cap-add", "NET_RAW", simcluster.PodmanImage, "sleep", "3600")
		if err != nil {
			t.Fatal(err)
		}
		ip, err := pm.Run(time.Minute, "inspect", "-f", `{{(index .NetworkSettings.Networks "`+simcluster.CNINetwork+`").IPAddress}}`, name)
		if err != nil {
			t.Fatal(err)
		}
		return ctr{pm: pm, name: name, id: id, ip: ip}
	}
	a, b := start(h1, "a"), start(h2, "b")
	t.Logf("podman started a (%s) on h1 and b (%s) on h2", a.ip, b.ip)
	// podman run --ip reaches the plugin as the ips capability.
	fixed, err := a.pm.Run(2*time.Minute, "run", "-d", "--name", "fixed", "--network", simcluster.CNINetwork, "--ip", "198.19.0.77", simcluster.PodmanImage, "sleep", "3600")
	if err != nil {
		t.Fatal(err)
	}
	if ep, ok := podEndpoint(t, h1, fixed); !ok || ep.IP != "198.19.0.77" {
		t.Fatalf("podman run --ip 198.19.0.77: h1 records %+v (found %v)", ep, ok)
	}
	if _, err := a.pm.Run(2*time.Minute, "rm", "--force", "--time", "0", "fixed"); err != nil {
		t.Fatal(err)
	}

	// The agents recorded them under podman's container IDs.
	for _, c := range []struct {
		h *simcluster.Host
		c ctr
	}{{h1, a}, {h2, b}} {
		ep, ok := podEndpoint(t, c.h, c.c.id)
		if !ok || ep.IP != c.c.ip || ep.IfName != "eth0" {
			t.Fatalf("%s's attachment of podman container %s: %+v (found %v), want IP %s", c.h.Name, c.c.id, ep, ok, c.c.ip)
		}
		out, err := c.c.pm.Run(time.Minute, "exec", c.c.name, "ip", "-o", "addr", "show", "eth0")
		if err != nil || !strings.Contains(out, c.c.ip+"/32") {
			t.Fatalf("eth0 in %s: %q, %v", c.c.name, out, err)
		}
	}

	ping := func(count int) error {
		_, err := a.pm.Run(time.Minute, "exec", a.name, "ping", "-c", fmt.Sprint(count), "-i", "0.2", "-W", "2", b.ip)
		return err
	}
	// Bootstrap: the first packets of a->b go through VXLAN until the
	// pair's key is ready.
	var key uint8
	err = simhost.WaitFor(30*time.Second, func() error {
		if err := ping(2); err != nil {
			return err
		}
		keys, err := api.NewClient(h1.APISocket).Keys(context.Background())
		if err != nil {
			return err
		}
		for _, k := range keys {
			if k.Src == a.ip && k.Dst == b.ip && k.State == "ready" {
				key = k.Key
				return nil
			}
		}
		return fmt.Errorf("no ready key for %s->%s yet (%v)", a.ip, b.ip, keys)
	})
	if err != nil {
		t.Fatalf("a->b fast path: %v", err)
	}
	pkts, err := cl.CaptureDuring(cl.Fabric, h1.Name, "not port 2379 and not port 9477", func() error { return ping(5) })
	if err != nil {
		t.Fatal(err)
	}
	var n int
	for _, p := range pkts {
		if p.VXLAN {
			t.Errorf("VXLAN on the wire after the fast path was ready: %s", p)
		}
		if p.Src == h1.IP && p.Dst == h2.IP && p.Proto == 1 {
			if p.DSCP != key {
				t.Errorf("h1->h2 ICMP with DSCP %d, want the pair's key %d: %s", p.DSCP, key, p)
			}
			n++
		}
	}
	if n < 5 {
		t.Fatalf("%d h1->h2 ICMP packets between the host IPs, want 5 (pings from a to b): %s", n, simcluster.CountPaths(pkts))
	}
	t.Logf("a->b over the fast path: %d ICMP packets h1->h2 with key %d; wire %s", n, key, simcluster.CountPaths(pkts))

	// podman rm runs CNI DEL: attachment, OVS port and veth go.
	for _, c := range []struct {
		h *simcluster.Host
		c ctr
	}{{h1, a}, {h2, b}} {
		ep, _ := podEndpoint(t, c.h, c.c.id)
		if _, err := c.c.pm.Run(2*time.Minute, "rm", "--force", "--time", "0", c.c.name); err != nil {
			t.Fatal(err)
		}
		if _, ok := podEndpoint(t, c.h, c.c.id); ok {
			t.Errorf("%s still has the attachment of %s after podman rm", c.h.Name, c.c.name)
		}
		if ports, _ := c.h.OVS.Vsctl("list-ports", "br-int"); strings.Contains(ports, ep.Port) {
			t.Errorf("%s: OVS port %s of %s still on br-int after podman rm: %s", c.h.Name, ep.Port, c.c.name, ports)
		}
		if out, _ := c.h.Exec("ip", "-o", "link", "show"); strings.Contains(out, ep.Port) {
			t.Errorf("%s: veth %s of %s still there after podman rm", c.h.Name, ep.Port, c.c.name)
		}
	}
}

// podEndpoint finds a host's attachment of a CNI container ID.
func podEndpoint(t *testing.T, h *simcluster.Host, id string) (api.Endpoint, bool) {
	t.Helper()
	eps, err := api.NewClient(h.APISocket).Endpoints(context.Background(), false)
	if err != nil {
		t.Fatalf("%s endpoints: %v", h.Name, err)
	}
	for _, ep := range eps {
		if ep.ContainerID == id {
			return ep, true
		}
	}
	return api.Endpoint{}, false
}

// podWaitDSCPVerified waits until every agent has verified its DSCP
// paths, so pairs use keys from their first punt.
func podWaitDSCPVerified(t *testing.T, cl *simcluster.Cluster) {
	t.Helper()
	err := simhost.WaitFor(30*time.Second, func() error {
		for _, h := range cl.Hosts() {
			st, err := api.NewClient(h.APISocket).Status(context.Background())
			if err != nil {
				return err
			}
			for _, p := range st.DSCPPaths {
				if p.State != "verified" && p.State != "off" {
					return fmt.Errorf("%s: DSCP path to %s is %s", h.Name, p.Peer, p.State)
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
