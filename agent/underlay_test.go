package agent

import (
	"net/netip"
	"slices"
	"testing"

	"github.com/keyroute/keyroute/flows"
	"github.com/keyroute/keyroute/registry"
)

// A peer's extra key address that another host also claims (this one,
// or another peer by its underlay IP or extra addresses) is left out of
// its key addresses; the rest stay, primary first.
func TestPeerOfLeavesOutClaimedAddresses(t *testing.T) {
	ip := netip.MustParseAddr
	a := &Agent{cfg: Config{Node: "h1"},
		host: flows.Host{IP: ip("198.18.0.1"), UnderlayIPs: []netip.Addr{ip("198.18.1.1")}},
		peers: map[string]registry.Host{
			"h2": {Name: "h2", UnderlayIP: ip("198.18.0.2"), UnderlayIPs: []netip.Addr{ip("198.18.1.2"), ip("198.18.1.1"), ip("198.18.0.3"), ip("198.18.1.9")}},
			"h3": {Name: "h3", UnderlayIP: ip("198.18.0.3"), UnderlayIPs: []netip.Addr{ip("198.18.1.9")}},
		}}
	a.mu.Lock()
	defer a.mu.Unlock()
	got := a.peerOf(a.peers["h2"]).KeyAddrs()
	if want := []netip.Addr{ip("198.18.0.2"), ip("198.18.1.2")}; !slices.Equal(got, want) {
		t.Errorf("h2's key addresses %v, want %v (h1's, h3's IP and h3's extra left out)", got, want)
	}
	if got := a.peerOf(a.peers["h3"]).KeyAddrs(); !slices.Equal(got, []netip.Addr{ip("198.18.0.3")}) {
		t.Errorf("h3's key addresses %v, want only its IP (its extra is claimed by h2 too)", got)
	}
}
