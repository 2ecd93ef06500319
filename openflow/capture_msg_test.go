package openflow

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The testdata/msg/*.hex files hold messages captured from a live
// ovs-vswitchd by ./internal/capture (one message per line, # comments).

func msgReadHex(t testing.TB, name string) [][]byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", "msg", name+".hex"))
	if err != nil {
		t.Fatal(err)
	}
	var msgs [][]byte
	for _, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		m, err := hex.DecodeString(line)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		msgs = append(msgs, m)
	}
	if len(msgs) == 0 {
		t.Fatalf("%s: no messages", name)
	}
	return msgs
}

func msgAllCaptured(t testing.TB) [][]byte {
	t.Helper()
	files, err := filepath.Glob(filepath.Join("testdata", "msg", "*.hex"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no captured messages: %v", err)
	}
	var all [][]byte
	for _, f := range files {
		all = append(all, msgReadHex(t, strings.TrimSuffix(filepath.Base(f), ".hex"))...)
	}
	return all
}

// msgDecodeAs decodes raw and asserts the message's Go type.
func msgDecodeAs[T Message](t *testing.T, raw []byte) (Header, T) {
	t.Helper()
	h, m, err := Decode(raw)
	if err != nil {
		t.Fatalf("decode %x: %v", raw, err)
	}
	v, ok := m.(T)
	if !ok {
		t.Fatalf("decoded %T (%v), want %T", m, m, *new(T))
	}
	return h, v
}

// msgOXMValue finds a match field by wire identity, so the test does not
// depend on which Field variables are registered.
func msgOXMValue(m Match, class uint16, id uint8) ([]byte, bool) {
	for _, o := range m.Fields {
		if o.Field.Class == class && o.Field.ID == id {
			return o.Value, true
		}
	}
	return nil, false
}

func msgWantOXM(t *testing.T, m Match, name string, class uint16, id uint8, want []byte) {
	t.Helper()
	v, ok := msgOXMValue(m, class, id)
	if !ok {
		t.Errorf("match has no %s: %v", name, m.Fields)
	} else if !bytes.Equal(v, want) {
		t.Errorf("%s = %x, want %x", name, v, want)
	}
}

func msgBE32(v uint32) []byte { return binary.BigEndian.AppendUint32(nil, v) }
func msgBE64(v uint64) []byte { return binary.BigEndian.AppendUint64(nil, v) }

// The punted packet carried these metadata fields (see the capture's flow).
func msgCheckPuntMetadata(t *testing.T, m Match) {
	t.Helper()
	msgWantOXM(t, m, "in_port", OXMClassOpenFlowBasic, 0, msgBE32(PortController))
	msgWantOXM(t, m, "reg0", OXMClassNXM1, 0, msgBE32(0x2a))
	msgWantOXM(t, m, "tun_id (OXM tunnel_id)", OXMClassOpenFlowBasic, 38, msgBE64(0x64))
	msgWantOXM(t, m, "tun_dst", OXMClassNXM1, 32, []byte{198, 18, 0, 9})
}

func msgCheckUDPFrame(t *testing.T, p []byte) {
	t.Helper()
	if len(p) != 58 || binary.BigEndian.Uint16(p[12:]) != 0x0800 || p[23] != 17 ||
		!net.IP(p[26:30]).Equal(net.IPv4(198, 18, 0, 1)) || !net.IP(p[30:34]).Equal(net.IPv4(198, 18, 0, 2)) {
		t.Errorf("packet is not the UDP 198.18.0.1->198.18.0.2 frame sent: %x", p)
	}
}

func TestDecodeCapturedHandshake(t *testing.T) {
	_, hello := msgDecodeAs[*Hello](t, msgReadHex(t, "hello")[0])
	if !hello.Supports13() || len(hello.Versions) != 1 {
		t.Errorf("hello versions %v, want [4]", hello.Versions)
	}
	_, f := msgDecodeAs[*FeaturesReply](t, msgReadHex(t, "features_reply")[0])
	if f.DatapathID != 0xa1 || f.NTables != 254 || f.Capabilities&CapFlowStats == 0 {
		t.Errorf("features %+v", f)
	}
	_, e := msgDecodeAs[*EchoReply](t, msgReadHex(t, "echo_reply")[0])
	if string(e.Data) != "krb" {
		t.Errorf("echo data %q", e.Data)
	}
	_, c := msgDecodeAs[*GetConfigReply](t, msgReadHex(t, "get_config_reply")[0])
	if c.MissSendLen != MissSendLenNoBuffer || c.Flags != ConfigFragNormal {
		t.Errorf("config %+v", c)
	}
	msgDecodeAs[*BarrierReply](t, msgReadHex(t, "barrier_reply")[0])
}

func TestDecodeCapturedPorts(t *testing.T) {
	_, ps := msgDecodeAs[*PortStatus](t, msgReadHex(t, "port_status")[0])
	if ps.Reason != PortAdded || ps.Port.PortNo != 1 || ps.Port.Name != "krb-v0" || len(ps.Port.HWAddr) != 6 {
		t.Errorf("port status %v", ps)
	}
	parts := msgReadHex(t, "port_desc_reply")
	_, mr := msgDecodeAs[*MultipartReply](t, parts[0])
	if mr.MPType != MultipartPortDesc || mr.More() {
		t.Fatalf("reply %v", mr)
	}
	ports, err := DecodePortDesc(mr.Body)
	if err != nil {
		t.Fatal(err)
	}
	names := map[uint32]string{}
	for _, p := range ports {
		names[p.PortNo] = p.Name
	}
	if len(ports) != 2 || names[1] != "krb-v0" || names[PortLocal] != "br0" {
		t.Errorf("ports %v", ports)
	}
	if !bytes.Equal(ports[0].HWAddr, ps.Port.HWAddr) && !bytes.Equal(ports[1].HWAddr, ps.Port.HWAddr) {
		t.Errorf("port desc and port status disagree on the MAC of krb-v0")
	}
	_, mr = msgDecodeAs[*MultipartReply](t, msgReadHex(t, "port_stats_reply")[0])
	stats, err := DecodePortStats(mr.Body)
	if err != nil {
		t.Fatal(err)
	}
	if mr.MPType != MultipartPortStats || len(stats) != 2 || stats[0].PortNo != PortLocal || stats[1].PortNo != 1 {
		t.Errorf("port stats %+v", stats)
	}
}

func TestDecodeCapturedPacketIns(t *testing.T) {
	_, pin := msgDecodeAs[*PacketIn](t, msgReadHex(t, "packet_in")[0])
	if pin.Cookie != 0xc0ffee || pin.Reason != PacketInReasonAction || pin.TotalLen != 58 || pin.BufferID != NoBuffer || pin.Table != 0 {
		t.Errorf("packet in %+v", pin)
	}
	msgCheckPuntMetadata(t, pin.Match)
	msgCheckUDPFrame(t, pin.Data)

	_, p2 := msgDecodeAs[*PacketIn2](t, msgReadHex(t, "packet_in2")[0])
	if p2.Cookie != 0xc0ffee || p2.Reason != PacketInReasonAction || p2.FullLen != 58 || p2.BufferID != NoBuffer || p2.Table != 0 {
		t.Errorf("packet in2 %+v", p2)
	}
	if !bytes.Equal(p2.Userdata, []byte{1, 2, 3, 4}) {
		t.Errorf("userdata %x, want 01020304", p2.Userdata)
	}
	msgCheckPuntMetadata(t, p2.Metadata)
	msgCheckUDPFrame(t, p2.Packet)
}

func TestDecodeCapturedFlowRemoved(t *testing.T) {
	_, fr := msgDecodeAs[*FlowRemoved](t, msgReadHex(t, "flow_removed")[0])
	if fr.Cookie != 0x77 || fr.Priority != 5 || fr.Reason != FlowRemovedIdleTimeout || fr.IdleTimeout != 1 || fr.DurationSec != 1 || fr.Table != 0 {
		t.Errorf("flow removed %+v", fr)
	}
	msgWantOXM(t, fr.Match, "ipv4_dst", OXMClassOpenFlowBasic, 12, []byte{198, 18, 0, 99})
}

func TestDecodeCapturedStats(t *testing.T) {
	_, mr := msgDecodeAs[*MultipartReply](t, msgReadHex(t, "flow_stats_reply")[0])
	flows, err := DecodeFlowStats(mr.Body)
	if err != nil {
		t.Fatal(err)
	}
	if mr.MPType != MultipartFlow || len(flows) != 2 {
		t.Fatalf("flow stats %+v", flows)
	}
	punt, idle := flows[0], flows[1]
	if punt.Cookie != 0xc0ffee || punt.Priority != 10 || punt.PacketCount != 2 || punt.ByteCount != 116 || len(punt.Instructions) != 1 {
		t.Errorf("punt flow %+v", punt)
	}
	if idle.Cookie != 0x77 || idle.IdleTimeout != 1 || idle.Flags != 1 /* send_flow_rem */ || len(idle.Instructions) != 1 {
		t.Errorf("idle flow %+v", idle)
	}
	msgWantOXM(t, punt.Match, "ipv4_dst", OXMClassOpenFlowBasic, 12, []byte{198, 18, 0, 2})

	_, mr = msgDecodeAs[*MultipartReply](t, msgReadHex(t, "aggregate_stats_reply")[0])
	agg, err := DecodeAggregateStats(mr.Body)
	if err != nil || agg != (AggregateStats{PacketCount: 2, ByteCount: 116, FlowCount: 2}) {
		t.Errorf("aggregate %+v, %v", agg, err)
	}

	_, mr = msgDecodeAs[*MultipartReply](t, msgReadHex(t, "table_stats_reply")[0])
	tables, err := DecodeTableStats(mr.Body)
	if err != nil {
		t.Fatal(err)
	}
	if len(tables) != 254 || tables[0].ActiveCount != 2 || tables[0].LookupCount != 2 || tables[253].Table != 253 {
		t.Errorf("table stats: %d tables, first %+v", len(tables), tables[0])
	}

	_, mr = msgDecodeAs[*MultipartReply](t, msgReadHex(t, "meter_stats_reply")[0])
	meters, err := DecodeMeterStats(mr.Body)
	if err != nil {
		t.Fatal(err)
	}
	if len(meters) != 1 || meters[0].MeterID != 7 || len(meters[0].Bands) != 1 {
		t.Errorf("meter stats %+v", meters)
	}
}

