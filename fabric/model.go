// Package fabric models the physical network between keyroute hosts: its
// devices (ToR, leaf, spine, gateway), the links between them and each
// device's ECMP hash policy, read from YAML (configs/fabric.yaml). Given a
// packet's header as the fabric sees it, it computes the hops the packet
// takes. It does no I/O beyond reading the model; the hash functions are
// pure and tested against known vectors.
package fabric

import (
	"bytes"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"slices"

	"gopkg.in/yaml.v3"
)

// Tiers a device may have.
const (
	TierToR     = "tor"
	TierLeaf    = "leaf"
	TierSpine   = "spine"
	TierGateway = "gateway"
)

// Model is a fabric: hosts attached to devices, devices joined by links.
type Model struct {
	Hosts   []Host   `yaml:"hosts" json:"hosts"`
	Devices []Device `yaml:"devices" json:"devices"`
	Links   []Link   `yaml:"links" json:"links"`
}

// Host is a keyroute host's attachment to the fabric.
type Host struct {
	Name string     `yaml:"name" json:"name"`
	IP   netip.Addr `yaml:"ip" json:"ip"`
	// Attach is the device the host's uplink is cabled to, Port the
	// device's port name for it (default: the host's name).
	Attach string `yaml:"attach" json:"attach"`
	Port   string `yaml:"port,omitempty" json:"port,omitempty"`
}

// Device is a switch or router of the fabric.
type Device struct {
	Name string `yaml:"name" json:"name"`
	Tier string `yaml:"tier" json:"tier"`
	// ECMP is how the device picks one of several equal-cost next hops;
	// needed only where there are several.
	ECMP *Policy `yaml:"ecmp,omitempty" json:"ecmp,omitempty"`
	// Outside lists prefixes beyond the cluster this device (a gateway)
	// reaches; traffic to them is routed towards it.
	Outside []netip.Prefix `yaml:"outside,omitempty" json:"outside,omitempty"`
	// OVS, when set, says the device is an Open vSwitch bridge whose flow
	// and port counters keyroutectl diagnose may read.
	OVS *OVSAccess `yaml:"ovs,omitempty" json:"ovs,omitempty"`
}

// OVSAccess is how to reach an OVS-based device's OpenFlow counters.
type OVSAccess struct {
	// Bridge is the bridge name; RunDir holds its <bridge>.mgmt socket
	// and ovs-vswitchd's unixctl socket.
	Bridge string `yaml:"bridge" json:"bridge"`
	RunDir string `yaml:"run_dir" json:"run_dir"`
}

// Policy is a device's ECMP hash policy. One level: Function over Fields,
// modulo the member count, picks the next hop. Two levels (Groups set):
// that first hash picks a group, then Member's hash picks the next hop
// within it.
type Policy struct {
	Function string   `yaml:"function" json:"function"`
	Fields   []string `yaml:"fields" json:"fields"`
	// Members, if set, is the member count the device is configured
	// with; it must equal the number of next hops the topology gives
	// (a mismatch is a model error, not a silent re-hash).
	Members int `yaml:"members,omitempty" json:"members,omitempty"`
	// Groups lists next hops by name, group by group (two-level).
	Groups [][]string `yaml:"groups,omitempty" json:"groups,omitempty"`
	// Member is the second-level hash; default: the same as the first.
	Member *Hash `yaml:"member,omitempty" json:"member,omitempty"`
}

// Hash is one hash function over header fields.
type Hash struct {
	Function string   `yaml:"function" json:"function"`
	Fields   []string `yaml:"fields" json:"fields"`
}

// Link is a cable between two devices. Port names default to
// "<a>-<b>" on A and "<b>-<a>" on B.
type Link struct {
	A     string `yaml:"a" json:"a"`
	B     string `yaml:"b" json:"b"`
	APort string `yaml:"a_port,omitempty" json:"a_port,omitempty"`
	BPort string `yaml:"b_port,omitempty" json:"b_port,omitempty"`
}

// Load reads and validates a model from a YAML file.
func Load(path string) (*Model, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read fabric model: %w", err)
	}
	m, err := Parse(b)
	if err != nil {
		return nil, fmt.Errorf("fabric model %s: %w", path, err)
	}
	return m, nil
}

// Parse decodes and validates a YAML model; unknown keys are errors.
func Parse(b []byte) (*Model, error) {
	var m Model
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&m); err != nil {
		return nil, fmt.Errorf("decode: %w", err)
	}
	if err := m.Validate(); err != nil {
		return nil, err
	}
	return &m, nil
}

// Marshal encodes the model as YAML.
func (m *Model) Marshal() ([]byte, error) { return yaml.Marshal(m) }

