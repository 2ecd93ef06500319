package keyalloc

import (
	"encoding/json"
	"errors"
	"net/netip"
	"strings"
	"testing"

	"go.etcd.io/etcd/api/v3/mvccpb"

	"github.com/keyroute/keyroute/registry"
)

// The decoders are the one place key records and pair index entries are
// checked; these tests and fuzz targets call them without etcd.

func testAllocator() *Allocator { return New(nil, registry.DefaultPrefix, KeySet{}) }

func kv(key, value string) *mvccpb.KeyValue {
	return &mvccpb.KeyValue{Key: []byte(registry.DefaultPrefix + key), Value: []byte(value), ModRevision: 9, CreateRevision: 8}
}

const (
	goodRecord = `{"src":"198.19.1.2","dst":"198.19.2.3","state":"ready","created":"2024-01-02T03:04:05.678Z"}`
	goodIndex  = `{"key":{"src":"198.18.0.1","dst":"198.18.0.2","dscp":5},"created":"2024-01-02T03:04:05.678Z"}`
	k5         = "198.18.0.1/198.18.0.2/5" // a record path's key segments
)

func checkBad(t *testing.T, kind string, err error, want string) {
	t.Helper()
	switch {
	case err == nil:
		t.Errorf("accepted, want an error containing %q", want)
	case !errors.Is(err, ErrBadRecord) || registry.RecordKind(err) != kind:
		t.Errorf("error %v: want a %s RecordError wrapping ErrBadRecord", err, kind)
	case !strings.Contains(err.Error(), want):
		t.Errorf("error %q does not contain %q", err, want)
	}
}

func TestDecodeRecord(t *testing.T) {
	a := testAllocator()
	r, err := a.decodeRecord(kv("keys/h1/h2/"+k5, goodRecord))
	if err != nil || r.Key != (Key{Src: netip.MustParseAddr("198.18.0.1"), Dst: netip.MustParseAddr("198.18.0.2"), DSCP: 5}) || r.SrcHost != "h1" || r.DstHost != "h2" || r.State != StateReady || r.ModRevision != 9 {
		t.Fatalf("good record: %+v, %v", r, err)
	}
	const ab = "keys/h1/h2/198.18.0.1/198.18.0.2/"
	for _, tc := range []struct{ name, key, value, want string }{
		{"key 0", ab + "0", goodRecord, `key DSCP "0" is not 1-63`},
		{"key 64", ab + "64", goodRecord, `key DSCP "64" is not 1-63`},
		{"key 256", ab + "256", goodRecord, `key DSCP "256" is not 1-63`},
		{"key not canonical", ab + "05", goodRecord, `key DSCP "05" is not 1-63`},
		{"key not a number", ab + "x", goodRecord, `key DSCP "x"`},
		{"old layout", "keys/h1/h2/5", goodRecord, "key is not keys/ followed by 5 segments"},
		{"too many segments", ab + "5/6", goodRecord, "key is not keys/ followed by 5 segments"},
		{"key address not an IP", "keys/h1/h2/198.18.0.1/nope/5", goodRecord, `key addresses "198.18.0.1"/"nope"`},
		{"key address IPv6", "keys/h1/h2/fd00::1/198.18.0.2/5", goodRecord, "key source address: fd00::1 is not IPv4"},
		{"key address multicast", "keys/h1/h2/198.18.0.1/224.0.0.1/5", goodRecord, "key destination address: 224.0.0.1 is not a unicast"},
		{"key addresses equal", "keys/h1/h2/198.18.0.1/198.18.0.1/5", goodRecord, "key source and destination address are both 198.18.0.1"},
		{"key address IPv4-mapped", "keys/h1/h2/::ffff:198.18.0.1/198.18.0.2/5", goodRecord, "key source address: ::ffff:198.18.0.1 is not IPv4"},
		{"IPv6 source", ab + "5", `{"src":"fd00::1","dst":"198.19.2.3","state":"ready"}`, "source container IP: fd00::1 is not IPv4"},
		{"IPv6 destination", ab + "5", `{"src":"198.19.1.2","dst":"2001:db8::1","state":"ready"}`, "destination container IP: 2001:db8::1 is not IPv4"},
		{"no source", ab + "5", `{"dst":"198.19.2.3","state":"ready"}`, "source container IP: missing"},
		{"multicast destination", ab + "5", `{"src":"198.19.1.2","dst":"224.0.0.1","state":"ready"}`, "destination container IP: 224.0.0.1 is not a unicast"},
		{"state", ab + "5", `{"src":"198.19.1.2","dst":"198.19.2.3","state":"weird"}`, `state "weird"`},
		{"same hosts", "keys/h1/h1/" + k5, goodRecord, "source and destination host are both h1"},
		{"empty host", "keys//h2/" + k5, goodRecord, "source host: empty name"},
		{"not JSON", ab + "5", "{garbage", "invalid character"},
		{"oversize", ab + "5", strings.Repeat(" ", registry.MaxRecordSize+1), "exceeds"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := a.decodeRecord(kv(tc.key, tc.value))
			checkBad(t, registry.KindKey, err, tc.want)
		})
	}
}

