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
	"os/user"
	"strconv"
	"syscall"
	"time"

	"github.com/keyroute/keyroute/hostlayout"
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
	Node string `json:"node"`
	// Version is the agent's (keyroute-agent --version).
	Version   string `json:"version"`
	Mode      string `json:"mode"`
	HostIP    string `json:"host_ip"`
	HostMAC   string `json:"host_mac"`
	PodSubnet string `json:"pod_subnet"`
	Gateway   string `json:"gateway"`
	// GatewayMAC is the cluster's virtual gateway MAC (cluster.gateway_mac
	// as agreed in etcd): the destination MAC of every packet a container
	// sends off its subnet.
	GatewayMAC     string `json:"gateway_mac"`
	Datapath       string `json:"datapath"`
	DatapathReason string `json:"datapath_reason"`
	// PortType is how OVS reads the uplink and the containers' veths.
	PortType PortTypeStatus `json:"port_type"`
	Bridges  []Bridge       `json:"bridges"`
	Etcd     EtcdStatus     `json:"etcd"`
	Counts   StatusCounts   `json:"counts"`
	Cache    *CacheStatus   `json:"cache,omitempty"` // rewrite mode only
	// DSCPPaths is the DSCP path check towards each peer (rewrite mode).
	DSCPPaths []DSCPPath `json:"dscp_paths,omitempty"`
	Uptime    string     `json:"uptime"`
}

// PortTypeStatus is the type of the ports packets enter OVS by (the
// uplink, the containers' veths; pre-made ports stay system) and why.
type PortTypeStatus struct {
	// Setting is ovs.port_type: auto, system or afxdp.
	Setting string `json:"setting"`
	// Type is what the agent creates these ports as: system or afxdp.
	Type string `json:"type"`
	// Reason says why, e.g. "auto: netdev datapath".
	Reason string `json:"reason"`
	// Fallbacks are the ports whose AF_XDP port did not come up and that
	// run as system ports instead.
	Fallbacks []PortFallback `json:"fallbacks,omitempty"`
}

// PortFallback is one port that fell back from AF_XDP.
type PortFallback struct {
	Port string `json:"port"`
	// Type is the type it runs as instead: system.
	Type string `json:"type"`
	// Error is why the AF_XDP port did not come up (OVS's
	// Interface.error, or the deadline).
	Error string `json:"error"`
}

// String is the one line keyroutectl status prints, e.g. "afxdp (auto:
// netdev datapath)" or "system (auto: afxdp failed on c-web1: …)".
func (p PortTypeStatus) String() string {
	s := fmt.Sprintf("%s (%s)", p.Type, p.Reason)
	auto := ""
	if p.Setting == "auto" {
		auto = "auto: "
	}
	for _, f := range p.Fallbacks {
		s += fmt.Sprintf("; %s on %s (%safxdp failed: %s)", f.Type, f.Port, auto, f.Error)
	}
	return s
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
	// Bridges are the host's bridge names (its config's bridges.*).
	Bridges hostlayout.Bridges `json:"bridges"`
	// Agent is AgentUp while the host's agent runs (its etcd lease lives),
	// else AgentDown; the host stays a member either way.
	Agent string `json:"agent"`
	// AgentSince is when the running agent registered (RFC 3339).
	AgentSince string `json:"agent_since,omitempty"`
	// API is where the host's agent serves its read-only API over TCP
	// with the cluster's mutual TLS (host:port), empty if it does not.
	API string `json:"api,omitempty"`
	// AgentVersion is the version of the host's agent: the running one's,
	// else the last one that registered the host.
	AgentVersion string `json:"agent_version,omitempty"`
	// StaleSince is set when the answering agent could not reach etcd and
	// answered from its own state: that state is as of this time (RFC
	// 3339), the last time etcd answered it; StaleReason says what is
	// unreachable. Agent is then the last state the agent saw, or
	// AgentUnknown.
	StaleSince  string `json:"stale_since,omitempty"`
	StaleReason string `json:"stale_reason,omitempty"`
}