// Validate checks names, references, tiers and hash policies.
func (m *Model) Validate() error {
	var errs []error
	devs := map[string]bool{}
	for i := range m.Devices {
		d := &m.Devices[i]
		if d.Name == "" {
			errs = append(errs, fmt.Errorf("device %d has no name", i+1))
			continue
		}
		if devs[d.Name] {
			errs = append(errs, fmt.Errorf("device %q defined twice", d.Name))
		}
		devs[d.Name] = true
		switch d.Tier {
		case TierToR, TierLeaf, TierSpine, TierGateway:
		default:
			errs = append(errs, fmt.Errorf("device %q: unknown tier %q (use tor, leaf, spine or gateway)", d.Name, d.Tier))
		}
		if d.ECMP != nil {
			if err := d.ECMP.validate(); err != nil {
				errs = append(errs, fmt.Errorf("device %q: ecmp: %w", d.Name, err))
			}
		}
		if len(d.Outside) > 0 && d.Tier != TierGateway {
			errs = append(errs, fmt.Errorf("device %q: only gateway devices have outside prefixes", d.Name))
		}
	}
	hosts := map[string]bool{}
	ips := map[netip.Addr]bool{}
	for i, h := range m.Hosts {
		switch {
		case h.Name == "":
			errs = append(errs, fmt.Errorf("host %d has no name", i+1))
		case hosts[h.Name] || devs[h.Name]:
			errs = append(errs, fmt.Errorf("host %q: name already used", h.Name))
		case !h.IP.Is4():
			errs = append(errs, fmt.Errorf("host %q: ip %v is not IPv4", h.Name, h.IP))
		case ips[h.IP]:
			errs = append(errs, fmt.Errorf("host %q: ip %v already used", h.Name, h.IP))
		case !devs[h.Attach]:
			errs = append(errs, fmt.Errorf("host %q: attach %q is not a device", h.Name, h.Attach))
		}
		hosts[h.Name], ips[h.IP] = true, true
	}
	seen := map[[2]string]bool{}
	for i, l := range m.Links {
		switch {
		case !devs[l.A] || !devs[l.B]:
			errs = append(errs, fmt.Errorf("link %d (%s-%s): both ends must be devices", i+1, l.A, l.B))
		case l.A == l.B:
			errs = append(errs, fmt.Errorf("link %d: %s is linked to itself", i+1, l.A))
		case seen[[2]string{l.A, l.B}] || seen[[2]string{l.B, l.A}]:
			errs = append(errs, fmt.Errorf("link %d: %s-%s defined twice", i+1, l.A, l.B))
		}
		seen[[2]string{l.A, l.B}] = true
	}
	return errors.Join(errs...)
}

func (p *Policy) validate() error {
	if err := (Hash{p.Function, p.Fields}).validate(); err != nil {
		return err
	}
	if p.Members < 0 {
		return fmt.Errorf("members %d: must be positive", p.Members)
	}
	if p.Member != nil {
		if len(p.Groups) == 0 {
			return errors.New("member hash given without groups")
		}
		if err := p.Member.validate(); err != nil {
			return fmt.Errorf("member: %w", err)
		}
	}
	for i, g := range p.Groups {
		if len(g) == 0 {
			return fmt.Errorf("group %d is empty", i+1)
		}
	}
	return nil
}

// Device returns the named device.
func (m *Model) Device(name string) (*Device, bool) {
	for i := range m.Devices {
		if m.Devices[i].Name == name {
			return &m.Devices[i], true
		}
	}
	return nil, false
}

// HostByIP returns the host with underlay address ip.
func (m *Model) HostByIP(ip netip.Addr) (*Host, bool) {
	for i := range m.Hosts {
		if m.Hosts[i].IP == ip {
			return &m.Hosts[i], true
		}
	}
	return nil, false
}

// HostByName returns the named host.
func (m *Model) HostByName(name string) (*Host, bool) {
	for i := range m.Hosts {
		if m.Hosts[i].Name == name {
			return &m.Hosts[i], true
		}
	}
	return nil, false
}

// PortName is the host's port on its device.
func (h Host) PortName() string {
	if h.Port != "" {
		return h.Port
	}
	return h.Name
}

// Ports returns the port names of a link on its A and B ends.
func (l Link) Ports() (a, b string) {
	a, b = l.APort, l.BPort
	if a == "" {
		a = l.A + "-" + l.B
	}
	if b == "" {
		b = l.B + "-" + l.A
	}
	return a, b
}

// neighbour is one end of a link seen from a device.
type neighbour struct {
	dev, port, peerPort string
}

// neighbours returns d's neighbours in link declaration order, the order
// that numbers ECMP members.
func (m *Model) neighbours(d string) []neighbour {
	var out []neighbour
	for _, l := range m.Links {
		a, b := l.Ports()
		switch d {
		case l.A:
			out = append(out, neighbour{l.B, a, b})
		case l.B:
			out = append(out, neighbour{l.A, b, a})
		}
	}
	return out
}

// distances returns every device's hop count to the nearest of targets.
func (m *Model) distances(targets []string) map[string]int {
	dist := map[string]int{}
	queue := slices.Clone(targets)
	for _, t := range targets {
		dist[t] = 0
	}
	for len(queue) > 0 {
		d := queue[0]
		queue = queue[1:]
		for _, n := range m.neighbours(d) {
			if _, ok := dist[n.dev]; !ok {
				dist[n.dev] = dist[d] + 1
				queue = append(queue, n.dev)
			}
		}
	}
	return dist
}
