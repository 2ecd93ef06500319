package openflow

// BarrierRequest is OFPT_BARRIER_REQUEST: the switch answers once every
// earlier message has been processed.
type BarrierRequest struct{}

// BarrierReply is OFPT_BARRIER_REPLY.
type BarrierReply struct{}

func (*BarrierRequest) Type() MsgType                       { return TypeBarrierRequest }
func (*BarrierRequest) AppendBody(b []byte) ([]byte, error) { return b, nil }
func (*BarrierRequest) String() string                      { return "BARRIER_REQUEST" }
func (*BarrierReply) Type() MsgType                         { return TypeBarrierReply }
func (*BarrierReply) AppendBody(b []byte) ([]byte, error)   { return b, nil }
func (*BarrierReply) String() string                        { return "BARRIER_REPLY" }

func init() {
	registerDecoder(TypeBarrierRequest, func([]byte) (Message, error) { return &BarrierRequest{}, nil })
	registerDecoder(TypeBarrierReply, func([]byte) (Message, error) { return &BarrierReply{}, nil })
}
