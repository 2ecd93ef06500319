package flows

import (
	"net/netip"
	"testing"

	"github.com/keyroute/keyroute/internal/testenv"
	"github.com/keyroute/keyroute/openflow"
)

func pfx(ss ...string) []netip.Prefix {
	var out []netip.Prefix
	for _, s := range ss {
		out = append(out, netip.MustParsePrefix(s))
	}
	return out
}

func testRules() []ResolvedRule {
	return []ResolvedRule{
		// deny ssh from two local containers to the whole cluster
		{ID: 1, Priority: 100, Local: pfx("198.19.1.2/32", "198.19.1.3/32"), Remote: pfx("198.19.0.0/16"),
			Proto: ProtoTCP, PortLo: 22, PortHi: 22, ICMPType: -1, Action: RuleDeny},
		// ingress udp 1000-1030 from anywhere: blocks 1000/3,1008/3,1016/3,1024/3 (masks)
		{ID: 2, Priority: 50, Ingress: true, Local: pfx("198.19.1.2/32"),
			Proto: ProtoUDP, PortLo: 1000, PortHi: 1030, ICMPType: -1, Action: RuleDeny},
		// ingress echo requests only
		{ID: 3, Priority: 10, Ingress: true, Proto: ProtoICMP, ICMPType: 8, Action: RuleAllow},
		// rate limit everything a container sends
		{ID: 4, Priority: 5, Local: pfx("198.19.1.3/32"), ICMPType: -1, Action: RuleMeter, Meter: 257},
	}
}

func TestRuleFlowsGolden(t *testing.T) {
	var fs []*openflow.FlowMod
	for _, r := range testRules() {
		fs = append(fs, RuleFlows(r)...)
		if n := RuleFlowCount(r); n != len(RuleFlows(r)) {
			t.Errorf("rule %d: RuleFlowCount %d, built %d", r.ID, n, len(RuleFlows(r)))
		}
	}
	golden(t, "rules.txt", intFlows(fs))
	for _, f := range fs {
		if CookieCategory(f.Cookie) != CatRule || f.Priority == 0 {
			t.Errorf("rule flow %s: want category rule and a priority above the miss flow", f)
		}
		if _, err := openflow.Marshal(f, 1); err != nil {
			t.Errorf("flow %s does not encode: %v", f, err)
		}
	}
}

// OVS itself must accept what we build (a user can paste a line into
// ovs-ofctl add-flow).
func TestRuleGoldenParsesInOVS(t *testing.T) {
	testenv.Require(t, "ovs-ofctl")
	parsesInOVS(t, "rules.txt")
}

func TestRulePriorityTieBreak(t *testing.T) {
	if !(RulePriority(100, RuleDeny) > RulePriority(100, RuleMeter) && RulePriority(100, RuleMeter) > RulePriority(100, RuleAllow)) {
		t.Error("at equal priority deny must beat rate-limit must beat allow")
	}
	if RulePriority(101, RuleAllow) <= RulePriority(100, RuleDeny) {
		t.Error("a higher rule priority must beat any action at a lower one")
	}
	if RulePriority(20000, RuleDeny) < RulePriority(20000, RuleAllow) || RulePriority(1, RuleAllow) == 0 {
		t.Error("priorities out of range")
	}
}

// Every port of the range is matched by exactly one block and no port
// outside it by any.
func TestPortBlocksCoverExactly(t *testing.T) {
	cases := [][2]uint16{{1, 1}, {22, 22}, {1000, 1030}, {1, 65535}, {1024, 65535}, {8000, 8100}, {65535, 65535}, {3, 4}, {32767, 32769}}
	for _, c := range cases {
		blocks := PortBlocks(c[0], c[1])
		if len(blocks) > 30 {
			t.Errorf("%d-%d: %d blocks", c[0], c[1], len(blocks))
		}
		for p := 0; p <= 65535; p++ {
			n := 0
			for _, b := range blocks {
				if uint16(p)&b.Mask == b.Value {
					n++
				}
			}
			in := p >= int(c[0]) && p <= int(c[1])
			if (in && n != 1) || (!in && n != 0) {
				t.Fatalf("%d-%d: port %d matched by %d blocks %v", c[0], c[1], p, n, blocks)
			}
		}
	}
	if got := PortBlocks(80, 80); len(got) != 1 || got[0] != (PortBlock{80, 0xffff}) {
		t.Errorf("single port: %v", got)
	}
}

func TestRuleMeterMod(t *testing.T) {
	mm := RuleMeterMod(openflow.MeterAdd, 257, true, 10000, 1000)
	if got, want := mm.String(), "meter=257,kbps,burst,stats,bands=type=drop,rate=10000,burst_size=1000"; got != want {
		t.Errorf("meter %q, want %q", got, want)
	}
	if got := RuleMeterMod(openflow.MeterAdd, 258, false, 100, 10).String(); got != "meter=258,pktps,burst,stats,bands=type=drop,rate=100,burst_size=10" {
		t.Errorf("pps meter %q", got)
	}
}
