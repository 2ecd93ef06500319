package bench

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/keyroute/keyroute/api"
	"github.com/keyroute/keyroute/simcluster"
	"github.com/keyroute/keyroute/simhost"
)

// Path is one measured data-plane setup, by the letter the report, the
// --paths flag and results.json name it with. It names a whole setup, not
// how a packet leaves a host (trace.Path): K, D and O have no keyroute in
// them, and on keyroute's hosts A crosses as trace.PathHostStack, B as
// trace.PathVXLAN, C and R both as trace.PathFast.
type Path string

// Paths, in the order every repetition measures them.
const (
	PathA Path = "A" // host to host over br-phy
	PathB Path = "B" // keyroute tunnel mode (VXLAN)
	PathC Path = "C" // keyroute rewrite mode, cache warm
	PathR Path = "R" // C with 1,000 network rules installed
	PathK Path = "K" // Linux kernel VXLAN, flannel-style, no OVS
	PathD Path = "D" // one veth between two namespaces
	PathO Path = "O" // OVN, Geneve (when OVN is available)
)

// PathOrder is the interleaving order of one repetition (O only when OVN
// could be brought up).
var PathOrder = []Path{PathA, PathB, PathC, PathR, PathK, PathD, PathO}

// PathNames joins paths' letters with sep.
func PathNames(ps []Path, sep string) string { return strings.Join(pathStrings(ps), sep) }

func pathStrings(ps []Path) []string {
	ss := make([]string, len(ps))
	for i, p := range ps {
		ss[i] = string(p)
	}
	return ss
}

// RulesLoad is how many network rules path R has installed.
const RulesLoad = 1000

// PathInfo describes a path for the report.
var PathInfo = map[Path]string{
	PathA: "host ↔ host: the two simulated hosts' own IPs, through br-phy of each host's OVS (netdev) and the fabric bridge; no container, no overlay. Runs on the rewrite cluster's hosts.",
	PathB: "keyroute tunnel mode: container ↔ container through br-int, userspace VXLAN (tnl_push / tnl_pop + recirculation) and br-phy.",
	PathC: "keyroute rewrite mode after bootstrap: container ↔ container, the packet rewritten in place to host addresses with a DSCP key (one datapath pass per side); the cache is warmed and checked ready before every sample.",
	PathR: "C with 1,000 network rules installed on both hosts (egress and ingress, none matching the measured traffic, so every packet's lookup meets all of them): the same cluster and containers as C, the rules put in etcd before R's samples and removed before C's.",
	PathK: "the Linux kernel's own VXLAN, flannel-style: per-host vxlan device (VNI 1, port 8472, static FDB/neighbour entries), container namespaces behind a cni0 Linux bridge, routed; no OVS. Container MTU 1450.",
	PathD: "one veth pair between two namespaces: the floor of what the kernel can do here.",
	PathO: "OVN (Debian's ovn-host/ovn-central 23.03) on two more simulated hosts of the same harness: NB/SB ovsdb-servers and ovn-northd, an ovn-controller per host on its private OVS (netdev br-int, userspace Geneve with checksums, as OVN sets it up), the host IP on a br-phy; one logical switch, container MTU 1442.",
}

// ovsPath reports whether a path runs through ovs-vswitchd.
func ovsPath(p Path) bool {
	return p == PathA || p == PathB || p == PathC || p == PathR || p == PathO
}

// endpoint is one side of a measured path.
type endpoint struct {
	ns string
	ip netip.Addr
}

// path is what a sample needs to know about a path.
type path struct {
	name    Path
	client  endpoint
	server  endpoint
	ovs     []*simhost.OVS
	prepare func(ctx context.Context) (string, error) // before each test; returns a note
	check   func() (string, error)                    // after each test; returns a note
}

// kernelNet is the agent-less part: the flannel-style VXLAN pair (K) and
// the plain veth (D), in namespaces named prefix+....
type kernelNet struct {
	prefix string
}

