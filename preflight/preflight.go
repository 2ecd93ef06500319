// Package preflight is the agent's kernel preflight: it decides which Open
// vSwitch datapath this host uses — "system" (the openvswitch kernel module)
// or "netdev" (userspace, inside ovs-vswitchd) — and records the evidence so
// a user can see why (keyroutectl status prints Result.String).
//
// All probes go through Env, so every branch of the decision is tested with a
// fake; SystemEnv is the real host.
package preflight

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
)

// Mode is the configured datapath choice.
type Mode string

// Modes a configuration may name.
const (
	ModeAuto   Mode = "auto"   // system if the kernel datapath is usable, else netdev
	ModeSystem Mode = "system" // kernel datapath or an error
	ModeNetdev Mode = "netdev" // userspace datapath; the kernel module is left alone
)

// Datapath types as OVS names them (Bridge datapath_type).
const (
	DatapathSystem = "system"
	DatapathNetdev = "netdev"
)

// ParseMode accepts auto, system or netdev (case-insensitive); empty means auto.
func ParseMode(s string) (Mode, error) {
	switch m := Mode(strings.ToLower(strings.TrimSpace(s))); m {
	case "":
		return ModeAuto, nil
	case ModeAuto, ModeSystem, ModeNetdev:
		return m, nil
	}
	return "", fmt.Errorf("invalid datapath mode %q: want one of auto, system, netdev", s)
}

// Check is one probe's outcome.
type Check struct {
	Name   string
	OK     bool
	Detail string
}

// Result is the preflight decision. On error Datapath is empty and Reason
// repeats the error; Checks are filled either way.
type Result struct {
	Datapath string // DatapathSystem or DatapathNetdev
	Forced   bool   // the configuration named the datapath (mode system or netdev)
	Reason   string // one line a user reads
	Checks   []Check
}

// Run probes the host through env and picks the datapath for mode.
//
// auto: system when the kernel datapath is usable (the openvswitch module is
// loaded, built in, or `modprobe openvswitch` succeeds; its generic netlink
// family answers; VXLAN is available to it) and ovs-vswitchd does not rule
// it out, else netdev. system: the same conditions or an error that suggests
// netdev or auto. netdev: never loads a module; needs /dev/net/tun because
// the userspace datapath's internal ports are tap devices.
//
// ovs-vswitchd being unreachable is recorded as a failed check but does not
// change the decision: the agent reports that itself when it connects.
func Run(ctx context.Context, mode Mode, env Env) (Result, error) {
	switch mode {
	case ModeAuto, ModeSystem, ModeNetdev:
	default:
		err := fmt.Errorf("invalid datapath mode %q: want one of auto, system, netdev (see ParseMode)", mode)
		return Result{Reason: err.Error()}, fmt.Errorf("preflight: %w", err)
	}
	env = env.withDefaults()
	p := &run{ctx: ctx, env: env, facts: gatherKernel(env)}
	r := Result{Forced: mode != ModeAuto}

	var systemWhy, systemHow string
	if mode != ModeNetdev {
		systemHow, systemWhy = p.kernelDatapath()
	} else {
		p.add(p.facts.module("openvswitch").check())
	}
	vxlan := p.facts.module("vxlan")
	p.add(vxlan.check())
	if systemWhy == "" && mode != ModeNetdev && !vxlan.usable() {
		systemWhy = "vxlan module not available for the kernel datapath's VXLAN port: " + vxlan.detail
	}
	p.add(p.facts.module("tun").check())
	netdevWhy := p.devTun()
	p.add(p.facts.module("veth").check())
	types := p.vswitchd()
	if why := unsupported(types, DatapathSystem); systemWhy == "" && why != "" {
		systemWhy = why
	}
	if why := unsupported(types, DatapathNetdev); netdevWhy == "" && why != "" {
		netdevWhy = why
	}
	r.Checks = p.checks

	fail := func(format string, args ...any) (Result, error) {
		err := fmt.Errorf(format, args...)
		r.Reason = err.Error()
		return r, fmt.Errorf("preflight: %w", err)
	}
	switch mode {
	case ModeSystem:
		if systemWhy != "" {
			return fail("datapath system requested but %s; set `datapath: netdev` (userspace) or `datapath: auto`", systemWhy)
		}
		r.Datapath, r.Reason = DatapathSystem, "datapath system set by configuration; "+systemHow
	case ModeNetdev:
		if netdevWhy != "" {
			return fail("datapath netdev requested but %s", netdevWhy)
		}
		r.Datapath, r.Reason = DatapathNetdev, "datapath netdev set by configuration (userspace; the openvswitch kernel module is not needed)"
	default:
		switch {
		case systemWhy == "":
			r.Datapath, r.Reason = DatapathSystem, systemHow+"; using system (kernel datapath)"
		case netdevWhy == "":
			r.Datapath, r.Reason = DatapathNetdev, systemWhy+"; using netdev (userspace)"
		default:
			return fail("no usable datapath: system: %s; netdev: %s", systemWhy, netdevWhy)
		}
	}
	return r, nil
}

