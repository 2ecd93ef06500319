// Command capture records real OpenFlow 1.3 messages from a live
// ovs-vswitchd into openflow/testdata/msg/*.hex, so the codec's decoders are
// tested on bytes OVS itself produced. It is a one-off tool for refreshing
// that testdata, not part of keyroute: run as root from the openflow
// directory with `go run ./internal/capture`.
//
// It starts ovsdb-server and ovs-vswitchd (netdev datapath) in a private
// network namespace "krb-cap" with a private run directory, talks OpenFlow
// to the bridge's .mgmt socket, and stops everything by PID when done.
package main

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/keyroute/keyroute/openflow"
)

const (
	netnsName = "krb-cap"
	bridge    = "br0"
	schema    = "/usr/share/openvswitch/vswitch.ovsschema"
)

func main() {
	out := flag.String("out", "testdata/msg", "directory for the .hex files")
	flag.Parse()
	if err := run(*out); err != nil {
		slog.Error("capture failed", "err", err)
		os.Exit(1)
	}
}

type ovs struct {
	dir  string
	pids []int
}

func (o *ovs) env() []string {
	return append(os.Environ(), "OVS_RUNDIR="+o.dir+"/run", "OVS_LOGDIR="+o.dir+"/log",
		"OVS_DBDIR="+o.dir+"/db", "OVS_SYSCONFDIR="+o.dir+"/etc")
}

func (o *ovs) cmd(name string, args ...string) error {
	c := exec.Command(name, args...)
	c.Env = o.env()
	outb, err := c.CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, outb)
	}
	return nil
}

func (o *ovs) vsctl(args ...string) error {
	return o.cmd("ovs-vsctl", append([]string{"--db=unix:" + o.dir + "/run/db.sock", "--timeout=10"}, args...)...)
}

func (o *ovs) ofctl(args ...string) error {
	a := append([]string{"-O", "OpenFlow13"}, args[0], "unix:"+o.mgmt())
	return o.cmd("ovs-ofctl", append(a, args[1:]...)...)
}

func (o *ovs) mgmt() string { return o.dir + "/run/" + bridge + ".mgmt" }

