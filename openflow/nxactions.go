package openflow

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
)

// Nicira action subtypes (NXAST_*) keyroute encodes or decodes.
const (
	nxastResubmit       = 1
	nxastRegMove        = 6
	nxastRegLoad        = 7
	nxastNote           = 8
	nxastResubmitTable  = 14
	nxastLearn          = 16
	nxastController     = 20
	nxastController2    = 37
	nxastCheckPktLarger = 49
	nxActionHdrLen      = 10 // type, len, vendor, subtype
)

// beginNX appends a Nicira action header (type, length to be filled by
// finishTLV, vendor, subtype).
func beginNX(b []byte, subtype uint16) (int, []byte) {
	start, b := beginTLV(b, ActionTypeExperimenter)
	b = binary.BigEndian.AppendUint32(b, NiciraExperimenter)
	return start, binary.BigEndian.AppendUint16(b, subtype)
}

// Subfield names bits of a field, as move/load/learn use them. NBits 0
// means the whole field (Ofs must then be 0); decoding yields NBits 0 for a
// whole-field reference.
type Subfield struct {
	Field      *Field
	Ofs, NBits int
}

// Bits returns the subfield of f covering bits [ofs, ofs+n).
func Bits(f *Field, ofs, n int) Subfield { return Subfield{Field: f, Ofs: ofs, NBits: n} }

// Whole returns the subfield covering all of f.
func Whole(f *Field) Subfield { return Subfield{Field: f} }

// span returns the effective offset and width, checking them against the
// field.
func (s Subfield) span() (ofs, n int, err error) {
	if s.Field == nil {
		return 0, 0, fmt.Errorf("subfield without a field")
	}
	width := fieldBits(s.Field)
	ofs, n = s.Ofs, s.NBits
	if n == 0 {
		if ofs != 0 {
			return 0, 0, fmt.Errorf("%s: offset %d with a whole-field width", s.Field.Name, ofs)
		}
		n = width
	}
	if ofs < 0 || n < 0 || ofs+n > width || width == 0 {
		return 0, 0, fmt.Errorf("%s[%d..%d] exceeds the field's %d bits", s.Field.Name, ofs, ofs+n-1, width)
	}
	return ofs, n, nil
}

// String prints the subfield as OVS does: NXM_NX_REG0[], NXM_NX_REG0[3],
// NXM_NX_REG0[0..5].
func (s Subfield) String() string {
	if s.Field == nil {
		return "<unknown>"
	}
	name := nxmName(s.Field)
	ofs, n := s.Ofs, s.NBits
	switch {
	case n == 0 || ofs == 0 && n == fieldBits(s.Field):
		return name + "[]"
	case n == 1:
		return fmt.Sprintf("%s[%d]", name, ofs)
	}
	return fmt.Sprintf("%s[%d..%d]", name, ofs, ofs+n-1)
}

// nxmHeader is the 32-bit NXM/OXM header naming f (unmasked).
func nxmHeader(f *Field) (uint32, error) {
	if f.Class == OXMClassExperimenter || f.Len <= 0 || f.Len > 0xff {
		return 0, fmt.Errorf("field %s has no 32-bit NXM header", f.Name)
	}
	return uint32(f.Class)<<16 | uint32(f.ID)<<9 | uint32(f.Len), nil
}

// nxmAliases maps the older NXM headers OVS itself uses in move, load and
// learn (it encodes those with the first header a field ever had, e.g.
// NXM_OF_ETH_SRC rather than OXM_OF_ETH_SRC) to the registered field.
var nxmAliases = map[fieldKey]*Field{}

func init() {
	for _, a := range []struct {
		class uint16
		id    uint8
		f     *Field
	}{
		{0, 1, FieldEthDst}, {0, 2, FieldEthSrc}, {0, 3, FieldEthType}, {0, 6, FieldIPProto},
		{0, 7, FieldIPv4Src}, {0, 8, FieldIPv4Dst}, {0, 9, FieldTCPSrc}, {0, 10, FieldTCPDst},
		{0, 11, FieldUDPSrc}, {0, 12, FieldUDPDst}, {0, 13, FieldICMPv4Type}, {0, 14, FieldICMPv4Code},
		{0, 15, FieldARPOp}, {0, 16, FieldARPSPA}, {0, 17, FieldARPTPA},
		{1, 16, FieldTunnelID}, {1, 17, FieldARPSHA}, {1, 18, FieldARPTHA}, {1, 19, FieldIPv6Src},
		{1, 20, FieldIPv6Dst}, {1, 21, FieldICMPv6Type}, {1, 22, FieldICMPv6Code},
		{1, 27, FieldIPv6Label}, {1, 28, FieldIPECN},
	} {
		nxmAliases[fieldKey{a.class, a.id, 0}] = a.f
	}
}

