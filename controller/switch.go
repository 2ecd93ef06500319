// Package controller owns keyroute's OpenFlow 1.3 connection to one Open
// vSwitch bridge: the handshake, requests matched to replies by xid,
// asynchronous messages (packet-ins, flow-removed, port-status, errors)
// delivered in order through bounded queues, pipelined flow installs and
// bundles, and the desired flow state that is replayed when the connection
// (or ovs-vswitchd) comes back.
package controller

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/keyroute/keyroute/openflow"
)

// Options configure a Switch. Zero values get the defaults named on each
// field.
type Options struct {
	// Logger receives connection events and rate-limited reports of bad
	// messages. Default: slog.Default().
	Logger *slog.Logger
	// EchoInterval is how often an ECHO_REQUEST probes the switch. Default 5s.
	EchoInterval time.Duration
	// EchoTimeout is how long after an ECHO_REQUEST has been written a reply
	// may take before the connection is declared dead. Default 10s.
	EchoTimeout time.Duration
	// RequestTimeout bounds each request (and the barrier ending an install
	// or bundle, counted from its last write) and each write. Default 30s.
	RequestTimeout time.Duration
	// QueueLen bounds each asynchronous message queue (packet-ins,
	// flow-removed, port-status, errors). Default 1024.
	QueueLen int
	// MissSendLen is sent in SET_CONFIG. It must be > 0 or OVS sends no
	// asynchronous messages on a management-socket connection. Default
	// 0xffff (whole packets, no buffering).
	MissSendLen uint16
	// BackoffMin and BackoffMax bound the exponential reconnect delay
	// (with jitter). Defaults 100ms and 10s.
	BackoffMin, BackoffMax time.Duration
	// OwnedCookie tells which flows on the switch keyroute owns: a flow
	// whose cookie it accepts but that no owner desires is deleted by
	// Reconcile and the replay on connect. Nil: nothing is deleted that way.
	OwnedCookie func(cookie uint64) bool
	// OnConnected runs after each handshake, before the desired flows are
	// replayed and before the switch counts as connected. Requests work in
	// it; ctx ends with the connection. An error drops the connection and
	// the switch reconnects after a backoff.
	OnConnected func(ctx context.Context, s *Switch) error
	// Handlers for asynchronous messages, each called from its own
	// goroutine, in arrival order. Nil: the message is counted and dropped.
	OnPacketIn    func(*openflow.PacketIn2)
	OnFlowRemoved func(*openflow.FlowRemoved)
	OnPortStatus  func(*openflow.PortStatus)
	// OnAsyncError gets ERROR messages that answer no pending request
	// (e.g. for a message written with Send).
	OnAsyncError func(*openflow.ErrorMsg)
}

func (o Options) withDefaults() Options {
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.EchoInterval <= 0 {
		o.EchoInterval = 5 * time.Second
	}
	if o.EchoTimeout <= 0 {
		o.EchoTimeout = 10 * time.Second
	}
	if o.RequestTimeout <= 0 {
		o.RequestTimeout = 30 * time.Second
	}
	if o.QueueLen <= 0 {
		o.QueueLen = 1024
	}
	if o.MissSendLen == 0 {
		o.MissSendLen = openflow.MissSendLenNoBuffer
	}
	if o.BackoffMin <= 0 {
		o.BackoffMin = 100 * time.Millisecond
	}
	if o.BackoffMax < o.BackoffMin {
		o.BackoffMax = max(10*time.Second, o.BackoffMin)
	}
	return o
}

// Errors callers may test for with errors.Is.
var (
	// ErrNotConnected: no connection to the switch right now.
	ErrNotConnected = errors.New("not connected to the switch")
	// ErrVersion: the switch does not offer OpenFlow 1.3.
	ErrVersion = errors.New("switch does not speak OpenFlow 1.3")
	// ErrEchoTimeout: the switch stopped answering ECHO_REQUESTs.
	ErrEchoTimeout = errors.New("switch did not answer ECHO_REQUEST in time")
	// ErrConnectionLost: the connection closed while a request was pending.
	ErrConnectionLost = errors.New("connection to the switch lost")
	// ErrNotConfirmed: SetDesiredConfirmed recorded the set but cannot
	// say that all of it is on the switch.
	ErrNotConfirmed = errors.New("desired flows not confirmed on the switch")
)

