package openflow

import (
	"bytes"
	"encoding/binary"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// These tests hand our encodings to OVS's own decoder (`ovs-ofctl
// ofp-parse`, one run for many messages) and check it reads what we meant.

// Match fields built ad hoc, so these tests do not depend on the field
// table; the wire identity is all that matters to OVS.
var (
	msgFInPort  = &Field{Name: "in_port", Class: OXMClassOpenFlowBasic, ID: 0, Len: 4}
	msgFEthType = &Field{Name: "eth_type", Class: OXMClassOpenFlowBasic, ID: 5, Len: 2}
	msgFIPv4Dst = &Field{Name: "ipv4_dst", Class: OXMClassOpenFlowBasic, ID: 12, Len: 4, Maskable: true}
	msgFTunID   = &Field{Name: "tun_id", Class: OXMClassOpenFlowBasic, ID: 38, Len: 8, Maskable: true}
	msgFReg0    = &Field{Name: "reg0", Class: OXMClassNXM1, ID: 0, Len: 4, Maskable: true}
)

func msgIPv4Match(last byte) Match {
	return Match{Fields: []OXM{{Field: msgFEthType, Value: []byte{8, 0}}, {Field: msgFIPv4Dst, Value: []byte{198, 18, 0, last}}}}
}

// msgRawOutput is OFPAT_OUTPUT to port (max_len 0xffff), as raw bytes.
func msgRawOutput(port uint32) Action {
	b := []byte{0, 0, 0, 16}
	b = binary.BigEndian.AppendUint32(b, port)
	b = binary.BigEndian.AppendUint16(b, 0xffff)
	return &UnknownAction{Raw: append(b, 0, 0, 0, 0, 0, 0)}
}

// msgTestFlowMod is an OFPFC_ADD FLOW_MOD (no instructions: drop) as an
// Unknown message, independent of the FlowMod type.
func msgTestFlowMod(priority uint16, m Match) *Unknown {
	b := binary.BigEndian.AppendUint64(nil, 0xb0)
	b = binary.BigEndian.AppendUint64(b, 0)
	b = append(b, 0, 0, 0, 0, 0, 0)
	b = binary.BigEndian.AppendUint16(b, priority)
	b = binary.BigEndian.AppendUint32(b, NoBuffer)
	b = binary.BigEndian.AppendUint32(b, PortAny)
	b = binary.BigEndian.AppendUint32(b, GroupAny)
	b = append(b, 0, 0, 0, 0)
	b, _ = m.AppendTo(b)
	return &Unknown{MsgType: TypeFlowMod, Body: b}
}

func msgUDPFrame() []byte {
	f := make([]byte, 58)
	copy(f, []byte{2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 8, 0, 0x45, 0, 0, 44, 0, 1, 0, 0, 64, 17, 0, 0, 198, 18, 0, 1, 198, 18, 0, 2, 4, 0xd2, 0x16, 0x2e, 0, 24})
	return f
}

// msgNeedOVSOfctl returns the ovs-ofctl path, failing under CI=true and
// skipping elsewhere when it is missing.
func msgNeedOVSOfctl(t testing.TB) string {
	t.Helper()
	p, err := exec.LookPath("ovs-ofctl")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("ovs-ofctl is required under CI: %v", err)
		}
		t.Skipf("ovs-ofctl not installed: %v", err)
	}
	return p
}

var msgOfpHeaderLine = regexp.MustCompile(`\(OF1\.3\) \(xid=0x([0-9a-f]+)\)`)

