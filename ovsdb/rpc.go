package ovsdb

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// message is one JSON-RPC 1.0 message as OVSDB uses it: a request (method +
// id), a notification (method, id null) or a response (result/error + id).
type message struct {
	Method string          `json:"method"`
	Params json.RawMessage `json:"params"`
	ID     json.RawMessage `json:"id"`
	Result json.RawMessage `json:"result"`
	Error  json.RawMessage `json:"error"`
}

func isNull(raw json.RawMessage) bool {
	return len(raw) == 0 || bytes.Equal(bytes.TrimSpace(raw), []byte("null"))
}

func (m *message) isRequest() bool      { return m.Method != "" && !isNull(m.ID) }
func (m *message) isNotification() bool { return m.Method != "" && isNull(m.ID) }

// decodeMessage parses and checks one message from the server.
func decodeMessage(data []byte) (*message, error) {
	var m message
	if err := json.Unmarshal(data, &m); err != nil {
		return nil, fmt.Errorf("decode JSON-RPC message: %w", err)
	}
	if m.Method != "" {
		if isNull(m.Params) {
			m.Params = json.RawMessage("[]")
		}
		if p := bytes.TrimSpace(m.Params); len(p) == 0 || p[0] != '[' {
			return nil, fmt.Errorf("JSON-RPC %s: params must be an array", m.Method)
		}
		return &m, nil
	}
	if isNull(m.ID) {
		return nil, errors.New("JSON-RPC message has neither method nor id")
	}
	if isNull(m.Result) && isNull(m.Error) {
		return nil, errors.New("JSON-RPC response has neither result nor error")
	}
	return &m, nil
}

// RPCError is an error the server returned for a whole request (as opposed
// to one operation of a transaction, see OpError).
type RPCError struct {
	Method  string
	Err     string // e.g. "unknown database"
	Details string
}

func (e *RPCError) Error() string {
	if e.Details == "" {
		return fmt.Sprintf("%s: %s", e.Method, e.Err)
	}
	return fmt.Sprintf("%s: %s: %s", e.Method, e.Err, e.Details)
}

// decodeRPCError accepts the shapes OVSDB servers use: an object with
// "error" and "details", or a bare string.
func decodeRPCError(method string, raw json.RawMessage) error {
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return &RPCError{Method: method, Err: s}
	}
	var obj struct {
		Error   string `json:"error"`
		Details string `json:"details"`
	}
	if err := json.Unmarshal(raw, &obj); err != nil || obj.Error == "" {
		return &RPCError{Method: method, Err: "malformed error " + abbrev(json.RawMessage(raw))}
	}
	return &RPCError{Method: method, Err: obj.Error, Details: obj.Details}
}

// echoID marks our keepalive probes; their replies need no pending call.
const echoID = `"keyroute-echo"`

type rpcReply struct {
	result json.RawMessage
	err    error
}

type pendingCall struct {
	method string
	reply  chan rpcReply // buffered: the reader never blocks on it
	// onReply, if set, sees a successful result in the reader goroutine,
	// before the next message is read (monitor replies must be ordered
	// before the update notifications that follow them).
	onReply func(json.RawMessage)
}

// rpcConn is one connection to the server. It ends for good on the first
// read/write error, protocol error or keepalive timeout; the Client decides
// whether to dial again.
type rpcConn struct {
	nc       net.Conn
	log      *slog.Logger
	notify   func(rc *rpcConn, method string, params json.RawMessage)
	interval time.Duration

	wmu sync.Mutex

	mu      sync.Mutex
	pending map[uint64]*pendingCall
	nextID  uint64
	err     error

	done     chan struct{}
	once     sync.Once
	lastRecv atomic.Int64 // unix nanoseconds
}

func newRPCConn(nc net.Conn, log *slog.Logger, interval time.Duration, notify func(*rpcConn, string, json.RawMessage)) *rpcConn {
	rc := &rpcConn{nc: nc, log: log, notify: notify, interval: interval,
		pending: map[uint64]*pendingCall{}, done: make(chan struct{})}
	rc.lastRecv.Store(time.Now().UnixNano())
	go rc.readLoop()
	go rc.keepalive()
	return rc
}

// close ends the connection and fails every pending call with err.
func (rc *rpcConn) close(err error) {
	rc.once.Do(func() {
		rc.mu.Lock()
		rc.err = err
		pending := rc.pending
		rc.pending = nil
		rc.mu.Unlock()
		rc.nc.Close()
		close(rc.done)
		for _, p := range pending {
			p.reply <- rpcReply{err: fmt.Errorf("%w: %w", ErrDisconnected, err)}
		}
	})
}

// Err returns why the connection ended (nil while it is up).
func (rc *rpcConn) Err() error {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return rc.err
}