// Stats are the Switch's counters since New. All counts are cumulative.
type Stats struct {
	Connected  bool
	DatapathID uint64
	// Connects counts completed handshakes; Reconnects those after the
	// first; Disconnects connections that ended after a handshake;
	// ConnectFailures dial or handshake failures.
	Connects, Reconnects, Disconnects, ConnectFailures uint64
	EchoTimeouts                                       uint64
	// Received and dropped (queue full) asynchronous messages.
	PacketIns, PacketInsDropped     uint64
	FlowRemoved, FlowRemovedDropped uint64
	PortStatus, PortStatusDropped   uint64
	AsyncErrors, AsyncErrorsDropped uint64
	// Unknown counts messages keyroute does not handle; DecodeErrors
	// malformed ones; UnmatchedReplies replies whose request had already
	// given up.
	Unknown, DecodeErrors, UnmatchedReplies uint64
	// HandlerPanics counts panics recovered from the On* handlers.
	HandlerPanics uint64
	// ReplayedFlows counts flows the replays on connect added or deleted
	// (0 after reconnecting to a vswitchd whose flows are intact);
	// ReplayFailures replays whose bundle the switch rejected (they are
	// then retried flow by flow).
	ReplayedFlows, ReplayFailures uint64
}

type counters struct {
	connects, reconnects, disconnects, connectFailures, echoTimeouts atomic.Uint64
	packetIns, packetInsDropped                                      atomic.Uint64
	flowRemoved, flowRemovedDropped                                  atomic.Uint64
	portStatus, portStatusDropped                                    atomic.Uint64
	asyncErrors, asyncErrorsDropped                                  atomic.Uint64
	unknown, decodeErrors, unmatched, handlerPanics                  atomic.Uint64
	replayedFlows, replayFailures                                    atomic.Uint64
}

// Switch is keyroute's connection to one bridge. Create it with New and
// drive it with Run (active: keyroute dials the bridge), or get it from
// Listen (passive: the bridge dials keyroute). All methods are safe for
// concurrent use.
type Switch struct {
	addr string
	opts Options
	log  *slog.Logger
	// dial, when set, replaces dialing addr (tests use in-memory pipes).
	dial    func(ctx context.Context) (net.Conn, error)
	passive bool

	xid      atomic.Uint32
	bundleID atomic.Uint32
	dpid     atomic.Uint64
	cnt      counters

	mu        sync.Mutex
	cur       *conn         // set from the end of FEATURES until the connection dies
	connected bool          // handshake, OnConnected and replay done
	stateCh   chan struct{} // closed and replaced whenever connected changes
	lastErr   error
	running   bool
	// attachMu serialises connections: a passive switch whose bridge
	// reconnects waits for the old connection to be torn down.
	attachMu sync.Mutex

	packetIns   *queue[*openflow.PacketIn2]
	flowRemoved *queue[*openflow.FlowRemoved]
	portStatus  *queue[*openflow.PortStatus]
	asyncErrors *queue[*openflow.ErrorMsg]

	// desired flow state, see desired.go.
	desiredMu sync.Mutex
	desired   map[string]*ownerFlows
	keyOwner  map[flowKey]string
	// desiredComplete: Reconcile has run, so the replay may delete.
	desiredComplete bool
	// replayedOn is the connection on which the replay of all owners'
	// desired flows has succeeded; nil from the moment a connection is
	// attached (or goes away) until its replay succeeds. Only on it does
	// a recorded set count as applied (SetDesiredConfirmed).
	replayedOn *conn
	// unsure holds keys of recorded flows that are not known to be on the
	// switch although replayedOn is set: rejected by the replay's
	// flow-by-flow fallback, or sent in a bundle whose outcome is unknown
	// (timeout, cancelled). SetDesiredConfirmed sends them again.
	unsure map[flowKey]struct{}

	logUnknown, logDecode, logUnmatched sometimes
}

