// Package store keeps keyroute's network rules in etcd, one JSON record per
// rule at <prefix>rules/<id>, and streams them to agents. Every record read
// is validated like user input (rules.Parse); a bad one is reported to the
// OnBad callback and skipped, so one corrupt key cannot stop enforcement of
// the others.
package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/keyroute/keyroute/registry"
	"github.com/keyroute/keyroute/registry/kvwatch"
	"github.com/keyroute/keyroute/rules"
)

// Errors returned wrapped, with context.
var (
	ErrExists   = errors.New("rule already exists")
	ErrNotFound = errors.New("no such rule")
	// ErrBadRecord is registry's: one sentinel for a bad record of any
	// kind; the error is a *registry.RecordError of kind rule.
	ErrBadRecord = registry.ErrBadRecord
)

// Event is one change of a rule seen by Watch (kvwatch semantics: a record
// that turns bad is reported as a Delete).
type Event = kvwatch.Event[rules.Rule]

// Store reads and writes rules under one root prefix.
type Store struct {
	cli   *clientv3.Client
	dir   string // "<prefix>rules/"
	onBad func(key string, err error)
}

// New returns a store for prefix (e.g. "/keyroute/"); onBad, if not nil, is
// called for every bad record a List or Watch skips, with a
// *registry.RecordError. The store does not log them itself.
func New(cli *clientv3.Client, prefix string, onBad func(key string, err error)) *Store {
	if !strings.HasSuffix(prefix, "/") {
		prefix += "/"
	}
	return &Store{cli: cli, dir: prefix + "rules/", onBad: onBad}
}

// Key returns the etcd key of rule id.
func (s *Store) Key(id string) string { return s.dir + id }

// decode is the one place a rule record is read and checked: strictly, as
// user input (rules.Parse), and its id must be its key's.
func (s *Store) decode(kv *mvccpb.KeyValue) (rules.Rule, error) {
	fail := func(err error) (rules.Rule, error) {
		return rules.Rule{}, registry.NewRecordError(registry.KindRule, kv, err)
	}
	if err := registry.CheckSize(kv); err != nil {
		return fail(err)
	}
	r, err := rules.Parse(kv.Value)
	if err != nil {
		return fail(err)
	}
	if want := strings.TrimPrefix(string(kv.Key), s.dir); r.ID != want {
		return fail(fmt.Errorf("record holds id %q, its key %.64q", r.ID, want))
	}
	return r, nil
}

func (s *Store) bad(key string, err error) {
	if s.onBad != nil {
		s.onBad(key, err)
	}
}

// Put validates r and writes it. With replace=false it fails with
// ErrExists if the id is taken (one transaction, so two writers cannot
// both create it); with replace=true it creates or overwrites.
func (s *Store) Put(ctx context.Context, r rules.Rule, replace bool) error {
	r.Normalize()
	if err := r.Validate(); err != nil {
		return err
	}
	b, err := json.Marshal(r)
	if err != nil {
		return fmt.Errorf("encode rule %s: %w", r.ID, err)
	}
	key := s.Key(r.ID)
	if replace {
		if _, err := s.cli.Put(ctx, key, string(b)); err != nil {
			return fmt.Errorf("write rule %s: %w", r.ID, err)
		}
		return nil
	}
	resp, err := s.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
		Then(clientv3.OpPut(key, string(b))).
		Commit()
	if err != nil {
		return fmt.Errorf("write rule %s: %w", r.ID, err)
	}
	if !resp.Succeeded {
		return fmt.Errorf("add rule %s: %w (delete it first, or replace it)", r.ID, ErrExists)
	}
	return nil
}

// Get reads one rule; a bad record is an error wrapping ErrBadRecord.
func (s *Store) Get(ctx context.Context, id string) (rules.Rule, error) {
	if err := rules.ValidateID(id); err != nil {
		return rules.Rule{}, err
	}
	resp, err := s.cli.Get(ctx, s.Key(id))
	if err != nil {
		return rules.Rule{}, fmt.Errorf("read rule %s: %w", id, err)
	}
	if len(resp.Kvs) == 0 {
		return rules.Rule{}, fmt.Errorf("rule %s: %w", id, ErrNotFound)
	}
	return s.decode(resp.Kvs[0])
}

// List returns every valid rule sorted by id, skipping (and reporting) bad
// records.
func (s *Store) List(ctx context.Context) ([]rules.Rule, error) {
	resp, err := s.cli.Get(ctx, s.dir, clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("list rules: %w", err)
	}
	out := make([]rules.Rule, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		r, err := s.decode(kv)
		if err != nil {
			s.bad(string(kv.Key), err)
			continue
		}
		out = append(out, r)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, nil
}

// Delete removes rule id; ErrNotFound if there is none.
func (s *Store) Delete(ctx context.Context, id string) error {
	if err := rules.ValidateID(id); err != nil {
		return err
	}
	resp, err := s.cli.Delete(ctx, s.Key(id))
	if err != nil {
		return fmt.Errorf("delete rule %s: %w", id, err)
	}
	if resp.Deleted == 0 {
		return fmt.Errorf("delete rule %s: %w", id, ErrNotFound)
	}
	return nil
}

// Watch streams every rule (a Put each, then Synced), then every change,
// until ctx ends. It survives etcd outages and compactions (kvwatch).
func (s *Store) Watch(ctx context.Context) <-chan Event {
	return kvwatch.Watch(ctx, kvwatch.Config[rules.Rule]{
		Client: s.cli,
		Key:    s.dir,
		End:    clientv3.GetPrefixRangeEnd(s.dir),
		Decode: func(kv *mvccpb.KeyValue) (rules.Rule, bool, error) {
			r, err := s.decode(kv)
			return r, err == nil, err
		},
		OnBad: s.bad,
	})
}
