package controller

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/keyroute/keyroute/openflow"
)

// maxMultipartBody bounds one reassembled multipart reply, so a switch
// that never clears the "more" flag cannot exhaust memory. A dump of a
// million flows fits.
const maxMultipartBody = 512 << 20

// writeChunk is how many bytes of pipelined messages are written under the
// write lock at a time, so echoes and other requests interleave with a
// large install.
const writeChunk = 64 << 10

// result is what a waiter receives: a reply, or an error (an *ErrorMsg
// from the switch, a decode error, a reassembly failure).
type result struct {
	msg  openflow.Message
	body []byte // reassembled multipart body
	err  error
}

// waiter is a pending request waiting for the reply with its xid.
type waiter struct {
	ch        chan result // buffered 1: delivery never blocks the read loop
	multipart bool
	body      []byte
}

// collector gathers every message whose xid falls in [base, base+n): the
// errors of a pipelined install and the replies of a bundle's messages.
type collector struct {
	base, n uint32
	notify  chan struct{} // buffered 1: poked on every arrival

	mu  sync.Mutex
	got map[uint32][]openflow.Message // by offset from base
}

func (col *collector) add(off uint32, m openflow.Message) {
	col.mu.Lock()
	col.got[off] = append(col.got[off], m)
	col.mu.Unlock()
	select {
	case col.notify <- struct{}{}:
	default:
	}
}

func (col *collector) get(off uint32) []openflow.Message {
	col.mu.Lock()
	defer col.mu.Unlock()
	return col.got[off]
}

// errorsIn returns the ERROR messages at offsets [from, to), by offset.
func (col *collector) errorsIn(from, to uint32) map[uint32]*openflow.ErrorMsg {
	col.mu.Lock()
	defer col.mu.Unlock()
	out := map[uint32]*openflow.ErrorMsg{}
	for off, ms := range col.got {
		if off < from || off >= to {
			continue
		}
		for _, m := range ms {
			if e, ok := m.(*openflow.ErrorMsg); ok {
				if _, dup := out[off]; !dup {
					out[off] = e
				}
			}
		}
	}
	return out
}

// conn is one OpenFlow connection to the switch.
type conn struct {
	s  *Switch
	nc net.Conn
	r  *openflow.Reader

	wsem     chan struct{} // write lock that a context can abandon
	echoOut  chan []byte   // ECHO_REPLYs for the keepalive goroutine to write
	done     chan struct{} // closed when the connection is dead
	readDone chan struct{}
	once     sync.Once
	err      error // why it died; read only after done is closed

	pmu        sync.Mutex
	pending    map[uint32]*waiter
	collectors []*collector
}

func newConn(s *Switch, nc net.Conn, r *openflow.Reader) *conn {
	return &conn{
		s: s, nc: nc, r: r,
		wsem:     make(chan struct{}, 1),
		echoOut:  make(chan []byte, 16),
		done:     make(chan struct{}),
		readDone: make(chan struct{}),
		pending:  map[uint32]*waiter{},
	}
}

func (c *conn) close(err error) {
	c.once.Do(func() {
		if err == nil {
			err = ErrConnectionLost
		}
		c.err = err
		c.nc.Close()
		close(c.done)
	})
}

// dead reports whether the connection has died.
func (c *conn) dead() bool {
	select {
	case <-c.done:
		return true
	default:
		return false
	}
}

// lost is the error for a request cut short by the connection dying.
func (c *conn) lost() error {
	if errors.Is(c.err, ErrConnectionLost) {
		return c.err
	}
	return fmt.Errorf("%w: %w", ErrConnectionLost, c.err)
}

// write writes b whole under the write lock. A failed or timed-out write
// leaves the stream mid-message, so it kills the connection.
func (c *conn) write(ctx context.Context, b []byte) error {
	select {
	case c.wsem <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	case <-c.done:
		return c.lost()
	}
	defer func() { <-c.wsem }()
	c.nc.SetWriteDeadline(time.Now().Add(c.s.opts.RequestTimeout))
	if _, err := c.nc.Write(b); err != nil {
		err = fmt.Errorf("write to switch: %w", err)
		c.close(err)
		return err
	}
	return nil
}