const (
	kUnderlay = "198.18.10."
	kPod      = "198.19.10" // + host digit + ".0/24"
	dNet      = "198.18.20."
)

func (k *kernelNet) ns(name string) string { return k.prefix + name }

// setup builds K and D. Kernel offloads stay at their defaults: that is
// how flannel and a veth run in production.
func (k *kernelNet) setup() error {
	for _, n := range []string{"kfab", "kh1", "kh2", "kc1", "kc2", "d1", "d2"} {
		if _, err := simhost.NewNetNS(k.ns(n)); err != nil {
			return err
		}
	}
	run := func(ns string, args ...string) error {
		_, err := simhost.Run("ip", append([]string{"netns", "exec", k.ns(ns)}, args...)...)
		return err
	}
	var errs []error
	do := func(ns string, args ...string) {
		if len(errs) == 0 {
			if err := run(ns, args...); err != nil {
				errs = append(errs, fmt.Errorf("set up kernel paths: %w", err))
			}
		}
	}
	link := func(a, aNS, b, bNS string) {
		if len(errs) == 0 {
			if _, err := simhost.Run("ip", "link", "add", a, "netns", k.ns(aNS), "type", "veth", "peer", "name", b, "netns", k.ns(bNS)); err != nil {
				errs = append(errs, fmt.Errorf("set up kernel paths: %w", err))
			}
		}
	}
	do("kfab", "ip", "link", "add", "kfab0", "type", "bridge", "stp_state", "0", "forward_delay", "0")
	do("kfab", "ip", "link", "set", "kfab0", "up")
	for _, i := range []string{"1", "2"} {
		h, c := "kh"+i, "kc"+i
		other := map[string]string{"1": "2", "2": "1"}[i]
		link("eth1", h, h, "kfab")
		do("kfab", "ip", "link", "set", h, "master", "kfab0", "up")
		do(h, "ip", "addr", "add", kUnderlay+i+"/24", "dev", "eth1")
		do(h, "ip", "link", "set", "eth1", "up")
		do(h, "sysctl", "-qw", "net.ipv4.ip_forward=1")
		do(h, "ip", "link", "add", "cni0", "type", "bridge")
		do(h, "ip", "addr", "add", kPod+i+".1/24", "dev", "cni0")
		do(h, "ip", "link", "set", "cni0", "up")
		link("veth0", h, "eth0", c)
		do(h, "ip", "link", "set", "veth0", "master", "cni0", "mtu", "1450", "up")
		do(c, "ip", "link", "set", "eth0", "mtu", "1450", "up")
		do(c, "ip", "addr", "add", kPod+i+".2/24", "dev", "eth0")
		do(c, "ip", "route", "add", "default", "via", kPod+i+".1")
		// flannel's vxlan backend: one device, static entries per peer.
		do(h, "ip", "link", "add", "flannel.1", "address", "02:00:00:10:00:0"+i, "type", "vxlan", "id", "1",
			"local", kUnderlay+i, "dev", "eth1", "dstport", "8472", "nolearning")
		do(h, "ip", "link", "set", "flannel.1", "mtu", "1450", "up")
		do(h, "ip", "addr", "add", kPod+i+".0/32", "dev", "flannel.1")
		do(h, "ip", "neigh", "add", kPod+other+".0", "lladdr", "02:00:00:10:00:0"+other, "dev", "flannel.1", "nud", "permanent")
		do(h, "bridge", "fdb", "append", "02:00:00:10:00:0"+other, "dev", "flannel.1", "dst", kUnderlay+other)
		do(h, "ip", "route", "add", kPod+other+".0/24", "via", kPod+other+".0", "dev", "flannel.1", "onlink")
	}
	link("eth0", "d1", "eth0", "d2")
	for _, i := range []string{"1", "2"} {
		do("d"+i, "ip", "addr", "add", dNet+i+"/30", "dev", "eth0")
		do("d"+i, "ip", "link", "set", "eth0", "up")
	}
	return errors.Join(errs...)
}