// msgOfpParse runs `ovs-ofctl ofp-parse` once over all messages (each sent
// with xid i+1) and returns OVS's text for each message. Messages quoted
// inside another (bundle adds, errors) stay with their outer message.
func msgOfpParse(t *testing.T, msgs []Message) []string {
	t.Helper()
	ofctl := msgNeedOVSOfctl(t)
	var buf []byte
	for i, m := range msgs {
		xid := uint32(i + 1)
		if ba, ok := m.(*BundleAdd); ok {
			xid = ba.Xid // OVS wants the inner and outer xid equal
		}
		var err error
		if buf, err = AppendMessage(buf, m, xid); err != nil {
			t.Fatalf("encode %v: %v", m, err)
		}
	}
	f := filepath.Join(t.TempDir(), "msgs.bin")
	if err := os.WriteFile(f, buf, 0o644); err != nil {
		t.Fatal(err)
	}
	var stdout, stderr bytes.Buffer
	cmd := exec.Command(ofctl, "ofp-parse", f)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("ovs-ofctl ofp-parse: %v\n%s", err, stderr.String())
	}
	if stderr.Len() > 0 {
		t.Errorf("ovs-ofctl complained:\n%s", stderr.String())
	}
	out := make([]string, len(msgs))
	next := 0
	for _, line := range strings.Split(stdout.String(), "\n") {
		if next < len(msgs) {
			want := uint32(next + 1)
			if ba, ok := msgs[next].(*BundleAdd); ok {
				want = ba.Xid
			}
			if sm := msgOfpHeaderLine.FindStringSubmatch(line); sm != nil {
				if x, _ := strconv.ParseUint(sm[1], 16, 32); uint32(x) == want {
					next++
				}
			}
		}
		if next > 0 {
			out[next-1] += line + "\n"
		}
	}
	if next != len(msgs) {
		t.Fatalf("ovs-ofctl printed %d of %d messages:\n%s", next, len(msgs), stdout.String())
	}
	return out
}

type msgOracleCase struct {
	m    Message
	want []string
}

func msgRunOracle(t *testing.T, cases []msgOracleCase) {
	t.Helper()
	msgs := make([]Message, len(cases))
	for i, c := range cases {
		msgs[i] = c.m
	}
	texts := msgOfpParse(t, msgs)
	for i, c := range cases {
		txt := texts[i]
		if strings.Contains(txt, "***") {
			t.Errorf("OVS could not decode %v:\n%s", c.m, txt)
			continue
		}
		for _, w := range c.want {
			if !strings.Contains(txt, w) {
				t.Errorf("OVS printed\n%s\nfor %v; missing %q", txt, c.m, w)
			}
		}
	}
}

func msgEntries(t *testing.T, items ...interface{ AppendTo([]byte) ([]byte, error) }) []byte {
	t.Helper()
	var b []byte
	var err error
	for _, it := range items {
		if b, err = it.AppendTo(b); err != nil {
			t.Fatal(err)
		}
	}
	return b
}

