package simcluster

import (
	"fmt"
	"net/netip"
	"regexp"
	"sort"
	"strings"

	"github.com/keyroute/keyroute/simhost"
)

// ForeignBridge is a bridge of another OVS user on a simulated host (say
// OpenStack's br-int): made with ovs-vsctl and ovs-ofctl against the
// host's own ovsdb-server and ovs-vswitchd, with its own external_ids and
// flows, and two namespaces A and B on it that reach each other through
// it. Make it before the host's agent starts (Options.NoAgents, then
// Host.StartAgent) to see what the agent does to a bridge it did not
// create.
type ForeignBridge struct {
	Host *Host
	Name string
	// A and B are namespaces with one veth each on the bridge, holding AIP
	// and BIP on one /24.
	A, B     *simhost.NetNS
	AIP, BIP netip.Addr
}

// AddForeignBridge makes bridge name on h's OVS (netdev datapath, fail
// mode secure, external_ids as given), puts a veth to each of two new
// namespaces on it and installs flows (ovs-ofctl add-flow syntax, e.g.
// "priority=10,actions=NORMAL"). net is the third octet of the
// namespaces' 198.18.<net>.0/24.
func (h *Host) AddForeignBridge(name string, externalIDs map[string]string, net byte, flows ...string) (*ForeignBridge, error) {
	args := []string{"add-br", name, "--", "set", "bridge", name, "datapath_type=netdev", "fail_mode=secure", "protocols=OpenFlow13"}
	for _, k := range sortedKeys(externalIDs) {
		args = append(args, fmt.Sprintf("external_ids:%s=%s", k, externalIDs[k]))
	}
	if _, err := h.OVS.Vsctl(args...); err != nil {
		return nil, fmt.Errorf("%s: foreign bridge %s: %w", h.Name, name, err)
	}
	fb := &ForeignBridge{Host: h, Name: name,
		AIP: netip.AddrFrom4([4]byte{198, 18, net, 1}), BIP: netip.AddrFrom4([4]byte{198, 18, net, 2})}
	for i, end := range []struct {
		ns  **simhost.NetNS
		ip  netip.Addr
		tag string
	}{{&fb.A, fb.AIP, "a"}, {&fb.B, fb.BIP, "b"}} {
		ns, err := simhost.NewNetNS(h.cl.Prefix + h.Name + "-" + name + "-" + end.tag)
		if err != nil {
			return nil, err
		}
		*end.ns = ns
		port := fmt.Sprintf("%.10s-%s", name, end.tag) // on the host, at most 15 characters
		if err := simhost.AddVeth(port, h.NS.Name, "eth0", ns.Name); err != nil {
			return nil, fmt.Errorf("%s: foreign bridge %s: %w", h.Name, name, err)
		}
		if _, err := ns.Exec("ip", "addr", "add", end.ip.String()+"/24", "dev", "eth0"); err != nil {
			return nil, fmt.Errorf("%s: foreign bridge %s: %w", h.Name, name, err)
		}
		if _, err := h.OVS.Vsctl("add-port", name, port, "--", "set", "interface", port, fmt.Sprintf("ofport_request=%d", i+1)); err != nil {
			return nil, fmt.Errorf("%s: foreign bridge %s: %w", h.Name, name, err)
		}
	}
	for _, f := range flows {
		if _, err := h.OVS.Ofctl("-O", "OpenFlow13", "add-flow", name, f); err != nil {
			return nil, fmt.Errorf("%s: foreign bridge %s: flow %s: %w", h.Name, name, f, err)
		}
	}
	return fb, nil
}

// statsRE matches the counters and age in ovs-ofctl dump-flows output.
var statsRE = regexp.MustCompile(`(duration|n_packets|n_bytes|idle_age|hard_age)=[^ ,]*,? ?`)

// Flows returns the bridge's flows as ovs-ofctl prints them, without
// counters and ages, sorted: equal before and after means nobody touched
// them.
func (fb *ForeignBridge) Flows() ([]string, error) {
	out, err := fb.Host.OVS.Ofctl("-O", "OpenFlow13", "dump-flows", fb.Name)
	if err != nil {
		return nil, fmt.Errorf("%s: dump flows of %s: %w", fb.Host.Name, fb.Name, err)
	}
	var fs []string
	for _, l := range strings.Split(out, "\n") {
		l = strings.TrimSpace(statsRE.ReplaceAllString(l, ""))
		if l != "" && !strings.HasPrefix(l, "OFPST_FLOW") {
			fs = append(fs, l)
		}
	}
	sort.Strings(fs)
	return fs, nil
}

// State is the bridge's OVSDB columns that say who owns it and what is on
// it (external_ids, fail mode, protocols, ports), for before/after
// comparisons.
func (fb *ForeignBridge) State() (string, error) {
	cols, err := fb.Host.OVS.Vsctl("--columns=external_ids,fail_mode,protocols,datapath_type,other_config", "list", "bridge", fb.Name)
	if err != nil {
		return "", fmt.Errorf("%s: bridge %s: %w", fb.Host.Name, fb.Name, err)
	}
	ports, err := fb.Host.OVS.Vsctl("list-ports", fb.Name)
	if err != nil {
		return "", fmt.Errorf("%s: ports of %s: %w", fb.Host.Name, fb.Name, err)
	}
	return cols + "\nports: " + strings.ReplaceAll(ports, "\n", " "), nil
}

// Ping sends count pings from A to B through the bridge.
func (fb *ForeignBridge) Ping(count int) (string, error) {
	return fb.A.Exec("ping", "-c", fmt.Sprint(count), "-i", "0.2", "-W", "2", fb.BIP.String())
}

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
