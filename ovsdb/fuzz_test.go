package ovsdb

import (
	"encoding/json"
	"reflect"
	"testing"
)

// FuzzDecodeValue: any input decodes to a value or an error; a decoded value
// re-encodes and decodes to itself.
func FuzzDecodeValue(f *testing.F) {
	for _, s := range []string{
		`"x"`, `1`, `-1.5e3`, `true`, `["uuid","` + u1 + `"]`, `["named-uuid","a"]`, `["set",[1,2]]`,
		`["map",[["a","b"],[1,["uuid","` + u1 + `"]]]]`, `["set",[["set",[]]]]`, `["map",[["a",1],["a",2]]]`,
		`99999999999999999999`, `1e999`, `null`, `{}`, `["set",[1]] 1`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		v, err := decodeValue(data)
		if err != nil {
			return
		}
		enc, err := encodeValue(v)
		if err != nil {
			t.Fatalf("re-encode %#v (from %q): %v", v, data, err)
		}
		b, err := json.Marshal(enc)
		if err != nil {
			t.Fatalf("marshal %#v: %v", enc, err)
		}
		v2, err := decodeValue(b)
		if err != nil {
			t.Fatalf("decode re-encoded %s: %v", b, err)
		}
		if !reflect.DeepEqual(v, v2) {
			t.Fatalf("round trip of %q: %#v != %#v", data, v, v2)
		}
	})
}

// FuzzDecodeMessage: a server message, whatever it is, decodes to a message
// or an error, and so do the transact results and table updates it may
// carry; nothing panics.
func FuzzDecodeMessage(f *testing.F) {
	for _, s := range []string{
		`{"id":1,"result":[{"uuid":["uuid","` + u1 + `"]},{"rows":[{"name":"a","ofport":["set",[]]}]},{"error":"constraint violation","details":"d"}],"error":null}`,
		`{"id":null,"method":"update","params":["keyroute-monitor-1",{"Interface":{"` + u1 + `":{"old":{"ofport":["set",[]]},"new":{"name":"x","ofport":3}}}}]}`,
		`{"id":"echo","method":"echo","params":[]}`,
		`{"id":2,"result":null,"error":{"error":"unknown database","details":"x"}}`,
		`{"id":3,"result":{"Bridge":{"` + u1 + `":{"new":{"name":"br-int"}}}},"error":null}`,
		`{"method":"update","params":{}}`, `[]`, `{"id":1}`,
	} {
		f.Add([]byte(s))
	}
	ops := []Operation{Insert("Interface", Row{"name": "x"}, ""), Select("Interface", nil), Comment("c")}
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := decodeMessage(data)
		if err != nil {
			return
		}
		if !isNull(m.Error) {
			_ = decodeRPCError("transact", m.Error).Error()
		}
		if !isNull(m.Result) {
			decodeTransactResult(m.Result, ops)
			decodeTableUpdates(m.Result)
		}
		if m.isNotification() {
			var p []json.RawMessage
			if json.Unmarshal(m.Params, &p) == nil && len(p) == 2 {
				decodeTableUpdates(p[1])
			}
		}
	})
}
