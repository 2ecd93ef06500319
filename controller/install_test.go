package controller

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keyroute/keyroute/openflow"
)

func testFlow(table uint8, prio uint16, cookie uint64, dst string, port uint32) *openflow.FlowMod {
	return &openflow.FlowMod{Table: table, Priority: prio, Cookie: cookie,
		Match:        match(openflow.MatchEthType(0x0800), openflow.MatchIPv4Dst(netip.MustParseAddr(dst))),
		Instructions: actions(openflow.OutputPort(port))}
}

func TestInstallNamesEveryRejectedFlow(t *testing.T) {
	h := startHarness(t, testOptions(), func(f *fakeSwitch) { f.rejectCookie = 0xbad })
	f := h.nextFake()
	h.waitConnected()
	var flows []*openflow.FlowMod
	for i := range 10 {
		c := uint64(i + 1)
		if i == 3 || i == 7 {
			c = 0xbad
		}
		flows = append(flows, testFlow(1, uint16(100+i), c, fmt.Sprintf("198.19.0.%d", i), 1))
	}
	err := h.sw.Install(context.Background(), flows)
	var idx []int
	for _, e := range err.(interface{ Unwrap() []error }).Unwrap() {
		var fe *FlowModError
		if !errors.As(e, &fe) {
			t.Fatalf("error %v is not a FlowModError", e)
		}
		if fe.Flow != flows[fe.Index] || fe.Err.CodeName() != "OFPBMC_BAD_PREREQ" {
			t.Errorf("FlowModError %d: flow %v, err %v", fe.Index, fe.Flow, fe.Err)
		}
		idx = append(idx, fe.Index)
	}
	if !slices.Equal(idx, []int{3, 7}) {
		t.Errorf("rejected indices %v, want [3 7]", idx)
	}
	if want := "flow mod 3 (table=1,priority=103,cookie=0xbad,ip,nw_dst=198.19.0.3 actions=output:1) rejected: OFPET_BAD_MATCH/OFPBMC_BAD_PREREQ"; !strings.Contains(err.Error(), want) {
		t.Errorf("error %q\ndoes not contain %q", err, want)
	}
	f.mu.Lock()
	n := len(f.flows)
	f.mu.Unlock()
	if n != 8 {
		t.Errorf("switch took %d flows, want 8", n)
	}
	// A flow that cannot be encoded stops the install before anything is sent.
	bad := testFlow(1, 1, 1, "198.19.0.1", 1)
	bad.Match.Fields[1].Value = []byte{1, 2}
	if err := h.sw.Install(context.Background(), []*openflow.FlowMod{testFlow(1, 2, 2, "198.19.0.2", 1), bad}); err == nil || !strings.Contains(err.Error(), "message 1") {
		t.Errorf("Install with an unencodable flow = %v", err)
	}
	f.mu.Lock()
	n = len(f.flows)
	f.mu.Unlock()
	if n != 8 {
		t.Errorf("unencodable install sent %d flows", n-8)
	}
}

