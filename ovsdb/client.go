// Package ovsdb is keyroute's OVSDB (RFC 7047) client for ovsdb-server over
// its unix socket — JSON-RPC, value encoding, transactions, monitors, echo
// keepalive and reconnection — plus the idempotent ensure-operations for the
// bridges and ports keyroute owns. Every object it creates carries
// external_ids:keyroute-owner=<owner>.
package ovsdb

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sort"
	"strings"
	"sync"
	"time"
)

// DB is the Open vSwitch database name.
const DB = "Open_vSwitch"

var (
	// ErrNotFound is wrapped by errors about bridges, ports and interfaces
	// that do not exist.
	ErrNotFound = errors.New("not found")
	// ErrDisconnected is wrapped by errors of calls that failed because the
	// connection to the server is down.
	ErrDisconnected = errors.New("ovsdb: not connected")
	// ErrClosed is returned by calls on a closed Client.
	ErrClosed = errors.New("ovsdb: client closed")
)

// Options configure a Client.
type Options struct {
	// Logger receives connection events; nil means slog.Default().
	Logger *slog.Logger
	// Reconnect makes the client dial again (with backoff) when the
	// connection ends, and re-issue its monitors. Calls made meanwhile wait
	// for the connection, bounded by their context.
	Reconnect bool
	// Owner is the value of external_ids:keyroute-owner on every object the
	// ensure-operations create; "" means "keyroute".
	Owner string
	// EchoInterval is the keepalive probe interval: the server is sent an
	// "echo" after this much silence and declared dead after twice as much.
	// Zero means 5s.
	EchoInterval time.Duration
}

// Client is a connection to one ovsdb-server. It is safe for concurrent use.
type Client struct {
	path  string
	opts  Options
	log   *slog.Logger
	owner string

	mu       sync.Mutex
	conn     *rpcConn      // nil while disconnected
	lastErr  error         // why the last connection ended
	ready    chan struct{} // closed while conn != nil
	monitors map[string]*Monitor
	monSeq   int
	closed   bool
	closing  chan struct{}
}

// Dial connects to ovsdb-server at addr, "unix:/path" or a plain socket
// path. The first connection must succeed.
func Dial(ctx context.Context, addr string, opts Options) (*Client, error) {
	path := strings.TrimPrefix(addr, "unix:")
	if path == "" || strings.HasPrefix(addr, "tcp:") || strings.HasPrefix(addr, "ssl:") {
		return nil, fmt.Errorf("dial ovsdb %q: only unix sockets are supported", addr)
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.EchoInterval <= 0 {
		opts.EchoInterval = 5 * time.Second
	}
	owner := opts.Owner
	if owner == "" {
		owner = "keyroute"
	}
	c := &Client{path: path, opts: opts, log: opts.Logger.With("ovsdb", path), owner: owner,
		ready: make(chan struct{}), monitors: map[string]*Monitor{}, closing: make(chan struct{})}
	rc, err := c.dial(ctx)
	if err != nil {
		return nil, err
	}
	c.attach(rc)
	return c, nil
}

func (c *Client) dial(ctx context.Context) (*rpcConn, error) {
	var d net.Dialer
	nc, err := d.DialContext(ctx, "unix", c.path)
	if err != nil {
		return nil, fmt.Errorf("dial ovsdb %s: %w", c.path, err)
	}
	return newRPCConn(nc, c.log, c.opts.EchoInterval, c.notify), nil
}

// attach makes rc the current connection and re-issues every monitor on it.
func (c *Client) attach(rc *rpcConn) {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		rc.close(ErrClosed)
		return
	}
	c.conn = rc
	close(c.ready)
	mons := make([]*Monitor, 0, len(c.monitors))
	for _, m := range c.monitors {
		mons = append(mons, m)
	}
	c.mu.Unlock()
	sort.Slice(mons, func(i, j int) bool { return mons[i].seq < mons[j].seq })
	for _, m := range mons {
		c.issueMonitor(m, rc)
	}
	go c.watch(rc)
}