// New returns a Switch for the bridge at addr: "unix:/run/openvswitch/br-int.mgmt",
// a bare socket path, or "tcp:host:port". Nothing happens until Run.
func New(addr string, opts Options) *Switch {
	opts = opts.withDefaults()
	s := &Switch{
		addr:     addr,
		opts:     opts,
		log:      opts.Logger.With("switch", addr),
		stateCh:  make(chan struct{}),
		desired:  map[string]*ownerFlows{},
		keyOwner: map[flowKey]string{},
		unsure:   map[flowKey]struct{}{},
	}
	s.packetIns = newQueue(opts.QueueLen, opts.OnPacketIn, &s.cnt.packetIns, &s.cnt.packetInsDropped)
	s.flowRemoved = newQueue(opts.QueueLen, opts.OnFlowRemoved, &s.cnt.flowRemoved, &s.cnt.flowRemovedDropped)
	s.portStatus = newQueue(opts.QueueLen, opts.OnPortStatus, &s.cnt.portStatus, &s.cnt.portStatusDropped)
	s.asyncErrors = newQueue(opts.QueueLen, opts.OnAsyncError, &s.cnt.asyncErrors, &s.cnt.asyncErrorsDropped)
	return s
}

// parseAddr turns "unix:PATH", "PATH" (absolute or with a slash) or
// "tcp:HOST:PORT" into net.Dial arguments.
func parseAddr(addr string) (network, address string, err error) {
	switch {
	case strings.HasPrefix(addr, "unix:"):
		network, address = "unix", strings.TrimPrefix(addr, "unix:")
	case strings.HasPrefix(addr, "tcp:"):
		network, address = "tcp", strings.TrimPrefix(addr, "tcp:")
		if _, _, err := net.SplitHostPort(address); err != nil {
			return "", "", fmt.Errorf("switch address %q: want tcp:HOST:PORT: %w", addr, err)
		}
	case strings.Contains(addr, "/"):
		network, address = "unix", addr
	default:
		return "", "", fmt.Errorf("switch address %q: want unix:PATH, an absolute socket path or tcp:HOST:PORT", addr)
	}
	if address == "" {
		return "", "", fmt.Errorf("switch address %q: empty", addr)
	}
	return network, address, nil
}

// Addr is the address the Switch was created with (for a passive switch,
// the remote address of its first connection).
func (s *Switch) Addr() string { return s.addr }

// DatapathID is the bridge's datapath id from its FEATURES_REPLY (0 before
// the first handshake).
func (s *Switch) DatapathID() uint64 { return s.dpid.Load() }

// Connected reports whether the handshake, OnConnected and the replay of
// the desired flows have completed on the current connection.
func (s *Switch) Connected() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.connected
}

// WaitConnected blocks until the switch is connected or ctx ends; then the
// error names the last connection failure, if any.
func (s *Switch) WaitConnected(ctx context.Context) error {
	for {
		s.mu.Lock()
		ok, ch := s.connected, s.stateCh
		s.mu.Unlock()
		if ok {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			s.mu.Lock()
			last := s.lastErr
			s.mu.Unlock()
			if last != nil {
				return fmt.Errorf("wait for switch %s: %w (last connection error: %w)", s.addr, ctx.Err(), last)
			}
			return fmt.Errorf("wait for switch %s: %w", s.addr, ctx.Err())
		}
	}
}

// Stats returns a snapshot of the counters.
func (s *Switch) Stats() Stats {
	c := &s.cnt
	return Stats{
		Connected: s.Connected(), DatapathID: s.DatapathID(),
		Connects: c.connects.Load(), Reconnects: c.reconnects.Load(), Disconnects: c.disconnects.Load(),
		ConnectFailures: c.connectFailures.Load(), EchoTimeouts: c.echoTimeouts.Load(),
		PacketIns: c.packetIns.Load(), PacketInsDropped: c.packetInsDropped.Load(),
		FlowRemoved: c.flowRemoved.Load(), FlowRemovedDropped: c.flowRemovedDropped.Load(),
		PortStatus: c.portStatus.Load(), PortStatusDropped: c.portStatusDropped.Load(),
		AsyncErrors: c.asyncErrors.Load(), AsyncErrorsDropped: c.asyncErrorsDropped.Load(),
		Unknown: c.unknown.Load(), DecodeErrors: c.decodeErrors.Load(), UnmatchedReplies: c.unmatched.Load(),
		HandlerPanics: c.handlerPanics.Load(), ReplayedFlows: c.replayedFlows.Load(), ReplayFailures: c.replayFailures.Load(),
	}
}

