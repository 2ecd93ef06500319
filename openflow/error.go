package openflow

import (
	"encoding/binary"
	"fmt"
	"strings"
)

// OpenFlow 1.3 error types (ofp_error_type), plus OFPET_BUNDLE_FAILED from
// 1.4 (OVS reports OpenFlow 1.3 bundle errors as ONF experimenter errors).
const (
	ErrTypeHelloFailed         uint16 = 0
	ErrTypeBadRequest          uint16 = 1
	ErrTypeBadAction           uint16 = 2
	ErrTypeBadInstruction      uint16 = 3
	ErrTypeBadMatch            uint16 = 4
	ErrTypeFlowModFailed       uint16 = 5
	ErrTypeGroupModFailed      uint16 = 6
	ErrTypePortModFailed       uint16 = 7
	ErrTypeTableModFailed      uint16 = 8
	ErrTypeQueueOpFailed       uint16 = 9
	ErrTypeSwitchConfigFailed  uint16 = 10
	ErrTypeRoleRequestFailed   uint16 = 11
	ErrTypeMeterModFailed      uint16 = 12
	ErrTypeTableFeaturesFailed uint16 = 13
	ErrTypeBundleFailed        uint16 = 17
	ErrTypeExperimenter        uint16 = 0xffff
)

// Bundle error codes (OFPBFC_*). On OpenFlow 1.3 OVS sends them as
// experimenter errors: ErrType 0xffff, Experimenter ONFExperimenter,
// Code BundleErrBase+code.
const (
	BundleErrBase         uint16 = 2300
	BundleErrUnknown      uint16 = 0
	BundleErrEPerm        uint16 = 1
	BundleErrBadID        uint16 = 2
	BundleErrBundleExist  uint16 = 3
	BundleErrBundleClosed uint16 = 4
	BundleErrOutOfBundles uint16 = 5
	BundleErrBadType      uint16 = 6
	BundleErrBadFlags     uint16 = 7
	BundleErrMsgBadLen    uint16 = 8
	BundleErrMsgBadXid    uint16 = 9
	BundleErrMsgUnsup     uint16 = 10
	BundleErrMsgConflict  uint16 = 11
	BundleErrMsgTooMany   uint16 = 12
	BundleErrMsgFailed    uint16 = 13
	BundleErrTimeout      uint16 = 14
	BundleErrInProgress   uint16 = 15
)

type errTypeInfo struct {
	name, prefix string
	codes        []string
}

