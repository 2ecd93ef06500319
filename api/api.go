// Package api is the local API between keyroute-agent and keyroutectl:
// JSON over HTTP on a unix socket. It owns the request and response types
// and the client; the agent serves them.
package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"time"
)

// Paths served by the agent.
const (
	PathStatus    = "/v1/status"
	PathHosts     = "/v1/hosts"
	PathHost      = "/v1/hosts/{name}" // DELETE: end the host's membership (?force=1: even while its agent runs)
	PathEndpoints = "/v1/endpoints"
	PathFlows     = "/v1/flows"
	PathAttach    = "/v1/attach"
	PathDetach    = "/v1/detach"
	PathKeys      = "/v1/keys"
	PathCache     = "/v1/cache"
)

// Status is what `keyroutectl status` shows.
type Status struct {
	Node           string       `json:"node"`
	Mode           string       `json:"mode"`
	HostIP         string       `json:"host_ip"`
	HostMAC        string       `json:"host_mac"`
	PodSubnet      string       `json:"pod_subnet"`
	Gateway        string       `json:"gateway"`
	Datapath       string       `json:"datapath"`
	DatapathReason string       `json:"datapath_reason"`
	Bridges        []Bridge     `json:"bridges"`
	Etcd           EtcdStatus   `json:"etcd"`
	Counts         StatusCounts `json:"counts"`
	Cache          *CacheStatus `json:"cache,omitempty"` // rewrite mode only
	// DSCPPaths is the DSCP path check towards each peer (rewrite mode).
	DSCPPaths []DSCPPath `json:"dscp_paths,omitempty"`
	Uptime    string     `json:"uptime"`
}

// DSCPPath is the DSCP path check's verdict on the fabric towards one
// peer: pairs towards it use keys only when State is "verified" (or "off":
// the check is turned off).
type DSCPPath struct {
	Peer string `json:"peer"`
	// State: verified, re-marked, unanswered, unchecked or off.
	State string `json:"state"`
	// Detail: e.g. "sent 10 got 8" for a re-marked path.
	Detail string `json:"detail,omitempty"`
	// Checked is when the last verdict was reached (RFC 3339).
	Checked string `json:"checked,omitempty"`
}

// CacheStatus is the key protocol's state on this host (rewrite mode).
type CacheStatus struct {
	// Synced: start-up has finished and punts are served.
	Synced bool `json:"synced"`
	// States counts this host's sender entries and held keys by state.
	States map[string]int `json:"states"`
	// Restores counts Restore entries; Released keys this host freed.
	Restores int    `json:"restores"`
	Released uint64 `json:"released"`
	// Repairs and Fallbacks by kind/reason since the agent started.
	Repairs   map[string]uint64 `json:"repairs"`
	Fallbacks map[string]uint64 `json:"fallbacks"`
}

// Bridge is one OVS bridge and the agent's OpenFlow connection to it.
type Bridge struct {
	Name      string `json:"name"`
	Connected bool   `json:"connected"`
	Ports     []Port `json:"ports"`
}

// Port is an OVS port on a bridge.
type Port struct {
	Name   string `json:"name"`
	OFPort uint32 `json:"ofport"`
	Type   string `json:"type"`
	Error  string `json:"error,omitempty"`
}

// EtcdStatus says which etcd the agent uses and whether it answers.
type EtcdStatus struct {
	Endpoints []string `json:"endpoints"`
	Embedded  bool     `json:"embedded"`
	Healthy   bool     `json:"healthy"`
	Error     string   `json:"error,omitempty"`
}

// StatusCounts are object counts on this host.
type StatusCounts struct {
	Hosts     int `json:"hosts"`
	Endpoints int `json:"endpoints"`
	Flows     int `json:"flows"`
}

// Host is a cluster member.
type Host struct {
	Name      string `json:"name"`
	IP        string `json:"ip"`
	MAC       string `json:"mac"`
	PodSubnet string `json:"pod_subnet"`
	Datapath  string `json:"datapath"`
	// Agent is AgentUp while the host's agent runs (its etcd lease lives),
	// else AgentDown; the host stays a member either way.
	Agent string `json:"agent"`
	// AgentSince is when the running agent registered (RFC 3339).
	AgentSince string `json:"agent_since,omitempty"`
}

// Host.Agent values.
const (
	AgentUp   = "up"
	AgentDown = "down"
)

// Endpoint is an attached container.
type Endpoint struct {
	Name  string `json:"name"`
	IP    string `json:"ip"`
	MAC   string `json:"mac"`
	Host  string `json:"host"`
	Port  string `json:"port"`
	NetNS string `json:"netns,omitempty"`
	// ContainerID and IfName are set for attachments made through CNI.
	ContainerID string `json:"container_id,omitempty"`
	IfName      string `json:"ifname,omitempty"`
}

// Flow is one installed flow with its counters.
type Flow struct {
	Bridge      string `json:"bridge"`
	Table       uint8  `json:"table"`
	TableName   string `json:"table_name"`
	Priority    uint16 `json:"priority"`
	Cookie      string `json:"cookie"`
	Category    string `json:"category"`
	Match       string `json:"match"`
	Actions     string `json:"actions"`
	IdleTimeout uint16 `json:"idle_timeout,omitempty"`
	Packets     uint64 `json:"packets"`
	Bytes       uint64 `json:"bytes"`
	DurationSec uint32 `json:"duration_sec"`
}

// Key is one cache key allocation (rewrite mode), cluster-wide. State is
// the record's (pending, ready), or for the answering host's own keys on
// their way out draining, quarantined or releasing.
type Key struct {
	SrcHost string `json:"src_host"`
	DstHost string `json:"dst_host"`
	Key     uint8  `json:"key"`
	Src     string `json:"src"`
	Dst     string `json:"dst"`
	State   string `json:"state"`
	AgeSec  int64  `json:"age_sec"`
}

