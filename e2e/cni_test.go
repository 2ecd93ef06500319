package e2e

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/keyroute/keyroute/api"
	"github.com/keyroute/keyroute/simcluster"
	"github.com/keyroute/keyroute/simhost"
)

// cniEnv drives the built keyroute-cni through libcni, as a container
// runtime does, against one simulated host's agent.
type cniEnv struct {
	t    *testing.T
	cl   *simcluster.Cluster
	h    *simcluster.Host
	cni  *libcni.CNIConfig
	list *libcni.NetworkConfigList
	api  *api.Client
}

// cniConflist is configs/10-keyroute.conflist with the host's socket.
func cniConflist(socket string) string {
	return fmt.Sprintf(`{"cniVersion": "1.1.0", "name": "keyroute", "plugins": [
  {"type": "keyroute-cni", "socket": %q, "capabilities": {"ips": true}}]}`, socket)
}

func newCNIEnv(t *testing.T, cl *simcluster.Cluster, h *simcluster.Host) *cniEnv {
	t.Helper()
	list, err := libcni.NetworkConfFromBytes([]byte(cniConflist(h.APISocket)))
	if err != nil {
		t.Fatalf("conflist: %v", err)
	}
	return &cniEnv{t: t, cl: cl, h: h, list: list, api: api.NewClient(h.APISocket),
		cni: libcni.NewCNIConfigWithCacheDir([]string{cl.BinDir}, t.TempDir(), nil)}
}

// netns makes a namespace for container id (removed when the test ends).
func (e *cniEnv) netns(id string) string {
	e.t.Helper()
	ns, err := simhost.NewNetNS(e.cl.Prefix + "n-" + id)
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { ns.Delete() })
	return "/run/netns/" + ns.Name
}

func rt(id, netns string) *libcni.RuntimeConf {
	return &libcni.RuntimeConf{ContainerID: id, NetNS: netns, IfName: "eth0"}
}

func (e *cniEnv) add(r *libcni.RuntimeConf) (*current.Result, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	res, err := e.cni.AddNetworkList(ctx, e.list, r)
	if err != nil {
		return nil, err
	}
	return current.NewResultFromResult(res)
}

// endpoints lists the host's CNI attachments by container ID.
func (e *cniEnv) endpoints() map[string]api.Endpoint {
	e.t.Helper()
	eps, err := e.api.Endpoints(context.Background(), false)
	if err != nil {
		e.t.Fatalf("list endpoints: %v", err)
	}
	out := map[string]api.Endpoint{}
	for _, ep := range eps {
		if ep.ContainerID != "" {
			out[ep.ContainerID] = ep
		}
	}
	return out
}

// containerPortRE matches the host ends of container veths (agent's
// hostPortName), not the gateway port.
var containerPortRE = regexp.MustCompile(`^kr[0-9a-f]{11}$`)

// hostState is what an attachment leaves on the host: br-int's container
// ports and the host's kr* links.
func (e *cniEnv) hostState() (ports, links string) {
	e.t.Helper()
	p, err := e.h.OVS.Vsctl("list-ports", "br-int")
	if err != nil {
		e.t.Fatalf("list br-int ports: %v", err)
	}
	l, err := e.h.Exec("ip", "-o", "link", "show")
	if err != nil {
		e.t.Fatal(err)
	}
	var pk, lk []string
	for _, s := range strings.Fields(p) {
		if containerPortRE.MatchString(s) {
			pk = append(pk, s)
		}
	}
	for _, line := range strings.Split(l, "\n") {
		if f := strings.Fields(line); len(f) > 1 {
			if name := strings.TrimSuffix(strings.SplitN(f[1], "@", 2)[0], ":"); containerPortRE.MatchString(name) {
				lk = append(lk, name)
			}
		}
	}
	return strings.Join(pk, " "), strings.Join(lk, " ")
}

func cniCode(t *testing.T, err error) *types.Error {
	t.Helper()
	var ce *types.Error
	if !errors.As(err, &ce) {
		t.Fatalf("error %v (%T) is not a CNI error", err, err)
	}
	return ce
}

