package openflow

import (
	"encoding/binary"
	"fmt"
	"strings"
)

// FlowModCommand is ofp_flow_mod_command.
type FlowModCommand uint8

const (
	FlowAdd          FlowModCommand = 0
	FlowModify       FlowModCommand = 1
	FlowModifyStrict FlowModCommand = 2
	FlowDelete       FlowModCommand = 3
	FlowDeleteStrict FlowModCommand = 4
)

func (c FlowModCommand) String() string {
	names := [...]string{"ADD", "MOD", "MOD_STRICT", "DEL", "DEL_STRICT"}
	if int(c) < len(names) {
		return names[c]
	}
	return fmt.Sprintf("cmd:%d", uint8(c))
}

// FlowModFlags is ofp_flow_mod_flags.
type FlowModFlags uint16

const (
	SendFlowRem  FlowModFlags = 1 << 0
	CheckOverlap FlowModFlags = 1 << 1
	ResetCounts  FlowModFlags = 1 << 2
	NoPktCounts  FlowModFlags = 1 << 3
	NoBytCounts  FlowModFlags = 1 << 4
)

var flowFlagNames = [...]string{"send_flow_rem", "check_overlap", "reset_counts", "no_packet_counts", "no_byte_counts"}

// words lists the flags as ovs-ofctl names them; unknown bits print as
// flags:0x.., as ofp-print does.
func (f FlowModFlags) words() []string {
	var w []string
	for i, n := range flowFlagNames {
		if f&(1<<i) != 0 {
			w = append(w, n)
		}
	}
	if rest := f &^ (1<<len(flowFlagNames) - 1); rest != 0 {
		w = append(w, fmt.Sprintf("flags:0x%x", uint16(rest)))
	}
	return w
}

// DefaultPriority is OFP_DEFAULT_PRIORITY, the priority ovs-ofctl assumes
// when a flow names none (and omits when printing).
const DefaultPriority = 0x8000

// FlowMod is OFPT_FLOW_MOD.
//
// A zero BufferID, OutPort or OutGroup means "unset", so a plain literal is
// a valid message: it is sent as NoBuffer, PortAny and GroupAny. Decoding
// maps those wire values back to 0. A message that really carries 0 there
// (buffer 0, a filter on port 0 or group 0, as other controllers send) has
// the field's bit in WireZero: Decode sets it and encoding then sends 0,
// so decode and encode keep the meaning both ways.
type FlowMod struct {
	Cookie, CookieMask       uint64
	Table                    uint8
	Command                  FlowModCommand
	IdleTimeout, HardTimeout uint16
	Priority                 uint16
	BufferID                 uint32
	OutPort, OutGroup        uint32
	// WireZero marks which of BufferID, OutPort and OutGroup are a real 0
	// on the wire; a bit is ignored while its field is non-zero.
	WireZero     WireZero
	Flags        FlowModFlags
	Match        Match
	Instructions []Instruction
}

// WireZero names FlowMod fields whose 0 is a wire value, not "unset".
type WireZero uint8

const (
	ZeroBufferID WireZero = 1 << iota
	ZeroOutPort
	ZeroOutGroup
)

const flowModFixedLen = 40 // body bytes before the match

func (*FlowMod) Type() MsgType { return TypeFlowMod }

// orAll is v as sent: all ("none"/"any") for an unset 0, unless the zero
// bit says the 0 is the wire value.
func orAll(v, all uint32, zero bool) uint32 {
	if v == 0 && !zero {
		return all
	}
	return v
}

func (m *FlowMod) AppendBody(b []byte) ([]byte, error) {
	start := len(b)
	b = binary.BigEndian.AppendUint64(b, m.Cookie)
	b = binary.BigEndian.AppendUint64(b, m.CookieMask)
	b = append(b, m.Table, byte(m.Command))
	b = binary.BigEndian.AppendUint16(b, m.IdleTimeout)
	b = binary.BigEndian.AppendUint16(b, m.HardTimeout)
	b = binary.BigEndian.AppendUint16(b, m.Priority)
	b = binary.BigEndian.AppendUint32(b, orAll(m.BufferID, NoBuffer, m.WireZero&ZeroBufferID != 0))
	b = binary.BigEndian.AppendUint32(b, orAll(m.OutPort, PortAny, m.WireZero&ZeroOutPort != 0))
	b = binary.BigEndian.AppendUint32(b, orAll(m.OutGroup, GroupAny, m.WireZero&ZeroOutGroup != 0))
	b = binary.BigEndian.AppendUint16(b, uint16(m.Flags))
	b = append(b, 0, 0)
	b, err := m.Match.AppendTo(b)
	if err != nil {
		return b[:start], err
	}
	if b, err = AppendInstructions(b, m.Instructions); err != nil {
		return b[:start], fmt.Errorf("instructions: %w", err)
	}
	return b, nil
}