// errUnknownField is wrapped by decode errors for an NXM/OXM header this
// package has no field for: the action is then kept raw (UnknownAction),
// since OVS knows many more fields (ct_mark, ...) than keyroute names.
var errUnknownField = errors.New("unknown field")

// fieldByHeader resolves a 32-bit NXM/OXM header (unmasked) at offset off.
func fieldByHeader(h uint32, what string, off int) (*Field, error) {
	k := fieldKey{uint16(h >> 16), uint8(h>>9) & 0x7f, 0}
	f, ok := fieldsByKey[k]
	if !ok {
		f, ok = nxmAliases[k]
	}
	switch {
	case !ok:
		return nil, &DecodeError{What: what, Offset: off, Err: fmt.Errorf("%w header 0x%08x", errUnknownField, h)}
	case h&0x100 != 0:
		return nil, &DecodeError{What: what, Offset: off, Err: fmt.Errorf("masked header 0x%08x for %s", h, f.Name)}
	case int(h&0xff) != f.Len:
		return nil, &DecodeError{What: what, Offset: off, Err: fmt.Errorf("header 0x%08x: length %d, want %d for %s", h, h&0xff, f.Len, f.Name)}
	}
	return f, nil
}

// decodedSubfield builds a Subfield from wire ofs/nbits, normalising a
// whole-field reference to NBits 0 and checking the range.
func decodedSubfield(f *Field, ofs, n int, what string, off int) (Subfield, error) {
	if n == 0 || ofs+n > fieldBits(f) {
		return Subfield{}, &DecodeError{What: what, Offset: off, Err: fmt.Errorf("%s[%d..%d] outside the field's %d bits", nxmName(f), ofs, ofs+n-1, fieldBits(f))}
	}
	if ofs == 0 && n == fieldBits(f) {
		return Subfield{Field: f}, nil
	}
	return Subfield{Field: f, Ofs: ofs, NBits: n}, nil
}

// Resubmit re-runs the packet through a table (NXAST_RESUBMIT_TABLE) as if
// it came in on Port. Port PortInPort keeps the real in_port; Table
// TableAll means the current table.
type Resubmit struct {
	Port  uint32
	Table uint8
}

// ResubmitTable returns resubmit(,t).
func ResubmitTable(t uint8) *Resubmit { return &Resubmit{Port: PortInPort, Table: t} }

// port16 converts an OpenFlow 1.3 port to the 16-bit form Nicira actions
// carry (reserved ports 0xfffffff8.. become 0xfff8..).
func port16(p uint32) (uint16, error) {
	if p < 0xff00 || p >= PortMax {
		return uint16(p), nil
	}
	return 0, fmt.Errorf("port %d does not fit a 16-bit Nicira port", p)
}

func port32(p uint16) uint32 {
	if p >= 0xff00 {
		return uint32(p) | 0xffff0000
	}
	return uint32(p)
}

func (a *Resubmit) AppendAction(b []byte) ([]byte, error) {
	p, err := port16(a.Port)
	if err != nil {
		return b, fmt.Errorf("resubmit: %w", err)
	}
	start, b := beginNX(b, nxastResubmitTable)
	b = binary.BigEndian.AppendUint16(b, p)
	b = append(b, a.Table, 0, 0, 0)
	return finishTLV(b, start, "resubmit")
}

func (a *Resubmit) String() string {
	if a.Port != PortInPort && a.Table == TableAll {
		return "resubmit:" + ovsPortString(a.Port)
	}
	s := "resubmit("
	if a.Port != PortInPort {
		s += ovsPortString(a.Port)
	}
	s += ","
	if a.Table != TableAll {
		s += fmt.Sprint(a.Table)
	}
	return s + ")"
}

func decodeResubmit(b []byte) (Action, error) {
	if err := wantLen("resubmit action", b, 16); err != nil {
		return nil, err
	}
	a := &Resubmit{Port: port32(binary.BigEndian.Uint16(b[10:])), Table: TableAll}
	if binary.BigEndian.Uint16(b[8:]) == nxastResubmitTable {
		a.Table = b[12]
	}
	return a, nil
}

// ControllerReason is the packet-in reason a Controller action reports.
// Its zero value is ControllerReasonAction, OVS's default; note that the
// numbering differs from the wire's (where no_match is 0) for that reason.
type ControllerReason uint8

const (
	ControllerReasonAction ControllerReason = iota
	ControllerReasonNoMatch
	ControllerReasonInvalidTTL
	ControllerReasonActionSet
	ControllerReasonGroup
	ControllerReasonPacketOut
)

