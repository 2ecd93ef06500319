package openflow

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net/netip"
	"strings"
	"testing"
)

// Bad input must give a clear error (with the offset of the bad byte when
// decoding), never a panic.

func TestEncodeRejectsBadFlows(t *testing.T) {
	sf := func(o OXM) *FlowMod { return add(DefaultPriority, nil, NewSetField(o)) }
	cases := []struct {
		name string
		fm   *FlowMod
		want string
	}{
		{"mask on eth_type", add(0, ms(OXM{Field: FieldEthType, Value: []byte{8, 0}, Mask: []byte{0xff, 0}})), "eth_type cannot be masked"},
		{"mask on in_port", add(0, ms(OXM{Field: FieldInPort, Value: make([]byte, 4), Mask: make([]byte, 4)})), "in_port_oxm cannot be masked"},
		{"mask on ip_dscp", add(0, ms(ipM, OXM{Field: FieldIPDSCP, Value: []byte{1}, Mask: []byte{1}})), "ip_dscp cannot be masked"},
		{"IPv6 address for ip_src", add(0, ms(ipM, MatchIPv4Src(netip.MustParseAddr("::2")))), "ip_src: value is 16 bytes, want 4"},
		{"IPv4 address for ipv6_dst", add(0, ms(ip6M, MatchIPv6Dst(netip.MustParseAddr("1.2.3.4")))), "ipv6_dst: value is 4 bytes, want 16"},
		{"short MAC", add(0, ms(MatchEthSrc([]byte{1, 2, 3}))), "eth_src: value is 3 bytes, want 6"},
		{"mask length", add(0, ms(MatchEthSrcMasked(mac("00:00:00:00:00:01"), []byte{1}))), "eth_src: mask is 1 bytes, want 6"},
		{"register 16", add(0, ms(MatchReg(16, 1))), "reg16 (no such register)"},
		{"register -1", add(0, nil, NewSetField(MatchReg(-1, 1))), "reg-1 (no such register)"},
		{"invalid prefix", add(0, ms(ipM, MatchIPv4SrcMasked(netip.Prefix{}))), "ip_src: value is 0 bytes, want 4"},
		{"masked set_field", sf(MatchRegMasked(1, 1, 1)), "cannot carry a mask"},
		{"set_field without field", sf(OXM{}), "set_field without a field"},
		{"load too wide value", add(0, nil, &Load{Dst: Bits(FieldReg[0], 0, 4), Value: 16}), "value 0x10 does not fit NXM_NX_REG0[0..3]"},
		{"load past field", add(0, nil, &Load{Dst: Bits(FieldReg[0], 30, 4), Value: 1}), "reg0[30..33] exceeds the field's 32 bits"},
		{"load of 128 bits", add(0, nil, &Load{Dst: Whole(FieldIPv6Src)}), "load carries at most 64"},
		{"load without field", add(0, nil, &Load{}), "subfield without a field"},
		{"move width mismatch", add(0, nil, &Move{Src: Whole(FieldReg[0]), Dst: Bits(FieldReg[1], 0, 16)}), "is 32 bits but NXM_NX_REG1[0..15] is 16"},
		{"move ofs with whole width", add(0, nil, &Move{Src: Subfield{Field: FieldReg[0], Ofs: 3}, Dst: Whole(FieldReg[1])}), "offset 3 with a whole-field width"},
		{"resubmit to 32-bit port", add(0, nil, &Resubmit{Port: 0x10000, Table: 1}), "does not fit a 16-bit Nicira port"},
		{"learn width mismatch", add(0, nil, &Learn{Specs: []LearnSpec{LearnMatchField(Whole(FieldReg[0]), Bits(FieldReg[1], 0, 8))}}), "learn spec 0: learn source NXM_NX_REG1[0..7] is 8 bits"},
		{"learn wide immediate", add(0, nil, &Learn{Specs: []LearnSpec{LearnMatchImm(Bits(FieldReg[0], 0, 4), []byte{0x10})}}), "immediate 10 does not fit 4 bits"},
		{"learn long immediate", add(0, nil, &Learn{Specs: []LearnSpec{LearnLoadImm([]byte{1, 0, 0, 0, 0}, Whole(FieldReg[0]))}}), "does not fit 32 bits"},
		{"learn output immediate", add(0, nil, &Learn{Specs: []LearnSpec{{Kind: LearnOutput, Imm: []byte{1}}}}), "learn output takes a field"},
		{"huge note", add(0, nil, &Note{Data: make([]byte, 70000)}), "exceeds 65535"},
	}
	for _, c := range cases {
		_, err := Marshal(c.fm, 1)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %v, want one containing %q", c.name, err, c.want)
		}
	}
	// A failed append leaves the caller's buffer as it was.
	buf := []byte("keep")
	out, err := AppendMessage(buf, add(0, ms(MatchReg(99, 0))), 1)
	if err == nil || string(out) != "keep" {
		t.Errorf("failed append returned %q, %v", out, err)
	}
}

