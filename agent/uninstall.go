package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"

	"github.com/vishvananda/netlink"

	"github.com/keyroute/keyroute/ovsdb"
)

// Uninstall undoes what the agent set up on this host, for a host leaving
// keyroute: the host IP (and its routes) move back from br-phy to the
// uplink, the masquerade table goes, and the bridges and ports keyroute
// created are deleted. Containers' veths go with br-int's ports. The agent
// must be stopped first. It does not touch etcd: records of this host
// expire with its lease, and its endpoints are released by detach.
func Uninstall(ctx context.Context, cfg Config, log *slog.Logger) error {
	var errs []error
	// The uplink's ingress drop goes first, or the address moved back
	// onto it would be unreachable.
	if err := removeNftables(); err != nil {
		errs = append(errs, err)
	}
	if addrs, err := linkAddrs(BridgePhy); err == nil {
		for _, p := range addrs {
			if err := moveHostAddr(p, BridgePhy, cfg.Uplink); err != nil {
				errs = append(errs, fmt.Errorf("move %s back to %s: %w", p, cfg.Uplink, err))
			} else {
				log.Info("moved host IP back", "addr", p, "to", cfg.Uplink)
			}
		}
	}
	db, err := ovsdb.Dial(ctx, cfg.OVS.DBSocket, ovsdb.Options{Logger: log})
	if err != nil {
		return errors.Join(append(errs, fmt.Errorf("connect to OVSDB at %s: %w", cfg.OVS.DBSocket, err))...)
	}
	defer db.Close()
	if ports, err := db.ListPorts(ctx, BridgeInt); err == nil {
		for _, p := range ports {
			if p.ExternalIDs["keyroute-container"] != "" {
				if err := deleteLink(p.Name); err != nil {
					errs = append(errs, err)
				}
			}
		}
	}
	if err := db.DeleteOwned(ctx, "keyroute"); err != nil {
		errs = append(errs, fmt.Errorf("delete keyroute's bridges: %w", err))
	}
	return errors.Join(errs...)
}

func linkAddrs(name string) ([]netip.Prefix, error) {
	link, err := netlink.LinkByName(name)
	if err != nil {
		return nil, err
	}
	return ipv4Addrs(link)
}
