package flows

import (
	"math/bits"
	"net/netip"
	"testing"
	"time"

	"github.com/keyroute/keyroute/openflow"
)

// Two fields that share bits would clobber each other's values.
func TestRegFieldsDisjoint(t *testing.T) {
	names := map[string]bool{}
	for i, f := range Layout {
		if names[f.Name] {
			t.Errorf("field name %s declared twice", f.Name)
		}
		names[f.Name] = true
		if !isRegister(f.Field) {
			t.Errorf("%s: not in a register or the metadata", f)
		}
		if f.Bits <= 0 || f.Ofs < 0 || f.Ofs+f.Bits > f.Field.Len*8 {
			t.Errorf("%s: outside its %d-bit field", f, f.Field.Len*8)
		}
		for _, g := range Layout[i+1:] {
			if f.Field == g.Field && f.Ofs < g.Ofs+g.Bits && g.Ofs < f.Ofs+f.Bits {
				t.Errorf("%s overlaps %s", f, g)
			}
		}
	}
	if _, err := openflow.Marshal(&openflow.FlowMod{Command: openflow.FlowAdd, Instructions: []openflow.Instruction{
		openflow.ApplyActions(move(ARPSwap.Subfield(), openflow.Whole(openflow.FieldARPSPA)))}}, 1); err != nil {
		t.Errorf("a move from %s does not encode: %v", ARPSwap, err)
	}
}

// Every register or metadata bit a builder reads or writes lies in a
// declared field: no builder uses bare register bits.
func TestBuildersUseDeclaredFields(t *testing.T) {
	h := testHost()
	peer := Peer{Name: "h2", IP: netip.MustParseAddr("198.18.0.2"), Subnet: netip.MustParsePrefix("198.19.2.0/24")}
	r := Rewrite{SendIdle: 10 * time.Second, FallbackRetry: 30 * time.Second, Keys: []uint8{1, 2}, ProbePort: 9473}
	p := Pair{Src: netip.MustParseAddr("198.19.1.2"), Dst: netip.MustParseAddr("198.19.2.2"), Peer: peer, Key: Key{Src: h.IP, Dst: peer.IP, DSCP: 2}, NextHop: mac("02:00:00:00:00:02")}
	eps := []Endpoint{{Name: "a1", IP: netip.MustParseAddr("198.19.1.2"), MAC: mac("0a:58:c6:13:01:02"), Port: 4}}
	fs := IntFlows(h, eps, []Peer{peer}, []Roaming{{IP: netip.MustParseAddr("198.19.2.9")}})
	fs = append(fs, PhyPipeline(h)...)
	fs = append(fs, RewritePipeline(h)...)
	fs = append(fs, RewritePeerFlows(h, peer)...)
	fs = append(fs, PhyRewriteFlows(h, r, []Peer{peer})...)
	fs = append(fs, RestoreFlow(h, Key{Src: peer.IP, Dst: h.IP, DSCP: 2}, p.Dst, p.Src))
	for _, st := range []CacheState{CachePending, CacheReady, CacheFallback} {
		fs = append(fs, CacheFlow(h, r, p, st))
	}
	for _, rule := range testRules() {
		fs = append(fs, RuleFlows(rule)...)
	}
	uses := 0
	check := func(f *openflow.FlowMod, fld *openflow.Field, ofs, n int) {
		uses++
		for _, d := range Layout {
			if d.Field == fld && d.Ofs <= ofs && ofs+n <= d.Ofs+d.Bits {
				return
			}
		}
		t.Errorf("%s[%d..%d] is not a declared field (fields.go): %s", fld.Name, ofs, ofs+n-1, f)
	}
	oxm := func(f *openflow.FlowMod, o openflow.OXM) {
		if !isRegister(o.Field) {
			return
		}
		ofs, n := 0, o.Field.Len*8
		if len(o.Mask) > 0 {
			var m uint64
			for _, b := range o.Mask {
				m = m<<8 | uint64(b)
			}
			ofs, n = bits.TrailingZeros64(m), bits.Len64(m)-bits.TrailingZeros64(m)
		}
		check(f, o.Field, ofs, n)
	}
	sub := func(f *openflow.FlowMod, s openflow.Subfield) {
		if !isRegister(s.Field) {
			return
		}
		n := s.NBits
		if n == 0 {
			n = s.Field.Len * 8
		}
		check(f, s.Field, s.Ofs, n)
	}
	for _, f := range fs {
		for _, o := range f.Match.Fields {
			oxm(f, o)
		}
		for _, in := range f.Instructions {
			var acts []openflow.Action
			switch in := in.(type) {
			case *openflow.ApplyActionsInst:
				acts = in.Actions
			case *openflow.WriteActionsInst:
				acts = in.Actions
			case *openflow.WriteMetadata:
				oxm(f, openflow.MatchMetadataMasked(in.Metadata, in.Mask))
			}
			for _, a := range acts {
				switch a := a.(type) {
				case *openflow.Move:
					sub(f, a.Src)
					sub(f, a.Dst)
				case *openflow.Load:
					sub(f, a.Dst)
				case *openflow.CheckPktLarger:
					sub(f, a.Dst)
				case *openflow.SetField:
					oxm(f, a.OXM)
				}
			}
		}
	}
	if uses == 0 {
		t.Error("no register use found: the walk over the flows misses them")
	}
}

func isRegister(f *openflow.Field) bool {
	if f == openflow.FieldMetadata {
		return true
	}
	for _, r := range openflow.FieldReg {
		if r == f {
			return true
		}
	}
	return false
}