func (k *kernelNet) paths() []*path {
	return []*path{
		{name: PathK, client: endpoint{k.ns("kc1"), netip.MustParseAddr(kPod + "1.2")}, server: endpoint{k.ns("kc2"), netip.MustParseAddr(kPod + "2.2")}},
		{name: PathD, client: endpoint{k.ns("d1"), netip.MustParseAddr(dNet + "1")}, server: endpoint{k.ns("d2"), netip.MustParseAddr(dNet + "2")}},
	}
}

// teardown deletes every namespace of the kernel paths (processes in them
// are the servers, stopped by PID before).
func (k *kernelNet) teardown() error {
	var errs []error
	for _, n := range simhost.ListNetNS(k.prefix) {
		errs = append(errs, (&simhost.NetNS{Name: n}).Delete())
	}
	return errors.Join(errs...)
}

// overlay is a two-host keyroute cluster with one container per host.
type overlay struct {
	mode   string
	cl     *simcluster.Cluster
	c1, c2 *simcluster.Container
	// rules is how many network rules are installed (paths C and R share
	// the rewrite cluster and set it before each sample).
	rules int
}

func startOverlay(ctx context.Context, mode, binDir string, opts simcluster.Options) (*overlay, error) {
	opts.Hosts, opts.Mode, opts.BinDir = 2, mode, binDir
	cl, err := simcluster.NewCluster(ctx, opts)
	if err != nil {
		return nil, fmt.Errorf("start %s cluster: %w", mode, err)
	}
	o := &overlay{mode: mode, cl: cl}
	if o.c1, err = cl.Attach(1, "c1", ""); err == nil {
		o.c2, err = cl.Attach(2, "c2", "")
	}
	if err == nil {
		err = o.c1.PingUntil(o.c2.IP.String(), 15*time.Second)
	}
	if err != nil {
		return nil, errors.Join(fmt.Errorf("start %s cluster: %w", mode, err), cl.Close())
	}
	return o, nil
}

func (o *overlay) vswitchds() []*simhost.OVS {
	return []*simhost.OVS{o.cl.Host(1).OVS, o.cl.Host(2).OVS}
}

// containerPath is B, or C and R: c1 → c2 with nRules network rules
// installed.
func (o *overlay) containerPath(name Path, nRules int) *path {
	p := &path{name: name, client: endpoint{o.c1.NS.Name, o.c1.IP}, server: endpoint{o.c2.NS.Name, o.c2.IP}, ovs: o.vswitchds()}
	if o.mode == "rewrite" {
		var before uint64
		p.prepare = func(ctx context.Context) (string, error) {
			note, err := o.setRules(ctx, nRules)
			if err != nil {
				return "", err
			}
			if err := o.warm(ctx); err != nil {
				return "", err
			}
			n, err := o.egressPackets()
			before = n
			return note, err
		}
		p.check = func() (string, error) {
			n, err := o.egressPackets()
			if err != nil {
				return "", err
			}
			if n == before {
				return "", fmt.Errorf("no packet took the c1→c2 rewrite entry: the sample ran over VXLAN")
			}
			return fmt.Sprintf("rewrite entry c1→c2: +%d packets", n-before), nil
		}
	}
	return p
}