// wire returns the ofp_packet_in_reason value.
func (r ControllerReason) wire() uint8 {
	switch r {
	case ControllerReasonAction:
		return PacketInReasonAction
	case ControllerReasonNoMatch:
		return PacketInReasonNoMatch
	}
	return uint8(r)
}

func controllerReasonFromWire(w uint8) ControllerReason {
	switch w {
	case PacketInReasonAction:
		return ControllerReasonAction
	case PacketInReasonNoMatch:
		return ControllerReasonNoMatch
	}
	return ControllerReason(w)
}

func (r ControllerReason) String() string {
	names := [...]string{"action", "no_match", "invalid_ttl", "action_set", "group", "packet_out"}
	if int(r) < len(names) {
		return names[r]
	}
	return fmt.Sprint(uint8(r))
}

// Controller sends the packet to the controller (NXAST_CONTROLLER2, which
// carries userdata and a meter). Zero values mean OVS's defaults: MaxLen 0
// sends the whole packet (65535), ID 0 is the default connection, MeterID 0
// is no meter. A real max_len of 0 (send no packet bytes, which OVS
// honours) is MaxLen 0 with ZeroMaxLen set; decoding sets it.
type Controller struct {
	MaxLen     uint16
	ZeroMaxLen bool
	ID         uint16
	Reason     ControllerReason
	Userdata   []byte
	Pause      bool
	MeterID    uint32
}

// maxLen is the max_len OVS applies.
func (a *Controller) maxLen() uint16 {
	if a.MaxLen == 0 && !a.ZeroMaxLen {
		return 0xffff
	}
	return a.MaxLen
}

// setMaxLen maps a wire max_len to MaxLen and ZeroMaxLen.
func (a *Controller) setMaxLen(v uint16) {
	a.MaxLen, a.ZeroMaxLen = v, v == 0
	if v == 0xffff {
		a.MaxLen = 0
	}
}

// NXAC2PT_* properties of NXAST_CONTROLLER2.
const (
	ctlPropMaxLen   = 0
	ctlPropID       = 1
	ctlPropReason   = 2
	ctlPropUserdata = 3
	ctlPropPause    = 4
	ctlPropMeterID  = 5
)

// ctlPropLen gives, per NXAST_CONTROLLER2 property, the value length and
// whether a longer value is accepted. OVS reads its 8- and 16-bit
// properties leniently (OpenFlow pads a property to 8 bytes, so senders
// emit 4-byte or longer values for them): it takes the leading bytes of any
// value at least that long. The 32-bit meter_id must be exact, and pause
// is a flag whose value OVS ignores.
var ctlPropLen = map[uint16]struct {
	n       int
	atLeast bool
}{
	ctlPropMaxLen: {2, true}, ctlPropID: {2, true}, ctlPropReason: {1, true},
	ctlPropPause: {0, true}, ctlPropMeterID: {4, false},
}

func appendCtlProp(b []byte, typ uint16, v []byte) []byte {
	n := 4 + len(v)
	b = binary.BigEndian.AppendUint16(b, typ)
	b = binary.BigEndian.AppendUint16(b, uint16(n))
	b = append(b, v...)
	for ; n%8 != 0; n++ {
		b = append(b, 0)
	}
	return b
}

func (a *Controller) AppendAction(b []byte) ([]byte, error) {
	start, b := beginNX(b, nxastController2)
	b = append(b, 0, 0, 0, 0, 0, 0)
	if ml := a.maxLen(); ml != 0xffff {
		b = appendCtlProp(b, ctlPropMaxLen, []byte{byte(ml >> 8), byte(ml)})
	}
	if a.ID != 0 {
		b = appendCtlProp(b, ctlPropID, []byte{byte(a.ID >> 8), byte(a.ID)})
	}
	if a.Reason != ControllerReasonAction {
		b = appendCtlProp(b, ctlPropReason, []byte{a.Reason.wire()})
	}
	if len(a.Userdata) > 0 {
		b = appendCtlProp(b, ctlPropUserdata, a.Userdata)
	}
	if a.Pause {
		b = appendCtlProp(b, ctlPropPause, nil)
	}
	if a.MeterID != 0 {
		b = appendCtlProp(b, ctlPropMeterID, binary.BigEndian.AppendUint32(nil, a.MeterID))
	}
	return finishTLV(b, start, "controller action")
}

func (a *Controller) String() string {
	maxLen := a.maxLen()
	if a.Reason == ControllerReasonAction && a.ID == 0 && len(a.Userdata) == 0 && !a.Pause && a.MeterID == 0 {
		return fmt.Sprintf("CONTROLLER:%d", maxLen)
	}
	var p []string
	if a.Reason != ControllerReasonAction {
		p = append(p, "reason="+a.Reason.String())
	}
	if maxLen != 0xffff {
		p = append(p, fmt.Sprintf("max_len=%d", maxLen))
	}
	if a.ID != 0 {
		p = append(p, fmt.Sprintf("id=%d", a.ID))
	}
	if len(a.Userdata) > 0 {
		p = append(p, "userdata="+dottedHex(a.Userdata))
	}
	if a.Pause {
		p = append(p, "pause")
	}
	if a.MeterID != 0 {
		p = append(p, fmt.Sprintf("meter_id=%d", a.MeterID))
	}
	return "controller(" + strings.Join(p, ",") + ")"
}

