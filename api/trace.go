package api

import (
	"context"
	"net/http"
	"net/url"
	"time"
)

// Paths for tracing and diagnosing a flow's path.
const (
	// PathTrace runs ofproto/trace on one of the host's bridges.
	PathTrace = "/v1/trace"
	// PathProbe sends test packets into a bridge's pipeline (packet-out).
	PathProbe = "/v1/probe"
	// PathPorts lists both bridges' ports with link state and counters.
	PathPorts = "/v1/ports"
	// PathDiagnoses stores (POST) and lists (GET) diagnoses in etcd.
	PathDiagnoses = "/v1/diagnoses"
	// PathCapture starts (POST) a short capture on the uplink and
	// collects (GET ?id=) its packets.
	PathCapture = "/v1/capture"
)

// CaptureRequest starts a tcpdump on the host's uplink: at most Count
// packets matching Filter (BPF), for at most TimeoutMs.
type CaptureRequest struct {
	Filter    string `json:"filter"`
	Count     int    `json:"count"`
	TimeoutMs int    `json:"timeout_ms"`
}

// CaptureResult is a started capture (ID) or a finished one (Lines: one
// per packet, tcpdump -nn -v text).
type CaptureResult struct {
	ID    string   `json:"id"`
	Iface string   `json:"iface"`
	Lines []string `json:"lines,omitempty"`
	// Stats is tcpdump's closing count (captured, dropped by kernel).
	Stats string `json:"stats,omitempty"`
}

// OFTraceRequest asks for `ovs-appctl ofproto/trace <Bridge> <Flow>`.
// Flow is in ovs-ofctl syntax (in_port may be a port name).
type OFTraceRequest struct {
	Bridge string `json:"bridge"`
	Flow   string `json:"flow"`
}

// OFTrace is a parsed ofproto/trace answer.
type OFTrace struct {
	Node   string `json:"node,omitempty"`
	Bridge string `json:"bridge"`
	// Flow is the input flow as OVS read it.
	Flow  string      `json:"flow"`
	Steps []TraceStep `json:"steps"`
	// FinalFlow is the packet after the pipeline's changes ("unchanged"
	// when there were none); DatapathActions what the datapath would do.
	FinalFlow       string `json:"final_flow"`
	Megaflow        string `json:"megaflow,omitempty"`
	DatapathActions string `json:"datapath_actions"`
	// Verdict: output (leaves through Outputs), tunnel (VXLAN, see
	// Tunnel), drop, or controller (only to the agent); see OFVerdict.
	Verdict OFVerdict    `json:"verdict"`
	Outputs []string     `json:"outputs,omitempty"`
	Tunnel  *TunnelOuter `json:"tunnel,omitempty"`
	// DropStep indexes Steps: the flow whose actions dropped the packet
	// (-1: none, or the drop happened outside the OpenFlow tables).
	DropStep int    `json:"drop_step"`
	Raw      string `json:"raw,omitempty"`
}

// TraceStep is one flow the traced packet matched.
type TraceStep struct {
	Bridge    string `json:"bridge"`
	Table     uint8  `json:"table"`
	TableName string `json:"table_name"`
	Priority  int    `json:"priority"`
	Cookie    string `json:"cookie"`
	Category  string `json:"category"`
	Match     string `json:"match"`
	// Actions of the flow, one per element; Notes are OVS's remarks
	// ("-> output to native tunnel", ">> Nonexistent output port").
	Actions []string `json:"actions"`
	Notes   []string `json:"notes,omitempty"`
}

// TunnelOuter is the VXLAN header OVS pushes (tnl_push in the datapath
// actions). The outer UDP source port is chosen per packet from the inner
// packet's hash, so it is not known in advance.
type TunnelOuter struct {
	VNI      uint32 `json:"vni"`
	Src      string `json:"src"`
	Dst      string `json:"dst"`
	SrcMAC   string `json:"src_mac,omitempty"`
	DstMAC   string `json:"dst_mac,omitempty"`
	UDPDst   uint16 `json:"udp_dst"`
	OutPort  string `json:"out_port,omitempty"`
	DSCP     uint8  `json:"dscp"`
	SportTBD bool   `json:"sport_from_hash"`
}

// ProbeRequest sends Count copies of one test packet into a bridge's
// pipeline as if it had arrived on InPort (packet-out to TABLE). Probes
// carry DSCP 0: keyroute's key lives in DSCP.
type ProbeRequest struct {
	Bridge string `json:"bridge"`
	InPort string `json:"in_port"`
	SrcMAC string `json:"src_mac"`
	DstMAC string `json:"dst_mac"`
	Src    string `json:"src"`
	Dst    string `json:"dst"`
	Proto  string `json:"proto"` // tcp, udp or icmp
	SPort  uint16 `json:"sport,omitempty"`
	DPort  uint16 `json:"dport,omitempty"`
	Count  int    `json:"count"`
}