// run holds one preflight's probes and the checks recorded so far.
type run struct {
	ctx    context.Context
	env    Env
	facts  *kernelFacts
	checks []Check
}

func (p *run) add(c Check) { p.checks = append(p.checks, c) }

// kernelDatapath loads the openvswitch module if needed and asks the kernel
// for its generic netlink family — the probe ovs-vswitchd itself uses. It
// returns how the datapath is available, or why it is not.
func (p *run) kernelDatapath() (how, why string) {
	ovs := p.facts.module("openvswitch")
	p.add(ovs.check())
	var probeErr error
	loadedNow := false
	if !ovs.present() {
		if probeErr = p.env.Modprobe(p.ctx, "openvswitch"); probeErr != nil {
			p.add(Check{Name: "modprobe openvswitch", Detail: probeErr.Error()})
		} else {
			p.add(Check{Name: "modprobe openvswitch", OK: true, Detail: "loaded"})
			p.facts = gatherKernel(p.env) // the module lists changed
			ovs, loadedNow = p.facts.module("openvswitch"), true
		}
	}

	registered, genlErr := p.env.GenlFamily(p.ctx, "ovs_datapath")
	c := Check{Name: "ovs_datapath genl family", OK: registered, Detail: "registered"}
	switch {
	case genlErr != nil:
		c.OK, c.Detail = false, "cannot query generic netlink: "+genlErr.Error()
		// Without the netlink answer, trust the module files and modprobe.
		registered = ovs.present() || loadedNow
	case !registered:
		c.Detail = "not registered (no openvswitch kernel datapath)"
	}
	p.add(c)

	switch {
	case registered && loadedNow:
		return "openvswitch kernel module loaded by modprobe", ""
	case registered && ovs.present():
		return "openvswitch kernel module " + ovs.short(), ""
	case registered:
		return "openvswitch kernel datapath available (generic netlink family ovs_datapath registered)", ""
	case ovs.present() || loadedNow:
		return "", "openvswitch module " + ovs.short() + " but its generic netlink family ovs_datapath is not registered"
	}
	why = "openvswitch module " + ovs.short() + ": " + ovs.detail
	if probeErr != nil {
		why += ", modprobe openvswitch failed: " + probeErr.Error()
	}
	return "", why
}

// devTun records /dev/net/tun and returns why netdev cannot work without it.
func (p *run) devTun() (why string) {
	const dev = "/dev/net/tun"
	if err := p.env.Stat(dev); err != nil {
		p.add(Check{Name: dev, Detail: err.Error()})
		return dev + " unavailable (netdev internal ports are tap devices): " + err.Error()
	}
	p.add(Check{Name: dev, OK: true, Detail: "present"})
	return ""
}

// vswitchd records whether ovs-vswitchd answers and which datapath types it
// lists; types is nil when unknown.
func (p *run) vswitchd() (types []string) {
	version, err := p.env.Vswitchd(p.ctx)
	if err != nil {
		p.add(Check{Name: "ovs-vswitchd", Detail: "not reachable: " + err.Error()})
	} else {
		p.add(Check{Name: "ovs-vswitchd", OK: true, Detail: version})
	}
	types, err = p.env.DatapathTypes(p.ctx)
	switch {
	case err != nil:
		p.add(Check{Name: "datapath_types", Detail: "unknown: " + err.Error()})
		return nil
	case len(types) == 0:
		p.add(Check{Name: "datapath_types", Detail: "empty (ovs-vswitchd has not started on this database yet)"})
		return nil
	}
	p.add(Check{Name: "datapath_types", OK: true, Detail: strings.Join(types, ", ")})
	return types
}

// unsupported says why ovs-vswitchd rules out dp, or "" when it does not
// (including when its types are unknown).
func unsupported(types []string, dp string) string {
	if types == nil || slices.Contains(types, dp) {
		return ""
	}
	return fmt.Sprintf("ovs-vswitchd does not offer datapath type %s (datapath_types: %s)", dp, strings.Join(types, ", "))
}

// String renders the result for `keyroutectl status`: the decision, the
// reason, then one line per check.
func (r Result) String() string {
	var b strings.Builder
	how := "chosen automatically"
	if r.Forced {
		how = "set by configuration"
	}
	dp := r.Datapath
	if dp == "" {
		dp = "none"
	}
	fmt.Fprintf(&b, "datapath: %s (%s)\nreason:   %s\nchecks:\n", dp, how, r.Reason)
	width := 0
	for _, c := range r.Checks {
		width = max(width, len(c.Name))
	}
	for _, c := range r.Checks {
		mark := "ok  "
		if !c.OK {
			mark = "FAIL"
		}
		fmt.Fprintf(&b, "  %s  %-*s  %s\n", mark, width, c.Name, c.Detail)
	}
	return b.String()
}

// errProbeUnset answers for an Env field left nil.
var errProbeUnset = errors.New("probe not configured")
