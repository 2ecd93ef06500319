package agent

import (
	"context"
	"errors"
	"fmt"
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

// attachRequest is what Attach and CNI ADD ask for.
type attachRequest struct {
	NetNS, Name, IP string
	// ContainerID and IfName are set by CNI ADD; IfName defaults to eth0.
	ContainerID, IfName string
}

func (a *Agent) attach(ctx context.Context, req attachRequest) (registry.Endpoint, error) {
	a.attachMu.Lock()
	defer a.attachMu.Unlock()
	netnsName, name, ipStr := req.NetNS, req.Name, req.IP
	ifname := req.IfName
	if ifname == "" {
		ifname = "eth0"
	}
	if err := registry.ValidateName(name); err != nil {
		return registry.Endpoint{}, badRequest("container name %q: %v", name, err)
	}
	path, err := netnsPath(netnsName)
	if err != nil {
		return registry.Endpoint{}, badRequest("%v", err)
	}
	var ip netip.Addr
	if ipStr != "" {
		if ip, err = netip.ParseAddr(ipStr); err != nil || !ip.Is4() {
			return registry.Endpoint{}, badRequest("--ip %q is not an IPv4 address", ipStr)
		}
		if !a.host.Cluster.Contains(ip) {
			return registry.Endpoint{}, badRequest("--ip %s is outside the cluster's pod range %s", ip, a.host.Cluster)
		}
		if a.host.Subnet.Contains(ip) && (ip == a.host.Gateway || ip == a.host.Subnet.Addr() || ip == lastAddr(a.host.Subnet)) {
			return registry.Endpoint{}, badRequest("--ip %s is reserved in this host's pod subnet %s (network, gateway or broadcast)", ip, a.host.Subnet)
		}
	}
	a.mu.Lock()
	existing, ok := a.endpoints[name]
	a.mu.Unlock()
	if ok {
		if existing.Netns == path && (!ip.IsValid() || ip == existing.IP) {
			return existing, nil
		}
		return registry.Endpoint{}, badRequest("container %q is already attached (netns %s, ip %s): detach it first", name, existing.Netns, existing.IP)
	}
	port := hostPortName(name)
	want := registry.Endpoint{IP: ip, Host: a.cfg.Node, Name: name, Netns: path, Port: port, ContainerID: req.ContainerID, IfName: req.IfName}
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
	undo := func() {
		releasePort(port)
		deleteLink(port)
		a.db.DeletePort(context.Background(), a.cfg.Bridges.Integration, port)
		a.reg.DeleteEndpoint(context.Background(), ep.IP, a.cfg.Node)
	}
	// A container's MAC follows from its IP, so no second write is needed
	// to record it and every host derives the same one.
	ep.MAC = containerMAC(ep.IP)
	if err := createContainerLink(containerLink{NetNS: path, IfName: ifname, HostEnd: port, IP: ep.IP, MAC: ep.MAC, Gateway: a.host.Gateway, MTU: a.containerMTU,
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
	if err := a.db.EnsurePort(ctx, a.cfg.Bridges.Integration, ovsdb.PortSpec{Name: port, ExternalIDs: map[string]string{
		"keyroute-container": name, "keyroute-ip": ep.IP.String(), "attached-mac": ep.MAC.String()}}); err != nil {
		undo()
		return registry.Endpoint{}, fmt.Errorf("add %s to %s: %w", port, a.cfg.Bridges.Integration, err)
	}
	wctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	ofport, err := a.db.WaitOFPort(wctx, port)
	cancel()
	if err != nil {
		undo()
		return registry.Endpoint{}, fmt.Errorf("add %s to %s: %w", port, a.cfg.Bridges.Integration, err)
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
	a.log.Info("attached container", "name", name, "ip", ep.IP, "port", port, "ofport", ofport)
	if a.cache != nil {
		// Records towards an address that was detached a moment ago
		// lost their Restore entries at an anti-entropy meanwhile; their
		// senders still rewrite: check again now, not in 10 s.
		a.cache.kickAntiEntropy()
	}
	return ep, nil
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
	if err := a.db.DeletePort(ctx, a.cfg.Bridges.Integration, ep.Port); err != nil && !errors.Is(err, ovsdb.ErrNotFound) {
		return fmt.Errorf("remove port %s of %s: %w", ep.Port, name, err)
	}
	releasePort(ep.Port)
	if err := deleteLink(ep.Port); err != nil {
		return err
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
