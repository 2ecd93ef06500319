package preflight

import (
	"errors"
	"fmt"
	"slices"

	"golang.org/x/sys/unix"
)

// OVSTypeAFXDP is the OVS interface type keyroute's AF_XDP ports use: the
// non-PMD variant, polled by ovs-vswitchd's main thread.
const OVSTypeAFXDP = "afxdp-nonpmd"

// AFXDP decides whether this host can run AF_XDP ports on the netdev
// datapath, from two probes: xskErr is the result of opening an AF_XDP
// socket (nil: the kernel has XDP sockets, CONFIG_XDP_SOCKETS), types
// (or typesErr) Open_vSwitch iface_types, which ovs-vswitchd fills at
// start with the interface types its build supports. It returns "" or why
// not, and the checks for the record.
func AFXDP(xskErr error, types []string, typesErr error) (why string, checks []Check) {
	kernel := Check{Name: "kernel AF_XDP sockets", OK: xskErr == nil, Detail: "socket(AF_XDP) opens"}
	switch {
	case errors.Is(xskErr, unix.EAFNOSUPPORT):
		kernel.Detail = "socket(AF_XDP): address family not supported: the kernel is built without CONFIG_XDP_SOCKETS"
	case xskErr != nil:
		kernel.Detail = fmt.Sprintf("socket(AF_XDP): %v", xskErr)
	}
	build := Check{Name: "OVS " + OVSTypeAFXDP + " port type", OK: typesErr == nil && slices.Contains(types, OVSTypeAFXDP)}
	switch {
	case typesErr != nil:
		build.Detail = fmt.Sprintf("could not read Open_vSwitch iface_types: %v", typesErr)
	case !build.OK:
		build.Detail = fmt.Sprintf("Open_vSwitch iface_types %v lack %s: this ovs-vswitchd is built without AF_XDP", types, OVSTypeAFXDP)
	default:
		build.Detail = "in Open_vSwitch iface_types"
	}
	checks = []Check{kernel, build}
	for _, c := range checks {
		if !c.OK {
			return c.Detail, checks
		}
	}
	return "", checks
}

// XDPSocket opens and closes an AF_XDP socket: nil when the kernel has
// them. Opening one needs CAP_NET_RAW, as the agent has.
func XDPSocket() error {
	fd, err := unix.Socket(unix.AF_XDP, unix.SOCK_RAW, 0)
	if err != nil {
		return err
	}
	return unix.Close(fd)
}
