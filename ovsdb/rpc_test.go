package ovsdb

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// fakeServer is a scripted ovsdb-server: each accepted connection is handed
// to serve in turn.
type fakeServer struct {
	path  string
	ln    net.Listener
	conns chan *fakeConn
}

// fakeConn answers the client's keepalive echoes in the background (until
// silence is called) and queues every other message for read.
type fakeConn struct {
	t      *testing.T
	nc     net.Conn
	msgs   chan map[string]json.RawMessage
	silent atomic.Bool
	wmu    sync.Mutex
}

func newFakeConn(t *testing.T, nc net.Conn) *fakeConn {
	c := &fakeConn{t: t, nc: nc, msgs: make(chan map[string]json.RawMessage, 16)}
	go func() {
		dec := json.NewDecoder(nc)
		for {
			var m map[string]json.RawMessage
			if err := dec.Decode(&m); err != nil {
				close(c.msgs)
				return
			}
			if string(m["method"]) == `"echo"` {
				if !c.silent.Load() {
					c.write(`{"id":` + string(m["id"]) + `,"result":[],"error":null}`)
				}
				continue
			}
			c.msgs <- m
		}
	}()
	return c
}

// silence makes the connection a hung server: it reads but never answers.
func (c *fakeConn) silence() { c.silent.Store(true) }

func newFakeServer(t *testing.T) *fakeServer {
	t.Helper()
	path := filepath.Join(t.TempDir(), "db.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	s := &fakeServer{path: path, ln: ln, conns: make(chan *fakeConn, 4)}
	go func() {
		for {
			nc, err := ln.Accept()
			if err != nil {
				return
			}
			s.conns <- newFakeConn(t, nc)
		}
	}()
	t.Cleanup(func() { ln.Close() })
	return s
}

func (s *fakeServer) accept(t *testing.T) *fakeConn {
	t.Helper()
	select {
	case c := <-s.conns:
		t.Cleanup(func() { c.nc.Close() })
		return c
	case <-time.After(5 * time.Second):
		t.Fatal("client did not connect")
		return nil
	}
}

// read returns the next non-echo message from the client.
func (c *fakeConn) read() map[string]json.RawMessage {
	select {
	case m, ok := <-c.msgs:
		if !ok {
			c.t.Error("fake server: client closed the connection")
		}
		return m
	case <-time.After(5 * time.Second):
		c.t.Error("fake server: no message from client")
		return nil
	}
}

func (c *fakeConn) write(s string) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if _, err := io.WriteString(c.nc, s); err != nil {
		c.t.Errorf("fake server write: %v", err)
	}
}

func quiet() *slog.Logger { return slog.New(slog.DiscardHandler) }

