package controller

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/keyroute/keyroute/openflow"
)

// FlowModError is one flow mod the switch rejected.
type FlowModError struct {
	Index int // position in the slice given to Install
	Flow  *openflow.FlowMod
	Err   *openflow.ErrorMsg
}

func (e *FlowModError) Error() string {
	return fmt.Sprintf("flow mod %d (%s) rejected: %s", e.Index, describe(e.Flow), errorName(e.Err))
}

func (e *FlowModError) Unwrap() error { return e.Err }

// BundleError is one message of a bundle that the switch rejected, or the
// bundle control itself (Index -1, Msg the BundleControl).
type BundleError struct {
	BundleID uint32
	Index    int
	Msg      openflow.Message
	Err      *openflow.ErrorMsg
}

func (e *BundleError) Error() string {
	if e.Index < 0 {
		return fmt.Sprintf("bundle 0x%x: %s rejected: %s", e.BundleID, describe(e.Msg), errorName(e.Err))
	}
	return fmt.Sprintf("bundle 0x%x: message %d (%s) rejected: %s", e.BundleID, e.Index, describe(e.Msg), errorName(e.Err))
}

func (e *BundleError) Unwrap() error { return e.Err }

// errorName is "OFPET_BAD_MATCH/OFPBMC_BAD_PREREQ" without the quoted
// request that ErrorMsg.Error adds (the caller names the request better).
func errorName(e *openflow.ErrorMsg) string {
	if e == nil {
		return "unknown error"
	}
	return e.TypeName() + "/" + e.CodeName()
}

// describe prints a message for an error, in ovs-ofctl syntax when it can.
func describe(m openflow.Message) (s string) {
	if m == nil {
		return "<nil>"
	}
	defer func() {
		if recover() != nil {
			s = msgName(m)
		}
	}()
	if st, ok := m.(fmt.Stringer); ok {
		return st.String()
	}
	return msgName(m)
}

// Install writes the flow mods back to back, then a barrier, and returns
// when the switch has processed them all: one round trip for any number of
// flows. Flows the switch rejected are reported as *FlowModError, all of
// them, joined; the others are installed. A flow that cannot be encoded
// fails the call before anything is sent.
func (s *Switch) Install(ctx context.Context, flows []*openflow.FlowMod) error {
	if len(flows) == 0 {
		return nil
	}
	msgs := make([]openflow.Message, len(flows))
	for i, f := range flows {
		if f == nil {
			return fmt.Errorf("install: flow mod %d is nil", i)
		}
		msgs[i] = f
	}
	c, err := s.conn()
	if err != nil {
		return fmt.Errorf("install %d flows: %w", len(flows), err)
	}
	rejected, err := c.pipeline(ctx, msgs)
	if err != nil {
		return fmt.Errorf("install %d flows: %w", len(flows), err)
	}
	errs := make([]error, 0, len(rejected))
	for _, i := range sortedKeys(rejected) {
		errs = append(errs, &FlowModError{Index: i, Flow: flows[i], Err: rejected[i]})
	}
	return errors.Join(errs...)
}

// MessageError is one message given to Apply that the switch rejected.
type MessageError struct {
	Index int
	Msg   openflow.Message
	Err   *openflow.ErrorMsg
}

func (e *MessageError) Error() string {
	return fmt.Sprintf("message %d (%s) rejected: %s", e.Index, describe(e.Msg), errorName(e.Err))
}

func (e *MessageError) Unwrap() error { return e.Err }

// Apply is Install for any messages without a reply of their own (meter
// mods, group mods, port mods, packet-outs...): it writes them back to back
// and a barrier, and reports each rejected one as *MessageError, joined.
func (s *Switch) Apply(ctx context.Context, msgs ...openflow.Message) error {
	if len(msgs) == 0 {
		return nil
	}
	c, err := s.conn()
	if err != nil {
		return fmt.Errorf("apply %d messages: %w", len(msgs), err)
	}
	rejected, err := c.pipeline(ctx, msgs)
	if err != nil {
		return fmt.Errorf("apply %d messages: %w", len(msgs), err)
	}
	errs := make([]error, 0, len(rejected))
	for _, i := range sortedKeys(rejected) {
		errs = append(errs, &MessageError{Index: i, Msg: msgs[i], Err: rejected[i]})
	}
	return errors.Join(errs...)
}