// dottedHex prints bytes as OVS's format_hex_arg: "01.02.ff".
func dottedHex(b []byte) string {
	var sb strings.Builder
	for i, c := range b {
		if i > 0 {
			sb.WriteByte('.')
		}
		fmt.Fprintf(&sb, "%02x", c)
	}
	return sb.String()
}

func decodeController(b []byte) (Action, error) {
	if err := wantLen("controller action", b, 16); err != nil {
		return nil, err
	}
	a := &Controller{ID: binary.BigEndian.Uint16(b[12:]), Reason: controllerReasonFromWire(b[14])}
	a.setMaxLen(binary.BigEndian.Uint16(b[10:]))
	return a, nil
}

func decodeController2(b []byte) (Action, error) {
	const what = "controller2 action"
	if len(b) < 16 {
		return nil, truncated(what, 0, 16, len(b))
	}
	a := &Controller{}
	for off := 16; off < len(b); {
		if len(b)-off < 4 {
			return nil, truncated(what+" property", off, 4, len(b)-off)
		}
		typ := binary.BigEndian.Uint16(b[off:])
		n := int(binary.BigEndian.Uint16(b[off+2:]))
		if n < 4 || pad8(n) > len(b)-off {
			return nil, &DecodeError{What: what + " property", Offset: off + 2, Err: fmt.Errorf("length %d with %d bytes left", n, len(b)-off)}
		}
		v := b[off+4 : off+n]
		if w, ok := ctlPropLen[typ]; ok && (len(v) < w.n || !w.atLeast && len(v) != w.n) {
			want := fmt.Sprint(w.n)
			if w.atLeast {
				want = "at least " + want
			}
			return nil, &DecodeError{What: what + " property", Offset: off + 2, Err: fmt.Errorf("property %d of %d bytes, want %s", typ, len(v), want)}
		}
		switch typ {
		case ctlPropMaxLen:
			a.setMaxLen(binary.BigEndian.Uint16(v))
		case ctlPropID:
			a.ID = binary.BigEndian.Uint16(v)
		case ctlPropReason:
			a.Reason = controllerReasonFromWire(v[0])
		case ctlPropUserdata:
			a.Userdata = append([]byte(nil), v...)
		case ctlPropPause:
			a.Pause = true
		case ctlPropMeterID:
			// 0 is no meter; OVS takes 0xffffffff as a meter id.
			a.MeterID = binary.BigEndian.Uint32(v)
		default:
			return nil, &DecodeError{What: what + " property", Offset: off, Err: fmt.Errorf("unknown property type %d", typ)}
		}
		off += pad8(n)
	}
	return a, nil
}

// Note carries opaque bytes that OVS ignores (NXAST_NOTE), useful to tag
// flows. On the wire the bytes are zero-padded; OVS prints (and decoding
// keeps) the padding, so String prints it too.
type Note struct{ Data []byte }

func (a *Note) AppendAction(b []byte) ([]byte, error) {
	start, b := beginNX(b, nxastNote)
	b = append(b, a.Data...)
	return finishTLV(b, start, "note action")
}

func (a *Note) String() string {
	n := pad8(nxActionHdrLen+len(a.Data)) - nxActionHdrLen
	d := append(append([]byte(nil), a.Data...), make([]byte, n-len(a.Data))...)
	return "note:" + dottedHex(d)
}

func decodeNote(b []byte) (Action, error) {
	return &Note{Data: append([]byte(nil), b[nxActionHdrLen:]...)}, nil
}

// Load writes an immediate value into a subfield (NXAST_REG_LOAD). The
// value must fit the subfield's width (at most 64 bits).
type Load struct {
	Dst   Subfield
	Value uint64
}

func (a *Load) AppendAction(b []byte) ([]byte, error) {
	ofs, n, err := a.Dst.span()
	if err != nil {
		return b, fmt.Errorf("load: %w", err)
	}
	if n > 64 {
		return b, fmt.Errorf("load: %s is %d bits wide, load carries at most 64", a.Dst, n)
	}
	if n < 64 && a.Value>>n != 0 {
		return b, fmt.Errorf("load: value %#x does not fit %s", a.Value, a.Dst)
	}
	h, err := nxmHeader(a.Dst.Field)
	if err != nil {
		return b, fmt.Errorf("load: %w", err)
	}
	start, b := beginNX(b, nxastRegLoad)
	b = binary.BigEndian.AppendUint16(b, uint16(ofs<<6|(n-1)))
	b = binary.BigEndian.AppendUint32(b, h)
	b = binary.BigEndian.AppendUint64(b, a.Value)
	return finishTLV(b, start, "load action")
}

