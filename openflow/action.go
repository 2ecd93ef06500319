package openflow

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// ActionTypeExperimenter is OFPAT_EXPERIMENTER; Nicira actions use it with
// the Nicira vendor id and an NXAST subtype.
const ActionTypeExperimenter = 0xffff

// Action is one OpenFlow 1.3 action (or a Nicira NXAST action).
type Action interface {
	// AppendAction appends the complete action: header, body and padding
	// to a multiple of 8 bytes.
	AppendAction(b []byte) ([]byte, error)
	// String prints the action in ovs-ofctl syntax.
	String() string
}

// Instruction is one OpenFlow 1.3 instruction.
type Instruction interface {
	// AppendInstruction appends the complete instruction.
	AppendInstruction(b []byte) ([]byte, error)
	// String prints the instruction in ovs-ofctl syntax.
	String() string
}

// actionDecoders maps OFPAT_* to a decoder; nxActionDecoders maps NXAST_*
// subtypes. A decoder gets the whole action (header included, exactly the
// action's length) and must copy what it keeps.
var (
	actionDecoders      = map[uint16]func(b []byte) (Action, error){}
	nxActionDecoders    = map[uint16]func(b []byte) (Action, error){}
	instructionDecoders = map[uint16]func(b []byte) (Instruction, error){}
)

func registerAction(t uint16, fn func(b []byte) (Action, error))    { actionDecoders[t] = fn }
func registerNXAction(st uint16, fn func(b []byte) (Action, error)) { nxActionDecoders[st] = fn }
func registerInstruction(t uint16, fn func(b []byte) (Instruction, error)) {
	instructionDecoders[t] = fn
}

// UnknownAction keeps an action keyroute does not decode, so a decoded
// message can still be printed and re-encoded.
type UnknownAction struct{ Raw []byte }

func (a *UnknownAction) AppendAction(b []byte) ([]byte, error) { return append(b, a.Raw...), nil }
func (a *UnknownAction) String() string                        { return fmt.Sprintf("unknown_action(%x)", a.Raw) }

// AppendActions appends a list of actions.
func AppendActions(b []byte, acts []Action) ([]byte, error) {
	var err error
	for _, a := range acts {
		if b, err = a.AppendAction(b); err != nil {
			return b, err
		}
	}
	return b, nil
}

// tlvLen reads the (type, len) header common to actions and instructions and
// checks the length against what is left.
func tlvLen(what string, b []byte, off int) (typ uint16, n int, err error) {
	if len(b) < 4 {
		return 0, 0, truncated(what, off, 4, len(b))
	}
	typ = binary.BigEndian.Uint16(b)
	n = int(binary.BigEndian.Uint16(b[2:]))
	if n < 4 || n%8 != 0 && what == "action" {
		return typ, 0, &DecodeError{What: what, Offset: off + 2, Err: fmt.Errorf("length %d is not a positive multiple of 8", n)}
	}
	if n > len(b) {
		return typ, 0, truncated(what, off, n, len(b))
	}
	return typ, n, nil
}

// DecodeActions decodes a list of actions filling b exactly.
func DecodeActions(b []byte) ([]Action, error) {
	var acts []Action
	for off := 0; off < len(b); {
		typ, n, err := tlvLen("action", b[off:], off)
		if err != nil {
			return nil, err
		}
		raw := b[off : off+n]
		var fn func([]byte) (Action, error)
		if typ == ActionTypeExperimenter {
			if n < 10 {
				return nil, truncated("experimenter action", off, 10, n)
			}
			if binary.BigEndian.Uint32(raw[4:]) == NiciraExperimenter {
				fn = nxActionDecoders[binary.BigEndian.Uint16(raw[8:])]
			}
		} else {
			fn = actionDecoders[typ]
		}
		var a Action
		if fn != nil {
			a, err = fn(raw)
		}
		switch {
		case fn == nil || errors.Is(err, errUnknownField):
			a = &UnknownAction{Raw: append([]byte(nil), raw...)}
		case err != nil:
			if de, ok := err.(*DecodeError); ok {
				de.Offset += off
			}
			return nil, err
		}
		acts = append(acts, a)
		off += n
	}
	return acts, nil
}

// AppendInstructions appends a list of instructions.
func AppendInstructions(b []byte, ins []Instruction) ([]byte, error) {
	var err error
	for _, in := range ins {
		if b, err = in.AppendInstruction(b); err != nil {
			return b, err
		}
	}
	return b, nil
}

// DecodeInstructions decodes a list of instructions filling b exactly.
func DecodeInstructions(b []byte) ([]Instruction, error) {
	var ins []Instruction
	for off := 0; off < len(b); {
		typ, n, err := tlvLen("instruction", b[off:], off)
		if err != nil {
			return nil, err
		}
		fn, ok := instructionDecoders[typ]
		if !ok {
			return nil, &DecodeError{What: "instruction", Offset: off, Err: fmt.Errorf("unknown instruction type %d", typ)}
		}
		in, err := fn(b[off : off+n])
		if err != nil {
			if de, ok := err.(*DecodeError); ok {
				de.Offset += off
			}
			return nil, err
		}
		ins = append(ins, in)
		off += n
	}
	return ins, nil
}
