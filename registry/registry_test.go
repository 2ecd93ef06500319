package registry_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/keyroute/keyroute/registry"
	"github.com/keyroute/keyroute/registry/etcdtest"
)

// The server starts on first use, so the decoder tests and fuzz targets
// (whose workers run TestMain too) run without it.
func TestMain(m *testing.M) { os.Exit(etcdtest.Main(m)) }

func etcdEndpoints(tb testing.TB) []string { return etcdtest.Endpoints(tb) }

var quiet = slog.New(slog.DiscardHandler)

func newClient(t *testing.T, opts ...registry.Option) *registry.Client {
	t.Helper()
	opts = append([]registry.Option{registry.WithPrefix(etcdtest.Prefix(t)), registry.WithLogger(quiet)}, opts...)
	c, err := registry.New(etcdEndpoints(t), opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func mac(i int) net.HardwareAddr { return net.HardwareAddr{0x02, 0, 0, 0, 0, byte(i)} }

func host(i int) registry.Host {
	return registry.Host{
		Name:        fmt.Sprintf("h%d", i),
		UnderlayIP:  netip.AddrFrom4([4]byte{198, 18, 0, byte(i)}),
		UnderlayMAC: mac(i),
		PodSubnet:   netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 19, byte(i), 0}), 24),
		Datapath:    "netdev",
	}
}

// next returns the next event or fails after a deadline.
func next[T any](t *testing.T, ch <-chan T) T {
	t.Helper()
	select {
	case ev, ok := <-ch:
		if !ok {
			t.Fatal("watch channel closed")
		}
		return ev
	case <-time.After(10 * time.Second):
		t.Fatal("no watch event within 10s")
	}
	panic("unreachable")
}

// eventually polls cond until it holds or 15s pass.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestEmbeddedPortTakenAndRestart(t *testing.T) {
	ctx := ctxT(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	peer, err := etcdtest.FreeURL()
	if err != nil {
		t.Fatal(err)
	}
	_, err = registry.StartEmbedded(ctx, registry.EmbeddedConfig{
		DataDir: t.TempDir(), ClientURL: "http://" + l.Addr().String(), PeerURL: peer, Logger: quiet,
	})
	if err == nil || !strings.Contains(err.Error(), "port already in use") {
		t.Fatalf("start on a taken port: got %v, want a 'port already in use' error", err)
	}
	if _, err := registry.StartEmbedded(ctx, registry.EmbeddedConfig{}); err == nil {
		t.Fatal("start without DataDir succeeded")
	}

	// Data survives a restart of the embedded server.
	dir := t.TempDir()
	start := func() *registry.Embedded {
		client, _ := etcdtest.FreeURL()
		peer, _ := etcdtest.FreeURL()
		e, err := registry.StartEmbedded(ctx, registry.EmbeddedConfig{DataDir: dir, ClientURL: client, PeerURL: peer, Logger: quiet})
		if err != nil {
			t.Fatal(err)
		}
		return e
	}
	e := start()
	c, err := registry.New(e.Endpoints(), registry.WithLogger(quiet))
	if err != nil {
		t.Fatal(err)
	}
	got, err := c.ClaimSubnet(ctx, "h1", netip.MustParsePrefix("198.19.0.0/16"), 24)
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	e.Close()
	e = start()
	defer e.Close()
	c, err = registry.New(e.Endpoints(), registry.WithLogger(quiet))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	again, err := c.ClaimSubnet(ctx, "h1", netip.MustParsePrefix("198.19.0.0/16"), 24)
	if err != nil || again != got {
		t.Fatalf("re-claim after restart = %v, %v; want %v", again, err, got)
	}
}

