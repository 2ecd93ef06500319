package agent

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"

	"github.com/safchain/ethtool"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/keyroute/keyroute/internal/netnsutil"
	"github.com/keyroute/keyroute/registry"
)

// This file holds the agent's kernel networking: moving the host IP onto
// br-phy, container veths, the gateway port's routes. It talks netlink in
// the agent's own namespace and, for containers, in theirs.

// hostAddr is the underlay address found on an interface.
type hostAddr struct {
	Prefix netip.Prefix
	Link   string
}

// ipv4Addrs lists the global IPv4 addresses of a link.
func ipv4Addrs(link netlink.Link) ([]netip.Prefix, error) {
	addrs, err := netlink.AddrList(link, unix.AF_INET)
	if err != nil {
		return nil, fmt.Errorf("list addresses of %s: %w", link.Attrs().Name, err)
	}
	var out []netip.Prefix
	for _, a := range addrs {
		ip, ok := netip.AddrFromSlice(a.IP.To4())
		if !ok || a.Scope != unix.RT_SCOPE_UNIVERSE {
			continue
		}
		ones, _ := a.Mask.Size()
		out = append(out, netip.PrefixFrom(ip, ones))
	}
	return out, nil
}

// findHostAddr returns the host's underlay address: on the uplink before
// the first start, on br-phy after it (a restart must find it there).
func findHostAddr(uplink, bridge string, want netip.Addr) (hostAddr, error) {
	for _, name := range []string{uplink, bridge} {
		link, err := netlink.LinkByName(name)
		if err != nil {
			continue
		}
		addrs, err := ipv4Addrs(link)
		if err != nil {
			return hostAddr{}, err
		}
		for _, p := range addrs {
			if !want.IsValid() || p.Addr() == want {
				return hostAddr{Prefix: p, Link: name}, nil
			}
		}
	}
	if want.IsValid() {
		return hostAddr{}, fmt.Errorf("host IP %s is on neither %s nor %s: set host_ip to an address of the uplink", want, uplink, bridge)
	}
	return hostAddr{}, fmt.Errorf("no IPv4 address on %s or %s: give the uplink an address or set host_ip", uplink, bridge)
}

// moveHostAddr moves addr (and the routes through it) from one link to
// another. The address is added to the destination before it leaves the
// source, so the host stays reachable; routes that used the source link are
// re-added on the destination.
func moveHostAddr(addr netip.Prefix, from, to string) error {
	src, err := netlink.LinkByName(from)
	if err != nil {
		return fmt.Errorf("move %s from %s: %w", addr, from, err)
	}
	dst, err := netlink.LinkByName(to)
	if err != nil {
		return fmt.Errorf("move %s to %s: %w", addr, to, err)
	}
	routes, err := netlink.RouteList(src, unix.AF_INET)
	if err != nil {
		return fmt.Errorf("list routes of %s: %w", from, err)
	}
	if err := netlink.LinkSetUp(dst); err != nil {
		return fmt.Errorf("bring up %s: %w", to, err)
	}
	nlAddr := &netlink.Addr{IPNet: prefixToIPNet(addr)}
	if err := netlink.AddrReplace(dst, nlAddr); err != nil {
		return fmt.Errorf("add %s to %s: %w", addr, to, err)
	}
	if err := netlink.AddrDel(src, nlAddr); err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) {
		return fmt.Errorf("remove %s from %s: %w", addr, from, err)
	}
	for _, r := range routes {
		if r.Protocol == unix.RTPROT_KERNEL || r.Gw == nil {
			continue // connected routes follow the address by themselves
		}
		r.LinkIndex = dst.Attrs().Index
		r.ILinkIndex = 0
		if err := netlink.RouteReplace(&r); err != nil {
			return fmt.Errorf("move route %s via %s to %s: %w", r.Dst, r.Gw, to, err)
		}
	}
	return nil
}

func prefixToIPNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// hostPortName derives a container's host-side veth name from its name:
// stable (a re-attach finds the same port), unique enough, and within
// IFNAMSIZ.
func hostPortName(container string) string {
	h := sha256.Sum256([]byte(container))
	return "kr" + hex.EncodeToString(h[:])[:11]
}