// writeMessages writes the encoded messages in buf (ends[i] is where
// message i ends) in chunks of whole messages.
func (c *conn) writeMessages(ctx context.Context, buf []byte, ends []int) error {
	start := 0
	for i, end := range ends {
		if end-start >= writeChunk || i == len(ends)-1 {
			if err := c.write(ctx, buf[start:end]); err != nil {
				return err
			}
			start = end
		}
	}
	return nil
}

func (c *conn) addWaiter(xid uint32, w *waiter) {
	c.pmu.Lock()
	c.pending[xid] = w
	c.pmu.Unlock()
}

func (c *conn) removeWaiter(xid uint32) {
	c.pmu.Lock()
	delete(c.pending, xid)
	c.pmu.Unlock()
}

func (c *conn) addCollector(base uint32, n int) *collector {
	col := &collector{base: base, n: uint32(n), notify: make(chan struct{}, 1), got: map[uint32][]openflow.Message{}}
	c.pmu.Lock()
	c.collectors = append(c.collectors, col)
	c.pmu.Unlock()
	return col
}

func (c *conn) removeCollector(col *collector) {
	c.pmu.Lock()
	defer c.pmu.Unlock()
	for i, x := range c.collectors {
		if x == col {
			c.collectors = append(c.collectors[:i], c.collectors[i+1:]...)
			return
		}
	}
}

// await waits until the collector has a message at offset off, for at most
// RequestTimeout.
func (c *conn) await(ctx context.Context, col *collector, off uint32, what string) error {
	t := time.NewTimer(c.s.opts.RequestTimeout)
	defer t.Stop()
	for len(col.get(off)) == 0 {
		select {
		case <-col.notify:
		case <-ctx.Done():
			return fmt.Errorf("wait for %s: %w", what, ctx.Err())
		case <-c.done:
			return fmt.Errorf("wait for %s: %w", what, c.lost())
		case <-t.C:
			return fmt.Errorf("wait for %s: no reply within %s: %w", what, c.s.opts.RequestTimeout, context.DeadlineExceeded)
		}
	}
	return nil
}

// roundTrip sends msg and waits for the reply with its xid (all parts of
// it, for a multipart request).
func (c *conn) roundTrip(ctx context.Context, msg openflow.Message, multipart bool) (result, error) {
	ctx, cancel := context.WithTimeout(ctx, c.s.opts.RequestTimeout)
	defer cancel()
	xid := c.s.nextXid()
	b, err := openflow.Marshal(msg, xid)
	if err != nil {
		return result{}, err
	}
	w := &waiter{ch: make(chan result, 1), multipart: multipart}
	c.addWaiter(xid, w)
	defer c.removeWaiter(xid)
	if err := c.write(ctx, b); err != nil {
		return result{}, fmt.Errorf("send %s: %w", msgName(msg), err)
	}
	select {
	case r := <-w.ch:
		return r, r.err
	case <-ctx.Done():
		return result{}, fmt.Errorf("%s xid=0x%x: no reply: %w", msgName(msg), xid, ctx.Err())
	case <-c.done:
		return result{}, fmt.Errorf("%s xid=0x%x: %w", msgName(msg), xid, c.lost())
	}
}

// msgName names a message for errors: its type, or its Go type for
// experimenter messages.
func msgName(m openflow.Message) string {
	if m.Type() == openflow.TypeExperimenter {
		return strings.TrimPrefix(fmt.Sprintf("%T", m), "*openflow.")
	}
	return m.Type().String()
}

// readLoop reads and dispatches messages until the connection dies.
func (c *conn) readLoop() {
	defer close(c.readDone)
	for {
		raw, err := c.r.ReadRaw()
		if err != nil {
			c.close(fmt.Errorf("read from switch: %w", err))
			return
		}
		c.handle(raw)
	}
}

// decodeSafe is openflow.Decode that turns a decoder panic into an error:
// nothing the switch sends may crash the agent.
func decodeSafe(raw []byte) (h openflow.Header, m openflow.Message, err error) {
	h, _ = openflow.ParseHeader(raw)
	defer func() {
		if r := recover(); r != nil {
			m, err = nil, fmt.Errorf("decoder panicked: %v", r)
		}
	}()
	h, m, err = openflow.Decode(raw)
	return h, m, err
}

