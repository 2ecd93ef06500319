// Command keyroute-cni is keyroute's CNI plugin (CNI spec 1.1: ADD, DEL,
// CHECK, STATUS, GC, VERSION). It relays each call to the local
// keyroute-agent's API socket; the agent creates the veth, the OVS port
// and the etcd record, and allocates the address. Install it in the CNI
// bin directory (make install-cni) next to configs/10-keyroute.conflist.
package main

import (
	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/version"
)

func main() {
	skel.PluginMainFuncs(skel.CNIFuncs{Add: cmdAdd, Del: cmdDel, Check: cmdCheck, GC: cmdGC, Status: cmdStatus},
		version.All, "keyroute-cni: keyroute's CNI plugin; relays to keyroute-agent")
}