func sortedKeys[V any](m map[int]V) []int {
	keys := make([]int, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// bundleFlags: all-or-nothing, applied in the order given.
const bundleFlags = openflow.BundleAtomic | openflow.BundleOrdered

// Bundle applies msgs all-or-nothing in one atomic, ordered bundle. If the
// switch rejects any message (when it is added or at commit) the bundle is
// discarded, nothing changes, and the error names each rejected message
// (*BundleError, joined).
func (s *Switch) Bundle(ctx context.Context, msgs []openflow.Message) error {
	if len(msgs) == 0 {
		return nil
	}
	c, err := s.conn()
	if err != nil {
		return fmt.Errorf("bundle of %d messages: %w", len(msgs), err)
	}
	if err := c.bundle(ctx, msgs); err != nil {
		return fmt.Errorf("bundle of %d messages: %w", len(msgs), err)
	}
	return nil
}

// bundle sends OPEN, the ADDs and a barrier in one go. OVS checks each
// message when it is added but keeps the bundle open after rejecting one,
// so the barrier tells whether every add was accepted before we commit.
func (c *conn) bundle(ctx context.Context, msgs []openflow.Message) error {
	s := c.s
	n := len(msgs)
	id := s.bundleID.Add(1)
	// xids: base open, base+1+i add i, base+n+1 barrier, +2 commit, +3 discard.
	base := s.xidBlock(n + 4)
	offBarrier, offCommit, offDiscard := uint32(n+1), uint32(n+2), uint32(n+3)
	open := &openflow.BundleControl{BundleID: id, CtrlType: openflow.BundleOpenRequest, Flags: bundleFlags}

	buf := make([]byte, 0, 80*(n+2))
	ends := make([]int, 0, n+2)
	var err error
	if buf, err = openflow.AppendMessage(buf, open, base); err != nil {
		return err
	}
	ends = append(ends, len(buf))
	for i, m := range msgs {
		xid := base + 1 + uint32(i)
		add := &openflow.BundleAdd{BundleID: id, Flags: bundleFlags, Xid: xid, Message: m}
		if buf, err = openflow.AppendMessage(buf, add, xid); err != nil {
			return &encodeError{Index: i, Msg: m, Err: err}
		}
		ends = append(ends, len(buf))
	}
	buf, _ = openflow.AppendMessage(buf, &openflow.BarrierRequest{}, base+offBarrier)
	ends = append(ends, len(buf))

	col := c.addCollector(base, n+4)
	defer c.removeCollector(col)
	discard := func() {
		// After an error the bundle may still be open on the switch; drop
		// it and wait for the answer (a reply, or BAD_ID if it is gone).
		b, _ := openflow.Marshal(&openflow.BundleControl{BundleID: id, CtrlType: openflow.BundleDiscardRequest, Flags: bundleFlags}, base+offDiscard)
		dctx := context.WithoutCancel(ctx)
		if c.write(dctx, b) == nil {
			c.await(dctx, col, offDiscard, "bundle discard")
		}
	}
	if err := c.writeMessages(ctx, buf, ends); err != nil {
		return err
	}
	if err := c.await(ctx, col, offBarrier, "barrier after bundle adds"); err != nil {
		return err
	}
	if rejected := col.errorsIn(0, offBarrier); len(rejected) > 0 {
		discard()
		return bundleErrors(id, open, msgs, rejected)
	}

	commit := &openflow.BundleControl{BundleID: id, CtrlType: openflow.BundleCommitRequest, Flags: bundleFlags}
	b, _ := openflow.Marshal(commit, base+offCommit)
	if err := c.write(ctx, b); err != nil {
		return fmt.Errorf("commit bundle 0x%x: %w", id, err)
	}
	if err := c.await(ctx, col, offCommit, "bundle commit"); err != nil {
		return err
	}
	for _, m := range col.get(offCommit) {
		switch m := m.(type) {
		case *openflow.ErrorMsg:
			// The switch reports the failing message under its own xid
			// before it fails the commit.
			rejected := col.errorsIn(1, offBarrier)
			rejected[offCommit] = m
			return bundleErrors(id, commit, msgs, rejected)
		case *openflow.BundleControl:
			if m.CtrlType == openflow.BundleCommitReply {
				return nil
			}
		}
	}
	return fmt.Errorf("commit bundle 0x%x: unexpected answer %s", id, describe(col.get(offCommit)[0]))
}

// bundleErrors turns the switch's ERRORs by xid offset into BundleErrors,
// message errors first, in order.
func bundleErrors(id uint32, ctrl openflow.Message, msgs []openflow.Message, rejected map[uint32]*openflow.ErrorMsg) error {
	offs := make([]uint32, 0, len(rejected))
	for off := range rejected {
		offs = append(offs, off)
	}
	slices.Sort(offs)
	var msgErrs, ctrlErrs []error
	for _, off := range offs {
		if off >= 1 && int(off) <= len(msgs) {
			msgErrs = append(msgErrs, &BundleError{BundleID: id, Index: int(off) - 1, Msg: msgs[off-1], Err: rejected[off]})
		} else {
			ctrlErrs = append(ctrlErrs, &BundleError{BundleID: id, Index: -1, Msg: ctrl, Err: rejected[off]})
		}
	}
	return errors.Join(append(msgErrs, ctrlErrs...)...)
}
