package controller

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keyroute/keyroute/openflow"
)

func TestParseAddr(t *testing.T) {
	for _, tc := range []struct{ in, network, address string }{
		{"unix:/run/openvswitch/br-int.mgmt", "unix", "/run/openvswitch/br-int.mgmt"},
		{"/run/openvswitch/br-int.mgmt", "unix", "/run/openvswitch/br-int.mgmt"},
		{"tcp:127.0.0.1:6653", "tcp", "127.0.0.1:6653"},
	} {
		n, a, err := parseAddr(tc.in)
		if err != nil || n != tc.network || a != tc.address {
			t.Errorf("parseAddr(%q) = %q, %q, %v; want %q, %q", tc.in, n, a, err, tc.network, tc.address)
		}
	}
	for _, bad := range []string{"", "br-int", "tcp:127.0.0.1", "unix:", "ssl:1.2.3.4:6653"} {
		if _, _, err := parseAddr(bad); err == nil {
			t.Errorf("parseAddr(%q) accepted", bad)
		}
	}
	if err := New("br-int", testOptions()).Run(context.Background()); err == nil || !strings.Contains(err.Error(), "br-int") {
		t.Errorf("Run with a bad address: %v, want an error naming it", err)
	}
}

func TestHandshake(t *testing.T) {
	opts := testOptions()
	var during atomic.Value
	var calls atomic.Int32
	opts.OnConnected = func(ctx context.Context, s *Switch) error {
		calls.Add(1)
		// Requests work before the switch counts as connected.
		during.Store(fmt.Sprintf("connected=%v barrier=%v", s.Connected(), s.Barrier(ctx)))
		return nil
	}
	h := startHarness(t, opts, nil)
	f := h.nextFake()
	h.waitConnected()

	if got := h.sw.DatapathID(); got != 0xfeed {
		t.Errorf("DatapathID = %x, want feed", got)
	}
	if calls.Load() != 1 || during.Load() != "connected=false barrier=<nil>" {
		t.Errorf("OnConnected: %d calls, saw %v", calls.Load(), during.Load())
	}
	var order []string
	for _, m := range f.received() {
		switch m := m.(type) {
		case *openflow.Hello:
			if !m.Supports13() || len(m.Versions) != 1 {
				t.Errorf("controller HELLO offers %v, want OpenFlow 1.3 only", m.Versions)
			}
			order = append(order, "hello")
		case *openflow.FeaturesRequest:
			order = append(order, "features")
		case *openflow.SetConfig:
			if m.MissSendLen != 0xffff {
				t.Errorf("SET_CONFIG miss_send_len = %d, want 65535", m.MissSendLen)
			}
			order = append(order, "set_config")
		case *openflow.SetPacketInFormat:
			if m.Format != openflow.PacketInFormatNXT2 {
				t.Errorf("packet-in format %d, want NXT_PACKET_IN2", m.Format)
			}
			order = append(order, "packet_in_format")
		}
	}
	if got := strings.Join(order, ","); got != "hello,features,set_config,packet_in_format" {
		t.Errorf("handshake order %s", got)
	}
	st := h.sw.Stats()
	if !st.Connected || st.Connects != 1 || st.Reconnects != 0 || st.DatapathID != 0xfeed {
		t.Errorf("stats after connect: %+v", st)
	}
}

func TestOpenFlow10PeerGetsClearError(t *testing.T) {
	var sawError atomic.Bool
	h := startHarness(t, testOptions(), func(f *fakeSwitch) {
		f.hello = rawMessage(0x01, openflow.TypeHello, 1, nil) // OpenFlow 1.0, no version bitmap
		f.handle = func(f *fakeSwitch, h openflow.Header, m openflow.Message) bool {
			if e, ok := m.(*openflow.ErrorMsg); ok && e.ErrType == openflow.ErrTypeHelloFailed {
				sawError.Store(true)
			}
			return false
		}
	})
	h.nextFake()
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	err := h.sw.WaitConnected(ctx)
	if !errors.Is(err, ErrVersion) || !strings.Contains(err.Error(), "OpenFlow 1.0") || !strings.Contains(err.Error(), "protocols=OpenFlow13") {
		t.Fatalf("WaitConnected = %v, want ErrVersion naming OpenFlow 1.0 and the fix", err)
	}
	poll(t, "HELLO_FAILED sent to the 1.0 peer", sawError.Load)
	if h.sw.Stats().ConnectFailures == 0 {
		t.Error("ConnectFailures not counted")
	}
}

