package openflow

import (
	"encoding/binary"
	"fmt"
)

// FeaturesRequest is OFPT_FEATURES_REQUEST.
type FeaturesRequest struct{}

func (*FeaturesRequest) Type() MsgType                       { return TypeFeaturesRequest }
func (*FeaturesRequest) AppendBody(b []byte) ([]byte, error) { return b, nil }
func (*FeaturesRequest) String() string                      { return "FEATURES_REQUEST" }

// Switch capabilities (ofp_capabilities) in FeaturesReply.Capabilities.
const (
	CapFlowStats   uint32 = 1 << 0
	CapTableStats  uint32 = 1 << 1
	CapPortStats   uint32 = 1 << 2
	CapGroupStats  uint32 = 1 << 3
	CapIPReasm     uint32 = 1 << 5
	CapQueueStats  uint32 = 1 << 6
	CapPortBlocked uint32 = 1 << 8
)

// FeaturesReply is OFPT_FEATURES_REPLY (OpenFlow 1.3: no port list).
type FeaturesReply struct {
	DatapathID   uint64
	NBuffers     uint32
	NTables      uint8
	AuxiliaryID  uint8
	Capabilities uint32
}

const featuresReplyLen = 24

func (*FeaturesReply) Type() MsgType { return TypeFeaturesReply }

func (m *FeaturesReply) AppendBody(b []byte) ([]byte, error) {
	b = binary.BigEndian.AppendUint64(b, m.DatapathID)
	b = binary.BigEndian.AppendUint32(b, m.NBuffers)
	b = append(b, m.NTables, m.AuxiliaryID, 0, 0)
	b = binary.BigEndian.AppendUint32(b, m.Capabilities)
	return binary.BigEndian.AppendUint32(b, 0), nil
}

func (m *FeaturesReply) String() string {
	return fmt.Sprintf("FEATURES_REPLY dpid:%016x n_tables:%d n_buffers:%d auxiliary_id:%d capabilities:0x%x",
		m.DatapathID, m.NTables, m.NBuffers, m.AuxiliaryID, m.Capabilities)
}

func decodeFeaturesReply(body []byte) (Message, error) {
	if len(body) < featuresReplyLen {
		return nil, truncated("FEATURES_REPLY", HeaderLen, featuresReplyLen, len(body))
	}
	return &FeaturesReply{
		DatapathID:   binary.BigEndian.Uint64(body),
		NBuffers:     binary.BigEndian.Uint32(body[8:]),
		NTables:      body[12],
		AuxiliaryID:  body[13],
		Capabilities: binary.BigEndian.Uint32(body[16:]),
	}, nil
}

func init() {
	registerDecoder(TypeFeaturesRequest, func([]byte) (Message, error) { return &FeaturesRequest{}, nil })
	registerDecoder(TypeFeaturesReply, decodeFeaturesReply)
}
