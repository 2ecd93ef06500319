package fabric

import (
	"net/netip"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

func addr(s string) netip.Addr { return netip.MustParseAddr(s) }

func repoConfig(t *testing.T) string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "configs", "fabric.yaml")
}

// Known vectors, computed independently (Python zlib.crc32 and by hand).
func TestHashVectors(t *testing.T) {
	tup := Tuple{Src: addr("198.18.0.1"), Dst: addr("198.18.0.2"), Proto: ProtoUDP, SPort: 1000, DPort: 2000}
	for _, c := range []struct {
		h    Hash
		t    Tuple
		sum  uint32
		n    int
		want int
	}{
		{Hash{FuncCRC32, []string{"sip", "dip", "proto", "sport", "dport"}}, tup, 0x244a0cf6, 3, 2},
		{Hash{FuncCRC32, []string{"sip", "dip", "proto", "sport", "dport"}}, tup, 0x244a0cf6, 2, 0},
		{Hash{FuncCRC32, []string{"sip", "dip", "sport", "dport"}}, Tuple{Src: tup.Src, Dst: tup.Dst, Proto: ProtoUDP, SPort: 40000, DPort: 4789}, 0x5716a6ed, 4, 1},
		// 0xc6120001 ^ 0xc6120002 ^ (1000<<16 | 2000) = 0x03e807d3
		{Hash{FuncXOR, []string{"sip", "dip", "sport", "dport"}}, tup, 0x03e807d3, 2, 1},
		{Hash{FuncXOR, []string{"sip", "dip", "sport", "dport"}}, tup, 0x03e807d3, 3, 0},
		{Hash{FuncXOR, []string{"dport"}}, tup, 2000, 7, 2000 % 7},
	} {
		i, sum, err := c.h.Select(c.t, c.n)
		if err != nil || sum != c.sum || i != c.want {
			t.Errorf("%v over %v mod %d = %d (hash 0x%08x, err %v), want %d (hash 0x%08x)", c.h, c.t, c.n, i, sum, err, c.want, c.sum)
		}
	}
	// The CRC is the standard one: CRC-32("123456789") = 0xcbf43926 is the
	// check value; sip/dip bytes "1234"+"5678" and proto '9' give it.
	h := Hash{FuncCRC32, []string{"sip", "dip", "proto"}}
	sum, err := h.Sum(Tuple{Src: netip.AddrFrom4([4]byte{'1', '2', '3', '4'}), Dst: netip.AddrFrom4([4]byte{'5', '6', '7', '8'}), Proto: '9'})
	if err != nil || sum != 0xcbf43926 {
		t.Errorf("crc32 check value: 0x%08x, %v", sum, err)
	}
}

func TestHashErrors(t *testing.T) {
	tup := Tuple{Src: addr("198.18.0.1"), Dst: addr("198.18.0.2")}
	for _, c := range []struct {
		h    Hash
		want string
	}{
		{Hash{"md5", []string{"sip"}}, `unknown hash function "md5"`},
		{Hash{FuncXOR, []string{"sip", "vlan"}}, `unknown hash field "vlan"`},
		{Hash{FuncXOR, nil}, "no fields"},
		{Hash{FuncXOR, []string{"sip", "sip"}}, "listed twice"},
	} {
		if _, err := c.h.Sum(tup); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v: error %v, want %q", c.h, err, c.want)
		}
	}
	if _, err := (Hash{FuncXOR, []string{"sip"}}).Sum(Tuple{}); err == nil {
		t.Error("hash of a tuple without addresses: no error")
	}
	if _, _, err := (Hash{FuncXOR, []string{"sip"}}).Select(tup, 0); err == nil {
		t.Error("select among 0 members: no error")
	}
}

