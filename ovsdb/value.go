package ovsdb

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"sort"
	"strconv"
	"strings"
)

// UUID is an OVSDB row UUID; it travels as ["uuid", "<uuid>"].
type UUID string

// NamedUUID refers, inside one transaction, to the row that an insert
// operation named with Operation.UUIDName; it travels as ["named-uuid", name].
type NamedUUID string

// Set is an OVSDB set. A decoded set of exactly one element arrives as that
// bare atom (the wire form does not distinguish them), so read optional and
// set columns through the Row accessors.
type Set []any

// Map is an OVSDB map. Keys and values are atoms: string, int64, float64,
// bool or UUID.
type Map map[any]any

// Row is a table row: column name → value (string, int64, float64, bool,
// UUID, NamedUUID, Set or Map). When encoding, map[string]string, []string and
// []UUID are accepted too, and any Go integer type.
type Row map[string]any

// MarshalJSON encodes the UUID in OVSDB notation.
func (u UUID) MarshalJSON() ([]byte, error) { return marshalValue(u) }

// MarshalJSON encodes the named UUID in OVSDB notation.
func (n NamedUUID) MarshalJSON() ([]byte, error) { return marshalValue(n) }

// MarshalJSON encodes the set in OVSDB notation.
func (s Set) MarshalJSON() ([]byte, error) { return marshalValue(s) }

// MarshalJSON encodes the map in OVSDB notation.
func (m Map) MarshalJSON() ([]byte, error) { return marshalValue(m) }

// MarshalJSON encodes every column value in OVSDB notation.
func (r Row) MarshalJSON() ([]byte, error) {
	out := make(map[string]any, len(r))
	for col, v := range r {
		enc, err := encodeValue(v)
		if err != nil {
			return nil, fmt.Errorf("column %s: %w", col, err)
		}
		out[col] = enc
	}
	return json.Marshal(out)
}

func marshalValue(v any) ([]byte, error) {
	enc, err := encodeValue(v)
	if err != nil {
		return nil, err
	}
	return json.Marshal(enc)
}

// encodeValue turns a Go value into plain JSON-marshalable data in OVSDB
// notation. It never returns one of this package's types, so MarshalJSON
// methods built on it cannot recurse.
func encodeValue(v any) (any, error) {
	switch x := v.(type) {
	case Set:
		atoms := make([]any, 0, len(x))
		for _, e := range x {
			a, err := encodeAtom(e)
			if err != nil {
				return nil, fmt.Errorf("set element: %w", err)
			}
			atoms = append(atoms, a)
		}
		return []any{"set", atoms}, nil
	case []string:
		s := make(Set, len(x))
		for i, e := range x {
			s[i] = e
		}
		return encodeValue(s)
	case []UUID:
		s := make(Set, len(x))
		for i, e := range x {
			s[i] = e
		}
		return encodeValue(s)
	case Map:
		pairs := make([][2]any, 0, len(x))
		for k, val := range x {
			ek, err := encodeAtom(k)
			if err != nil {
				return nil, fmt.Errorf("map key: %w", err)
			}
			ev, err := encodeAtom(val)
			if err != nil {
				return nil, fmt.Errorf("map value for key %v: %w", k, err)
			}
			pairs = append(pairs, [2]any{ek, ev})
		}
		return mapNotation(pairs), nil
	case map[string]string:
		pairs := make([][2]any, 0, len(x))
		for k, val := range x {
			pairs = append(pairs, [2]any{k, val})
		}
		return mapNotation(pairs), nil
	}
	return encodeAtom(v)
}

// mapNotation sorts pairs by key so that equal maps encode identically.
func mapNotation(pairs [][2]any) any {
	keys := make([]string, len(pairs))
	for i, p := range pairs {
		b, _ := json.Marshal(p[0]) // atoms from encodeAtom always marshal
		keys[i] = string(b)
	}
	idx := make([]int, len(pairs))
	for i := range idx {
		idx[i] = i
	}
	sort.Slice(idx, func(a, b int) bool { return keys[idx[a]] < keys[idx[b]] })
	out := make([]any, len(pairs))
	for i, j := range idx {
		out[i] = []any{pairs[j][0], pairs[j][1]}
	}
	return []any{"map", out}
}

