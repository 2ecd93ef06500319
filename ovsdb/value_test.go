package ovsdb

import (
	"encoding/json"
	"errors"
	"math"
	"reflect"
	"strings"
	"testing"
	"time"
)

const u1 = "0a1b2c3d-0000-4000-8000-00000000abcd"

func TestValueRoundTrip(t *testing.T) {
	cases := []struct {
		v    any
		json string
	}{
		{"br-int", `"br-int"`},
		{"", `""`},
		{int64(-7), `-7`},
		{int64(math.MaxInt64), `9223372036854775807`},
		{1.5, `1.5`},
		{float64(2), `2.0`},
		{1e300, `1e+300`},
		{true, `true`},
		{UUID(u1), `["uuid","` + u1 + `"]`},
		{NamedUUID("row1"), `["named-uuid","row1"]`},
		{Set{}, `["set",[]]`},
		{Set{"OpenFlow13", "OpenFlow15"}, `["set",["OpenFlow13","OpenFlow15"]]`},
		{Set{UUID(u1), int64(3)}, `["set",[["uuid","` + u1 + `"],3]]`},
		{Map{}, `["map",[]]`},
		{Map{"b": "2", "a": "1"}, `["map",[["a","1"],["b","2"]]]`},
		{Map{int64(0): UUID(u1)}, `["map",[[0,["uuid","` + u1 + `"]]]]`},
	}
	for _, tc := range cases {
		b, err := json.Marshal(Row{"c": tc.v})
		if err != nil {
			t.Fatalf("encode %#v: %v", tc.v, err)
		}
		if want := `{"c":` + tc.json + `}`; string(b) != want {
			t.Errorf("encode %#v = %s, want %s", tc.v, b, want)
		}
		got, err := decodeValue([]byte(tc.json))
		if err != nil {
			t.Fatalf("decode %s: %v", tc.json, err)
		}
		if !reflect.DeepEqual(got, tc.v) {
			t.Errorf("decode %s = %#v, want %#v", tc.json, got, tc.v)
		}
	}
}

func TestEncodeConvenienceTypes(t *testing.T) {
	cases := []struct {
		v    any
		json string
	}{
		{map[string]string{"peer": "patch-int"}, `["map",[["peer","patch-int"]]]`},
		{map[string]string(nil), `["map",[]]`},
		{[]string{"OpenFlow13"}, `["set",["OpenFlow13"]]`},
		{[]UUID{u1}, `["set",[["uuid","` + u1 + `"]]]`},
		{uint16(4789), `4789`},
		{int(3), `3`},
		{float32(0.5), `0.5`},
	}
	for _, tc := range cases {
		enc, err := encodeValue(tc.v)
		if err != nil {
			t.Fatalf("encode %#v: %v", tc.v, err)
		}
		b, _ := json.Marshal(enc)
		if string(b) != tc.json {
			t.Errorf("encode %#v = %s, want %s", tc.v, b, tc.json)
		}
	}
}

func TestEncodeErrors(t *testing.T) {
	for _, v := range []any{
		Set{Set{}},
		Set{map[string]string{}},
		Map{"k": Set{"x"}},
		math.NaN(),
		math.Inf(1),
		uint64(math.MaxUint64),
		struct{}{},
		nil,
		[]int{1},
	} {
		if _, err := json.Marshal(Row{"c": v}); err == nil {
			t.Errorf("encode %#v: no error", v)
		}
	}
}

func TestDecodeErrors(t *testing.T) {
	for _, in := range []string{
		``, `null`, `{}`, `{"a":1}`, `[]`, `[1]`, `["set"]`, `["set",1,2]`, `["set",{}]`,
		`["set",[["set",[]]]]`, `["set",[null]]`, `["map",[["a"]]]`, `["map",{}]`,
		`["map",[["a",1],["a",2]]]`, `["map",[[["set",[]],1]]]`, `["uuid","nope"]`,
		`["uuid",5]`, `["named-uuid",""]`, `["bogus",1]`, `1e999`, `99999999999999999999`,
		`"a" "b"`, `"unterminated`, `[1,2]`,
	} {
		if v, err := decodeValue([]byte(in)); err == nil {
			t.Errorf("decode %q = %#v, want error", in, v)
		}
	}
}

func TestRowAccessors(t *testing.T) {
	r := Row{
		"_uuid":    UUID(u1),
		"name":     "vx0",
		"ofport":   int64(4),
		"noport":   Set{},
		"optint":   Set{int64(9)},
		"protos":   "OpenFlow13", // a one-element set arrives as its atom
		"ports":    Set{UUID(u1), UUID(u1)},
		"options":  Map{"key": "flow", int64(1): "skipped"},
		"enabled":  true,
		"mismatch": int64(1),
	}
	if r.UUID() != UUID(u1) || r.String("name") != "vx0" || r.Int("ofport") != 4 || r.Int("noport") != 0 ||
		r.Int("optint") != 9 || !r.Bool("enabled") || r.String("mismatch") != "" || r.String("absent") != "" {
		t.Errorf("scalar accessors wrong on %v", r)
	}
	if got := r.Strings("protos"); !reflect.DeepEqual(got, []string{"OpenFlow13"}) {
		t.Errorf("Strings(protos) = %v", got)
	}
	if got := r.UUIDs("ports"); len(got) != 2 {
		t.Errorf("UUIDs(ports) = %v", got)
	}
	if got := r.StringMap("options"); !reflect.DeepEqual(got, map[string]string{"key": "flow"}) {
		t.Errorf("StringMap(options) = %v", got)
	}
	if got := r.StringMap("absent"); got == nil || len(got) != 0 {
		t.Errorf("StringMap(absent) = %#v, want empty map", got)
	}
}

