// Package hostlayout is the shape every keyroute host has: its two bridges
// (integration and physical, names from each host's config), the names and
// OpenFlow numbers of the infrastructure ports on them, and the gateway
// port's MAC. The agent builds a host by it; flows' tests and trace read a
// host by it, so none of them keeps its own copy.
package hostlayout

import (
	"errors"
	"fmt"
	"net"
	"strings"
)

// Default bridge names (config bridges.integration, bridges.physical).
const (
	DefaultIntegration = "br-int"
	DefaultPhysical    = "br-phy"
)

// Infrastructure port names. The patch ports are named after the bridges
// (Bridges.IntegrationPatch, Bridges.PhysicalPatch), so two keyroute-like
// users of one OVS never claim the same port name.
const (
	PortVXLAN   = "vxlan0"
	PortGateway = "kr-gw"
)

// Fixed OpenFlow port numbers of the infrastructure ports (requested with
// ofport_request), so flows and traces read the same on every host.
const (
	// On the integration bridge.
	OFPortVXLAN   uint32 = 1
	OFPortPatch   uint32 = 2
	OFPortGateway uint32 = 3
	// On the physical bridge.
	OFPortUplink        uint32 = 1
	OFPortPhysicalPatch uint32 = 2
)

// GatewayPortMAC is the gateway port's own MAC (the host kernel's side of
// the gateway). It only ever appears between the integration bridge and
// this host's kernel, so every host uses the same one. The gateway MAC
// containers see is the cluster's (cluster.gateway_mac), not this.
var GatewayPortMAC = net.HardwareAddr{0x0a, 0x00, 0x00, 0x00, 0x00, 0x02}

// Bridges names a host's two bridges.
type Bridges struct {
	// Integration holds the containers' ports, the VXLAN port, the gateway
	// port and the patch to Physical.
	Integration string `json:"integration" yaml:"integration"`
	// Physical holds the uplink; the host IP sits on its LOCAL port.
	Physical string `json:"physical" yaml:"physical"`
}

// Default returns br-int and br-phy.
func Default() Bridges { return Bridges{Integration: DefaultIntegration, Physical: DefaultPhysical} }

// OrDefault returns b, or the default names when b is empty (a host record
// written before the names were published).
func (b Bridges) OrDefault() Bridges {
	if b == (Bridges{}) {
		return Default()
	}
	return b
}

// IntegrationPatch is the integration bridge's end of the patch pair:
// "patch-" and the physical bridge's name without "br-" (patch-phy by
// default).
func (b Bridges) IntegrationPatch() string { return patchName(b.Physical) }

// PhysicalPatch is the physical bridge's end of the patch pair (patch-int
// by default).
func (b Bridges) PhysicalPatch() string { return patchName(b.Integration) }

func patchName(peer string) string { return "patch-" + strings.TrimPrefix(peer, "br-") }

// GatewayOutput and UplinkOutput are how ofproto/trace names an output to
// the gateway port and to the uplink ("<bridge>:<ofport>").
func (b Bridges) GatewayOutput() string { return fmt.Sprintf("%s:%d", b.Integration, OFPortGateway) }

// UplinkOutput: see GatewayOutput.
func (b Bridges) UplinkOutput() string { return fmt.Sprintf("%s:%d", b.Physical, OFPortUplink) }

// maxName is IFNAMSIZ-1: a bridge's LOCAL port is a network device of the
// bridge's name.
const maxName = 15

// ValidateName checks that name can be a bridge's (and its LOCAL network
// device's) name.
func ValidateName(name string) error {
	switch {
	case name == "":
		return errors.New("empty")
	case len(name) > maxName:
		return fmt.Errorf("%.40q is longer than %d characters (a bridge's LOCAL port is a network device of that name)", name, maxName)
	case name == "." || name == "..":
		return fmt.Errorf("%q is not a network device name", name)
	}
	for _, r := range name {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.') {
			return fmt.Errorf("%.40q: use letters, digits, '-', '_' or '.'", name)
		}
	}
	return nil
}

// Validate checks both names and that they differ from each other and
// from the infrastructure ports' names.
func (b Bridges) Validate() error {
	var errs []error
	if err := ValidateName(b.Integration); err != nil {
		errs = append(errs, fmt.Errorf("integration bridge: %w", err))
	}
	if err := ValidateName(b.Physical); err != nil {
		errs = append(errs, fmt.Errorf("physical bridge: %w", err))
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	if b.Integration == b.Physical {
		return fmt.Errorf("integration and physical bridge are both %q", b.Integration)
	}
	for _, n := range []string{b.Integration, b.Physical} {
		for _, p := range []string{PortVXLAN, PortGateway, b.IntegrationPatch(), b.PhysicalPatch()} {
			if n == p {
				return fmt.Errorf("bridge name %q is also the name of keyroute's port %s", n, p)
			}
		}
	}
	if b.IntegrationPatch() == b.PhysicalPatch() {
		return fmt.Errorf("bridges %q and %q give both patch ports the name %s", b.Integration, b.Physical, b.IntegrationPatch())
	}
	return nil
}