func (a *Load) String() string { return "load:" + cHex(a.Value) + "->" + a.Dst.String() }

func decodeLoad(b []byte) (Action, error) {
	const what = "load action"
	if err := wantLen(what, b, 24); err != nil {
		return nil, err
	}
	on := binary.BigEndian.Uint16(b[10:])
	f, err := fieldByHeader(binary.BigEndian.Uint32(b[12:]), what, 12)
	if err != nil {
		return nil, err
	}
	ofs, n := int(on>>6), int(on&0x3f)+1
	dst, err := decodedSubfield(f, ofs, n, what, 10)
	if err != nil {
		return nil, err
	}
	v := binary.BigEndian.Uint64(b[16:])
	if n < 64 && v>>n != 0 {
		return nil, &DecodeError{What: what, Offset: 16, Err: fmt.Errorf("value %#x does not fit %d bits", v, n)}
	}
	return &Load{Dst: dst, Value: v}, nil
}

// Move copies bits from one subfield to another of the same width
// (NXAST_REG_MOVE).
type Move struct{ Src, Dst Subfield }

func (a *Move) AppendAction(b []byte) ([]byte, error) {
	sofs, sn, err := a.Src.span()
	if err != nil {
		return b, fmt.Errorf("move: %w", err)
	}
	dofs, dn, err := a.Dst.span()
	if err != nil {
		return b, fmt.Errorf("move: %w", err)
	}
	if sn != dn {
		return b, fmt.Errorf("move: %s is %d bits but %s is %d", a.Src, sn, a.Dst, dn)
	}
	sh, err := nxmHeader(a.Src.Field)
	if err != nil {
		return b, fmt.Errorf("move: %w", err)
	}
	dh, err := nxmHeader(a.Dst.Field)
	if err != nil {
		return b, fmt.Errorf("move: %w", err)
	}
	start, b := beginNX(b, nxastRegMove)
	b = binary.BigEndian.AppendUint16(b, uint16(sn))
	b = binary.BigEndian.AppendUint16(b, uint16(sofs))
	b = binary.BigEndian.AppendUint16(b, uint16(dofs))
	b = binary.BigEndian.AppendUint32(b, sh)
	b = binary.BigEndian.AppendUint32(b, dh)
	return finishTLV(b, start, "move action")
}

func (a *Move) String() string { return "move:" + a.Src.String() + "->" + a.Dst.String() }

func decodeMove(b []byte) (Action, error) {
	const what = "move action"
	if err := wantLen(what, b, 24); err != nil {
		return nil, err
	}
	n := int(binary.BigEndian.Uint16(b[10:]))
	sf, err := fieldByHeader(binary.BigEndian.Uint32(b[16:]), what, 16)
	if err != nil {
		return nil, err
	}
	df, err := fieldByHeader(binary.BigEndian.Uint32(b[20:]), what, 20)
	if err != nil {
		return nil, err
	}
	src, err := decodedSubfield(sf, int(binary.BigEndian.Uint16(b[12:])), n, what, 12)
	if err != nil {
		return nil, err
	}
	dst, err := decodedSubfield(df, int(binary.BigEndian.Uint16(b[14:])), n, what, 14)
	if err != nil {
		return nil, err
	}
	return &Move{Src: src, Dst: dst}, nil
}

func init() {
	registerNXAction(nxastResubmit, decodeResubmit)
	registerNXAction(nxastResubmitTable, decodeResubmit)
	registerNXAction(nxastController, decodeController)
	registerNXAction(nxastController2, decodeController2)
	registerNXAction(nxastNote, decodeNote)
	registerNXAction(nxastRegLoad, decodeLoad)
	registerNXAction(nxastRegMove, decodeMove)
	registerNXAction(nxastCheckPktLarger, decodeCheckPktLarger)
}

// CheckPktLarger writes 1 into the 1-bit Dst when the packet is longer than
// PktLen bytes, else 0 (NXAST_CHECK_PKT_LARGER, OVS 2.12+; ovs-actions(7)
// "check_pkt_larger"). The length counts the Ethernet header and payload
// but not a VLAN tag. The datapath runs the check per packet
// (check_pkt_len), so one megaflow covers every size.
type CheckPktLarger struct {
	PktLen uint16
	Dst    Subfield
}