func TestInstallLargeBatch(t *testing.T) {
	h := startHarness(t, testOptions(), nil)
	f := h.nextFake()
	h.waitConnected()
	flows := make([]*openflow.FlowMod, 20000)
	for i := range flows {
		flows[i] = testFlow(2, 100, uint64(i), fmt.Sprintf("198.18.%d.%d", i/256, i%256), 1)
	}
	if err := h.sw.Install(context.Background(), flows); err != nil {
		t.Fatal(err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.flows) != len(flows) {
		t.Fatalf("switch got %d flows, want %d", len(f.flows), len(flows))
	}
	for i, fm := range f.flows {
		if fm.Cookie != uint64(i) {
			t.Fatalf("flow %d arrived out of order (cookie %d)", i, fm.Cookie)
		}
	}
}

func TestBundleRejectedAddDiscards(t *testing.T) {
	h := startHarness(t, testOptions(), func(f *fakeSwitch) { f.rejectCookie = 0xbad })
	f := h.nextFake()
	h.waitConnected()
	msgs := []openflow.Message{testFlow(1, 1, 1, "198.19.0.1", 1), testFlow(1, 2, 0xbad, "198.19.0.2", 1), testFlow(1, 3, 3, "198.19.0.3", 1)}
	err := h.sw.Bundle(context.Background(), msgs)
	var be *BundleError
	if !errors.As(err, &be) || be.Index != 1 || be.Msg != msgs[1] {
		t.Fatalf("Bundle = %v, want BundleError for message 1", err)
	}
	if len(f.committed()) != 0 {
		t.Error("a bundle with a rejected message was committed")
	}
	var discarded bool
	for _, m := range f.received() {
		if bc, ok := m.(*openflow.BundleControl); ok && bc.CtrlType == openflow.BundleDiscardRequest && bc.BundleID == be.BundleID {
			discarded = true
		}
	}
	if !discarded {
		t.Error("rejected bundle not discarded")
	}
	// A good bundle commits, in order.
	msgs[1] = testFlow(1, 2, 2, "198.19.0.2", 1)
	if err := h.sw.Bundle(context.Background(), msgs); err != nil {
		t.Fatal(err)
	}
	for _, got := range f.committed() {
		if len(got) != 3 || got[0].(*openflow.FlowMod).Cookie != 1 || got[2].(*openflow.FlowMod).Cookie != 3 {
			t.Errorf("committed %v", got)
		}
	}
}

func TestBundleCommitFailureNamesMessage(t *testing.T) {
	var mu sync.Mutex
	addXids := map[uint64]uint32{} // cookie -> xid
	h := startHarness(t, testOptions(), func(f *fakeSwitch) {
		f.handle = func(f *fakeSwitch, hd openflow.Header, m openflow.Message) bool {
			switch m := m.(type) {
			case *openflow.BundleAdd:
				mu.Lock()
				addXids[m.Message.(*openflow.FlowMod).Cookie] = hd.Xid
				mu.Unlock()
			case *openflow.BundleControl:
				if m.CtrlType != openflow.BundleCommitRequest {
					return false
				}
				// As OVS does: the failing message's error under its own
				// xid, then the commit's.
				mu.Lock()
				xid := addXids[0xc0]
				mu.Unlock()
				f.send(&openflow.ErrorMsg{ErrType: openflow.ErrTypeFlowModFailed, Code: 1}, xid)
				f.send(&openflow.ErrorMsg{ErrType: openflow.ErrTypeExperimenter, Experimenter: openflow.ONFExperimenter,
					Code: openflow.BundleErrBase + openflow.BundleErrMsgFailed}, hd.Xid)
				return true
			}
			return false
		}
	})
	h.nextFake()
	h.waitConnected()
	msgs := []openflow.Message{testFlow(1, 1, 1, "198.19.0.1", 1), testFlow(1, 2, 0xc0, "198.19.0.2", 1)}
	err := h.sw.Bundle(context.Background(), msgs)
	var be *BundleError
	if !errors.As(err, &be) || be.Index != 1 || be.Err.CodeName() != "OFPFMFC_TABLE_FULL" {
		t.Fatalf("Bundle = %v, want message 1 named with OFPFMFC_TABLE_FULL", err)
	}
	if !strings.Contains(err.Error(), "OFPBFC_MSG_FAILED") {
		t.Errorf("commit failure not reported: %v", err)
	}
}

// bundleContents returns the messages of the bundles committed on f,
// oldest first.
func bundleContents(f *fakeSwitch) [][]openflow.Message {
	c := f.committed()
	ids := make([]uint32, 0, len(c))
	for id := range c {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	var out [][]openflow.Message
	for _, id := range ids {
		out = append(out, c[id])
	}
	return out
}

func describeAll(msgs []openflow.Message) []string {
	var s []string
	for _, m := range msgs {
		fm := m.(*openflow.FlowMod)
		s = append(s, fm.Command.String()+" "+fm.String())
	}
	return s
}

func TestSetDesiredAppliesTheDifference(t *testing.T) {
	h := startHarness(t, testOptions(), func(f *fakeSwitch) { f.rejectCookie = 0xbad })
	f := h.nextFake()
	h.waitConnected()
	ctx := context.Background()
	f1, f2, f3 := testFlow(1, 100, 1, "198.19.0.1", 1), testFlow(1, 100, 2, "198.19.0.2", 1), testFlow(1, 100, 3, "198.19.0.3", 1)
	if err := h.sw.SetDesired(ctx, "a", []*openflow.FlowMod{f1, f2, f3}); err != nil {
		t.Fatal(err)
	}
	f2b := testFlow(1, 100, 2, "198.19.0.2", 2) // new action
	f4 := testFlow(2, 100, 4, "198.19.0.4", 1)
	if err := h.sw.SetDesired(ctx, "a", []*openflow.FlowMod{f1, f2b, f4}); err != nil {
		t.Fatal(err)
	}
	b := bundleContents(f)
	if len(b) != 2 || len(b[0]) != 3 {
		t.Fatalf("bundles %v", b)
	}
	got := describeAll(b[1])
	want := []string{
		"DEL_STRICT table=1,priority=100,cookie=0x3/0xffffffffffffffff,ip,nw_dst=198.19.0.3",
		"ADD table=1,priority=100,cookie=0x2,ip,nw_dst=198.19.0.2 actions=output:2",
		"ADD table=2,priority=100,cookie=0x4,ip,nw_dst=198.19.0.4 actions=output:1",
	}
	if !slices.Equal(got, want) {
		t.Errorf("second bundle:\n got %q\nwant %q", got, want)
	}
	if d := h.sw.Desired("a"); len(d) != 3 || d[1].Cookie != 2 || d[2].Cookie != 4 {
		t.Errorf("Desired(a) = %v", d)
	}
	// Same set again: nothing to do.
	if err := h.sw.SetDesired(ctx, "a", []*openflow.FlowMod{f1, f2b, f4}); err != nil || len(bundleContents(f)) != 2 {
		t.Errorf("unchanged set sent a bundle (err %v)", err)
	}
	// Another owner cannot claim a key owner a has.
	if err := h.sw.SetDesired(ctx, "b", []*openflow.FlowMod{testFlow(1, 100, 9, "198.19.0.1", 3)}); err == nil || !strings.Contains(err.Error(), "already desired by a") {
		t.Errorf("conflicting owner: %v", err)
	}
	// Duplicate keys and non-add commands are refused.
	if err := h.sw.SetDesired(ctx, "b", []*openflow.FlowMod{f1, testFlow(1, 100, 7, "198.19.0.1", 3)}); err == nil {
		t.Error("duplicate key accepted")
	}
	del := testFlow(1, 1, 1, "198.19.0.9", 1)
	del.Command = openflow.FlowDelete
	if err := h.sw.SetDesired(ctx, "b", []*openflow.FlowMod{del}); err == nil {
		t.Error("delete accepted as a desired flow")
	}
	// A rejected set leaves the previous one recorded.
	err := h.sw.SetDesired(ctx, "a", []*openflow.FlowMod{f1, testFlow(1, 100, 0xbad, "198.19.0.5", 1)})
	var be *BundleError
	if !errors.As(err, &be) {
		t.Fatalf("rejected set: %v", err)
	}
	if d := h.sw.Desired("a"); len(d) != 3 || d[2].Cookie != 4 {
		t.Errorf("Desired(a) after a rejected set = %v", d)
	}
	// An empty set removes everything the owner had.
	if err := h.sw.SetDesired(ctx, "a", nil); err != nil {
		t.Fatal(err)
	}
	b = bundleContents(f)
	if got := describeAll(b[len(b)-1]); len(got) != 3 || !strings.HasPrefix(got[0], "DEL_STRICT") {
		t.Errorf("clearing owner a sent %q", got)
	}
	if h.sw.Desired("a") != nil {
		t.Error("owner a still has desired flows")
	}
}

func TestReplayOnReconnectAndReconcile(t *testing.T) {
	// The switch reports one flow that matches the desired one, one owned
	// stray and one foreign flow.
	desired := testFlow(0, 10, 0x4b00000000000001, "198.19.0.1", 1)
	missing := testFlow(0, 20, 0x4b00000000000002, "198.19.0.2", 1)
	flowStats := func(f *openflow.FlowMod) []byte {
		fs := openflow.FlowStats{Table: f.Table, Priority: f.Priority, Cookie: f.Cookie, Match: f.Match, Instructions: f.Instructions}
		b, err := fs.AppendTo(nil)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	var dump []byte
	dump = append(dump, flowStats(desired)...)
	dump = append(dump, flowStats(testFlow(0, 30, 0x4b00000000000099, "198.19.0.3", 1))...) // owned stray
	dump = append(dump, flowStats(testFlow(0, 40, 0x1, "198.19.0.4", 1))...)                // foreign

	opts := testOptions()
	opts.OwnedCookie = func(c uint64) bool { return c>>56 == 0x4b }
	var connects sync.WaitGroup
	connects.Add(1)
	var once sync.Once
	opts.OnConnected = func(ctx context.Context, s *Switch) error { once.Do(connects.Done); return nil }
	h := startHarness(t, opts, func(f *fakeSwitch) {
		f.handle = func(f *fakeSwitch, hd openflow.Header, m openflow.Message) bool {
			if _, ok := m.(*openflow.FlowStatsRequest); ok {
				f.send(&openflow.MultipartReply{MPType: openflow.MultipartFlow, Body: dump}, hd.Xid)
				return true
			}
			return false
		}
	})
	f1 := h.nextFake()
	h.waitConnected()
	ctx := context.Background()
	// Recorded while connected: SetDesired adds both (it does not look at
	// the switch).
	if err := h.sw.SetDesired(ctx, "x", []*openflow.FlowMod{desired, missing}); err != nil {
		t.Fatal(err)
	}
	// Reconnect before any Reconcile: the replay only adds.
	f1.nc.Close()
	f2 := h.nextFake()
	poll(t, "reconnect", func() bool { return h.sw.Stats().Reconnects == 1 && h.sw.Connected() })
	b := bundleContents(f2)
	if len(b) != 1 || !slices.Equal(describeAll(b[0]), []string{"ADD " + missing.String()}) {
		t.Fatalf("replay before Reconcile sent %v", b)
	}
	// Reconcile deletes the owned stray, keeps the foreign flow.
	res, err := h.sw.Reconcile(ctx)
	if err != nil || res != (ReconcileResult{Added: 1, Deleted: 1}) {
		t.Fatalf("Reconcile = %+v, %v", res, err)
	}
	b = bundleContents(f2)
	want := []string{"DEL_STRICT table=0,priority=30,cookie=0x4b00000000000099/0xffffffffffffffff,ip,nw_dst=198.19.0.3", "ADD " + missing.String()}
	if got := describeAll(b[1]); !slices.Equal(got, want) {
		t.Errorf("Reconcile bundle %q, want %q", got, want)
	}
	// After Reconcile the replay on reconnect deletes too.
	f2.nc.Close()
	f3 := h.nextFake()
	poll(t, "second reconnect", func() bool { return h.sw.Stats().Reconnects == 2 && h.sw.Connected() })
	if b := bundleContents(f3); len(b) != 1 || !slices.Equal(describeAll(b[0]), want) {
		t.Errorf("replay after Reconcile sent %v", b)
	}
	if st := h.sw.Stats(); st.ReplayedFlows != 1+2 {
		t.Errorf("ReplayedFlows = %d, want 3", st.ReplayedFlows)
	}
}

func TestSetDesiredWhileDisconnectedIsReplayed(t *testing.T) {
	s := New("unix:/nonexistent", testOptions())
	fl := testFlow(0, 10, 1, "198.19.0.1", 1)
	if err := s.SetDesired(context.Background(), "x", []*openflow.FlowMod{fl}); err != nil {
		t.Fatalf("SetDesired while disconnected: %v", err)
	}
	if d := s.Desired("x"); len(d) != 1 {
		t.Fatalf("not recorded: %v", d)
	}
}

func TestMatchKeyCanonical(t *testing.T) {
	a := match(openflow.MatchEthType(0x0800), openflow.MatchIPv4DstMasked(netip.MustParsePrefix("198.19.1.0/24")), openflow.MatchInPort(3))
	// Same match: other order, unmasked bits set, an all-ones mask, a
	// zero-mask field.
	b := match(openflow.MatchInPort(3),
		openflow.OXM{Field: openflow.FieldIPv4Dst, Value: []byte{198, 19, 1, 77}, Mask: []byte{255, 255, 255, 0}},
		openflow.OXM{Field: openflow.FieldEthType, Value: []byte{8, 0}},
		openflow.OXM{Field: openflow.FieldIPv4Src, Value: []byte{1, 2, 3, 4}, Mask: []byte{0, 0, 0, 0}})
	c := match(openflow.MatchEthType(0x0800), openflow.OXM{Field: openflow.FieldIPv4Dst, Value: []byte{198, 19, 1, 0}, Mask: []byte{255, 255, 255, 255}}, openflow.MatchInPort(3))
	ka, err1 := matchKey(a)
	kb, err2 := matchKey(b)
	kc, err3 := matchKey(c)
	if err := errors.Join(err1, err2, err3); err != nil {
		t.Fatal(err)
	}
	if ka != kb {
		t.Errorf("equal matches keyed differently:\n%s\n%s", ka, kb)
	}
	if ka == kc {
		t.Errorf("/24 and /32 keyed the same: %s", ka)
	}
	if _, err := matchKey(match(openflow.OXM{Value: []byte{1}})); err == nil {
		t.Error("field without a type accepted")
	}
}

func TestHandleSurvivesGarbage(t *testing.T) {
	opts := testOptions()
	opts.OnPacketIn = func(*openflow.PacketIn2) {}
	opts.OnFlowRemoved = func(*openflow.FlowRemoved) {}
	opts.OnPortStatus = func(*openflow.PortStatus) {}
	opts.OnAsyncError = func(*openflow.ErrorMsg) {}
	s := New("fake", opts)
	a, b := net.Pipe()
	defer a.Close()
	go io.Copy(io.Discard, b)
	c := newConn(s, a, nil)
	c.addWaiter(7, &waiter{ch: make(chan result, 1), multipart: true})
	c.addCollector(100, 10)
	seeds := []openflow.Message{
		&openflow.PacketIn2{Packet: []byte{1, 2, 3}, Userdata: []byte("u"), Metadata: match(openflow.MatchInPort(1))},
		&openflow.FlowRemoved{Cookie: 1, Match: match(openflow.MatchEthType(0x800), openflow.MatchIPv4Dst(netip.MustParseAddr("198.19.0.1")))},
		&openflow.MultipartReply{MPType: openflow.MultipartFlow, Flags: 1, Body: make([]byte, 64)},
		&openflow.ErrorMsg{ErrType: 4, Code: 9, Data: make([]byte, 24)},
		&openflow.PortStatus{Reason: 1},
		&openflow.EchoRequest{Data: []byte("x")},
		testFlow(1, 1, 1, "198.19.0.1", 1),
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range 20000 {
		raw, err := openflow.Marshal(seeds[i%len(seeds)], []uint32{0, 7, 103, 5000}[i%4])
		if err != nil {
			t.Fatal(err)
		}
		for range 1 + rng.IntN(4) {
			raw[8+rng.IntN(len(raw)-8)] = byte(rng.Uint32())
		}
		c.handle(raw) // must not panic
	}
	st := s.Stats()
	t.Logf("after 20000 mutated messages: %d decode errors, %d unknown", st.DecodeErrors, st.Unknown)
	if st.DecodeErrors == 0 {
		t.Error("no mutated message failed to decode: the mutation did nothing")
	}
}

// holdHandshake makes fakes hold the controller's HELLO until the returned
// release is called (also when the test ends), so the switch stays
// disconnected; extra, if set, handles messages first.
func holdHandshake(t *testing.T, extra func(f *fakeSwitch, hd openflow.Header, m openflow.Message) bool) (cfg func(*fakeSwitch), release func()) {
	held := make(chan struct{})
	release = sync.OnceFunc(func() { close(held) })
	t.Cleanup(release) // runs before the harness stops Run
	return func(f *fakeSwitch) {
		f.handle = func(f *fakeSwitch, hd openflow.Header, m openflow.Message) bool {
			if _, ok := m.(*openflow.Hello); ok {
				<-held
			}
			return extra != nil && extra(f, hd, m)
		}
	}, release
}

func TestSetDesiredConfirmedWhileDisconnected(t *testing.T) {
	cfg, release := holdHandshake(t, nil)
	h := startHarness(t, testOptions(), cfg)
	f := h.nextFake()
	ctx := context.Background()
	fl := testFlow(0, 10, 1, "198.19.0.1", 1)
	set := []*openflow.FlowMod{fl}
	err := h.sw.SetDesiredConfirmed(ctx, "x", set)
	if !errors.Is(err, ErrNotConfirmed) || !errors.Is(err, ErrNotConnected) {
		t.Fatalf("SetDesiredConfirmed while disconnected = %v, want ErrNotConfirmed and ErrNotConnected", err)
	}
	if d := h.sw.Desired("x"); len(d) != 1 {
		t.Fatalf("set not recorded: %v", d)
	}
	// The same set again: no difference, but nothing is on the switch.
	if err := h.sw.SetDesiredConfirmed(ctx, "x", set); !errors.Is(err, ErrNotConfirmed) {
		t.Fatalf("unchanged set while disconnected = %v, want ErrNotConfirmed", err)
	}
	release()
	h.waitConnected()
	b := bundleContents(f)
	if len(b) != 1 || !slices.Equal(describeAll(b[0]), []string{"ADD " + fl.String()}) {
		t.Fatalf("replay sent %v, want the recorded flow", b)
	}
	// Connected and replayed: the unchanged set is on the switch.
	if err := h.sw.SetDesiredConfirmed(ctx, "x", set); err != nil {
		t.Fatalf("SetDesiredConfirmed after the replay = %v", err)
	}
	if n := len(bundleContents(f)); n != 1 {
		t.Errorf("unchanged set sent a bundle (%d bundles)", n)
	}
}

// conn() hands out a connection before its replay has run: a set whose
// difference goes out then, or that has none, is not confirmed yet.
func TestSetDesiredConfirmedWaitsForTheReplay(t *testing.T) {
	opts := testOptions()
	entered, held := make(chan struct{}), make(chan struct{})
	release := sync.OnceFunc(func() { close(held) })
	var once sync.Once
	opts.OnConnected = func(ctx context.Context, s *Switch) error {
		once.Do(func() { close(entered) })
		<-held
		return nil
	}
	h := startHarness(t, opts, nil)
	t.Cleanup(release)
	f := h.nextFake()
	select {
	case <-entered:
	case <-time.After(5 * time.Second):
		t.Fatal("OnConnected not called")
	}
	ctx := context.Background()
	fl := testFlow(0, 10, 1, "198.19.0.1", 1)
	set := []*openflow.FlowMod{fl}
	// The difference goes out in a bundle on the new connection, as with
	// SetDesired...
	err := h.sw.SetDesiredConfirmed(ctx, "x", set)
	if !errors.Is(err, ErrNotConfirmed) || !strings.Contains(err.Error(), "replay") {
		t.Fatalf("SetDesiredConfirmed before the replay = %v, want ErrNotConfirmed naming the replay", err)
	}
	if b := bundleContents(f); len(b) != 1 || !slices.Equal(describeAll(b[0]), []string{"ADD " + fl.String()}) {
		t.Fatalf("bundles before the replay: %v", b)
	}
	// ...and without a difference there is nothing to confirm it by.
	if err := h.sw.SetDesiredConfirmed(ctx, "x", set); !errors.Is(err, ErrNotConfirmed) {
		t.Fatalf("unchanged set before the replay = %v, want ErrNotConfirmed", err)
	}
	if err := h.sw.SetDesired(ctx, "x", set); err != nil {
		t.Fatalf("SetDesired before the replay = %v", err)
	}
	release()
	h.waitConnected()
	if err := h.sw.SetDesiredConfirmed(ctx, "x", set); err != nil {
		t.Fatalf("SetDesiredConfirmed after the replay = %v", err)
	}
}

func TestSetDesiredConfirmedConnectionLost(t *testing.T) {
	var first atomic.Bool
	h := startHarness(t, testOptions(), func(f *fakeSwitch) {
		if !first.CompareAndSwap(false, true) {
			return
		}
		// The first switch goes away when asked to commit.
		f.handle = func(f *fakeSwitch, hd openflow.Header, m openflow.Message) bool {
			if bc, ok := m.(*openflow.BundleControl); ok && bc.CtrlType == openflow.BundleCommitRequest {
				f.nc.Close()
				return true
			}
			return false
		}
	})
	h.nextFake()
	h.waitConnected()
	ctx := context.Background()
	fl := testFlow(0, 10, 1, "198.19.0.1", 1)
	set := []*openflow.FlowMod{fl}
	err := h.sw.SetDesiredConfirmed(ctx, "x", set)
	if !errors.Is(err, ErrNotConfirmed) || !errors.Is(err, ErrConnectionLost) {
		t.Fatalf("SetDesiredConfirmed with the connection lost = %v, want ErrNotConfirmed and ErrConnectionLost", err)
	}
	if d := h.sw.Desired("x"); len(d) != 1 {
		t.Fatalf("set not recorded: %v", d)
	}
	f2 := h.nextFake()
	poll(t, "reconnect", func() bool { return h.sw.Stats().Reconnects == 1 && h.sw.Connected() })
	if b := bundleContents(f2); len(b) != 1 || !slices.Equal(describeAll(b[0]), []string{"ADD " + fl.String()}) {
		t.Fatalf("replay sent %v, want the recorded flow", b)
	}
	if err := h.sw.SetDesiredConfirmed(ctx, "x", set); err != nil {
		t.Fatalf("SetDesiredConfirmed after the replay = %v", err)
	}
	// A connection that is dead (torn down or not yet) confirms nothing.
	c, err := h.sw.conn()
	if err != nil {
		t.Fatal(err)
	}
	c.close(errors.New("test: drop the connection"))
	if err := h.sw.SetDesiredConfirmed(ctx, "x", set); !errors.Is(err, ErrNotConfirmed) {
		t.Fatalf("unchanged set on a dead connection = %v, want ErrNotConfirmed", err)
	}
	h.nextFake()
	poll(t, "second reconnect", func() bool { return h.sw.Stats().Reconnects == 2 && h.sw.Connected() })
	if err := h.sw.SetDesiredConfirmed(ctx, "x", set); err != nil {
		t.Fatalf("SetDesiredConfirmed after the second replay = %v", err)
	}
}

// A bundle whose outcome is unknown leaves its flows unconfirmed:
// SetDesiredConfirmed sends them again, SetDesired does not.
func TestSetDesiredConfirmedResendsAfterUnknownOutcome(t *testing.T) {
	var swallow atomic.Bool
	h := startHarness(t, testOptions(), func(f *fakeSwitch) {
		f.handle = func(f *fakeSwitch, hd openflow.Header, m openflow.Message) bool {
			bc, ok := m.(*openflow.BundleControl)
			return ok && bc.CtrlType == openflow.BundleCommitRequest && swallow.Load()
		}
	})
	f := h.nextFake()
	h.waitConnected()
	ctx := context.Background()
	f1, f2 := testFlow(0, 10, 1, "198.19.0.1", 1), testFlow(0, 10, 2, "198.19.0.2", 1)
	// Connected and replayed: the difference is committed, confirmed.
	if err := h.sw.SetDesiredConfirmed(ctx, "x", []*openflow.FlowMod{f1}); err != nil {
		t.Fatal(err)
	}
	if b := bundleContents(f); len(b) != 1 || !slices.Equal(describeAll(b[0]), []string{"ADD " + f1.String()}) {
		t.Fatalf("bundles %v", b)
	}
	swallow.Store(true)
	sctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel()
	set := []*openflow.FlowMod{f1, f2}
	err := h.sw.SetDesiredConfirmed(sctx, "x", set)
	if !errors.Is(err, ErrNotConfirmed) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("SetDesiredConfirmed with an unanswered commit = %v, want ErrNotConfirmed and the deadline", err)
	}
	if d := h.sw.Desired("x"); len(d) != 2 {
		t.Fatalf("set not recorded: %v", d)
	}
	swallow.Store(false)
	if err := h.sw.SetDesired(ctx, "x", set); err != nil || len(bundleContents(f)) != 1 {
		t.Fatalf("SetDesired of the recorded set = %v, %d bundles; want nil and no bundle", err, len(bundleContents(f)))
	}
	if err := h.sw.SetDesiredConfirmed(ctx, "x", set); err != nil {
		t.Fatalf("SetDesiredConfirmed retry = %v", err)
	}
	if b := bundleContents(f); len(b) != 2 || !slices.Equal(describeAll(b[1]), []string{"ADD " + f2.String()}) {
		t.Fatalf("retry sent %v, want f2 again", b)
	}
	if err := h.sw.SetDesiredConfirmed(ctx, "x", set); err != nil || len(bundleContents(f)) != 2 {
		t.Fatalf("confirmed set again = %v, %d bundles; want nil and no bundle", err, len(bundleContents(f)))
	}
}

// A flow the replay could not install (its bundle was rejected, and then
// the flow itself) is not confirmed by the replay.
func TestSetDesiredConfirmedAfterReplayRejectedAFlow(t *testing.T) {
	// Reject adds (not deletes) of cookie 0xbad, in bundles and alone.
	isBad := func(m openflow.Message) bool {
		fm, ok := m.(*openflow.FlowMod)
		return ok && fm.Command == openflow.FlowAdd && fm.Cookie == 0xbad
	}
	cfg, release := holdHandshake(t, func(f *fakeSwitch, hd openflow.Header, m openflow.Message) bool {
		if ba, ok := m.(*openflow.BundleAdd); ok && isBad(ba.Message) {
			f.reject(ba.Message, hd.Xid)
			return true
		}
		if isBad(m) {
			f.reject(m, hd.Xid)
			return true
		}
		return false
	})
	h := startHarness(t, testOptions(), cfg)
	f := h.nextFake()
	ctx := context.Background()
	good, bad := testFlow(0, 10, 1, "198.19.0.1", 1), testFlow(0, 10, 0xbad, "198.19.0.2", 1)
	set := []*openflow.FlowMod{good, bad}
	if err := h.sw.SetDesiredConfirmed(ctx, "x", set); !errors.Is(err, ErrNotConfirmed) {
		t.Fatalf("SetDesiredConfirmed while disconnected = %v", err)
	}
	release()
	h.waitConnected()
	if st := h.sw.Stats(); st.ReplayFailures != 1 {
		t.Fatalf("ReplayFailures = %d, want 1", st.ReplayFailures)
	}
	f.mu.Lock()
	installed := slices.Clone(f.flows)
	f.mu.Unlock()
	if len(installed) != 1 || installed[0].Cookie != 1 {
		t.Fatalf("flow by flow the replay installed %v, want the good flow", installed)
	}
	bundles := len(bundleContents(f))
	// SetDesired sees no difference, as before.
	if err := h.sw.SetDesired(ctx, "x", set); err != nil || len(bundleContents(f)) != bundles {
		t.Fatalf("SetDesired of the recorded set = %v", err)
	}
	// SetDesiredConfirmed sends the missing flow again; the switch
	// rejects it, and the error says which.
	err := h.sw.SetDesiredConfirmed(ctx, "x", set)
	var be *BundleError
	if !errors.As(err, &be) || be.Msg.(*openflow.FlowMod).Cookie != 0xbad || errors.Is(err, ErrNotConfirmed) {
		t.Fatalf("SetDesiredConfirmed with the rejected flow = %v, want its *BundleError", err)
	}
	// Without it the set is confirmed.
	if err := h.sw.SetDesiredConfirmed(ctx, "x", []*openflow.FlowMod{good}); err != nil {
		t.Fatalf("SetDesiredConfirmed without the rejected flow = %v", err)
	}
	b := bundleContents(f)
	if got := describeAll(b[len(b)-1]); len(b) != bundles+1 || len(got) != 1 || !strings.HasPrefix(got[0], "DEL_STRICT") {
		t.Errorf("dropping the rejected flow sent %q", got)
	}
}