// setRules makes n rules the installed set unless it is already (0: none):
// rules that select c1 and c2 (names c*, c?) but match none of the
// measured traffic. It waits until both hosts enforce them.
func (o *overlay) setRules(ctx context.Context, n int) (string, error) {
	if o.rules == n {
		return "", nil
	}
	cli, err := o.cl.EtcdClient()
	if err != nil {
		return "", err
	}
	defer cli.Close()
	start := time.Now()
	if err := simcluster.DeleteAllRules(ctx, cli); err != nil {
		return "", err
	}
	o.rules = -1 // unknown until both hosts agree
	if err := simcluster.PutRules(ctx, cli, simcluster.NonMatchingRules(n, "c*", "c?")); err != nil {
		return "", err
	}
	for _, h := range []*simcluster.Host{o.c1.Host, o.c2.Host} {
		if err := h.WaitRulesEnforced(n, 60*time.Second); err != nil {
			return "", fmt.Errorf("%d rules: %w", n, err)
		}
	}
	// The datapath flows made before the change are revalidated against
	// the new tables before the sample.
	for _, vs := range o.vswitchds() {
		if _, err := vs.Appctl("revalidator/wait"); err != nil {
			return "", err
		}
	}
	o.rules = n
	return fmt.Sprintf("%d rules enforced on both hosts after %s", n, time.Since(start).Round(time.Millisecond)), nil
}

// hostPath is A on this cluster's hosts.
func (o *overlay) hostPath() *path {
	h1, h2 := o.cl.Host(1), o.cl.Host(2)
	return &path{name: PathA, client: endpoint{h1.NS.Name, h1.IP}, server: endpoint{h2.NS.Name, h2.IP}, ovs: o.vswitchds()}
}

// warm sends a few pings each way and waits until both directions'
// rewrite entries are ready, so C is measured after bootstrap (entries
// idle out after send_idle between samples; re-warming takes milliseconds).
func (o *overlay) warm(ctx context.Context) error {
	deadline := time.Now().Add(15 * time.Second)
	for {
		s1, err1 := egressState(ctx, o.c1.Host, o.c1.IP, o.c2.IP)
		s2, err2 := egressState(ctx, o.c2.Host, o.c2.IP, o.c1.IP)
		if s1 == "ready" && s2 == "ready" {
			return nil
		}
		if time.Now().After(deadline) {
			keys, _ := api.NewClient(o.c1.Host.APISocket).Keys(ctx)
			return fmt.Errorf("rewrite cache c1↔c2 not ready after 15 s: h1 c1→c2 entry %q (%v), h2 c2→c1 entry %q (%v); key records: %s",
				s1, err1, s2, err2, keyRecords(keys, o.c1.IP, o.c2.IP))
		}
		o.c1.Exec("ping", "-n", "-c", "2", "-i", "0.05", "-W", "1", o.c2.IP.String())
		time.Sleep(20 * time.Millisecond)
	}
}

// egressState is the state of h's egress cache entry src→dst ("" if none).
func egressState(ctx context.Context, h *simcluster.Host, src, dst netip.Addr) (string, error) {
	es, err := api.NewClient(h.APISocket).Cache(ctx)
	if err != nil {
		return "", err
	}
	for _, e := range es {
		if e.Side == "egress" && e.Src == src.String() && e.Dst == dst.String() {
			return e.State, nil
		}
	}
	return "", nil
}

// keyRecords prints the etcd key records between a and b.
func keyRecords(keys []api.Key, a, b netip.Addr) string {
	var out []string
	for _, k := range keys {
		if (k.Src == a.String() && k.Dst == b.String()) || (k.Src == b.String() && k.Dst == a.String()) {
			out = append(out, fmt.Sprintf("%s→%s key %d %s age %ds", k.Src, k.Dst, k.Key, k.State, k.AgeSec))
		}
	}
	if len(out) == 0 {
		return "none"
	}
	return strings.Join(out, ", ")
}

// egressPackets is the c1→c2 rewrite entry's packet counter on h1.
func (o *overlay) egressPackets() (uint64, error) {
	es, err := api.NewClient(o.c1.Host.APISocket).Cache(context.Background())
	if err != nil {
		return 0, fmt.Errorf("read h1 cache: %w", err)
	}
	for _, e := range es {
		if e.Side == "egress" && e.Src == o.c1.IP.String() && e.Dst == o.c2.IP.String() && e.State == "ready" {
			return e.Packets, nil
		}
	}
	return 0, nil
}