func encodeAtom(v any) (any, error) {
	switch x := v.(type) {
	case string, bool:
		return x, nil
	case int:
		return int64(x), nil
	case int8:
		return int64(x), nil
	case int16:
		return int64(x), nil
	case int32:
		return int64(x), nil
	case int64:
		return x, nil
	case uint:
		return encodeUint(uint64(x))
	case uint8:
		return int64(x), nil
	case uint16:
		return int64(x), nil
	case uint32:
		return int64(x), nil
	case uint64:
		return encodeUint(x)
	case float32:
		return encodeReal(float64(x))
	case float64:
		return encodeReal(x)
	case UUID:
		return []any{"uuid", string(x)}, nil
	case NamedUUID:
		return []any{"named-uuid", string(x)}, nil
	}
	return nil, fmt.Errorf("unsupported OVSDB atom type %T", v)
}

func encodeUint(u uint64) (any, error) {
	if u > math.MaxInt64 {
		return nil, fmt.Errorf("integer %d out of OVSDB's 64-bit signed range", u)
	}
	return int64(u), nil
}

// encodeReal keeps a decimal point or exponent in the output so that the
// value decodes as a real again rather than as an integer.
func encodeReal(f float64) (any, error) {
	if math.IsNaN(f) || math.IsInf(f, 0) {
		return nil, fmt.Errorf("real %v cannot be encoded", f)
	}
	s := strconv.FormatFloat(f, 'g', -1, 64)
	if !strings.ContainsAny(s, ".eE") {
		s += ".0"
	}
	return json.Number(s), nil
}

// decodeValue parses one OVSDB value from JSON.
func decodeValue(data []byte) (any, error) {
	v, err := decodeJSON(data)
	if err != nil {
		return nil, err
	}
	return valueFromJSON(v)
}

// decodeJSON parses exactly one JSON value, keeping numbers as json.Number so
// integers and reals stay apart.
func decodeJSON(data []byte) (any, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, fmt.Errorf("decode JSON: %w", err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, errors.New("decode JSON: trailing data after value")
	}
	return v, nil
}

// valueFromJSON converts generic JSON (from decodeJSON) into a Go value.
func valueFromJSON(v any) (any, error) {
	arr, ok := v.([]any)
	if !ok || len(arr) != 2 {
		return atomFromJSON(v)
	}
	switch arr[0] {
	case "set":
		elems, ok := arr[1].([]any)
		if !ok {
			return nil, errors.New(`"set" must hold an array`)
		}
		s := make(Set, 0, len(elems))
		for _, e := range elems {
			a, err := atomFromJSON(e)
			if err != nil {
				return nil, fmt.Errorf("set element: %w", err)
			}
			s = append(s, a)
		}
		return s, nil
	case "map":
		pairs, ok := arr[1].([]any)
		if !ok {
			return nil, errors.New(`"map" must hold an array`)
		}
		m := make(Map, len(pairs))
		for _, p := range pairs {
			kv, ok := p.([]any)
			if !ok || len(kv) != 2 {
				return nil, errors.New("map pair must be a 2-element array")
			}
			k, err := atomFromJSON(kv[0])
			if err != nil {
				return nil, fmt.Errorf("map key: %w", err)
			}
			val, err := atomFromJSON(kv[1])
			if err != nil {
				return nil, fmt.Errorf("map value: %w", err)
			}
			if _, dup := m[k]; dup {
				return nil, fmt.Errorf("map key %v appears twice", k)
			}
			m[k] = val
		}
		return m, nil
	}
	return atomFromJSON(v)
}

