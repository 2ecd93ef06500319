// Package trace follows one flow's whole path: it parses OVS's
// ofproto/trace output into steps (table, flow, cookie category, actions),
// assembles the end-to-end trace of a container pair — the source host's
// pipeline, the header the fabric sees, the fabric's hops from the fabric
// model, the destination host's pipeline — and diagnoses which hop is at
// fault from counters under bounded probe traffic.
package trace

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"

	"github.com/keyroute/keyroute/api"
	"github.com/keyroute/keyroute/flows"
	"github.com/keyroute/keyroute/hostlayout"
	"github.com/keyroute/keyroute/internal/ovstext"
)

var (
	bridgeRE = regexp.MustCompile(`^bridge\("([^"]+)"\)$`)
	// " 4. ip,nw_src=..., priority 100, cookie 0x7c612000205"
	stepRE = regexp.MustCompile(`^(\d+)\. (?:(.*?), )?priority (\d+)(?:, cookie (0x[0-9a-fA-F]+))?$`)
	// " 5. No match." and its variants.
	noMatchRE = regexp.MustCompile(`^(\d+)\. No match`)
)

// tableName names table t of bridge, one of the host's bridges hb (or
// another bridge, whose tables have no names).
func tableName(hb hostlayout.Bridges, bridge string, t uint8) string {
	var names map[uint8]string
	switch bridge {
	case hb.Integration:
		names = flows.IntTableNames()
	case hb.Physical:
		names = flows.PhyTableNames()
	}
	if n, ok := names[t]; ok {
		return n
	}
	return fmt.Sprintf("table%d", t)
}

// CookieCategory names a cookie's category in words; flows keyroute did
// not add are "foreign".
func CookieCategory(cookie uint64) string {
	if !flows.Owned(cookie) {
		return "foreign (not keyroute's)"
	}
	return flows.CookieCategory(cookie).String()
}

// ParseOFProto parses `ovs-appctl ofproto/trace` output for a trace that
// started on bridge, on a host whose keyroute bridges are hb (zero: not a
// keyroute host, e.g. a fabric device).
func ParseOFProto(hb hostlayout.Bridges, bridge, raw string) (api.OFTrace, error) {
	t := api.OFTrace{Bridge: bridge, DropStep: -1, Raw: raw}
	cur := bridge
	var step *api.TraceStep
	flush := func() {
		if step != nil {
			t.Steps = append(t.Steps, *step)
			step = nil
		}
	}
	for _, line := range strings.Split(raw, "\n") {
		s := strings.TrimSpace(line)
		switch {
		case s == "" || strings.HasPrefix(s, "----"):
		case strings.HasPrefix(s, "Flow: "):
			t.Flow = strings.TrimPrefix(s, "Flow: ")
		case strings.HasPrefix(s, "Final flow: "):
			flush()
			t.FinalFlow = strings.TrimPrefix(s, "Final flow: ")
		case strings.HasPrefix(s, "Megaflow: "):
			t.Megaflow = strings.TrimPrefix(s, "Megaflow: ")
		case strings.HasPrefix(s, "Datapath actions: "):
			t.DatapathActions = strings.TrimPrefix(s, "Datapath actions: ")
		case bridgeRE.MatchString(s):
			flush()
			cur = bridgeRE.FindStringSubmatch(s)[1]
		case stepRE.MatchString(s):
			flush()
			m := stepRE.FindStringSubmatch(s)
			tbl, _ := strconv.Atoi(m[1])
			prio, _ := strconv.Atoi(m[3])
			step = &api.TraceStep{Bridge: cur, Table: uint8(tbl), TableName: tableName(hb, cur, uint8(tbl)), Priority: prio, Match: m[2]}
			if step.Match == "" {
				step.Match = "(any)"
			}
			if m[4] != "" {
				c, err := strconv.ParseUint(m[4][2:], 16, 64)
				if err != nil {
					return t, fmt.Errorf("parse ofproto/trace: cookie %q: %w", m[4], err)
				}
				step.Cookie, step.Category = m[4], CookieCategory(c)
			} else {
				step.Cookie, step.Category = "0x0", CookieCategory(0)
			}
		case noMatchRE.MatchString(s):
			flush()
			tbl, _ := strconv.Atoi(noMatchRE.FindStringSubmatch(s)[1])
			step = &api.TraceStep{Bridge: cur, Table: uint8(tbl), TableName: tableName(hb, cur, uint8(tbl)), Match: "(no match: table miss)", Actions: []string{"drop"}}
		case step != nil && (strings.HasPrefix(s, "->") || strings.HasPrefix(s, ">>")):
			step.Notes = append(step.Notes, s)
		case step != nil:
			step.Actions = append(step.Actions, s)
		}
	}
	flush()
	if t.Flow == "" || t.DatapathActions == "" {
		return t, fmt.Errorf("parse ofproto/trace: no Flow or Datapath actions line in %q", firstLines(raw, 5))
	}
	classify(&t)
	return t, nil
}

