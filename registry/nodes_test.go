package registry_test

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/keyroute/keyroute/registry"
)

func nodeClaim(t *testing.T, name string, ip byte, hostname string) registry.NodeClaim {
	t.Helper()
	id, err := registry.NewNodeID()
	if err != nil {
		t.Fatal(err)
	}
	return registry.NodeClaim{Name: name, ID: id, HostIP: netip.AddrFrom4([4]byte{198, 18, 0, ip}),
		Hostname: hostname, Since: time.Now().UTC().Truncate(time.Second)}
}

func TestClaimNode(t *testing.T) {
	ctx := ctxT(t)
	c := newClient(t)
	first := nodeClaim(t, "h2", 2, "machine-a")
	got, err := c.ClaimNode(ctx, first)
	if err != nil || got.ID != first.ID {
		t.Fatalf("first claim = %+v, %v; want ours", got, err)
	}
	// The same machine again, later, from another IP: fine, the first
	// claim stays.
	again := first
	again.HostIP, again.Since = netip.MustParseAddr("198.18.0.9"), first.Since.Add(time.Hour)
	got, err = c.ClaimNode(ctx, again)
	if err != nil || got != first {
		t.Fatalf("claim by the holder = %+v, %v; want the first claim %+v", got, err, first)
	}
	// Another machine with the same name is refused, naming both.
	other := nodeClaim(t, "h2", 3, "machine-b")
	_, err = c.ClaimNode(ctx, other)
	var ce *registry.NodeClaimedError
	if !errors.Is(err, registry.ErrNodeClaimed) || !errors.As(err, &ce) {
		t.Fatalf("claim by another machine: %v, want a NodeClaimedError", err)
	}
	for _, s := range []string{`"h2"`, first.ID, "198.18.0.2", "machine-a", first.Since.Format(time.RFC3339),
		other.ID, "198.18.0.3", "machine-b", "keyroutectl hosts remove h2"} {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("error %q does not name %q", err, s)
		}
	}
	// Removing the host releases the name.
	if err := c.RemoveHost(ctx, "h2", false); err != nil {
		t.Fatalf("RemoveHost of a claimed name without host record: %v", err)
	}
	if _, err := c.GetNode(ctx, "h2"); !errors.Is(err, registry.ErrNotFound) {
		t.Fatalf("GetNode after RemoveHost: %v, want ErrNotFound", err)
	}
	if got, err := c.ClaimNode(ctx, other); err != nil || got.ID != other.ID {
		t.Fatalf("claim after release = %+v, %v; want the new machine's", got, err)
	}
	if err := c.RemoveHost(ctx, "h2", false); err != nil {
		t.Fatal(err)
	}
	if err := c.RemoveHost(ctx, "h2", false); !errors.Is(err, registry.ErrNotFound) {
		t.Errorf("second RemoveHost: %v, want ErrNotFound", err)
	}
}

func TestClaimNodeBadRecords(t *testing.T) {
	ctx := ctxT(t)
	c := newClient(t)
	ok := nodeClaim(t, "h1", 1, "m")
	for _, bad := range []func(*registry.NodeClaim){
		func(n *registry.NodeClaim) { n.ID = "xyz" },
		func(n *registry.NodeClaim) { n.ID = strings.ToUpper(n.ID) },
		func(n *registry.NodeClaim) { n.HostIP = netip.MustParseAddr("2001:db8::1") },
		func(n *registry.NodeClaim) { n.HostIP = netip.Addr{} },
		func(n *registry.NodeClaim) { n.Hostname = "a b" },
		func(n *registry.NodeClaim) { n.Since = time.Time{} },
		func(n *registry.NodeClaim) { n.Name = "a/b" },
	} {
		n := ok
		bad(&n)
		if err := n.Validate(); err == nil {
			t.Errorf("Validate(%+v) passed", n)
		}
		if _, err := c.ClaimNode(ctx, n); err == nil {
			t.Errorf("ClaimNode(%+v) passed", n)
		}
	}
	// Stored garbage and a record under the wrong name are bad records:
	// counted, and the claim refused with the fix.
	for i, val := range []string{"{", `{"name":"other","id":"` + ok.ID + `","hostIP":"198.18.0.1","since":"2026-01-01T00:00:00Z"}`,
		`{"name":"h1","id":"` + ok.ID + `","hostIP":"::1","since":"2026-01-01T00:00:00Z"}`} {
		if _, err := c.Raw().Put(ctx, c.Prefix()+"nodes/h1", val); err != nil {
			t.Fatal(err)
		}
		before := c.BadRecords()
		_, err := c.ClaimNode(ctx, ok)
		if !errors.Is(err, registry.ErrBadRecord) || !strings.Contains(err.Error(), "keyroutectl hosts remove h1") {
			t.Errorf("record %d: ClaimNode over %q: %v, want ErrBadRecord naming the fix", i, val, err)
		}
		if c.BadRecords() != before+1 {
			t.Errorf("record %d: bad records %d -> %d, want +1", i, before, c.BadRecords())
		}
	}
}