// flowModAt encodes fm and returns it with the offset of its first action.
func flowModAt(t *testing.T, fm *FlowMod) ([]byte, int) {
	t.Helper()
	raw, err := Marshal(fm, 1)
	if err != nil {
		t.Fatal(err)
	}
	matchLen := int(binary.BigEndian.Uint16(raw[HeaderLen+flowModFixedLen+2:]))
	return raw, HeaderLen + flowModFixedLen + pad8(matchLen) + 8
}

func wantDecodeError(t *testing.T, name string, raw []byte, off int, msg string) {
	t.Helper()
	_, _, err := Decode(raw)
	var de *DecodeError
	if !errors.As(err, &de) {
		t.Errorf("%s: error %v, want a DecodeError", name, err)
		return
	}
	if de.Offset != off || !strings.Contains(err.Error(), msg) {
		t.Errorf("%s: %v (offset %d), want offset %d and %q", name, err, de.Offset, off, msg)
	}
}

func TestDecodeRejectsBadFlowMods(t *testing.T) {
	base := rewriteFlow()
	raw, act := flowModAt(t, base)
	mutate := func(f func(b []byte) []byte) []byte {
		b := f(append([]byte(nil), raw...))
		binary.BigEndian.PutUint16(b[2:], uint16(len(b)))
		return b
	}
	matchOff := HeaderLen + flowModFixedLen
	// The first action is set_field eth_src (16 bytes); the output action
	// is last.
	outOff := len(raw) - 16

	wantDecodeError(t, "body shorter than fixed part", mutate(func(b []byte) []byte { return b[:HeaderLen+20] }), HeaderLen, "truncated")
	wantDecodeError(t, "bad command", mutate(func(b []byte) []byte { b[HeaderLen+17] = 9; return b }), HeaderLen+17, "unknown command 9")
	wantDecodeError(t, "match type", mutate(func(b []byte) []byte { b[matchOff+1] = 0; return b }), matchOff, "want OXM")
	wantDecodeError(t, "match length past the end", mutate(func(b []byte) []byte {
		binary.BigEndian.PutUint16(b[matchOff+2:], 2000)
		return b
	}), matchOff, "truncated")
	wantDecodeError(t, "OXM length", mutate(func(b []byte) []byte { b[matchOff+4+3] = 3; return b }), matchOff+4+3, "value length 3, want 4")
	wantDecodeError(t, "masked in_port", mutate(func(b []byte) []byte { b[matchOff+4+2] |= 1; return b }), matchOff+4+3, "value length 2, want 4")
	wantDecodeError(t, "action length not a multiple of 8", mutate(func(b []byte) []byte {
		binary.BigEndian.PutUint16(b[act+2:], 12)
		return b
	}), act+2, "length 12")
	wantDecodeError(t, "action past the instruction", mutate(func(b []byte) []byte {
		binary.BigEndian.PutUint16(b[outOff+2:], 24)
		return b
	}), outOff, "truncated: need 24 bytes, have 16")
	wantDecodeError(t, "output action of 8 bytes", mutate(func(b []byte) []byte {
		binary.BigEndian.PutUint16(b[outOff+2:], 8)
		return b
	}), outOff+2, "output action at offset")
	wantDecodeError(t, "truncated instruction", mutate(func(b []byte) []byte { return b[:len(b)-4] }), act-8, "need 104 bytes, have 100")
	wantDecodeError(t, "unknown instruction", mutate(func(b []byte) []byte { b[act-8+1] = 99; return b }), act-8, "unknown instruction type 99")
	wantDecodeError(t, "masked set_field", mutate(func(b []byte) []byte {
		// Turn set_field eth_src into a masked OXM (value+mask = 12 bytes),
		// growing the action and its instruction by 8 bytes.
		b[act+4+2] |= 1
		b[act+4+3] = 12
		binary.BigEndian.PutUint16(b[act+2:], 24)
		binary.BigEndian.PutUint16(b[act-8+2:], binary.BigEndian.Uint16(b[act-8+2:])+8)
		return append(b[:act+16], append(make([]byte, 8), b[act+16:]...)...)
	}), act+4, "field eth_src is masked")
}