func TestRepoModelRoutes(t *testing.T) {
	m, err := Load(repoConfig(t))
	if err != nil {
		t.Fatal(err)
	}
	h1, h2 := addr("198.18.0.1"), addr("198.18.0.2")
	// tor1 hashes (sip^dip^(sport<<16|dport)) mod 2: sip^dip = 3, so the
	// member is 1 ^ (dport & 1): odd dport → member 0 (spine1).
	for _, c := range []struct {
		t    Tuple
		want string
	}{
		{Tuple{Src: h1, Dst: h2, Proto: ProtoUDP, SPort: 1000, DPort: 2001}, "tor1 > spine1 > tor2"},
		{Tuple{Src: h1, Dst: h2, Proto: ProtoUDP, SPort: 1000, DPort: 2000}, "tor1 > spine2 > tor2"},
		{Tuple{Src: h1, Dst: h2, Proto: ProtoICMP}, "tor1 > spine2 > tor2"},
		{Tuple{Src: h2, Dst: h1, Proto: ProtoTCP, SPort: 5, DPort: 7}, "tor2 > spine1 > tor1"},
		{Tuple{Src: h1, Dst: addr("8.8.8.8"), Proto: ProtoUDP, DPort: 53}, "tor1 > spine1 > gw1"},
	} {
		p, err := m.Route(c.t)
		if err != nil {
			t.Fatalf("%v: %v", c.t, err)
		}
		if p.String() != c.want {
			t.Errorf("%v: path %s, want %s", c.t, p, c.want)
		}
	}
	p, _ := m.Route(Tuple{Src: h1, Dst: h2, Proto: ProtoUDP, SPort: 1000, DPort: 2000})
	first := p.Hops[0]
	if first.ECMP == nil || first.ECMP.Index != 1 || first.ECMP.Hash != 0x03e807d3 || first.OutPort != "tor1-spine2" || first.InPort != "h1" {
		t.Errorf("first hop %+v, ECMP %+v", first, first.ECMP)
	}
	last := p.Hops[len(p.Hops)-1]
	if last.OutPort != "h2" || last.Next != "h2" || last.InPort != "tor2-spine2" {
		t.Errorf("last hop %+v", last)
	}
	// Same host: no fabric hops.
	if p, err := m.Route(Tuple{Src: h1, Dst: h1}); err != nil || len(p.Hops) != 0 {
		t.Errorf("same host: %v, %v", p, err)
	}
	if _, err := m.Route(Tuple{Src: addr("198.18.0.9"), Dst: h2}); err == nil || !strings.Contains(err.Error(), "not a host") {
		t.Errorf("unknown source: %v", err)
	}
}

// A VXLAN outer header's source port is unknown: under xor mod 2 it never
// reaches the low bit, so there is one path; under crc32 there are two.
func TestRouteAnySport(t *testing.T) {
	m, err := Load(repoConfig(t))
	if err != nil {
		t.Fatal(err)
	}
	tup := Tuple{Src: addr("198.18.0.1"), Dst: addr("198.18.0.2"), Proto: ProtoUDP, DPort: 4789}
	ps, err := m.RouteAnySport(tup)
	if err != nil || len(ps) != 1 || ps[0].Path.String() != "tor1 > spine1 > tor2" || ps[0].Share != 1 {
		t.Fatalf("xor: %+v, %v", ps, err)
	}
	dev, _ := m.Device("tor1")
	dev.ECMP = &Policy{Function: FuncCRC32, Fields: []string{"sip", "dip", "proto", "sport", "dport"}}
	ps, err = m.RouteAnySport(tup)
	if err != nil || len(ps) != 2 {
		t.Fatalf("crc32: %+v, %v", ps, err)
	}
	if s := ps[0].Share + ps[1].Share; s < 0.999 || s > 1.001 || ps[0].Share < 0.4 || ps[0].Share > 0.6 {
		t.Errorf("shares %v and %v", ps[0].Share, ps[1].Share)
	}
	// The example port really takes its path.
	for _, sp := range ps {
		tt := tup
		tt.SPort = sp.ExampleSport
		if p, _ := m.Route(tt); p.String() != sp.Path.String() {
			t.Errorf("sport %d: %s, listed as %s", sp.ExampleSport, p, sp.Path)
		}
	}
}

const leafSpine = `
hosts:
  - {name: a, ip: 198.18.0.1, attach: leaf1}
  - {name: b, ip: 198.18.0.2, attach: leaf2}
devices:
  - name: leaf1
    tier: leaf
    ecmp:
      function: crc32
      fields: [sip, dip, proto, sport, dport]
      groups: [[s1, s2], [s3, s4]]
      member: {function: xor, fields: [sip, dip, sport, dport]}
  - {name: leaf2, tier: leaf}
  - {name: s1, tier: spine}
  - {name: s2, tier: spine}
  - {name: s3, tier: spine}
  - {name: s4, tier: spine}
links:
  - {a: leaf1, b: s1}
  - {a: leaf1, b: s2}
  - {a: leaf1, b: s3}
  - {a: leaf1, b: s4}
  - {a: s1, b: leaf2}
  - {a: s2, b: leaf2}
  - {a: s3, b: leaf2}
  - {a: s4, b: leaf2}
`

