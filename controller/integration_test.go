package controller

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keyroute/keyroute/openflow"
	"github.com/keyroute/keyroute/simhost"
)

func ctx10s(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func match(fields ...openflow.OXM) openflow.Match { return openflow.Match{Fields: fields} }

func actions(a ...openflow.Action) []openflow.Instruction {
	return []openflow.Instruction{openflow.ApplyActions(a...)}
}

// wire returns flows that forward everything between ports 1 and 2.
func wire() []*openflow.FlowMod {
	return []*openflow.FlowMod{
		{Priority: 10, Match: match(openflow.MatchInPort(1)), Instructions: actions(openflow.OutputPort(2))},
		{Priority: 10, Match: match(openflow.MatchInPort(2)), Instructions: actions(openflow.OutputPort(1))},
	}
}

func ipOf(t testing.TB, s string) netip.Addr {
	a, err := netip.ParseAddr(s)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func macOf(t testing.TB, s string) net.HardwareAddr {
	m, err := net.ParseMAC(s)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func checksum(b []byte) uint16 {
	var sum uint32
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	if len(b)%2 == 1 {
		sum += uint32(b[len(b)-1]) << 8
	}
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	return ^uint16(sum)
}

// icmpEcho builds an Ethernet frame holding an ICMP echo request.
func icmpEcho(src, dst *host, t testing.TB, seq uint16) []byte {
	payload := make([]byte, 56)
	icmp := append([]byte{8, 0, 0, 0, 0x4b, 0x52, byte(seq >> 8), byte(seq)}, payload...)
	binary.BigEndian.PutUint16(icmp[2:], checksum(icmp))
	ip := make([]byte, 20)
	ip[0], ip[8], ip[9] = 0x45, 64, 1
	binary.BigEndian.PutUint16(ip[2:], uint16(20+len(icmp)))
	s, d := ipOf(t, src.ip).As4(), ipOf(t, dst.ip).As4()
	copy(ip[12:], s[:])
	copy(ip[16:], d[:])
	binary.BigEndian.PutUint16(ip[10:], checksum(ip))
	frame := append(append([]byte{}, macOf(t, dst.mac)...), macOf(t, src.mac)...)
	frame = append(frame, 0x08, 0x00)
	return append(append(frame, ip...), icmp...)
}

// ping runs ping in h's namespace and returns how many replies came back.
func (h *host) ping(t testing.TB, dst string, args ...string) int {
	t.Helper()
	out, _ := h.ns.Exec(append(append([]string{"ping", "-q", "-n"}, args...), dst)...)
	m := regexp.MustCompile(`(\d+) received`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("ping %s from %s: no summary in %q", dst, h.ns.Name, out)
	}
	n, _ := strconv.Atoi(m[1])
	return n
}

func TestOVSInstallMatchesDumpFlows(t *testing.T) {
	e := newOVSEnv(t, testOptions())
	ctx := ctx10s(t)
	_, pod := netip.MustParsePrefix("198.19.0.0/16"), netip.MustParsePrefix("198.19.0.0/16")
	flows := []*openflow.FlowMod{
		{Priority: 0, Instructions: nil},
		{Table: 0, Priority: 100, Cookie: 0x4b01000000000001, Match: match(openflow.MatchInPort(1), openflow.MatchEthType(0x0800), openflow.MatchIPv4DstMasked(pod)),
			Instructions: []openflow.Instruction{openflow.GotoTable(3)}},
		{Table: 3, Priority: 200, Cookie: 0x4b02000000000002, IdleTimeout: 60, Flags: openflow.SendFlowRem,
			Match: match(openflow.MatchEthType(0x0800), openflow.MatchIPProto(6), openflow.MatchIPv4Src(ipOf(t, "198.19.1.2")),
				openflow.MatchIPv4Dst(ipOf(t, "198.19.2.2")), openflow.MatchIPDSCP(0), openflow.MatchTCPDst(443)),
			Instructions: actions(openflow.NewSetField(openflow.MatchIPv4Src(ipOf(t, "198.18.0.1"))),
				openflow.NewSetField(openflow.MatchIPDSCP(10)), openflow.NewSetField(openflow.MatchEthDst(macOf(t, "02:00:00:00:00:02"))),
				openflow.OutputPort(2))},
		{Table: 0, Priority: 300, Match: match(openflow.MatchEthType(0x0806), openflow.MatchARPOp(1), openflow.MatchARPTPA(ipOf(t, "198.19.0.1"))),
			Instructions: actions(&openflow.Controller{Userdata: []byte{0xca, 0xfe}}, openflow.OutputPort(openflow.PortController))},
		{Table: 3, Priority: 50, Match: match(openflow.MatchReg(0, 7), openflow.MatchMetadataMasked(0x10, 0xf0)),
			Instructions: actions(openflow.ResubmitTable(4))},
	}
	if err := e.sw.Install(ctx, flows); err != nil {
		t.Fatal(err)
	}
	var want, got []string
	for _, f := range flows {
		want = append(want, f.FlowText())
	}
	for _, l := range e.dumpFlows() {
		got = append(got, openflow.StripDumpFlowsStats(l))
	}
	slices.Sort(want)
	slices.Sort(got)
	if !slices.Equal(want, got) {
		t.Errorf("dump-flows differs from what was installed:\n got: %q\nwant: %q", got, want)
	}
	// And through our own dump: same tables, cookies and priorities.
	fs, err := e.sw.FlowStats(ctx, &openflow.FlowStatsRequest{Table: openflow.TableAll, OutPort: openflow.PortAny, OutGroup: openflow.GroupAny})
	if err != nil {
		t.Fatal(err)
	}
	if len(fs) != len(flows) {
		t.Fatalf("FlowStats returned %d flows, want %d", len(fs), len(flows))
	}
	for _, f := range flows {
		if !slices.ContainsFunc(fs, func(s openflow.FlowStats) bool {
			return s.Table == f.Table && s.Priority == f.Priority && s.Cookie == f.Cookie && s.IdleTimeout == f.IdleTimeout
		}) {
			t.Errorf("flow %s missing from FlowStats", f)
		}
	}
}

func TestOVSInstallReportsRejectedFlow(t *testing.T) {
	e := newOVSEnv(t, testOptions())
	ctx := ctx10s(t)
	var flows []*openflow.FlowMod
	for i := range 5 {
		flows = append(flows, &openflow.FlowMod{Table: 1, Priority: uint16(100 + i),
			Match:        match(openflow.MatchEthType(0x0800), openflow.MatchIPv4Dst(ipOf(t, fmt.Sprintf("198.19.0.%d", i+1)))),
			Instructions: actions(openflow.OutputPort(1))})
	}
	// No eth_type: ip_dst's prerequisite is missing.
	flows[3].Match = match(openflow.MatchIPv4Dst(ipOf(t, "198.19.0.4")))
	err := e.sw.Install(ctx, flows)
	var fe *FlowModError
	if !errors.As(err, &fe) {
		t.Fatalf("Install = %v, want a *FlowModError", err)
	}
	if fe.Index != 3 || fe.Flow != flows[3] || fe.Err.CodeName() != "OFPBMC_BAD_PREREQ" {
		t.Errorf("FlowModError index %d code %s, want 3 OFPBMC_BAD_PREREQ", fe.Index, fe.Err.CodeName())
	}
	for _, s := range []string{"flow mod 3 (table=1,priority=103,nw_dst=198.19.0.4 actions=output:1) rejected", "OFPET_BAD_MATCH/OFPBMC_BAD_PREREQ"} {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("error %q does not contain %q", err, s)
		}
	}
	if n := len(e.dumpFlows()); n != 4 {
		t.Errorf("%d flows installed, want the 4 good ones", n)
	}
}

func TestOVSBundleIsAllOrNothing(t *testing.T) {
	e := newOVSEnv(t, testOptions())
	ctx := ctx10s(t)
	good1 := &openflow.FlowMod{Table: 5, Priority: 10, Match: match(openflow.MatchInPort(1)), Instructions: actions(openflow.OutputPort(2))}
	bad := &openflow.FlowMod{Table: 5, Priority: 20, Match: match(openflow.MatchInPort(2)), Instructions: []openflow.Instruction{openflow.GotoTable(2)}}
	good2 := &openflow.FlowMod{Table: 6, Priority: 10, Match: match(openflow.MatchInPort(1)), Instructions: actions(openflow.OutputPort(2))}
	err := e.sw.Bundle(ctx, []openflow.Message{good1, bad, good2})
	var be *BundleError
	if !errors.As(err, &be) || be.Index != 1 || be.Msg != bad {
		t.Fatalf("Bundle = %v, want a *BundleError for message 1", err)
	}
	if !strings.Contains(err.Error(), "message 1 (table=5,priority=20,in_port=2 actions=goto_table:2) rejected: OFPET_BAD_INSTRUCTION/OFPBIC_BAD_TABLE_ID") {
		t.Errorf("error does not name the flow and reason: %v", err)
	}
	if flows := e.dumpFlows(); len(flows) != 0 {
		t.Fatalf("rejected bundle changed the switch: %q", flows)
	}
	// The same bundle without the bad flow goes in whole.
	if err := e.sw.Bundle(ctx, []openflow.Message{good1, good2}); err != nil {
		t.Fatal(err)
	}
	if flows := e.dumpFlows(); len(flows) != 2 {
		t.Errorf("after a good bundle: %q", flows)
	}
	if !e.sw.Connected() || e.sw.Stats().AsyncErrors != 0 {
		t.Errorf("stats after bundles: %+v", e.sw.Stats())
	}
}

func TestOVSPacketInAndPacketOut(t *testing.T) {
	pins := make(chan *openflow.PacketIn2, 64)
	opts := testOptions()
	opts.OnPacketIn = func(p *openflow.PacketIn2) { pins <- p }
	e := newOVSEnv(t, opts)
	a, b := e.addHost("a", 1), e.addHost("b", 2)
	ctx := ctx10s(t)
	punt := &openflow.FlowMod{Priority: 100, Cookie: 0xc0ffee, Match: match(openflow.MatchInPort(1), openflow.MatchEthType(0x0800), openflow.MatchIPProto(1)),
		Instructions: actions(&openflow.Controller{Userdata: []byte("krc-userdata")}, openflow.OutputPort(2))}
	if err := e.sw.Install(ctx, append(wire(), punt)); err != nil {
		t.Fatal(err)
	}
	if n := a.ping(t, b.ip, "-c", "1", "-W", "2"); n != 1 {
		t.Fatalf("ping through the punting flow: %d replies", n)
	}
	select {
	case p := <-pins:
		if p.Cookie != 0xc0ffee || string(p.Userdata) != "krc-userdata" || p.Table != 0 {
			t.Errorf("packet-in cookie 0x%x userdata %q table %d", p.Cookie, p.Userdata, p.Table)
		}
		pkt := p.Packet
		if len(pkt) < 34 || binary.BigEndian.Uint16(pkt[12:]) != 0x0800 || pkt[23] != 1 || netip.AddrFrom4([4]byte(pkt[26:30])).String() != a.ip {
			t.Errorf("packet-in does not carry a's ICMP packet: % x", pkt[:min(len(pkt), 40)])
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no PACKET_IN2")
	}

	before := b.icmpInEchos(t)
	po := &openflow.PacketOut{BufferID: openflow.NoBuffer, InPort: openflow.PortController,
		Actions: []openflow.Action{openflow.OutputPort(2)}, Data: icmpEcho(a, b, t, 1)}
	if err := e.sw.Apply(ctx, po); err != nil {
		t.Fatal(err)
	}
	if err := simhost.WaitFor(5*time.Second, func() error {
		if n := b.icmpInEchos(t); n != before+1 {
			return fmt.Errorf("b received %d echo requests since the packet-out, want 1", n-before)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

func TestOVSFlowRemoved(t *testing.T) {
	removed := make(chan *openflow.FlowRemoved, 8)
	opts := testOptions()
	opts.OnFlowRemoved = func(m *openflow.FlowRemoved) { removed <- m }
	e := newOVSEnv(t, opts)
	a, b := e.addHost("a", 1), e.addHost("b", 2)
	ctx := ctx10s(t)
	cache := &openflow.FlowMod{Priority: 100, Cookie: 0xf10f, IdleTimeout: 1, Flags: openflow.SendFlowRem,
		Match: match(openflow.MatchInPort(1), openflow.MatchEthType(0x0800), openflow.MatchIPProto(1)), Instructions: actions(openflow.OutputPort(2))}
	if err := e.sw.Install(ctx, append(wire(), cache)); err != nil {
		t.Fatal(err)
	}
	if n := a.ping(t, b.ip, "-c", "3", "-i", "0.2", "-W", "2"); n != 3 {
		t.Fatalf("ping: %d of 3 replies", n)
	}
	select {
	case m := <-removed:
		if m.Cookie != 0xf10f || m.Reason != openflow.FlowRemovedIdleTimeout || m.PacketCount != 3 || m.ByteCount != 3*98 || m.Priority != 100 {
			t.Errorf("FLOW_REMOVED %v: want cookie 0xf10f, idle, 3 packets of 98 bytes", m)
		}
	case <-time.After(8 * time.Second):
		t.Fatal("no FLOW_REMOVED for the idle flow")
	}
}

func TestOVSMeterDropsAboveRate(t *testing.T) {
	e := newOVSEnv(t, testOptions())
	a, b := e.addHost("a", 1), e.addHost("b", 2)
	ctx := ctx10s(t)
	const rate = 5 // packets per second, and as many in a burst
	meter := &openflow.MeterMod{Command: openflow.MeterAdd, Flags: openflow.MeterFlagPktps | openflow.MeterFlagStats, MeterID: 1,
		Bands: []openflow.MeterBand{{Type: openflow.MeterBandDrop, Rate: rate, BurstSize: rate}}}
	if err := e.sw.Apply(ctx, meter); err != nil {
		t.Fatal(err)
	}
	limited := &openflow.FlowMod{Priority: 100, Match: match(openflow.MatchInPort(1), openflow.MatchEthType(0x0800), openflow.MatchIPProto(1)),
		Instructions: []openflow.Instruction{openflow.Meter(1), openflow.ApplyActions(openflow.OutputPort(2))}}
	if err := e.sw.Install(ctx, append(wire(), limited)); err != nil {
		t.Fatal(err)
	}
	before := b.icmpInEchos(t)
	const sent = 100
	start := time.Now()
	replies := a.ping(t, b.ip, "-c", strconv.Itoa(sent), "-i", "0.005", "-W", "1")
	elapsed := time.Since(start)
	delivered := b.icmpInEchos(t) - before
	ms, err := e.sw.MeterStats(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	if len(ms) != 1 || len(ms[0].Bands) != 1 {
		t.Fatalf("meter stats %+v", ms)
	}
	dropped := int(ms[0].Bands[0].PacketCount)
	t.Logf("%d pings in %s through a %d pkt/s meter: %d delivered, %d dropped by the band, %d replies, %d packets in",
		sent, elapsed.Round(time.Millisecond), rate, delivered, dropped, replies, ms[0].PacketInCount)
	// The band lets through its burst plus its rate over the run (and a
	// little slack for the clock), and drops the rest.
	allowed := rate + int(rate*elapsed.Seconds()) + 3
	if delivered > allowed || dropped < sent/4 || delivered+dropped != sent || int(ms[0].PacketInCount) != sent {
		t.Errorf("meter did not limit: %d delivered (allowed %d), %d dropped of %d", delivered, allowed, dropped, sent)
	}
}

func TestOVSLearn(t *testing.T) {
	e := newOVSEnv(t, testOptions())
	a, b := e.addHost("a", 1), e.addHost("b", 2)
	ctx := ctx10s(t)
	learn := &openflow.Learn{Table: 10, Priority: 50, IdleTimeout: 60, Specs: []openflow.LearnSpec{
		openflow.LearnMatchField(openflow.Whole(openflow.FieldEthDst), openflow.Whole(openflow.FieldEthSrc)),
		openflow.LearnOutputField(openflow.Whole(openflow.FieldNXInPort)),
	}}
	flows := wire()
	flows[0].Instructions = actions(learn, openflow.OutputPort(2))
	if err := e.sw.Install(ctx, flows); err != nil {
		t.Fatal(err)
	}
	if n := a.ping(t, b.ip, "-c", "1", "-W", "2"); n != 1 {
		t.Fatalf("ping: %d replies", n)
	}
	want := fmt.Sprintf("priority=50,dl_dst=%s actions=output:1", a.mac)
	if err := simhost.WaitFor(5*time.Second, func() error {
		lines := e.dumpFlows("table=10")
		for _, l := range lines {
			if openflow.StripDumpFlowsStats(l) == want {
				return nil
			}
		}
		return fmt.Errorf("learned flow %q not in table 10: %q", want, lines)
	}); err != nil {
		t.Fatal(err)
	}
}

func TestOVSDesiredStateSurvivesRestarts(t *testing.T) {
	const owned = 0x4b
	opts := testOptions()
	opts.OwnedCookie = func(c uint64) bool { return c>>56 == owned }
	var connects atomic.Int32
	opts.OnConnected = func(ctx context.Context, s *Switch) error { connects.Add(1); return nil }
	opts.EchoInterval, opts.EchoTimeout = 200*time.Millisecond, time.Second
	e := newOVSEnv(t, opts)
	ctx := ctx10s(t)

	cookie := func(n uint64) uint64 { return owned<<56 | n }
	base := []*openflow.FlowMod{
		{Priority: 0, Cookie: cookie(1)},
		{Priority: 100, Cookie: cookie(2), Match: match(openflow.MatchInPort(1)), Instructions: []openflow.Instruction{openflow.GotoTable(1)}},
	}
	rules := []*openflow.FlowMod{
		{Table: 1, Priority: 200, Cookie: cookie(3), IdleTimeout: 300, Flags: openflow.SendFlowRem,
			Match:        match(openflow.MatchEthType(0x0800), openflow.MatchIPv4DstMasked(netip.MustParsePrefix("198.19.2.0/24"))),
			Instructions: actions(openflow.NewSetField(openflow.MatchIPDSCP(7)), openflow.OutputPort(2))},
	}
	if err := e.sw.SetDesired(ctx, "base", base); err != nil {
		t.Fatal(err)
	}
	if err := e.sw.SetDesired(ctx, "rules", rules); err != nil {
		t.Fatal(err)
	}
	// A flow the switch already has as desired is left alone...
	res, err := e.sw.Reconcile(ctx)
	if err != nil || res != (ReconcileResult{}) {
		t.Fatalf("Reconcile right after SetDesired = %+v, %v; want nothing to do", res, err)
	}
	// ...an owned stray flow is deleted, a foreign one is kept.
	e.ofctl("add-flow", "br0", fmt.Sprintf("table=2,priority=5,cookie=0x%x,actions=drop", cookie(99)))
	e.ofctl("add-flow", "br0", "table=2,priority=6,cookie=0x1,actions=drop")
	if res, err := e.sw.Reconcile(ctx); err != nil || res != (ReconcileResult{Deleted: 1}) {
		t.Fatalf("Reconcile with a stray flow = %+v, %v", res, err)
	}
	wantFlows := func() []string {
		var w []string
		for _, f := range append(slices.Clone(base), rules...) {
			w = append(w, f.FlowText())
		}
		w = append(w, "priority=6 actions=drop")
		slices.Sort(w)
		return w
	}()
	check := func(when string) {
		t.Helper()
		if err := simhost.WaitFor(10*time.Second, func() error {
			var got []string
			out, err := e.o.Ofctl("dump-flows", "br0")
			if err != nil {
				return err
			}
			for _, l := range strings.Split(out, "\n") {
				if strings.Contains(l, "actions=") {
					got = append(got, openflow.StripDumpFlowsStats(l))
				}
			}
			slices.Sort(got)
			if !slices.Equal(got, wantFlows) {
				return fmt.Errorf("flows %q, want %q", got, wantFlows)
			}
			return nil
		}); err != nil {
			t.Fatalf("%s: %v", when, err)
		}
	}
	check("after Reconcile")

	// vswitchd restarts: every flow is lost; the replay puts ours back.
	if err := e.o.StopVswitchd(); err != nil {
		t.Fatal(err)
	}
	if err := simhost.WaitFor(10*time.Second, func() error {
		if e.sw.Connected() {
			return errors.New("still connected")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if err := e.o.StartVswitchd(); err != nil {
		t.Fatal(err)
	}
	wantFlows = slices.DeleteFunc(wantFlows, func(s string) bool { return s == "priority=6 actions=drop" })
	check("after a vswitchd restart")
	if connects.Load() != 2 || e.sw.Stats().Reconnects != 1 {
		t.Errorf("OnConnected ran %d times, %d reconnects; want 2 and 1", connects.Load(), e.sw.Stats().Reconnects)
	}
	replayed := e.sw.Stats().ReplayedFlows
	if replayed != 3 {
		t.Errorf("replay after the restart wrote %d flows, want 3", replayed)
	}

	// The controller reconnects to a vswitchd that kept its flows: the
	// replay finds nothing to change, so live traffic is untouched.
	c, err := e.sw.conn()
	if err != nil {
		t.Fatal(err)
	}
	c.close(errors.New("test: drop the connection"))
	if err := simhost.WaitFor(10*time.Second, func() error {
		if connects.Load() != 3 || !e.sw.Connected() {
			return errors.New("not reconnected")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if got := e.sw.Stats().ReplayedFlows; got != replayed {
		t.Errorf("reconnect to a running vswitchd rewrote %d flows", got-replayed)
	}
	check("after a controller reconnect")
}

func TestOVSPacketInFloodDoesNotBlock(t *testing.T) {
	opts := testOptions()
	opts.QueueLen = 4
	var handled atomic.Int64
	opts.OnPacketIn = func(*openflow.PacketIn2) {
		time.Sleep(2 * time.Millisecond) // a slow handler
		handled.Add(1)
	}
	e := newOVSEnv(t, opts)
	a, b := e.addHost("a", 1), e.addHost("b", 2)
	ctx := ctx10s(t)
	toController := &openflow.FlowMod{Priority: 100, Match: match(openflow.MatchInPort(openflow.PortController)),
		Instructions: actions(&openflow.Controller{})}
	if err := e.sw.Install(ctx, []*openflow.FlowMod{toController}); err != nil {
		t.Fatal(err)
	}
	frame := icmpEcho(a, b, t, 1)
	po := &openflow.PacketOut{BufferID: openflow.NoBuffer, InPort: openflow.PortController,
		Actions: []openflow.Action{openflow.OutputPort(openflow.PortTable)}, Data: frame}

	var ms runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&ms)
	heapBefore := ms.HeapAlloc

	const burst = 5000
	msgs := make([]openflow.Message, burst)
	for i := range msgs {
		msgs[i] = po
	}
	start := time.Now()
	if err := e.sw.Apply(ctx, msgs...); err != nil {
		t.Fatal(err)
	}
	// All packet-ins the burst caused were sent before this barrier's reply.
	if err := e.sw.Barrier(ctx); err != nil {
		t.Fatal(err)
	}
	elapsed := time.Since(start)
	bctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	bstart := time.Now()
	if err := e.sw.Barrier(bctx); err != nil {
		t.Fatalf("barrier after the flood: %v", err)
	}
	st := e.sw.Stats()
	runtime.GC()
	runtime.ReadMemStats(&ms)
	growth := int64(ms.HeapAlloc) - int64(heapBefore)
	t.Logf("%d packet-outs -> %d packet-ins in %s (%.0f/s), %d dropped by the full queue, %d handled; next barrier %s; heap %+d KiB",
		burst, st.PacketIns, elapsed.Round(time.Millisecond), float64(st.PacketIns)/elapsed.Seconds(), st.PacketInsDropped, handled.Load(),
		time.Since(bstart).Round(time.Microsecond), growth>>10)
	// OVS itself drops packet-ins when more than 100 wait for us, so not
	// every packet-out comes back; enough do to overflow a queue of 4.
	if st.PacketIns < 200 || st.PacketInsDropped == 0 || st.PacketInsDropped+uint64(handled.Load()) > st.PacketIns {
		t.Errorf("stats %+v after a burst of %d", st, burst)
	}
	if elapsed > 8*time.Second {
		t.Errorf("burst and barrier took %s", elapsed)
	}
	if growth > 16<<20 {
		t.Errorf("heap grew by %d KiB during the flood", growth>>10)
	}
}

func TestOVSBridgeWithoutOpenFlow13(t *testing.T) {
	e := newOVSEnv(t, testOptions())
	if _, err := e.o.Vsctl("set", "bridge", "br0", "protocols=OpenFlow10"); err != nil {
		t.Fatal(err)
	}
	s := New("unix:"+e.o.MgmtSocket("br0"), testOptions())
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- s.Run(ctx) }()
	defer func() {
		cancel()
		<-done
	}()
	wctx, wcancel := context.WithTimeout(context.Background(), time.Second)
	defer wcancel()
	err := s.WaitConnected(wctx)
	if !errors.Is(err, ErrVersion) || !strings.Contains(err.Error(), "it offers OpenFlow 1.0 (set protocols=OpenFlow13 on the bridge)") {
		t.Fatalf("WaitConnected = %v, want ErrVersion naming OpenFlow 1.0", err)
	}
}

func TestOVSListenForSetController(t *testing.T) {
	e := newOVSEnv(t, testOptions())
	// OVS connects only to unix sockets in its own run directory.
	sock := filepath.Join(e.o.RunDir(), "krc-ctl.sock")
	opts := testOptions()
	var connects atomic.Int32
	opts.OnConnected = func(ctx context.Context, s *Switch) error { connects.Add(1); return nil }
	switches := make(chan *Switch, 4)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Listen(ctx, "unix:"+sock, opts, func(s *Switch) { switches <- s }) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Listen: %v", err)
		}
	})
	if err := simhost.WaitFor(5*time.Second, func() error { _, err := os.Stat(sock); return err }); err != nil {
		t.Fatal(err)
	}
	if _, err := e.o.Vsctl("set-controller", "br0", "unix:"+sock); err != nil {
		t.Fatal(err)
	}
	var s *Switch
	select {
	case s = <-switches:
	case <-time.After(10 * time.Second):
		log, _ := os.ReadFile(filepath.Join(e.o.Dir, "log", "ovs-vswitchd.log"))
		t.Fatalf("bridge did not connect to the listener; vswitchd log:\n%s", log)
	}
	if err := s.WaitConnected(ctx10s(t)); err != nil {
		t.Fatal(err)
	}
	dpid, err := e.o.Vsctl("get", "bridge", "br0", "datapath_id")
	if err != nil {
		t.Fatal(err)
	}
	if want := fmt.Sprintf("\"%016x\"", s.DatapathID()); dpid != want {
		t.Errorf("passive switch dpid %s, bridge says %s", want, dpid)
	}
	flow := &openflow.FlowMod{Table: 3, Priority: 7, Cookie: 0x77, Instructions: actions(openflow.OutputPort(1))}
	if err := s.SetDesired(ctx10s(t), "t", []*openflow.FlowMod{flow}); err != nil {
		t.Fatal(err)
	}
	// vswitchd restarts and reconnects to the listener: the same Switch
	// takes the connection and replays its desired flow.
	if err := e.o.StopVswitchd(); err != nil {
		t.Fatal(err)
	}
	if err := e.o.StartVswitchd(); err != nil {
		t.Fatal(err)
	}
	if err := simhost.WaitFor(15*time.Second, func() error {
		for _, l := range e.dumpFlows() {
			if openflow.StripDumpFlowsStats(l) == flow.FlowText() && connects.Load() == 2 {
				return nil
			}
		}
		return fmt.Errorf("flow not replayed (%d connects)", connects.Load())
	}); err != nil {
		t.Fatal(err)
	}
	select {
	case s2 := <-switches:
		t.Errorf("a second Switch %p for the same bridge", s2)
	default:
	}
}

func TestOVSSetDesiredConfirmed(t *testing.T) {
	opts := testOptions()
	opts.EchoInterval, opts.EchoTimeout = 200*time.Millisecond, time.Second
	e := newOVSEnv(t, opts)
	ctx := ctx10s(t)
	f1 := &openflow.FlowMod{Table: 1, Priority: 10, Cookie: 0x4b01, Match: match(openflow.MatchInPort(1)), Instructions: actions(openflow.OutputPort(2))}
	f2 := &openflow.FlowMod{Table: 1, Priority: 10, Cookie: 0x4b02, Match: match(openflow.MatchInPort(2)), Instructions: actions(openflow.OutputPort(1))}
	onSwitch := func(flows ...*openflow.FlowMod) error {
		var want, got []string
		for _, f := range flows {
			want = append(want, f.FlowText())
		}
		for _, l := range e.dumpFlows() {
			got = append(got, openflow.StripDumpFlowsStats(l))
		}
		slices.Sort(want)
		slices.Sort(got)
		if !slices.Equal(got, want) {
			return fmt.Errorf("flows %q, want %q", got, want)
		}
		return nil
	}
	// Connected and replayed: nil means the flow is there.
	if err := e.sw.SetDesiredConfirmed(ctx, "t", []*openflow.FlowMod{f1}); err != nil {
		t.Fatal(err)
	}
	if err := onSwitch(f1); err != nil {
		t.Fatal(err)
	}
	// vswitchd is gone: the new set is only recorded.
	if err := e.o.StopVswitchd(); err != nil {
		t.Fatal(err)
	}
	if err := simhost.WaitFor(10*time.Second, func() error {
		if e.sw.Connected() {
			return errors.New("still connected")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	set := []*openflow.FlowMod{f1, f2}
	if err := e.sw.SetDesiredConfirmed(ctx, "t", set); !errors.Is(err, ErrNotConfirmed) {
		t.Fatalf("SetDesiredConfirmed without vswitchd = %v, want ErrNotConfirmed", err)
	}
	// It comes back with no flows; once the replay has put the recorded
	// set back, the unchanged set is confirmed.
	if err := e.o.StartVswitchd(); err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if err := e.sw.WaitConnected(wctx); err != nil {
		t.Fatal(err)
	}
	if err := e.sw.SetDesiredConfirmed(ctx10s(t), "t", set); err != nil {
		t.Fatalf("SetDesiredConfirmed after the replay = %v", err)
	}
	if err := onSwitch(f1, f2); err != nil {
		t.Fatal(err)
	}
}
