package openflow

import (
	"encoding/binary"
	"fmt"
	"strings"
)

// ONF experimenter subtypes for OpenFlow 1.3 bundles (ONFT_*), as OVS
// accepts them; the bodies are OpenFlow 1.4's bundle messages.
const (
	onftBundleControl    = 2300
	onftBundleAddMessage = 2301
)

// Bundle control types (ofp_bundle_ctrl_type).
const (
	BundleOpenRequest    uint16 = 0
	BundleOpenReply      uint16 = 1
	BundleCloseRequest   uint16 = 2
	BundleCloseReply     uint16 = 3
	BundleCommitRequest  uint16 = 4
	BundleCommitReply    uint16 = 5
	BundleDiscardRequest uint16 = 6
	BundleDiscardReply   uint16 = 7
)

// Bundle flags (ofp_bundle_flags).
const (
	BundleAtomic  uint16 = 1
	BundleOrdered uint16 = 2
)

func appendONFHeader(b []byte, subtype uint32) []byte {
	b = binary.BigEndian.AppendUint32(b, ONFExperimenter)
	return binary.BigEndian.AppendUint32(b, subtype)
}

const bundleCtrlLen = 8

// BundleControl opens, closes, commits or discards a bundle, or is the
// switch's reply to that. The control type is CtrlType (Bundle*Request,
// Bundle*Reply): a field named Type would clash with Message.Type().
type BundleControl struct {
	BundleID uint32
	CtrlType uint16
	Flags    uint16
	// Properties are the bundle properties after the fixed part, raw
	// (OVS sends none).
	Properties []byte
}

func (*BundleControl) Type() MsgType                  { return TypeExperimenter }
func (*BundleControl) Experimenter() (uint32, uint32) { return ONFExperimenter, onftBundleControl }

func (m *BundleControl) AppendBody(b []byte) ([]byte, error) {
	b = appendONFHeader(b, onftBundleControl)
	b = binary.BigEndian.AppendUint32(b, m.BundleID)
	b = binary.BigEndian.AppendUint16(b, m.CtrlType)
	b = binary.BigEndian.AppendUint16(b, m.Flags)
	return append(b, m.Properties...), nil
}

func decodeBundleControl(body []byte) (Message, error) {
	if len(body) < bundleCtrlLen {
		return nil, truncated("BUNDLE_CONTROL", nxBodyOff, bundleCtrlLen, len(body))
	}
	return &BundleControl{
		BundleID:   binary.BigEndian.Uint32(body),
		CtrlType:   binary.BigEndian.Uint16(body[4:]),
		Flags:      binary.BigEndian.Uint16(body[6:]),
		Properties: msgCopy(body[bundleCtrlLen:]),
	}, nil
}

func bundleFlagsString(f uint16) string {
	var s []string
	if f&BundleAtomic != 0 {
		s = append(s, "atomic")
	}
	if f&BundleOrdered != 0 {
		s = append(s, "ordered")
	}
	if r := f &^ (BundleAtomic | BundleOrdered); r != 0 {
		s = append(s, fmt.Sprintf("0x%x", r))
	}
	if len(s) == 0 {
		return "0"
	}
	return strings.Join(s, " ")
}

func (m *BundleControl) String() string {
	types := [...]string{"OPEN_REQUEST", "OPEN_REPLY", "CLOSE_REQUEST", "CLOSE_REPLY",
		"COMMIT_REQUEST", "COMMIT_REPLY", "DISCARD_REQUEST", "DISCARD_REPLY"}
	t := fmt.Sprintf("0x%x", m.CtrlType)
	if int(m.CtrlType) < len(types) {
		t = types[m.CtrlType]
	}
	return fmt.Sprintf("BUNDLE_CONTROL bundle_id=0x%x type=%s flags=%s", m.BundleID, t, bundleFlagsString(m.Flags))
}

// BundleAdd adds Message to an open bundle. The inner message is encoded
// with Xid, and OVS rejects it (OFPBFC_MSG_BAD_XID) unless Xid equals the
// xid of the BundleAdd message itself: marshal a BundleAdd with the same xid
// as its Xid field.
type BundleAdd struct {
	BundleID uint32
	Flags    uint16
	Xid      uint32
	Message  Message
	// Properties is what follows the inner message (padding and bundle
	// properties), raw; keyroute sends none.
	Properties []byte
}

func (*BundleAdd) Type() MsgType                  { return TypeExperimenter }
func (*BundleAdd) Experimenter() (uint32, uint32) { return ONFExperimenter, onftBundleAddMessage }

func (m *BundleAdd) AppendBody(b []byte) ([]byte, error) {
	if m.Message == nil {
		return b, fmt.Errorf("bundle add: no message")
	}
	start := len(b)
	b = appendONFHeader(b, onftBundleAddMessage)
	b = binary.BigEndian.AppendUint32(b, m.BundleID)
	b = append(b, 0, 0)
	b = binary.BigEndian.AppendUint16(b, m.Flags)
	b, err := AppendMessage(b, m.Message, m.Xid)
	if err != nil {
		return b[:start], fmt.Errorf("bundle add: %w", err)
	}
	return append(b, m.Properties...), nil
}

func decodeBundleAdd(body []byte) (Message, error) {
	if len(body) < bundleCtrlLen+HeaderLen {
		return nil, truncated("BUNDLE_ADD_MESSAGE", nxBodyOff, bundleCtrlLen+HeaderLen, len(body))
	}
	inner := body[bundleCtrlLen:]
	h, err := ParseHeader(inner)
	if err != nil {
		msgShiftOffset(err, nxBodyOff+bundleCtrlLen)
		return nil, fmt.Errorf("BUNDLE_ADD_MESSAGE: %w", err)
	}
	if int(h.Length) > len(inner) {
		return nil, truncated("BUNDLE_ADD_MESSAGE inner message", nxBodyOff+bundleCtrlLen, int(h.Length), len(inner))
	}
	_, msg, err := Decode(inner[:h.Length])
	if err != nil {
		msgShiftOffset(err, nxBodyOff+bundleCtrlLen)
		return nil, fmt.Errorf("BUNDLE_ADD_MESSAGE inner %s: %w", h.Type, err)
	}
	return &BundleAdd{
		BundleID:   binary.BigEndian.Uint32(body),
		Flags:      binary.BigEndian.Uint16(body[6:]),
		Xid:        h.Xid,
		Message:    msg,
		Properties: msgCopy(inner[h.Length:]),
	}, nil
}

func (m *BundleAdd) String() string {
	inner := "<nil>"
	if m.Message != nil {
		inner = m.Message.Type().String()
		if st, ok := m.Message.(fmt.Stringer); ok {
			inner = st.String()
		}
	}
	return fmt.Sprintf("BUNDLE_ADD_MESSAGE bundle_id=0x%x flags=%s xid=0x%x: %s", m.BundleID, bundleFlagsString(m.Flags), m.Xid, inner)
}

func init() {
	registerExperimenterDecoder(ONFExperimenter, onftBundleControl, decodeBundleControl)
	registerExperimenterDecoder(ONFExperimenter, onftBundleAddMessage, decodeBundleAdd)
}
