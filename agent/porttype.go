package agent

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"sort"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/keyroute/keyroute/api"
	"github.com/keyroute/keyroute/ovsdb"
	"github.com/keyroute/keyroute/preflight"
)

// This file decides how OVS reads the ports packets enter by — the uplink
// and the containers' veths — and creates them so (DESIGN.md "Port
// types"). On the netdev datapath a system port is read through a packet
// socket, one system call per batch in ovs-vswitchd's main thread; an
// AF_XDP port through a shared ring, which on this project's hosts carried
// 1.2-1.4x the throughput at 0.67-0.75x the CPU per GB and ended the
// packet socket's drop-driven TCP retransmits.

// ovsTypeAFXDP is the OVS interface type of keyroute's AF_XDP ports. The
// non-PMD variant is polled by ovs-vswitchd's main thread like every other
// netdev port: the PMD variant busy-polls a whole core per thread, which
// starved everything else on a 2-core host, and dedicating cores
// (pmd-cpu-mask) is the operator's decision, not the agent's.
const ovsTypeAFXDP = preflight.OVSTypeAFXDP

// afxdpWait bounds how long an AF_XDP port may take to come up before it
// is re-created as a system port. OVS loads its XDP program and sets up
// the socket in well under a second; a failure normally shows at once in
// Interface.error (ofport -1).
const afxdpWait = 10 * time.Second

// choosePortType decides the port type from ovs.port_type, the datapath,
// whether the kernel has AF_XDP sockets (xskErr nil) and what the
// Open_vSwitch table says about the build and its settings. It returns
// PortTypeSystem or PortTypeAFXDP and the reason a user reads, or an
// error naming the fix when port_type afxdp cannot be honoured.
func choosePortType(setting, datapath string, xskErr error, sw ovsdb.SwitchInfo, swErr error) (use, reason string, err error) {
	if setting == PortTypeSystem {
		return PortTypeSystem, "ovs.port_type: system", nil
	}
	why := ""
	if datapath != preflight.DatapathNetdev {
		why = "the " + datapath + " (kernel) datapath reads ports itself; AF_XDP ports are a userspace (netdev) datapath feature"
	} else if why, _ = preflight.AFXDP(xskErr, sw.IfaceTypes, swErr); why == "" && sw.OtherConfig["userspace-tso-enable"] == "true" {
		why = "userspace TSO is on (Open_vSwitch other_config:userspace-tso-enable), which does not combine with AF_XDP ports in OVS 3.1"
	}
	if setting == PortTypeAFXDP {
		if why != "" {
			return "", "", fmt.Errorf("ovs.port_type afxdp: %s: set ovs.port_type: auto (AF_XDP where it works, else system) or system", why)
		}
		return PortTypeAFXDP, "ovs.port_type: afxdp", nil
	}
	if why != "" {
		return PortTypeSystem, "auto: " + why, nil
	}
	return PortTypeAFXDP, "auto: netdev datapath", nil
}

// portTypes is this host's port type and the ports that fell back from
// AF_XDP to system.
type portTypes struct {
	setting, use, reason, xdpMode string

	mu        sync.Mutex
	fallbacks map[string]string // port → why its AF_XDP port did not come up
}

// spec returns base as a port of type use: AF_XDP ports get their
// xdp-mode here and only here, at creation.
func (p *portTypes) spec(base ovsdb.PortSpec, use string) ovsdb.PortSpec {
	base.Type, base.Options = "", nil
	if use == PortTypeAFXDP {
		base.Type, base.Options = ovsTypeAFXDP, map[string]string{"xdp-mode": p.xdpMode}
	}
	return base
}

func (p *portTypes) setFallback(port, why string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if why == "" {
		delete(p.fallbacks, port)
		return
	}
	p.fallbacks[port] = why
}