// TestCNILifecycle: ADD, CHECK, DEL, DEL again; ADD twice; a requested
// IP; STATUS; a typo in the conflist.
func TestCNILifecycle(t *testing.T) {
	cl := testCluster(t, simcluster.Options{Hosts: 1})
	e := newCNIEnv(t, cl, cl.Host(1))
	ctx := context.Background()
	st, err := e.api.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	subnet := netip.MustParsePrefix(st.PodSubnet)

	if err := e.cni.GetStatusNetworkList(ctx, e.list); err != nil {
		t.Fatalf("STATUS on a running agent: %v", err)
	}
	ns := e.netns("a")
	res, err := e.add(rt("ctr-a", ns))
	if err != nil {
		t.Fatalf("ADD: %v", err)
	}
	if len(res.IPs) != 1 || len(res.Interfaces) != 1 || len(res.Routes) != 1 {
		t.Fatalf("ADD result %+v: want one IP, interface and route", res)
	}
	ip, _ := netip.AddrFromSlice(res.IPs[0].Address.IP.To4())
	if !subnet.Contains(ip) || res.IPs[0].Gateway.String() != st.Gateway || res.Routes[0].GW.String() != st.Gateway ||
		res.Interfaces[0].Name != "eth0" || res.Interfaces[0].Mac == "" || res.Interfaces[0].Mtu == 0 || res.Interfaces[0].Sandbox != ns {
		t.Fatalf("ADD result %+v %+v: want an IP of %s, gateway %s, eth0 with MAC and MTU in %s", res.IPs[0], res.Interfaces[0], subnet, st.Gateway, ns)
	}
	out, err := simhost.Run("ip", "netns", "exec", filepath.Base(ns), "ip", "-o", "addr", "show", "eth0")
	if err != nil || !strings.Contains(out, ip.String()+"/32") {
		t.Fatalf("eth0 in the container: %q, %v; want %s/32", out, err, ip)
	}
	if _, err := simhost.Run("ip", "netns", "exec", filepath.Base(ns), "ping", "-c", "1", "-W", "2", st.Gateway); err != nil {
		t.Fatalf("container cannot ping its gateway %s: %v", st.Gateway, err)
	}
	ep, ok := e.endpoints()["ctr-a"]
	if !ok || ep.IfName != "eth0" || ep.IP != ip.String() || ep.MAC != res.Interfaces[0].Mac {
		t.Fatalf("agent's record of ctr-a: %+v (found %v)", ep, ok)
	}
	if err := e.cni.CheckNetworkList(ctx, e.list, rt("ctr-a", ns)); err != nil {
		t.Fatalf("CHECK: %v", err)
	}

	// ADD again: the same attachment, not a second one.
	again, err := e.add(rt("ctr-a", ns))
	if err != nil || again.IPs[0].Address.String() != res.IPs[0].Address.String() {
		t.Fatalf("second ADD: %v, %v; want %s again", again, err, res.IPs[0].Address)
	}
	if n := len(e.endpoints()); n != 1 {
		t.Fatalf("%d attachments after ADD twice, want 1", n)
	}

	// CHECK notices what was broken behind the runtime's back.
	if _, err := simhost.Run("ip", "netns", "exec", filepath.Base(ns), "ip", "addr", "flush", "dev", "eth0"); err != nil {
		t.Fatal(err)
	}
	err = e.cni.CheckNetworkList(ctx, e.list, rt("ctr-a", ns))
	if err == nil || !strings.Contains(err.Error(), "lacks its address "+ip.String()) {
		t.Fatalf("CHECK after the address was removed: %v", err)
	}

	if err := e.cni.DelNetworkList(ctx, e.list, rt("ctr-a", ns)); err != nil {
		t.Fatalf("DEL: %v", err)
	}
	if _, ok := e.endpoints()["ctr-a"]; ok {
		t.Fatal("ctr-a still recorded after DEL")
	}
	if ports, links := e.hostState(); ports != "" || links != "" {
		t.Fatalf("after DEL br-int has ports %q and the host links %q, want none", ports, links)
	}
	if err := e.cni.DelNetworkList(ctx, e.list, rt("ctr-a", ns)); err != nil {
		t.Fatalf("DEL again: %v", err)
	}
	if err := e.cni.DelNetworkList(ctx, e.list, rt("never-added", ns)); err != nil {
		t.Fatalf("DEL of an unknown container: %v", err)
	}
	err = e.cni.CheckNetworkList(ctx, e.list, rt("ctr-a", ns))
	if ce := cniCode(t, err); ce.Code != types.ErrUnknownContainer {
		t.Fatalf("CHECK after DEL: %+v, want code %d", ce, types.ErrUnknownContainer)
	}

	// A requested IP through the ips capability.
	want := subnet.Addr().Next().Next().Next().Next().Next().Next().Next().Next().Next().Next() // .10
	nsB := e.netns("b")
	rb := rt("ctr-b", nsB)
	rb.CapabilityArgs = map[string]any{"ips": []string{netip.PrefixFrom(want, subnet.Bits()).String()}}
	resB, err := e.add(rb)
	if err != nil || resB.IPs[0].Address.IP.String() != want.String() {
		t.Fatalf("ADD with ips [%s]: %v, %v", want, resB, err)
	}
	// The same address for another container: held, with code and holder.
	rc := rt("ctr-c", e.netns("c"))
	rc.CapabilityArgs = rb.CapabilityArgs
	_, err = e.add(rc)
	if ce := cniCode(t, err); ce.Code != 101 || !strings.Contains(ce.Msg, "ctr-b") {
		t.Fatalf("ADD of a held IP: %+v, want code 101 naming ctr-b", ce)
	}
	if _, ok := e.endpoints()["ctr-c"]; ok {
		t.Fatal("a refused ADD left a record")
	}

	// A typo in the conflist: code 2 naming the field.
	bad, err := libcni.NetworkConfFromBytes([]byte(strings.Replace(cniConflist(e.h.APISocket), `"socket"`, `"sockett"`, 1)))
	if err != nil {
		t.Fatal(err)
	}
	_, err = e.cni.AddNetworkList(ctx, bad, rt("ctr-d", e.netns("d")))
	if ce := cniCode(t, err); ce.Code != types.ErrUnsupportedField || !strings.Contains(ce.Msg, `"sockett"`) {
		t.Fatalf("ADD with a misspelt field: %+v, want code 2 naming sockett", ce)
	}
	rel, _ := libcni.NetworkConfFromBytes([]byte(cniConflist("agent.sock")))
	_, err = e.cni.AddNetworkList(ctx, rel, rt("ctr-d", e.netns("d2")))
	if ce := cniCode(t, err); ce.Code != types.ErrInvalidNetworkConfig || !strings.Contains(ce.Msg, "absolute path") {
		t.Fatalf("ADD with a relative socket: %+v, want code 7", ce)
	}
	// A namespace path that is no namespace where the agent looks (as
	// when the runtime bind-mounted it in a mount namespace the agent does
	// not share): code 8, saying so.
	fake := filepath.Join(t.TempDir(), "netns")
	if err := os.WriteFile(fake, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = e.cni.AddNetworkList(ctx, e.list, rt("ctr-e", fake))
	if ce := cniCode(t, err); ce.Code != types.ErrInvalidNetNS || !strings.Contains(ce.Msg, "mount namespace") {
		t.Fatalf("ADD with a plain file as netns: %+v, want code %d about mount namespaces", ce, types.ErrInvalidNetNS)
	}
	if err := e.cni.DelNetworkList(ctx, e.list, rb); err != nil {
		t.Fatal(err)
	}
}

// TestCNIConcurrentAddsAndGC: 20 ADDs at once on one host get 20
// distinct addresses; GC with a partial valid list removes the rest, even
// for a runtime that lost its cache.
func TestCNIConcurrentAddsAndGC(t *testing.T) {
	cl := testCluster(t, simcluster.Options{Hosts: 1})
	e := newCNIEnv(t, cl, cl.Host(1))
	const n = 20
	nss := make([]string, n)
	for i := range nss {
		nss[i] = e.netns(fmt.Sprintf("p%d", i))
	}
	ips := make([]string, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	start := time.Now()
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res, err := e.add(rt(fmt.Sprintf("pod%02d", i), nss[i]))
			if err == nil {
				ips[i] = res.IPs[0].Address.IP.String()
			}
			errs[i] = err
		}()
	}
	wg.Wait()
	t.Logf("%d concurrent ADDs took %v", n, time.Since(start).Round(time.Millisecond))
	seen := map[string]int{}
	for i, err := range errs {
		if err != nil {
			t.Fatalf("ADD pod%02d: %v", i, err)
		}
		if j, dup := seen[ips[i]]; dup {
			t.Fatalf("pod%02d and pod%02d both got %s", i, j, ips[i])
		}
		seen[ips[i]] = i
	}
	if got := len(e.endpoints()); got != n {
		t.Fatalf("agent records %d attachments, want %d", got, n)
	}
	ports, _ := e.hostState()
	if got := len(strings.Fields(ports)); got != n {
		t.Fatalf("br-int has %d container ports, want %d", got, n)
	}

	// A runtime that lost its cache (a fresh libcni cache dir) keeps
	// pod00..pod04: the plugin's GC must remove the other 15 itself.
	fresh := libcni.NewCNIConfigWithCacheDir([]string{cl.BinDir}, t.TempDir(), nil)
	var valid []types.GCAttachment
	for i := range 5 {
		valid = append(valid, types.GCAttachment{ContainerID: fmt.Sprintf("pod%02d", i), IfName: "eth0"})
	}
	if err := fresh.GCNetworkList(context.Background(), e.list, &libcni.GCArgs{ValidAttachments: valid}); err != nil {
		t.Fatalf("GC: %v", err)
	}
	left := e.endpoints()
	if len(left) != 5 {
		t.Fatalf("after GC %d attachments remain, want 5: %v", len(left), left)
	}
	for _, v := range valid {
		if _, ok := left[v.ContainerID]; !ok {
			t.Fatalf("GC removed %s, which was in the valid list", v.ContainerID)
		}
	}
	ports, links := e.hostState()
	if len(strings.Fields(ports)) != 5 || len(strings.Fields(links)) != 5 {
		t.Fatalf("after GC br-int has ports %q and the host links %q, want 5 each", ports, links)
	}
}