func firstLines(s string, n int) string {
	ls := strings.SplitN(s, "\n", n+1)
	if len(ls) > n {
		ls = ls[:n]
	}
	return strings.Join(ls, "\n")
}

var (
	vniRE    = regexp.MustCompile(`vxlan\(flags=0x[0-9a-f]+,vni=(0x[0-9a-f]+|\d+)\)`)
	outerIP  = regexp.MustCompile(`ipv4\(src=([0-9.]+),dst=([0-9.]+),proto=\d+,tos=(0x[0-9a-f]+|\d+)`)
	outerEth = regexp.MustCompile(`eth\(dst=([0-9a-f:]+),src=([0-9a-f:]+)`)
	outerUDP = regexp.MustCompile(`udp\(src=\d+,dst=(\d+)`)
	outPort  = regexp.MustCompile(`out_port\((\d+)\)`)
)

// classify sets the verdict from the datapath actions and the steps.
func classify(t *api.OFTrace) {
	for _, st := range t.Steps {
		for _, a := range st.Actions {
			if p, ok := strings.CutPrefix(a, "output:"); ok {
				t.Outputs = append(t.Outputs, st.Bridge+":"+p)
			}
		}
	}
	dp := t.DatapathActions
	switch {
	case strings.Contains(dp, "tnl_push("):
		t.Verdict = api.VerdictTunnel
		tun := &api.TunnelOuter{SportTBD: true}
		if m := vniRE.FindStringSubmatch(dp); m != nil {
			v, _ := strconv.ParseUint(m[1], 0, 32)
			tun.VNI = uint32(v)
		}
		if m := outerIP.FindStringSubmatch(dp); m != nil {
			tos, _ := strconv.ParseUint(m[3], 0, 8)
			tun.Src, tun.Dst, tun.DSCP = m[1], m[2], uint8(tos>>2)
		}
		if m := outerEth.FindStringSubmatch(dp); m != nil {
			tun.DstMAC, tun.SrcMAC = m[1], m[2]
		}
		if m := outerUDP.FindStringSubmatch(dp); m != nil {
			p, _ := strconv.ParseUint(m[1], 10, 16)
			tun.UDPDst = uint16(p)
		}
		if m := outPort.FindStringSubmatch(dp); m != nil {
			tun.OutPort = "datapath port " + m[1]
		}
		t.Tunnel = tun
	case dp == "drop" || dp == "":
		t.Verdict = api.VerdictDrop
		t.DropStep = dropStep(t.Steps)
	default:
		t.Verdict = api.VerdictOutput
		if onlyUserspace(dp) {
			// A punt copies the packet to the agent; if the pipeline
			// then drops it, the packet itself is dropped.
			t.Verdict = api.VerdictController
			if i := dropStep(t.Steps); i >= 0 && i == len(t.Steps)-1 {
				t.Verdict, t.DropStep = api.VerdictDrop, i
			}
		}
	}
}

// onlyUserspace reports whether every datapath action sends to userspace
// (the agent), i.e. nothing leaves through a port.
func onlyUserspace(dp string) bool {
	for _, a := range ovstext.SplitTop(dp) {
		if _, err := strconv.Atoi(a); err == nil || strings.HasPrefix(a, "tnl_push") {
			return false
		}
	}
	return true
}

// dropStep finds the flow that dropped the packet: the last one whose
// actions end in drop or are empty, or whose output OVS refused.
func dropStep(steps []api.TraceStep) int {
	for i := len(steps) - 1; i >= 0; i-- {
		st := steps[i]
		if len(st.Actions) == 0 || st.Actions[len(st.Actions)-1] == "drop" {
			return i
		}
		for _, n := range st.Notes {
			if strings.HasPrefix(n, ">>") {
				return i
			}
		}
	}
	return -1
}
