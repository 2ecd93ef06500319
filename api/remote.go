package api

import (
	"crypto/tls"
	"net/http"
	"time"
)

// NewRemoteClient returns a client for another host's agent serving its
// read-only API on addr (host:port, from the host's record) over TLS:
// tc must trust the cluster CA and present a certificate of it. Only
// what trace and diagnose need is served there.
func NewRemoteClient(addr string, tc *tls.Config) *Client {
	tr := &http.Transport{TLSClientConfig: tc, TLSHandshakeTimeout: 5 * time.Second}
	return &Client{Addr: addr, ReadTimeout: DefaultReadTimeout, WriteTimeout: DefaultWriteTimeout, http: &http.Client{Transport: tr}}
}

// Where names the agent the client talks to: its socket or its address.
func (c *Client) Where() string {
	if c.Addr != "" {
		return c.Addr
	}
	return c.Socket
}
