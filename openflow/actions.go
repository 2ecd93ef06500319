package openflow

import (
	"encoding/binary"
	"fmt"
)

// OpenFlow 1.3 action types (ofp_action_type) keyroute encodes.
const (
	actOutput    = 0
	actPushVLAN  = 17
	actPopVLAN   = 18
	actSetQueue  = 21
	actGroup     = 22
	actDecNwTTL  = 24
	actSetField  = 25
	actionHdrLen = 4
)

// beginTLV appends a type/length header with the length left to finishTLV.
func beginTLV(b []byte, typ uint16) (int, []byte) {
	start := len(b)
	return start, append(b, byte(typ>>8), byte(typ), 0, 0)
}

// finishTLV pads the TLV begun at start to 8 bytes and writes its length.
func finishTLV(b []byte, start int, what string) ([]byte, error) {
	for (len(b)-start)%8 != 0 {
		b = append(b, 0)
	}
	n := len(b) - start
	if n > 0xffff {
		return b[:start], fmt.Errorf("%s of %d bytes exceeds 65535", what, n)
	}
	binary.BigEndian.PutUint16(b[start+2:], uint16(n))
	return b, nil
}

// wantLen checks that a fixed-size action or instruction has its size.
func wantLen(what string, b []byte, n int) error {
	if len(b) != n {
		return &DecodeError{What: what, Offset: 2, Err: fmt.Errorf("length %d, want %d", len(b), n)}
	}
	return nil
}

// Output sends the packet to a port (OFPAT_OUTPUT). MaxLen matters only for
// PortController (bytes of the packet to send; 0xffff = whole packet).
type Output struct {
	Port   uint32
	MaxLen uint16
}

// OutputPort returns an output action to port p (whole packet to the
// controller if p is PortController).
func OutputPort(p uint32) *Output { return &Output{Port: p, MaxLen: 0xffff} }

func (a *Output) AppendAction(b []byte) ([]byte, error) {
	b = binary.BigEndian.AppendUint16(b, actOutput)
	b = binary.BigEndian.AppendUint16(b, 16)
	b = binary.BigEndian.AppendUint32(b, a.Port)
	b = binary.BigEndian.AppendUint16(b, a.MaxLen)
	return append(b, 0, 0, 0, 0, 0, 0), nil
}

func (a *Output) String() string {
	switch {
	case a.Port == PortController:
		return fmt.Sprintf("CONTROLLER:%d", a.MaxLen)
	case a.Port < PortMax:
		return "output:" + ovsPortString(a.Port)
	}
	return ovsPortString(a.Port)
}

func decodeOutput(b []byte) (Action, error) {
	if err := wantLen("output action", b, 16); err != nil {
		return nil, err
	}
	return &Output{Port: binary.BigEndian.Uint32(b[4:]), MaxLen: binary.BigEndian.Uint16(b[8:])}, nil
}

// SetField overwrites a whole header field (OFPAT_SET_FIELD). OpenFlow 1.3
// has no masked set_field; use Load for part of a field.
type SetField struct{ OXM }

// NewSetField returns a set_field action for the value in o, typically
// built with a Match constructor: NewSetField(MatchIPDSCP(5)).
func NewSetField(o OXM) *SetField { return &SetField{o} }

func (a *SetField) AppendAction(b []byte) ([]byte, error) {
	if a.Field == nil {
		return b, fmt.Errorf("set_field without a field")
	}
	if a.Mask != nil {
		return b, fmt.Errorf("set_field %s: OpenFlow 1.3 set_field cannot carry a mask", a.Field.Name)
	}
	start, b := beginTLV(b, actSetField)
	b, err := a.OXM.AppendTo(b)
	if err != nil {
		return b[:start], fmt.Errorf("set_field: %w", err)
	}
	return finishTLV(b, start, "set_field action")
}

func (a *SetField) String() string {
	if a.Field == nil {
		return "set_field:?"
	}
	return "set_field:" + formatValue(a.Field, a.Value) + "->" + a.Field.Name
}

