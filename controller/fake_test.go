package controller

import (
	"context"
	"encoding/binary"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keyroute/keyroute/openflow"
)

// fakeSwitch is an in-memory OpenFlow 1.3 switch on one end of a net.Pipe.
// It answers the handshake, echoes, barriers and bundle controls, records
// what it receives, and lets a test take over any message with handle.
type fakeSwitch struct {
	t    testing.TB
	nc   net.Conn
	dpid uint64
	// hello is sent in answer to the controller's HELLO (raw bytes, so a
	// test can send an OpenFlow 1.0 HELLO).
	hello      []byte
	ignoreEcho atomic.Bool
	// handle, if set, sees every message first; true means handled.
	handle func(f *fakeSwitch, h openflow.Header, m openflow.Message) bool
	// rejectCookie: FLOW_MODs (direct or in a bundle) with this cookie
	// get OFPET_BAD_MATCH/OFPBMC_BAD_PREREQ.
	rejectCookie uint64

	wmu sync.Mutex

	mu      sync.Mutex
	got     []openflow.Message
	bundles map[uint32][]openflow.Message // committed bundle contents
	open    map[uint32][]openflow.Message
	flows   []*openflow.FlowMod // FLOW_MODs received outside bundles
	done    chan struct{}
}

func newFake(t testing.TB, nc net.Conn) *fakeSwitch {
	hello, _ := openflow.Marshal(openflow.NewHello(), 1)
	return &fakeSwitch{t: t, nc: nc, dpid: 0xfeed, hello: hello, done: make(chan struct{}),
		bundles: map[uint32][]openflow.Message{}, open: map[uint32][]openflow.Message{}}
}

// send writes m with xid; errors mean the controller went away.
func (f *fakeSwitch) send(m openflow.Message, xid uint32) error {
	b, err := openflow.Marshal(m, xid)
	if err != nil {
		f.t.Errorf("fake switch: marshal %T: %v", m, err)
		return err
	}
	return f.sendRaw(b)
}

func (f *fakeSwitch) sendRaw(b []byte) error {
	f.wmu.Lock()
	defer f.wmu.Unlock()
	f.nc.SetWriteDeadline(time.Now().Add(5 * time.Second))
	_, err := f.nc.Write(b)
	return err
}

func (f *fakeSwitch) received() []openflow.Message {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]openflow.Message(nil), f.got...)
}

func (f *fakeSwitch) committed() map[uint32][]openflow.Message {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := map[uint32][]openflow.Message{}
	for k, v := range f.bundles {
		out[k] = v
	}
	return out
}

func (f *fakeSwitch) reject(m openflow.Message, xid uint32) {
	data, _ := openflow.Marshal(m, xid)
	f.send(&openflow.ErrorMsg{ErrType: openflow.ErrTypeBadMatch, Code: 9, Data: data[:min(len(data), 64)]}, xid)
}