func (rc *rpcConn) send(v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("encode: %w", err)
	}
	rc.wmu.Lock()
	defer rc.wmu.Unlock()
	// A server that stopped reading must not block us for ever; the keepalive
	// will declare it dead anyway.
	rc.nc.SetWriteDeadline(time.Now().Add(2 * rc.interval))
	if _, err := rc.nc.Write(b); err != nil {
		err = fmt.Errorf("write: %w", err)
		rc.close(err)
		return fmt.Errorf("%w: %w", ErrDisconnected, err)
	}
	return nil
}

// call sends a request and waits for its response.
func (rc *rpcConn) call(ctx context.Context, method string, params []any, onReply func(json.RawMessage)) (json.RawMessage, error) {
	if params == nil {
		params = []any{} // "params": null makes ovsdb-server drop the connection
	}
	// Encode before registering, so a bad argument is reported as such.
	req, err := json.Marshal(params)
	if err != nil {
		return nil, fmt.Errorf("encode %s request: %w", method, err)
	}
	p := &pendingCall{method: method, reply: make(chan rpcReply, 1), onReply: onReply}
	rc.mu.Lock()
	if rc.pending == nil {
		err := rc.err
		rc.mu.Unlock()
		return nil, fmt.Errorf("%w: %w", ErrDisconnected, err)
	}
	rc.nextID++
	id := rc.nextID
	rc.pending[id] = p
	rc.mu.Unlock()

	msg := struct {
		Method string          `json:"method"`
		Params json.RawMessage `json:"params"`
		ID     uint64          `json:"id"`
	}{method, req, id}
	if err := rc.send(msg); err != nil {
		rc.forget(id)
		return nil, err
	}
	select {
	case r := <-p.reply:
		return r.result, r.err
	case <-ctx.Done():
		rc.forget(id)
		return nil, fmt.Errorf("%s: %w", method, ctx.Err())
	}
}

func (rc *rpcConn) forget(id uint64) {
	rc.mu.Lock()
	delete(rc.pending, id)
	rc.mu.Unlock()
}

func (rc *rpcConn) readLoop() {
	dec := json.NewDecoder(bufio.NewReader(rc.nc))
	for {
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			if errors.Is(err, io.EOF) {
				err = errors.New("server closed the connection")
			} else {
				err = fmt.Errorf("read: %w", err)
			}
			rc.close(err)
			return
		}
		rc.lastRecv.Store(time.Now().UnixNano())
		m, err := decodeMessage(raw)
		if err != nil {
			// The stream is still in sync (it was valid JSON); drop the message.
			rc.log.Warn("ovsdb: ignoring bad message from server", "err", err, "message", abbrev(raw))
			continue
		}
		rc.handle(m)
	}
}

func (rc *rpcConn) handle(m *message) {
	switch {
	case m.isRequest():
		reply := map[string]any{"id": m.ID, "result": nil, "error": nil}
		if m.Method == "echo" {
			reply["result"] = m.Params
		} else {
			reply["error"] = "unknown method " + m.Method
		}
		rc.send(reply)
	case m.isNotification():
		rc.notify(rc, m.Method, m.Params)
	default:
		if string(bytes.TrimSpace(m.ID)) == echoID {
			return // keepalive answer; lastRecv is already updated
		}
		id, err := strconv.ParseUint(string(bytes.TrimSpace(m.ID)), 10, 64)
		if err != nil {
			rc.log.Warn("ovsdb: response with unknown id", "id", abbrev(m.ID))
			return
		}
		rc.mu.Lock()
		p := rc.pending[id]
		delete(rc.pending, id)
		rc.mu.Unlock()
		if p == nil {
			return // its caller gave up (context done)
		}
		if !isNull(m.Error) {
			p.reply <- rpcReply{err: decodeRPCError(p.method, m.Error)}
			return
		}
		if p.onReply != nil {
			p.onReply(m.Result)
		}
		p.reply <- rpcReply{result: m.Result}
	}
}

// keepalive probes the server with "echo" when it has been silent for an
// interval and gives up on it after two silent intervals, as OVS's own
// clients do; a hung or vanished server is otherwise only noticed when TCP or
// the socket layer says so, which for a SIGSTOPped server is never.
func (rc *rpcConn) keepalive() {
	t := time.NewTicker(rc.interval / 2)
	defer t.Stop()
	for {
		select {
		case <-rc.done:
			return
		case <-t.C:
		}
		silent := time.Since(time.Unix(0, rc.lastRecv.Load()))
		switch {
		case silent >= 2*rc.interval:
			rc.close(fmt.Errorf("server silent for %s (no echo reply)", silent.Round(time.Millisecond)))
			return
		case silent >= rc.interval:
			rc.send(map[string]any{"method": "echo", "params": []any{}, "id": json.RawMessage(echoID)})
		}
	}
}
