package e2e

import (
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/keyroute/keyroute/api"
	"github.com/keyroute/keyroute/simcluster"
	"github.com/keyroute/keyroute/simhost"
)

// A VM's NIC attached with `keyroutectl attach --port`: a veth end in h1's
// namespace stands for the VM's tap, its peer (eth0 in a namespace the test
// makes) for the guest's NIC with its own MAC, not one derived from its IP.
// It reaches a container on h2 over the fast path (host IPs and a DSCP key
// on the wire, no VXLAN), tagged payloads arrive both ways, and detach
// gives the interface back as the test made it.
func TestVMPortFastPath(t *testing.T) {
	cl := rwCluster(t, simcluster.Options{Hosts: 2})
	h1 := cl.Host(1)
	st := rwEtcd(t, cl)
	const (
		tap      = "vmtap1"
		vmMAC    = "52:54:00:4b:52:01"
		tapMTU   = "1400"
		tapAddr  = "198.18.250.1/24" // the interface's own, before attach
		gwMAC    = "0a:00:00:00:00:01"
		vmPrefix = "vm-"
	)
	var status api.Status
	if !rwCtl(t, h1, "status", &status) {
		t.FailNow()
	}
	subnet := netip.MustParsePrefix(status.PodSubnet)
	gw := netip.MustParseAddr(status.Gateway)
	vmIP := subnet.Addr().Next().Next().Next().Next().Next().Next().Next().Next().Next().Next() // .10

	// The "VM": a namespace whose eth0 is the peer of h1's vmtap1, set up
	// as a guest would be, before the host attaches anything.
	vmNS, err := simhost.NewNetNS(cl.Prefix + vmPrefix + "1")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { vmNS.Delete() })
	mustExec := func(run func(...string) (string, error), args ...string) string {
		t.Helper()
		out, err := run(args...)
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	mustExec(h1.Exec, "ip", "link", "add", tap, "mtu", tapMTU, "type", "veth", "peer", "name", "eth0", "netns", vmNS.Name)
	mustExec(h1.Exec, "ip", "addr", "add", tapAddr, "dev", tap)
	mustExec(h1.Exec, "ip", "link", "set", tap, "up")
	for _, c := range [][]string{
		{"ip", "link", "set", "eth0", "address", vmMAC},
		{"ip", "addr", "add", vmIP.String() + "/32", "dev", "eth0"},
		{"ip", "link", "set", "eth0", "up"},
		{"ip", "route", "add", "default", "via", gw.String(), "dev", "eth0", "onlink"},
		// The netdev datapath does not complete checksums left to
		// offload (a guest's virtio NIC would be configured alike).
		{"ethtool", "-K", "eth0", "tx", "off"},
	} {
		mustExec(vmNS.Exec, c...)
	}
	before := linkView(t, h1, tap)
	t.Logf("%s before attach: %s", tap, before)

	// Bad requests get a clear error and change nothing.
	for _, bad := range []struct {
		args []string
		want string
	}{
		{[]string{"--port", "vmnosuch0", "--ip", vmIP.String()}, "no such interface"},
		{[]string{"--port", simcluster.Uplink}, "host's own interfaces"},
		{[]string{"--port", tap, "--mac", "01:00:5e:00:00:01"}, "not a unicast"},
		{[]string{"--port", tap, "--netns", vmNS.Name, "--name", "x"}, "not both"},
	} {
		msg, err := ctlFailure(h1, append([]string{"attach"}, bad.args...)...)
		if err != nil || !strings.Contains(msg, bad.want) {
			t.Errorf("attach %v: %q, %v; want an error saying %q", bad.args, msg, err, bad.want)
		}
	}
	if after := linkView(t, h1, tap); after != before {
		t.Fatalf("%s changed by refused attaches: %s", tap, after)
	}

	out := mustExec(h1.Ctl, "attach", "--port", tap, "--mac", vmMAC, "--ip", vmIP.String(), "-o", "json")
	var got api.Endpoint
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatalf("keyroutectl attach --port -o json: %v: %q", err, out)
	}
	if got.Name != tap || got.Port != tap || got.IP != vmIP.String() || got.MAC != vmMAC {
		t.Fatalf("attach --port: %s, want name and port %s, ip %s, mac %s", out, tap, vmIP, vmMAC)
	}
	// The VM, seen as the cluster's containers are.
	mac, _ := net.ParseMAC(vmMAC)
	vm := &simcluster.Container{Name: tap, Host: h1, NS: vmNS, IP: vmIP, MAC: mac, Port: tap}
	// Every host reads the VM's MAC from its record.
	eps := allEndpoints(t, cl.Host(2))
	if i := slices.IndexFunc(eps, func(e api.Endpoint) bool { return e.Name == tap }); i < 0 || eps[i].MAC != vmMAC || eps[i].NetNS != "" {
		t.Errorf("h2's view of the endpoints: %+v, want %s with mac %s and no netns", eps, tap, vmMAC)
	}

	c2 := rwAttach(t, cl, 2, "c2")[0]
	// Container veths fill in their checksums on netdev (agent/datapath.go);
	// the kernel datapath leaves offloads on.
	wantTx := map[string]string{simcluster.DatapathNetdev: "tx-checksumming: off", simcluster.DatapathSystem: "tx-checksumming: on"}[cl.Datapath()]
	for _, k := range []struct {
		run func(...string) (string, error)
		dev string
	}{{c2.Exec, "eth0"}, {c2.Host.Exec, c2.Port}} {
		if out := mustExec(k.run, "ethtool", "-k", k.dev); !strings.Contains(out, wantTx) {
			t.Errorf("ethtool -k %s of c2 on %s: want %q:\n%s", k.dev, cl.Datapath(), wantTx, out)
		}
	}
	if err := vm.PingUntil(c2.IP.String(), 15*time.Second); err != nil {
		t.Fatalf("vm -> c2: %v", err)
	}
	fwd := rwWaitFast(t, st, vm, c2, 10*time.Second)
	if err := c2.Ping(vm.IP.String(), 2); err != nil {
		t.Fatalf("c2 -> vm: %v", err)
	}
	back := rwWaitFast(t, st, c2, vm, 10*time.Second)

	pkts, err := cl.CaptureDuring(cl.Fabric, "h1", "icmp or udp port 4789", func() error { return vm.Ping(c2.IP.String(), 3) })
	if err != nil {
		t.Fatal(err)
	}
	pc := simcluster.CountPaths(pkts)
	if pc.VXLAN != 0 || pc.Rewrite != 6 || !slices.Equal(pc.Keys, rwSortedKeys(fwd.Key.DSCP, back.Key.DSCP)) {
		t.Errorf("3 pings vm<->c2 on the wire: %s; want 6 rewritten with keys %d and %d\n%s", pc, fwd.Key.DSCP, back.Key.DSCP, rwDump(pkts))
	}
	for _, p := range pkts {
		if p.Path() == simcluster.PathRewrite && !(rwIsPair(p, vm, c2, fwd.Key.DSCP) || rwIsPair(p, c2, vm, back.Key.DSCP)) {
			t.Errorf("on the wire: %s, want host IPs %s<->%s with keys %d/%d", p, h1.IP, c2.Host.IP, fwd.Key.DSCP, back.Key.DSCP)
		}
	}

	// Tagged payloads arrive, from the right address, both ways; the VM
	// only takes frames sent to its own MAC.
	tag := fmt.Sprintf("vm-%d", time.Now().UnixNano())
	for _, dir := range []struct{ from, to *simcluster.Container }{{vm, c2}, {c2, vm}} {
		ln, err := dir.to.ListenUDP(7420)
		if err != nil {
			t.Fatal(err)
		}
		if err := sendUDP(dir.from, dir.to.IP, 7420, tag); err != nil {
			ln.Close()
			t.Fatal(err)
		}
		ln.SetReadDeadline(time.Now().Add(5 * time.Second))
		buf := make([]byte, 256)
		n, from, err := ln.ReadFrom(buf)
		ln.Close()
		if err != nil || string(buf[:n]) != tag || from.(*net.UDPAddr).IP.String() != dir.from.IP.String() {
			t.Errorf("%s -> %s: got %q from %v (%v), want %q from %s", dir.from.Name, dir.to.Name, buf[:n], from, err, tag, dir.from.IP)
		}
	}
	// What the VM saw of its gateway: the cluster's gateway MAC.
	if neigh := mustExec(vmNS.Exec, "ip", "neigh", "show", gw.String()); !strings.Contains(neigh, gwMAC) {
		t.Errorf("the VM's neighbour entry for its gateway: %q, want %s", neigh, gwMAC)
	}

	// Detach gives the interface back as it was.
	mustExec(h1.Ctl, "detach", "--name", tap)
	if after := linkView(t, h1, tap); after != before {
		t.Errorf("%s after detach:\n%s\nwant as before attach:\n%s", tap, after, before)
	}
	if slices.Contains(brIntPorts(t, h1), tap) {
		t.Errorf("%s is still a port of br-int after detach", tap)
	}
	if nft, _ := h1.Exec("nft", "list", "ruleset"); strings.Contains(nft, "port-"+tap) {
		t.Errorf("nftables chain of %s left after detach:\n%s", tap, nft)
	}
	if eps := allEndpoints(t, cl.Host(2)); slices.ContainsFunc(eps, func(e api.Endpoint) bool { return e.Name == tap }) {
		t.Errorf("the record of %s is still in etcd after detach: %+v", tap, eps)
	}

	// Attached again, across an agent restart (the state before attach is
	// kept with the OVS port), then the host's uninstall: given back too.
	mustExec(h1.Ctl, "attach", "--port", tap, "--mac", vmMAC, "--ip", vmIP.String())
	if err := h1.StopAgent(); err != nil {
		t.Fatal(err)
	}
	if err := h1.StartAgent(); err != nil {
		t.Fatal(err)
	}
	if err := vm.PingUntil(c2.IP.String(), 15*time.Second); err != nil {
		t.Fatalf("vm -> c2 after h1's agent restarted: %v", err)
	}
	if err := h1.StopAgent(); err != nil {
		t.Fatal(err)
	}
	un, err := exec.Command("ip", "netns", "exec", h1.NS.Name, filepath.Join(cl.BinDir, "keyroute-agent"),
		"--config", h1.ConfigPath, "--uninstall").CombinedOutput()
	if err != nil {
		t.Fatalf("h1 keyroute-agent --uninstall: %v\n%s", err, un)
	}
	if after := linkView(t, h1, tap); after != before {
		t.Errorf("%s after uninstall:\n%s\nwant as before attach:\n%s", tap, after, before)
	}
}

