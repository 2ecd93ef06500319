// Package kvwatch follows an etcd key range as one stream: a snapshot of the
// range, then every change after it, with no gap in between. It owns the
// recovery logic keyroute's watchers share: resuming after a broken watch,
// re-listing (and diffing against what the consumer already saw) after the
// watched revision was compacted, and skipping records that fail to decode.
package kvwatch

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// EventType says what happened to a key.
type EventType uint8

const (
	// Put: the key was created or changed (also used for snapshot entries).
	Put EventType = iota + 1
	// Delete: the key is gone, or its new value failed to decode or was
	// filtered out. Value holds the last value the stream reported.
	Delete
	// Synced: the stream's view equals etcd's at Revision. Sent after the
	// initial snapshot and after every re-list, so a consumer can drop
	// state it did not see again.
	Synced
)

func (t EventType) String() string {
	switch t {
	case Put:
		return "put"
	case Delete:
		return "delete"
	case Synced:
		return "synced"
	}
	return fmt.Sprintf("EventType(%d)", uint8(t))
}

// Event is one change of a watched key. Key and Value are zero for Synced.
type Event[T any] struct {
	Type     EventType
	Key      string
	Value    T
	Revision int64
}

// Config describes what to follow.
type Config[T any] struct {
	Client *clientv3.Client
	// Key and End delimit the range [Key, End). End == "" means the single
	// key Key; use clientv3.GetPrefixRangeEnd(Key) for a prefix.
	Key, End string
	// Decode turns a stored value into T. keep=false drops the key from
	// the stream as if absent (a client-side filter); an error does the
	// same and is reported to OnBad.
	Decode func(kv *mvccpb.KeyValue) (v T, keep bool, err error)
	// OnBad is called for every record that fails to decode. Optional.
	OnBad func(key string, err error)
	// Logger gets retries and re-lists at debug/warn level. Optional.
	Logger *slog.Logger
}

// Watch streams the range described by cfg until ctx is done, then closes
// the channel. It retries etcd errors with backoff forever, so the stream
// survives etcd outages; consumers notice an outage only as silence.
func Watch[T any](ctx context.Context, cfg Config[T]) <-chan Event[T] {
	w := newWatcher(cfg)
	go w.run(ctx)
	return w.out
}

// errCompacted asks run to re-list: the revision to resume from is gone.
var errCompacted = errors.New("watch revision compacted")

type known[T any] struct {
	v   T
	mod int64 // ModRevision of the reported value
}

type watcher[T any] struct {
	cfg   Config[T]
	log   *slog.Logger
	out   chan Event[T]
	known map[string]known[T] // what the consumer has been told exists
	rev   int64               // everything up to rev has been reported
}

func newWatcher[T any](cfg Config[T]) *watcher[T] {
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	return &watcher[T]{
		cfg:   cfg,
		log:   log.With("watch", cfg.Key),
		out:   make(chan Event[T], 64),
		known: map[string]known[T]{},
	}
}

func (w *watcher[T]) run(ctx context.Context) {
	defer close(w.out)
	const minBackoff, maxBackoff = 100 * time.Millisecond, 5 * time.Second
	backoff := minBackoff
	needList := true
	for ctx.Err() == nil {
		var err error
		if needList {
			err = w.list(ctx)
			needList = err != nil
		} else {
			err = w.follow(ctx)
			if errors.Is(err, errCompacted) {
				w.log.Warn("etcd history compacted under watch, re-listing", "revision", w.rev)
				needList = true
				continue
			}
		}
		if err == nil || ctx.Err() != nil {
			backoff = minBackoff
			continue
		}
		w.log.Debug("etcd watch interrupted, retrying", "err", err, "in", backoff)
		select {
		case <-ctx.Done():
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, maxBackoff)
	}
}

func (w *watcher[T]) opts() []clientv3.OpOption {
	if w.cfg.End == "" {
		return nil
	}
	return []clientv3.OpOption{clientv3.WithRange(w.cfg.End)}
}

// list reads the whole range and reports the difference to what the
// consumer knows, followed by Synced.
func (w *watcher[T]) list(ctx context.Context) error {
	resp, err := w.cfg.Client.Get(ctx, w.cfg.Key, w.opts()...)
	if err != nil {
		return fmt.Errorf("list %s: %w", w.cfg.Key, err)
	}
	rev := resp.Header.Revision
	seen := make(map[string]bool, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		v, ok := w.decode(kv)
		if !ok {
			continue
		}
		key := string(kv.Key)
		seen[key] = true
		if old, ok := w.known[key]; ok && old.mod == kv.ModRevision {
			continue // a re-list need not repeat what the consumer has
		}
		w.known[key] = known[T]{v, kv.ModRevision}
		if err := w.emit(ctx, Event[T]{Type: Put, Key: string(kv.Key), Value: v, Revision: kv.ModRevision}); err != nil {
			return err
		}
	}
	var gone []string
	for k := range w.known {
		if !seen[k] {
			gone = append(gone, k)
		}
	}
	sort.Strings(gone)
	for _, k := range gone {
		old := w.known[k]
		delete(w.known, k)
		if err := w.emit(ctx, Event[T]{Type: Delete, Key: k, Value: old.v, Revision: rev}); err != nil {
			return err
		}
	}
	w.rev = rev
	return w.emit(ctx, Event[T]{Type: Synced, Revision: rev})
}

// follow watches from w.rev+1 until the watch ends; errCompacted means the
// caller must re-list.
func (w *watcher[T]) follow(ctx context.Context) error {
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	opts := append(w.opts(), clientv3.WithRev(w.rev+1), clientv3.WithProgressNotify())
	for resp := range w.cfg.Client.Watch(wctx, w.cfg.Key, opts...) {
		if resp.CompactRevision != 0 {
			return errCompacted
		}
		if err := resp.Err(); err != nil {
			return fmt.Errorf("watch %s: %w", w.cfg.Key, err)
		}
		if resp.IsProgressNotify() {
			// All events up to the header revision have been delivered.
			w.rev = max(w.rev, resp.Header.Revision)
			continue
		}
		for _, ev := range resp.Events {
			if err := w.apply(ctx, ev); err != nil {
				return err
			}
			w.rev = max(w.rev, ev.Kv.ModRevision)
		}
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	return fmt.Errorf("watch %s closed", w.cfg.Key)
}

func (w *watcher[T]) apply(ctx context.Context, ev *clientv3.Event) error {
	key := string(ev.Kv.Key)
	if ev.Type == mvccpb.PUT {
		if v, ok := w.decode(ev.Kv); ok {
			w.known[key] = known[T]{v, ev.Kv.ModRevision}
			return w.emit(ctx, Event[T]{Type: Put, Key: key, Value: v, Revision: ev.Kv.ModRevision})
		}
	}
	old, ok := w.known[key]
	if !ok {
		return nil
	}
	delete(w.known, key)
	return w.emit(ctx, Event[T]{Type: Delete, Key: key, Value: old.v, Revision: ev.Kv.ModRevision})
}

func (w *watcher[T]) decode(kv *mvccpb.KeyValue) (T, bool) {
	v, keep, err := w.cfg.Decode(kv)
	if err != nil {
		if w.cfg.OnBad != nil {
			w.cfg.OnBad(string(kv.Key), err)
		}
		var zero T
		return zero, false
	}
	return v, keep
}

func (w *watcher[T]) emit(ctx context.Context, ev Event[T]) error {
	select {
	case w.out <- ev:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