// endpointMAC is an endpoint's MAC: its record's. Records written before
// records carried MACs (by older agents) get the MAC those agents derived.
func endpointMAC(ep registry.Endpoint) net.HardwareAddr {
	if len(ep.MAC) != 0 {
		return ep.MAC
	}
	return containerMAC(ep.IP)
}

// containerMAC derives the MAC older agents gave a container from its IP.
func containerMAC(ip netip.Addr) net.HardwareAddr {
	// The last 4 bytes of the 16-byte form are an IPv4 address's own; As16
	// cannot panic, should an address that is not IPv4 ever get here.
	a := ip.As16()
	return net.HardwareAddr{0x0a, 0x58, a[12], a[13], a[14], a[15]}
}

// netnsPath resolves a namespace given by name (ip netns) or path.
func netnsPath(ns string) (string, error) {
	p := netnsutil.Path(ns)
	if _, err := os.Stat(p); err != nil {
		return "", fmt.Errorf("network namespace %q not found (%s): create it first, e.g. ip netns add %s", ns, p, ns)
	}
	return p, nil
}

// containerLink describes what attach puts into a container namespace.
type containerLink struct {
	NetNS   string // path
	IfName  string // inside the container; empty means eth0
	HostEnd string
	IP      netip.Addr
	MAC     net.HardwareAddr
	Gateway netip.Addr
	MTU     int
	// ChecksumOff turns off TX checksum offload on both ends
	// (datapathPlan.ChecksumOff).
	ChecksumOff bool
}

// createContainerLink creates the veth pair, moves one end into the
// container as eth0 with its address and default route, and brings the host
// end up. On error it removes whatever it created.
func createContainerLink(c containerLink) (err error) {
	nsh, err := netns.GetFromPath(c.NetNS)
	if err != nil {
		return fmt.Errorf("open netns %s: %w", c.NetNS, err)
	}
	defer nsh.Close()
	peerTmp := "t" + c.HostEnd[1:]
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: c.HostEnd, MTU: c.MTU}, PeerName: peerTmp}
	if err := netlink.LinkAdd(veth); err != nil {
		return fmt.Errorf("create veth %s: %w", c.HostEnd, err)
	}
	defer func() {
		if err != nil {
			netlink.LinkDel(veth)
		}
	}()
	peer, err := netlink.LinkByName(peerTmp)
	if err != nil {
		return fmt.Errorf("find veth peer %s: %w", peerTmp, err)
	}
	if err := netlink.LinkSetNsFd(peer, int(nsh)); err != nil {
		return fmt.Errorf("move veth into %s: %w", c.NetNS, err)
	}
	h, err := netlink.NewHandleAt(nsh)
	if err != nil {
		return fmt.Errorf("netlink in %s: %w", c.NetNS, err)
	}
	defer h.Close()
	in, err := h.LinkByName(peerTmp)
	if err != nil {
		return fmt.Errorf("find %s in %s: %w", peerTmp, c.NetNS, err)
	}
	ifname := c.IfName
	if ifname == "" {
		ifname = "eth0"
	}
	if old, err := h.LinkByName(ifname); err == nil {
		h.LinkDel(in)
		return fmt.Errorf("namespace %s already has an %s (%s): detach it or use a fresh namespace", c.NetNS, ifname, old.Type())
	}
	type step struct {
		what string
		fn   func() error
	}
	steps := []step{
		{"rename to " + ifname, func() error { return h.LinkSetName(in, ifname) }},
		{"set MAC", func() error { return h.LinkSetHardwareAddr(in, c.MAC) }},
		{"set MTU", func() error { return h.LinkSetMTU(in, c.MTU) }},
		{"add address", func() error {
			return h.AddrAdd(in, &netlink.Addr{IPNet: prefixToIPNet(netip.PrefixFrom(c.IP, 32))})
		}},
		{"bring up", func() error { return h.LinkSetUp(in) }},
		{"add default route", func() error {
			return h.RouteAdd(&netlink.Route{LinkIndex: in.Attrs().Index, Gw: c.Gateway.AsSlice(), Flags: int(netlink.FLAG_ONLINK)})
		}},
	}
	if c.ChecksumOff {
		steps = append(steps, step{"turn off TX checksum offload", func() error { return txChecksumOff(c.NetNS, ifname) }})
	}
	for _, s := range steps {
		if err := s.fn(); err != nil {
			h.LinkDel(in)
			return fmt.Errorf("container %s in %s: %s: %w", ifname, c.NetNS, s.what, err)
		}
	}
	host, err := netlink.LinkByName(c.HostEnd)
	if err != nil {
		return fmt.Errorf("find %s: %w", c.HostEnd, err)
	}
	if err := netlink.LinkSetUp(host); err != nil {
		return fmt.Errorf("bring up %s: %w", c.HostEnd, err)
	}
	if !c.ChecksumOff {
		return nil
	}
	if err := txChecksumOff("", c.HostEnd); err != nil {
		return fmt.Errorf("%s: turn off TX checksum offload: %w", c.HostEnd, err)
	}
	return nil
}