// TestCNIAgentDown: with the agent stopped ADD fails with a CNI error
// that says so, STATUS reports the plugin unavailable, and nothing is
// left half-made (no veth, no OVS port, no etcd record).
func TestCNIAgentDown(t *testing.T) {
	cl := testCluster(t, simcluster.Options{Hosts: 1})
	h := cl.Host(1)
	e := newCNIEnv(t, cl, h)
	ctx := context.Background()
	ns := e.netns("x")
	portsBefore, linksBefore := e.hostState()
	if err := h.StopAgent(); err != nil {
		t.Fatal(err)
	}
	_, err := e.add(rt("ctr-x", ns))
	ce := cniCode(t, err)
	if ce.Code != types.ErrTryAgainLater || !strings.Contains(ce.Msg, "keyroute-agent does not answer on "+h.APISocket) {
		t.Fatalf("ADD with the agent stopped: %+v; want code %d saying the agent does not answer", ce, types.ErrTryAgainLater)
	}
	t.Logf("ADD with the agent stopped: CNI error %d: %s", ce.Code, ce.Msg)
	err = e.cni.GetStatusNetworkList(ctx, e.list)
	if ce := cniCode(t, err); ce.Code != types.ErrPluginNotAvailable {
		t.Fatalf("STATUS with the agent stopped: %+v, want code %d", ce, types.ErrPluginNotAvailable)
	}
	out, err := simhost.Run("ip", "netns", "exec", filepath.Base(ns), "ip", "-o", "link", "show")
	if err != nil || strings.Contains(out, "eth0") || len(strings.Split(strings.TrimSpace(out), "\n")) != 1 {
		t.Fatalf("container namespace after a failed ADD: %q, %v; want only lo", out, err)
	}
	if ports, links := e.hostState(); ports != portsBefore || links != linksBefore {
		t.Fatalf("a failed ADD changed the host: ports %q -> %q, links %q -> %q", portsBefore, ports, linksBefore, links)
	}
	if err := h.StartAgent(); err != nil {
		t.Fatal(err)
	}
	if eps := e.endpoints(); len(eps) != 0 {
		t.Fatalf("etcd holds CNI attachments after a failed ADD: %v", eps)
	}
	// The runtime's retry once the agent is back works.
	if _, err := e.add(rt("ctr-x", ns)); err != nil {
		t.Fatalf("ADD after the agent came back: %v", err)
	}
	ep := e.endpoints()["ctr-x"]

	// An attachment whose OVS port went while the agent was down is not
	// loaded at its start; CHECK says it is unknown and DEL still removes
	// what is left of it (veth, record).
	if err := h.StopAgent(); err != nil {
		t.Fatal(err)
	}
	if _, err := h.OVS.Vsctl("del-port", "br-int", ep.Port); err != nil {
		t.Fatal(err)
	}
	if err := h.StartAgent(); err != nil {
		t.Fatal(err)
	}
	err = e.cni.CheckNetworkList(ctx, e.list, rt("ctr-x", ns))
	if ce := cniCode(t, err); ce.Code != types.ErrUnknownContainer {
		t.Fatalf("CHECK of an attachment whose port is gone: %+v, want code %d", ce, types.ErrUnknownContainer)
	}
	if err := e.cni.DelNetworkList(ctx, e.list, rt("ctr-x", ns)); err != nil {
		t.Fatalf("DEL of an attachment whose port is gone: %v", err)
	}
	if _, ok := e.endpoints()["ctr-x"]; ok {
		t.Fatal("DEL left the record of an attachment whose port was gone")
	}
	if _, links := e.hostState(); strings.Contains(links, ep.Port) {
		t.Fatalf("DEL left veth %s of an attachment whose port was gone", ep.Port)
	}
	if _, err := os.Stat(ns); err != nil {
		t.Fatal(err)
	}
}

