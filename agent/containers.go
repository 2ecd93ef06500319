package agent

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"time"

	"github.com/keyroute/keyroute/ovsdb"
	"github.com/keyroute/keyroute/registry"
)

// ErrBadRequest marks errors caused by the caller's input.
var ErrBadRequest = errors.New("bad request")

func badRequest(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrBadRequest, fmt.Sprintf(format, args...))
}

// Attach connects a network namespace as container name. It is idempotent:
// attaching the same name to the same namespace again returns the existing
// endpoint. On error nothing is left behind.
func (a *Agent) Attach(ctx context.Context, netnsName, name, ipStr string) (registry.Endpoint, error) {
	return a.attach(ctx, attachRequest{NetNS: netnsName, Name: name, IP: ipStr})
}

// attachRequest is what Attach, CNI ADD and the API ask for: a container
// namespace (NetNS, a name or path: the agent makes a veth into it) or an
// interface that already exists on the host (Port: a VM's tap or a veth
// end, attached as it is).
type attachRequest struct {
	NetNS, Name, IP string
	Port            string
	MAC             string // "": a random locally administered one
	// ContainerID and IfName are set by CNI ADD; IfName defaults to eth0.
	ContainerID, IfName string
}

func (a *Agent) attach(ctx context.Context, s attachRequest) (registry.Endpoint, error) {
	a.attachMu.Lock()
	defer a.attachMu.Unlock()
	name := s.Name
	ifname := s.IfName
	if ifname == "" {
		ifname = "eth0"
	}
	if err := registry.ValidateName(name); err != nil {
		return registry.Endpoint{}, badRequest("container name %q: %v", name, err)
	}
	var path string // the container namespace's; "" for a pre-made port
	if s.Port == "" {
		var err error
		if path, err = netnsPath(s.NetNS); err != nil {
			return registry.Endpoint{}, badRequest("%v", err)
		}
	}
	ip, err := a.parseEndpointIP(s.IP)
	if err != nil {
		return registry.Endpoint{}, err
	}
	var mac net.HardwareAddr
	if s.MAC != "" {
		if mac, err = parseEndpointMAC(s.MAC); err != nil {
			return registry.Endpoint{}, err
		}
	}
	a.mu.Lock()
	existing, ok := a.endpoints[name]
	var portUser string
	for _, ep := range a.endpoints {
		if s.Port != "" && ep.Port == s.Port {
			portUser = ep.Name
		}
	}
	a.mu.Unlock()
	if ok {
		if existing.Netns == path && (s.Port == "" || existing.Port == s.Port) &&
			(!ip.IsValid() || ip == existing.IP) && (mac == nil || bytes.Equal(mac, existing.MAC)) {
			return existing, nil
		}
		return registry.Endpoint{}, badRequest("container %q is already attached (%s, ip %s, mac %s): detach it first", name, describeAttachment(existing), existing.IP, existing.MAC)
	}
	if portUser != "" {
		return registry.Endpoint{}, badRequest("port %s is already attached as %q: detach it first", s.Port, portUser)
	}
	var orig *linkState
	port := hostPortName(name)
	if s.Port != "" {
		port = s.Port
		if orig, err = a.checkPremadePort(ctx, port); err != nil {
			return registry.Endpoint{}, err
		}
	}
	if mac == nil {
		if mac, err = randomMAC(); err != nil {
			return registry.Endpoint{}, err
		}
	}
	// The record carries the MAC: every reader (this agent after a
	// restart, keyroutectl, trace) takes it from there.
	want := registry.Endpoint{IP: ip, Host: a.cfg.Node, Name: name, MAC: mac, Netns: path, Port: port, ContainerID: s.ContainerID, IfName: s.IfName}
	var ep registry.Endpoint
	if ip.IsValid() && !a.host.Subnet.Contains(ip) {
		// An address of another host's subnet (it moved here): every host
		// routes it with a /32.
		ep, err = a.reg.AllocateRoaming(ctx, want, a.host.Cluster)
	} else {
		ep, err = a.reg.AllocateEndpoint(ctx, want, a.host.Subnet)
	}
	if err != nil {
		if errors.Is(err, registry.ErrIPInUse) {
			return registry.Endpoint{}, fmt.Errorf("%w: %w", ErrBadRequest, err)
		}
		if errors.Is(err, registry.ErrAddrsExhausted) {
			return registry.Endpoint{}, fmt.Errorf("no free address for %s in %s's pod subnet %s: detach unused containers (keyroutectl endpoints) or give hosts larger subnets (cluster.subnet_bits): %w",
				name, a.cfg.Node, a.host.Subnet, err)
		}
		a.metrics.etcdErrors.WithLabelValues("allocate_endpoint").Inc()
		return registry.Endpoint{}, fmt.Errorf("allocate an IP for %s: %w", name, err)
	}
	ep.MAC = endpointMAC(ep) // an earlier record of the name may have none
	if s.MAC != "" && !bytes.Equal(ep.MAC, mac) {
		// The allocation returned an earlier record of this name: the
		// pipeline would deliver to its MAC, not the one asked for.
		return registry.Endpoint{}, badRequest("etcd already holds %s/%s with ip %s and mac %s, not %s: remove that record first", ep.Host, name, ep.IP, ep.MAC, mac)
	}
	undo := func() {
		releasePort(port)
		a.db.DeletePort(context.Background(), a.cfg.Bridges.Integration, port)
		if orig != nil {
			if err := restoreLink(port, *orig); err != nil {
				a.log.Warn("restore a port after a failed attach", "port", port, "err", err)
			}
		} else {
			deleteLink(port)
		}
		a.reg.DeleteEndpoint(context.Background(), ep.IP, a.cfg.Node)
	}
	ids := map[string]string{"keyroute-container": name, "keyroute-ip": ep.IP.String(), "attached-mac": ep.MAC.String()}
	if orig != nil {
		if err := preparePremadePort(port, a.containerMTU); err != nil {
			undo()
			return registry.Endpoint{}, err
		}
		ids[restoreKey] = orig.encode()
	} else if err := createContainerLink(containerLink{NetNS: path, IfName: ifname, HostEnd: port, IP: ep.IP, MAC: ep.MAC, Gateway: a.host.Gateway, MTU: a.containerMTU,
		ChecksumOff: a.plan.ChecksumOff}); err != nil {
		undo()
		return registry.Endpoint{}, badRequestIf(err)
	}
	if a.plan.IsolatePorts {
		if err := isolatePort(port); err != nil {
			undo()
			return registry.Endpoint{}, fmt.Errorf("keep the host stack off %s: %w", port, err)
		}
	}
	ofport, err := a.ensureDataPort(ctx, dataPort{Bridge: a.cfg.Bridges.Integration, Kind: "container", System: orig != nil,
		Spec: ovsdb.PortSpec{Name: port, ExternalIDs: ids}})
	if err != nil {
		undo()
		return registry.Endpoint{}, err
	}
	a.mu.Lock()
	a.endpoints[name] = ep
	a.ofports[port] = ofport
	a.mu.Unlock()
	if err := a.program(ctx); err != nil {
		a.mu.Lock()
		delete(a.endpoints, name)
		delete(a.ofports, port)
		a.mu.Unlock()
		undo()
		return registry.Endpoint{}, err
	}
	a.log.Info("attached container", "name", name, "ip", ep.IP, "mac", ep.MAC.String(), "port", port, "ofport", ofport, "premade", orig != nil)
	if a.cache != nil {
		// Records towards an address that was detached a moment ago
		// lost their Restore entries at an anti-entropy meanwhile; their
		// senders still rewrite: check again now, not in 10 s.
		a.cache.kickAntiEntropy()
	}
	return ep, nil
}

