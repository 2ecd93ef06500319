package openflow

import (
	"encoding/binary"
	"reflect"
	"testing"
)

// The fuzz targets check that decoders never panic and that whatever they
// accept re-encodes and decodes to the same value (printing it must not
// panic either). Seeds are the oracle table's encodings.

// seedParts splits the oracle table's encodings into whole messages,
// matches, instruction lists and action lists.
func seedParts(t testing.TB) (msgs, matches, insts, acts [][]byte) {
	for _, r := range oracleRows() {
		raw, err := Marshal(r.fm, 1)
		if err != nil {
			t.Fatal(err)
		}
		msgs = append(msgs, raw)
		off := HeaderLen + flowModFixedLen
		n := pad8(int(binary.BigEndian.Uint16(raw[off+2:])))
		matches = append(matches, raw[off:off+n])
		insts = append(insts, raw[off+n:])
		for _, in := range r.fm.Instructions {
			if ap, ok := in.(*ApplyActionsInst); ok {
				b, err := AppendActions(nil, ap.Actions)
				if err != nil {
					t.Fatal(err)
				}
				acts = append(acts, b)
			}
		}
	}
	return
}

func addSeeds(f *testing.F, seeds [][]byte) {
	for _, s := range seeds {
		f.Add(s)
	}
	f.Add([]byte{})
	f.Add([]byte{0xff, 0xff, 0, 16, 0, 0, 0x23, 0x20, 0, 16})
}

func FuzzDecodeMatch(f *testing.F) {
	_, matches, _, _ := seedParts(f)
	addSeeds(f, matches)
	f.Fuzz(func(t *testing.T, b []byte) {
		m, n, err := DecodeMatch(b)
		if err != nil {
			return
		}
		if n > len(b) {
			t.Fatalf("consumed %d of %d bytes", n, len(b))
		}
		_ = m.String()
		enc, err := m.AppendTo(nil)
		if err != nil {
			t.Fatalf("decoded match %s does not re-encode: %v", m, err)
		}
		m2, _, err := DecodeMatch(enc)
		if err != nil {
			t.Fatalf("re-encoded match does not decode: %v", err)
		}
		if want := normFlowMod(&FlowMod{Match: m}).Match; !reflect.DeepEqual(want, m2) {
			t.Fatalf("match round trip:\n %s\n %s", m, m2)
		}
	})
}

func FuzzDecodeActions(f *testing.F) {
	_, _, _, acts := seedParts(f)
	addSeeds(f, acts)
	f.Fuzz(func(t *testing.T, b []byte) {
		a, err := DecodeActions(b)
		if err != nil {
			return
		}
		_ = joinActions(a)
		enc, err := AppendActions(nil, a)
		if err != nil {
			t.Fatalf("decoded actions %s do not re-encode: %v", joinActions(a), err)
		}
		a2, err := DecodeActions(enc)
		if err != nil {
			t.Fatalf("re-encoded actions do not decode: %v", err)
		}
		if !reflect.DeepEqual(a, a2) {
			t.Fatalf("actions round trip:\n %s\n %s", joinActions(a), joinActions(a2))
		}
	})
}

func FuzzDecodeInstructions(f *testing.F) {
	_, _, insts, _ := seedParts(f)
	addSeeds(f, insts)
	f.Fuzz(func(t *testing.T, b []byte) {
		in, err := DecodeInstructions(b)
		if err != nil {
			return
		}
		_ = InstructionsString(in)
		enc, err := AppendInstructions(nil, in)
		if err != nil {
			t.Fatalf("decoded instructions %s do not re-encode: %v", InstructionsString(in), err)
		}
		in2, err := DecodeInstructions(enc)
		if err != nil {
			t.Fatalf("re-encoded instructions do not decode: %v", err)
		}
		if !reflect.DeepEqual(in, in2) {
			t.Fatalf("instructions round trip:\n %s\n %s", InstructionsString(in), InstructionsString(in2))
		}
	})
}

func FuzzDecodeFlowMod(f *testing.F) {
	msgs, _, _, _ := seedParts(f)
	addSeeds(f, msgs)
	for _, c := range wireCases() {
		if c.raw[1] == byte(TypeFlowMod) {
			f.Add(c.raw)
		}
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		_, m, err := Decode(b)
		fm, ok := m.(*FlowMod)
		if err != nil || !ok {
			return
		}
		_, _, _ = fm.String(), fm.OfpPrint(), fm.FlowText()
		raw, err := Marshal(fm, 1)
		if err != nil {
			t.Fatalf("decoded flow_mod %s does not re-encode: %v", fm, err)
		}
		_, m2, err := Decode(raw)
		if err != nil {
			t.Fatalf("re-encoded flow_mod does not decode: %v", err)
		}
		if !reflect.DeepEqual(normFlowMod(fm), m2) {
			t.Fatalf("flow_mod round trip:\n %s\n %s", fm, m2)
		}
	})
}
