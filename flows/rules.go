package flows

import (
	"net/netip"

	"github.com/keyroute/keyroute/openflow"
)

// This file builds the EgressRules and IngressRules entries of network
// rules (DESIGN.md "Pipeline"). A rule arrives resolved for this host: its
// name globs already turned into addresses. EgressRules sees a container's
// packets before EgressCache, IngressRules sees arriving packets after
// TunnelIn or Restore put the container addresses back, so a rule acts
// the same on the tunnel and the rewrite path.

// RuleAction is what a rule's flows do.
type RuleAction uint8

// Rule actions, in the order that breaks priority ties: at equal rule
// priority deny beats rate-limit beats allow.
const (
	RuleAllow RuleAction = iota
	RuleMeter
	RuleDeny
)

// RuleProtocol numbers (IP protocol); 0 matches any.
const (
	ProtoICMP = 1
	ProtoTCP  = 6
	ProtoUDP  = 17
)

// ResolvedRule is one rule as this host enforces it.
type ResolvedRule struct {
	// ID is the cookie object id (see RuleCookie).
	ID uint64
	// Priority is the rule's priority (1..20000).
	Priority uint16
	// Ingress selects IngressRules (Local = destination); else
	// EgressRules (Local = source).
	Ingress bool
	// Local and Remote are address sets; empty matches any address.
	Local, Remote []netip.Prefix
	// Proto is the IP protocol (0: any).
	Proto uint8
	// PortLo..PortHi is the destination port range (tcp, udp); 0, 0: any.
	PortLo, PortHi uint16
	// ICMPType narrows icmp when >= 0.
	ICMPType int16
	Action   RuleAction
	// Meter is the meter of a RuleMeter rule.
	Meter uint32
}

// RuleCookie is the cookie of a rule's flows.
func RuleCookie(id uint64) uint64 { return Cookie(CatRule, id) }

// RulePriority is the OpenFlow priority of a rule's flows; the miss flow
// of the rule tables sits at 0 below every rule.
func RulePriority(prio uint16, a RuleAction) uint16 { return prio*3 + uint16(a) }

// PortBlock is a value/mask pair matching an aligned block of ports.
type PortBlock struct{ Value, Mask uint16 }

// PortBlocks splits lo..hi into the fewest prefix-aligned blocks, each one
// masked match (at most 30 for any range).
func PortBlocks(lo, hi uint16) []PortBlock {
	var out []PortBlock
	for l, h := uint32(lo), uint32(hi); l <= h; {
		// The largest aligned block starting at l that stays within h.
		size := uint32(1)
		for l%(size*2) == 0 && l+size*2-1 <= h && size < 1<<16 {
			size *= 2
		}
		out = append(out, PortBlock{Value: uint16(l), Mask: uint16(^(size - 1))})
		l += size
	}
	return out
}

func addrMatch(src bool, p netip.Prefix) openflow.OXM {
	switch {
	case src && p.IsSingleIP():
		return openflow.MatchIPv4Src(p.Addr())
	case src:
		return openflow.MatchIPv4SrcMasked(p)
	case p.IsSingleIP():
		return openflow.MatchIPv4Dst(p.Addr())
	}
	return openflow.MatchIPv4DstMasked(p)
}

func portMatch(proto uint8, b PortBlock) openflow.OXM {
	full := b.Mask == 0xffff
	switch {
	case proto == ProtoTCP && full:
		return openflow.MatchTCPDst(b.Value)
	case proto == ProtoTCP:
		return openflow.MatchTCPDstMasked(b.Value, b.Mask)
	case full:
		return openflow.MatchUDPDst(b.Value)
	}
	return openflow.MatchUDPDstMasked(b.Value, b.Mask)
}

// RuleFlowCount is how many flows RuleFlows builds for r, without building
// them (to refuse rules whose cross product is too large).
func RuleFlowCount(r ResolvedRule) int {
	n := max(len(r.Local), 1) * max(len(r.Remote), 1)
	if r.PortLo != 0 && (r.Proto == ProtoTCP || r.Proto == ProtoUDP) {
		n *= len(PortBlocks(r.PortLo, r.PortHi))
	}
	return n
}

// RuleFlows builds a rule's flows: the cross product of its local
// addresses, remote addresses and port blocks. Allow continues to the next
// table, rate-limit passes the meter first, deny drops.
func RuleFlows(r ResolvedRule) []*openflow.FlowMod {
	table, next := EgressRules, EgressCache
	if r.Ingress {
		table, next = IngressRules, Deliver
	}
	var ins []openflow.Instruction
	switch r.Action {
	case RuleAllow:
		ins = []openflow.Instruction{gotoTable(next)}
	case RuleMeter:
		ins = []openflow.Instruction{openflow.Meter(r.Meter), gotoTable(next)}
	}
	locals, remotes := r.Local, r.Remote
	if len(locals) == 0 {
		locals = []netip.Prefix{{}}
	}
	if len(remotes) == 0 {
		remotes = []netip.Prefix{{}}
	}
	var blocks []PortBlock
	if r.PortLo != 0 && (r.Proto == ProtoTCP || r.Proto == ProtoUDP) {
		blocks = PortBlocks(r.PortLo, r.PortHi)
	}
	prio, cookie := RulePriority(r.Priority, r.Action), RuleCookie(r.ID)
	fs := make([]*openflow.FlowMod, 0, RuleFlowCount(r))
	for _, l := range locals {
		for _, rm := range remotes {
			base := m(openflow.MatchEthType(ethIPv4))
			src, dst := l, rm // egress: local sends
			if r.Ingress {
				src, dst = rm, l
			}
			if src.IsValid() {
				base = append(base, addrMatch(true, src))
			}
			if dst.IsValid() {
				base = append(base, addrMatch(false, dst))
			}
			if r.Proto != 0 {
				base = append(base, openflow.MatchIPProto(r.Proto))
			}
			if r.Proto == ProtoICMP && r.ICMPType >= 0 {
				base = append(base, openflow.MatchICMPv4Type(uint8(r.ICMPType)))
			}
			if blocks == nil {
				fs = append(fs, flow(table, prio, cookie, base, ins...))
				continue
			}
			for _, b := range blocks {
				match := append(append([]openflow.OXM(nil), base...), portMatch(r.Proto, b))
				fs = append(fs, flow(table, prio, cookie, match, ins...))
			}
		}
	}
	return fs
}

// RuleMeterMod builds the meter of a rate-limit rule: a drop band at rate
// (kbit/s if kbps, else packets/s) with burst in the same unit.
func RuleMeterMod(cmd uint16, id uint32, kbps bool, rate, burst uint32) *openflow.MeterMod {
	flags := openflow.MeterFlagBurst | openflow.MeterFlagStats
	if kbps {
		flags |= openflow.MeterFlagKbps
	} else {
		flags |= openflow.MeterFlagPktps
	}
	return &openflow.MeterMod{Command: cmd, Flags: flags, MeterID: id,
		Bands: []openflow.MeterBand{{Type: openflow.MeterBandDrop, Rate: rate, BurstSize: burst}}}
}
