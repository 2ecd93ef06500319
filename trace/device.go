package trace

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/keyroute/keyroute/api"
	"github.com/keyroute/keyroute/fabric"
	"github.com/keyroute/keyroute/hostlayout"
)

// This file reads OVS-based fabric devices (fabric.OVSAccess): their
// ofproto/trace, flow counters and port link state, with the OVS tools.

func ovsTool(ctx context.Context, acc *fabric.OVSAccess, name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = append(os.Environ(), "OVS_RUNDIR="+acc.RunDir)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// DeviceTrace runs ofproto/trace on a fabric device.
func DeviceTrace(ctx context.Context, acc *fabric.OVSAccess, flow string) (api.OFTrace, error) {
	out, err := ovsTool(ctx, acc, "ovs-appctl", "-t", "ovs-vswitchd", "ofproto/trace", acc.Bridge, flow)
	if err != nil {
		return api.OFTrace{}, err
	}
	return ParseOFProto(hostlayout.Bridges{}, acc.Bridge, out)
}

var (
	dumpPrio = regexp.MustCompile(`priority=(\d+)`)
	dumpPkts = regexp.MustCompile(`n_packets=(\d+)`)
)

// DeviceFlowPackets returns the packet count of the device's flow with
// this priority and match (as ofproto/trace prints it).
func DeviceFlowPackets(ctx context.Context, acc *fabric.OVSAccess, prio int, match string) (uint64, error) {
	out, err := ovsTool(ctx, acc, "ovs-ofctl", "-O", "OpenFlow13", "dump-flows", acc.Bridge)
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(out, "\n") {
		m := dumpPrio.FindStringSubmatch(line)
		if m == nil || m[1] != strconv.Itoa(prio) {
			continue
		}
		// "... priority=100,udp,nw_dst=... actions=..." — the match is
		// what follows priority= up to the actions.
		i := strings.Index(line, "priority="+m[1])
		rest := strings.TrimPrefix(line[i:], "priority="+m[1])
		rest = strings.TrimPrefix(rest, ",")
		if j := strings.Index(rest, " actions="); j >= 0 {
			rest = rest[:j]
		}
		if rest != match && !(match == "(any)" && rest == "") {
			continue
		}
		p := dumpPkts.FindStringSubmatch(line)
		if p == nil {
			return 0, fmt.Errorf("%s flow %q: no n_packets", acc.Bridge, match)
		}
		return strconv.ParseUint(p[1], 10, 64)
	}
	return 0, fmt.Errorf("%s has no flow priority %d %s", acc.Bridge, prio, match)
}

var showPort = regexp.MustCompile(`^\s*(\d+|LOCAL)\(([^)]+)\):`)

// DevicePortsDown lists the device's ports whose link or admin state is
// down.
func DevicePortsDown(ctx context.Context, acc *fabric.OVSAccess) (map[string]string, error) {
	out, err := ovsTool(ctx, acc, "ovs-ofctl", "-O", "OpenFlow13", "show", acc.Bridge)
	if err != nil {
		return nil, err
	}
	down := map[string]string{}
	cur := ""
	for _, line := range strings.Split(out, "\n") {
		if m := showPort.FindStringSubmatch(line); m != nil {
			cur = m[2]
			continue
		}
		s := strings.TrimSpace(line)
		switch {
		case strings.HasPrefix(s, "state:") && strings.Contains(s, "LINK_DOWN"):
			down[cur] = "link down"
		case strings.HasPrefix(s, "config:") && strings.Contains(s, "PORT_DOWN"):
			down[cur] = "administratively down"
		}
	}
	return down, nil
}