// Host.Agent values.
const (
	AgentUp   = "up"
	AgentDown = "down"
	// AgentUnknown: etcd is unreachable and the agent never saw it.
	AgentUnknown = "unknown"
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
	Key     uint8  `json:"key"` // the key's DSCP
	// KeySrc and KeyDst are the key's underlay addresses: the sending
	// host's and the receiving host's (DESIGN.md "Key space").
	KeySrc string `json:"key_src"`
	KeyDst string `json:"key_dst"`
	Src    string `json:"src"`
	Dst    string `json:"dst"`
	State  string `json:"state"`
	AgeSec int64  `json:"age_sec"`
	// RateBps is the pair's traffic in bytes/s, as its sender last read
	// it (only the sending host's agent knows it; 0 elsewhere).
	RateBps float64 `json:"rate_bps,omitempty"`
}

// CacheEntry is one of this host's cache flows: an EgressCache entry
// (side "egress"; state pending, ready or fallback) or a Restore entry
// (side "restore"; pending until marked ready) — or a key this host still
// holds for a pair that left it, without a flow (side "egress"; state
// draining, quarantined or releasing).
type CacheEntry struct {
	Side        string `json:"side"`
	Peer        string `json:"peer"`
	Key         uint8  `json:"key"`     // the key's DSCP; 0 for a fallback entry
	KeySrc      string `json:"key_src"` // the key's underlay addresses, sender's and receiver's
	KeyDst      string `json:"key_dst"`
	Src         string `json:"src"`
	Dst         string `json:"dst"`
	State       string `json:"state"`
	Packets     uint64 `json:"packets"`
	Bytes       uint64 `json:"bytes"`
	IdleTimeout uint16 `json:"idle_timeout"`
}

// AttachRequest asks the agent to connect a network namespace (NetNS: the
// agent makes a veth into it) or an interface that already exists on the
// host (Port: a VM's tap or a veth end, attached as it is and given back as
// it was at detach). MAC is the endpoint's (for Port, the VM's NIC); empty
// picks a random one.
type AttachRequest struct {
	NetNS string `json:"netns,omitempty"`
	Port  string `json:"port,omitempty"`
	Name  string `json:"name"`
	IP    string `json:"ip,omitempty"`
	MAC   string `json:"mac,omitempty"`
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

// Default per-request deadlines of a Client: a question (GET) is answered
// from the agent's own state or with an error naming what is unreachable
// well inside ReadTimeout; a change (attach, rule add, trace) may take
// longer.
const (
	DefaultReadTimeout  = 2 * time.Second
	DefaultWriteTimeout = 30 * time.Second
	// dumpTimeout bounds flow and cache dumps, which answer from OVS
	// (not etcd) and grow with the number of flows.
	dumpTimeout = 10 * time.Second
)

// Client talks to one agent: on its unix socket (NewClient), or on its
// TCP API with mutual TLS (NewRemoteClient).
type Client struct {
	Socket string
	// Addr is the remote agent's host:port ("" for a socket).
	Addr string
	// ReadTimeout and WriteTimeout bound each GET and each other request
	// when the caller's context has no earlier deadline (0: no bound).
	ReadTimeout, WriteTimeout time.Duration
	http                      *http.Client
}

// NewClient returns a client for the agent listening on socket, with the
// default deadlines.
func NewClient(socket string) *Client {
	tr := &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", socket)
	}}
	return &Client{Socket: socket, ReadTimeout: DefaultReadTimeout, WriteTimeout: DefaultWriteTimeout,
		http: &http.Client{Transport: tr}}
}

// Why a request did not reach the agent, or got no answer in time.
var (
	// ErrAgentDown: no socket, or nothing listens on it.
	ErrAgentDown = errors.New("agent not running")
	// ErrPermission: the socket exists but this user may not connect.
	ErrPermission = errors.New("permission denied on the agent's socket")
	// ErrAgentTimeout: the agent accepted the request but did not answer
	// within the deadline (busy or hung); it is running.
	ErrAgentTimeout = errors.New("agent did not answer in time")
)