// TestCNIPoolExhausted: with /29 pod subnets (5 usable addresses) the
// sixth ADD fails with code 100 and a message saying what to do, and
// leaves nothing behind.
func TestCNIPoolExhausted(t *testing.T) {
	cl := testCluster(t, simcluster.Options{Hosts: 1, AgentConfig: func(_ int, cfg map[string]any) {
		cfg["cluster"].(map[string]any)["subnet_bits"] = 29
	}})
	e := newCNIEnv(t, cl, cl.Host(1))
	for i := range 5 {
		if _, err := e.add(rt(fmt.Sprintf("full%d", i), e.netns(fmt.Sprintf("f%d", i)))); err != nil {
			t.Fatalf("ADD %d of 5: %v", i, err)
		}
	}
	portsBefore, linksBefore := e.hostState()
	ns := e.netns("f5")
	_, err := e.add(rt("full5", ns))
	ce := cniCode(t, err)
	if ce.Code != 100 || !strings.Contains(ce.Msg, "no free address") || !strings.Contains(ce.Msg, "cluster.subnet_bits") {
		t.Fatalf("ADD into a full subnet: %+v; want code 100 saying there is no free address and what to change", ce)
	}
	t.Logf("sixth ADD: CNI error %d: %s", ce.Code, ce.Msg)
	if ports, links := e.hostState(); ports != portsBefore || links != linksBefore {
		t.Fatalf("a refused ADD changed the host: ports %q -> %q, links %q -> %q", portsBefore, ports, linksBefore, links)
	}
	if _, ok := e.endpoints()["full5"]; ok {
		t.Fatal("a refused ADD left a record")
	}
	out, err := simhost.Run("ip", "netns", "exec", filepath.Base(ns), "ip", "-o", "link", "show")
	if err != nil || strings.Contains(out, "eth0") {
		t.Fatalf("container namespace after a refused ADD: %q, %v", out, err)
	}
}
