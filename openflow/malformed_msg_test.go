package openflow

import (
	"encoding/binary"
	"errors"
	"runtime"
	"strings"
	"testing"
)

// msgWithLen returns a copy of msg cut or patched so the header length says n.
func msgWithLen(msg []byte, n int) []byte {
	b := append([]byte(nil), msg[:n]...)
	binary.BigEndian.PutUint16(b[2:], uint16(n))
	return b
}

// msgCheckDecode decodes b, requiring no panic and, on failure, a DecodeError.
func msgCheckDecode(t *testing.T, what string, b []byte) {
	t.Helper()
	defer func() {
		if r := recover(); r != nil {
			t.Fatalf("%s: Decode(%x) panicked: %v", what, b, r)
		}
	}()
	_, m, err := Decode(b)
	if err != nil {
		var de *DecodeError
		if !errors.As(err, &de) {
			t.Fatalf("%s: error %v is not a DecodeError", what, err)
		}
		return
	}
	if e, ok := m.(*ErrorMsg); ok {
		_ = e.Error() // decodes the quoted request too
	}
}

func msgMalformedCorpus(t *testing.T) [][]byte {
	var corpus [][]byte
	for _, m := range msgAllCaptured(t) {
		if len(m) <= 2048 { // the long stats replies add nothing but time
			corpus = append(corpus, m)
		}
	}
	for _, m := range msgSamples() {
		b, err := Marshal(m, 1)
		if err != nil {
			t.Fatal(err)
		}
		corpus = append(corpus, b)
	}
	return corpus
}

// Every message cut short at every byte fails cleanly (or, where the
// shorter message is still valid, decodes).
func TestDecodeTruncated(t *testing.T) {
	for _, msg := range msgMalformedCorpus(t) {
		for n := 0; n < len(msg); n++ {
			if n < HeaderLen {
				msgCheckDecode(t, "short header", msg[:n])
				continue
			}
			msgCheckDecode(t, "truncated", msgWithLen(msg, n))
		}
	}
}

// Lying length and count fields anywhere in a message never make a decoder
// panic, nor allocate in proportion to the lie instead of to the input.
func TestDecodeLyingLengths(t *testing.T) {
	var ms runtime.MemStats
	for _, msg := range msgMalformedCorpus(t) {
		for pos := HeaderLen; pos < len(msg) && pos < 160; pos++ {
			for _, v := range []byte{0x00, 0x01, 0x07, 0x80, 0xff} {
				b := append([]byte(nil), msg...)
				b[pos] = v
				runtime.ReadMemStats(&ms)
				before := ms.TotalAlloc
				msgCheckDecode(t, "mutated", b)
				runtime.ReadMemStats(&ms)
				if alloc := ms.TotalAlloc - before; alloc > uint64(16*len(b)+16384) {
					t.Errorf("decoding %d bytes (byte %d set to %#x) allocated %d bytes", len(b), pos, v, alloc)
				}
			}
		}
	}
}

func msgNX(subtype uint32, body ...byte) []byte {
	b := []byte{4, 4, 0, 0, 0, 0, 0, 1}
	b = binary.BigEndian.AppendUint32(b, NiciraExperimenter)
	b = binary.BigEndian.AppendUint32(b, subtype)
	b = append(b, body...)
	binary.BigEndian.PutUint16(b[2:], uint16(len(b)))
	return b
}

func msgOF(t MsgType, body ...byte) []byte {
	b := append([]byte{4, byte(t), 0, 0, 0, 0, 0, 1}, body...)
	binary.BigEndian.PutUint16(b[2:], uint16(len(b)))
	return b
}