func (f *fakeSwitch) serve() {
	defer close(f.done)
	r := openflow.NewReader(f.nc)
	for {
		h, m, err := r.Read()
		if err != nil {
			if h.Length == 0 {
				return // connection closed
			}
			f.t.Errorf("fake switch: controller sent a malformed %s: %v", h.Type, err)
			continue
		}
		f.mu.Lock()
		f.got = append(f.got, m)
		f.mu.Unlock()
		if f.handle != nil && f.handle(f, h, m) {
			continue
		}
		switch m := m.(type) {
		case *openflow.Hello:
			f.sendRaw(f.hello)
		case *openflow.FeaturesRequest:
			f.send(&openflow.FeaturesReply{DatapathID: f.dpid, NTables: 254, NBuffers: 0}, h.Xid)
		case *openflow.EchoRequest:
			if !f.ignoreEcho.Load() {
				f.send(&openflow.EchoReply{Data: m.Data}, h.Xid)
			}
		case *openflow.BarrierRequest:
			f.send(&openflow.BarrierReply{}, h.Xid)
		case *openflow.FlowMod:
			if f.rejectCookie != 0 && m.Cookie == f.rejectCookie {
				f.reject(m, h.Xid)
				continue
			}
			f.mu.Lock()
			f.flows = append(f.flows, m)
			f.mu.Unlock()
		case *openflow.BundleAdd:
			if m.Xid != h.Xid {
				f.t.Errorf("fake switch: bundle add xid 0x%x, inner xid 0x%x", h.Xid, m.Xid)
			}
			if fm, ok := m.Message.(*openflow.FlowMod); ok && f.rejectCookie != 0 && fm.Cookie == f.rejectCookie {
				f.reject(fm, h.Xid)
				continue
			}
			f.mu.Lock()
			f.open[m.BundleID] = append(f.open[m.BundleID], m.Message)
			f.mu.Unlock()
		case *openflow.BundleControl:
			reply := *m
			f.mu.Lock()
			switch m.CtrlType {
			case openflow.BundleOpenRequest:
				f.open[m.BundleID] = nil
				reply.CtrlType = openflow.BundleOpenReply
			case openflow.BundleCommitRequest:
				f.bundles[m.BundleID] = f.open[m.BundleID]
				delete(f.open, m.BundleID)
				reply.CtrlType = openflow.BundleCommitReply
			case openflow.BundleDiscardRequest:
				delete(f.open, m.BundleID)
				reply.CtrlType = openflow.BundleDiscardReply
			}
			f.mu.Unlock()
			f.send(&reply, h.Xid)
		case *openflow.FlowStatsRequest:
			// An empty flow table.
			f.send(&openflow.MultipartReply{MPType: openflow.MultipartFlow}, h.Xid)
		}
	}
}

// harness runs a Switch whose every dial creates a fresh fake switch.
type harness struct {
	t      testing.TB
	sw     *Switch
	fakes  chan *fakeSwitch
	cfg    func(*fakeSwitch)
	cancel context.CancelFunc
	runErr chan error
}

func testOptions() Options {
	return Options{
		Logger:         slog.New(slog.NewTextHandler(io.Discard, nil)),
		EchoInterval:   time.Hour,
		RequestTimeout: 5 * time.Second,
		BackoffMin:     5 * time.Millisecond,
		BackoffMax:     20 * time.Millisecond,
	}
}

// startHarness starts Run on a Switch dialing fake switches configured by
// cfg (may be nil) and stops it when the test ends.
func startHarness(t testing.TB, opts Options, cfg func(*fakeSwitch)) *harness {
	t.Helper()
	h := &harness{t: t, fakes: make(chan *fakeSwitch, 16), cfg: cfg, runErr: make(chan error, 1)}
	h.sw = New("fake", opts)
	h.sw.dial = func(ctx context.Context) (net.Conn, error) {
		a, b := net.Pipe()
		f := newFake(t, b)
		if h.cfg != nil {
			h.cfg(f)
		}
		go f.serve()
		select {
		case h.fakes <- f:
		default: // a test that reconnects fast need not collect every fake
		}
		return a, nil
	}
	ctx, cancel := context.WithCancel(context.Background())
	h.cancel = cancel
	go func() { h.runErr <- h.sw.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-h.runErr:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(5 * time.Second):
			t.Errorf("Run did not return after cancel")
		}
	})
	return h
}

func (h *harness) nextFake() *fakeSwitch {
	h.t.Helper()
	select {
	case f := <-h.fakes:
		return f
	case <-time.After(5 * time.Second):
		h.t.Fatal("no connection to the fake switch")
		return nil
	}
}

func (h *harness) waitConnected() {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := h.sw.WaitConnected(ctx); err != nil {
		h.t.Fatal(err)
	}
}

// rawMessage builds a message with an arbitrary type and body, bypassing
// the codec, to send malformed input.
func rawMessage(version uint8, typ openflow.MsgType, xid uint32, body []byte) []byte {
	b := make([]byte, 8, 8+len(body))
	b[0], b[1] = version, byte(typ)
	binary.BigEndian.PutUint16(b[2:], uint16(8+len(body)))
	binary.BigEndian.PutUint32(b[4:], xid)
	return append(b, body...)
}

// poll waits up to 5s for cond.
func poll(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}