func (c *conn) handle(raw []byte) {
	s := c.s
	h, m, err := decodeSafe(raw)
	if err != nil {
		s.cnt.decodeErrors.Add(1)
		s.logDecode.do(func(suppressed uint64) {
			s.log.Warn("malformed message from switch", "type", h.Type, "xid", h.Xid, "len", len(raw), "err", err, "suppressed", suppressed)
		})
		c.deliver(h.Xid, nil, fmt.Errorf("malformed %s reply: %w", h.Type, err))
		return
	}
	switch m := m.(type) {
	case *openflow.EchoRequest:
		if b, err := openflow.Marshal(&openflow.EchoReply{Data: m.Data}, h.Xid); err == nil {
			select {
			case c.echoOut <- b:
			default: // a switch flooding echo requests gets some unanswered
			}
		}
	case *openflow.PacketIn2:
		s.packetIns.push(m)
	case *openflow.FlowRemoved:
		s.flowRemoved.push(m)
	case *openflow.PortStatus:
		s.portStatus.push(m)
	case *openflow.Hello:
		// A repeated HELLO carries nothing new.
	case *openflow.Unknown, *openflow.PacketIn:
		// keyroute asked for NXT_PACKET_IN2, so a plain PACKET_IN is as
		// unexpected as a message type it does not know.
		s.cnt.unknown.Add(1)
		s.logUnknown.do(func(suppressed uint64) {
			s.log.Warn("unhandled message from switch", "type", h.Type, "xid", h.Xid, "len", len(raw), "suppressed", suppressed)
		})
	case *openflow.ErrorMsg:
		if !c.deliver(h.Xid, m, nil) {
			s.asyncErrors.push(m)
		}
	default:
		if !c.deliver(h.Xid, m, nil) {
			s.cnt.unmatched.Add(1)
			s.logUnmatched.do(func(suppressed uint64) {
				s.log.Info("reply nobody waits for (request timed out?)", "type", h.Type, "xid", h.Xid, "suppressed", suppressed)
			})
		}
	}
}

// deliver hands a reply (or a decode error) to whoever waits for xid and
// reports whether anybody did.
func (c *conn) deliver(xid uint32, m openflow.Message, decodeErr error) bool {
	if xid == 0 {
		return false
	}
	c.pmu.Lock()
	defer c.pmu.Unlock()
	if w, ok := c.pending[xid]; ok {
		switch mp := m.(type) {
		case *openflow.MultipartReply:
			if w.multipart {
				if len(w.body)+len(mp.Body) > maxMultipartBody {
					delete(c.pending, xid)
					w.ch <- result{err: fmt.Errorf("multipart reply exceeds %d bytes", maxMultipartBody)}
					return true
				}
				if w.body == nil && !mp.More() {
					w.body = mp.Body // single part: no copy
				} else {
					w.body = append(w.body, mp.Body...)
				}
				if mp.More() {
					return true
				}
				delete(c.pending, xid)
				w.ch <- result{msg: mp, body: w.body}
				return true
			}
		case *openflow.ErrorMsg:
			delete(c.pending, xid)
			w.ch <- result{err: mp}
			return true
		}
		delete(c.pending, xid)
		if decodeErr != nil {
			w.ch <- result{err: decodeErr}
		} else {
			w.ch <- result{msg: m}
		}
		return true
	}
	for _, col := range c.collectors {
		if off := xid - col.base; off < col.n {
			if m == nil {
				// Malformed: record that something came, so a wait on
				// this xid ends instead of timing out.
				m = &openflow.Unknown{}
			}
			col.add(off, m)
			return true
		}
	}
	return false
}

// keepalive probes the switch with ECHO_REQUESTs, declares it dead when
// one goes unanswered for EchoTimeout, and writes ECHO_REPLYs.
func (c *conn) keepalive() {
	s := c.s
	tick := time.NewTicker(s.opts.EchoInterval)
	defer tick.Stop()
	var (
		xid      uint32
		replied  chan result
		deadline <-chan time.Time
	)
	for {
		select {
		case <-c.done:
			return
		case b := <-c.echoOut:
			if c.write(context.Background(), b) != nil {
				return
			}
		case <-tick.C:
			if replied != nil {
				continue
			}
			xid = s.nextXid()
			b, _ := openflow.Marshal(&openflow.EchoRequest{}, xid)
			w := &waiter{ch: make(chan result, 1)}
			c.addWaiter(xid, w)
			if c.write(context.Background(), b) != nil {
				return
			}
			// The clock starts once the request is on the wire: a long
			// install ahead of it in our own write queue is not the
			// switch's fault.
			replied, deadline = w.ch, time.After(s.opts.EchoTimeout)
		case <-replied:
			replied, deadline = nil, nil
		case <-deadline:
			c.removeWaiter(xid)
			s.cnt.echoTimeouts.Add(1)
			c.close(fmt.Errorf("%w (%s)", ErrEchoTimeout, s.opts.EchoTimeout))
			return
		}
	}
}

