package agent

import (
	"net/netip"
	"slices"
	"strings"
	"testing"
)

// Every bad etcd.members or api_listen field is named with its fix; good
// ones pass.
func TestValidateMembersAndAPIListen(t *testing.T) {
	ca, cert, key := testPKI(t, "h1")
	three := func() map[string]string {
		return map[string]string{"h1": "https://198.18.0.1:2380", "h2": "https://198.18.0.2:2380", "h3": "https://198.18.0.3:2380"}
	}
	cases := []struct {
		name string
		mut  func(*Config)
		want []string // nil means valid
	}{
		{"three members", func(c *Config) { c.Etcd.Members = three() }, nil},
		{"member with matching peer URL", func(c *Config) { c.Etcd.Members = three(); c.Etcd.EmbeddedPeerURL = "https://198.18.0.1:2380" }, nil},
		{"two members", func(c *Config) { c.Etcd.Members = three(); delete(c.Etcd.Members, "h3") },
			[]string{"config field etcd.members=map[h1:https://198.18.0.1:2380 h2:https://198.18.0.2:2380]: give 3, 5 or 7 members"}},
		{"this node missing", func(c *Config) { c.Etcd.Members = three(); c.Node = "h4" },
			[]string{`does not name this node "h4"`, "add h4: https://<its host IP>:2380", "list the members' client URLs"}},
		{"members and endpoints", func(c *Config) { c.Etcd.Members = three(); c.Etcd.Endpoints = []string{"https://198.18.0.2:2379"} },
			[]string{"etcd.endpoints=[https://198.18.0.2:2379]: a member's agent uses its own etcd member"}},
		{"bad member name", func(c *Config) { c.Etcd.Members = three(); c.Etcd.Members["a b"] = "https://198.18.0.9:2380" },
			[]string{"etcd.members.a b=https://198.18.0.9:2380: member name"}},
		{"peer URL not a URL", func(c *Config) { c.Etcd.Members = three(); c.Etcd.Members["h2"] = "198.18.0.2:2380" },
			[]string{"etcd.members.h2=198.18.0.2:2380: give the member's peer URL"}},
		{"peer URL by name", func(c *Config) { c.Etcd.Members = three(); c.Etcd.Members["h2"] = "https://h2.example:2380" },
			[]string{"etcd.members.h2=https://h2.example:2380: the peer URL's host must be the member's host IPv4 address"}},
		{"peer URL on loopback", func(c *Config) { c.Etcd.Members = three(); c.Etcd.Members["h2"] = "https://127.0.0.1:2380" },
			[]string{"etcd.members.h2=https://127.0.0.1:2380: the peer URL's host"}},
		{"plaintext peer", func(c *Config) { c.Etcd.Members = three(); c.Etcd.Members["h2"] = "http://198.18.0.2:2380" },
			[]string{"etcd.members.h2=http://198.18.0.2:2380: peer traffic carries the whole cluster's state"}},
		{"shared peer URL", func(c *Config) { c.Etcd.Members = three(); c.Etcd.Members["h3"] = "https://198.18.0.2:2380" },
			[]string{"etcd.members.h3=https://198.18.0.2:2380: member h2 has the same peer URL"}},
		{"peer URL differs", func(c *Config) { c.Etcd.Members = three(); c.Etcd.EmbeddedPeerURL = "https://198.18.0.1:2381" },
			[]string{"etcd.embedded_peer_url=https://198.18.0.1:2381: differs from this node's entry in etcd.members (https://198.18.0.1:2380)"}},
		{"member client URL on loopback", func(c *Config) { c.Etcd.Members = three(); c.Etcd.EmbeddedClientURL = "https://127.0.0.1:2379" },
			[]string{"etcd.embedded_client_url=https://127.0.0.1:2379: a member's client URL is advertised"}},
		{"api on the host IP", func(c *Config) { c.APIListen = ":9478" }, nil},
		{"api on an address", func(c *Config) { c.APIListen = "198.18.0.1:9478" }, nil},
		{"api not host:port", func(c *Config) { c.APIListen = "9478" }, []string{"api_listen=9478: give host:port"}},
		{"api port 0", func(c *Config) { c.APIListen = ":0" }, []string{"api_listen=:0: give a TCP port"}},
		{"api on loopback", func(c *Config) { c.APIListen = "127.0.0.1:9478" }, []string{"api_listen=127.0.0.1:9478: the host must be an IPv4 address other hosts reach"}},
		{"api without TLS", func(c *Config) {
			c.Etcd.CA, c.Etcd.Cert, c.Etcd.Key = "", "", ""
			c.Etcd.EmbeddedClientURL = "http://127.0.0.1:2379"
			c.APIListen = ":9478"
		}, []string{"api_listen=:9478: the API over TCP is served only with the cluster's mutual TLS"}},
	}
	for _, tc := range cases {
		c := DefaultConfig()
		c.Node, c.Uplink = "h1", "eth1"
		c.Etcd.CA, c.Etcd.Cert, c.Etcd.Key = ca, cert, key
		tc.mut(&c)
		err := c.Validate()
		if len(tc.want) == 0 {
			if err != nil {
				t.Errorf("%s: %v", tc.name, err)
			}
			continue
		}
		for _, w := range tc.want {
			if err == nil || !strings.Contains(err.Error(), w) {
				t.Errorf("%s: want an error containing %q, got %v", tc.name, w, err)
			}
		}
	}
}

func TestMembersURLsPortsAndAPIAddr(t *testing.T) {
	c := DefaultConfig()
	c.Node = "h2"
	c.Etcd.CA, c.Etcd.Cert, c.Etcd.Key = "ca", "cert", "key"
	c.Etcd.Members = map[string]string{"h1": "https://198.18.0.1:2380", "h2": "https://198.18.0.2:2390", "h3": "https://198.18.0.3:2380"}
	client, peer := c.EmbeddedURLs("198.18.0.2")
	if client != "https://198.18.0.2:2379" || peer != "https://198.18.0.2:2390" {
		t.Errorf("embedded URLs %s %s: want the host IP's client URL and this node's member peer URL", client, peer)
	}
	c.APIListen = ":9478"
	if got := c.ProtectedTCPPorts(); !slices.Contains(got, 2390) || !slices.Contains(got, 9478) {
		t.Errorf("protected ports %v: want the member peer port 2390 and the API port 9478", got)
	}
	host := netip.MustParseAddr("198.18.0.2")
	for listen, want := range map[string]string{":9478": "198.18.0.2:9478", "0.0.0.0:9478": "198.18.0.2:9478", "198.18.0.7:9000": "198.18.0.7:9000"} {
		c.APIListen = listen
		if got := c.APIAddr(host); got.String() != want {
			t.Errorf("api_listen %s: API address %s, want %s", listen, got, want)
		}
	}
	c.APIListen = ""
	if got := c.APIAddr(host); got.IsValid() {
		t.Errorf("no api_listen: API address %s, want none", got)
	}
}