// CacheEntry is one of this host's cache flows: an EgressCache entry
// (side "egress"; state pending, ready or fallback) or a Restore entry
// (side "restore"; pending until marked ready) — or a key this host still
// holds for a pair that left it, without a flow (side "egress"; state
// draining, quarantined or releasing).
type CacheEntry struct {
	Side        string `json:"side"`
	Peer        string `json:"peer"`
	Key         uint8  `json:"key"`
	Src         string `json:"src"`
	Dst         string `json:"dst"`
	State       string `json:"state"`
	Packets     uint64 `json:"packets"`
	Bytes       uint64 `json:"bytes"`
	IdleTimeout uint16 `json:"idle_timeout"`
}

// AttachRequest asks the agent to connect a network namespace.
type AttachRequest struct {
	NetNS string `json:"netns"`
	Name  string `json:"name"`
	IP    string `json:"ip,omitempty"`
}

// DetachRequest asks the agent to disconnect a container.
type DetachRequest struct {
	Name string `json:"name"`
}

// Error is the body of every non-2xx answer.
type Error struct {
	Error string `json:"error"`
	// Kind classifies the error for programs (the CNI plugin maps it to
	// CNI error codes); empty for errors of no particular kind.
	Kind string `json:"kind,omitempty"`
}

// Error kinds.
const (
	KindBadRequest    = "bad_request"    // the caller's input is wrong
	KindIPInUse       = "ip_in_use"      // a requested address is held
	KindPoolExhausted = "pool_exhausted" // no free address in the pod subnet
	KindNotFound      = "not_found"      // no such attachment
	KindBadNetNS      = "bad_netns"      // the network namespace is not usable
)

// AgentError is an error the agent answered with.
type AgentError struct {
	Status int // HTTP status
	Kind   string
	Msg    string
}

func (e *AgentError) Error() string { return e.Msg }

// Client talks to one agent's socket.
type Client struct {
	Socket string
	http   *http.Client
}

// NewClient returns a client for the agent listening on socket.
func NewClient(socket string) *Client {
	tr := &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", socket)
	}}
	return &Client{Socket: socket, http: &http.Client{Transport: tr, Timeout: 60 * time.Second}}
}

// ErrAgentDown means nothing answers on the socket.
var ErrAgentDown = errors.New("agent not running")

func (c *Client) do(ctx context.Context, method, path string, q url.Values, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	u := "http://agent" + path
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, method, u, body)
	if err != nil {
		return err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		if _, serr := os.Stat(c.Socket); serr != nil {
			return fmt.Errorf("%w: no socket at %s (start keyroute-agent, or pass --socket)", ErrAgentDown, c.Socket)
		}
		return fmt.Errorf("%w: %s: %v", ErrAgentDown, c.Socket, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return fmt.Errorf("read agent answer: %w", err)
	}
	if resp.StatusCode/100 != 2 {
		var e Error
		if json.Unmarshal(b, &e) == nil && e.Error != "" {
			return &AgentError{Status: resp.StatusCode, Kind: e.Kind, Msg: e.Error}
		}
		return fmt.Errorf("agent answered %s", resp.Status)
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(b, out); err != nil {
		return fmt.Errorf("decode agent answer: %w", err)
	}
	return nil
}

// Status returns the agent's status.
func (c *Client) Status(ctx context.Context) (Status, error) {
	var s Status
	return s, c.do(ctx, http.MethodGet, PathStatus, nil, nil, &s)
}

// Hosts lists cluster members.
func (c *Client) Hosts(ctx context.Context) ([]Host, error) {
	var h []Host
	return h, c.do(ctx, http.MethodGet, PathHosts, nil, nil, &h)
}

// RemoveHost ends a host's cluster membership. The agent refuses while
// the host's agent runs, unless force.
func (c *Client) RemoveHost(ctx context.Context, name string, force bool) error {
	q := url.Values{}
	if force {
		q.Set("force", "1")
	}
	return c.do(ctx, http.MethodDelete, PathHosts+"/"+url.PathEscape(name), q, nil, nil)
}

// Endpoints lists containers; all=false limits them to this host.
func (c *Client) Endpoints(ctx context.Context, all bool) ([]Endpoint, error) {
	var e []Endpoint
	q := url.Values{}
	if all {
		q.Set("all", "1")
	}
	return e, c.do(ctx, http.MethodGet, PathEndpoints, q, nil, &e)
}

// Flows lists this host's flows; table may be empty or a table name.
func (c *Client) Flows(ctx context.Context, table string) ([]Flow, error) {
	var f []Flow
	q := url.Values{}
	if table != "" {
		q.Set("table", table)
	}
	return f, c.do(ctx, http.MethodGet, PathFlows, q, nil, &f)
}

// Keys lists cache key allocations, cluster-wide.
func (c *Client) Keys(ctx context.Context) ([]Key, error) {
	var k []Key
	return k, c.do(ctx, http.MethodGet, PathKeys, nil, nil, &k)
}

// Cache lists this host's cache entries with their counters.
func (c *Client) Cache(ctx context.Context) ([]CacheEntry, error) {
	var e []CacheEntry
	return e, c.do(ctx, http.MethodGet, PathCache, nil, nil, &e)
}

// Attach connects a network namespace as a container.
func (c *Client) Attach(ctx context.Context, r AttachRequest) (Endpoint, error) {
	var e Endpoint
	return e, c.do(ctx, http.MethodPost, PathAttach, nil, r, &e)
}

// Detach disconnects a container.
func (c *Client) Detach(ctx context.Context, r DetachRequest) error {
	return c.do(ctx, http.MethodPost, PathDetach, nil, r, nil)
}