// preHandshake exchanges HELLOs and FEATURES on a fresh connection, before
// the read loop runs (Listen needs the datapath id to pick the Switch).
func preHandshake(nc net.Conn, r *openflow.Reader, timeout time.Duration, nextXid func() uint32) (*openflow.FeaturesReply, error) {
	nc.SetDeadline(time.Now().Add(timeout))
	defer nc.SetDeadline(time.Time{})
	b, err := openflow.Marshal(openflow.NewHello(), nextXid())
	if err != nil {
		return nil, err
	}
	if _, err := nc.Write(b); err != nil {
		return nil, fmt.Errorf("send HELLO: %w", err)
	}
	raw, err := r.ReadRaw()
	if err != nil {
		return nil, fmt.Errorf("read HELLO: %w", err)
	}
	h, m, err := decodeSafe(raw)
	if err != nil {
		return nil, fmt.Errorf("decode the switch's HELLO: %w", err)
	}
	switch m := m.(type) {
	case *openflow.Hello:
		if !m.Supports13() {
			e := &openflow.ErrorMsg{ErrType: openflow.ErrTypeHelloFailed, Data: []byte("keyroute speaks only OpenFlow 1.3")}
			if b, err := openflow.Marshal(e, h.Xid); err == nil {
				nc.Write(b)
			}
			return nil, fmt.Errorf("%w: it offers %s (set protocols=OpenFlow13 on the bridge)", ErrVersion, versionList(m.Versions))
		}
	case *openflow.ErrorMsg:
		return nil, fmt.Errorf("switch rejected our HELLO: %w", m)
	default:
		return nil, fmt.Errorf("expected HELLO, got %s", h.Type)
	}

	xid := nextXid()
	if b, err = openflow.Marshal(&openflow.FeaturesRequest{}, xid); err != nil {
		return nil, err
	}
	if _, err := nc.Write(b); err != nil {
		return nil, fmt.Errorf("send FEATURES_REQUEST: %w", err)
	}
	for {
		raw, err := r.ReadRaw()
		if err != nil {
			return nil, fmt.Errorf("read FEATURES_REPLY: %w", err)
		}
		h, m, err := decodeSafe(raw)
		if err != nil {
			if h.Xid == xid {
				return nil, fmt.Errorf("decode FEATURES_REPLY: %w", err)
			}
			continue
		}
		switch m := m.(type) {
		case *openflow.FeaturesReply:
			if h.Xid == xid {
				return m, nil
			}
		case *openflow.ErrorMsg:
			if h.Xid == xid {
				return nil, fmt.Errorf("FEATURES_REQUEST: %w", m)
			}
		case *openflow.EchoRequest:
			if b, err := openflow.Marshal(&openflow.EchoReply{Data: m.Data}, h.Xid); err == nil {
				if _, err := nc.Write(b); err != nil {
					return nil, fmt.Errorf("send ECHO_REPLY: %w", err)
				}
			}
		}
		// Anything else before FEATURES_REPLY is of no use yet.
	}
}

func versionList(vs []uint8) string {
	if len(vs) == 0 {
		return "no version"
	}
	names := make([]string, len(vs))
	for i, v := range vs {
		if v >= 1 && v <= 7 {
			names[i] = fmt.Sprintf("OpenFlow 1.%d", v-1)
		} else {
			names[i] = fmt.Sprintf("version 0x%02x", v)
		}
	}
	return strings.Join(names, ", ")
}