// errTypes names every OpenFlow 1.3 error type and code (index = code).
var errTypes = map[uint16]errTypeInfo{
	0: {"OFPET_HELLO_FAILED", "OFPHFC_", []string{"INCOMPATIBLE", "EPERM"}},
	1: {"OFPET_BAD_REQUEST", "OFPBRC_", []string{"BAD_VERSION", "BAD_TYPE", "BAD_MULTIPART", "BAD_EXPERIMENTER",
		"BAD_EXP_TYPE", "EPERM", "BAD_LEN", "BUFFER_EMPTY", "BUFFER_UNKNOWN", "BAD_TABLE_ID", "IS_SLAVE",
		"BAD_PORT", "BAD_PACKET", "MULTIPART_BUFFER_OVERFLOW"}},
	2: {"OFPET_BAD_ACTION", "OFPBAC_", []string{"BAD_TYPE", "BAD_LEN", "BAD_EXPERIMENTER", "BAD_EXP_TYPE",
		"BAD_OUT_PORT", "BAD_ARGUMENT", "EPERM", "TOO_MANY", "BAD_QUEUE", "BAD_OUT_GROUP", "MATCH_INCONSISTENT",
		"UNSUPPORTED_ORDER", "BAD_TAG", "BAD_SET_TYPE", "BAD_SET_LEN", "BAD_SET_ARGUMENT"}},
	3: {"OFPET_BAD_INSTRUCTION", "OFPBIC_", []string{"UNKNOWN_INST", "UNSUP_INST", "BAD_TABLE_ID",
		"UNSUP_METADATA", "UNSUP_METADATA_MASK", "BAD_EXPERIMENTER", "BAD_EXP_TYPE", "BAD_LEN", "EPERM"}},
	4: {"OFPET_BAD_MATCH", "OFPBMC_", []string{"BAD_TYPE", "BAD_LEN", "BAD_TAG", "BAD_DL_ADDR_MASK",
		"BAD_NW_ADDR_MASK", "BAD_WILDCARDS", "BAD_FIELD", "BAD_VALUE", "BAD_MASK", "BAD_PREREQ", "DUP_FIELD", "EPERM"}},
	5: {"OFPET_FLOW_MOD_FAILED", "OFPFMFC_", []string{"UNKNOWN", "TABLE_FULL", "BAD_TABLE_ID", "OVERLAP",
		"EPERM", "BAD_TIMEOUT", "BAD_COMMAND", "BAD_FLAGS"}},
	6: {"OFPET_GROUP_MOD_FAILED", "OFPGMFC_", []string{"GROUP_EXISTS", "INVALID_GROUP", "WEIGHT_UNSUPPORTED",
		"OUT_OF_GROUPS", "OUT_OF_BUCKETS", "CHAINING_UNSUPPORTED", "WATCH_UNSUPPORTED", "LOOP", "UNKNOWN_GROUP",
		"CHAINED_GROUP", "BAD_TYPE", "BAD_COMMAND", "BAD_BUCKET", "BAD_WATCH", "EPERM"}},
	7:  {"OFPET_PORT_MOD_FAILED", "OFPPMFC_", []string{"BAD_PORT", "BAD_HW_ADDR", "BAD_CONFIG", "BAD_ADVERTISE", "EPERM"}},
	8:  {"OFPET_TABLE_MOD_FAILED", "OFPTMFC_", []string{"BAD_TABLE", "BAD_CONFIG", "EPERM"}},
	9:  {"OFPET_QUEUE_OP_FAILED", "OFPQOFC_", []string{"BAD_PORT", "BAD_QUEUE", "EPERM"}},
	10: {"OFPET_SWITCH_CONFIG_FAILED", "OFPSCFC_", []string{"BAD_FLAGS", "BAD_LEN", "EPERM"}},
	11: {"OFPET_ROLE_REQUEST_FAILED", "OFPRRFC_", []string{"STALE", "UNSUP", "BAD_ROLE"}},
	12: {"OFPET_METER_MOD_FAILED", "OFPMMFC_", []string{"UNKNOWN", "METER_EXISTS", "INVALID_METER",
		"UNKNOWN_METER", "BAD_COMMAND", "BAD_FLAGS", "BAD_RATE", "BAD_BURST", "BAD_BAND", "BAD_BAND_VALUE",
		"OUT_OF_METERS", "OUT_OF_BANDS"}},
	13: {"OFPET_TABLE_FEATURES_FAILED", "OFPTFFC_", []string{"BAD_TABLE", "BAD_METADATA", "BAD_TYPE",
		"BAD_LEN", "BAD_ARGUMENT", "EPERM"}},
	17: {"OFPET_BUNDLE_FAILED", "OFPBFC_", bundleErrNames},
}

var bundleErrNames = []string{"UNKNOWN", "EPERM", "BAD_ID", "BUNDLE_EXIST", "BUNDLE_CLOSED",
	"OUT_OF_BUNDLES", "BAD_TYPE", "BAD_FLAGS", "MSG_BAD_LEN", "MSG_BAD_XID", "MSG_UNSUP", "MSG_CONFLICT",
	"MSG_TOO_MANY", "MSG_FAILED", "TIMEOUT", "BUNDLE_IN_PROGRESS"}