// status is the API's view: the type in use, why, and every fallback.
func (p *portTypes) status() api.PortTypeStatus {
	p.mu.Lock()
	defer p.mu.Unlock()
	s := api.PortTypeStatus{Setting: p.setting, Type: p.use, Reason: p.reason}
	for port, why := range p.fallbacks {
		s.Fallbacks = append(s.Fallbacks, api.PortFallback{Port: port, Type: PortTypeSystem, Error: why})
	}
	sort.Slice(s.Fallbacks, func(i, j int) bool { return s.Fallbacks[i].Port < s.Fallbacks[j].Port })
	return s
}

// choosePorts decides this host's port type once, after the datapath.
func (a *Agent) choosePorts(ctx context.Context) error {
	var sw ovsdb.SwitchInfo
	var swErr, xskErr error
	if a.cfg.OVS.PortType != PortTypeSystem && a.dp.Datapath == preflight.DatapathNetdev {
		sw, swErr = a.db.Switch(ctx)
		xskErr = preflight.XDPSocket()
	}
	use, reason, err := choosePortType(a.cfg.OVS.PortType, a.dp.Datapath, xskErr, sw, swErr)
	if err != nil {
		return err
	}
	a.ports = &portTypes{setting: a.cfg.OVS.PortType, use: use, reason: reason, xdpMode: a.cfg.OVS.XDPMode, fallbacks: map[string]string{}}
	a.log.Info("port type", "type", use, "reason", reason)
	return nil
}

// dataPort is a port OVS reads packets from, as ensureDataPort takes it.
type dataPort struct {
	Bridge string
	Spec   ovsdb.PortSpec // Type and Options are decided here
	// System keeps the port a system port whatever the host's type: a
	// pre-made port belongs to a VM or another runtime, and an XDP
	// program on it would outlive an ovs-vswitchd crash there.
	System bool
	// Kind labels the fallback metric: uplink or container.
	Kind string
	// Neigh is the device and address whose neighbour entries point
	// through this port (the uplink: br-phy's, every address; a container:
	// the gateway port's entry for its IP); flushed when the port is
	// created again with another type.
	NeighDev  string
	NeighAddr netip.Addr
	// Wait bounds the wait for the port's ofport (0: portWait, as for the
	// patch ports; an AF_XDP port at most afxdpWait).
	Wait time.Duration
}

// ensureDataPort creates or updates a data port with the host's port type
// and returns its ofport. A port of another type (or xdp-mode) is deleted
// and created again, never changed in place: ovs-vswitchd 3.1 asserted
// (poll-loop.c:111) when a live AF_XDP port's xdp-mode changed. An AF_XDP
// port that does not come up within afxdpWait is created again as a
// system port, and the reason is kept for keyroutectl status.
func (a *Agent) ensureDataPort(ctx context.Context, d dataPort) (uint32, error) {
	use := a.ports.use
	if d.System {
		use = PortTypeSystem
	}
	name := d.Spec.Name
	spec := a.ports.spec(d.Spec, use)
	recreated := false
	cur, err := a.db.Interface(ctx, name)
	switch {
	case errors.Is(err, ovsdb.ErrNotFound):
	case err != nil:
		return 0, fmt.Errorf("read port %s: %w", name, err)
	case cur.Type != spec.Type || !maps.Equal(cur.Options, nonNil(spec.Options)):
		a.log.Info("port type changed: creating the port again", "port", name, "was", portTypeName(cur.Type, cur.Options), "now", portTypeName(spec.Type, spec.Options))
		spec.ExternalIDs = mergeIDs(cur.ExternalIDs, spec.ExternalIDs)
		if err := a.db.DeletePort(ctx, d.Bridge, name); err != nil && !errors.Is(err, ovsdb.ErrNotFound) {
			return 0, fmt.Errorf("remove port %s to change its type: %w", name, err)
		}
		recreated = true
	}
	ofport, err := a.addPort(ctx, d.Bridge, spec, d.Wait)
	var pe *ovsdb.PortError
	// Only OVS's refusal or its silence is the port's fault; an OVSDB
	// error is returned as it is.
	if err != nil && spec.Type == ovsTypeAFXDP && ctx.Err() == nil && (errors.As(err, &pe) || errors.Is(err, context.DeadlineExceeded)) {
		why := err.Error()
		if pe != nil {
			why = pe.Reason
		}
		a.log.Warn("AF_XDP port did not come up; using a system port", "port", name, "kind", d.Kind, "err", why)
		a.metrics.portFallbacks.WithLabelValues(d.Kind).Inc()
		a.ports.setFallback(name, why)
		if derr := a.db.DeletePort(ctx, d.Bridge, name); derr != nil && !errors.Is(derr, ovsdb.ErrNotFound) {
			return 0, fmt.Errorf("remove AF_XDP port %s after %v: %w", name, err, derr)
		}
		spec = a.ports.spec(spec, PortTypeSystem)
		ofport, err = a.addPort(ctx, d.Bridge, spec, d.Wait)
		recreated = true
	} else if err == nil && spec.Type == ovsTypeAFXDP {
		a.ports.setFallback(name, "")
	}
	if err != nil {
		return 0, err
	}
	if recreated && d.NeighDev != "" {
		if err := flushNeighbours(d.NeighDev, d.NeighAddr); err != nil {
			a.log.Warn("flush neighbour entries after a port type change", "port", name, "dev", d.NeighDev, "err", err)
		}
	}
	return ofport, nil
}