// zeroIfAll maps the wire's "none"/"any" to 0 and reports a wire 0 in bit.
func zeroIfAll(v, all uint32, zero *WireZero, bit WireZero) uint32 {
	switch v {
	case all:
		return 0
	case 0:
		*zero |= bit
	}
	return v
}

// decodeFlowMod decodes an OFPT_FLOW_MOD body. Offsets in errors are
// relative to the message start.
func decodeFlowMod(body []byte) (Message, error) {
	if len(body) < flowModFixedLen {
		return nil, truncated("FLOW_MOD", HeaderLen, flowModFixedLen, len(body))
	}
	m := &FlowMod{
		Cookie:      binary.BigEndian.Uint64(body),
		CookieMask:  binary.BigEndian.Uint64(body[8:]),
		Table:       body[16],
		Command:     FlowModCommand(body[17]),
		IdleTimeout: binary.BigEndian.Uint16(body[18:]),
		HardTimeout: binary.BigEndian.Uint16(body[20:]),
		Priority:    binary.BigEndian.Uint16(body[22:]),
		Flags:       FlowModFlags(binary.BigEndian.Uint16(body[36:])),
	}
	m.BufferID = zeroIfAll(binary.BigEndian.Uint32(body[24:]), NoBuffer, &m.WireZero, ZeroBufferID)
	m.OutPort = zeroIfAll(binary.BigEndian.Uint32(body[28:]), PortAny, &m.WireZero, ZeroOutPort)
	m.OutGroup = zeroIfAll(binary.BigEndian.Uint32(body[32:]), GroupAny, &m.WireZero, ZeroOutGroup)
	if m.Command > FlowDeleteStrict {
		return nil, &DecodeError{What: "FLOW_MOD", Offset: HeaderLen + 17, Err: fmt.Errorf("unknown command %d", m.Command)}
	}
	match, n, err := DecodeMatch(body[flowModFixedLen:])
	if err != nil {
		return nil, shiftDecodeError(err, HeaderLen+flowModFixedLen)
	}
	m.Match = match
	off := flowModFixedLen + n
	if m.Instructions, err = DecodeInstructions(body[off:]); err != nil {
		return nil, shiftDecodeError(err, HeaderLen+off)
	}
	return m, nil
}

// shiftDecodeError adds off to a DecodeError's offset (decoders of nested
// structures report offsets relative to their own input).
func shiftDecodeError(err error, off int) error {
	if de, ok := err.(*DecodeError); ok {
		de.Offset += off
	}
	return err
}

func init() { registerDecoder(TypeFlowMod, decodeFlowMod) }

// matchText is the match as OVS's match_format prints it with the priority
// ("priority=N," first unless N is DefaultPriority).
func matchText(match Match, priority uint16) string {
	s := match.String()
	if priority != DefaultPriority {
		if s == "" {
			return fmt.Sprintf("priority=%d", priority)
		}
		return fmt.Sprintf("priority=%d,%s", priority, s)
	}
	return s
}

// FlowText is "<priority and match> actions=<instructions>" exactly as
// `ovs-ofctl dump-flows` prints it after its stats columns. It covers the
// last two columns only: dump-flows first prints " cookie=.., duration=..,
// table=.., n_packets=.., n_bytes=.., [idle_timeout=.., ][hard_timeout=..,
// ][flag words ][importance=.., ]idle_age=..[, hard_age=..], " which
// depend on switch state; StripDumpFlowsStats removes them from a line.
func (m *FlowMod) FlowText() string {
	mt := matchText(m.Match, m.Priority)
	if mt == "" {
		return "actions=" + InstructionsString(m.Instructions)
	}
	return mt + " actions=" + InstructionsString(m.Instructions)
}