// niciraErrNames are the Nicira experimenter error codes OVS sends on
// OpenFlow 1.2+ (its "NX1.2+" errors), keyed by exp_code.
var niciraErrNames = map[uint16]string{
	2: "NXBRC_NXM_INVALID", 3: "NXBRC_NXM_BAD_TYPE", 4: "NXBRC_MUST_BE_ZERO", 5: "NXBRC_BAD_REASON",
	6: "OFPMOFC_MONITOR_EXISTS", 7: "OFPMOFC_BAD_FLAGS", 8: "OFPMOFC_UNKNOWN_MONITOR",
	9: "NXBRC_FM_BAD_EVENT", 10: "NXBRC_UNENCODABLE_ERROR", 11: "NXBAC_MUST_BE_ZERO",
	12: "NXFMFC_HARDWARE", 13: "NXFMFC_BAD_TABLE_ID", 15: "NXBAC_BAD_CONJUNCTION",
	16: "NXTTMFC_BAD_COMMAND", 17: "NXTTMFC_BAD_OPT_LEN", 18: "NXTTMFC_BAD_FIELD_IDX",
	19: "NXTTMFC_TABLE_FULL", 20: "NXTTMFC_ALREADY_MAPPED", 21: "NXTTMFC_DUP_ENTRY",
	34: "NXR_NOT_SUPPORTED", 35: "NXR_STALE", 36: "NXST_NOT_CONFIGURED",
}

// onfErrNames are the ONF experimenter error codes OVS sends on OpenFlow 1.3.
var onfErrNames = map[uint16]string{
	2600: "OFPBIC_DUP_INST", 4250: "OFPBAC_BAD_SET_MASK",
	4443: "OFPBPC_TOO_MANY", 4444: "OFPBPC_DUP_TYPE", 4445: "OFPBPC_BAD_EXPERIMENTER",
	4446: "OFPBPC_BAD_EXP_TYPE", 4447: "OFPBPC_BAD_EXP_VALUE", 4448: "OFPBPC_EPERM",
}

// ErrorMsg is OFPT_ERROR. For experimenter errors (ErrType 0xffff) Code is
// the exp_code and Experimenter the vendor id. Data usually holds the start
// of the request that failed.
type ErrorMsg struct {
	ErrType      uint16
	Code         uint16
	Experimenter uint32
	Data         []byte
}

func (*ErrorMsg) Type() MsgType { return TypeError }

func (e *ErrorMsg) AppendBody(b []byte) ([]byte, error) {
	b = binary.BigEndian.AppendUint16(b, e.ErrType)
	b = binary.BigEndian.AppendUint16(b, e.Code)
	if e.ErrType == ErrTypeExperimenter {
		b = binary.BigEndian.AppendUint32(b, e.Experimenter)
	}
	return append(b, e.Data...), nil
}

func decodeError(body []byte) (Message, error) {
	if len(body) < 4 {
		return nil, truncated("ERROR", HeaderLen, 4, len(body))
	}
	e := &ErrorMsg{ErrType: binary.BigEndian.Uint16(body), Code: binary.BigEndian.Uint16(body[2:])}
	rest := body[4:]
	if e.ErrType == ErrTypeExperimenter {
		if len(rest) < 4 {
			return nil, truncated("experimenter ERROR", HeaderLen+4, 4, len(rest))
		}
		e.Experimenter = binary.BigEndian.Uint32(rest)
		rest = rest[4:]
	}
	e.Data = msgCopy(rest)
	return e, nil
}

// TypeName is the error type's name, e.g. "OFPET_BAD_MATCH".
func (e *ErrorMsg) TypeName() string {
	if e.ErrType == ErrTypeExperimenter {
		switch e.Experimenter {
		case NiciraExperimenter:
			return "NXET_VENDOR"
		case ONFExperimenter:
			return "ONFET_VENDOR"
		}
		return fmt.Sprintf("OFPET_EXPERIMENTER(0x%08x)", e.Experimenter)
	}
	if t, ok := errTypes[e.ErrType]; ok {
		return t.name
	}
	return fmt.Sprintf("OFPET_%d", e.ErrType)
}

