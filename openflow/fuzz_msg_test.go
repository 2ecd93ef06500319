package openflow

import (
	"bytes"
	"errors"
	"strings"
	"testing"
)

func msgSeedCaptured(f *testing.F, add func(raw []byte)) {
	for _, raw := range msgAllCaptured(f) {
		add(raw)
	}
	for _, m := range msgSamples() {
		b, err := Marshal(m, 1)
		if err != nil {
			f.Fatal(err)
		}
		add(b)
	}
	for _, c := range wireCases() {
		add(c.raw)
	}
}

// msgCheckReencode: a decoded message encodes again, and that decodes to
// the same value (decode → encode keeps the meaning) and encodes to the
// same bytes (decode and encode agree on every byte they keep).
func msgCheckReencode(t *testing.T, h Header, m Message) {
	enc, err := Marshal(m, h.Xid)
	if err != nil {
		// Re-encoding may add bytes a maximum-size input has no room for
		// (packet-in2 properties OVS leaves out, a hello's bitmap); a
		// version-0 HELLO offering nothing is not ours to send.
		if msg := err.Error(); strings.Contains(msg, "exceeds the OpenFlow limit") || strings.Contains(msg, "hello offers no version") {
			return
		}
		t.Fatalf("decoded %T does not encode: %v", m, err)
	}
	h2, m2, err := Decode(enc)
	if err != nil {
		t.Fatalf("re-encoded %T does not decode: %v\n%x", m, err, enc)
	}
	enc2, err := Marshal(m2, h2.Xid)
	if err != nil || !bytes.Equal(enc, enc2) {
		t.Fatalf("%T: encoding not stable (%v):\n%x\n%x", m, err, enc, enc2)
	}
	if !wireSameMeaning(m, m2) {
		t.Fatalf("%T: decode → encode → decode changed the value:\n%#v\n%#v", m, m, m2)
	}
}

func FuzzDecode(f *testing.F) {
	msgSeedCaptured(f, func(raw []byte) { f.Add(raw) })
	f.Fuzz(func(t *testing.T, b []byte) {
		h, m, err := Decode(b)
		if err != nil {
			var de *DecodeError
			if !errors.As(err, &de) {
				t.Fatalf("error %v is not a DecodeError", err)
			}
			return
		}
		if s, ok := m.(interface{ String() string }); ok {
			_ = s.String()
		}
		if e, ok := m.(*ErrorMsg); ok {
			_ = e.Error()
		}
		msgCheckReencode(t, h, m)
	})
}

func FuzzDecodePacketIn2(f *testing.F) {
	// The corpus is the property list: what follows the experimenter header.
	msgSeedCaptured(f, func(raw []byte) {
		if len(raw) > 16 && raw[1] == byte(TypeExperimenter) && raw[15] == nxtPacketIn2 {
			f.Add(raw[16:])
		}
	})
	f.Fuzz(func(t *testing.T, props []byte) {
		if len(props) > MaxMessageLen-16 {
			return
		}
		b := append(appendNXHeader([]byte{4, 4, 0, 0, 0, 0, 0, 1}, nxtPacketIn2), props...)
		b[2], b[3] = byte(len(b)>>8), byte(len(b))
		h, m, err := Decode(b)
		if err != nil {
			var de *DecodeError
			if !errors.As(err, &de) {
				t.Fatalf("error %v is not a DecodeError", err)
			}
			return
		}
		pin := m.(*PacketIn2)
		_ = pin.String()
		msgCheckReencode(t, h, m)
	})
}

func FuzzDecodeMultipartFlowStats(f *testing.F) {
	msgSeedCaptured(f, func(raw []byte) {
		if len(raw) > 16 && raw[1] == byte(TypeMultipartReply) && raw[9] == byte(MultipartFlow) {
			f.Add(raw[16:])
		}
	})
	f.Fuzz(func(t *testing.T, body []byte) {
		flows, err := DecodeFlowStats(body)
		if err != nil {
			var de *DecodeError
			if !errors.As(err, &de) {
				t.Fatalf("error %v is not a DecodeError", err)
			}
			return
		}
		var enc []byte
		for i := range flows {
			if enc, err = flows[i].AppendTo(enc); err != nil {
				return
			}
		}
		again, err := DecodeFlowStats(enc)
		if err != nil {
			t.Fatalf("re-encoded flow stats do not decode: %v", err)
		}
		var enc2 []byte
		for i := range again {
			enc2, _ = again[i].AppendTo(enc2)
		}
		if !bytes.Equal(enc, enc2) {
			t.Fatalf("flow stats encoding not stable:\n%x\n%x", enc, enc2)
		}
	})
}

// FuzzDecodeMultipartBodies covers the other reply decoders; the first byte
// picks one.
func FuzzDecodeMultipartBodies(f *testing.F) {
	kinds := map[uint16]byte{MultipartAggregate: 0, MultipartTable: 1, MultipartPortStats: 2, MultipartPortDesc: 3, MultipartMeter: 4}
	msgSeedCaptured(f, func(raw []byte) {
		if len(raw) > 16 && raw[1] == byte(TypeMultipartReply) {
			if k, ok := kinds[uint16(raw[8])<<8|uint16(raw[9])]; ok {
				f.Add(append([]byte{k}, raw[16:]...))
			}
		}
	})
	type appender interface{ AppendTo([]byte) ([]byte, error) }
	f.Fuzz(func(t *testing.T, in []byte) {
		if len(in) == 0 {
			return
		}
		body := in[1:]
		var items []appender
		var err error
		switch in[0] % 5 {
		case 0:
			var a AggregateStats
			if a, err = DecodeAggregateStats(body); err == nil {
				items = append(items, &a)
			}
		case 1:
			var ts []TableStats
			ts, err = DecodeTableStats(body)
			for i := range ts {
				items = append(items, &ts[i])
			}
		case 2:
			var ps []PortStats
			ps, err = DecodePortStats(body)
			for i := range ps {
				items = append(items, &ps[i])
			}
		case 3:
			var ps []Port
			ps, err = DecodePortDesc(body)
			for i := range ps {
				items = append(items, &ps[i])
			}
		case 4:
			var ms []MeterStats
			ms, err = DecodeMeterStats(body)
			for i := range ms {
				items = append(items, &ms[i])
			}
		}
		if err != nil {
			var de *DecodeError
			if !errors.As(err, &de) {
				t.Fatalf("error %v is not a DecodeError", err)
			}
			return
		}
		var enc []byte
		for _, it := range items {
			if enc, err = it.AppendTo(enc); err != nil {
				return // a port name without its NUL, say
			}
		}
		// Fixed-size entries re-encode to their own length (only padding
		// and the bytes after an aggregate reply may differ).
		if in[0]%5 != 0 && len(enc) != len(body) {
			t.Fatalf("re-encoded %d bytes from %d", len(enc), len(body))
		}
	})
}