func TestOperationJSON(t *testing.T) {
	where := eq("name", "br-int")
	cases := []struct {
		op   Operation
		json string
	}{
		{Insert("Port", Row{"name": "p", "interfaces": NamedUUID("i")}, "p1"),
			`{"op":"insert","row":{"interfaces":["named-uuid","i"],"name":"p"},"table":"Port","uuid-name":"p1"}`},
		{Insert("Port", nil, ""), `{"op":"insert","row":{},"table":"Port"}`},
		{Select("Bridge", nil), `{"op":"select","table":"Bridge","where":[]}`},
		{Select("Bridge", where, "_uuid", "ports"),
			`{"columns":["_uuid","ports"],"op":"select","table":"Bridge","where":[["name","==","br-int"]]}`},
		{Update("Bridge", where, Row{"fail_mode": "secure"}),
			`{"op":"update","row":{"fail_mode":"secure"},"table":"Bridge","where":[["name","==","br-int"]]}`},
		{Mutate("Bridge", where, Mut("ports", "insert", Set{UUID(u1)})),
			`{"mutations":[["ports","insert",["set",[["uuid","` + u1 + `"]]]]],"op":"mutate","table":"Bridge","where":[["name","==","br-int"]]}`},
		{Delete("Bridge", where...), `{"op":"delete","table":"Bridge","where":[["name","==","br-int"]]}`},
		{Wait("Bridge", where, []string{"name"}, "==", []Row{{"name": "br-int"}}, 1500*time.Millisecond),
			`{"columns":["name"],"op":"wait","rows":[{"name":"br-int"}],"table":"Bridge","timeout":1500,"until":"==","where":[["name","==","br-int"]]}`},
		{Comment("keyroute: ensure br-int"), `{"comment":"keyroute: ensure br-int","op":"comment"}`},
		{Select("Port", []Condition{Cond("external_ids", "includes", map[string]string{OwnerKey: "me"})}, "_uuid"),
			`{"columns":["_uuid"],"op":"select","table":"Port","where":[["external_ids","includes",["map",[["keyroute-owner","me"]]]]]}`},
	}
	for _, tc := range cases {
		b, err := json.Marshal(tc.op)
		if err != nil {
			t.Fatalf("marshal %+v: %v", tc.op, err)
		}
		if string(b) != tc.json {
			t.Errorf("marshal %s:\n got %s\nwant %s", tc.op.Op, b, tc.json)
		}
	}
	for _, bad := range []Operation{
		{Op: "frobnicate", Table: "Bridge"},
		Wait("Bridge", nil, nil, "<", nil, 0),
		Update("Bridge", nil, Row{"x": struct{}{}}),
		Select("Bridge", []Condition{Cond("x", "==", Set{Set{}})}),
	} {
		if b, err := json.Marshal(bad); err == nil {
			t.Errorf("marshal %+v = %s, want error", bad, b)
		}
	}
}

func TestDecodeTransactResult(t *testing.T) {
	ops := []Operation{
		Insert("Interface", Row{"name": "a"}, "i"),
		Select("Bridge", nil, "name"),
		Insert("Interface", Row{"name": "a"}, ""),
		Comment("x"),
	}
	ok := `[{"uuid":["uuid","` + u1 + `"]},{"rows":[{"name":"br-int","ports":["set",[]]}]},{"count":0},{}]`
	res, err := decodeTransactResult(json.RawMessage(ok), ops)
	if err != nil {
		t.Fatal(err)
	}
	if res[0].UUID != UUID(u1) || len(res[1].Rows) != 1 || res[1].Rows[0].String("name") != "br-int" {
		t.Errorf("results = %+v", res)
	}

	opErr := `[{"uuid":["uuid","` + u1 + `"]},{"rows":[]},{"error":"constraint violation","details":"Transaction causes multiple rows in \"Interface\" table to have identical values (\"a\") for index on column \"name\"."},null]`
	res, err = decodeTransactResult(json.RawMessage(opErr), ops)
	var oe *OpError
	if !errors.As(err, &oe) || oe.Index != 2 || oe.Err != "constraint violation" {
		t.Fatalf("err = %v, want OpError for op 2", err)
	}
	if want := `transact op 2 (insert Interface): constraint violation: Transaction causes multiple rows`; !strings.HasPrefix(err.Error(), want) {
		t.Errorf("err = %q, want prefix %q", err, want)
	}
	if len(res) != 2 || res[0].UUID != UUID(u1) {
		t.Errorf("results before the error = %+v", res)
	}

	commitErr := `[{},{},{},{},{"error":"referential integrity violation","details":"cannot delete Port row"}]`
	_, err = decodeTransactResult(json.RawMessage(commitErr), ops)
	if err == nil || err.Error() != "transact commit: referential integrity violation: cannot delete Port row" {
		t.Errorf("commit err = %v", err)
	}
	_, err = decodeTransactResult(json.RawMessage(`[{"error":"timed out"}]`), []Operation{Comment("c")})
	if err == nil || err.Error() != "transact op 0 (comment): timed out" {
		t.Errorf("comment err = %v", err)
	}

	for _, bad := range []string{
		`{}`, `[{}]`, `[1,{},{},{}]`, `[{"uuid":"x"},{},{},{}]`, `[{"count":"x"},{},{},{}]`,
		`[{},{"rows":{}},{},{}]`, `[{},{"rows":[{"a":["set"]}]},{},{}]`, `[{},{},{},{},{}]`,
		`[{"error":5},{},{},{}]`,
	} {
		if _, err := decodeTransactResult(json.RawMessage(bad), ops); err == nil {
			t.Errorf("decode %s: no error", bad)
		}
	}
}