func TestDecodeIndex(t *testing.T) {
	a := testAllocator()
	r, err := a.decodeIndex(kv("pairs/h2/h1/198.19.1.2-198.19.2.3", goodIndex))
	if err != nil || r.Key != (Key{Src: netip.MustParseAddr("198.18.0.1"), Dst: netip.MustParseAddr("198.18.0.2"), DSCP: 5}) || r.SrcHost != "h1" || r.DstHost != "h2" || r.Src.String() != "198.19.1.2" || r.State != StatePending {
		t.Fatalf("good index: %+v, %v", r, err)
	}
	for _, tc := range []struct{ name, key, value, want string }{
		{"IPv6 pair", "pairs/h2/h1/fd00::1-fd00::2", goodIndex, "source container IP: fd00::1 is not IPv4"},
		{"IPv6 destination", "pairs/h2/h1/198.19.1.2-2001:db8::1", goodIndex, "destination container IP: 2001:db8::1 is not IPv4"},
		{"not an IP", "pairs/h2/h1/1.2.3.4-nope", goodIndex, `pair "1.2.3.4-nope"`},
		{"no dash", "pairs/h2/h1/1.2.3.4", goodIndex, `pair "1.2.3.4"`},
		{"key 0", "pairs/h2/h1/198.19.1.2-198.19.2.3", `{"key":{"src":"198.18.0.1","dst":"198.18.0.2","dscp":0}}`, "key DSCP 0 is not 1-63"},
		{"key 64", "pairs/h2/h1/198.19.1.2-198.19.2.3", `{"key":{"src":"198.18.0.1","dst":"198.18.0.2","dscp":64}}`, "key DSCP 64 is not 1-63"},
		{"key 300", "pairs/h2/h1/198.19.1.2-198.19.2.3", `{"key":{"src":"198.18.0.1","dst":"198.18.0.2","dscp":300}}`, "cannot unmarshal number 300"},
		{"key without addresses", "pairs/h2/h1/198.19.1.2-198.19.2.3", `{"key":{"dscp":5}}`, "key source address: missing"},
		{"old layout", "pairs/h2/h1/198.19.1.2-198.19.2.3", `{"key":5}`, "cannot unmarshal number"},
		{"same hosts", "pairs/h2/h2/198.19.1.2-198.19.2.3", goodIndex, "source and destination host are both h2"},
		{"too few segments", "pairs/h2/198.19.1.2-198.19.2.3", goodIndex, "followed by 3 segments"},
		{"oversize", "pairs/h2/h1/198.19.1.2-198.19.2.3", strings.Repeat(" ", registry.MaxRecordSize+1), "exceeds"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := a.decodeIndex(kv(tc.key, tc.value))
			checkBad(t, registry.KindPair, err, tc.want)
		})
	}
}

