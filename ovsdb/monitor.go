package ovsdb

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"reflect"
	"sync"
)

// RowUpdate is one row's change. Old is nil for an inserted row and New is
// nil for a deleted one; both hold every monitored column (the client keeps a
// copy of the monitored rows to fill in what the server leaves out).
type RowUpdate struct{ Old, New Row }

// TableUpdates maps table name → row UUID → change.
type TableUpdates map[string]map[UUID]RowUpdate

// Monitor is a running "monitor" request. Its handler is called from one
// goroutine, in order: first with the initial snapshot (every row as an
// insert), then with every change. After a reconnect the client re-issues
// the monitor and hands the handler the difference between what it had and
// the new snapshot, so the handler sees one consistent stream of changes.
type Monitor struct {
	c        *Client
	id       string
	seq      int
	db       string
	requests map[string]any
	handler  func(TableUpdates)

	// guarded by c.mu
	conn      *rpcConn // connection the monitor was last issued on
	cancelled bool

	mu       sync.Mutex
	cache    map[string]map[UUID]Row
	gotFirst bool
	queue    []TableUpdates
	wake     chan struct{}
	stop     chan struct{}
	stopOnce sync.Once
	first    chan struct{} // closed once the handler has returned from the first snapshot
	firstErr chan error
}

// Monitor starts monitoring the given columns (all if none are listed) of
// the given tables of db and returns once handler has processed the initial
// snapshot. The handler must not block for long; it may call the Client.
func (c *Client) Monitor(ctx context.Context, db string, requests map[string][]string, handler func(TableUpdates)) (*Monitor, error) {
	if len(requests) == 0 {
		return nil, errors.New("monitor: no tables requested")
	}
	reqs := make(map[string]any, len(requests))
	for table, cols := range requests {
		r := map[string]any{}
		if len(cols) > 0 {
			r["columns"] = cols
		}
		reqs[table] = r
	}
	m := &Monitor{c: c, db: db, requests: reqs, handler: handler, cache: map[string]map[UUID]Row{},
		wake: make(chan struct{}, 1), stop: make(chan struct{}), first: make(chan struct{}), firstErr: make(chan error, 1)}

	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil, ErrClosed
	}
	rc := c.conn
	if rc == nil && !c.opts.Reconnect {
		err := c.lastErr
		c.mu.Unlock()
		return nil, fmt.Errorf("monitor %s: %w: %w", db, ErrDisconnected, err)
	}
	c.monSeq++
	m.seq = c.monSeq
	m.id = fmt.Sprintf("keyroute-monitor-%d", m.seq)
	c.monitors[m.id] = m
	c.mu.Unlock()

	go m.dispatch()
	if rc != nil {
		c.issueMonitor(m, rc)
	} // else: the reconnect issues it

	select {
	case <-m.first:
		return m, nil
	case err := <-m.firstErr:
		m.Cancel(context.Background())
		return nil, err
	case <-ctx.Done():
		m.Cancel(context.Background())
		return nil, fmt.Errorf("monitor %s: %w", db, ctx.Err())
	case <-c.closing:
		return nil, ErrClosed
	}
}

// Cancel stops the monitor; the handler is not called again.
func (m *Monitor) Cancel(ctx context.Context) error {
	c := m.c
	c.mu.Lock()
	_, present := c.monitors[m.id]
	delete(c.monitors, m.id)
	m.cancelled = true
	rc := m.conn
	c.mu.Unlock()
	m.stopDispatch()
	if !present || rc == nil {
		return nil
	}
	if _, err := rc.call(ctx, "monitor_cancel", []any{m.id}, nil); err != nil && !errors.Is(err, ErrDisconnected) {
		return fmt.Errorf("cancel monitor %s: %w", m.id, err)
	}
	return nil
}

func (m *Monitor) stopDispatch() { m.stopOnce.Do(func() { close(m.stop) }) }

// issueMonitor sends m's monitor request on rc unless that was done already.
func (c *Client) issueMonitor(m *Monitor, rc *rpcConn) {
	c.mu.Lock()
	if m.conn == rc || m.cancelled {
		c.mu.Unlock()
		return
	}
	m.conn = rc
	c.mu.Unlock()
	go func() {
		// No deadline of our own: the reply or the connection's end (the
		// keepalive sees to that) finishes the call.
		_, err := rc.call(context.Background(), "monitor", []any{m.db, m.id, m.requests}, m.onSnapshot)
		if err == nil || errors.Is(err, ErrDisconnected) && c.opts.Reconnect {
			return
		}
		m.fail(fmt.Errorf("monitor %s: %w", m.db, err))
	}()
}

// fail reports an error to Monitor's caller if it is still waiting, else logs it.
func (m *Monitor) fail(err error) {
	select {
	case <-m.first:
		m.c.log.Error("ovsdb monitor failed", "monitor", m.id, "err", err)
	default:
		select {
		case m.firstErr <- err:
		default:
		}
	}
}

// notify handles notifications; only monitor updates are expected.
func (c *Client) notify(rc *rpcConn, method string, params json.RawMessage) {
	if method != "update" {
		c.log.Debug("ovsdb: ignoring notification", "method", method)
		return
	}
	var p []json.RawMessage
	var id string
	if err := json.Unmarshal(params, &p); err != nil || len(p) != 2 || json.Unmarshal(p[0], &id) != nil {
		c.log.Warn("ovsdb: malformed update notification", "params", abbrev(params))
		return
	}
	c.mu.Lock()
	m := c.monitors[id]
	live := m != nil && m.conn == rc
	c.mu.Unlock()
	if live {
		m.onUpdate(p[1])
	}
}