func TestClaimSubnetRace(t *testing.T) {
	ctx := ctxT(t)
	c := newClient(t)
	cluster := netip.MustParsePrefix("198.19.0.0/16")
	const n = 20
	got := make([]netip.Prefix, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { got[i], errs[i] = c.ClaimSubnet(ctx, fmt.Sprintf("h%d", i), cluster, 24) })
	}
	wg.Wait()
	seen := map[netip.Prefix]int{}
	for i := range n {
		if errs[i] != nil {
			t.Fatalf("h%d: %v", i, errs[i])
		}
		if got[i].Bits() != 24 || !cluster.Contains(got[i].Addr()) {
			t.Errorf("h%d got %v, not a /24 of %v", i, got[i], cluster)
		}
		if j, dup := seen[got[i]]; dup {
			t.Errorf("h%d and h%d both got %v", j, i, got[i])
		}
		seen[got[i]] = i
	}
	for i := range n {
		again, err := c.ClaimSubnet(ctx, fmt.Sprintf("h%d", i), cluster, 24)
		if err != nil || again != got[i] {
			t.Errorf("re-claim h%d = %v, %v; want %v", i, again, err, got[i])
		}
	}
	// Re-claiming with another size is refused rather than handing out a
	// second subnet.
	if _, err := c.ClaimSubnet(ctx, "h0", cluster, 25); err == nil || !strings.Contains(err.Error(), got[0].String()) {
		t.Errorf("claim /25 for h0 holding %v: got %v, want an error naming the held subnet", got[0], err)
	}
}

func TestClaimSubnetExhaustedAndRelease(t *testing.T) {
	ctx := ctxT(t)
	c := newClient(t)
	cluster := netip.MustParsePrefix("198.19.0.0/28")
	var held []netip.Prefix
	for i := range 4 {
		p, err := c.ClaimSubnet(ctx, fmt.Sprintf("h%d", i), cluster, 30)
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, p)
	}
	want := []string{"198.19.0.0/30", "198.19.0.4/30", "198.19.0.8/30", "198.19.0.12/30"}
	if fmt.Sprint(held) != fmt.Sprint(want) {
		t.Errorf("claimed %v, want lowest-first %v", held, want)
	}
	_, err := c.ClaimSubnet(ctx, "h4", cluster, 30)
	if !errors.Is(err, registry.ErrSubnetsExhausted) {
		t.Fatalf("5th /30 of a /28: got %v, want ErrSubnetsExhausted", err)
	}
	if err := c.ReleaseSubnet(ctx, "h4", held[2]); !errors.Is(err, registry.ErrNotOwner) || !strings.Contains(err.Error(), "h2") {
		t.Errorf("release by non-owner: got %v, want ErrNotOwner naming h2", err)
	}
	if err := c.ReleaseSubnet(ctx, "h2", held[2]); err != nil {
		t.Fatal(err)
	}
	if err := c.ReleaseSubnet(ctx, "h2", held[2]); !errors.Is(err, registry.ErrNotFound) {
		t.Errorf("second release: got %v, want ErrNotFound", err)
	}
	if p, err := c.ClaimSubnet(ctx, "h4", cluster, 30); err != nil || p != held[2] {
		t.Errorf("claim after release = %v, %v; want %v", p, err, held[2])
	}
	for _, bad := range []struct {
		cluster string
		bits    int
	}{{"198.19.0.0/28", 31}, {"198.19.0.1/28", 30}, {"198.19.0.0/28", 27}} {
		if _, err := c.ClaimSubnet(ctx, "h9", netip.MustParsePrefix(bad.cluster), bad.bits); err == nil {
			t.Errorf("claim /%d of %s succeeded", bad.bits, bad.cluster)
		}
	}
	if _, err := c.ClaimSubnet(ctx, "a/b", cluster, 30); err == nil {
		t.Error("claim for host name with '/' succeeded")
	}
}