func (a *CheckPktLarger) AppendAction(b []byte) ([]byte, error) {
	ofs, n, err := a.Dst.span()
	if err != nil {
		return b, fmt.Errorf("check_pkt_larger: %w", err)
	}
	if n != 1 {
		return b, fmt.Errorf("check_pkt_larger: %s is %d bits wide, want 1", a.Dst, n)
	}
	h, err := nxmHeader(a.Dst.Field)
	if err != nil {
		return b, fmt.Errorf("check_pkt_larger: %w", err)
	}
	// pkt_len, the destination bit's offset, its field's NXM header, 6
	// bytes of padding: 24 bytes in all.
	start, b := beginNX(b, nxastCheckPktLarger)
	b = binary.BigEndian.AppendUint16(b, a.PktLen)
	b = binary.BigEndian.AppendUint16(b, uint16(ofs))
	b = binary.BigEndian.AppendUint32(b, h)
	return finishTLV(b, start, "check_pkt_larger action")
}

func (a *CheckPktLarger) String() string {
	return fmt.Sprintf("check_pkt_larger(%d)->%s", a.PktLen, a.Dst)
}

func decodeCheckPktLarger(b []byte) (Action, error) {
	const what = "check_pkt_larger action"
	if err := wantLen(what, b, 24); err != nil {
		return nil, err
	}
	f, err := fieldByHeader(binary.BigEndian.Uint32(b[14:]), what, 14)
	if err != nil {
		return nil, err
	}
	dst, err := decodedSubfield(f, int(binary.BigEndian.Uint16(b[12:])), 1, what, 12)
	if err != nil {
		return nil, err
	}
	return &CheckPktLarger{PktLen: binary.BigEndian.Uint16(b[10:]), Dst: dst}, nil
}

// LearnFlags are NX_LEARN_F_* flags of a learn action.
type LearnFlags uint16

const (
	// LearnSendFlowRem sets send_flow_rem on the learned flow.
	LearnSendFlowRem LearnFlags = 1 << 0
	// LearnDeleteLearned deletes the learned flows when the learning flow
	// is removed.
	LearnDeleteLearned LearnFlags = 1 << 1
)

// LearnSpecKind says what a learn spec does in the learned flow.
type LearnSpecKind uint8

const (
	// LearnMatch adds a match on Dst to the learned flow.
	LearnMatch LearnSpecKind = iota
	// LearnLoad adds a load into Dst to the learned flow's actions.
	LearnLoad
	// LearnOutput adds output to the port in Src to the learned flow.
	LearnOutput
)

// LearnSpec is one flow_mod_spec of a learn action. The source is Src, or
// Imm when Imm is non-nil: an immediate, big-endian value that must fit the
// spec's width (Dst's width; Src's for LearnOutput). Decoding yields Imm of
// exactly ceil(width/8) bytes.
type LearnSpec struct {
	Kind LearnSpecKind
	Src  Subfield
	Imm  []byte
	Dst  Subfield
}

// LearnMatchField makes the learned flow match dst against the value src
// has in the packet being learned from (OVS: "dst=src", or "dst" alone when
// both are the same bits).
func LearnMatchField(dst, src Subfield) LearnSpec {
	return LearnSpec{Kind: LearnMatch, Src: src, Dst: dst}
}

// LearnMatchImm makes the learned flow match dst against the constant imm.
func LearnMatchImm(dst Subfield, imm []byte) LearnSpec {
	return LearnSpec{Kind: LearnMatch, Imm: imm, Dst: dst}
}

// LearnLoadField gives the learned flow an action loading src's current
// value into dst.
func LearnLoadField(src, dst Subfield) LearnSpec {
	return LearnSpec{Kind: LearnLoad, Src: src, Dst: dst}
}

// LearnLoadImm gives the learned flow an action loading imm into dst.
func LearnLoadImm(imm []byte, dst Subfield) LearnSpec {
	return LearnSpec{Kind: LearnLoad, Imm: imm, Dst: dst}
}

// LearnOutputField gives the learned flow an output to the port src holds.
func LearnOutputField(src Subfield) LearnSpec { return LearnSpec{Kind: LearnOutput, Src: src} }

const (
	learnSrcImm    = 1 << 13
	learnDstShift  = 11
	learnNBitsMask = 0x7ff
	learnFixedLen  = 32
)

// Learn adds or refreshes a flow from the packet (NXAST_LEARN), e.g. the
// reverse-direction cache entry of a connection. Priority and the timeouts
// are those of the learned flow; 0 timeouts mean permanent.
type Learn struct {
	IdleTimeout, HardTimeout       uint16
	Priority                       uint16
	Cookie                         uint64
	Table                          uint8
	Flags                          LearnFlags
	FinIdleTimeout, FinHardTimeout uint16
	Specs                          []LearnSpec
}

