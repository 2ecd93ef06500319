package trace

// This file holds the trace's vocabularies, shared by the trace, the CLI
// and the tests: how a packet leaves its source host (Path), what it looks
// like on the fabric (WireKind), and what each end of a flow is
// (EndpointKind). Their strings are what `keyroutectl trace` prints and
// its JSON carries.

// Path is how a traced packet leaves its source host.
type Path string

// Paths.
const (
	// PathFast is rewrite mode's fast path: no encapsulation, the key in
	// DSCP.
	PathFast Path = "fast-path"
	// PathVXLAN is the overlay tunnel (tunnel mode, or a rewrite-mode pair
	// whose cache entry is pending or fallen back).
	PathVXLAN Path = "vxlan"
	// PathSameHost is delivered without leaving the host.
	PathSameHost Path = "same-host"
	// PathOutside leaves the cluster through the gateway port, masqueraded.
	PathOutside Path = "outside"
	// PathHostStack goes through the host's own stack: host to host, or
	// into the host through the gateway port.
	PathHostStack Path = "host-stack"
	// PathDropped is dropped on the source host.
	PathDropped Path = "dropped"
	// PathController only reaches the source host's agent.
	PathController Path = "controller"
	// PathUnknown: the source host's final header could not be read.
	PathUnknown Path = "unknown"
)

// WireKind is what a packet looks like on the fabric.
type WireKind string

// Wire kinds.
const (
	// WireRewritten carries host addresses and the key in DSCP.
	WireRewritten WireKind = "rewritten"
	// WireVXLAN is VXLAN-encapsulated.
	WireVXLAN WireKind = "vxlan"
	// WireHost is the hosts' own traffic: host addresses, no key.
	WireHost WireKind = "host"
	// WireMasqueraded is a container's packet to the outside, masqueraded
	// to its host's address.
	WireMasqueraded WireKind = "masqueraded"
)

// EndpointKind is what one end of a traced flow is.
type EndpointKind string

// Endpoint kinds.
const (
	EndpointContainer EndpointKind = "container"
	EndpointHost      EndpointKind = "host"
	// EndpointOutside is an IPv4 address outside the cluster.
	EndpointOutside EndpointKind = "outside"
)