func TestAllocateEndpointExplicitRace(t *testing.T) {
	ctx := ctxT(t)
	c := newClient(t)
	subnet := netip.MustParsePrefix("198.19.1.0/24")
	ip := netip.MustParseAddr("198.19.1.10")
	const n = 10
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			_, errs[i] = c.AllocateEndpoint(ctx, registry.Endpoint{IP: ip, Host: fmt.Sprintf("h%d", i%3), Name: fmt.Sprintf("c%d", i), MAC: mac(i)}, subnet)
		})
	}
	wg.Wait()
	holder, err := c.GetEndpoint(ctx, ip)
	if err != nil {
		t.Fatal(err)
	}
	winners := 0
	for i, err := range errs {
		switch {
		case err == nil:
			winners++
			if holder.Name != fmt.Sprintf("c%d", i) {
				t.Errorf("c%d won but etcd holds %s", i, holder.Name)
			}
		case !errors.Is(err, registry.ErrIPInUse):
			t.Errorf("c%d: got %v, want ErrIPInUse", i, err)
		case !strings.Contains(err.Error(), holder.Host+"/"+holder.Name):
			t.Errorf("c%d: error %q does not name the holder %s/%s", i, err, holder.Host, holder.Name)
		}
	}
	if winners != 1 {
		t.Fatalf("%d allocations of %v succeeded, want exactly 1", winners, ip)
	}
	// The winner re-attaching gets its record back.
	again, err := c.AllocateEndpoint(ctx, registry.Endpoint{IP: ip, Host: holder.Host, Name: holder.Name}, subnet)
	if err != nil || again.IP != ip || again.MAC.String() != holder.MAC.String() {
		t.Errorf("re-attach = %+v, %v; want the stored record %+v", again, err, holder)
	}
	// The same name cannot take a second address.
	if _, err := c.AllocateEndpoint(ctx, registry.Endpoint{IP: netip.MustParseAddr("198.19.1.11"), Host: holder.Host, Name: holder.Name}, subnet); err == nil {
		t.Error("endpoint got a second IP")
	}
	for _, bad := range []string{"198.19.1.0", "198.19.1.1", "198.19.1.255", "198.19.2.5"} {
		if _, err := c.AllocateEndpoint(ctx, registry.Endpoint{IP: netip.MustParseAddr(bad), Host: "h1", Name: "x"}, subnet); err == nil {
			t.Errorf("explicit IP %s in %s accepted", bad, subnet)
		}
	}
}

func TestAllocateEndpointAuto(t *testing.T) {
	ctx := ctxT(t)
	c := newClient(t)
	subnet := netip.MustParsePrefix("198.19.2.0/29") // usable: .2 to .6
	const n = 5
	got := make([]registry.Endpoint, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			got[i], errs[i] = c.AllocateEndpoint(ctx, registry.Endpoint{Host: "h1", Name: fmt.Sprintf("c%d", i), MAC: mac(i), Port: fmt.Sprintf("veth%d", i)}, subnet)
		})
	}
	wg.Wait()
	seen := map[netip.Addr]bool{}
	for i := range n {
		if errs[i] != nil {
			t.Fatalf("c%d: %v", i, errs[i])
		}
		ip := got[i].IP
		if ip.As4()[3] < 2 || ip.As4()[3] > 6 || !subnet.Contains(ip) {
			t.Errorf("c%d got %v: outside .2-.6 (network, gateway and broadcast are reserved)", i, ip)
		}
		if seen[ip] {
			t.Errorf("%v handed out twice", ip)
		}
		seen[ip] = true
	}
	if _, err := c.AllocateEndpoint(ctx, registry.Endpoint{Host: "h1", Name: "c5"}, subnet); !errors.Is(err, registry.ErrAddrsExhausted) {
		t.Fatalf("6th endpoint in a /29: got %v, want ErrAddrsExhausted", err)
	}
	if again, err := c.AllocateEndpoint(ctx, registry.Endpoint{Host: "h1", Name: "c3"}, subnet); err != nil || again.IP != got[3].IP || again.Port != "veth3" {
		t.Errorf("re-attach c3 = %+v, %v; want %+v", again, err, got[3])
	}

	freed := netip.MustParseAddr("198.19.2.4")
	if err := c.DeleteEndpoint(ctx, freed, "h2"); !errors.Is(err, registry.ErrNotOwner) {
		t.Errorf("delete by another host: got %v, want ErrNotOwner", err)
	}
	if err := c.DeleteEndpoint(ctx, freed, "h1"); err != nil {
		t.Fatal(err)
	}
	if err := c.DeleteEndpoint(ctx, freed, "h1"); !errors.Is(err, registry.ErrNotFound) {
		t.Errorf("second delete: got %v, want ErrNotFound", err)
	}
	if _, err := c.GetEndpoint(ctx, freed); !errors.Is(err, registry.ErrNotFound) {
		t.Errorf("get deleted endpoint: got %v, want ErrNotFound", err)
	}
	ep, err := c.AllocateEndpoint(ctx, registry.Endpoint{Host: "h2", Name: "new"}, subnet)
	if err != nil || ep.IP != freed {
		t.Errorf("allocate after delete = %v, %v; want the freed %v", ep.IP, err, freed)
	}
	list, err := c.ListEndpoints(ctx, registry.EndpointFilter{Host: "h1"})
	if err != nil || len(list) != 4 {
		t.Errorf("list h1 = %d endpoints, %v; want 4", len(list), err)
	}
	for i := 1; i < len(list); i++ {
		if !list[i-1].IP.Less(list[i].IP) {
			t.Errorf("list not sorted by IP: %v before %v", list[i-1].IP, list[i].IP)
		}
	}
}