// width is the spec's n_bits.
func (s *LearnSpec) width() (int, error) {
	if s.Kind == LearnOutput {
		if s.Imm != nil {
			return 0, fmt.Errorf("learn output takes a field, not an immediate")
		}
		_, n, err := s.Src.span()
		return n, err
	}
	if s.Kind > LearnOutput {
		return 0, fmt.Errorf("learn spec kind %d", s.Kind)
	}
	_, n, err := s.Dst.span()
	if err != nil {
		return 0, err
	}
	if s.Imm == nil {
		if _, sn, err := s.Src.span(); err != nil {
			return 0, err
		} else if sn != n {
			return 0, fmt.Errorf("learn source %s is %d bits but destination %s is %d", s.Src, sn, s.Dst, n)
		}
	}
	return n, nil
}

func appendSubfieldRef(b []byte, s Subfield) ([]byte, error) {
	ofs, _, err := s.span()
	if err != nil {
		return b, err
	}
	h, err := nxmHeader(s.Field)
	if err != nil {
		return b, err
	}
	b = binary.BigEndian.AppendUint32(b, h)
	return binary.BigEndian.AppendUint16(b, uint16(ofs)), nil
}

func (a *Learn) AppendAction(b []byte) ([]byte, error) {
	start, b := beginNX(b, nxastLearn)
	b = binary.BigEndian.AppendUint16(b, a.IdleTimeout)
	b = binary.BigEndian.AppendUint16(b, a.HardTimeout)
	b = binary.BigEndian.AppendUint16(b, a.Priority)
	b = binary.BigEndian.AppendUint64(b, a.Cookie)
	b = binary.BigEndian.AppendUint16(b, uint16(a.Flags))
	b = append(b, a.Table, 0)
	b = binary.BigEndian.AppendUint16(b, a.FinIdleTimeout)
	b = binary.BigEndian.AppendUint16(b, a.FinHardTimeout)
	for i := range a.Specs {
		s := &a.Specs[i]
		n, err := s.width()
		if err != nil {
			return b[:start], fmt.Errorf("learn spec %d: %w", i, err)
		}
		if n > learnNBitsMask {
			return b[:start], fmt.Errorf("learn spec %d: %d bits is too wide", i, n)
		}
		hdr := uint16(s.Kind)<<learnDstShift | uint16(n)
		if s.Imm != nil {
			hdr |= learnSrcImm
		}
		b = binary.BigEndian.AppendUint16(b, hdr)
		if s.Imm != nil {
			size := 2 * ((n + 15) / 16)
			imm := s.Imm
			for len(imm) > 0 && len(imm) > (n+7)/8 && imm[0] == 0 {
				imm = imm[1:]
			}
			if len(imm) > (n+7)/8 || len(imm) == (n+7)/8 && n%8 != 0 && imm[0]>>(n%8) != 0 {
				return b[:start], fmt.Errorf("learn spec %d: immediate %x does not fit %d bits", i, s.Imm, n)
			}
			b = append(b, make([]byte, size-len(imm))...)
			b = append(b, imm...)
		} else if b, err = appendSubfieldRef(b, s.Src); err != nil {
			return b[:start], fmt.Errorf("learn spec %d: %w", i, err)
		}
		if s.Kind != LearnOutput {
			if b, err = appendSubfieldRef(b, s.Dst); err != nil {
				return b[:start], fmt.Errorf("learn spec %d: %w", i, err)
			}
		}
	}
	return finishTLV(b, start, "learn action")
}

func (a *Learn) String() string {
	var sb strings.Builder
	fmt.Fprintf(&sb, "learn(table=%d", a.Table)
	if a.IdleTimeout != 0 {
		fmt.Fprintf(&sb, ",idle_timeout=%d", a.IdleTimeout)
	}
	if a.HardTimeout != 0 {
		fmt.Fprintf(&sb, ",hard_timeout=%d", a.HardTimeout)
	}
	if a.FinIdleTimeout != 0 {
		fmt.Fprintf(&sb, ",fin_idle_timeout=%d", a.FinIdleTimeout)
	}
	if a.FinHardTimeout != 0 {
		fmt.Fprintf(&sb, ",fin_hard_timeout=%d", a.FinHardTimeout)
	}
	if a.Priority != DefaultPriority {
		fmt.Fprintf(&sb, ",priority=%d", a.Priority)
	}
	if a.Flags&LearnSendFlowRem != 0 {
		sb.WriteString(",send_flow_rem")
	}
	if a.Flags&LearnDeleteLearned != 0 {
		sb.WriteString(",delete_learned")
	}
	if a.Cookie != 0 {
		sb.WriteString(",cookie=" + cHex(a.Cookie))
	}
	for i := range a.Specs {
		sb.WriteByte(',')
		sb.WriteString(a.Specs[i].String())
	}
	sb.WriteByte(')')
	return sb.String()
}

