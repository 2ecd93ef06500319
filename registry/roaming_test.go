package registry_test

import (
	"context"
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/keyroute/keyroute/registry"
)

func TestRoamingEndpoint(t *testing.T) {
	c := newClient(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cluster := netip.MustParsePrefix("198.19.0.0/16")
	ip := netip.MustParseAddr("198.19.1.9")
	// Held by h2 in its own subnet first: a roaming claim must fail and name it.
	if _, err := c.AllocateEndpoint(ctx, registry.Endpoint{IP: ip, Host: "h2", Name: "b1"}, netip.MustParsePrefix("198.19.1.0/24")); err != nil {
		t.Fatal(err)
	}
	ev := c.WatchRoaming(ctx)
	if e := <-ev; e.Type != registry.EventSynced {
		t.Fatalf("first event %v, want synced (empty snapshot)", e.Type)
	}
	_, err := c.AllocateRoaming(ctx, registry.Endpoint{IP: ip, Host: "h1", Name: "x1"}, cluster)
	if !errors.Is(err, registry.ErrIPInUse) || !strings.Contains(err.Error(), "h2/b1") {
		t.Fatalf("roaming onto a held IP: %v", err)
	}
	if err := c.DeleteEndpoint(ctx, ip, "h2"); err != nil {
		t.Fatal(err)
	}
	got, err := c.AllocateRoaming(ctx, registry.Endpoint{IP: ip, Host: "h1", Name: "x1"}, cluster)
	if err != nil || got.Host != "h1" {
		t.Fatalf("roaming claim: %+v %v", got, err)
	}
	if again, err := c.AllocateRoaming(ctx, registry.Endpoint{IP: ip, Host: "h1", Name: "x1"}, cluster); err != nil || again.Name != "x1" {
		t.Fatalf("same claim again must return the record: %+v %v", again, err)
	}
	if e := <-ev; e.Type != registry.EventPut || e.Value.IP != ip || e.Value.Host != "h1" {
		t.Fatalf("watch: %+v", e)
	}
	if _, err := c.AllocateRoaming(ctx, registry.Endpoint{IP: netip.MustParseAddr("10.0.0.1"), Host: "h1", Name: "x2"}, cluster); err == nil {
		t.Fatal("an address outside the cluster must be refused")
	}
	// Deleting the endpoint removes the roaming route with it.
	if err := c.DeleteEndpoint(ctx, ip, "h1"); err != nil {
		t.Fatal(err)
	}
	if e := <-ev; e.Type != registry.EventDelete || e.Value.IP != ip {
		t.Fatalf("watch after delete: %+v", e)
	}
}