// attach runs a connection whose HELLO and FEATURES are done: it starts the
// read loop and keepalive, finishes the handshake, runs OnConnected and the
// replay, marks the switch connected and returns when the connection dies
// or ctx ends.
func (s *Switch) attach(ctx context.Context, nc net.Conn, r *openflow.Reader, feat *openflow.FeaturesReply) (handshook bool, err error) {
	s.attachMu.Lock()
	defer s.attachMu.Unlock()
	c := newConn(s, nc, r)
	stop := context.AfterFunc(ctx, func() { c.close(ctx.Err()) })
	defer stop()
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		<-c.done
		cancel()
	}()
	go c.readLoop()
	go c.keepalive()

	s.dpid.Store(feat.DatapathID)
	// Nothing is known to be applied on c until its replay succeeds.
	s.forgetReplay()
	s.setState(c, false)
	if err := s.setup(cctx, c); err != nil {
		c.close(err)
		<-c.readDone
		s.forgetReplay()
		s.setState(nil, false)
		s.cnt.connectFailures.Add(1)
		return false, fmt.Errorf("set up switch %s (dpid %016x): %w", s.addr, feat.DatapathID, err)
	}
	s.setState(c, true)
	if s.cnt.connects.Add(1) > 1 {
		s.cnt.reconnects.Add(1)
	}
	s.log.Info("switch connected", "dpid", fmt.Sprintf("%016x", feat.DatapathID), "tables", feat.NTables)
	<-c.done
	<-c.readDone
	s.forgetReplay()
	s.setState(nil, false)
	s.cnt.disconnects.Add(1)
	return true, fmt.Errorf("switch %s: %w", s.addr, c.err)
}

// setup finishes the handshake on c: SET_CONFIG and the packet-in format,
// then OnConnected, then the replay of the desired flows.
func (s *Switch) setup(ctx context.Context, c *conn) error {
	msgs := []openflow.Message{
		&openflow.SetConfig{Flags: openflow.ConfigFragNormal, MissSendLen: s.opts.MissSendLen},
		&openflow.SetPacketInFormat{Format: openflow.PacketInFormatNXT2},
	}
	// Neither has a reply: the barrier behind them says they were taken.
	rejected, err := c.pipeline(ctx, msgs)
	if err != nil {
		return err
	}
	for i, e := range rejected {
		return fmt.Errorf("switch rejected %s: %w", msgName(msgs[i]), e)
	}
	if s.opts.OnConnected != nil {
		if err := s.callOnConnected(ctx); err != nil {
			return fmt.Errorf("OnConnected: %w", err)
		}
	}
	return s.replay(ctx, c)
}

func (s *Switch) callOnConnected(ctx context.Context) (err error) {
	defer func() {
		if r := recover(); r != nil {
			s.cnt.handlerPanics.Add(1)
			err = fmt.Errorf("panicked: %v", r)
		}
	}()
	return s.opts.OnConnected(ctx, s)
}

// pipeline writes msgs back to back, then a barrier, and returns the
// switch's ERROR for each rejected message by index. It is how flows are
// installed fast: one round trip for any number of messages.
func (c *conn) pipeline(ctx context.Context, msgs []openflow.Message) (map[int]*openflow.ErrorMsg, error) {
	n := len(msgs)
	base := c.s.xidBlock(n + 1)
	buf := make([]byte, 0, 64*(n+1))
	ends := make([]int, 0, n+1)
	var err error
	for i, m := range msgs {
		if buf, err = openflow.AppendMessage(buf, m, base+uint32(i)); err != nil {
			return nil, &encodeError{Index: i, Msg: m, Err: err}
		}
		ends = append(ends, len(buf))
	}
	buf, _ = openflow.AppendMessage(buf, &openflow.BarrierRequest{}, base+uint32(n))
	ends = append(ends, len(buf))

	col := c.addCollector(base, n+1)
	defer c.removeCollector(col)
	if err := c.writeMessages(ctx, buf, ends); err != nil {
		return nil, err
	}
	if err := c.await(ctx, col, uint32(n), "barrier"); err != nil {
		return nil, err
	}
	out := map[int]*openflow.ErrorMsg{}
	for off, e := range col.errorsIn(0, uint32(n)) {
		out[int(off)] = e
	}
	return out, nil
}

// encodeError is a message keyroute could not encode; nothing was sent.
type encodeError struct {
	Index int
	Msg   openflow.Message
	Err   error
}

func (e *encodeError) Error() string {
	return fmt.Sprintf("message %d (%s) cannot be encoded, nothing sent: %v", e.Index, msgName(e.Msg), e.Err)
}

func (e *encodeError) Unwrap() error { return e.Err }