// onSnapshot runs in the reader goroutine with a monitor reply: the full
// state of the monitored rows. It hands the handler what changed since the
// previous snapshot (everything, the first time).
func (m *Monitor) onSnapshot(raw json.RawMessage) {
	upd, err := decodeTableUpdates(raw)
	if err != nil {
		m.fail(fmt.Errorf("monitor %s: snapshot: %w", m.db, err))
		return
	}
	fresh := map[string]map[UUID]Row{}
	for table, rows := range upd {
		for u, ru := range rows {
			if ru.New != nil {
				if fresh[table] == nil {
					fresh[table] = map[UUID]Row{}
				}
				fresh[table][u] = ru.New
			}
		}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	diff := TableUpdates{}
	for table, rows := range m.cache {
		for u, old := range rows {
			nw, ok := fresh[table][u]
			switch {
			case !ok:
				diff.add(table, u, RowUpdate{Old: old})
			case !reflect.DeepEqual(old, nw):
				diff.add(table, u, RowUpdate{Old: old, New: nw})
			}
		}
	}
	for table, rows := range fresh {
		for u, nw := range rows {
			if _, ok := m.cache[table][u]; !ok {
				diff.add(table, u, RowUpdate{New: nw})
			}
		}
	}
	m.cache = fresh
	if !m.gotFirst || len(diff) > 0 {
		m.gotFirst = true
		m.enqueue(diff)
	}
}

// onUpdate runs in the reader goroutine with an "update" notification.
func (m *Monitor) onUpdate(raw json.RawMessage) {
	upd, err := decodeTableUpdates(raw)
	if err != nil {
		m.c.log.Warn("ovsdb: malformed monitor update", "monitor", m.id, "err", err)
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	out := TableUpdates{}
	for table, rows := range upd {
		if m.cache[table] == nil {
			m.cache[table] = map[UUID]Row{}
		}
		for u, ru := range rows {
			old, had := m.cache[table][u]
			if !had {
				old = ru.Old
			}
			if ru.New == nil {
				delete(m.cache[table], u)
				out.add(table, u, RowUpdate{Old: old})
				continue
			}
			// A "modify" may carry only the changed columns: overlay them.
			nw := maps.Clone(old)
			if nw == nil {
				nw = Row{}
			}
			maps.Copy(nw, ru.New)
			m.cache[table][u] = nw
			if had || ru.Old != nil {
				out.add(table, u, RowUpdate{Old: old, New: nw})
			} else {
				out.add(table, u, RowUpdate{New: nw})
			}
		}
	}
	if len(out) > 0 {
		m.enqueue(out)
	}
}

func (t TableUpdates) add(table string, u UUID, ru RowUpdate) {
	if t[table] == nil {
		t[table] = map[UUID]RowUpdate{}
	}
	t[table][u] = ru
}

// enqueue is called with m.mu held.
func (m *Monitor) enqueue(u TableUpdates) {
	m.queue = append(m.queue, u)
	select {
	case m.wake <- struct{}{}:
	default:
	}
}

func (m *Monitor) dispatch() {
	first := true
	for {
		m.mu.Lock()
		for len(m.queue) == 0 {
			m.mu.Unlock()
			select {
			case <-m.wake:
			case <-m.stop:
				return
			}
			m.mu.Lock()
		}
		u := m.queue[0]
		m.queue = m.queue[1:]
		m.mu.Unlock()
		select {
		case <-m.stop:
			return
		default:
		}
		m.handler(u)
		if first {
			first = false
			close(m.first)
		}
	}
}

// decodeTableUpdates parses <table-updates>: {table: {uuid: {"old": row, "new": row}}}.
func decodeTableUpdates(raw json.RawMessage) (TableUpdates, error) {
	v, err := decodeJSON(raw)
	if err != nil {
		return nil, err
	}
	tables, ok := v.(map[string]any)
	if !ok {
		return nil, fmt.Errorf("table updates must be an object, got %s", abbrev(v))
	}
	out := TableUpdates{}
	for table, tv := range tables {
		rows, ok := tv.(map[string]any)
		if !ok {
			return nil, fmt.Errorf("table %s: updates must be an object", table)
		}
		out[table] = map[UUID]RowUpdate{}
		for u, rv := range rows {
			if !validUUID(u) {
				return nil, fmt.Errorf("table %s: malformed row uuid %q", table, u)
			}
			ruv, ok := rv.(map[string]any)
			if !ok {
				return nil, fmt.Errorf("table %s row %s: update must be an object", table, u)
			}
			var ru RowUpdate
			for _, part := range []string{"old", "new"} {
				pv, has := ruv[part]
				if !has || pv == nil {
					continue
				}
				row, err := rowFromJSON(pv)
				if err != nil {
					return nil, fmt.Errorf("table %s row %s %s: %w", table, u, part, err)
				}
				if part == "old" {
					ru.Old = row
				} else {
					ru.New = row
				}
			}
			if ru.Old == nil && ru.New == nil {
				return nil, fmt.Errorf("table %s row %s: update has neither old nor new", table, u)
			}
			out[table][UUID(u)] = ru
		}
	}
	return out, nil
}