func TestDecodeMessage(t *testing.T) {
	m, err := decodeMessage([]byte(`{"id":"echo","method":"echo","params":[]}`))
	if err != nil || !m.isRequest() {
		t.Errorf("echo request: %+v, %v", m, err)
	}
	m, err = decodeMessage([]byte(`{"id":null,"method":"update","params":["m",{}]}`))
	if err != nil || !m.isNotification() {
		t.Errorf("update notification: %+v, %v", m, err)
	}
	m, err = decodeMessage([]byte(`{"id":3,"result":["Open_vSwitch"],"error":null}`))
	if err != nil || m.isRequest() || m.isNotification() {
		t.Errorf("response: %+v, %v", m, err)
	}
	for _, bad := range []string{
		`[]`, `5`, `{}`, `{"id":null}`, `{"id":1}`, `{"id":1,"result":null,"error":null}`,
		`{"method":"echo","params":{}}`, `{"method":7}`, `{"method":"update","params":"x"}`, `{`,
	} {
		if m, err := decodeMessage([]byte(bad)); err == nil {
			t.Errorf("decode %s = %+v, want error", bad, m)
		}
	}
	err = decodeRPCError("transact", json.RawMessage(`{"error":"unknown database","details":"no db x"}`))
	if err.Error() != "transact: unknown database: no db x" {
		t.Errorf("rpc error = %q", err)
	}
	if err := decodeRPCError("monitor", json.RawMessage(`"duplicate monitor ID"`)); err.Error() != "monitor: duplicate monitor ID" {
		t.Errorf("rpc error = %q", err)
	}
}

func TestMergeMutations(t *testing.T) {
	cur := map[string]string{"hwaddr": "02:00:00:00:00:01", "keep": "x", "gone": "y"}
	muts := mergeMutations("other_config", cur, map[string]string{"hwaddr": "02:00:00:00:00:02", "keep": "x", "gone": "", "new": "z", "never": ""})
	b, _ := json.Marshal(muts)
	want := `[["other_config","delete",["set",["gone","hwaddr"]]],["other_config","insert",["map",[["hwaddr","02:00:00:00:00:02"],["new","z"]]]]]`
	// del order follows map iteration; normalise by checking both orders
	alt := strings.Replace(want, `["gone","hwaddr"]`, `["hwaddr","gone"]`, 1)
	if string(b) != want && string(b) != alt {
		t.Errorf("mutations = %s\nwant %s", b, want)
	}
	if m := mergeMutations("other_config", cur, map[string]string{"keep": "x", "absent": ""}); len(m) != 0 {
		t.Errorf("up-to-date merge produced %v", m)
	}
}

func TestSpecValidation(t *testing.T) {
	bad := []PortSpec{
		{},
		{Name: "p", Type: "gre"},
		{Name: "p", Type: "patch"},
		{Name: "p", Type: "vxlan", Options: map[string]string{"key": "flow"}},
		{Name: "p", OFPortRequest: 65280},
		{Name: "p", OFPortRequest: -1},
		{Name: "p", Type: "internal", MAC: "zz:00:00:00:00:00"},
	}
	for _, s := range bad {
		if err := s.validate(); err == nil {
			t.Errorf("PortSpec %+v: no error", s)
		}
	}
	for _, s := range []BridgeSpec{{}, {Name: "b", FailMode: "open"}, {Name: "b", TableNames: map[uint8]string{255: "x"}},
		{Name: "b", TableNames: map[uint8]string{1: ""}}, {Name: "b", HWAddr: []byte{1, 2}}} {
		if err := s.validate(); err == nil {
			t.Errorf("BridgeSpec %+v: no error", s)
		}
	}
}