func TestXidMatchingWithInterleavedAsync(t *testing.T) {
	opts := testOptions()
	var mu sync.Mutex
	var removed, pins []uint64
	opts.OnFlowRemoved = func(m *openflow.FlowRemoved) { mu.Lock(); removed = append(removed, m.Cookie); mu.Unlock() }
	opts.OnPacketIn = func(m *openflow.PacketIn2) { mu.Lock(); pins = append(pins, m.Cookie); mu.Unlock() }

	const n = 20
	type req struct {
		xid  uint32
		data []byte
	}
	var (
		qmu    sync.Mutex
		queued []req
	)
	h := startHarness(t, opts, func(f *fakeSwitch) {
		f.handle = func(f *fakeSwitch, hd openflow.Header, m openflow.Message) bool {
			e, ok := m.(*openflow.EchoRequest)
			if !ok || !strings.HasPrefix(string(e.Data), "req") {
				return false
			}
			qmu.Lock()
			queued = append(queued, req{hd.Xid, e.Data})
			all := append([]req(nil), queued...)
			qmu.Unlock()
			if len(all) < n {
				return true
			}
			// Answer in reverse order, each reply preceded by async
			// messages and a reply to an xid nobody asked for.
			for i := len(all) - 1; i >= 0; i-- {
				c := uint64(n - i)
				f.send(&openflow.PacketIn2{Packet: []byte{1, 2, 3}, Cookie: c, Table: 1}, 0)
				f.send(&openflow.FlowRemoved{Cookie: c, Table: 2}, 0)
				f.send(&openflow.EchoReply{Data: []byte("decoy")}, 0xdead0000+uint32(i))
				f.send(&openflow.EchoReply{Data: all[i].data}, all[i].xid)
			}
			return true
		}
	})
	h.nextFake()
	h.waitConnected()

	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			want := fmt.Sprintf("req%d", i)
			m, err := h.sw.Request(context.Background(), &openflow.EchoRequest{Data: []byte(want)})
			if err != nil {
				errs <- err
				return
			}
			if r, ok := m.(*openflow.EchoReply); !ok || string(r.Data) != want {
				errs <- fmt.Errorf("request %s got %v", want, m)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	poll(t, "async messages delivered", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(removed) == n && len(pins) == n
	})
	mu.Lock()
	for i := range n {
		if removed[i] != uint64(i+1) || pins[i] != uint64(i+1) {
			t.Fatalf("async messages out of order: flow removed %v, packet-ins %v", removed, pins)
		}
	}
	mu.Unlock()
	if st := h.sw.Stats(); st.UnmatchedReplies != n || st.PacketIns != n || st.FlowRemoved != n {
		t.Errorf("stats %+v, want %d unmatched replies, packet-ins and flow-removed", st, n)
	}
}

func TestRequestReturnsItsOwnReply(t *testing.T) {
	h := startHarness(t, testOptions(), func(f *fakeSwitch) {
		f.handle = func(f *fakeSwitch, hd openflow.Header, m openflow.Message) bool {
			if _, ok := m.(*openflow.GetConfigRequest); ok {
				// A decoy with another xid first.
				f.send(&openflow.GetConfigReply{MissSendLen: 1}, hd.Xid+1000)
				f.send(&openflow.GetConfigReply{MissSendLen: uint16(hd.Xid)}, hd.Xid)
				return true
			}
			if _, ok := m.(*openflow.TableStatsRequest); ok {
				f.send(&openflow.ErrorMsg{ErrType: openflow.ErrTypeBadRequest, Code: 1}, hd.Xid)
				return true
			}
			return false
		}
	})
	h.nextFake()
	h.waitConnected()
	ctx := context.Background()
	for range 3 {
		next := uint16(h.sw.xid.Load() + 1)
		m, err := h.sw.Request(ctx, &openflow.GetConfigRequest{})
		if err != nil {
			t.Fatal(err)
		}
		if got := m.(*openflow.GetConfigReply).MissSendLen; got != next {
			t.Errorf("reply for xid %d carried %d", next, got)
		}
	}
	_, err := h.sw.Request(ctx, &openflow.TableStatsRequest{})
	var em *openflow.ErrorMsg
	if !errors.As(err, &em) || em.ErrType != openflow.ErrTypeBadRequest {
		t.Errorf("error reply: got %v, want the *ErrorMsg", err)
	}
}