func readPid(path string) (int, error) {
	deadline := time.Now().Add(10 * time.Second)
	for {
		b, err := os.ReadFile(path)
		if err == nil {
			if p, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil {
				return p, nil
			}
		}
		if time.Now().After(deadline) {
			return 0, fmt.Errorf("no pid in %s", path)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (o *ovs) start() error {
	for _, d := range []string{"run", "log", "db", "etc"} {
		if err := os.MkdirAll(filepath.Join(o.dir, d), 0o755); err != nil {
			return err
		}
	}
	if err := o.cmd("ip", "netns", "add", netnsName); err != nil {
		return err
	}
	if err := o.cmd("ip", "netns", "exec", netnsName, "ip", "link", "set", "lo", "up"); err != nil {
		return err
	}
	if err := o.cmd("ovsdb-tool", "create", o.dir+"/db/conf.db", schema); err != nil {
		return err
	}
	if err := o.cmd("ip", "netns", "exec", netnsName, "ovsdb-server", o.dir+"/db/conf.db",
		"--remote=punix:"+o.dir+"/run/db.sock", "--pidfile="+o.dir+"/run/ovsdb-server.pid",
		"--unixctl="+o.dir+"/run/ovsdb-server.ctl", "--log-file="+o.dir+"/log/ovsdb-server.log",
		"--detach", "--no-chdir"); err != nil {
		return err
	}
	p, err := readPid(o.dir + "/run/ovsdb-server.pid")
	if err != nil {
		return err
	}
	o.pids = append(o.pids, p)
	if err := o.vsctl("--no-wait", "init"); err != nil {
		return err
	}
	if err := o.cmd("ip", "netns", "exec", netnsName, "ovs-vswitchd", "unix:"+o.dir+"/run/db.sock",
		"--pidfile="+o.dir+"/run/ovs-vswitchd.pid", "--unixctl="+o.dir+"/run/ovs-vswitchd.ctl",
		"--log-file="+o.dir+"/log/ovs-vswitchd.log", "-vconsole:off", "--detach", "--no-chdir"); err != nil {
		return err
	}
	if p, err = readPid(o.dir + "/run/ovs-vswitchd.pid"); err != nil {
		return err
	}
	o.pids = append(o.pids, p)
	return o.vsctl("add-br", bridge, "--", "set", "bridge", bridge, "datapath_type=netdev",
		"fail_mode=secure", "protocols=OpenFlow13", "other_config:datapath-id=00000000000000a1")
}

func (o *ovs) stop() {
	for i := len(o.pids) - 1; i >= 0; i-- {
		p := o.pids[i]
		if err := syscall.Kill(p, syscall.SIGTERM); err != nil {
			continue
		}
		for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
			if syscall.Kill(p, 0) != nil {
				break
			}
		}
	}
	_ = exec.Command("ip", "netns", "del", netnsName).Run()
}

// conn is an OpenFlow connection that stashes messages that arrive while
// waiting for something else.
type conn struct {
	c     net.Conn
	r     *openflow.Reader
	xid   uint32
	stash [][]byte
}

func (c *conn) send(m openflow.Message) (uint32, error) {
	c.xid++
	return c.xid, c.sendXid(m, c.xid)
}

func (c *conn) sendXid(m openflow.Message, xid uint32) error {
	b, err := openflow.Marshal(m, xid)
	if err != nil {
		return err
	}
	_, err = c.c.Write(b)
	return err
}

// next returns the next raw message (a copy) that pred accepts, taking
// stashed ones first.
func (c *conn) next(what string, timeout time.Duration, pred func(h openflow.Header, raw []byte) bool) ([]byte, error) {
	for i, raw := range c.stash {
		h, _ := openflow.ParseHeader(raw)
		if pred(h, raw) {
			c.stash = append(c.stash[:i], c.stash[i+1:]...)
			return raw, nil
		}
	}
	deadline := time.Now().Add(timeout)
	for {
		if err := c.c.SetReadDeadline(deadline); err != nil {
			return nil, err
		}
		raw, err := c.r.ReadRaw()
		if err != nil {
			return nil, fmt.Errorf("waiting for %s: %w", what, err)
		}
		raw = bytes.Clone(raw)
		h, _ := openflow.ParseHeader(raw)
		if h.Type == openflow.TypeEchoRequest {
			_ = c.sendXid(&openflow.EchoReply{}, h.Xid)
			continue
		}
		if pred(h, raw) {
			return raw, nil
		}
		c.stash = append(c.stash, raw)
	}
}

func byXid(xid uint32) func(openflow.Header, []byte) bool {
	return func(h openflow.Header, _ []byte) bool { return h.Xid == xid }
}

func byType(t openflow.MsgType) func(openflow.Header, []byte) bool {
	return func(h openflow.Header, _ []byte) bool { return h.Type == t }
}

func isExperimenter(id, subtype uint32) func(openflow.Header, []byte) bool {
	return func(h openflow.Header, raw []byte) bool {
		return h.Type == openflow.TypeExperimenter && len(raw) >= 16 &&
			binary.BigEndian.Uint32(raw[8:]) == id && binary.BigEndian.Uint32(raw[12:]) == subtype
	}
}

// request sends m and returns every message with its xid up to and
// including the last multipart part or the barrier reply that follows.
func (c *conn) request(m openflow.Message) ([][]byte, error) {
	xid, err := c.send(m)
	if err != nil {
		return nil, err
	}
	bxid, err := c.send(&openflow.BarrierRequest{})
	if err != nil {
		return nil, err
	}
	var got [][]byte
	for {
		raw, err := c.next(fmt.Sprintf("reply to xid %d", xid), 10*time.Second, func(h openflow.Header, _ []byte) bool {
			return h.Xid == xid || h.Xid == bxid
		})
		if err != nil {
			return nil, err
		}
		h, _ := openflow.ParseHeader(raw)
		if h.Xid == bxid {
			return got, nil
		}
		got = append(got, raw)
	}
}

type writer struct {
	dir string
	n   int
}

func (w *writer) save(name, comment string, msgs ...[]byte) error {
	if len(msgs) == 0 {
		return fmt.Errorf("%s: nothing captured", name)
	}
	var sb strings.Builder
	fmt.Fprintf(&sb, "# %s\n# Captured from ovs-vswitchd by openflow/internal/capture; one message per line.\n", comment)
	for _, m := range msgs {
		sb.WriteString(hex.EncodeToString(m))
		sb.WriteByte('\n')
	}
	w.n++
	slog.Info("saved", "file", name, "messages", len(msgs))
	return os.WriteFile(filepath.Join(w.dir, name+".hex"), []byte(sb.String()), 0o644)
}

// raw is a message given as its body bytes, for the FLOW_MODs the capture
// sends (keyroute's FlowMod lives elsewhere; raw bytes keep this tool
// independent of it).
type raw struct {
	t    openflow.MsgType
	body []byte
}

func (r *raw) Type() openflow.MsgType              { return r.t }
func (r *raw) AppendBody(b []byte) ([]byte, error) { return append(b, r.body...), nil }

var (
	fEthType = &openflow.Field{Name: "eth_type", Class: openflow.OXMClassOpenFlowBasic, ID: 5, Len: 2}
	fIPDSCP  = &openflow.Field{Name: "ip_dscp", Class: openflow.OXMClassOpenFlowBasic, ID: 8, Len: 1}
	fIPv4Dst = &openflow.Field{Name: "ipv4_dst", Class: openflow.OXMClassOpenFlowBasic, ID: 12, Len: 4}
)

// flowMod encodes an OFPFC_ADD in table 0 with no instructions (drop).
func flowMod(cookie uint64, priority, flags uint16, m openflow.Match) *raw {
	b := binary.BigEndian.AppendUint64(nil, cookie)
	b = binary.BigEndian.AppendUint64(b, 0)
	b = append(b, 0, 0) // table 0, OFPFC_ADD
	b = binary.BigEndian.AppendUint16(b, 0)
	b = binary.BigEndian.AppendUint16(b, 0)
	b = binary.BigEndian.AppendUint16(b, priority)
	b = binary.BigEndian.AppendUint32(b, openflow.NoBuffer)
	b = binary.BigEndian.AppendUint32(b, openflow.PortAny)
	b = binary.BigEndian.AppendUint32(b, openflow.GroupAny)
	b = binary.BigEndian.AppendUint16(b, flags)
	b = append(b, 0, 0)
	b, _ = m.AppendTo(b)
	return &raw{t: openflow.TypeFlowMod, body: b}
}

// ofpffCheckOverlap is OFPFF_CHECK_OVERLAP.
const ofpffCheckOverlap = 1 << 1

func goodFlowMod(last byte) *raw {
	return flowMod(0xb0, 20, 0, openflow.Match{Fields: []openflow.OXM{
		{Field: fEthType, Value: []byte{0x08, 0x00}},
		{Field: fIPv4Dst, Value: []byte{198, 18, 0, last}},
	}})
}

// badFlowMod matches ip_dscp without eth_type=ip: OFPBMC_BAD_PREREQ.
func badFlowMod() *raw {
	return flowMod(0xbad, 20, 0, openflow.Match{Fields: []openflow.OXM{{Field: fIPDSCP, Value: []byte{10}}}})
}

// udpFrame builds an Ethernet/IPv4/UDP frame 198.18.0.1 -> 198.18.0.2.
func udpFrame() []byte {
	payload := []byte("keyroute capture")
	f := []byte{2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x08, 0x00}
	ip := []byte{0x45, 0, 0, 0, 0, 1, 0, 0, 64, 17, 0, 0, 198, 18, 0, 1, 198, 18, 0, 2}
	binary.BigEndian.PutUint16(ip[2:], uint16(20+8+len(payload)))
	var sum uint32
	for i := 0; i < 20; i += 2 {
		sum += uint32(binary.BigEndian.Uint16(ip[i:]))
	}
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	binary.BigEndian.PutUint16(ip[10:], ^uint16(sum))
	udp := []byte{0x04, 0xd2, 0x16, 0x2e, 0, 0, 0, 0}
	binary.BigEndian.PutUint16(udp[4:], uint16(8+len(payload)))
	f = append(append(append(f, ip...), udp...), payload...)
	return f
}

func packetOut() *openflow.PacketOut {
	return &openflow.PacketOut{BufferID: openflow.NoBuffer, InPort: openflow.PortController,
		Actions: []openflow.Action{&openflow.UnknownAction{Raw: outputTable()}}, Data: udpFrame()}
}

// outputTable is an OFPAT_OUTPUT to OFPP_TABLE (raw, for independence from
// the action helpers).
func outputTable() []byte {
	b := []byte{0, 0, 0, 16}
	b = binary.BigEndian.AppendUint32(b, openflow.PortTable)
	b = binary.BigEndian.AppendUint16(b, 0xffff)
	return append(b, 0, 0, 0, 0, 0, 0)
}

func run(outDir string) error {
	if os.Geteuid() != 0 {
		return errors.New("must run as root (network namespace, ovs-vswitchd)")
	}
	dir, err := os.MkdirTemp("", "krb-cap-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	o := &ovs{dir: dir}
	defer o.stop()
	if err := o.start(); err != nil {
		return fmt.Errorf("start ovs: %w", err)
	}
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if _, err := os.Stat(o.mgmt()); err == nil {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s did not appear", o.mgmt())
		}
	}
	nc, err := net.Dial("unix", o.mgmt())
	if err != nil {
		return err
	}
	defer nc.Close()
	c := &conn{c: nc, r: openflow.NewReader(nc)}
	w := &writer{dir: outDir}
	return capture(o, c, w)
}

func capture(o *ovs, c *conn, w *writer) error {
	// Handshake.
	if _, err := c.send(openflow.NewHello()); err != nil {
		return err
	}
	hello, err := c.next("HELLO", 5*time.Second, byType(openflow.TypeHello))
	if err != nil {
		return err
	}
	if err := w.save("hello", "HELLO from ovs-vswitchd", hello); err != nil {
		return err
	}
	steps := []struct {
		name, comment string
		m             openflow.Message
	}{
		{"features_reply", "FEATURES_REPLY (datapath-id 0xa1)", &openflow.FeaturesRequest{}},
		{"echo_reply", "ECHO_REPLY to an ECHO_REQUEST with payload \"krb\"", &openflow.EchoRequest{Data: []byte("krb")}},
	}
	for _, s := range steps {
		got, err := c.request(s.m)
		if err != nil {
			return fmt.Errorf("%s: %w", s.name, err)
		}
		if err := w.save(s.name, s.comment, got...); err != nil {
			return err
		}
	}
	if _, err := c.send(&openflow.SetConfig{MissSendLen: openflow.MissSendLenNoBuffer}); err != nil {
		return err
	}
	got, err := c.request(&openflow.GetConfigRequest{})
	if err != nil {
		return err
	}
	if err := w.save("get_config_reply", "GET_CONFIG_REPLY after SET_CONFIG miss_send_len=0xffff", got...); err != nil {
		return err
	}
	xid, _ := c.send(&openflow.BarrierRequest{})
	br, err := c.next("BARRIER_REPLY", 5*time.Second, byXid(xid))
	if err != nil {
		return err
	}
	if err := w.save("barrier_reply", "BARRIER_REPLY", br); err != nil {
		return err
	}

	// A port appears: PORT_STATUS, then the port list.
	if err := o.cmd("ip", "netns", "exec", netnsName, "ip", "link", "add", "krb-v0", "type", "veth", "peer", "name", "krb-v1"); err != nil {
		return err
	}
	if err := o.vsctl("add-port", bridge, "krb-v0", "--", "set", "interface", "krb-v0", "ofport_request=1"); err != nil {
		return err
	}
	ps, err := c.next("PORT_STATUS", 10*time.Second, byType(openflow.TypePortStatus))
	if err != nil {
		return err
	}
	if err := w.save("port_status", "PORT_STATUS for krb-v0 (port 1) being added", ps); err != nil {
		return err
	}

	// Flows: a controller(userdata) punt that also sets a register and
	// tunnel metadata, and an idle_timeout=1 send_flow_rem flow.
	if err := o.ofctl("add-flow", "table=0,priority=10,cookie=0xc0ffee,udp,nw_dst=198.18.0.2 actions="+
		"load:0x2a->NXM_NX_REG0[],set_field:0x64->tun_id,set_field:198.18.0.9->tun_dst,controller(userdata=01.02.03.04)"); err != nil {
		return err
	}
	if err := o.ofctl("add-flow", "table=0,priority=5,cookie=0x77,idle_timeout=1,send_flow_rem,ip,nw_dst=198.18.0.99 actions=output:1"); err != nil {
		return err
	}
	// Standard OF1.3 PACKET_IN first, then NXT_PACKET_IN2.
	if _, err := c.send(packetOut()); err != nil {
		return err
	}
	pin, err := c.next("PACKET_IN", 5*time.Second, byType(openflow.TypePacketIn))
	if err != nil {
		return err
	}
	if err := w.save("packet_in", "OF1.3 PACKET_IN from controller(userdata=01.02.03.04), cookie 0xc0ffee, reg0=0x2a tun_id=0x64 tun_dst=198.18.0.9", pin); err != nil {
		return err
	}
	if _, err := c.send(&openflow.SetPacketInFormat{Format: openflow.PacketInFormatNXT2}); err != nil {
		return err
	}
	if _, err := c.send(packetOut()); err != nil {
		return err
	}
	pin2, err := c.next("NXT_PACKET_IN2", 5*time.Second, isExperimenter(openflow.NiciraExperimenter, 30))
	if err != nil {
		return err
	}
	if err := w.save("packet_in2", "NXT_PACKET_IN2 from controller(userdata=01.02.03.04), cookie 0xc0ffee, reg0=0x2a tun_id=0x64 tun_dst=198.18.0.9, UDP 198.18.0.1->198.18.0.2", pin2); err != nil {
		return err
	}

	// A meter, then the stats requests.
	got, err = c.request(&openflow.MeterMod{Command: openflow.MeterAdd, Flags: openflow.MeterFlagKbps | openflow.MeterFlagBurst | openflow.MeterFlagStats,
		MeterID: 7, Bands: []openflow.MeterBand{{Type: openflow.MeterBandDrop, Rate: 1000, BurstSize: 100}}})
	if err != nil || len(got) != 0 {
		return fmt.Errorf("meter mod: %v, replies %x", err, got)
	}
	stats := []struct {
		name, comment string
		m             openflow.Message
	}{
		{"port_desc_reply", "PORT_DESC reply: LOCAL (br0) and krb-v0", &openflow.PortDescRequest{}},
		{"flow_stats_reply", "FLOW stats reply: the two table-0 flows", &openflow.FlowStatsRequest{Table: openflow.TableAll, OutPort: openflow.PortAny, OutGroup: openflow.GroupAny}},
		{"aggregate_stats_reply", "AGGREGATE stats reply: 2 flows, 2 packets", &openflow.AggregateStatsRequest{Table: openflow.TableAll, OutPort: openflow.PortAny, OutGroup: openflow.GroupAny}},
		{"table_stats_reply", "TABLE stats reply (254 tables)", &openflow.TableStatsRequest{}},
		{"port_stats_reply", "PORT stats reply, all ports", &openflow.PortStatsRequest{PortNo: openflow.PortAny}},
		{"meter_stats_reply", "METER stats reply: meter 7, one drop band", &openflow.MeterStatsRequest{MeterID: openflow.MeterAll}},
	}
	for _, s := range stats {
		got, err := c.request(s.m)
		if err != nil {
			return fmt.Errorf("%s: %w", s.name, err)
		}
		if err := w.save(s.name, s.comment, got...); err != nil {
			return err
		}
	}

	fr, err := c.next("FLOW_REMOVED", 10*time.Second, byType(openflow.TypeFlowRemoved))
	if err != nil {
		return err
	}
	if err := w.save("flow_removed", "FLOW_REMOVED: idle timeout of cookie 0x77 priority 5 ip,nw_dst=198.18.0.99", fr); err != nil {
		return err
	}

	// A bad FLOW_MOD.
	got, err = c.request(badFlowMod())
	if err != nil {
		return err
	}
	if err := w.save("error_bad_prereq", "ERROR for a FLOW_MOD matching ip_dscp without eth_type (OFPBMC_BAD_PREREQ)", got...); err != nil {
		return err
	}

	// Bundles: a good one, then one with a bad flow.
	if err := bundle(c, w, 1, goodFlowMod(50), "bundle_good", "bundle 1: OPEN_REPLY, COMMIT_REPLY (one good FLOW_MOD added)"); err != nil {
		return err
	}
	if err := bundle(c, w, 2, badFlowMod(), "bundle_bad", "bundle 2 with a FLOW_MOD OVS rejects when added (OFPBMC_BAD_PREREQ): every reply/error, in order"); err != nil {
		return err
	}
	// A flow overlapping bundle 1's (same priority, wider match) with
	// CHECK_OVERLAP fails only at commit: the flow's own error, then
	// OFPBFC_MSG_FAILED for the commit.
	overlap := flowMod(0xb1, 20, ofpffCheckOverlap, openflow.Match{Fields: []openflow.OXM{{Field: fEthType, Value: []byte{0x08, 0x00}}}})
	if err := bundle(c, w, 3, overlap, "bundle_commit_failed", "bundle 3, whose FLOW_MOD fails at commit (OFPFMFC_OVERLAP, then OFPBFC_MSG_FAILED)"); err != nil {
		return err
	}

	// Many flows: a multi-part FLOW stats reply.
	var flows strings.Builder
	for i := range 800 {
		fmt.Fprintf(&flows, "table=1,priority=%d,cookie=0x%x,tcp,nw_dst=198.19.%d.%d,tp_dst=%d actions=output:1\n", 100+i, 0x1000+i, i/250, i%250+1, 1000+i)
	}
	ff := filepath.Join(o.dir, "flows.txt")
	if err := os.WriteFile(ff, []byte(flows.String()), 0o644); err != nil {
		return err
	}
	if err := o.ofctl("add-flows", ff); err != nil {
		return err
	}
	got, err = c.request(&openflow.FlowStatsRequest{Table: 1, OutPort: openflow.PortAny, OutGroup: openflow.GroupAny})
	if err != nil {
		return err
	}
	if len(got) < 2 {
		return fmt.Errorf("flow stats for 800 flows came in %d part(s), want several", len(got))
	}
	return w.save("flow_stats_multipart", "FLOW stats reply for 800 table-1 flows, in several parts (same xid, OFPMPF_REPLY_MORE)", got...)
}

func bundle(c *conn, w *writer, id uint32, fm openflow.Message, name, comment string) error {
	var all [][]byte
	got, err := c.request(&openflow.BundleControl{BundleID: id, CtrlType: openflow.BundleOpenRequest, Flags: openflow.BundleAtomic})
	if err != nil {
		return err
	}
	all = append(all, got...)
	c.xid++
	addXid := c.xid
	if err := c.sendXid(&openflow.BundleAdd{BundleID: id, Flags: openflow.BundleAtomic, Xid: addXid, Message: fm}, addXid); err != nil {
		return err
	}
	got, err = c.request(&openflow.BundleControl{BundleID: id, CtrlType: openflow.BundleCommitRequest, Flags: openflow.BundleAtomic})
	if err != nil {
		return err
	}
	// Errors for the add arrive with the add's xid, before the barrier reply.
	for {
		e, err := c.next("", 0, byXid(addXid))
		if err != nil {
			break
		}
		all = append(all, e)
	}
	all = append(all, got...)
	return w.save(name, comment, all...)
}
