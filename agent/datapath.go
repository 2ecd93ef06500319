package agent

import (
	"fmt"

	"github.com/keyroute/keyroute/preflight"
)

// datapathPlan is what host setup does differently on the two OVS
// datapaths, decided once from the preflight result.
type datapathPlan struct {
	// IsolatePorts puts an nftables netdev ingress chain with policy drop
	// on the uplink and on every attached port. The netdev datapath reads
	// ports through packet sockets, which see a frame before that hook,
	// while the host stack would process it too. On the system datapath
	// the hook runs before OVS's receive handler: it would starve OVS, and
	// the handler already keeps the stack off the port.
	IsolatePorts bool
	// ChecksumOff turns off TX checksum offload on container veths: the
	// netdev datapath does not complete checksums left to offload. The
	// kernel datapath keeps partial checksums right through its rewrites,
	// so offloads stay on there.
	ChecksumOff bool
	// TunnelNeighbours keeps OVS's native-tunnel neighbour table filled
	// (tnl/arp/set): only the netdev datapath encapsulates in userspace;
	// the kernel's VXLAN device resolves next hops through the host's
	// neighbour table.
	TunnelNeighbours bool
}

// planFor decides the datapath-specific setup from the preflight result.
func planFor(r preflight.Result) (datapathPlan, error) {
	switch r.Datapath {
	case preflight.DatapathNetdev:
		return datapathPlan{IsolatePorts: true, ChecksumOff: true, TunnelNeighbours: true}, nil
	case preflight.DatapathSystem:
		return datapathPlan{}, nil
	}
	return datapathPlan{}, fmt.Errorf("preflight chose datapath %q: want %s or %s", r.Datapath, preflight.DatapathSystem, preflight.DatapathNetdev)
}