// ProbeResult says how many probes went out.
type ProbeResult struct {
	Sent int `json:"sent"`
}

// PortState is a bridge port's link state and counters.
type PortState struct {
	Bridge    string `json:"bridge"`
	Name      string `json:"name"`
	OFPort    uint32 `json:"ofport"`
	LinkUp    bool   `json:"link_up"`
	AdminUp   bool   `json:"admin_up"`
	RxPackets uint64 `json:"rx_packets"`
	TxPackets uint64 `json:"tx_packets"`
	RxDropped uint64 `json:"rx_dropped"`
	TxDropped uint64 `json:"tx_dropped"`
	RxErrors  uint64 `json:"rx_errors"`
	TxErrors  uint64 `json:"tx_errors"`
}

// Diagnosis is a stored `keyroutectl diagnose` result.
type Diagnosis struct {
	ID    string    `json:"id,omitempty"`
	Time  time.Time `json:"time"`
	Src   string    `json:"src"`
	Dst   string    `json:"dst"`
	Proto string    `json:"proto"`
	SPort uint16    `json:"sport,omitempty"`
	DPort uint16    `json:"dport,omitempty"`
	// Verdict is one line for people; Suspect names the hop at fault
	// (nil when every check passed).
	Verdict string      `json:"verdict"`
	Suspect *Suspect    `json:"suspect,omitempty"`
	Checks  []NodeCheck `json:"checks"`
	Probes  int         `json:"probes"`
	// Capture is a short capture at the destination host's uplink
	// during the probes (diagnose --capture).
	Capture []string `json:"capture,omitempty"`
}

// Suspect kinds.
const (
	SuspectHostTable = "host-table"
	SuspectHostPort  = "host-port"
	SuspectAgent     = "agent"
	SuspectDevice    = "fabric-device"
	SuspectLink      = "link"
)

// Suspect is the hop a diagnosis blames.
type Suspect struct {
	Kind string `json:"kind"`
	Node string `json:"node"`
	// Where narrows it: a table and flow, a port, a link's two ends.
	Where string `json:"where,omitempty"`
	Why   string `json:"why"`
}

// NodeCheck is what diagnose found at one node of the path, in path
// order.
type NodeCheck struct {
	Node string `json:"node"`
	Kind string `json:"kind"` // "host" or "fabric"
	// Point is the counted flow or port; Delta its packet count change
	// under the probes; Passed whether Delta reached the probe count.
	Point  string   `json:"point"`
	Delta  int64    `json:"delta"`
	Passed bool     `json:"passed"`
	Health []string `json:"health,omitempty"` // problems found; empty = healthy
	Note   string   `json:"note,omitempty"`
}

// OFTrace runs ofproto/trace on one of the agent's bridges.
func (c *Client) OFTrace(ctx context.Context, r OFTraceRequest) (OFTrace, error) {
	var t OFTrace
	return t, c.do(ctx, http.MethodPost, PathTrace, nil, r, &t)
}

// Probe sends test packets into a bridge's pipeline.
func (c *Client) Probe(ctx context.Context, r ProbeRequest) (ProbeResult, error) {
	var p ProbeResult
	return p, c.do(ctx, http.MethodPost, PathProbe, nil, r, &p)
}

// Ports lists both bridges' ports with link state and counters.
func (c *Client) Ports(ctx context.Context) ([]PortState, error) {
	var p []PortState
	return p, c.do(ctx, http.MethodGet, PathPorts, nil, nil, &p)
}

// SaveDiagnosis stores d in etcd under <prefix>diagnoses/ and returns its
// ID.
func (c *Client) SaveDiagnosis(ctx context.Context, d Diagnosis) (Diagnosis, error) {
	var out Diagnosis
	return out, c.do(ctx, http.MethodPost, PathDiagnoses, nil, d, &out)
}

// Diagnoses lists stored diagnoses, oldest first.
func (c *Client) Diagnoses(ctx context.Context) ([]Diagnosis, error) {
	var out []Diagnosis
	return out, c.do(ctx, http.MethodGet, PathDiagnoses, nil, nil, &out)
}

// StartCapture starts a capture on the agent's uplink; it returns once
// tcpdump listens.
func (c *Client) StartCapture(ctx context.Context, r CaptureRequest) (CaptureResult, error) {
	var out CaptureResult
	return out, c.do(ctx, http.MethodPost, PathCapture, nil, r, &out)
}

// CaptureResult waits for a started capture to finish and returns its
// packets.
func (c *Client) CaptureResult(ctx context.Context, id string) (CaptureResult, error) {
	var out CaptureResult
	return out, c.do(ctx, http.MethodGet, PathCapture, url.Values{"id": {id}}, nil, &out)
}