func TestTwoLevel(t *testing.T) {
	m, err := Parse([]byte(leafSpine))
	if err != nil {
		t.Fatal(err)
	}
	tup := Tuple{Src: addr("198.18.0.1"), Dst: addr("198.18.0.2"), Proto: ProtoUDP, SPort: 1000, DPort: 2000}
	// Group: crc32 0x244a0cf6 mod 2 = 0 → [s1, s2]; member: xor
	// 0x03e807d3 mod 2 = 1 → s2.
	p, err := m.Route(tup)
	if err != nil {
		t.Fatal(err)
	}
	c := p.Hops[0].ECMP
	if p.String() != "leaf1 > s2 > leaf2" || c == nil || *c.Group != 0 || c.Index != 1 || *c.MemberHash != 0x03e807d3 {
		t.Fatalf("path %s, choice %+v", p, c)
	}
	// leaf2 has four next hops back towards a and no policy to choose.
	if _, err := m.Route(Tuple{Src: tup.Dst, Dst: tup.Src, Proto: ProtoUDP}); err == nil || !strings.Contains(err.Error(), "no ecmp policy") {
		t.Errorf("reverse through leaf2 without a policy: %v", err)
	}
}

func TestModelErrors(t *testing.T) {
	for _, c := range []struct{ yaml, want string }{
		{"devices: [{name: x, tier: core}]", `unknown tier "core"`},
		{"devices: [{name: x, tier: tor, ecmp: {function: fnv, fields: [sip]}}]", `unknown hash function "fnv"`},
		{"devices: [{name: x, tier: tor, ecmp: {function: xor, fields: [sip, ttl]}}]", `unknown hash field "ttl"`},
		{"hosts: [{name: a, ip: 198.18.0.1, attach: nowhere}]", `attach "nowhere" is not a device`},
		{"links: [{a: x, b: y}]", "both ends must be devices"},
		{"devices: [{name: x, tier: tor, colour: red}]", "field colour not found"},
		{"devices: [{name: x, tier: tor, outside: [0.0.0.0/0]}]", "only gateway"},
	} {
		if _, err := Parse([]byte(c.yaml)); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %v, want %q", c.yaml, err, c.want)
		}
	}
	// A declared member count that disagrees with the topology.
	y := strings.Replace(leafSpine, "groups: [[s1, s2], [s3, s4]]", "members: 3", 1)
	y = strings.Replace(y, "      member: {function: xor, fields: [sip, dip, sport, dport]}\n", "", 1)
	m, err := Parse([]byte(y))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.Route(Tuple{Src: addr("198.18.0.1"), Dst: addr("198.18.0.2")}); err == nil || !strings.Contains(err.Error(), "declares 3 members") {
		t.Errorf("member count mismatch: %v", err)
	}
}

// The OVS flows of a simulated device send every tuple where the model's
// route does.
func TestOVSFlowsAgreeWithRoute(t *testing.T) {
	m, err := Load(repoConfig(t))
	if err != nil {
		t.Fatal(err)
	}
	fs, err := m.OVSFlows("tor1")
	if err != nil {
		t.Fatal(err)
	}
	ips := []string{"198.18.0.1", "198.18.0.2"}
	n := 0
	for _, src := range ips {
		for _, dst := range ips {
			if src == dst {
				continue
			}
			for _, proto := range []uint8{ProtoTCP, ProtoUDP, ProtoICMP} {
				for port := uint16(0); port < 6; port++ {
					tup := Tuple{Src: addr(src), Dst: addr(dst), Proto: proto, SPort: 3000 + port*7, DPort: 80 + port}
					if proto == ProtoICMP {
						tup.SPort, tup.DPort = 0, 0
					}
					p, err := m.Route(tup)
					if err != nil {
						t.Fatal(err)
					}
					var hop *Hop
					for i := range p.Hops {
						if p.Hops[i].Device == "tor1" {
							hop = &p.Hops[i]
						}
					}
					if hop == nil {
						continue
					}
					best := -1
					var out string
					for _, f := range fs {
						if f.Matches(tup) && f.Priority > best {
							best, out = f.Priority, f.OutPort
						}
					}
					if out != hop.OutPort {
						t.Errorf("%v: flows send it to %q, the model to %q", tup, out, hop.OutPort)
					}
					n++
				}
			}
		}
	}
	if n == 0 {
		t.Fatal("no tuple crossed tor1")
	}
	if _, err := m.OVSFlows("spine1"); err != nil {
		t.Errorf("spine1: %v", err)
	}
	m.Devices[0].ECMP.Function = FuncCRC32
	if _, err := m.OVSFlows("tor1"); err == nil || !strings.Contains(err.Error(), "xor") {
		t.Errorf("crc32 in OVS flows: %v", err)
	}
	if got := fs[len(fs)-1].String(); !strings.HasPrefix(got, "priority=90,ip,nw_dst=198.18.0.2 actions=output:tor1-spine1") {
		t.Errorf("last flow %s", got)
	}
}
