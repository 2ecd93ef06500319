package store_test

import (
	"context"
	"errors"
	"os"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/keyroute/keyroute/registry"
	"github.com/keyroute/keyroute/registry/etcdtest"
	"github.com/keyroute/keyroute/rules"
	"github.com/keyroute/keyroute/rules/store"
)

// The server starts on first use, so the fuzz targets (whose workers run
// TestMain too) run without it.
func TestMain(m *testing.M) { os.Exit(etcdtest.Main(m)) }

func setup(t *testing.T) (*clientv3.Client, string, context.Context) {
	t.Helper()
	cli := etcdtest.Client(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return cli, etcdtest.Prefix(t), ctx
}

func deny(id string) rules.Rule {
	return rules.Rule{ID: id, Direction: rules.Egress, Protocol: rules.ProtoTCP, Ports: "22", Action: rules.Deny}
}

func TestCRUD(t *testing.T) {
	cli, prefix, ctx := setup(t)
	s := store.New(cli, prefix, nil)
	if err := s.Put(ctx, deny("a"), false); err != nil {
		t.Fatal(err)
	}
	if err := s.Put(ctx, deny("a"), false); !errors.Is(err, store.ErrExists) {
		t.Fatalf("duplicate id: %v, want ErrExists", err)
	}
	r := deny("a")
	r.Ports = "2222"
	if err := s.Put(ctx, r, true); err != nil {
		t.Fatal(err)
	}
	got, err := s.Get(ctx, "a")
	if err != nil || got.Ports != "2222" || got.Priority != rules.DefaultPriority {
		t.Fatalf("get after replace: %+v %v", got, err)
	}
	bad := deny("b")
	bad.Ports = "99999"
	if err := s.Put(ctx, bad, false); err == nil {
		t.Fatal("invalid rule stored")
	}
	if _, err := s.Get(ctx, "b"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("invalid rule must not be written: %v", err)
	}
	if err := s.Delete(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	if err := s.Delete(ctx, "a"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("second delete: %v", err)
	}
}

// A bad raw record is skipped and reported; the others are still listed
// and streamed.
func TestBadRecordsSkipped(t *testing.T) {
	cli, prefix, ctx := setup(t)
	var bad atomic.Int64
	s := store.New(cli, prefix, func(string, error) { bad.Add(1) })
	if err := s.Put(ctx, deny("good"), false); err != nil {
		t.Fatal(err)
	}
	for k, v := range map[string]string{
		"garbage": "{not json", "wrongid": `{"id":"other","direction":"egress","action":"deny"}`,
		"unknown": `{"id":"unknown","direction":"egress","action":"deny","x":1}`,
	} {
		if _, err := cli.Put(ctx, s.Key(k), v); err != nil {
			t.Fatal(err)
		}
	}
	rs, err := s.List(ctx)
	if err != nil || len(rs) != 1 || rs[0].ID != "good" || bad.Load() != 3 {
		t.Fatalf("list: %v %v, bad=%d", rs, err, bad.Load())
	}
	if _, err := s.Get(ctx, "garbage"); !errors.Is(err, store.ErrBadRecord) {
		t.Fatalf("get of a bad record: %v", err)
	}

	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	evs := s.Watch(wctx)
	next := func() store.Event {
		t.Helper()
		select {
		case ev := <-evs:
			return ev
		case <-ctx.Done():
			t.Fatal("no watch event")
		}
		return store.Event{}
	}
	if ev := next(); ev.Type != registry.EventPut || ev.Value.ID != "good" {
		t.Fatalf("first event %+v", ev)
	}
	if ev := next(); ev.Type != registry.EventSynced {
		t.Fatalf("want synced, got %+v", ev)
	}
	// A rule that turns bad is reported gone; a new good one arrives.
	if _, err := cli.Put(ctx, s.Key("good"), `{"id":"good","direction":"sideways","action":"deny"}`); err != nil {
		t.Fatal(err)
	}
	if ev := next(); ev.Type != registry.EventDelete || ev.Value.ID != "good" {
		t.Fatalf("bad update: %+v", ev)
	}
	if err := s.Put(ctx, deny("new"), false); err != nil {
		t.Fatal(err)
	}
	if ev := next(); ev.Type != registry.EventPut || ev.Value.ID != "new" {
		t.Fatalf("new rule: %+v", ev)
	}
}