// watch waits for rc to end, then reconnects if asked to.
func (c *Client) watch(rc *rpcConn) {
	<-rc.done
	c.mu.Lock()
	if c.conn == rc {
		c.conn = nil
		c.ready = make(chan struct{})
	}
	c.lastErr = rc.Err()
	closed := c.closed
	c.mu.Unlock()
	if closed {
		return
	}
	if !c.opts.Reconnect {
		c.log.Error("ovsdb connection lost", "err", rc.Err())
		return
	}
	c.log.Warn("ovsdb connection lost; reconnecting", "err", rc.Err())
	backoff := 50 * time.Millisecond
	for attempt := 1; ; attempt++ {
		select {
		case <-c.closing:
			return
		case <-time.After(backoff):
		}
		ctx, cancel := context.WithTimeout(context.Background(), c.opts.EchoInterval)
		nrc, err := c.dial(ctx)
		cancel()
		if err == nil {
			c.log.Info("ovsdb reconnected", "attempts", attempt)
			c.attach(nrc)
			return
		}
		if attempt == 1 || attempt%20 == 0 {
			c.log.Warn("ovsdb reconnect failed", "attempt", attempt, "err", err)
		}
		backoff = min(backoff*2, 2*time.Second)
	}
}

// currentConn returns the live connection, waiting for a reconnect if the
// client does that.
func (c *Client) currentConn(ctx context.Context) (*rpcConn, error) {
	for {
		c.mu.Lock()
		if c.closed {
			c.mu.Unlock()
			return nil, ErrClosed
		}
		if c.conn != nil {
			rc := c.conn
			c.mu.Unlock()
			return rc, nil
		}
		if !c.opts.Reconnect {
			err := c.lastErr
			c.mu.Unlock()
			return nil, fmt.Errorf("%w: %w", ErrDisconnected, err)
		}
		ready := c.ready
		c.mu.Unlock()
		select {
		case <-ready:
		case <-c.closing:
		case <-ctx.Done():
			return nil, fmt.Errorf("wait for ovsdb connection: %w", ctx.Err())
		}
	}
}

// call sends one request on the current connection. Calls are not retried
// after a disconnect: a transaction may or may not have committed.
func (c *Client) call(ctx context.Context, method string, params ...any) (json.RawMessage, error) {
	rc, err := c.currentConn(ctx)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", method, err)
	}
	return rc.call(ctx, method, params, nil)
}

// Close ends the connection and stops reconnecting and every monitor.
func (c *Client) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	close(c.closing)
	rc := c.conn
	mons := c.monitors
	c.monitors = map[string]*Monitor{}
	c.mu.Unlock()
	for _, m := range mons {
		m.stopDispatch()
	}
	if rc != nil {
		rc.close(ErrClosed)
	}
	return nil
}

// ListDBs returns the databases the server holds.
func (c *Client) ListDBs(ctx context.Context) ([]string, error) {
	raw, err := c.call(ctx, "list_dbs")
	if err != nil {
		return nil, err
	}
	var dbs []string
	if err := json.Unmarshal(raw, &dbs); err != nil {
		return nil, fmt.Errorf("list_dbs: decode reply: %w", err)
	}
	return dbs, nil
}

// Schema is the part of a database schema keyroute looks at.
type Schema struct {
	Name    string                 `json:"name"`
	Version string                 `json:"version"`
	Tables  map[string]TableSchema `json:"tables"`
}

// TableSchema describes one table.
type TableSchema struct {
	Columns map[string]ColumnSchema `json:"columns"`
	IsRoot  bool                    `json:"isRoot"`
	Indexes [][]string              `json:"indexes"`
}

// ColumnSchema describes one column; Type is kept in its JSON form.
type ColumnSchema struct {
	Type      json.RawMessage `json:"type"`
	Ephemeral bool            `json:"ephemeral"`
}

// GetSchema fetches the schema of db.
func (c *Client) GetSchema(ctx context.Context, db string) (*Schema, error) {
	raw, err := c.call(ctx, "get_schema", db)
	if err != nil {
		return nil, err
	}
	var s Schema
	if err := json.Unmarshal(raw, &s); err != nil {
		return nil, fmt.Errorf("get_schema %s: decode reply: %w", db, err)
	}
	return &s, nil
}