// StripDumpFlowsStats reduces one `ovs-ofctl dump-flows` line to the part
// FlowText produces (match and actions), dropping the cookie, duration,
// table, counters, timeouts, flags, importance and age columns.
func StripDumpFlowsStats(line string) string {
	line = strings.TrimSpace(line)
	act := strings.Index(line, "actions=")
	if act < 0 {
		return line
	}
	head, tail := line[:act], line[act:]
	// Stats columns end with ", "; the match never contains a space.
	if i := strings.LastIndex(head, ", "); i >= 0 {
		head = head[i+2:]
	}
	fields := strings.Fields(head)
	var keep []string
	for _, f := range fields {
		isFlag := false
		for _, n := range flowFlagNames {
			if f == n {
				isFlag = true
			}
		}
		if !isFlag {
			keep = append(keep, f)
		}
	}
	if len(keep) == 0 {
		return tail
	}
	return strings.Join(keep, " ") + " " + tail
}

// OfpPrint is the text `ovs-ofctl ofp-print` prints for this message after
// "OFPT_FLOW_MOD (OF1.3) (xid=0x..): ".
func (m *FlowMod) OfpPrint() string {
	var sb strings.Builder
	sb.WriteString(m.Command.String())
	if m.Table != 0 {
		fmt.Fprintf(&sb, " table:%d", m.Table)
	}
	sb.WriteByte(' ')
	if mt := matchText(m.Match, m.Priority); mt != "" {
		sb.WriteString(mt)
		sb.WriteByte(' ')
	}
	if m.Command == FlowAdd {
		if m.Cookie != 0 && m.Cookie != ^uint64(0) {
			fmt.Fprintf(&sb, "cookie:0x%x ", m.Cookie)
		}
	} else if m.CookieMask != 0 {
		fmt.Fprintf(&sb, "cookie:0x%x/0x%x ", m.Cookie, m.CookieMask)
	}
	if m.IdleTimeout != 0 {
		fmt.Fprintf(&sb, "idle:%d ", m.IdleTimeout)
	}
	if m.HardTimeout != 0 {
		fmt.Fprintf(&sb, "hard:%d ", m.HardTimeout)
	}
	if m.BufferID != 0 || m.WireZero&ZeroBufferID != 0 {
		fmt.Fprintf(&sb, "buf:0x%x ", m.BufferID)
	}
	if m.OutPort != 0 || m.WireZero&ZeroOutPort != 0 {
		sb.WriteString("out_port:" + ovsPortString(m.OutPort) + " ")
	}
	for _, w := range m.Flags.words() {
		sb.WriteString(w + " ")
	}
	sb.WriteString("actions=" + InstructionsString(m.Instructions))
	return sb.String()
}

// String prints the flow in ovs-ofctl add-flow/mod-flows/del-flows syntax:
// "table=T,priority=P[,cookie=C[/M]][,idle_timeout=I][,hard_timeout=H]
// [,flags][,out_port=P][,out_group=G][,<match>] actions=<...>". Deletes
// carry no actions (del-flows rejects them), and non-strict deletes no
// priority. The command itself is not part of the syntax (it is the
// ovs-ofctl subcommand).
func (m *FlowMod) String() string {
	p := []string{fmt.Sprintf("table=%d", m.Table)}
	isDel := m.Command == FlowDelete || m.Command == FlowDeleteStrict
	if m.Command != FlowDelete {
		p = append(p, fmt.Sprintf("priority=%d", m.Priority))
	}
	switch {
	case m.CookieMask != 0 && m.Command != FlowAdd:
		p = append(p, fmt.Sprintf("cookie=0x%x/0x%x", m.Cookie, m.CookieMask))
	case m.Cookie != 0 && !isDel:
		p = append(p, fmt.Sprintf("cookie=0x%x", m.Cookie))
	}
	if m.IdleTimeout != 0 {
		p = append(p, fmt.Sprintf("idle_timeout=%d", m.IdleTimeout))
	}
	if m.HardTimeout != 0 {
		p = append(p, fmt.Sprintf("hard_timeout=%d", m.HardTimeout))
	}
	p = append(p, m.Flags.words()...)
	if m.OutPort != 0 || m.WireZero&ZeroOutPort != 0 {
		p = append(p, "out_port="+ovsPortString(m.OutPort))
	}
	if m.OutGroup != 0 || m.WireZero&ZeroOutGroup != 0 {
		p = append(p, fmt.Sprintf("out_group=%d", m.OutGroup))
	}
	if s := m.Match.String(); s != "" {
		p = append(p, s)
	}
	s := strings.Join(p, ",")
	if !isDel {
		s += " actions=" + InstructionsString(m.Instructions)
	}
	return s
}
