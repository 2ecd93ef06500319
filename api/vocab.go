package api

// Words of the trace and diagnose answers, one name each.

// OFVerdict is what one bridge's ofproto/trace says happens to the packet
// (OFTrace.Verdict).
type OFVerdict string

// ofproto/trace verdicts.
const (
	// VerdictOutput: the packet leaves through ports (OFTrace.Outputs).
	VerdictOutput OFVerdict = "output"
	// VerdictTunnel: the packet leaves VXLAN-encapsulated (OFTrace.Tunnel).
	VerdictTunnel OFVerdict = "tunnel"
	// VerdictDrop: the pipeline drops the packet (OFTrace.DropStep).
	VerdictDrop OFVerdict = "drop"
	// VerdictController: only a copy to the agent leaves; nothing goes
	// out of a port.
	VerdictController OFVerdict = "controller"
)

// NodeCheck kinds: a keyroute host or a fabric device.
const (
	CheckHost   = "host"
	CheckFabric = "fabric"
)