func decodeSetField(b []byte) (Action, error) {
	o, n, err := DecodeOXM(b[actionHdrLen:])
	if err != nil {
		if de, ok := err.(*DecodeError); ok {
			de.Offset += actionHdrLen
		}
		return nil, err
	}
	if o.Mask != nil {
		return nil, &DecodeError{What: "set_field action", Offset: actionHdrLen, Err: fmt.Errorf("field %s is masked", o.Field.Name)}
	}
	// OVS accepts padding beyond the next multiple of 8 if it is zero
	// (and rejects nonzero padding); encoding sends the shortest form.
	for i := actionHdrLen + n; i < len(b); i++ {
		if b[i] != 0 {
			return nil, &DecodeError{What: "set_field action", Offset: i, Err: fmt.Errorf("nonzero padding after the %d-byte OXM", n)}
		}
	}
	return &SetField{o}, nil
}

// PushVLAN pushes a VLAN header (OFPAT_PUSH_VLAN); EtherType is 0x8100 or 0x88a8.
type PushVLAN struct{ EtherType uint16 }

func (a *PushVLAN) AppendAction(b []byte) ([]byte, error) {
	return append(b, 0, actPushVLAN, 0, 8, byte(a.EtherType>>8), byte(a.EtherType), 0, 0), nil
}
func (a *PushVLAN) String() string { return fmt.Sprintf("push_vlan:0x%x", a.EtherType) }

// PopVLAN pops the outer VLAN header (OFPAT_POP_VLAN).
type PopVLAN struct{}

func (*PopVLAN) AppendAction(b []byte) ([]byte, error) {
	return append(b, 0, actPopVLAN, 0, 8, 0, 0, 0, 0), nil
}
func (*PopVLAN) String() string { return "pop_vlan" }

// DecTTL decrements the IP TTL (OFPAT_DEC_NW_TTL).
type DecTTL struct{}

func (*DecTTL) AppendAction(b []byte) ([]byte, error) {
	return append(b, 0, actDecNwTTL, 0, 8, 0, 0, 0, 0), nil
}
func (*DecTTL) String() string { return "dec_ttl" }

// Group sends the packet to a group (OFPAT_GROUP).
type Group struct{ ID uint32 }

func (a *Group) AppendAction(b []byte) ([]byte, error) {
	b = append(b, 0, actGroup, 0, 8)
	return binary.BigEndian.AppendUint32(b, a.ID), nil
}
func (a *Group) String() string { return fmt.Sprintf("group:%d", a.ID) }

// SetQueue selects an egress queue (OFPAT_SET_QUEUE).
type SetQueue struct{ ID uint32 }

func (a *SetQueue) AppendAction(b []byte) ([]byte, error) {
	b = append(b, 0, actSetQueue, 0, 8)
	return binary.BigEndian.AppendUint32(b, a.ID), nil
}
func (a *SetQueue) String() string { return fmt.Sprintf("set_queue:%d", a.ID) }

func init() {
	registerAction(actOutput, decodeOutput)
	registerAction(actSetField, decodeSetField)
	registerAction(actPushVLAN, func(b []byte) (Action, error) {
		if err := wantLen("push_vlan action", b, 8); err != nil {
			return nil, err
		}
		return &PushVLAN{EtherType: binary.BigEndian.Uint16(b[4:])}, nil
	})
	registerAction(actPopVLAN, func(b []byte) (Action, error) {
		if err := wantLen("pop_vlan action", b, 8); err != nil {
			return nil, err
		}
		return &PopVLAN{}, nil
	})
	registerAction(actDecNwTTL, func(b []byte) (Action, error) {
		if err := wantLen("dec_ttl action", b, 8); err != nil {
			return nil, err
		}
		return &DecTTL{}, nil
	})
	registerAction(actGroup, func(b []byte) (Action, error) {
		if err := wantLen("group action", b, 8); err != nil {
			return nil, err
		}
		return &Group{ID: binary.BigEndian.Uint32(b[4:])}, nil
	})
	registerAction(actSetQueue, func(b []byte) (Action, error) {
		if err := wantLen("set_queue action", b, 8); err != nil {
			return nil, err
		}
		return &SetQueue{ID: binary.BigEndian.Uint32(b[4:])}, nil
	})
}
