package fabric

import (
	"errors"
	"fmt"
	"slices"
	"strings"
)

// Hop is one device a packet crosses.
type Hop struct {
	Device string `json:"device"`
	Tier   string `json:"tier"`
	// InPort is where the packet enters, OutPort where it leaves; Next is
	// the next device, or the destination host's name, or "outside".
	InPort  string `json:"in_port"`
	OutPort string `json:"out_port"`
	Next    string `json:"next"`
	// ECMP, when the device had several next hops, says how it chose.
	ECMP *Choice `json:"ecmp,omitempty"`
}

// Choice records an ECMP decision.
type Choice struct {
	Function string   `json:"function"`
	Fields   []string `json:"fields"`
	Members  []string `json:"members"`
	Hash     uint32   `json:"hash"`
	Index    int      `json:"index"`
	// Two-level selection: the group the first hash picked, and the
	// second hash.
	Group      *int    `json:"group,omitempty"`
	MemberHash *uint32 `json:"member_hash,omitempty"`
}

// Path is the fabric's route for one tuple.
type Path struct {
	Tuple Tuple  `json:"tuple"`
	From  string `json:"from"` // source host
	To    string `json:"to"`   // destination host, or "outside"
	Hops  []Hop  `json:"hops"`
}

// Devices lists the devices of the path in order.
func (p Path) Devices() []string {
	out := make([]string, len(p.Hops))
	for i, h := range p.Hops {
		out[i] = h.Device
	}
	return out
}

func (p Path) String() string { return strings.Join(p.Devices(), " > ") }

// Outside is the Next of a hop that leaves the fabric through a gateway.
const Outside = "outside"

// Route computes the hops of t from the host that owns t.Src to the host
// that owns t.Dst, or to a gateway whose outside prefixes hold t.Dst.
func (m *Model) Route(t Tuple) (Path, error) {
	src, ok := m.HostByIP(t.Src)
	if !ok {
		return Path{}, fmt.Errorf("route %s: source %s is not a host of the fabric model", t, t.Src)
	}
	p := Path{Tuple: t, From: src.Name}
	var targets []string
	dst, toHost := m.HostByIP(t.Dst)
	if toHost {
		p.To = dst.Name
		targets = []string{dst.Attach}
	} else {
		p.To = Outside
		for _, d := range m.Devices {
			for _, pre := range d.Outside {
				if pre.Contains(t.Dst) {
					targets = append(targets, d.Name)
					break
				}
			}
		}
		if len(targets) == 0 {
			return Path{}, fmt.Errorf("route %s: %s is neither a host of the fabric model nor in a gateway's outside prefixes", t, t.Dst)
		}
	}
	if toHost && dst.Name == src.Name {
		return p, nil // same host: the packet never reaches the fabric
	}
	dist := m.distances(targets)
	cur, in := src.Attach, src.PortName()
	for steps := 0; ; steps++ {
		if steps > len(m.Devices) {
			return Path{}, fmt.Errorf("route %s: loop at %s", t, cur)
		}
		dev, _ := m.Device(cur)
		hop := Hop{Device: cur, Tier: dev.Tier, InPort: in}
		if dist[cur] == 0 {
			if toHost {
				hop.OutPort, hop.Next = dst.PortName(), dst.Name
			} else {
				hop.Next = Outside
			}
			p.Hops = append(p.Hops, hop)
			return p, nil
		}
		d, reach := dist[cur]
		if !reach {
			return Path{}, fmt.Errorf("route %s: %s cannot reach %s (no links lead there)", t, cur, p.To)
		}
		var cands []neighbour
		for _, n := range m.neighbours(cur) {
			if nd, ok := dist[n.dev]; ok && nd == d-1 {
				cands = append(cands, n)
			}
		}
		next, choice, err := dev.choose(t, cands)
		if err != nil {
			return Path{}, fmt.Errorf("route %s at %s towards %s: %w", t, cur, p.To, err)
		}
		hop.OutPort, hop.Next, hop.ECMP = next.port, next.dev, choice
		p.Hops = append(p.Hops, hop)
		cur, in = next.dev, next.peerPort
	}
}

