package simcluster

import (
	"fmt"
	"net/netip"
)

// Extra underlay addresses (agent config underlay_ips): host i's k-th
// extra address is 198.18.k.i/24, on the fabric's one L2 segment beside
// its host IP 198.18.0.i, so the fabric's bridge carries it like the host
// IP and every host's kernel has a connected route to it once the agent
// has put it on br-phy.

// UnderlayIP returns host i's k-th extra underlay address (k from 1).
func UnderlayIP(host, k int) netip.Addr {
	return netip.AddrFrom4([4]byte{198, 18, byte(k), byte(host)})
}

// WithUnderlayIPs returns an Options.AgentConfig that gives every host n
// extra underlay addresses, then runs next (if any) on the config.
func WithUnderlayIPs(n int, next func(int, map[string]any)) func(int, map[string]any) {
	return func(host int, cfg map[string]any) {
		var ips []string
		for k := 1; k <= n; k++ {
			ips = append(ips, fmt.Sprintf("%s/24", UnderlayIP(host, k)))
		}
		cfg["underlay_ips"] = ips
		if next != nil {
			next(host, cfg)
		}
	}
}

// KeyAddrs returns the host's key addresses with n extra underlay
// addresses: its IP, then UnderlayIP(h, 1..n).
func (h *Host) KeyAddrs(n int) []netip.Addr {
	out := []netip.Addr{h.IP}
	for k := 1; k <= n; k++ {
		out = append(out, UnderlayIP(h.Index, k))
	}
	return out
}