// Errors name what failed and the offset of the offending bytes.
func TestDecodeErrorsSayWhatAndWhere(t *testing.T) {
	bundleAdd := func(inner ...byte) []byte {
		b := []byte{4, 4, 0, 0, 0, 0, 0, 1}
		b = binary.BigEndian.AppendUint32(b, ONFExperimenter)
		b = binary.BigEndian.AppendUint32(b, 2301)
		b = append(b, 0, 0, 0, 1, 0, 0, 0, 1)
		b = append(b, inner...)
		binary.BigEndian.PutUint16(b[2:], uint16(len(b)))
		return b
	}
	for _, c := range []struct {
		name   string
		msg    []byte
		what   string
		offset int
	}{
		{"hello element shorter than its header", msgOF(TypeHello, 0, 1, 0, 2), "HELLO element", 10},
		{"hello element past the end", msgOF(TypeHello, 0, 1, 0, 16, 0, 0, 0, 16), "HELLO element", 8},
		{"features reply short", msgOF(TypeFeaturesReply, make([]byte, 20)...), "FEATURES_REPLY", 8},
		{"experimenter error without id", msgOF(TypeError, 0xff, 0xff, 0, 1, 0, 0), "experimenter ERROR", 12},
		{"packet out actions_len past the end", msgOF(TypePacketOut, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0, 0, 0), "PACKET_OUT actions", 24},
		{"packet out action of length 0", msgOF(TypePacketOut, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 1, 0, 8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0), "action", 26},
		{"packet in match length lies", msgOF(TypePacketIn, append(make([]byte, 16), 0, 1, 0, 200, 0, 0, 0, 0)...), "match", 24},
		{"flow removed short", msgOF(TypeFlowRemoved, make([]byte, 39)...), "FLOW_REMOVED", 8},
		{"port status short", msgOF(TypePortStatus, make([]byte, 40)...), "PORT_STATUS", 8},
		{"meter band length 8", msgOF(TypeMeterMod, append(make([]byte, 8), 0, 1, 0, 8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)...), "meter band", 18},
		{"multipart reply short", msgOF(TypeMultipartReply, 0, 1, 0, 0), "MULTIPART_REPLY", 8},
		{"port stats request short", msgOF(TypeMultipartRequest, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0), "port stats request", 16},
		{"packet-in2 property past the end", msgNX(30, 0, 0, 0, 100, 1, 2, 3, 4), "NXT_PACKET_IN2 property 0", 16},
		{"packet-in2 property shorter than its header", msgNX(30, 0, 0, 0, 2, 0, 0, 0, 0), "NXT_PACKET_IN2 property", 18},
		{"packet-in2 cookie of 4 bytes", msgNX(30, 0, 4, 0, 8, 0, 0, 0, 1), "NXT_PACKET_IN2 cookie", 18},
		{"packet-in2 metadata oxm past the end", msgNX(30, 0, 6, 0, 8, 0x80, 0, 0, 8), "oxm value", 24},
		{"set packet-in format short", msgNX(16, 0, 0), "NXT_SET_PACKET_IN_FORMAT", 16},
		{"bundle add inner longer than the rest", bundleAdd(4, 20, 0, 64, 0, 0, 0, 1), "BUNDLE_ADD_MESSAGE inner message", 24},
		{"bundle add inner header length 4", bundleAdd(4, 20, 0, 4, 0, 0, 0, 1), "header", 26},
		{"bundle add inner packet out truncated", bundleAdd(4, 13, 0, 12, 0, 0, 0, 1, 0, 0, 0, 0), "PACKET_OUT", 32},
	} {
		_, _, err := Decode(c.msg)
		var de *DecodeError
		if !errors.As(err, &de) {
			t.Errorf("%s: error %v, want a DecodeError", c.name, err)
			continue
		}
		if !strings.Contains(de.What, c.what) || de.Offset != c.offset {
			t.Errorf("%s: got %q at %d (%v), want %q at %d", c.name, de.What, de.Offset, err, c.what, c.offset)
		}
	}
}

func TestDecodeBodiesSayWhatAndWhere(t *testing.T) {
	flowEntry := func(n int, extra ...byte) []byte {
		b := binary.BigEndian.AppendUint16(nil, uint16(n))
		return append(append(b, make([]byte, 46)...), extra...)
	}
	emptyMatch := []byte{0, 1, 0, 4, 0, 0, 0, 0}
	for _, c := range []struct {
		name   string
		err    error
		what   string
		offset int
	}{
		{"flow stats length below the fixed part", msgErrOf(DecodeFlowStats(flowEntry(16))), "flow stats", 0},
		{"flow stats length past the end", msgErrOf(DecodeFlowStats(flowEntry(200, emptyMatch...))), "flow stats", 0},
		{"second flow stats entry short", msgErrOf(DecodeFlowStats(append(flowEntry(56, emptyMatch...), 1, 2))), "flow stats", 56},
		{"flow stats instruction length lies", msgErrOf(DecodeFlowStats(flowEntry(64, append(emptyMatch, 0, 4, 0, 99, 0, 0, 0, 0)...))), "instruction", 56},
		{"aggregate short", msgErrOf(DecodeAggregateStats(make([]byte, 20))), "aggregate stats", 0},
		{"table stats ragged", msgErrOf(DecodeTableStats(make([]byte, 30))), "table stats", 0},
		{"port stats ragged", msgErrOf(DecodePortStats(make([]byte, 113))), "port stats", 0},
		{"port desc ragged", msgErrOf(DecodePortDesc(make([]byte, 65))), "port desc", 0},
		{"meter stats length not 40+16n", msgErrOf(DecodeMeterStats(append(make([]byte, 4), append([]byte{0, 41}, make([]byte, 34)...)...))), "meter stats", 4},
		{"meter stats length past the end", msgErrOf(DecodeMeterStats(append(make([]byte, 4), append([]byte{0, 56}, make([]byte, 34)...)...))), "meter stats", 0},
	} {
		var de *DecodeError
		if !errors.As(c.err, &de) {
			t.Errorf("%s: error %v, want a DecodeError", c.name, c.err)
			continue
		}
		if !strings.Contains(de.What, c.what) || de.Offset != c.offset {
			t.Errorf("%s: got %q at %d (%v), want %q at %d", c.name, de.What, de.Offset, c.err, c.what, c.offset)
		}
	}
}

func msgErrOf[T any](_ T, err error) error { return err }