// choose picks one of the equal-cost next hops by the device's policy.
func (d *Device) choose(t Tuple, cands []neighbour) (neighbour, *Choice, error) {
	if len(cands) == 1 {
		return cands[0], nil, nil
	}
	names := make([]string, len(cands))
	for i, c := range cands {
		names[i] = c.dev
	}
	p := d.ECMP
	if p == nil {
		return neighbour{}, nil, fmt.Errorf("%d equal-cost next hops (%s) but no ecmp policy", len(cands), strings.Join(names, ", "))
	}
	if len(p.Groups) == 0 {
		if p.Members != 0 && p.Members != len(cands) {
			return neighbour{}, nil, fmt.Errorf("ecmp declares %d members but the topology gives %d next hops (%s)", p.Members, len(cands), strings.Join(names, ", "))
		}
		h := Hash{p.Function, p.Fields}
		i, sum, err := h.Select(t, len(cands))
		if err != nil {
			return neighbour{}, nil, err
		}
		return cands[i], &Choice{Function: p.Function, Fields: p.Fields, Members: names, Hash: sum, Index: i}, nil
	}
	// Two levels: keep each group's members that are next hops here.
	var groups [][]int
	for _, g := range p.Groups {
		var idx []int
		for _, n := range g {
			if i := slices.Index(names, n); i >= 0 {
				idx = append(idx, i)
			}
		}
		if len(idx) > 0 {
			groups = append(groups, idx)
		}
	}
	if len(groups) == 0 {
		return neighbour{}, nil, fmt.Errorf("no ecmp group holds any of the next hops %s", strings.Join(names, ", "))
	}
	if p.Members != 0 && p.Members != len(groups) {
		return neighbour{}, nil, fmt.Errorf("ecmp declares %d groups but %d hold next hops", p.Members, len(groups))
	}
	gi, gsum, err := Hash{p.Function, p.Fields}.Select(t, len(groups))
	if err != nil {
		return neighbour{}, nil, err
	}
	second := Hash{p.Function, p.Fields}
	if p.Member != nil {
		second = *p.Member
	}
	g := groups[gi]
	mi, msum, err := second.Select(t, len(g))
	if err != nil {
		return neighbour{}, nil, fmt.Errorf("member hash: %w", err)
	}
	members := make([]string, len(g))
	for i, c := range g {
		members[i] = names[c]
	}
	return cands[g[mi]], &Choice{Function: p.Function + "+" + second.Function, Fields: p.Fields, Members: members,
		Hash: gsum, Index: mi, Group: &gi, MemberHash: &msum}, nil
}

// RouteAnySport computes the paths t may take when its source port is not
// known in advance (a VXLAN outer header, whose source port OVS derives
// from the inner packet's hash): it tries every port of OVS's default
// range 32768-61000 and returns each distinct path once, with the share of
// source ports that lead to it.
func (m *Model) RouteAnySport(t Tuple) ([]SharedPath, error) {
	const lo, hi = 32768, 61000
	var out []SharedPath
	for sp := lo; sp <= hi; sp++ {
		t.SPort = uint16(sp)
		p, err := m.Route(t)
		if err != nil {
			return nil, err
		}
		key := p.String()
		i := slices.IndexFunc(out, func(s SharedPath) bool { return s.Path.String() == key })
		if i < 0 {
			out = append(out, SharedPath{Path: p, ExampleSport: uint16(sp)})
			i = len(out) - 1
		}
		out[i].Ports++
	}
	for i := range out {
		out[i].Share = float64(out[i].Ports) / float64(hi-lo+1)
		out[i].Path.Tuple.SPort = 0
	}
	return out, nil
}

// SharedPath is one of the paths of RouteAnySport.
type SharedPath struct {
	Path         Path    `json:"path"`
	Ports        int     `json:"sports"`
	Share        float64 `json:"share"`
	ExampleSport uint16  `json:"example_sport"`
}

// ErrNoModel is returned by callers that need a model and have none.
var ErrNoModel = errors.New("no fabric model (pass --fabric configs/fabric.yaml)")