// linkIfExists finds a link by name: nil, and no error, if there is none
// (a VM's port deleted, a device gone with its namespace).
func linkIfExists(name string) (netlink.Link, error) {
	l, err := netlink.LinkByName(name)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return nil, nil
		}
		return nil, fmt.Errorf("find %s: %w", name, err)
	}
	return l, nil
}

// deleteLink removes a link by name; a missing link is not an error.
func deleteLink(name string) error {
	l, err := linkIfExists(name)
	if l == nil || err != nil {
		return err
	}
	if err := netlink.LinkDel(l); err != nil {
		return fmt.Errorf("delete %s: %w", name, err)
	}
	return nil
}

// txChecksumOff turns off TX checksum offload (and with it TSO) on a link
// in the namespace at nsPath ("" is the agent's own): OVS's netdev datapath
// reads veths through AF_PACKET and does not fill in checksums left to
// offload, so TCP would break.
func txChecksumOff(nsPath, ifname string) error {
	off := func() error {
		// The ethtool socket belongs to the namespace it is opened in.
		e, err := ethtool.NewEthtool()
		if err != nil {
			return fmt.Errorf("ethtool: %w", err)
		}
		defer e.Close()
		feats, err := e.Features(ifname)
		if err != nil {
			return fmt.Errorf("ethtool features of %s: %w", ifname, err)
		}
		change := map[string]bool{}
		for name, on := range feats {
			if on && strings.HasPrefix(name, "tx-checksum-") {
				change[name] = false
			}
		}
		if len(change) == 0 {
			return nil
		}
		if err := e.Change(ifname, change); err != nil {
			return fmt.Errorf("ethtool tx off on %s: %w", ifname, err)
		}
		return nil
	}
	if nsPath == "" {
		return off()
	}
	return netnsutil.Do(nsPath, off)
}

// ensureGatewayAddr puts the gateway IP on the gateway port and routes the
// cluster CIDR through it, so the host reaches every container.
func ensureGatewayAddr(port string, gw netip.Addr, subnet, cluster netip.Prefix) error {
	link, err := netlink.LinkByName(port)
	if err != nil {
		return fmt.Errorf("gateway port %s: %w", port, err)
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return fmt.Errorf("bring up %s: %w", port, err)
	}
	if err := netlink.AddrReplace(link, &netlink.Addr{IPNet: prefixToIPNet(netip.PrefixFrom(gw, subnet.Bits()))}); err != nil {
		return fmt.Errorf("add %s to %s: %w", gw, port, err)
	}
	r := &netlink.Route{LinkIndex: link.Attrs().Index, Dst: prefixToIPNet(cluster), Src: gw.AsSlice()}
	if err := netlink.RouteReplace(r); err != nil {
		return fmt.Errorf("route %s via %s: %w", cluster, port, err)
	}
	return nil
}
