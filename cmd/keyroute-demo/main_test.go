package main

import (
	"net/netip"
	"testing"

	"github.com/keyroute/keyroute/simcluster"
)

func TestPairTrafficOf(t *testing.T) {
	ip := netip.MustParseAddr
	a, b, other := ip("198.19.0.2"), ip("198.19.1.2"), ip("198.19.1.3")
	h1, h2 := ip("198.18.0.1"), ip("198.18.0.2")
	hdr := func(src, dst netip.Addr, icmpType, dscp uint8) simcluster.Header {
		return simcluster.Header{Src: src, Dst: dst, Proto: 1, ICMPType: icmpType, DSCP: dscp}
	}
	vx := func(src, dst netip.Addr) simcluster.CapturedPacket {
		in := hdr(src, dst, 8, 0)
		return simcluster.CapturedPacket{Header: simcluster.Header{Src: h1, Dst: h2, Proto: 17, DstPort: 4789}, VXLAN: true, VNI: 100, Inner: &in}
	}
	pkts := []simcluster.CapturedPacket{
		vx(a, b), vx(b, a),
		vx(a, other),                               // another pair
		{Header: hdr(h1, h2, 8, 10)},               // rewritten request
		{Header: hdr(h2, h1, 0, 11)},               // rewritten reply
		{Header: hdr(h2, h1, 3, 48)},               // port unreachable from h2's kernel
		{Header: hdr(h1, ip("198.18.0.3"), 8, 10)}, // other hosts
	}
	tr := pairTrafficOf(pkts, a, b, h1, h2)
	if tr.Paths.VXLAN != 2 || tr.Paths.Rewrite != 2 || tr.Paths.Plain != 0 || tr.HostErrors != 1 {
		t.Errorf("pairTrafficOf = %+v", tr)
	}
	if got := tr.Paths.String(); got != "VXLAN 2 (VNI 100), rewritten 2 (DSCP keys 10, 11)" {
		t.Errorf("paths %q", got)
	}
}
