package openflow

import "fmt"

// EchoRequest is OFPT_ECHO_REQUEST; Data is echoed back unchanged.
type EchoRequest struct{ Data []byte }

// EchoReply is OFPT_ECHO_REPLY.
type EchoReply struct{ Data []byte }

func (*EchoRequest) Type() MsgType { return TypeEchoRequest }
func (*EchoReply) Type() MsgType   { return TypeEchoReply }

func (m *EchoRequest) AppendBody(b []byte) ([]byte, error) { return append(b, m.Data...), nil }
func (m *EchoReply) AppendBody(b []byte) ([]byte, error)   { return append(b, m.Data...), nil }

func (m *EchoRequest) String() string {
	return fmt.Sprintf("ECHO_REQUEST %d bytes of payload", len(m.Data))
}
func (m *EchoReply) String() string {
	return fmt.Sprintf("ECHO_REPLY %d bytes of payload", len(m.Data))
}

func msgCopy(b []byte) []byte {
	if len(b) == 0 {
		return nil
	}
	return append([]byte(nil), b...)
}

func init() {
	registerDecoder(TypeEchoRequest, func(body []byte) (Message, error) { return &EchoRequest{Data: msgCopy(body)}, nil })
	registerDecoder(TypeEchoReply, func(body []byte) (Message, error) { return &EchoReply{Data: msgCopy(body)}, nil })
}