// addPort writes spec and waits for its ofport, within wait.
func (a *Agent) addPort(ctx context.Context, bridge string, spec ovsdb.PortSpec, wait time.Duration) (uint32, error) {
	if wait == 0 {
		wait = portWait
	}
	if spec.Type == ovsTypeAFXDP {
		wait = min(wait, afxdpWait)
	}
	if err := a.db.EnsurePort(ctx, bridge, spec); err != nil {
		return 0, fmt.Errorf("add %s to %s: %w", spec.Name, bridge, err)
	}
	wctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	ofport, err := a.db.WaitOFPort(wctx, spec.Name)
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil {
			err = fmt.Errorf("no OpenFlow port number within %s: %w", wait, err)
		}
		return 0, fmt.Errorf("add %s to %s: %w", spec.Name, bridge, err)
	}
	return ofport, nil
}

// portTypeName names an interface's type as status and logs do.
func portTypeName(typ string, opts map[string]string) string {
	switch typ {
	case "":
		return PortTypeSystem
	case ovsTypeAFXDP:
		return PortTypeAFXDP + " (xdp-mode " + opts["xdp-mode"] + ")"
	}
	return typ
}

func nonNil(m map[string]string) map[string]string {
	if m == nil {
		return map[string]string{}
	}
	return m
}

// mergeIDs returns cur with want's keys over it (external_ids kept across
// a port's re-creation).
func mergeIDs(cur, want map[string]string) map[string]string {
	out := maps.Clone(cur)
	if out == nil {
		out = map[string]string{}
	}
	maps.Copy(out, want)
	return out
}

// flushNeighbours deletes dev's dynamic neighbour entries (all of them, or
// only addr's if valid): after a port type change they may name a MAC the
// host learnt through the old port that no longer answers.
func flushNeighbours(dev string, addr netip.Addr) error {
	link, err := linkIfExists(dev)
	if link == nil || err != nil {
		return err
	}
	neighs, err := netlink.NeighList(link.Attrs().Index, unix.AF_INET)
	if err != nil {
		return fmt.Errorf("list neighbours of %s: %w", dev, err)
	}
	var errs []error
	for _, n := range neighs {
		if n.State&(netlink.NUD_PERMANENT|netlink.NUD_NOARP) != 0 {
			continue
		}
		if ip, ok := netip.AddrFromSlice(n.IP.To4()); addr.IsValid() && (!ok || ip != addr) {
			continue
		}
		if err := netlink.NeighDel(&n); err != nil && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("delete neighbour %s on %s: %w", n.IP, dev, err))
		}
	}
	return errors.Join(errs...)
}
