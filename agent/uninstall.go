package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/keyroute/keyroute/ovsdb"
	"github.com/keyroute/keyroute/registry"
)

// Uninstall undoes what the agent set up on this host, for a host leaving
// keyroute: the host IP (and its routes) move back from the physical
// bridge to the uplink, the masquerade table goes, and the bridges and
// ports keyroute created are deleted; another OVS user's bridges and ports
// stay as they are. Containers' veths go with the integration bridge's
// ports; pre-made ports (VMs' taps) are left, as attach found them. The
// agent must be stopped first.
//
// Last, if it can reach etcd, it removes this host's membership record
// (hosts/<node>, with its alive/ key), so peers drop their flows to it and
// release the keys they share with it. That step is best effort: with etcd
// unreachable (or embedded in the stopped agent) it logs a warning saying
// to run `keyroutectl hosts remove <node>` from another host, and the
// uninstall still succeeds. The pod subnet claim and endpoint records are
// left as they are.
func Uninstall(ctx context.Context, cfg Config, log *slog.Logger) error {
	err := uninstallHost(ctx, cfg, log)
	leaveCluster(ctx, cfg, log)
	return err
}

func uninstallHost(ctx context.Context, cfg Config, log *slog.Logger) error {
	var errs []error
	// The uplink's ingress drop goes first, or the address moved back
	// onto it would be unreachable.
	if err := removeNftables(); err != nil {
		errs = append(errs, err)
	}
	db, err := ovsdb.Dial(ctx, cfg.OVS.DBSocket, ovsdb.Options{Logger: log})
	if err != nil {
		return errors.Join(append(errs, fmt.Errorf("connect to OVSDB at %s: %w", cfg.OVS.DBSocket, err))...)
	}
	defer db.Close()
	br := cfg.Bridges
	// Only bridges keyroute created are touched: with names of another
	// OVS user's bridges in the config, its addresses and ports stay.
	owned := map[string]bool{}
	for _, name := range []string{br.Physical, br.Integration} {
		var fe *ovsdb.ForeignError
		switch err := db.CheckOwnership(ctx, []string{name}, nil); {
		case err == nil:
			owned[name] = true
		case errors.As(err, &fe):
			log.Warn("leaving a bridge keyroute did not create as it is", "bridge", name, "owner_external_ids", fe.ExternalIDs)
		default:
			errs = append(errs, err)
		}
	}
	if owned[br.Physical] {
		if addrs, err := linkAddrs(br.Physical); err == nil {
			for _, p := range addrs {
				if err := moveHostAddr(p, br.Physical, cfg.Uplink); err != nil {
					errs = append(errs, fmt.Errorf("move %s back to %s: %w", p, cfg.Uplink, err))
				} else {
					log.Info("moved host IP back", "addr", p, "to", cfg.Uplink)
				}
			}
		}
	}
	if ports, err := db.ListPorts(ctx, br.Integration); err == nil && owned[br.Integration] {
		for _, p := range ports {
			if p.ExternalIDs["keyroute-container"] == "" {
				continue
			}
			if v, premade := p.ExternalIDs[restoreKey]; premade {
				// A VM's port: given back as attach found it, never deleted.
				if s, err := decodeLinkState(v); err != nil {
					log.Warn("pre-made port's state before attach is unreadable; leaving it as it is", "port", p.Name, "err", err)
				} else if err := restoreLink(p.Name, *s); err != nil {
					errs = append(errs, err)
				}
				continue
			}
			if err := deleteLink(p.Name); err != nil {
				errs = append(errs, err)
			}
		}
	}
	if err := db.DeleteOwned(ctx, "keyroute"); err != nil {
		errs = append(errs, fmt.Errorf("delete keyroute's bridges: %w", err))
	}
	return errors.Join(errs...)
}

// leaveCluster removes this host's record from etcd, best effort. It runs
// after the host IP is back on the uplink, the path to etcd that needs no
// OVS.
func leaveCluster(ctx context.Context, cfg Config, log *slog.Logger) {
	hint := "remove it from another host with: keyroutectl hosts remove " + cfg.Node
	if len(cfg.Etcd.Endpoints) == 0 {
		log.Warn("this host's record stays in etcd: its etcd was embedded in the stopped agent; "+hint, "host", cfg.Node)
		return
	}
	reg, err := registry.New(cfg.Etcd.Endpoints, registry.WithPrefix(cfg.Etcd.Prefix), registry.WithLogger(log),
		registry.WithDialTimeout(cfg.Etcd.DialTimeout), registry.WithTLS(cfg.ClientTLS(cfg.Etcd.Endpoints)))
	if err != nil {
		log.Warn("this host's record stays in etcd: "+hint, "host", cfg.Node, "err", err)
		return
	}
	defer reg.Close()
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	// Forced: the agent is stopped, and a liveness key it left behind
	// (killed within the last lease TTL) must not keep the host a member.
	switch err := reg.RemoveHost(rctx, cfg.Node, true); {
	case errors.Is(err, registry.ErrNotFound):
		log.Info("no record of this host in etcd", "host", cfg.Node)
	case err != nil:
		log.Warn("could not remove this host's record from etcd; "+hint, "host", cfg.Node, "etcd", cfg.Etcd.Endpoints, "err", err)
	default:
		log.Info("removed this host from the cluster in etcd", "host", cfg.Node)
	}
}

func linkAddrs(name string) ([]netip.Prefix, error) {
	link, err := netlink.LinkByName(name)
	if err != nil {
		return nil, err
	}
	return ipv4Addrs(link)
}