func TestRequestDeadline(t *testing.T) {
	opts := testOptions()
	opts.RequestTimeout = 100 * time.Millisecond
	var lateXid atomic.Uint32
	h := startHarness(t, opts, func(f *fakeSwitch) {
		f.handle = func(f *fakeSwitch, hd openflow.Header, m openflow.Message) bool {
			_, ok := m.(*openflow.GetConfigRequest)
			if ok {
				lateXid.Store(hd.Xid) // never answered in time
			}
			return ok
		}
	})
	f := h.nextFake()
	h.waitConnected()

	start := time.Now()
	_, err := h.sw.Request(context.Background(), &openflow.GetConfigRequest{})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Request = %v, want deadline exceeded", err)
	}
	if d := time.Since(start); d < 90*time.Millisecond || d > 2*time.Second {
		t.Errorf("gave up after %s, want ~100ms", d)
	}
	// A caller's shorter context wins too.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if _, err := h.sw.Request(ctx, &openflow.GetConfigRequest{}); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Request with short ctx = %v", err)
	}
	// The connection is fine; the late reply is counted, not misdelivered.
	if err := h.sw.Barrier(context.Background()); err != nil {
		t.Fatal(err)
	}
	f.send(&openflow.GetConfigReply{}, lateXid.Load())
	poll(t, "late reply counted", func() bool { return h.sw.Stats().UnmatchedReplies == 1 })
	if !h.sw.Connected() {
		t.Error("connection dropped after a request timed out")
	}
}

func TestEchoDetectsDeadPeer(t *testing.T) {
	opts := testOptions()
	opts.EchoInterval = 30 * time.Millisecond
	opts.EchoTimeout = 100 * time.Millisecond
	var first atomic.Bool
	h := startHarness(t, opts, func(f *fakeSwitch) {
		// The first switch stops answering echoes; the second is fine.
		if first.CompareAndSwap(false, true) {
			f.ignoreEcho.Store(true)
		}
	})
	f1 := h.nextFake()
	h.waitConnected()
	select {
	case <-f1.done:
	case <-time.After(3 * time.Second):
		t.Fatal("dead peer not detected")
	}
	h.nextFake()
	poll(t, "reconnect", func() bool { return h.sw.Stats().Reconnects == 1 && h.sw.Connected() })
	st := h.sw.Stats()
	if st.EchoTimeouts != 1 || st.Disconnects != 1 {
		t.Errorf("stats %+v, want 1 echo timeout and 1 disconnect", st)
	}
	// The healthy switch answers echoes: it stays connected well past
	// several echo timeouts.
	time.Sleep(400 * time.Millisecond)
	if st := h.sw.Stats(); st.EchoTimeouts != 1 || !st.Connected {
		t.Errorf("healthy switch dropped: %+v", st)
	}
}

func TestSwitchEchoRequestsAnswered(t *testing.T) {
	got := make(chan []byte, 1)
	h := startHarness(t, testOptions(), func(f *fakeSwitch) {
		f.handle = func(f *fakeSwitch, hd openflow.Header, m openflow.Message) bool {
			if r, ok := m.(*openflow.EchoReply); ok && hd.Xid == 77 {
				got <- r.Data
			}
			return false
		}
	})
	f := h.nextFake()
	h.waitConnected()
	f.send(&openflow.EchoRequest{Data: []byte("ping")}, 77)
	select {
	case d := <-got:
		if string(d) != "ping" {
			t.Errorf("echo reply data %q", d)
		}
	case <-time.After(3 * time.Second):
		t.Fatal("switch's ECHO_REQUEST not answered")
	}
}