// parseEndpointIP checks a requested address ("" asks for the next free
// one) against the cluster and this host's subnet.
func (a *Agent) parseEndpointIP(ipStr string) (netip.Addr, error) {
	if ipStr == "" {
		return netip.Addr{}, nil
	}
	ip, err := netip.ParseAddr(ipStr)
	if err != nil || !ip.Is4() {
		return netip.Addr{}, badRequest("--ip %q is not an IPv4 address", ipStr)
	}
	if !a.host.Cluster.Contains(ip) {
		return netip.Addr{}, badRequest("--ip %s is outside the cluster's pod range %s", ip, a.host.Cluster)
	}
	if a.host.Subnet.Contains(ip) && (ip == a.host.Gateway || ip == a.host.Subnet.Addr() || ip == lastAddr(a.host.Subnet)) {
		return netip.Addr{}, badRequest("--ip %s is reserved in this host's pod subnet %s (network, gateway or broadcast)", ip, a.host.Subnet)
	}
	return ip, nil
}

// parseEndpointMAC accepts a unicast Ethernet address other than zero, the
// gateway's or the gateway port's (the pipeline answers and sends as
// those).
func parseEndpointMAC(s string) (net.HardwareAddr, error) {
	mac, err := net.ParseMAC(s)
	if err != nil || len(mac) != 6 {
		return nil, badRequest("--mac %q is not an Ethernet address (aa:bb:cc:dd:ee:ff)", s)
	}
	if mac[0]&1 == 1 || bytes.Equal(mac, make(net.HardwareAddr, 6)) {
		return nil, badRequest("--mac %s is not a unicast address", mac)
	}
	return mac, nil
}

