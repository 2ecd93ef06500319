package simhost

import (
	"context"
	"net"
	"net/http"

	"github.com/keyroute/keyroute/internal/netnsutil"
)

// Do runs fn on an OS thread that has entered the namespace. Sockets fn
// creates stay in the namespace after Do returns, so a test process can talk
// from inside a simulated host or container without spawning helpers.
func (n *NetNS) Do(fn func() error) error {
	return netnsutil.Do(netnsutil.Path(n.Name), fn)
}

// DialContext opens a connection from inside the namespace.
func (n *NetNS) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	var c net.Conn
	err := n.Do(func() error {
		var err error
		c, err = (&net.Dialer{}).DialContext(ctx, network, address)
		return err
	})
	return c, err
}

// ListenPacket opens a packet socket (e.g. "udp4", "198.19.1.2:9000")
// inside the namespace.
func (n *NetNS) ListenPacket(network, address string) (net.PacketConn, error) {
	var c net.PacketConn
	err := n.Do(func() error {
		var err error
		c, err = net.ListenPacket(network, address)
		return err
	})
	return c, err
}

// HTTPClient returns a client whose connections start inside the namespace,
// e.g. to read an agent's metrics or etcd's /health.
func (n *NetNS) HTTPClient() *http.Client {
	return &http.Client{Transport: &http.Transport{DialContext: n.DialContext, DisableKeepAlives: true}}
}