func TestQueueOverflowDropsWithoutBlocking(t *testing.T) {
	opts := testOptions()
	opts.QueueLen = 2
	release := make(chan struct{})
	var handled, removed atomic.Int32
	opts.OnPacketIn = func(*openflow.PacketIn2) {
		<-release // a stuck handler
		handled.Add(1)
	}
	opts.OnFlowRemoved = func(*openflow.FlowRemoved) { removed.Add(1) }
	h := startHarness(t, opts, nil)
	f := h.nextFake()
	h.waitConnected()
	defer close(release)

	const flood = 500
	for i := range flood {
		if err := f.send(&openflow.PacketIn2{Packet: make([]byte, 64), Cookie: uint64(i)}, 0); err != nil {
			t.Fatal(err)
		}
	}
	f.send(&openflow.FlowRemoved{Cookie: 1}, 0)
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := h.sw.Barrier(ctx); err != nil {
		t.Fatalf("barrier behind a packet-in flood: %v", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("barrier took %s behind the flood", d)
	}
	// Flow-removed has its own queue: delivered though packet-ins are stuck.
	poll(t, "flow removed delivered", func() bool { return removed.Load() == 1 })
	st := h.sw.Stats()
	// At most QueueLen queued plus one in the handler.
	if st.PacketIns != flood || st.PacketInsDropped < flood-3 {
		t.Errorf("stats %+v, want %d packet-ins with >= %d dropped", st, flood, flood-3)
	}
	if st.FlowRemovedDropped != 0 {
		t.Errorf("flow-removed dropped: %+v", st)
	}
}

func TestMalformedAndUnknownMessages(t *testing.T) {
	opts := testOptions()
	var pins atomic.Int32
	opts.OnPacketIn = func(*openflow.PacketIn2) { pins.Add(1) }
	var malformedXid atomic.Uint32
	h := startHarness(t, opts, func(f *fakeSwitch) {
		f.handle = func(f *fakeSwitch, hd openflow.Header, m openflow.Message) bool {
			if _, ok := m.(*openflow.GetConfigRequest); ok {
				malformedXid.Store(hd.Xid)
				// A GET_CONFIG_REPLY too short to decode.
				f.sendRaw(rawMessage(4, openflow.TypeGetConfigReply, hd.Xid, []byte{1}))
				return true
			}
			return false
		}
	})
	f := h.nextFake()
	h.waitConnected()

	bad := [][]byte{
		rawMessage(4, 99, 5, []byte("what is this")),                                                         // unknown type
		rawMessage(4, openflow.TypeExperimenter, 6, []byte{0, 0, 0x23, 0x20, 0, 0, 0, 99}),                   // unknown NX subtype
		rawMessage(4, openflow.TypeFeaturesReply, 7, []byte{1, 2, 3}),                                        // truncated
		rawMessage(4, openflow.TypeFlowRemoved, 0, make([]byte, 41)),                                         // bad match
		rawMessage(4, openflow.TypeExperimenter, 0, []byte{0, 0, 0x23, 0x20, 0, 0, 0, 30, 0, 0, 0xff, 0xff}), // packet-in2 with a lying property length
		rawMessage(4, openflow.TypeMultipartReply, 9, []byte{0}),                                             // truncated multipart
		rawMessage(2, openflow.TypeBarrierReply, 10, nil),                                                    // wrong version
	}
	for _, b := range bad {
		if err := f.sendRaw(b); err != nil {
			t.Fatal(err)
		}
	}
	f.send(&openflow.PacketIn2{Packet: []byte{1}}, 0)
	if err := h.sw.Barrier(context.Background()); err != nil {
		t.Fatalf("connection unusable after malformed input: %v", err)
	}
	poll(t, "good packet-in after the bad ones", func() bool { return pins.Load() == 1 })
	st := h.sw.Stats()
	if st.Unknown != 2 || st.DecodeErrors != 5 {
		t.Errorf("stats %+v, want 2 unknown and 5 decode errors", st)
	}
	// A malformed reply to a pending request fails it at once.
	start := time.Now()
	_, err := h.sw.Request(context.Background(), &openflow.GetConfigRequest{})
	if err == nil || !strings.Contains(err.Error(), "malformed") || time.Since(start) > time.Second {
		t.Errorf("Request with a malformed reply = %v after %s", err, time.Since(start))
	}
	if !h.sw.Connected() || h.sw.Stats().Reconnects != 0 {
		t.Error("malformed input dropped the connection")
	}
}

func TestMultipartReassembly(t *testing.T) {
	const nflows = 300
	var entries [][]byte
	for i := range nflows {
		fs := openflow.FlowStats{Table: uint8(i % 4), Priority: uint16(i), Cookie: uint64(i), PacketCount: uint64(i * 10)}
		b, err := fs.AppendTo(nil)
		if err != nil {
			t.Fatal(err)
		}
		entries = append(entries, b)
	}
	parts := openflow.MultipartReplyParts(openflow.MultipartFlow, entries, 2000)
	if len(parts) < 3 {
		t.Fatalf("want several parts, got %d", len(parts))
	}
	opts := testOptions()
	var pins atomic.Int32
	opts.OnPacketIn = func(*openflow.PacketIn2) { pins.Add(1) }
	h := startHarness(t, opts, func(f *fakeSwitch) {
		f.handle = func(f *fakeSwitch, hd openflow.Header, m openflow.Message) bool {
			switch m.(type) {
			case *openflow.FlowStatsRequest:
				for _, p := range parts {
					f.send(p, hd.Xid)
					// Async traffic and another xid's reply between parts.
					f.send(&openflow.PacketIn2{Packet: []byte{1}}, 0)
					f.send(&openflow.MultipartReply{MPType: openflow.MultipartFlow, Flags: 1, Body: entries[0]}, hd.Xid+1)
				}
				return true
			case *openflow.PortStatsRequest:
				f.send(&openflow.MultipartReply{MPType: openflow.MultipartPortStats, Flags: 1}, hd.Xid)
				f.send(&openflow.ErrorMsg{ErrType: openflow.ErrTypeBadRequest, Code: 2}, hd.Xid)
				return true
			}
			return false
		}
	})
	h.nextFake()
	h.waitConnected()
	flows, err := h.sw.FlowStats(context.Background(), &openflow.FlowStatsRequest{Table: openflow.TableAll, OutPort: openflow.PortAny, OutGroup: openflow.GroupAny})
	if err != nil {
		t.Fatal(err)
	}
	if len(flows) != nflows {
		t.Fatalf("got %d flows, want %d", len(flows), nflows)
	}
	for i, fs := range flows {
		if fs.Cookie != uint64(i) || fs.PacketCount != uint64(i*10) || fs.Priority != uint16(i) {
			t.Fatalf("flow %d: %+v", i, fs)
		}
	}
	poll(t, "packet-ins between the parts", func() bool { return pins.Load() == int32(len(parts)) })
	// An error in the middle of a multipart reply fails the request.
	_, err = h.sw.PortStats(context.Background(), openflow.PortAny)
	var em *openflow.ErrorMsg
	if !errors.As(err, &em) {
		t.Errorf("PortStats with an error part = %v", err)
	}
}

func TestHandlerPanicIsContained(t *testing.T) {
	opts := testOptions()
	var calls atomic.Int32
	opts.OnPortStatus = func(m *openflow.PortStatus) {
		if calls.Add(1) == 1 {
			panic("handler bug")
		}
	}
	h := startHarness(t, opts, nil)
	f := h.nextFake()
	h.waitConnected()
	f.send(&openflow.PortStatus{Reason: openflow.PortAdded}, 0)
	f.send(&openflow.PortStatus{Reason: openflow.PortDeleted}, 0)
	poll(t, "second port status", func() bool { return calls.Load() == 2 })
	if st := h.sw.Stats(); st.HandlerPanics != 1 || !st.Connected {
		t.Errorf("stats %+v", st)
	}
}

func TestAsyncErrorsAndSend(t *testing.T) {
	opts := testOptions()
	got := make(chan *openflow.ErrorMsg, 1)
	opts.OnAsyncError = func(e *openflow.ErrorMsg) { got <- e }
	h := startHarness(t, opts, func(f *fakeSwitch) {
		f.handle = func(f *fakeSwitch, hd openflow.Header, m openflow.Message) bool {
			if _, ok := m.(*openflow.PacketOut); ok {
				f.send(&openflow.ErrorMsg{ErrType: openflow.ErrTypeBadRequest, Code: 12}, hd.Xid)
				return true
			}
			return false
		}
	})
	h.nextFake()
	h.waitConnected()
	if err := h.sw.Send(&openflow.PacketOut{BufferID: openflow.NoBuffer, InPort: openflow.PortController, Data: []byte{1, 2}}); err != nil {
		t.Fatal(err)
	}
	select {
	case e := <-got:
		if e.CodeName() != "OFPBRC_BAD_PACKET" {
			t.Errorf("async error %v", e)
		}
	case <-time.After(3 * time.Second):
		t.Fatal("error for a sent message not delivered to OnAsyncError")
	}
}

func TestNotConnected(t *testing.T) {
	s := New("unix:/nonexistent/keyroute-test.mgmt", testOptions())
	if err := s.Barrier(context.Background()); !errors.Is(err, ErrNotConnected) {
		t.Errorf("Barrier = %v, want ErrNotConnected", err)
	}
	if err := s.Send(&openflow.BarrierRequest{}); !errors.Is(err, ErrNotConnected) {
		t.Errorf("Send = %v, want ErrNotConnected", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	done := make(chan error)
	go func() { done <- s.Run(ctx) }()
	wctx, wcancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer wcancel()
	err := s.WaitConnected(wctx)
	if err == nil || !strings.Contains(err.Error(), "/nonexistent/keyroute-test.mgmt") {
		t.Errorf("WaitConnected = %v, want the dial error", err)
	}
	if err := <-done; err != nil {
		t.Errorf("Run after cancel = %v", err)
	}
}

func TestConnectionLostFailsPendingRequests(t *testing.T) {
	h := startHarness(t, testOptions(), func(f *fakeSwitch) {
		f.handle = func(f *fakeSwitch, hd openflow.Header, m openflow.Message) bool {
			if _, ok := m.(*openflow.GetConfigRequest); ok {
				f.nc.Close()
				return true
			}
			return false
		}
	})
	h.nextFake()
	h.waitConnected()
	_, err := h.sw.Request(context.Background(), &openflow.GetConfigRequest{})
	if !errors.Is(err, ErrConnectionLost) {
		t.Errorf("Request = %v, want ErrConnectionLost", err)
	}
	h.nextFake()
	poll(t, "reconnect", func() bool { return h.sw.Stats().Reconnects == 1 })
}

func TestListenReusesSwitchPerDatapath(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	opts := testOptions()
	var connects atomic.Int32
	opts.OnConnected = func(ctx context.Context, s *Switch) error { connects.Add(1); return nil }
	switches := make(chan *Switch, 4)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- serveListener(ctx, ln, opts, func(s *Switch) { switches <- s }) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Listen: %v", err)
		}
	}()

	dialFake := func(dpid uint64) *fakeSwitch {
		nc, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		f := newFake(t, nc)
		f.dpid = dpid
		go f.serve()
		return f
	}
	f1 := dialFake(1)
	var s1 *Switch
	select {
	case s1 = <-switches:
	case <-time.After(5 * time.Second):
		t.Fatal("onSwitch not called")
	}
	wctx, wcancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer wcancel()
	if err := s1.WaitConnected(wctx); err != nil {
		t.Fatal(err)
	}
	if s1.DatapathID() != 1 {
		t.Errorf("dpid %x", s1.DatapathID())
	}
	if err := s1.Run(ctx); err == nil {
		t.Error("Run on a passive switch accepted")
	}
	// The same bridge reconnects: same Switch, OnConnected again.
	f1.nc.Close()
	dialFake(1)
	poll(t, "second OnConnected", func() bool { return connects.Load() == 2 && s1.Connected() })
	// Another bridge: a new Switch.
	dialFake(2)
	select {
	case s2 := <-switches:
		if s2 == s1 || s2.DatapathID() != 2 {
			t.Errorf("second bridge got switch %p dpid %x", s2, s2.DatapathID())
		}
	case <-time.After(5 * time.Second):
		t.Fatal("onSwitch not called for the second bridge")
	}
	select {
	case s := <-switches:
		t.Errorf("onSwitch called again for dpid %x", s.DatapathID())
	default:
	}
}

func TestXidsSkipZero(t *testing.T) {
	s := New("fake", testOptions())
	s.xid.Store(^uint32(0) - 2)
	if got := s.xidBlock(5); got == 0 || got+4 < got {
		t.Errorf("block across the wrap starts at %d", got)
	}
	s.xid.Store(^uint32(0))
	if got := s.nextXid(); got != 1 {
		t.Errorf("xid after 0xffffffff = %d, want 1", got)
	}
}