// String prints the spec as OVS's learn_format does.
func (s *LearnSpec) String() string {
	switch {
	case s.Kind == LearnMatch && s.Imm != nil:
		if s.Dst.Field != nil && (s.Dst.NBits == 0 || s.Dst.Ofs == 0 && s.Dst.NBits == fieldBits(s.Dst.Field)) {
			v := make([]byte, s.Dst.Field.Len)
			if len(s.Imm) <= len(v) {
				copy(v[len(v)-len(s.Imm):], s.Imm)
			}
			return s.Dst.Field.Name + "=" + formatValue(s.Dst.Field, v)
		}
		return s.Dst.String() + "=" + hexTrim(s.Imm)
	case s.Kind == LearnMatch:
		if s.Src.Field != s.Dst.Field || s.Src.Ofs != s.Dst.Ofs {
			return s.Dst.String() + "=" + s.Src.String()
		}
		return s.Dst.String()
	case s.Kind == LearnLoad && s.Imm != nil:
		return "load:" + hexTrim(s.Imm) + "->" + s.Dst.String()
	case s.Kind == LearnLoad:
		return "load:" + s.Src.String() + "->" + s.Dst.String()
	}
	return "output:" + s.Src.String()
}

func decodeSubfieldRef(b []byte, n int, what string, off int) (Subfield, error) {
	f, err := fieldByHeader(binary.BigEndian.Uint32(b), what, off)
	if err != nil {
		return Subfield{}, err
	}
	return decodedSubfield(f, int(binary.BigEndian.Uint16(b[4:])), n, what, off+4)
}

func decodeLearn(b []byte) (Action, error) {
	const what = "learn action"
	if len(b) < learnFixedLen {
		return nil, truncated(what, 0, learnFixedLen, len(b))
	}
	a := &Learn{
		IdleTimeout:    binary.BigEndian.Uint16(b[10:]),
		HardTimeout:    binary.BigEndian.Uint16(b[12:]),
		Priority:       binary.BigEndian.Uint16(b[14:]),
		Cookie:         binary.BigEndian.Uint64(b[16:]),
		Flags:          LearnFlags(binary.BigEndian.Uint16(b[24:])),
		Table:          b[26],
		FinIdleTimeout: binary.BigEndian.Uint16(b[28:]),
		FinHardTimeout: binary.BigEndian.Uint16(b[30:]),
	}
	off := learnFixedLen
	for off+2 <= len(b) {
		hdr := binary.BigEndian.Uint16(b[off:])
		if hdr == 0 {
			break
		}
		n := int(hdr & learnNBitsMask)
		kind := LearnSpecKind(hdr >> learnDstShift & 3)
		imm := hdr&learnSrcImm != 0
		if hdr>>14 != 0 || kind > LearnOutput || n == 0 || imm && kind == LearnOutput {
			return nil, &DecodeError{What: what, Offset: off, Err: fmt.Errorf("bad flow_mod_spec header 0x%04x", hdr)}
		}
		off += 2
		s := LearnSpec{Kind: kind}
		if imm {
			size := 2 * ((n + 15) / 16)
			if len(b)-off < size {
				return nil, truncated(what+" immediate", off, size, len(b)-off)
			}
			v := b[off : off+size]
			keep := (n + 7) / 8
			wide := n%8 != 0 && v[size-keep]>>(n%8) != 0
			for _, c := range v[:size-keep] {
				wide = wide || c != 0
			}
			if wide {
				return nil, &DecodeError{What: what, Offset: off, Err: fmt.Errorf("immediate %x wider than %d bits", v, n)}
			}
			s.Imm = append([]byte(nil), v[size-keep:]...)
			off += size
		} else {
			if len(b)-off < 6 {
				return nil, truncated(what+" source", off, 6, len(b)-off)
			}
			var err error
			if s.Src, err = decodeSubfieldRef(b[off:], n, what, off); err != nil {
				return nil, err
			}
			off += 6
		}
		if kind != LearnOutput {
			if len(b)-off < 6 {
				return nil, truncated(what+" destination", off, 6, len(b)-off)
			}
			var err error
			if s.Dst, err = decodeSubfieldRef(b[off:], n, what, off); err != nil {
				return nil, err
			}
			off += 6
		}
		a.Specs = append(a.Specs, s)
	}
	for i := off; i < len(b); i++ {
		if b[i] != 0 {
			return nil, &DecodeError{What: what, Offset: i, Err: fmt.Errorf("nonzero byte after the last flow_mod_spec")}
		}
	}
	return a, nil
}

func init() { registerNXAction(nxastLearn, decodeLearn) }
