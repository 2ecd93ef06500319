package agent

import (
	"net"
	"net/netip"
	"net/url"
	"sort"
	"strconv"

	"github.com/keyroute/keyroute/registry"
)

// validateMembers checks etcd.members: an odd number of members (3, 5 or
// 7), this node among them, each a valid name with a distinct peer URL on
// a host address, no etcd.endpoints beside it, and the embedded URLs
// consistent with it.
func (c *Config) validateMembers(bad func(field string, v any, fix string, args ...any), withTLS bool) {
	e := &c.Etcd
	n := len(e.Members)
	if n != 3 && n != 5 && n != 7 {
		bad("etcd.members", e.Members, "give 3, 5 or 7 members (an even count survives no more failures than one fewer; 3 survives one lost host); for a single embedded etcd leave etcd.members out")
	}
	if len(e.Endpoints) > 0 {
		bad("etcd.endpoints", e.Endpoints, "a member's agent uses its own etcd member and learns the others from etcd's membership: remove etcd.endpoints here; "+
			"on a host that is not a member, remove etcd.members and list the members' client URLs (https://<member IP>:2379) in etcd.endpoints")
	}
	if _, ok := e.Members[c.Node]; !ok && c.Node != "" {
		bad("etcd.members", e.Members, "does not name this node %q: on a member, add %s: https://<its host IP>:2380; on a host that is not a member, remove etcd.members and list the members' client URLs (https://<member IP>:2379) in etcd.endpoints", c.Node, c.Node)
	}
	names := make([]string, 0, n)
	for name := range e.Members {
		names = append(names, name)
	}
	sort.Strings(names)
	seen := map[string]string{}
	for _, name := range names {
		field, u := "etcd.members."+name, e.Members[name]
		if err := registry.ValidateName(name); err != nil {
			bad(field, u, "member name: %v; use the member's node name", err)
		}
		pu, err := url.Parse(u)
		if err != nil || pu.Scheme != "http" && pu.Scheme != "https" || pu.Port() == "" || pu.Path != "" && pu.Path != "/" {
			bad(field, u, "give the member's peer URL, such as https://198.18.0.1:2380")
			continue
		}
		a, err := netip.ParseAddr(pu.Hostname())
		switch {
		case err != nil || !a.Is4() || a.IsUnspecified() || a.IsLoopback() || a.IsMulticast():
			bad(field, u, "the peer URL's host must be the member's host IPv4 address, which the other members reach (not a name, loopback or 0.0.0.0)")
		case pu.Scheme == "https" && !withTLS:
			bad(field, u, "https needs etcd.ca, etcd.cert and etcd.key: peers authenticate each other with the cluster CA (keyroutectl pki issue %s --ip %s)", name, a)
		case pu.Scheme == "http" && !e.Insecure:
			bad(field, u, "peer traffic carries the whole cluster's state: use https with the cluster CA (etcd.ca, etcd.cert, etcd.key; keyroutectl pki issue %s --ip %s), or accept plaintext with etcd.insecure: true", name, a)
		}
		if other, dup := seen[u]; dup {
			bad(field, u, "member %s has the same peer URL: give every member its own host's address", other)
		}
		seen[u] = name
	}
	if mine, ok := e.Members[c.Node]; ok && e.EmbeddedPeerURL != "" && e.EmbeddedPeerURL != mine {
		bad("etcd.embedded_peer_url", e.EmbeddedPeerURL, "differs from this node's entry in etcd.members (%s): remove etcd.embedded_peer_url (it defaults to that entry) or make them equal", mine)
	}
	if e.EmbeddedClientURL != "" && registry.IsLoopbackURL(e.EmbeddedClientURL) {
		bad("etcd.embedded_client_url", e.EmbeddedClientURL, "a member's client URL is advertised to every agent: serve it on the host IP (https://<host IP>:2379, the default)")
	}
}

// validateAPIListen checks api_listen: host:port with an IPv4 host (or
// none, for the host IP), and the cluster's TLS files to serve it with.
func (c *Config) validateAPIListen(bad func(field string, v any, fix string, args ...any)) {
	if c.APIListen == "" {
		return
	}
	host, port, err := net.SplitHostPort(c.APIListen)
	if err != nil {
		bad("api_listen", c.APIListen, "give host:port, e.g. <host IP>:9478 or :9478 (the host IP), or leave empty to serve the API on the unix socket only")
		return
	}
	if p, err := strconv.ParseUint(port, 10, 16); err != nil || p == 0 {
		bad("api_listen", c.APIListen, "give a TCP port 1..65535, e.g. :9478")
	}
	if host != "" {
		if a, err := netip.ParseAddr(host); err != nil || !a.Is4() || a.IsLoopback() || a.IsMulticast() {
			bad("api_listen", c.APIListen, "the host must be an IPv4 address other hosts reach (the host IP, or 0.0.0.0), or empty for the host IP")
		}
	}
	if c.EtcdTLS() == nil {
		bad("api_listen", c.APIListen, "the API over TCP is served only with the cluster's mutual TLS: set etcd.ca, etcd.cert and etcd.key (keyroutectl pki issue %s --ip <host IP>)", c.Node)
	}
}

// APIAddr is the address other hosts reach this agent's TCP API at
// (api_listen, with the host IP for an empty or unspecified host), or the
// zero AddrPort when api_listen is empty. Valid after Validate.
func (c *Config) APIAddr(hostIP netip.Addr) netip.AddrPort {
	host, port, err := net.SplitHostPort(c.APIListen)
	if err != nil {
		return netip.AddrPort{}
	}
	p, _ := strconv.ParseUint(port, 10, 16)
	a, err := netip.ParseAddr(host)
	if err != nil || a.IsUnspecified() {
		a = hostIP
	}
	return netip.AddrPortFrom(a, uint16(p))
}