// classify turns a failed request into an error that says whether the
// agent runs: no socket or connection refused (not running), permission
// denied (running, not for this user), or no answer within timeout
// (running, busy or hung). Any other error passes through with context.
func classify(socket string, err error, timeout time.Duration) error {
	switch {
	case errors.Is(err, syscall.ENOENT):
		return fmt.Errorf("%w: no socket at %s (start keyroute-agent, e.g. systemctl start keyroute-agent, or pass --socket)", ErrAgentDown, socket)
	case errors.Is(err, syscall.ECONNREFUSED):
		return fmt.Errorf("%w: nothing listens on %s (a socket file left by a stopped agent; start keyroute-agent)", ErrAgentDown, socket)
	case errors.Is(err, syscall.EACCES) || errors.Is(err, syscall.EPERM):
		return fmt.Errorf("%w %s%s: keyroutectl needs root, or membership in the socket's group with a group-accessible socket", ErrPermission, socket, socketOwner(socket))
	case errors.Is(err, context.DeadlineExceeded) || os.IsTimeout(err):
		return fmt.Errorf("%w: %s accepted the request but gave no answer within %s (agent busy or unresponsive; see its log, e.g. journalctl -u keyroute-agent; --timeout waits longer)", ErrAgentTimeout, socket, timeout)
	}
	return fmt.Errorf("talk to the agent at %s: %w", socket, err)
}

// socketOwner describes the socket's owner, group and mode for a
// permission error, e.g. " (owner root, group root, mode 0600)".
func socketOwner(socket string) string {
	st, err := os.Stat(socket)
	if err != nil {
		return ""
	}
	sys, ok := st.Sys().(*syscall.Stat_t)
	if !ok {
		return ""
	}
	name := func(lookup func(string) (string, error), id uint32) string {
		if n, err := lookup(strconv.FormatUint(uint64(id), 10)); err == nil {
			return n
		}
		return strconv.FormatUint(uint64(id), 10)
	}
	owner := name(func(id string) (string, error) {
		u, err := user.LookupId(id)
		if err != nil {
			return "", err
		}
		return u.Username, nil
	}, sys.Uid)
	group := name(func(id string) (string, error) {
		g, err := user.LookupGroupId(id)
		if err != nil {
			return "", err
		}
		return g.Name, nil
	}, sys.Gid)
	return fmt.Sprintf(" (owner %s, group %s, mode %04o)", owner, group, st.Mode().Perm())
}

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
	if c.Addr != "" {
		u = "https://" + c.Addr + path
	}
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	timeout := c.WriteTimeout
	switch {
	case method == http.MethodGet && path == PathCapture:
		// Waits for a capture to finish, like a change.
	case method == http.MethodGet && (path == PathFlows || path == PathCache):
		// Dumps from OVS, whose size grows with the flows installed.
		timeout = max(c.ReadTimeout, dumpTimeout)
	case method == http.MethodGet:
		timeout = c.ReadTimeout
	}
	if d, ok := ctx.Deadline(); timeout > 0 && (!ok || time.Until(d) > timeout) {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	} else if ok {
		timeout = time.Until(d).Round(time.Millisecond)
	}
	req, err := http.NewRequestWithContext(ctx, method, u, body)
	if err != nil {
		return err
	}
	resp, err := c.http.Do(req)
	if err != nil && c.Addr != "" {
		return fmt.Errorf("agent API at %s (TCP, mutual TLS): %w", c.Addr, err)
	}
	if err != nil {
		if errors.Is(err, context.Canceled) {
			return err
		}
		return classify(c.Socket, err, timeout)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return classify(c.Socket, fmt.Errorf("read agent answer: %w", err), timeout)
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