func TestTransactOpErrorOverRPC(t *testing.T) {
	s := newFakeServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := Dial(ctx, "unix:"+s.path, Options{Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	sc := s.accept(t)
	go func() {
		m := sc.read()
		if want := `["Open_vSwitch",{"op":"comment","comment":"x"}]`; compactJSON(m["params"]) != compactJSON(json.RawMessage(want)) {
			t.Errorf("params = %s, want %s", m["params"], want)
		}
		sc.write(`{"id":` + string(m["id"]) + `,"result":[{},{"error":"constraint violation","details":"duplicate name"}],"error":null}`)
	}()
	_, err = c.Transact(ctx, DB, Comment("x"))
	// the fake answers as if there were two operations: the second error is a commit error
	if err == nil || err.Error() != "transact commit: constraint violation: duplicate name" {
		t.Fatalf("err = %v", err)
	}

	go func() {
		m := sc.read()
		sc.write(`{"id":` + string(m["id"]) + `,"result":null,"error":{"error":"unknown database","details":"nodb"}}`)
	}()
	_, err = c.Transact(ctx, "nodb", Comment("x"))
	var re *RPCError
	if !errors.As(err, &re) || re.Err != "unknown database" {
		t.Fatalf("err = %v, want RPCError unknown database", err)
	}
}

func compactJSON(raw json.RawMessage) string {
	var v any
	json.Unmarshal(raw, &v)
	b, _ := json.Marshal(v)
	return string(b)
}

func TestServerEchoIsAnswered(t *testing.T) {
	s := newFakeServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := Dial(ctx, s.path, Options{Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	sc := s.accept(t)
	sc.write(`{"id":"echo","method":"echo","params":["hello"]}`)
	m := sc.read()
	if string(m["id"]) != `"echo"` || compactJSON(m["result"]) != `["hello"]` || string(m["error"]) != "null" {
		t.Errorf("echo reply = %v", m)
	}
	// Garbage that is valid JSON is dropped; the connection stays usable.
	sc.write(`{"id":99,"result":[],"error":null}{"nonsense":true}`)
	sc.write(`{"id":"echo","method":"echo","params":[]}`)
	if m := sc.read(); string(m["id"]) != `"echo"` {
		t.Errorf("second echo reply = %v", m)
	}
}

// A server that stops answering (SIGSTOP, hang) is only noticed by the
// keepalive; the client must then reconnect, re-issue its monitor and turn
// the new snapshot into the changes since the old one.
func TestKeepaliveReconnectAndMonitorResync(t *testing.T) {
	s := newFakeServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := Dial(ctx, s.path, Options{Logger: quiet(), Reconnect: true, EchoInterval: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	const (
		ua = "00000000-0000-4000-8000-00000000000a"
		ub = "00000000-0000-4000-8000-00000000000b"
		uc = "00000000-0000-4000-8000-00000000000c"
	)
	var mu sync.Mutex
	var got []TableUpdates
	updates := make(chan struct{}, 10)

	sc := s.accept(t)
	var monID json.RawMessage
	go func() {
		m := sc.read()
		if string(m["method"]) != `"monitor"` {
			t.Errorf("first request %s, want monitor", m["method"])
			return
		}
		var p []json.RawMessage
		json.Unmarshal(m["params"], &p)
		monID = p[1]
		sc.write(`{"id":` + string(m["id"]) + `,"error":null,"result":{"Interface":{` +
			`"` + ua + `":{"new":{"name":"a","ofport":1}},"` + ub + `":{"new":{"name":"b","ofport":2}}}}}`)
		// a modify carrying only the changed column
		sc.write(`{"id":null,"method":"update","params":[` + string(monID) + `,{"Interface":{"` + ub +
			`":{"old":{"ofport":2},"new":{"ofport":5}}}}]}`)
	}()
	_, err = c.Monitor(ctx, DB, map[string][]string{"Interface": {"name", "ofport"}}, func(u TableUpdates) {
		mu.Lock()
		got = append(got, u)
		mu.Unlock()
		updates <- struct{}{}
	})
	if err != nil {
		t.Fatal(err)
	}
	wait := func(n int) {
		t.Helper()
		for {
			mu.Lock()
			l := len(got)
			mu.Unlock()
			if l >= n {
				return
			}
			select {
			case <-updates:
			case <-ctx.Done():
				t.Fatalf("waiting for update %d: %v", n, ctx.Err())
			}
		}
	}
	wait(2)
	mu.Lock()
	if len(got[0]["Interface"]) != 2 {
		t.Errorf("snapshot = %v", got[0])
	}
	want := RowUpdate{Old: Row{"name": "b", "ofport": int64(2)}, New: Row{"name": "b", "ofport": int64(5)}}
	if ru := got[1]["Interface"][ub]; !reflect.DeepEqual(ru, want) {
		t.Errorf("modify = %+v, want %+v", ru, want)
	}
	mu.Unlock()

	// Now the server goes silent: it reads (so writes succeed) but never answers.
	start := time.Now()
	sc.silence()
	sc2 := s.accept(t)
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("dead server noticed after %s, want ~2-3 echo intervals", d)
	}
	m := sc2.read()
	var p []json.RawMessage
	json.Unmarshal(m["params"], &p)
	if string(m["method"]) != `"monitor"` || len(p) != 3 || string(p[1]) != string(monID) {
		t.Fatalf("after reconnect got %s %s, want the monitor re-issued with id %s", m["method"], m["params"], monID)
	}
	// New snapshot: a gone, b unchanged (ofport 5), c new.
	sc2.write(`{"id":` + string(m["id"]) + `,"error":null,"result":{"Interface":{` +
		`"` + ub + `":{"new":{"name":"b","ofport":5}},"` + uc + `":{"new":{"name":"c","ofport":7}}}}}`)
	wait(3)
	mu.Lock()
	diff := got[2]["Interface"]
	mu.Unlock()
	if len(diff) != 2 || diff[ua].New != nil || diff[ua].Old.String("name") != "a" || diff[uc].Old != nil || diff[uc].New.Int("ofport") != 7 {
		t.Errorf("resync diff = %+v, want a deleted and c inserted", diff)
	}

	// Calls work on the new connection.
	go func() {
		m := sc2.read()
		sc2.write(`{"id":` + string(m["id"]) + `,"result":["Open_vSwitch"],"error":null}`)
	}()
	if dbs, err := c.ListDBs(ctx); err != nil || len(dbs) != 1 {
		t.Errorf("ListDBs after reconnect = %v, %v", dbs, err)
	}
}

func TestNoReconnectFailsCalls(t *testing.T) {
	s := newFakeServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := Dial(ctx, s.path, Options{Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	sc := s.accept(t)
	go func() {
		// ovsdb-server drops a connection whose request has "params": null
		if m := sc.read(); string(m["method"]) != `"list_dbs"` || string(m["params"]) != `[]` {
			t.Errorf("list_dbs request = %s %s, want params []", m["method"], m["params"])
		}
		sc.nc.Close() // dies with the call in flight
	}()
	if _, err := c.ListDBs(ctx); !errors.Is(err, ErrDisconnected) {
		t.Fatalf("in-flight call: err = %v, want ErrDisconnected", err)
	}
	if _, err := c.ListDBs(ctx); !errors.Is(err, ErrDisconnected) || !strings.Contains(err.Error(), "closed the connection") {
		t.Fatalf("later call: err = %v, want ErrDisconnected saying why", err)
	}
	c.Close()
	if _, err := c.ListDBs(ctx); !errors.Is(err, ErrClosed) {
		t.Fatalf("after Close: err = %v, want ErrClosed", err)
	}
}

func TestDialErrors(t *testing.T) {
	ctx := context.Background()
	for _, addr := range []string{"tcp:127.0.0.1:6640", "unix:", filepath.Join(t.TempDir(), "missing.sock")} {
		if c, err := Dial(ctx, addr, Options{Logger: quiet()}); err == nil {
			c.Close()
			t.Errorf("Dial(%q): no error", addr)
		}
	}
}