func TestOVSDecodesOurMessages(t *testing.T) {
	mac := net.HardwareAddr{2, 0, 0, 0, 0, 1}
	port := Port{PortNo: 1, HWAddr: mac, Name: "veth0", Config: PortConfigDown, State: PortStateLinkDown, CurrSpeed: 10_000_000, MaxSpeed: 25_000_000}
	meta := Match{Fields: []OXM{{Field: msgFInPort, Value: msgBE32(1)}, {Field: msgFReg0, Value: msgBE32(0x2a)}, {Field: msgFTunID, Value: msgBE64(0x64)}}}
	flowStats := msgEntries(t,
		&FlowStats{Table: 1, DurationSec: 1, DurationNsec: 500_000_000, Priority: 7, IdleTimeout: 10, Flags: 1, Cookie: 5, PacketCount: 3, ByteCount: 300, Match: msgIPv4Match(7)},
		&FlowStats{Table: 2, Priority: 8, Cookie: 6})
	failedFlowMod, err := Marshal(msgTestFlowMod(20, msgIPv4Match(50)), 9)
	if err != nil {
		t.Fatal(err)
	}
	cases := []msgOracleCase{
		{NewHello(), []string{"OFPT_HELLO", "version bitmap: 0x04"}},
		{&Hello{Versions: []uint8{1, 4, 6}}, []string{"version bitmap: 0x01, 0x04, 0x06"}},
		{&EchoRequest{Data: []byte("hi")}, []string{"OFPT_ECHO_REQUEST", "2 bytes of payload", "|hi"}},
		{&EchoReply{}, []string{"OFPT_ECHO_REPLY", "0 bytes of payload"}},
		{&FeaturesRequest{}, []string{"OFPT_FEATURES_REQUEST"}},
		{&FeaturesReply{DatapathID: 0xa1, NTables: 254, Capabilities: CapFlowStats | CapPortStats}, []string{"dpid:00000000000000a1", "n_tables:254, n_buffers:0", "capabilities: FLOW_STATS PORT_STATS"}},
		{&GetConfigRequest{}, []string{"OFPT_GET_CONFIG_REQUEST"}},
		{&GetConfigReply{Flags: ConfigFragDrop, MissSendLen: 128}, []string{"OFPT_GET_CONFIG_REPLY", "frags=drop miss_send_len=128"}},
		{&SetConfig{MissSendLen: MissSendLenNoBuffer}, []string{"OFPT_SET_CONFIG", "frags=normal miss_send_len=65535"}},
		{&BarrierRequest{}, []string{"OFPT_BARRIER_REQUEST"}},
		{&BarrierReply{}, []string{"OFPT_BARRIER_REPLY"}},
		{&PortStatus{Reason: PortModified, Port: port}, []string{"MOD: 1(veth0): addr:02:00:00:00:00:01", "config:     PORT_DOWN", "state:      LINK_DOWN", "speed: 10000 Mbps now, 25000 Mbps max"}},
		{&MeterMod{Command: MeterAdd, Flags: MeterFlagKbps | MeterFlagBurst | MeterFlagStats, MeterID: 1, Bands: []MeterBand{{Type: MeterBandDrop, Rate: 1000, BurstSize: 100}, {Type: MeterBandDSCPRemark, Rate: 2000, PrecLevel: 1}}},
			[]string{"ADD meter=1 kbps burst stats bands=", "type=drop rate=1000 burst_size=100", "type=dscp_remark rate=2000 burst_size=0 prec_level=1"}},
		{&MeterMod{Command: MeterModify, Flags: MeterFlagPktps, MeterID: 2, Bands: []MeterBand{{Type: MeterBandDrop, Rate: 50}}}, []string{"MOD meter=2 pktps bands=", "type=drop rate=50"}},
		{&MeterMod{Command: MeterDelete, MeterID: 3}, []string{"DEL meter=3"}},
		{&PacketOut{BufferID: NoBuffer, InPort: PortController, Actions: []Action{msgRawOutput(2)}, Data: msgUDPFrame()},
			[]string{"OFPT_PACKET_OUT", "in_port=CONTROLLER actions=output:2 data_len=58", "nw_src=198.18.0.1,nw_dst=198.18.0.2"}},
		{&PacketOut{BufferID: 0x10, InPort: 3}, []string{"in_port=3 actions=drop buffer=0x00000010"}},
		{&PacketIn{BufferID: NoBuffer, TotalLen: 58, Reason: PacketInReasonNoMatch, Table: 3, Cookie: 0x99, Match: Match{Fields: []OXM{{Field: msgFInPort, Value: msgBE32(1)}}}, Data: msgUDPFrame()},
			[]string{"OFPT_PACKET_IN", "table_id=3 cookie=0x99 total_len=58 in_port=1 (via no_match) data_len=58 (unbuffered)"}},
		{&FlowRemoved{Cookie: 0x77, Priority: 5, Reason: FlowRemovedHardTimeout, Table: 2, DurationSec: 5, DurationNsec: 1_000_000, IdleTimeout: 1, HardTimeout: 9, PacketCount: 3, ByteCount: 300, Match: msgIPv4Match(99)},
			[]string{"OFPT_FLOW_REMOVED", "priority=5,ip,nw_dst=198.18.0.99 reason=hard table_id=2 cookie:0x77 duration5.001s idle1 hard9 pkts3 bytes300"}},
		{&FlowStatsRequest{Table: 1, OutPort: 2, OutGroup: GroupAny, Cookie: 0x10, CookieMask: 0xff, Match: msgIPv4Match(5)},
			[]string{"OFPST_FLOW request", "table=1 out_port=2 ip,nw_dst=198.18.0.5"}}, // OVS does not print the cookie

		{&AggregateStatsRequest{Table: TableAll, OutPort: PortAny, OutGroup: GroupAny}, []string{"OFPST_AGGREGATE request"}},
		{&TableStatsRequest{}, []string{"OFPST_TABLE request"}},
		{&PortStatsRequest{PortNo: 1}, []string{"OFPST_PORT request", "port_no=1"}},
		{&PortDescRequest{}, []string{"OFPST_PORT_DESC request", "port=ANY"}},
		{&MeterStatsRequest{MeterID: 7}, []string{"OFPST_METER request", "meter=7"}},
		{&MultipartReply{MPType: MultipartFlow, Body: flowStats}, []string{"OFPST_FLOW reply",
			"cookie=0x5, duration=1.500s, table=1, n_packets=3, n_bytes=300, idle_timeout=10, send_flow_rem priority=7,ip,nw_dst=198.18.0.7 actions=drop",
			"cookie=0x6, duration=0s, table=2, n_packets=0, n_bytes=0, priority=8 actions=drop"}},
		{&MultipartReply{MPType: MultipartAggregate, Body: msgEntries(t, &AggregateStats{PacketCount: 2, ByteCount: 116, FlowCount: 3})}, []string{"packet_count=2 byte_count=116 flow_count=3"}},
		{&MultipartReply{MPType: MultipartTable, Body: msgEntries(t, &TableStats{Table: 0, ActiveCount: 4, LookupCount: 10, MatchedCount: 9})}, []string{"OFPST_TABLE reply", "table 0:", "active=4, lookup=10, matched=9"}},
		{&MultipartReply{MPType: MultipartPortStats, Body: msgEntries(t, &PortStats{PortNo: 1, RxPackets: 5, TxBytes: 700, RxCRCErr: 2, DurationSec: 3})}, []string{"OFPST_PORT reply", "port  1: rx pkts=5, bytes=0, drop=0, errs=0, frame=0, over=0, crc=2", "tx pkts=0, bytes=700", "duration=3s"}},
		{&MultipartReply{MPType: MultipartPortDesc, Flags: MultipartFlagMore, Body: msgEntries(t, &port)}, []string{"OFPST_PORT_DESC reply", "flags=[more]", "1(veth0): addr:02:00:00:00:00:01"}},
		{&MultipartReply{MPType: MultipartMeter, Body: msgEntries(t, &MeterStats{MeterID: 7, FlowCount: 1, PacketInCount: 4, ByteInCount: 400, DurationSec: 2, Bands: []MeterBandStats{{PacketCount: 1, ByteCount: 100}}})},
			[]string{"meter:7 flow_count:1 packet_in_count:4 byte_in_count:400 duration:2s bands:", "0: packet_count:1 byte_count:100"}},
		{&SetPacketInFormat{Format: PacketInFormatNXT2}, []string{"NXT_SET_PACKET_IN_FORMAT", "format=nxt_packet_in2"}},
		{&SetControllerID{ID: 7}, []string{"NXT_SET_CONTROLLER_ID", "id=7"}},
		{&PacketIn2{Packet: msgUDPFrame(), FullLen: 58, BufferID: NoBuffer, Table: 3, Cookie: 0x1234, Reason: PacketInReasonAction, Metadata: meta, Userdata: []byte{1, 2, 3}},
			[]string{"NXT_PACKET_IN2", "table_id=3 cookie=0x1234 total_len=58 reg0=0x2a,tun_id=0x64,in_port=1 (via action) data_len=58 (unbuffered)", "userdata=01.02.03", "nw_dst=198.18.0.2"}},
		{&PacketIn2{Packet: msgUDPFrame()[:20], FullLen: 58, BufferID: 9, Reason: PacketInReasonNoMatch},
			[]string{"total_len=58  (via no_match) data_len=20 buffer=0x00000009"}},
		{&BundleControl{BundleID: 5, CtrlType: BundleOpenRequest, Flags: BundleAtomic | BundleOrdered}, []string{"ONFT_BUNDLE_CONTROL", "bundle_id=0x5 type=OPEN_REQUEST flags=atomic ordered"}},
		{&BundleControl{BundleID: 5, CtrlType: BundleCommitReply}, []string{"bundle_id=0x5 type=COMMIT_REPLY flags=0"}},
		{&BundleControl{BundleID: 6, CtrlType: BundleDiscardRequest, Flags: BundleOrdered}, []string{"bundle_id=0x6 type=DISCARD_REQUEST flags=ordered"}},
		{&BundleAdd{BundleID: 5, Flags: BundleAtomic, Xid: 0x500, Message: msgTestFlowMod(20, msgIPv4Match(50))},
			[]string{"ONFT_BUNDLE_ADD_MESSAGE", "bundle_id=0x5 flags=atomic", "OFPT_FLOW_MOD (OF1.3) (xid=0x500): ADD priority=20,ip,nw_dst=198.18.0.50 cookie:0xb0 actions=drop"}},
		{&ErrorMsg{ErrType: ErrTypeBadMatch, Code: 6, Data: failedFlowMod}, []string{"OFPT_ERROR", "OFPBMC_BAD_FIELD", "OFPT_FLOW_MOD (OF1.3) (xid=0x9): ADD priority=20,ip,nw_dst=198.18.0.50"}},
		{&ErrorMsg{ErrType: ErrTypeExperimenter, Experimenter: ONFExperimenter, Code: BundleErrBase + BundleErrMsgFailed}, []string{"OFPBFC_MSG_FAILED"}},
		{&ErrorMsg{ErrType: ErrTypeExperimenter, Experimenter: NiciraExperimenter, Code: 2}, []string{"NXBRC_NXM_INVALID"}},
	}
	msgRunOracle(t, cases)
}