// randomMAC returns a locally administered unicast MAC.
func randomMAC() (net.HardwareAddr, error) {
	mac := make(net.HardwareAddr, 6)
	if _, err := rand.Read(mac); err != nil {
		return nil, fmt.Errorf("random MAC: %w", err)
	}
	mac[0] = mac[0]&^0x01 | 0x02
	return mac, nil
}

func describeAttachment(ep registry.Endpoint) string {
	if ep.Netns != "" {
		return "netns " + ep.Netns
	}
	return "port " + ep.Port
}

// badRequestIf classifies netns problems as the caller's.
func badRequestIf(err error) error {
	if strings.Contains(err.Error(), "already has an ") {
		return fmt.Errorf("%w: %v", ErrBadRequest, err)
	}
	return err
}

func lastAddr(p netip.Prefix) netip.Addr {
	a := p.Masked().Addr().As4()
	host := uint32(1)<<(32-p.Bits()) - 1
	v := uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3]) | host
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

// Detach disconnects a container: flows first (so nothing is delivered to a
// port about to disappear), then the port, the veth and the record.
func (a *Agent) Detach(ctx context.Context, name string) error {
	a.attachMu.Lock()
	defer a.attachMu.Unlock()
	a.mu.Lock()
	ep, ok := a.endpoints[name]
	if ok {
		delete(a.endpoints, name)
		delete(a.ofports, ep.Port)
	}
	a.mu.Unlock()
	if !ok {
		return badRequest("no container %q attached on %s (see keyroutectl endpoints)", name, a.cfg.Node)
	}
	if err := a.program(ctx); err != nil {
		return err
	}
	if a.cache != nil {
		a.cache.invalidateEndpoint(ctx, ep.IP)
	}
	// A pre-made port's state before attach is kept with its OVS port.
	var orig *linkState
	if ep.Netns == "" {
		info, err := a.db.Interface(ctx, ep.Port)
		if err != nil && !errors.Is(err, ovsdb.ErrNotFound) {
			return fmt.Errorf("read port %s of %s: %w", ep.Port, name, err)
		}
		if orig, err = decodeLinkState(info.ExternalIDs[restoreKey]); err != nil {
			a.log.Warn("pre-made port's state before attach is unreadable; leaving it as it is", "port", ep.Port, "err", err)
		}
	}
	if err := a.db.DeletePort(ctx, a.cfg.Bridges.Integration, ep.Port); err != nil && !errors.Is(err, ovsdb.ErrNotFound) {
		return fmt.Errorf("remove port %s of %s: %w", ep.Port, name, err)
	}
	releasePort(ep.Port)
	a.ports.setFallback(ep.Port, "")
	switch {
	case ep.Netns != "":
		if err := deleteLink(ep.Port); err != nil {
			return err
		}
	case orig != nil:
		if err := restoreLink(ep.Port, *orig); err != nil {
			return fmt.Errorf("give %s back as it was before attach: %w", ep.Port, err)
		}
	}
	if err := a.reg.DeleteEndpoint(ctx, ep.IP, a.cfg.Node); err != nil && !errors.Is(err, registry.ErrNotFound) {
		return fmt.Errorf("release %s of %s: %w", ep.IP, name, err)
	}
	a.log.Info("detached container", "name", name, "ip", ep.IP)
	return nil
}

// appctl runs ovs-appctl against the local ovs-vswitchd.
func (a *Agent) appctl(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ovs-appctl", append([]string{"-t", "ovs-vswitchd"}, args...)...)
	cmd.Env = append(os.Environ(), "OVS_RUNDIR="+a.cfg.OVS.RunDir)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("ovs-appctl %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return strings.TrimSpace(string(out)), nil
}