// actionsFrom decodes a raw action list and reports the error.
func decodeErrAt(t *testing.T, name string, raw []byte, off int, msg string) {
	t.Helper()
	_, err := DecodeActions(raw)
	var de *DecodeError
	if !errors.As(err, &de) || de.Offset != off || !strings.Contains(err.Error(), msg) {
		t.Errorf("%s: %v, want DecodeError at %d containing %q", name, err, off, msg)
	}
}

func nxAction(subtype uint16, body ...byte) []byte {
	b := []byte{0xff, 0xff, 0, 0, 0, 0, 0x23, 0x20, byte(subtype >> 8), byte(subtype)}
	b = append(b, body...)
	for len(b)%8 != 0 {
		b = append(b, 0)
	}
	binary.BigEndian.PutUint16(b[2:], uint16(len(b)))
	return b
}

func TestDecodeRejectsBadActions(t *testing.T) {
	pad := make([]byte, 8) // a leading action so offsets are not zero
	copy(pad, []byte{0, 18, 0, 8})
	at := func(b []byte) []byte { return append(append([]byte(nil), pad...), b...) }

	decodeErrAt(t, "truncated header", at([]byte{0, 0}), 8, "truncated")
	decodeErrAt(t, "zero length", at([]byte{0, 0, 0, 0}), 10, "length 0")
	decodeErrAt(t, "experimenter too short", at([]byte{0xff, 0xff, 0, 8, 0, 0, 0x23, 0x20}), 8, "truncated")
	decodeErrAt(t, "set_field with a mask", at([]byte{0, 25, 0, 16, 0x80, 0, 0x17, 8, 1, 2, 3, 4, 0xff, 0xff, 0xff, 0}), 12, "is masked")
	decodeErrAt(t, "set_field nonzero padding", at([]byte{0, 25, 0, 24, 0x80, 0, 0x16, 4, 1, 2, 3, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1}), 31, "nonzero padding")
	decodeErrAt(t, "set_field OXM past end", at([]byte{0, 25, 0, 8, 0x80, 0, 0x16, 4}), 16, "truncated")
	decodeErrAt(t, "set_field unmaskable", at([]byte{0, 25, 0, 16, 0x80, 0, 0x0b, 4, 8, 0, 0xff, 0xff, 0, 0, 0, 0}), 14, "eth_type cannot be masked")
	decodeErrAt(t, "resubmit length", at(nxAction(nxastResubmitTable, 0, 1, 2, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)), 10, "length 24, want 16")
	decodeErrAt(t, "load bits past field", at(nxAction(nxastRegLoad, 0x07, 0xc7, 0, 1, 0, 4, 0, 0, 0, 0, 0, 0, 0, 1)), 18, "NXM_NX_REG0[31..38] outside")
	decodeErrAt(t, "load value too wide", at(nxAction(nxastRegLoad, 0, 3, 0, 1, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0x10)), 24, "does not fit 4 bits")
	decodeErrAt(t, "load masked header", at(nxAction(nxastRegLoad, 0, 3, 0, 1, 1, 4, 0, 0, 0, 0, 0, 0, 0, 1)), 20, "masked header")
	decodeErrAt(t, "load header length", at(nxAction(nxastRegLoad, 0, 3, 0, 1, 0, 8, 0, 0, 0, 0, 0, 0, 0, 1)), 20, "length 8, want 4")
	decodeErrAt(t, "check_pkt_larger bit past field", at(nxAction(nxastCheckPktLarger, 0x05, 0xb8, 0, 32, 0, 1, 0, 4, 0, 0, 0, 0, 0, 0)), 20, "NXM_NX_REG0[32..32] outside")
	decodeErrAt(t, "check_pkt_larger length", at(nxAction(nxastCheckPktLarger, 0x05, 0xb8, 0, 3, 0, 1, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)), 10, "length 32, want 24")
	decodeErrAt(t, "move of zero bits", at(nxAction(nxastRegMove, 0, 0, 0, 0, 0, 0, 0, 1, 0, 4, 0, 1, 2, 4)), 20, "outside")
	decodeErrAt(t, "controller2 property length", at(nxAction(nxastController2, 0, 0, 0, 0, 0, 0, 0, 5, 0, 3)), 26, "length 3")
	decodeErrAt(t, "controller2 property size", at(nxAction(nxastController2, 0, 0, 0, 0, 0, 0, 0, 5, 0, 6, 0, 1)), 26, "property 5 of 2 bytes, want 4")
	decodeErrAt(t, "controller2 max_len of 1 byte", at(nxAction(nxastController2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 5, 1)), 26, "property 0 of 1 bytes, want at least 2")
	decodeErrAt(t, "controller2 meter_id of 8 bytes", at(nxAction(nxastController2, 0, 0, 0, 0, 0, 0, 0, 5, 0, 12, 0, 0, 0, 1, 0, 0, 0, 0)), 26, "property 5 of 8 bytes, want 4")
	decodeErrAt(t, "controller2 unknown property", at(nxAction(nxastController2, 0, 0, 0, 0, 0, 0, 0, 9, 0, 4)), 24, "unknown property type 9")
	learnHdr := make([]byte, learnFixedLen-nxActionHdrLen)
	decodeErrAt(t, "learn bad spec", at(nxAction(nxastLearn, append(learnHdr, 0x38, 0x01)...)), 40, "bad flow_mod_spec header 0x3801")
	decodeErrAt(t, "learn truncated spec", at(nxAction(nxastLearn, append(learnHdr, 0x00, 0x20, 0, 1, 0, 4, 0, 0)...)), 48, "truncated")
	decodeErrAt(t, "learn wide immediate", at(nxAction(nxastLearn, append(learnHdr, 0x20, 0x04, 0, 0x10, 0, 1, 0, 4, 0, 0)...)), 42, "wider than 4 bits")
	decodeErrAt(t, "learn garbage after specs", at(nxAction(nxastLearn, append(learnHdr, 0, 0, 0, 7)...)), 43, "nonzero byte")
	decodeErrAt(t, "learn too short", at([]byte{0xff, 0xff, 0, 16, 0, 0, 0x23, 0x20, 0, 16, 0, 0, 0, 0, 0, 0}), 8, "truncated")

	// Unknown actions are kept, not rejected, so a flow dump still prints;
	// so are Nicira actions on a field this package does not name.
	acts, err := DecodeActions(at([]byte{0, 99, 0, 8, 1, 2, 3, 4}))
	if err != nil || len(acts) != 2 || acts[1].String() != "unknown_action(0063000801020304)" {
		t.Errorf("unknown action: %v %v", acts, err)
	}
	load := nxAction(nxastRegLoad, 0, 31, 0x12, 0x34, 0x02, 4, 0, 0, 0, 0, 0, 0, 0, 1)
	if acts, err = DecodeActions(at(load)); err != nil || len(acts) != 2 {
		t.Errorf("load on an unknown field: %v %v", acts, err)
	} else if ua, ok := acts[1].(*UnknownAction); !ok || !bytes.Equal(ua.Raw, load) {
		t.Errorf("load on an unknown field decodes to %v, want it kept raw", acts[1])
	}
}