func atomFromJSON(v any) (any, error) {
	switch x := v.(type) {
	case string, bool:
		return x, nil
	case json.Number:
		return numberFromJSON(x)
	case []any:
		if len(x) == 2 {
			s, ok := x[1].(string)
			switch {
			case x[0] == "uuid" && ok:
				if !validUUID(s) {
					return nil, fmt.Errorf("malformed uuid %q", s)
				}
				return UUID(s), nil
			case x[0] == "named-uuid" && ok:
				if s == "" {
					return nil, errors.New("empty named-uuid")
				}
				return NamedUUID(s), nil
			}
		}
		return nil, fmt.Errorf("not an OVSDB atom: %s", abbrev(x))
	case nil:
		return nil, errors.New("null is not an OVSDB value")
	}
	return nil, fmt.Errorf("not an OVSDB atom: %s", abbrev(v))
}

func numberFromJSON(n json.Number) (any, error) {
	s := string(n)
	if strings.ContainsAny(s, ".eE") {
		f, err := strconv.ParseFloat(s, 64)
		if err != nil {
			return nil, fmt.Errorf("real %s: %w", s, err)
		}
		return f, nil
	}
	i, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return nil, fmt.Errorf("integer %s: %w", s, err)
	}
	return i, nil
}

func validUUID(s string) bool {
	if len(s) != 36 {
		return false
	}
	for i, c := range s {
		switch i {
		case 8, 13, 18, 23:
			if c != '-' {
				return false
			}
		default:
			if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F') {
				return false
			}
		}
	}
	return true
}

// abbrev renders a JSON fragment for an error message, cut to a sane length.
func abbrev(v any) string {
	b, _ := json.Marshal(v)
	if len(b) > 60 {
		return string(b[:60]) + "..."
	}
	return string(b)
}

// rowFromJSON converts a generic JSON object into a Row.
func rowFromJSON(v any) (Row, error) {
	obj, ok := v.(map[string]any)
	if !ok {
		return nil, fmt.Errorf("row must be a JSON object, got %s", abbrev(v))
	}
	r := make(Row, len(obj))
	for col, cv := range obj {
		val, err := valueFromJSON(cv)
		if err != nil {
			return nil, fmt.Errorf("column %s: %w", col, err)
		}
		r[col] = val
	}
	return r, nil
}

// UUID returns the row's _uuid column, or "" if it was not selected.
func (r Row) UUID() UUID { u, _ := r["_uuid"].(UUID); return u }

// String returns a string column or an optional string column; "" when empty
// or of another type.
func (r Row) String(col string) string {
	s, _ := single(r[col]).(string)
	return s
}

// Int returns an integer column or an optional integer column; 0 when empty
// or of another type.
func (r Row) Int(col string) int64 {
	i, _ := single(r[col]).(int64)
	return i
}

// Bool returns a boolean column or an optional boolean column; false when
// empty or of another type.
func (r Row) Bool(col string) bool {
	b, _ := single(r[col]).(bool)
	return b
}

// Strings returns the string elements of a set column.
func (r Row) Strings(col string) []string {
	var out []string
	for _, e := range elements(r[col]) {
		if s, ok := e.(string); ok {
			out = append(out, s)
		}
	}
	return out
}

// UUIDs returns the UUID elements of a set column.
func (r Row) UUIDs(col string) []UUID {
	var out []UUID
	for _, e := range elements(r[col]) {
		if u, ok := e.(UUID); ok {
			out = append(out, u)
		}
	}
	return out
}

// StringMap returns a string→string map column (non-string entries are
// skipped); never nil.
func (r Row) StringMap(col string) map[string]string {
	out := map[string]string{}
	m, _ := r[col].(Map)
	for k, v := range m {
		ks, ok1 := k.(string)
		vs, ok2 := v.(string)
		if ok1 && ok2 {
			out[ks] = vs
		}
	}
	return out
}

// Map returns a map column; never nil.
func (r Row) Map(col string) Map {
	if m, ok := r[col].(Map); ok {
		return m
	}
	return Map{}
}

// single unwraps a set of at most one element (OVSDB's optional value).
func single(v any) any {
	if s, ok := v.(Set); ok {
		if len(s) == 1 {
			return s[0]
		}
		return nil
	}
	return v
}

// elements returns a set's elements, treating a bare atom as a one-element set.
func elements(v any) []any {
	switch x := v.(type) {
	case Set:
		return x
	case nil:
		return nil
	}
	return []any{v}
}