// TestOVSAgreesOnErrorNames encodes every error type/code we name and
// checks OVS gives it the same name (or a known alias: OVS keeps the
// OpenFlow 1.0 spelling for a few, and folds table-features property
// errors into OFPBPC_*).
func TestOVSAgreesOnErrorNames(t *testing.T) {
	alias := map[string]string{
		"OFPBRC_BAD_MULTIPART": "OFPBRC_BAD_STAT", "OFPBRC_BAD_EXPERIMENTER": "OFPBRC_BAD_VENDOR",
		"OFPBRC_BAD_EXP_TYPE": "OFPBRC_BAD_SUBTYPE", "OFPBAC_BAD_EXPERIMENTER": "OFPBAC_BAD_VENDOR",
		"OFPBAC_BAD_EXP_TYPE": "OFPBAC_BAD_VENDOR_TYPE", "OFPTFFC_BAD_TYPE": "OFPBPC_BAD_TYPE",
		"OFPTFFC_BAD_LEN": "OFPBPC_BAD_LEN", "OFPTFFC_BAD_ARGUMENT": "OFPBPC_BAD_VALUE",
		"OFPBRC_IS_SLAVE": "OFPBRC_IS_SECONDARY",
	}
	var cases []msgOracleCase
	add := func(e *ErrorMsg) {
		name := e.CodeName()
		if a, ok := alias[name]; ok {
			name = a
		}
		cases = append(cases, msgOracleCase{e, []string{"OFPT_ERROR (OF1.3) (xid=0x" + strconv.FormatUint(uint64(len(cases)+1), 16) + "): " + name + "\n"}})
	}
	for typ, info := range errTypes {
		if typ == ErrTypeBundleFailed {
			continue // an OpenFlow 1.4 type; OVS sends these as ONF errors on 1.3
		}
		for code := range info.codes {
			add(&ErrorMsg{ErrType: typ, Code: uint16(code)})
		}
	}
	for code := range niciraErrNames {
		add(&ErrorMsg{ErrType: ErrTypeExperimenter, Experimenter: NiciraExperimenter, Code: code})
	}
	for c := range bundleErrNames {
		add(&ErrorMsg{ErrType: ErrTypeExperimenter, Experimenter: ONFExperimenter, Code: BundleErrBase + uint16(c)})
	}
	for code := range onfErrNames {
		add(&ErrorMsg{ErrType: ErrTypeExperimenter, Experimenter: ONFExperimenter, Code: code})
	}
	if len(cases) < 100 {
		t.Fatalf("only %d error codes named", len(cases))
	}
	msgRunOracle(t, cases)
}
