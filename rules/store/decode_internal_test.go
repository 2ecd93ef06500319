package store

import (
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"

	"go.etcd.io/etcd/api/v3/mvccpb"

	"github.com/keyroute/keyroute/registry"
)

// decode is the one place rule records are checked; these tests and the
// fuzz target call it without etcd. rules.Parse has its own field tests.

const goodRule = `{"id":"r1","priority":100,"direction":"egress","local":{"name":"web-*"},"remote":{"cidr":"198.19.0.0/16"},"protocol":"tcp","ports":"80-90","action":"deny"}`

func testStore() *Store { return New(nil, registry.DefaultPrefix, nil) }

func TestDecode(t *testing.T) {
	s := testStore()
	if r, err := s.decode(&mvccpb.KeyValue{Key: []byte(s.Key("r1")), Value: []byte(goodRule)}); err != nil || r.ID != "r1" {
		t.Fatalf("good rule: %+v, %v", r, err)
	}
	for _, tc := range []struct{ name, id, value, want string }{
		{"id not the key's", "r2", goodRule, `record holds id "r1", its key "r2"`},
		{"IPv6 remote", "r1", strings.Replace(goodRule, "198.19.0.0/16", "fd00::/8", 1), `remote: invalid CIDR "fd00::/8"`},
		{"bad ports", "r1", strings.Replace(goodRule, "80-90", "90-80", 1), "start 90 is above end 80"},
		{"unknown field", "r1", strings.Replace(goodRule, `"id"`, `"x":1,"id"`, 1), `unknown field "x"`},
		{"oversize", "r1", goodRule + strings.Repeat(" ", registry.MaxRecordSize), "exceeds the 65536-byte limit"},
		{"not JSON", "r1", "{", "decode rule"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := s.decode(&mvccpb.KeyValue{Key: []byte(s.Key(tc.id)), Value: []byte(tc.value)})
			switch {
			case err == nil:
				t.Fatalf("accepted, want %q", tc.want)
			case !errors.Is(err, ErrBadRecord) || registry.RecordKind(err) != registry.KindRule:
				t.Fatalf("error %v is not a rule RecordError", err)
			case !strings.Contains(err.Error(), tc.want):
				t.Fatalf("error %q does not contain %q", err, tc.want)
			}
		})
	}
}

// FuzzDecodeRule: decode never panics; what it rejects is a rule
// RecordError; what it accepts passes Validate, sits at its id's key and
// survives re-encoding unchanged.
func FuzzDecodeRule(f *testing.F) {
	f.Add("r1", []byte(goodRule))
	f.Add("r1", []byte(`{"id":"r1","direction":"ingress","local":{},"remote":{},"protocol":"icmp","icmp_type":8,"action":"rate-limit","rate":{"pps":10}}`))
	f.Add("r1", []byte(strings.Replace(goodRule, "198.19.0.0/16", "fd00::/8", 1)))
	f.Add("evil", []byte(`{"id":"evil","direction":"egress","action":"deny","remote":{"cidr":"2001:db8::1"}}`))
	s := testStore()
	f.Fuzz(func(t *testing.T, id string, value []byte) {
		key := s.Key(id)
		r, err := s.decode(&mvccpb.KeyValue{Key: []byte(key), Value: value})
		if err != nil {
			if !errors.Is(err, ErrBadRecord) || registry.RecordKind(err) != registry.KindRule {
				t.Fatalf("rejection %v is not a rule RecordError", err)
			}
			return
		}
		if err := r.Validate(); err != nil {
			t.Fatalf("decoded rule fails Validate: %v", err)
		}
		if s.Key(r.ID) != key {
			t.Fatalf("rule %q decoded from key %q", r.ID, key)
		}
		b, err := json.Marshal(r)
		if err != nil {
			t.Fatalf("re-encode %+v: %v", r, err)
		}
		again, err := s.decode(&mvccpb.KeyValue{Key: []byte(key), Value: b})
		if err != nil || !reflect.DeepEqual(again, r) {
			t.Fatalf("re-decoded %+v, %v; want %+v", again, err, r)
		}
	})
}