func TestWatchHosts(t *testing.T) {
	ctx := ctxT(t)
	c := newClient(t)
	leases := map[string]*registry.Lease{}
	for i := 1; i <= 2; i++ {
		l, err := c.RegisterHost(ctx, host(i), 10*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { l.Close() })
		leases[host(i).Name] = l
	}
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ch := c.WatchHosts(wctx)
	for _, want := range []string{"h1", "h2"} {
		ev := next(t, ch)
		if ev.Type != registry.EventPut || ev.Value.Name != want {
			t.Fatalf("snapshot event %v %q, want put %q", ev.Type, ev.Value.Name, want)
		}
		if want == "h1" && (ev.Value.UnderlayMAC.String() != "02:00:00:00:00:01" || ev.Value.PodSubnet != host(1).PodSubnet) {
			t.Errorf("h1 decoded as %+v", ev.Value)
		}
	}
	if ev := next(t, ch); ev.Type != registry.EventSynced {
		t.Fatalf("after snapshot: %v, want synced", ev.Type)
	}
	l3, err := c.RegisterHost(ctx, host(3), 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer l3.Close()
	if ev := next(t, ch); ev.Type != registry.EventPut || ev.Value.Name != "h3" {
		t.Fatalf("got %v %q, want put h3", ev.Type, ev.Value.Name)
	}
	// An agent that stops (its lease revoked) leaves the host a member.
	if err := leases["h1"].Revoke(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case <-leases["h1"].Done():
	default:
		t.Error("revoked lease not done")
	}
	if err := c.RemoveHost(ctx, "h3", false); !errors.Is(err, registry.ErrHostAlive) || !strings.Contains(err.Error(), "h3") {
		t.Errorf("RemoveHost of h3 with its agent running: %v, want ErrHostAlive naming h3", err)
	}
	// Events arrive in revision order: a delete for the revoked lease would
	// come before this put.
	l4, err := c.RegisterHost(ctx, host(4), 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer l4.Close()
	if ev := next(t, ch); ev.Type != registry.EventPut || ev.Value.Name != "h4" {
		t.Fatalf("after revoking h1's lease: %v %q, want put h4 (h1 stays a member)", ev.Type, ev.Value.Name)
	}
	// Membership ends by RemoveHost only.
	if err := c.RemoveHost(ctx, "h1", false); err != nil {
		t.Fatal(err)
	}
	ev := next(t, ch)
	if ev.Type != registry.EventDelete || ev.Value.Name != "h1" || ev.Value.UnderlayIP != host(1).UnderlayIP {
		t.Fatalf("got %v %+v, want delete h1 carrying its last record", ev.Type, ev.Value)
	}
	hosts, err := c.ListHosts(ctx)
	if err != nil || len(hosts) != 3 || hosts[0].Name != "h2" || hosts[1].Name != "h3" || hosts[2].Name != "h4" {
		t.Errorf("ListHosts = %v, %v; want h2, h3, h4", hosts, err)
	}
	cancel()
	for range ch { // the channel closes once ctx ends
	}
}

// The host record is membership and outlives the agent's lease; alive/
// is liveness and goes with it.
func TestHostOutlivesLease(t *testing.T) {
	ctx := ctxT(t)
	c := newClient(t)
	isAlive := func(name string) bool {
		t.Helper()
		alive, err := c.ListAlive(ctx)
		if err != nil {
			t.Fatal(err)
		}
		_, ok := alive[name]
		return ok
	}
	h1 := host(1)
	h1.AgentVersion = "9.9.9"
	before := time.Now().Add(-time.Second)
	l, err := c.RegisterHost(ctx, h1, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	alive, err := c.ListAlive(ctx)
	if a, ok := alive["h1"]; err != nil || !ok || a.AgentVersion != "9.9.9" || a.Since.Before(before) || a.Since.After(time.Now()) {
		t.Fatalf("ListAlive = %+v, %v; want h1 with version 9.9.9 alive since about now", alive, err)
	}
	// Renewals keep alive/ beyond its TTL.
	time.Sleep(l.TTL() + time.Second)
	if !isAlive("h1") {
		t.Fatal("h1 not alive while its lease was kept alive")
	}
	// Stop renewing (agent crash): alive/ expires, the host stays.
	l.Close()
	eventually(t, "h1's alive record to expire", func() bool { return !isAlive("h1") })
	if got, err := c.GetHost(ctx, "h1"); err != nil || got.Name != "h1" || got.AgentVersion != "9.9.9" {
		t.Fatalf("host record after the lease expired: %+v, %v; want h1 kept", got, err)
	}

	// A lease lost in etcd closes Done and takes alive/, not the host.
	l2, err := c.RegisterHost(ctx, host(2), 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer l2.Close()
	if _, err := c.Raw().Revoke(ctx, l2.ID()); err != nil {
		t.Fatal(err)
	}
	select {
	case <-l2.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("Done not closed after the lease was revoked in etcd")
	}
	if err := l2.Revoke(ctx); err != nil {
		t.Errorf("revoking an already revoked lease: %v", err)
	}
	if isAlive("h2") {
		t.Error("h2 alive after its lease was revoked")
	}
	if _, err := c.GetHost(ctx, "h2"); err != nil {
		t.Errorf("h2's host record gone with its lease: %v", err)
	}
	// Re-registering (keepRegistered after a lost lease) brings alive/ back.
	l3, err := c.RegisterHost(ctx, host(2), 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer l3.Close()
	if !isAlive("h2") {
		t.Error("h2 not alive after registering again")
	}
	if _, err := c.RegisterHost(ctx, registry.Host{Name: "h9"}, time.Second); err == nil {
		t.Error("registered a host without underlay IP, MAC or subnet")
	}
}

// A host record written under a lease (by an agent from before alive/)
// becomes persistent when the host registers again.
func TestRegisterDetachesOldLease(t *testing.T) {
	ctx := ctxT(t)
	c := newClient(t)
	grant, err := c.Raw().Grant(ctx, 60)
	if err != nil {
		t.Fatal(err)
	}
	b, err := json.Marshal(host(1))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Raw().Put(ctx, c.Prefix()+"hosts/h1", string(b), clientv3.WithLease(grant.ID)); err != nil {
		t.Fatal(err)
	}
	l, err := c.RegisterHost(ctx, host(1), 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if _, err := c.Raw().Revoke(ctx, grant.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := c.GetHost(ctx, "h1"); err != nil {
		t.Errorf("host record gone with the old agent's lease: %v", err)
	}
}

func TestRemoveHost(t *testing.T) {
	ctx := ctxT(t)
	c := newClient(t)
	l, err := c.RegisterHost(ctx, host(1), 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	err = c.RemoveHost(ctx, "h1", false)
	if !errors.Is(err, registry.ErrHostAlive) || !strings.Contains(err.Error(), "h1") {
		t.Fatalf("RemoveHost with the agent alive: %v, want ErrHostAlive naming h1", err)
	}
	if _, err := c.GetHost(ctx, "h1"); err != nil {
		t.Fatalf("refused RemoveHost removed the host: %v", err)
	}
	// force removes a member whose agent still runs, liveness included.
	if err := c.RemoveHost(ctx, "h1", true); err != nil {
		t.Fatal(err)
	}
	if _, err := c.GetHost(ctx, "h1"); !errors.Is(err, registry.ErrNotFound) {
		t.Errorf("GetHost after RemoveHost: %v, want ErrNotFound", err)
	}
	if alive, err := c.ListAlive(ctx); err != nil || len(alive) != 0 {
		t.Errorf("ListAlive after forced RemoveHost = %v, %v; want none", alive, err)
	}
	if err := c.RemoveHost(ctx, "h1", false); !errors.Is(err, registry.ErrNotFound) {
		t.Errorf("RemoveHost of a removed host: %v, want ErrNotFound", err)
	}

	// A host whose agent is down goes without force.
	l2, err := c.RegisterHost(ctx, host(2), 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if err := l2.Revoke(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.RemoveHost(ctx, "h2", false); err != nil {
		t.Fatalf("RemoveHost with the agent down: %v", err)
	}
	if hosts, err := c.ListHosts(ctx); err != nil || len(hosts) != 0 {
		t.Errorf("ListHosts = %v, %v; want none", hosts, err)
	}
	for _, bad := range []string{"", "a/b"} {
		if err := c.RemoveHost(ctx, bad, true); err == nil {
			t.Errorf("RemoveHost(%q) succeeded", bad)
		}
	}
}

func TestWatchEndpointsFilter(t *testing.T) {
	ctx := ctxT(t)
	c := newClient(t)
	s1 := netip.MustParsePrefix("198.19.1.0/25")
	s2 := netip.MustParsePrefix("198.19.1.128/25") // same /24 of keys
	alloc := func(h, name string, s netip.Prefix) registry.Endpoint {
		t.Helper()
		e, err := c.AllocateEndpoint(ctx, registry.Endpoint{Host: h, Name: name, MAC: mac(1)}, s)
		if err != nil {
			t.Fatal(err)
		}
		return e
	}
	a := alloc("h1", "a", s1)
	alloc("h2", "b", s2)
	ch := c.WatchEndpoints(ctx, registry.EndpointFilter{Host: "h1", Subnet: s1})
	if ev := next(t, ch); ev.Type != registry.EventPut || ev.Value.IP != a.IP {
		t.Fatalf("snapshot: %v %v, want put %v", ev.Type, ev.Value.IP, a.IP)
	}
	if ev := next(t, ch); ev.Type != registry.EventSynced {
		t.Fatalf("got %v, want synced", ev.Type)
	}
	alloc("h2", "d", s2)
	cc := alloc("h1", "c", s1)
	if ev := next(t, ch); ev.Type != registry.EventPut || ev.Value.Name != "c" || ev.Value.IP != cc.IP {
		t.Fatalf("got %v %+v, want put c (h2's endpoint filtered out)", ev.Type, ev.Value)
	}
	if err := c.DeleteEndpoint(ctx, a.IP, "h1"); err != nil {
		t.Fatal(err)
	}
	if ev := next(t, ch); ev.Type != registry.EventDelete || ev.Value.Name != "a" {
		t.Fatalf("got %v %+v, want delete a", ev.Type, ev.Value)
	}
}

func TestBadRecordsSkipped(t *testing.T) {
	ctx := ctxT(t)
	var mu sync.Mutex
	var reported []string
	c := newClient(t, registry.WithBadRecordHandler(func(key string, err error) {
		mu.Lock()
		defer mu.Unlock()
		reported = append(reported, key)
	}))
	raw, p := c.Raw(), c.Prefix()
	put := func(k, v string) {
		t.Helper()
		if _, err := raw.Put(ctx, p+k, v); err != nil {
			t.Fatal(err)
		}
	}
	l, err := c.RegisterHost(ctx, host(1), 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	put("hosts/junk", "{not json")
	put("hosts/badip", `{"name":"badip","underlayIP":"300.1.1.1","underlayMAC":"02:00:00:00:00:01","podSubnet":"198.19.9.0/24"}`)
	put("hosts/other", `{"name":"h7","underlayIP":"198.18.0.7","underlayMAC":"02:00:00:00:00:07","podSubnet":"198.19.7.0/24"}`)
	put("endpoints/198.19.1.9", `{"ip":"198.19.1.8","host":"h1","name":"x"}`)
	put("endpoints/198.19.1.10", `{"ip":"198.19.1.10","host":"h1","name":"x","mac":"zz"}`)

	hosts, err := c.ListHosts(ctx)
	if err != nil || len(hosts) != 1 || hosts[0].Name != "h1" {
		t.Fatalf("ListHosts = %v, %v; want only h1", hosts, err)
	}
	if n := c.BadRecords(); n != 3 {
		t.Errorf("BadRecords after listing hosts = %d, want 3", n)
	}
	eps, err := c.ListEndpoints(ctx, registry.EndpointFilter{})
	if err != nil || len(eps) != 0 {
		t.Errorf("ListEndpoints = %v, %v; want none", eps, err)
	}
	if n := c.BadRecords(); n != 5 {
		t.Errorf("BadRecords after listing endpoints = %d, want 5", n)
	}
	if _, err := c.GetEndpoint(ctx, netip.MustParseAddr("198.19.1.9")); !errors.Is(err, registry.ErrBadRecord) {
		t.Errorf("GetEndpoint of a mismatched record: got %v, want ErrBadRecord", err)
	}
	if _, err := c.GetHost(ctx, "junk"); !errors.Is(err, registry.ErrBadRecord) {
		t.Errorf("GetHost of invalid JSON: got %v, want ErrBadRecord", err)
	}
	put("alive/junk", "{not json")
	put("alive/other", `{"host":"h1","since":"2024-01-02T03:04:05Z"}`)
	put("alive/nosince", `{"host":"nosince"}`)
	alive, err := c.ListAlive(ctx)
	if _, ok := alive["h1"]; err != nil || len(alive) != 1 || !ok {
		t.Errorf("ListAlive = %v, %v; want only h1", alive, err)
	}
	if n := c.BadRecords(); n != 8 {
		t.Errorf("BadRecords after listing alive hosts = %d, want 8", n)
	}
	for _, k := range []string{"alive/junk", "alive/other", "alive/nosince"} {
		if _, err := raw.Delete(ctx, p+k); err != nil {
			t.Fatal(err)
		}
	}

	ch := c.WatchHosts(ctx)
	if ev := next(t, ch); ev.Type != registry.EventPut || ev.Value.Name != "h1" {
		t.Fatalf("snapshot: %v %q, want put h1", ev.Type, ev.Value.Name)
	}
	if ev := next(t, ch); ev.Type != registry.EventSynced {
		t.Fatalf("got %v, want synced", ev.Type)
	}
	if n := c.BadRecords(); n != 11 {
		t.Errorf("BadRecords after the watch snapshot = %d, want 11", n)
	}
	put("hosts/junk2", "[]")
	// A good host overwritten with garbage is reported gone.
	put("hosts/h1", `{"name":"h1"}`)
	if ev := next(t, ch); ev.Type != registry.EventDelete || ev.Value.Name != "h1" {
		t.Fatalf("got %v %q, want delete h1", ev.Type, ev.Value.Name)
	}
	if n := c.BadRecords(); n != 13 {
		t.Errorf("BadRecords after two bad puts under watch = %d, want 13", n)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(reported) != 13 || reported[len(reported)-1] != p+"hosts/h1" {
		t.Errorf("handler saw %d keys ending %q, want 13 ending %q", len(reported), reported[len(reported)-1], p+"hosts/h1")
	}
}
