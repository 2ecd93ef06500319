package kvwatch_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/keyroute/keyroute/registry/etcdtest"
	"github.com/keyroute/keyroute/registry/kvwatch"
)

func TestMain(m *testing.M) { os.Exit(etcdtest.Main(m)) }

// config decodes values as strings; "bad..." fails, "skip..." is filtered.
func config(cli *clientv3.Client, prefix string, bad *atomic.Int64) kvwatch.Config[string] {
	return kvwatch.Config[string]{
		Client: cli,
		Key:    prefix,
		End:    clientv3.GetPrefixRangeEnd(prefix),
		Decode: func(kv *mvccpb.KeyValue) (string, bool, error) {
			v := string(kv.Value)
			if strings.HasPrefix(v, "bad") {
				return "", false, errors.New("bad value")
			}
			return v, !strings.HasPrefix(v, "skip"), nil
		},
		OnBad: func(string, error) { bad.Add(1) },
	}
}

// drain reads events up to and including the next Synced, as "type key=value".
func drain(t *testing.T, ch <-chan kvwatch.Event[string], prefix string) []string {
	t.Helper()
	var got []string
	for {
		select {
		case ev := <-ch:
			if ev.Type == kvwatch.Synced {
				return got
			}
			got = append(got, fmt.Sprintf("%v %s=%s", ev.Type, strings.TrimPrefix(ev.Key, prefix), ev.Value))
		case <-time.After(10 * time.Second):
			t.Fatalf("no Synced within 10s; got %v", got)
		}
	}
}

func put(t *testing.T, cli *clientv3.Client, k, v string) {
	t.Helper()
	if _, err := cli.Put(context.Background(), k, v); err != nil {
		t.Fatal(err)
	}
}

func TestRelistAfterCompaction(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cli, p := etcdtest.Client(t), etcdtest.Prefix(t)
	put(t, cli, p+"a", "1")
	put(t, cli, p+"b", "2")
	put(t, cli, p+"c", "3")
	put(t, cli, p+"e", "bad")
	put(t, cli, p+"f", "skip")
	put(t, cli, p+"zz-outside", "x")
	var bad atomic.Int64
	cfg := config(cli, p, &bad)
	list, follow, out := kvwatch.Phases(cfg)
	// The outside key sorts after the prefix range and must not appear.
	put(t, cli, strings.TrimSuffix(p, "/")+"0", "outside")

	if err := list(ctx); err != nil {
		t.Fatal(err)
	}
	got := drain(t, out, p)
	if want := "[put a=1 put b=2 put c=3 put zz-outside=x]"; fmt.Sprint(got) != want {
		t.Fatalf("snapshot %v, want %v", got, want)
	}
	if bad.Load() != 1 {
		t.Errorf("bad records after snapshot = %d, want 1", bad.Load())
	}

	// Changes the watcher misses, then compaction of that history.
	put(t, cli, p+"a", "1b")
	put(t, cli, p+"d", "4")
	if _, err := cli.Delete(ctx, p+"b"); err != nil {
		t.Fatal(err)
	}
	put(t, cli, p+"zz-outside", "skip")
	resp, err := cli.Put(ctx, p+"f", "skip2")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Compact(ctx, resp.Header.Revision); err != nil {
		t.Fatal(err)
	}
	compacted, err := follow(ctx)
	if err != nil || !compacted {
		t.Fatalf("follow from a compacted revision = %v, %v; want compacted", compacted, err)
	}
	if err := list(ctx); err != nil {
		t.Fatal(err)
	}
	// Only the difference: a changed, d new, b and the now filtered key gone;
	// unchanged c is not repeated.
	got = drain(t, out, p)
	if want := "[put a=1b put d=4 delete b=2 delete zz-outside=x]"; fmt.Sprint(got) != want {
		t.Fatalf("re-list reported %v, want %v", got, want)
	}
}

func TestWatchStream(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cli, p := etcdtest.Client(t), etcdtest.Prefix(t)
	put(t, cli, p+"a", "1")
	var bad atomic.Int64
	ch := kvwatch.Watch(ctx, config(cli, p, &bad))
	if got := drain(t, ch, p); fmt.Sprint(got) != "[put a=1]" {
		t.Fatalf("snapshot %v", got)
	}
	put(t, cli, p+"b", "2")
	put(t, cli, p+"a", "bad")
	put(t, cli, p+"c", "skip")
	if _, err := cli.Delete(ctx, p+"b"); err != nil {
		t.Fatal(err)
	}
	var got []string
	for len(got) < 3 {
		select {
		case ev := <-ch:
			got = append(got, fmt.Sprintf("%v %s=%s", ev.Type, strings.TrimPrefix(ev.Key, p), ev.Value))
		case <-time.After(10 * time.Second):
			t.Fatalf("got only %v", got)
		}
	}
	// a turning bad is reported as deleted; the filtered c never appears.
	if want := "[put b=2 delete a=1 delete b=2]"; fmt.Sprint(got) != want {
		t.Errorf("events %v, want %v", got, want)
	}
	if bad.Load() != 1 {
		t.Errorf("bad records = %d, want 1", bad.Load())
	}
	cancel()
	for range ch {
	}
}