func TestDecodeCapturedMultipartReassembly(t *testing.T) {
	parts := msgReadHex(t, "flow_stats_multipart")
	if len(parts) < 2 {
		t.Fatalf("%d parts, want several", len(parts))
	}
	var body []byte
	var xid uint32
	for i, raw := range parts {
		h, mr := msgDecodeAs[*MultipartReply](t, raw)
		if i == 0 {
			xid = h.Xid
		} else if h.Xid != xid {
			t.Fatalf("part %d has xid %d, want %d", i, h.Xid, xid)
		}
		if mr.More() != (i < len(parts)-1) {
			t.Fatalf("part %d of %d: More()=%v", i, len(parts), mr.More())
		}
		body = append(body, mr.Body...)
	}
	flows, err := DecodeFlowStats(body)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[uint64]bool{}
	for _, f := range flows {
		if f.Table != 1 || f.Cookie < 0x1000 || f.Cookie >= 0x1000+800 || f.Priority != uint16(100+f.Cookie-0x1000) {
			t.Fatalf("unexpected flow %+v", f)
		}
		seen[f.Cookie] = true
	}
	if len(flows) != 800 || len(seen) != 800 {
		t.Errorf("%d flows (%d distinct), want the 800 installed", len(flows), len(seen))
	}
}