// linkView is what a user checks of an interface: MTU, up state and
// addresses (without the kernel's IPv6 link-local one).
func linkView(t *testing.T, h *simcluster.Host, dev string) string {
	t.Helper()
	out, err := h.Exec("ip", "-j", "addr", "show", "dev", dev)
	if err != nil {
		t.Fatalf("%s: %v", dev, err)
	}
	var links []struct {
		MTU      int      `json:"mtu"`
		Flags    []string `json:"flags"`
		Master   string   `json:"master"`
		AddrInfo []struct {
			Local     string `json:"local"`
			PrefixLen int    `json:"prefixlen"`
			Scope     string `json:"scope"`
		} `json:"addr_info"`
	}
	if err := json.Unmarshal([]byte(out), &links); err != nil || len(links) != 1 {
		t.Fatalf("ip -j addr show %s: %v: %s", dev, err, out)
	}
	l := links[0]
	var addrs []string
	for _, a := range l.AddrInfo {
		if a.Scope != "link" {
			addrs = append(addrs, fmt.Sprintf("%s/%d", a.Local, a.PrefixLen))
		}
	}
	return fmt.Sprintf("mtu %d up %v master %q addrs %v", l.MTU, slices.Contains(l.Flags, "UP"), l.Master, addrs)
}

// allEndpoints is `keyroutectl endpoints --all` on h: the records in etcd.
func allEndpoints(t *testing.T, h *simcluster.Host) []api.Endpoint {
	t.Helper()
	out, err := h.Ctl("endpoints", "--all", "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	var eps []api.Endpoint
	if err := json.Unmarshal([]byte(out), &eps); err != nil {
		t.Fatalf("keyroutectl endpoints --all -o json: %v: %q", err, out)
	}
	return eps
}