func settings() registry.ClusterSettings {
	return registry.ClusterSettings{PodCIDR: "198.19.0.0/16", SubnetBits: 24, VNI: 100, VXLANPort: 4789,
		GatewayMAC: "0a:00:00:00:00:01", Keys: "1-63,!46", SendIdle: registry.Duration(10 * time.Second),
		Quarantine: registry.Duration(time.Second), PendingTimeout: registry.Duration(5 * time.Second),
		Since: time.Now().UTC().Truncate(time.Second), By: "h1"}
}

func TestClaimClusterSettings(t *testing.T) {
	ctx := ctxT(t)
	c := newClient(t)
	if _, err := c.GetClusterSettings(ctx); !errors.Is(err, registry.ErrNotFound) {
		t.Fatalf("GetClusterSettings before any: %v, want ErrNotFound", err)
	}
	first := settings()
	got, created, err := c.ClaimClusterSettings(ctx, first)
	if err != nil || !created || got != first {
		t.Fatalf("first ClaimClusterSettings = %+v, %v, %v; want ours, created", got, created, err)
	}
	second := settings()
	second.VNI, second.By = 200, "h2"
	got, created, err = c.ClaimClusterSettings(ctx, second)
	if err != nil || created || got != first {
		t.Fatalf("second ClaimClusterSettings = %+v, %v, %v; want the first, not created", got, created, err)
	}
	if got, err := c.GetClusterSettings(ctx); err != nil || got != first {
		t.Fatalf("GetClusterSettings = %+v, %v; want the first", got, err)
	}
	raw, err := c.Raw().Get(ctx, c.Prefix()+"cluster/settings")
	if err != nil || len(raw.Kvs) != 1 || !strings.Contains(string(raw.Kvs[0].Value), `"sendIdle":"10s"`) {
		t.Errorf("stored settings %v, %v; want durations as strings", raw, err)
	}

	// Bad settings are refused before a write; a bad stored record is
	// counted and returned.
	for _, bad := range []func(*registry.ClusterSettings){
		func(s *registry.ClusterSettings) { s.PodCIDR = "2001:db8::/64" },
		func(s *registry.ClusterSettings) { s.SubnetBits = 16 },
		func(s *registry.ClusterSettings) { s.VNI = 1 << 24 },
		func(s *registry.ClusterSettings) { s.VXLANPort = 0 },
		func(s *registry.ClusterSettings) { s.GatewayMAC = "01:00:00:00:00:01" },
		func(s *registry.ClusterSettings) { s.Keys = "1-63;rm" },
		func(s *registry.ClusterSettings) { s.Quarantine = 0 },
		func(s *registry.ClusterSettings) { s.By = "" },
	} {
		s := settings()
		bad(&s)
		if err := s.Validate(); err == nil {
			t.Errorf("Validate(%+v) passed", s)
		}
	}
	if _, err := c.Raw().Put(ctx, c.Prefix()+"cluster/settings", `{"podCIDR":"198.19.0.0/16","vni":0}`); err != nil {
		t.Fatal(err)
	}
	before := c.BadRecords()
	if _, _, err := c.ClaimClusterSettings(ctx, first); !errors.Is(err, registry.ErrBadRecord) {
		t.Errorf("ClaimClusterSettings over a bad record: %v, want ErrBadRecord", err)
	}
	if c.BadRecords() != before+1 {
		t.Errorf("bad records %d -> %d, want +1", before, c.BadRecords())
	}
}