// Fuzz targets. The property: a decoder never panics; what it rejects is a
// RecordError of its kind; what it accepts passes Validate, sits at its
// canonical key and survives re-encoding unchanged.

func checkDecoded(t *testing.T, kind string, r Record, err error) bool {
	t.Helper()
	if err != nil {
		if !errors.Is(err, ErrBadRecord) || registry.RecordKind(err) != kind {
			t.Fatalf("rejection %v is not a %s RecordError", err, kind)
		}
		return false
	}
	if err := r.Validate(); err != nil {
		t.Fatalf("decoded record fails Validate: %v", err)
	}
	return true
}

func sameRecord(a, b Record) bool {
	ac, bc := a.Created, b.Created
	a.Created, b.Created = ac.UTC(), bc.UTC()
	return ac.Equal(bc) && a == b
}

func FuzzDecodeRecord(f *testing.F) {
	f.Add("h1/h2/"+k5, []byte(goodRecord))
	f.Add("h1/h2/5", []byte(goodRecord))
	f.Add("h1/h2/198.18.0.1/198.18.0.2/05", []byte(goodRecord))
	f.Add("h1/h2/198.18.0.1/198.18.0.2/64", []byte(goodRecord))
	f.Add("h1/h2/"+k5, []byte(`{"src":"fd00::1","dst":"198.19.2.3","state":"pending"}`))
	f.Add("h1/h2/"+k5, []byte(`{"src":"198.19.1.2","dst":"198.19.2.3","state":"pending","created":"2024-01-02T03:04:05+14:00"}`))
	a := testAllocator()
	f.Fuzz(func(t *testing.T, rest string, value []byte) {
		key := a.prefix + "keys/" + rest
		r, err := a.decodeRecord(&mvccpb.KeyValue{Key: []byte(key), Value: value})
		if !checkDecoded(t, registry.KindKey, r, err) {
			return
		}
		if a.recordKey(r.SrcHost, r.DstHost, r.Key) != key {
			t.Fatalf("record %+v decoded from key %q", r, key)
		}
		b, err := json.Marshal(recordJSON{r.Src, r.Dst, r.State, r.Created})
		if err != nil {
			t.Fatalf("re-encode %+v: %v", r, err)
		}
		again, err := a.decodeRecord(&mvccpb.KeyValue{Key: []byte(key), Value: b})
		if err != nil || !sameRecord(again, r) {
			t.Fatalf("re-decoded %+v, %v; want %+v", again, err, r)
		}
	})
}

func FuzzDecodeIndex(f *testing.F) {
	f.Add("h2/h1/198.19.1.2-198.19.2.3", []byte(goodIndex))
	f.Add("h2/h1/fd00::1-fd00::2", []byte(goodIndex))
	f.Add("h2/h1/198.19.1.2-::ffff:198.19.2.3", []byte(goodIndex))
	f.Add("h2/h1/198.19.1.2-198.19.2.3", []byte(`{"key":64}`))
	f.Add("h2/h1/198.19.1.2-198.19.2.3", []byte(`{"key":{"src":"198.18.0.1","dst":"198.18.0.2","dscp":64}}`))
	a := testAllocator()
	f.Fuzz(func(t *testing.T, rest string, value []byte) {
		key := a.prefix + "pairs/" + rest
		r, err := a.decodeIndex(&mvccpb.KeyValue{Key: []byte(key), Value: value})
		if !checkDecoded(t, registry.KindPair, r, err) {
			return
		}
		if a.indexKey(r) != key {
			t.Fatalf("pair %+v decoded from key %q", r, key)
		}
		b, err := json.Marshal(indexJSON{keyJSON{r.Key.Src, r.Key.Dst, r.Key.DSCP}, r.Created})
		if err != nil {
			t.Fatalf("re-encode %+v: %v", r, err)
		}
		again, err := a.decodeIndex(&mvccpb.KeyValue{Key: []byte(key), Value: b})
		if err != nil || !sameRecord(again, r) {
			t.Fatalf("re-decoded %+v, %v; want %+v", again, err, r)
		}
	})
}