func (s *Switch) nextXid() uint32 { return s.xidBlock(1) }

// xidBlock reserves n consecutive xids and returns the first. Xid 0 is
// never handed out: OVS sends asynchronous messages with xid 0.
func (s *Switch) xidBlock(n int) uint32 {
	for {
		last := s.xid.Add(uint32(n))
		if first := last - uint32(n) + 1; first != 0 && first <= last {
			return first
		}
	}
}

// conn returns the current connection, or ErrNotConnected.
func (s *Switch) conn() (*conn, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cur == nil {
		return nil, fmt.Errorf("switch %s: %w", s.addr, ErrNotConnected)
	}
	return s.cur, nil
}

func (s *Switch) setState(c *conn, connected bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if c == nil && s.cur == nil && !connected && !s.connected {
		return
	}
	s.cur, s.connected = c, connected
	close(s.stateCh)
	s.stateCh = make(chan struct{})
}

func (s *Switch) setLastErr(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.lastErr = err
}

// Run connects to the switch and keeps reconnecting, with exponential
// backoff and jitter, until ctx ends; then it closes the connection, waits
// for the handlers to return and returns nil. It fails at once only for an
// unusable address or when the Switch is already running.
func (s *Switch) Run(ctx context.Context) error {
	if s.passive {
		return fmt.Errorf("switch %s came from Listen: it cannot dial", s.addr)
	}
	dial := s.dial
	if dial == nil {
		network, address, err := parseAddr(s.addr)
		if err != nil {
			return err
		}
		dial = func(ctx context.Context) (net.Conn, error) {
			d := net.Dialer{Timeout: s.opts.RequestTimeout}
			return d.DialContext(ctx, network, address)
		}
	}
	s.mu.Lock()
	if s.running {
		s.mu.Unlock()
		return fmt.Errorf("switch %s: Run called twice", s.addr)
	}
	s.running = true
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		s.running = false
		s.mu.Unlock()
	}()

	stopWorkers := s.startWorkers(ctx)
	defer stopWorkers()

	delay := s.opts.BackoffMin
	for {
		nc, err := dial(ctx)
		if err == nil {
			var handshook bool
			handshook, err = s.serve(ctx, nc)
			if handshook {
				delay = s.opts.BackoffMin
			}
		} else {
			err = fmt.Errorf("connect to switch %s: %w", s.addr, err)
			s.cnt.connectFailures.Add(1)
		}
		if ctx.Err() != nil {
			return nil
		}
		s.setLastErr(err)
		// Full jitter in [delay/2, delay) keeps many agents from
		// reconnecting in lockstep after a shared vswitchd restart.
		wait := delay/2 + rand.N(delay/2+1)
		s.log.Warn("switch connection down, retrying", "err", err, "retry_in", wait.Round(time.Millisecond))
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(wait):
		}
		delay = min(delay*2, s.opts.BackoffMax)
	}
}

// startWorkers runs the handler goroutines until ctx ends; the returned
// function waits for them.
func (s *Switch) startWorkers(ctx context.Context) (wait func()) {
	var wg sync.WaitGroup
	for _, run := range []func(context.Context, *Switch){s.packetIns.run, s.flowRemoved.run, s.portStatus.run, s.asyncErrors.run} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			run(ctx, s)
		}()
	}
	return wg.Wait
}

// serve runs one connection from HELLO until it dies or ctx ends.
// handshook reports whether it got as far as connected.
func (s *Switch) serve(ctx context.Context, nc net.Conn) (handshook bool, err error) {
	r := openflow.NewReader(nc)
	feat, err := preHandshake(nc, r, s.opts.RequestTimeout, s.nextXid)
	if err != nil {
		nc.Close()
		s.cnt.connectFailures.Add(1)
		return false, fmt.Errorf("handshake with switch %s: %w", s.addr, err)
	}
	return s.attach(ctx, nc, r, feat)
}
