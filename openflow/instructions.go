package openflow

import (
	"encoding/binary"
	"fmt"
	"slices"
	"strings"
)

// OpenFlow 1.3 instruction types (ofp_instruction_type).
const (
	instGotoTable     = 1
	instWriteMetadata = 2
	instWriteActions  = 3
	instApplyActions  = 4
	instClearActions  = 5
	instMeter         = 6
)

// GotoTableInst continues processing in a later table (OFPIT_GOTO_TABLE).
type GotoTableInst struct{ Table uint8 }

// GotoTable returns a goto_table instruction.
func GotoTable(t uint8) *GotoTableInst { return &GotoTableInst{Table: t} }

func (in *GotoTableInst) AppendInstruction(b []byte) ([]byte, error) {
	return append(b, 0, instGotoTable, 0, 8, in.Table, 0, 0, 0), nil
}
func (in *GotoTableInst) String() string { return fmt.Sprintf("goto_table:%d", in.Table) }

// WriteMetadata writes the metadata bits selected by Mask
// (OFPIT_WRITE_METADATA).
type WriteMetadata struct{ Metadata, Mask uint64 }

func (in *WriteMetadata) AppendInstruction(b []byte) ([]byte, error) {
	b = append(b, 0, instWriteMetadata, 0, 24, 0, 0, 0, 0)
	b = binary.BigEndian.AppendUint64(b, in.Metadata)
	return binary.BigEndian.AppendUint64(b, in.Mask), nil
}

func (in *WriteMetadata) String() string {
	s := "write_metadata:" + cHex(in.Metadata)
	if in.Mask != ^uint64(0) {
		s += "/" + cHex(in.Mask)
	}
	return s
}

// cHex prints v as C's "%#x": "0" for zero, else 0x-prefixed.
func cHex(v uint64) string {
	if v == 0 {
		return "0"
	}
	return fmt.Sprintf("%#x", v)
}

// ApplyActionsInst applies actions immediately (OFPIT_APPLY_ACTIONS).
type ApplyActionsInst struct{ Actions []Action }

// ApplyActions returns an apply_actions instruction.
func ApplyActions(a ...Action) *ApplyActionsInst { return &ApplyActionsInst{Actions: a} }

func (in *ApplyActionsInst) AppendInstruction(b []byte) ([]byte, error) {
	return appendActionsInst(b, instApplyActions, in.Actions)
}

// String prints the actions bare, as OVS prints apply_actions.
func (in *ApplyActionsInst) String() string { return joinActions(in.Actions) }

// WriteActionsInst merges actions into the action set (OFPIT_WRITE_ACTIONS).
type WriteActionsInst struct{ Actions []Action }

// WriteActions returns a write_actions instruction.
func WriteActions(a ...Action) *WriteActionsInst { return &WriteActionsInst{Actions: a} }

func (in *WriteActionsInst) AppendInstruction(b []byte) ([]byte, error) {
	return appendActionsInst(b, instWriteActions, in.Actions)
}
func (in *WriteActionsInst) String() string { return "write_actions(" + joinActions(in.Actions) + ")" }

// ClearActionsInst empties the action set (OFPIT_CLEAR_ACTIONS).
type ClearActionsInst struct{}

// ClearActions returns a clear_actions instruction.
func ClearActions() *ClearActionsInst { return &ClearActionsInst{} }

func (*ClearActionsInst) AppendInstruction(b []byte) ([]byte, error) {
	return append(b, 0, instClearActions, 0, 8, 0, 0, 0, 0), nil
}
func (*ClearActionsInst) String() string { return "clear_actions" }

// MeterInst sends the packet through a meter (OFPIT_METER).
type MeterInst struct{ ID uint32 }

// Meter returns a meter instruction.
func Meter(id uint32) *MeterInst { return &MeterInst{ID: id} }

func (in *MeterInst) AppendInstruction(b []byte) ([]byte, error) {
	b = append(b, 0, instMeter, 0, 8)
	return binary.BigEndian.AppendUint32(b, in.ID), nil
}
func (in *MeterInst) String() string { return fmt.Sprintf("meter:%d", in.ID) }

func appendActionsInst(b []byte, typ uint16, acts []Action) ([]byte, error) {
	start, b := beginTLV(b, typ)
	b = append(b, 0, 0, 0, 0)
	b, err := AppendActions(b, acts)
	if err != nil {
		return b[:start], err
	}
	return finishTLV(b, start, "instruction")
}

func joinActions(acts []Action) string {
	var sb strings.Builder
	for i, a := range acts {
		if i > 0 {
			sb.WriteByte(',')
		}
		sb.WriteString(a.String())
	}
	return sb.String()
}

func decodeActionsInst(b []byte) ([]Action, error) {
	if len(b) < 8 {
		return nil, truncated("instruction", 0, 8, len(b))
	}
	acts, err := DecodeActions(b[8:])
	if err != nil {
		if de, ok := err.(*DecodeError); ok {
			de.Offset += 8
		}
		return nil, err
	}
	return acts, nil
}

// instOrder is the order OVS executes (and prints) instructions in,
// whatever their order on the wire.
func instOrder(in Instruction) int {
	switch in.(type) {
	case *MeterInst:
		return 0
	case *ApplyActionsInst:
		return 1
	case *ClearActionsInst:
		return 2
	case *WriteActionsInst:
		return 3
	case *WriteMetadata:
		return 4
	case *GotoTableInst:
		return 5
	}
	return 6
}

// InstructionsString prints an instruction list as ovs-ofctl does: in
// execution order (meter, apply_actions' actions bare, clear_actions,
// write_actions(...), write_metadata, goto_table), comma-separated, and
// "drop" when nothing is printed.
func InstructionsString(ins []Instruction) string {
	sorted := slices.Clone(ins)
	slices.SortStableFunc(sorted, func(a, b Instruction) int { return instOrder(a) - instOrder(b) })
	var parts []string
	for _, in := range sorted {
		if s := in.String(); s != "" {
			parts = append(parts, s)
		}
	}
	if len(parts) == 0 {
		return "drop"
	}
	return strings.Join(parts, ",")
}

func init() {
	registerInstruction(instGotoTable, func(b []byte) (Instruction, error) {
		if err := wantLen("goto_table instruction", b, 8); err != nil {
			return nil, err
		}
		return &GotoTableInst{Table: b[4]}, nil
	})
	registerInstruction(instWriteMetadata, func(b []byte) (Instruction, error) {
		if err := wantLen("write_metadata instruction", b, 24); err != nil {
			return nil, err
		}
		return &WriteMetadata{Metadata: binary.BigEndian.Uint64(b[8:]), Mask: binary.BigEndian.Uint64(b[16:])}, nil
	})
	registerInstruction(instApplyActions, func(b []byte) (Instruction, error) {
		acts, err := decodeActionsInst(b)
		if err != nil {
			return nil, err
		}
		return &ApplyActionsInst{Actions: acts}, nil
	})
	registerInstruction(instWriteActions, func(b []byte) (Instruction, error) {
		acts, err := decodeActionsInst(b)
		if err != nil {
			return nil, err
		}
		return &WriteActionsInst{Actions: acts}, nil
	})
	registerInstruction(instClearActions, func(b []byte) (Instruction, error) {
		if err := wantLen("clear_actions instruction", b, 8); err != nil {
			return nil, err
		}
		return &ClearActionsInst{}, nil
	})
	registerInstruction(instMeter, func(b []byte) (Instruction, error) {
		if err := wantLen("meter instruction", b, 8); err != nil {
			return nil, err
		}
		return &MeterInst{ID: binary.BigEndian.Uint32(b[4:])}, nil
	})
}
