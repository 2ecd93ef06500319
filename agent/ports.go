package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/keyroute/keyroute/hostlayout"
	"github.com/keyroute/keyroute/ovsdb"
)

// This file attaches interfaces that exist before attach and outlive
// detach: a VM's tap, a veth end whose peer is a VM's or another runtime's
// NIC. The agent takes such a port as it is (its MAC is the VM's, given by
// the caller), puts it on br-int, and on detach gives it back as it found
// it: MTU, up/down state and addresses restored, off OVS, never deleted.

// restoreKey is the OVS external_ids key (on the port's Interface) that
// keeps a pre-made port's state before attach, for detach and uninstall.
const restoreKey = "keyroute-restore"

// linkState is what attach changes on a pre-made port.
type linkState struct {
	MTU   int      `json:"mtu"`
	Up    bool     `json:"up"`
	Addrs []string `json:"addrs,omitempty"` // prefixes, e.g. "192.0.2.1/24"
}

func (s linkState) encode() string {
	b, _ := json.Marshal(s) // cannot fail: plain fields
	return string(b)
}

// decodeLinkState reads restoreKey's value; it comes from OVSDB, which any
// root user can edit, so it is checked.
func decodeLinkState(v string) (*linkState, error) {
	if v == "" {
		return nil, fmt.Errorf("no %s in the port's external_ids", restoreKey)
	}
	var s linkState
	if err := json.Unmarshal([]byte(v), &s); err != nil {
		return nil, fmt.Errorf("%s: %w", restoreKey, err)
	}
	if s.MTU < 68 || s.MTU > 65535 {
		return nil, fmt.Errorf("%s: MTU %d out of range", restoreKey, s.MTU)
	}
	for _, p := range s.Addrs {
		if _, err := netip.ParsePrefix(p); err != nil {
			return nil, fmt.Errorf("%s: address %q: %w", restoreKey, p, err)
		}
	}
	return &s, nil
}

// checkPremadePort checks that port is an interface attach may take over
// and returns its current state.
func (a *Agent) checkPremadePort(ctx context.Context, port string) (*linkState, error) {
	br := a.cfg.Bridges
	switch port {
	case a.cfg.Uplink, br.Integration, br.Physical, br.IntegrationPatch(), br.PhysicalPatch(),
		hostlayout.PortGateway, hostlayout.PortVXLAN, "lo":
		return nil, badRequest("--port %s is one of the host's own interfaces, not a VM's", port)
	}
	link, err := netlink.LinkByName(port)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return nil, badRequest("--port %s: no such interface on this host (create the VM's tap or veth first)", port)
		}
		return nil, fmt.Errorf("--port %s: %w", port, err)
	}
	if info, err := a.db.Interface(ctx, port); err == nil {
		return nil, badRequest("--port %s is already a port of OVS bridge %s: remove it there first (ovs-vsctl del-port %s %s)", port, info.Bridge, info.Bridge, port)
	} else if !errors.Is(err, ovsdb.ErrNotFound) {
		return nil, fmt.Errorf("--port %s: %w", port, err)
	}
	if link.Attrs().MasterIndex != 0 {
		return nil, badRequest("--port %s is enslaved to another device (bridge or bond): release it first (ip link set %s nomaster)", port, port)
	}
	switch link.Type() {
	case "tuntap", "veth", "macvtap", "device":
	default:
		return nil, badRequest("--port %s is a %s device: attach takes a VM's tap or a veth end", port, link.Type())
	}
	return currentState(link)
}

func currentState(link netlink.Link) (*linkState, error) {
	s := &linkState{MTU: link.Attrs().MTU, Up: link.Attrs().Flags&unix.IFF_UP != 0}
	addrs, err := netlink.AddrList(link, unix.AF_UNSPEC)
	if err != nil {
		return nil, fmt.Errorf("list addresses of %s: %w", link.Attrs().Name, err)
	}
	for _, ad := range addrs {
		if ad.Scope == unix.RT_SCOPE_LINK {
			continue // IPv6 link-local: the kernel adds it back itself
		}
		s.Addrs = append(s.Addrs, ad.IPNet.String())
	}
	return s, nil
}

// preparePremadePort makes a pre-made port an OVS port like a container's
// host end: no addresses (the host stack must not claim the VM's traffic),
// the containers' MTU, up.
func preparePremadePort(port string, mtu int) error {
	link, err := netlink.LinkByName(port)
	if err != nil {
		return fmt.Errorf("--port %s: %w", port, err)
	}
	addrs, err := netlink.AddrList(link, unix.AF_UNSPEC)
	if err != nil {
		return fmt.Errorf("list addresses of %s: %w", port, err)
	}
	for _, ad := range addrs {
		if ad.Scope == unix.RT_SCOPE_LINK {
			continue
		}
		if err := netlink.AddrDel(link, &ad); err != nil {
			return fmt.Errorf("remove %s from %s: %w", ad.IPNet, port, err)
		}
	}
	if err := netlink.LinkSetMTU(link, mtu); err != nil {
		return fmt.Errorf("set MTU %d on %s: %w", mtu, port, err)
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return fmt.Errorf("bring up %s: %w", port, err)
	}
	return nil
}

// restoreLink puts a pre-made port back in state s. A port that is gone
// (the VM was deleted) has nothing to restore.
func restoreLink(port string, s linkState) error {
	link, err := linkIfExists(port)
	if link == nil || err != nil {
		return err
	}
	var errs []error
	if link.Attrs().MTU != s.MTU {
		if err := netlink.LinkSetMTU(link, s.MTU); err != nil {
			errs = append(errs, fmt.Errorf("set MTU %d on %s: %w", s.MTU, port, err))
		}
	}
	for _, a := range s.Addrs {
		p := netip.MustParsePrefix(a) // checked by decodeLinkState or from the kernel
		if err := netlink.AddrReplace(link, &netlink.Addr{IPNet: prefixToIPNet(p)}); err != nil {
			errs = append(errs, fmt.Errorf("add %s to %s: %w", p, port, err))
		}
	}
	set := netlink.LinkSetDown
	if s.Up {
		set = netlink.LinkSetUp
	}
	if err := set(link); err != nil {
		errs = append(errs, fmt.Errorf("set %s up=%v: %w", port, s.Up, err))
	}
	return errors.Join(errs...)
}