func TestDecodeCapturedErrors(t *testing.T) {
	raw := msgReadHex(t, "error_bad_prereq")[0]
	h, e := msgDecodeAs[*ErrorMsg](t, raw)
	if e.ErrType != ErrTypeBadMatch || e.Code != 9 || e.CodeName() != "OFPBMC_BAD_PREREQ" {
		t.Errorf("error %d/%d %s", e.ErrType, e.Code, e.CodeName())
	}
	if x, ok := e.FailedXid(); !ok || x != h.Xid {
		t.Errorf("FailedXid = %d,%v; want %d", x, ok, h.Xid)
	}
	for _, want := range []string{"OFPET_BAD_MATCH/OFPBMC_BAD_PREREQ", "(type 4 code 9)", "FLOW_MOD xid=0x1b: table=0,priority=20,cookie=0xbad"} {
		if !strings.Contains(e.Error(), want) {
			t.Errorf("Error() = %q, missing %q", e.Error(), want)
		}
	}
	var asErr error = e
	var em *ErrorMsg
	if !errors.As(asErr, &em) {
		t.Error("ErrorMsg is not usable as an error")
	}
}

func TestDecodeCapturedBundles(t *testing.T) {
	good := msgReadHex(t, "bundle_good")
	_, open := msgDecodeAs[*BundleControl](t, good[0])
	_, commit := msgDecodeAs[*BundleControl](t, good[1])
	if open.CtrlType != BundleOpenReply || open.BundleID != 1 || commit.CtrlType != BundleCommitReply || commit.BundleID != 1 {
		t.Errorf("good bundle replies %v, %v", open, commit)
	}

	// OVS rejects the bad FLOW_MOD already when it is added; the error
	// quotes the whole BUNDLE_ADD_MESSAGE, and the empty bundle commits.
	bad := msgReadHex(t, "bundle_bad")
	if len(bad) != 3 {
		t.Fatalf("bad bundle: %d messages", len(bad))
	}
	_, e := msgDecodeAs[*ErrorMsg](t, bad[1])
	if e.CodeName() != "OFPBMC_BAD_PREREQ" || !strings.Contains(e.Error(), "EXPERIMENTER xid=0x24: BUNDLE_ADD_MESSAGE bundle_id=0x2 flags=atomic xid=0x24") {
		t.Errorf("add error: %v", e)
	}
	_, c := msgDecodeAs[*BundleControl](t, bad[2])
	if c.CtrlType != BundleCommitReply || c.BundleID != 2 {
		t.Errorf("bad bundle commit reply %v", c)
	}

	// A FLOW_MOD that fails at commit: its own error, then the commit's
	// OFPBFC_MSG_FAILED (an ONF experimenter error on OpenFlow 1.3).
	failed := msgReadHex(t, "bundle_commit_failed")
	if len(failed) != 3 {
		t.Fatalf("failed bundle: %d messages", len(failed))
	}
	_, overlap := msgDecodeAs[*ErrorMsg](t, failed[1])
	if overlap.ErrType != ErrTypeFlowModFailed || overlap.CodeName() != "OFPFMFC_OVERLAP" {
		t.Errorf("flow error %v", overlap)
	}
	h, mf := msgDecodeAs[*ErrorMsg](t, failed[2])
	code, ok := mf.IsBundleError()
	if !ok || code != BundleErrMsgFailed || mf.Experimenter != ONFExperimenter {
		t.Errorf("commit error %v: bundle code %d,%v", mf, code, ok)
	}
	if x, ok := mf.FailedXid(); !ok || x != h.Xid {
		t.Errorf("commit error FailedXid %d,%v want %d", x, ok, h.Xid)
	}
	for _, want := range []string{"ONFET_VENDOR/OFPBFC_MSG_FAILED", "BUNDLE_CONTROL bundle_id=0x3 type=COMMIT_REQUEST"} {
		if !strings.Contains(mf.Error(), want) {
			t.Errorf("Error() = %q, missing %q", mf.Error(), want)
		}
	}
}

// Re-encoding a decoded capture must give OVS's bytes back: the encoders
// write exactly what OVS writes.
func TestCapturedRoundTrip(t *testing.T) {
	for _, raw := range msgAllCaptured(t) {
		h, m, err := Decode(raw)
		if err != nil {
			t.Errorf("decode %x: %v", raw[:min(len(raw), 32)], err)
			continue
		}
		if _, ok := m.(*Unknown); ok {
			t.Errorf("%s decoded as Unknown", h.Type)
			continue
		}
		again, err := Marshal(m, h.Xid)
		if err != nil {
			t.Errorf("re-encode %v: %v", m, err)
			continue
		}
		if !bytes.Equal(again, raw) {
			t.Errorf("%s: re-encoded\n %x\nwant\n %x", h.Type, again, raw)
		}
	}
}