func TestDecodeRejectsBadInstructions(t *testing.T) {
	cases := []struct {
		name string
		raw  []byte
		off  int
		msg  string
	}{
		{"goto_table length", []byte{0, 1, 0, 16, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}, 2, "length 16, want 8"},
		{"write_metadata short", []byte{0, 2, 0, 8, 0, 0, 0, 0}, 2, "length 8, want 24"},
		{"meter length", []byte{0, 6, 0, 4}, 2, "length 4, want 8"},
		{"apply_actions header only", []byte{0, 4, 0, 4}, 0, "truncated"},
		{"apply_actions bad action", []byte{0, 4, 0, 16, 0, 0, 0, 0, 0, 0, 0, 9, 0, 0, 0, 0}, 10, "length 9"},
		{"clear_actions length", []byte{0, 5, 0, 16, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}, 2, "length 16, want 8"},
		{"instruction past end", []byte{0, 1, 0, 8, 0}, 0, "truncated"},
	}
	for _, c := range cases {
		raw := append([]byte{0, 5, 0, 8, 0, 0, 0, 0}, c.raw...) // clear_actions first
		_, err := DecodeInstructions(raw)
		var de *DecodeError
		if !errors.As(err, &de) || de.Offset != c.off+8 || !strings.Contains(err.Error(), c.msg) {
			t.Errorf("%s: %v, want DecodeError at %d containing %q", c.name, err, c.off+8, c.msg)
		}
	}
}