// CodeName is the error code's name as OVS spells it, e.g.
// "OFPBMC_BAD_FIELD", "OFPBFC_MSG_FAILED", "NXBRC_NXM_INVALID".
func (e *ErrorMsg) CodeName() string {
	if e.ErrType == ErrTypeExperimenter {
		switch e.Experimenter {
		case NiciraExperimenter:
			if n, ok := niciraErrNames[e.Code]; ok {
				return n
			}
		case ONFExperimenter:
			if c := int(e.Code) - int(BundleErrBase); c >= 0 && c < len(bundleErrNames) {
				return "OFPBFC_" + bundleErrNames[c]
			}
			if n, ok := onfErrNames[e.Code]; ok {
				return n
			}
		}
		return fmt.Sprintf("exp_code_%d", e.Code)
	}
	if t, ok := errTypes[e.ErrType]; ok {
		if int(e.Code) < len(t.codes) {
			return t.prefix + t.codes[e.Code]
		}
		return fmt.Sprintf("%sCODE_%d", t.prefix, e.Code)
	}
	return fmt.Sprintf("code_%d", e.Code)
}

// IsBundleError reports whether e is a bundle failure (OFPBFC_*) and its
// code (BundleErr*), in either the OpenFlow 1.3 ONF or the 1.4 encoding.
func (e *ErrorMsg) IsBundleError() (uint16, bool) {
	switch {
	case e.ErrType == ErrTypeBundleFailed:
		return e.Code, true
	case e.ErrType == ErrTypeExperimenter && e.Experimenter == ONFExperimenter &&
		e.Code >= BundleErrBase && int(e.Code-BundleErrBase) < len(bundleErrNames):
		return e.Code - BundleErrBase, true
	}
	return 0, false
}

// FailedXid returns the xid of the request that failed, when Data holds the
// start of it.
func (e *ErrorMsg) FailedXid() (uint32, bool) {
	if len(e.Data) < HeaderLen || e.Data[0] == 0 {
		return 0, false
	}
	return binary.BigEndian.Uint32(e.Data[4:]), true
}

// failedRequest describes the request quoted in Data: its type and xid, and
// its decoded form when Data holds all of it.
func (e *ErrorMsg) failedRequest() string {
	xid, ok := e.FailedXid()
	if !ok {
		return ""
	}
	h, err := ParseHeader(e.Data)
	if err != nil {
		return fmt.Sprintf(" (data: %d bytes)", len(e.Data))
	}
	s := fmt.Sprintf(" in reply to %s xid=0x%x", h.Type, xid)
	if int(h.Length) == len(e.Data) && h.Type != TypeError {
		if _, m, err := Decode(e.Data); err == nil {
			if st, ok := m.(fmt.Stringer); ok {
				s += ": " + st.String()
			}
		}
	} else if int(h.Length) > len(e.Data) {
		s += fmt.Sprintf(" (first %d of %d bytes)", len(e.Data), h.Length)
	}
	return s
}

// Error gives e.g. "OFPET_BAD_MATCH/OFPBMC_BAD_FIELD (type 4 code 6) in
// reply to FLOW_MOD xid=0x12: <the flow mod>".
func (e *ErrorMsg) Error() string {
	var sb strings.Builder
	sb.WriteString("openflow error ")
	sb.WriteString(e.TypeName())
	sb.WriteByte('/')
	sb.WriteString(e.CodeName())
	if e.ErrType == ErrTypeExperimenter {
		fmt.Fprintf(&sb, " (experimenter 0x%08x exp_code %d)", e.Experimenter, e.Code)
	} else {
		fmt.Fprintf(&sb, " (type %d code %d)", e.ErrType, e.Code)
	}
	if e.ErrType == ErrTypeHelloFailed {
		// HELLO_FAILED carries ASCII text, not a request.
		fmt.Fprintf(&sb, ": %q", e.Data)
		return sb.String()
	}
	sb.WriteString(e.failedRequest())
	return sb.String()
}

func (e *ErrorMsg) String() string { return "ERROR " + e.Error() }

func init() { registerDecoder(TypeError, decodeError) }
