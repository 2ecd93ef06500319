package agent

import (
	"fmt"
	"net/netip"

	"github.com/vishvananda/netlink"
)

// placeUnderlayAddrs puts the config's underlay_ips on the physical bridge
// beside the host IP: an address found on the uplink moves (with it the
// host's routes through the uplink, as for the host IP), one already on
// the bridge (a restart) stays, any other is added. Uninstall moves every
// address of the bridge back to the uplink, these included.
func placeUnderlayAddrs(ps []netip.Prefix, uplink, bridge string) error {
	onUplink, err := linkAddrs(uplink)
	if err != nil {
		return err
	}
	br, err := netlink.LinkByName(bridge)
	if err != nil {
		return fmt.Errorf("underlay IPs onto %s: %w", bridge, err)
	}
	for _, p := range ps {
		found := false
		for _, q := range onUplink {
			if q.Addr() == p.Addr() {
				found = true
				if err := moveHostAddr(q, uplink, bridge); err != nil {
					return fmt.Errorf("move underlay IP %s onto %s: %w", q, bridge, err)
				}
			}
		}
		if found {
			continue
		}
		if err := netlink.AddrReplace(br, &netlink.Addr{IPNet: prefixToIPNet(p)}); err != nil {
			return fmt.Errorf("add underlay IP %s to %s: %w", p, bridge, err)
		}
	}
	return nil
}
