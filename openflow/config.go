package openflow

import (
	"encoding/binary"
	"fmt"
)

// Switch configuration flags (ofp_config_flags).
const (
	ConfigFragNormal uint16 = 0
	ConfigFragDrop   uint16 = 1
	ConfigFragReasm  uint16 = 2
)

// MissSendLenNoBuffer (OFPCML_NO_BUFFER) asks the switch to send whole
// packets to the controller and buffer none.
const MissSendLenNoBuffer uint16 = 0xffff

// GetConfigRequest is OFPT_GET_CONFIG_REQUEST.
type GetConfigRequest struct{}

func (*GetConfigRequest) Type() MsgType                       { return TypeGetConfigRequest }
func (*GetConfigRequest) AppendBody(b []byte) ([]byte, error) { return b, nil }
func (*GetConfigRequest) String() string                      { return "GET_CONFIG_REQUEST" }

// GetConfigReply is OFPT_GET_CONFIG_REPLY.
type GetConfigReply struct{ Flags, MissSendLen uint16 }

// SetConfig is OFPT_SET_CONFIG.
type SetConfig struct{ Flags, MissSendLen uint16 }

func (*GetConfigReply) Type() MsgType { return TypeGetConfigReply }
func (*SetConfig) Type() MsgType      { return TypeSetConfig }

func appendConfig(b []byte, flags, missSendLen uint16) []byte {
	b = binary.BigEndian.AppendUint16(b, flags)
	return binary.BigEndian.AppendUint16(b, missSendLen)
}

func (m *GetConfigReply) AppendBody(b []byte) ([]byte, error) {
	return appendConfig(b, m.Flags, m.MissSendLen), nil
}
func (m *SetConfig) AppendBody(b []byte) ([]byte, error) {
	return appendConfig(b, m.Flags, m.MissSendLen), nil
}

func configString(flags, missSendLen uint16) string {
	frag := map[uint16]string{ConfigFragNormal: "normal", ConfigFragDrop: "drop", ConfigFragReasm: "reassemble"}[flags&3]
	if frag == "" {
		frag = fmt.Sprintf("0x%x", flags&3)
	}
	return fmt.Sprintf("frags=%s miss_send_len=%d", frag, missSendLen)
}

func (m *GetConfigReply) String() string {
	return "GET_CONFIG_REPLY " + configString(m.Flags, m.MissSendLen)
}
func (m *SetConfig) String() string { return "SET_CONFIG " + configString(m.Flags, m.MissSendLen) }

func decodeConfig(what string, body []byte) (uint16, uint16, error) {
	if len(body) < 4 {
		return 0, 0, truncated(what, HeaderLen, 4, len(body))
	}
	return binary.BigEndian.Uint16(body), binary.BigEndian.Uint16(body[2:]), nil
}

func init() {
	registerDecoder(TypeGetConfigRequest, func([]byte) (Message, error) { return &GetConfigRequest{}, nil })
	registerDecoder(TypeGetConfigReply, func(body []byte) (Message, error) {
		f, l, err := decodeConfig("GET_CONFIG_REPLY", body)
		if err != nil {
			return nil, err
		}
		return &GetConfigReply{Flags: f, MissSendLen: l}, nil
	})
	registerDecoder(TypeSetConfig, func(body []byte) (Message, error) {
		f, l, err := decodeConfig("SET_CONFIG", body)
		if err != nil {
			return nil, err
		}
		return &SetConfig{Flags: f, MissSendLen: l}, nil
	})
}
