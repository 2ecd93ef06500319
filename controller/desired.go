package controller

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/keyroute/keyroute/openflow"
)

// flowKey identifies a flow the way the switch does: a second flow with the
// same table, priority and match replaces the first.
type flowKey struct {
	table    uint8
	priority uint16
	match    string
}

func (k flowKey) String() string {
	return fmt.Sprintf("table=%d priority=%d match={%s}", k.table, k.priority, k.match)
}

// matchKey is a canonical form of a match: fields by name (so NXM and OXM
// encodings of one field agree), in a fixed order, values masked, masks
// that select all bits dropped and fields that select none left out —
// as OVS itself stores them.
func matchKey(m openflow.Match) (string, error) {
	parts := make([]string, 0, len(m.Fields))
	for i, o := range m.Fields {
		if o.Field == nil {
			return "", fmt.Errorf("match field %d has no field type", i)
		}
		val, mask := o.Value, o.Mask
		if mask != nil {
			if len(mask) != len(val) {
				return "", fmt.Errorf("match field %s: value is %d bytes, mask %d", o.Field.Name, len(val), len(mask))
			}
			allOnes, allZero := true, true
			masked := make([]byte, len(val))
			for j := range mask {
				allOnes = allOnes && mask[j] == 0xff
				allZero = allZero && mask[j] == 0
				masked[j] = val[j] & mask[j]
			}
			switch {
			case allZero:
				continue
			case allOnes:
				mask = nil
			default:
				val = masked
			}
		}
		p := o.Field.Name + "=" + hex.EncodeToString(val)
		if mask != nil {
			p += "/" + hex.EncodeToString(mask)
		}
		parts = append(parts, p)
	}
	slices.Sort(parts)
	return strings.Join(parts, ","), nil
}

func keyOf(table uint8, priority uint16, m openflow.Match) (flowKey, error) {
	mk, err := matchKey(m)
	return flowKey{table: table, priority: priority, match: mk}, err
}

// content is what must agree for a flow on the switch to count as the
// desired one. Only send_flow_rem of the flags is compared: OVS does not
// report the others back.
func content(cookie uint64, idle, hard uint16, flags openflow.FlowModFlags, ins []openflow.Instruction) string {
	var sb strings.Builder
	fmt.Fprintf(&sb, "cookie=%x idle=%d hard=%d frem=%t", cookie, idle, hard, flags&openflow.SendFlowRem != 0)
	for _, in := range ins {
		sb.WriteByte(' ')
		sb.WriteString(in.String())
	}
	return sb.String()
}

type desiredFlow struct {
	fm      *openflow.FlowMod
	key     flowKey
	content string
}

// ownerFlows is one owner's desired set, in the order given.
type ownerFlows struct {
	flows []*desiredFlow
	byKey map[flowKey]*desiredFlow
}

// prepare copies and checks an owner's flows: each must be an add, and no
// two may share a key.
func prepare(owner string, flows []*openflow.FlowMod) (*ownerFlows, error) {
	of := &ownerFlows{flows: make([]*desiredFlow, 0, len(flows)), byKey: make(map[flowKey]*desiredFlow, len(flows))}
	for i, f := range flows {
		if f == nil {
			return nil, fmt.Errorf("desired flow %d of %s is nil", i, owner)
		}
		if f.Command != openflow.FlowAdd {
			return nil, fmt.Errorf("desired flow %d of %s (%s): command must be add", i, owner, describe(f))
		}
		k, err := keyOf(f.Table, f.Priority, f.Match)
		if err != nil {
			return nil, fmt.Errorf("desired flow %d of %s: %w", i, owner, err)
		}
		if prev, dup := of.byKey[k]; dup {
			return nil, fmt.Errorf("desired flows of %s: flow %d (%s) has the same table, priority and match as %s", owner, i, describe(f), describe(prev.fm))
		}
		cp := *f
		// Zero BufferID, OutPort and OutGroup go out as "none"/"any".
		cp.CookieMask, cp.BufferID, cp.OutPort, cp.OutGroup = 0, 0, 0, 0
		d := &desiredFlow{fm: &cp, key: k, content: content(cp.Cookie, cp.IdleTimeout, cp.HardTimeout, cp.Flags, cp.Instructions)}
		of.flows = append(of.flows, d)
		of.byKey[k] = d
	}
	return of, nil
}

// deleteStrict removes exactly the flow with f's key and cookie.
func deleteStrict(table uint8, priority uint16, m openflow.Match, cookie uint64) *openflow.FlowMod {
	return &openflow.FlowMod{
		Table: table, Command: openflow.FlowDeleteStrict, Priority: priority, Match: m,
		Cookie: cookie, CookieMask: ^uint64(0),
	}
}

// SetDesired records owner's complete desired flow set and applies the
// difference from its previous set to the switch in one atomic bundle:
// new and changed flows are added (replacing a flow with the same table,
// priority and match keeps its counters and never drops traffic), flows no
// longer desired are strictly deleted. Flows are keyed by table, priority
// and match; two owners cannot desire the same key. Callers must not
// modify the flows afterwards.
//
// If the switch rejects the bundle, nothing changes and the previous set
// stays recorded; the error names the rejected flows (*BundleError). If
// the switch is not connected the set is recorded and applied by the
// replay on the next connect, and SetDesired returns nil; if the
// connection fails midway, the set is recorded and the error returned.
// So nil does not mean the flows are on the switch: a caller that needs
// that uses SetDesiredConfirmed.
func (s *Switch) SetDesired(ctx context.Context, owner string, flows []*openflow.FlowMod) error {
	return s.setDesired(ctx, owner, flows, false)
}

// SetDesiredConfirmed is SetDesired (same validation, same recording, same
// bundle) for a caller that acts on "installed": one that tells a peer a
// flow is in place, or caches that it need not be sent again, must not act
// on a set that only sits in memory waiting for a replay. It returns nil
// only if, when it returns, the whole set is known to be on the switch:
// the switch is connected, the replay of all owners' desired flows after
// its latest connect has succeeded, and either the difference was
// committed in a bundle on that connection or there was no difference.
//
// Otherwise the error wraps ErrNotConfirmed, and the set is recorded all
// the same (the replay on the next connect applies it): the switch is not
// connected (the error wraps ErrNotConnected too), the connection is still
// being set up (OnConnected or the replay have not finished; retry after
// WaitConnected), the connection dropped or the bundle's outcome is
// unknown (timeout, ctx ended; the cause is wrapped too). As with
// SetDesired, a bundle the switch rejects returns the *BundleError and the
// set is not recorded.
//
// Unlike SetDesired it also resends flows of the set that are recorded
// but not known to be on the switch (rejected one by one by the replay,
// or sent in a bundle whose outcome is unknown), so a retry with the same
// set can be confirmed.
func (s *Switch) SetDesiredConfirmed(ctx context.Context, owner string, flows []*openflow.FlowMod) error {
	return s.setDesired(ctx, owner, flows, true)
}

// setDesired is SetDesired, and SetDesiredConfirmed with confirm.
func (s *Switch) setDesired(ctx context.Context, owner string, flows []*openflow.FlowMod, confirm bool) error {
	next, err := prepare(owner, flows)
	if err != nil {
		return err
	}
	s.desiredMu.Lock()
	defer s.desiredMu.Unlock()
	for _, d := range next.flows {
		if o, ok := s.keyOwner[d.key]; ok && o != owner {
			return fmt.Errorf("desired flows of %s: %s is already desired by %s", owner, describe(d.fm), o)
		}
	}
	prev := s.desired[owner]
	if prev == nil {
		prev = &ownerFlows{byKey: map[flowKey]*desiredFlow{}}
	}
	var msgs []openflow.Message
	for _, p := range prev.flows {
		if _, ok := next.byKey[p.key]; !ok {
			msgs = append(msgs, deleteStrict(p.fm.Table, p.fm.Priority, p.fm.Match, p.fm.Cookie))
		}
	}
	var added []flowKey
	for _, d := range next.flows {
		_, unsure := s.unsure[d.key]
		if p, ok := prev.byKey[d.key]; !ok || p.content != d.content || (confirm && unsure) {
			msgs = append(msgs, d.fm)
			added = append(added, d.key)
		}
	}
	c, cerr := s.conn()
	if len(msgs) > 0 && cerr == nil {
		if err := c.bundle(ctx, msgs); err != nil {
			err = fmt.Errorf("apply desired flows of %s: %w", owner, err)
			var be *BundleError
			var ee *encodeError
			if errors.As(err, &be) || errors.As(err, &ee) {
				return err
			}
			// The bundle may or may not have been committed.
			s.record(owner, prev, next)
			for _, k := range added {
				s.unsure[k] = struct{}{}
			}
			if confirm {
				return fmt.Errorf("%w: %w", ErrNotConfirmed, err)
			}
			return err
		}
		for _, k := range added {
			delete(s.unsure, k)
		}
	}
	s.record(owner, prev, next)
	if !confirm {
		return nil
	}
	switch {
	case cerr != nil:
		return fmt.Errorf("desired flows of %s: %w: %w", owner, ErrNotConfirmed, cerr)
	case s.replayedOn != c:
		// The replay on c has yet to run (it waits for desiredMu), or
		// it failed and c is being dropped.
		return fmt.Errorf("desired flows of %s: %w: the replay on the current connection has not completed", owner, ErrNotConfirmed)
	case len(msgs) == 0 && c.dead():
		return fmt.Errorf("desired flows of %s: %w: %w", owner, ErrNotConfirmed, c.lost())
	}
	return nil
}

// forgetReplay: the current connection is new or gone, so no recorded
// set counts as applied until the next replay succeeds.
func (s *Switch) forgetReplay() {
	s.desiredMu.Lock()
	defer s.desiredMu.Unlock()
	s.replayedOn = nil
	clear(s.unsure)
}

func (s *Switch) record(owner string, prev, next *ownerFlows) {
	for k := range prev.byKey {
		delete(s.keyOwner, k)
		if _, ok := next.byKey[k]; !ok {
			delete(s.unsure, k)
		}
	}
	for k := range next.byKey {
		s.keyOwner[k] = owner
	}
	if len(next.flows) == 0 {
		delete(s.desired, owner)
		return
	}
	s.desired[owner] = next
}

// Desired returns owner's recorded desired flows, in the order given.
func (s *Switch) Desired(owner string) []*openflow.FlowMod {
	s.desiredMu.Lock()
	defer s.desiredMu.Unlock()
	of := s.desired[owner]
	if of == nil {
		return nil
	}
	out := make([]*openflow.FlowMod, len(of.flows))
	for i, d := range of.flows {
		out[i] = d.fm
	}
	return out
}

// ReconcileResult says what a reconcile changed on the switch.
type ReconcileResult struct {
	Added   int // flows missing or different on the switch, (re)added
	Deleted int // owned flows (Options.OwnedCookie) that no owner desires
}

// Reconcile dumps the switch's flows and makes them match the desired
// state of all owners in one atomic bundle: missing or different flows are
// added, and flows whose cookie Options.OwnedCookie accepts but that no
// owner desires are deleted. Flows that already match are not touched.
//
// Calling Reconcile also declares the desired state complete: from then
// on the replay on every (re)connect deletes undesired owned flows too.
// Before it, the replay only adds, so an agent that restarts and connects
// before it has rebuilt its desired state does not delete live flows.
func (s *Switch) Reconcile(ctx context.Context) (ReconcileResult, error) {
	s.desiredMu.Lock()
	defer s.desiredMu.Unlock()
	c, err := s.conn()
	if err != nil {
		return ReconcileResult{}, fmt.Errorf("reconcile switch %s: %w", s.addr, err)
	}
	res, err := s.reconcileLocked(ctx, c, true, false)
	if err != nil {
		return res, fmt.Errorf("reconcile switch %s: %w", s.addr, err)
	}
	s.desiredComplete = true
	return res, nil
}

// replay runs on every connect c, after OnConnected. A vswitchd that
// restarted has lost every flow and gets them all back; one that kept
// running only gets the differences, so live traffic is never dropped.
// Only its success marks c as the connection the recorded sets are
// applied on (replayedOn); a failure drops c.
func (s *Switch) replay(ctx context.Context, c *conn) error {
	s.desiredMu.Lock()
	defer s.desiredMu.Unlock()
	if len(s.desired) == 0 && !(s.desiredComplete && s.opts.OwnedCookie != nil) {
		clear(s.unsure)
		s.replayedOn = c
		return nil
	}
	res, err := s.reconcileLocked(ctx, c, s.desiredComplete, true)
	if err != nil {
		return fmt.Errorf("replay desired flows: %w", err)
	}
	s.replayedOn = c
	s.cnt.replayedFlows.Add(uint64(res.Added + res.Deleted))
	if res.Added+res.Deleted > 0 {
		s.log.Info("replayed desired flows", "added", res.Added, "deleted", res.Deleted)
	}
	return nil
}

// reconcileLocked diffs the switch against the desired state and applies
// the difference on c. With fallback, a rejected bundle is retried flow by
// flow so that one bad flow does not keep all the others off the switch.
// It keeps s.unsure: empty when every desired flow is known to be on the
// switch, else the keys of the flows that may not be.
func (s *Switch) reconcileLocked(ctx context.Context, c *conn, deleteUndesired, fallback bool) (ReconcileResult, error) {
	var res ReconcileResult
	have, err := s.FlowStats(ctx, &openflow.FlowStatsRequest{Table: openflow.TableAll, OutPort: openflow.PortAny, OutGroup: openflow.GroupAny})
	if err != nil {
		return res, err
	}
	onSwitch := make(map[flowKey]string, len(have))
	var dels []*openflow.FlowMod
	for i := range have {
		f := &have[i]
		k, err := keyOf(f.Table, f.Priority, f.Match)
		if err != nil {
			return res, fmt.Errorf("flow dumped from the switch: %w", err)
		}
		onSwitch[k] = content(f.Cookie, f.IdleTimeout, f.HardTimeout, openflow.FlowModFlags(f.Flags), f.Instructions)
		if _, desired := s.keyOwner[k]; !desired && deleteUndesired && s.opts.OwnedCookie != nil && s.opts.OwnedCookie(f.Cookie) {
			dels = append(dels, deleteStrict(f.Table, f.Priority, f.Match, f.Cookie))
		}
	}
	var adds []*openflow.FlowMod
	var addKeys []flowKey
	owners := make([]string, 0, len(s.desired))
	for o := range s.desired {
		owners = append(owners, o)
	}
	slices.Sort(owners)
	for _, o := range owners {
		for _, d := range s.desired[o].flows {
			if cur, ok := onSwitch[d.key]; !ok || cur != d.content {
				adds = append(adds, d.fm)
				addKeys = append(addKeys, d.key)
			}
		}
	}
	// Flows that already match are on the switch; those about to be
	// added are not until the switch has taken them.
	clear(s.unsure)
	for _, k := range addKeys {
		s.unsure[k] = struct{}{}
	}
	res = ReconcileResult{Added: len(adds), Deleted: len(dels)}
	if len(adds)+len(dels) == 0 {
		return res, nil
	}
	msgs := make([]openflow.Message, 0, len(adds)+len(dels))
	for _, f := range dels {
		msgs = append(msgs, f)
	}
	for _, f := range adds {
		msgs = append(msgs, f)
	}
	err = c.bundle(ctx, msgs)
	if err == nil {
		clear(s.unsure)
	}
	if err == nil || !fallback {
		return res, err
	}
	var be *BundleError
	if !errors.As(err, &be) {
		return res, err
	}
	s.cnt.replayFailures.Add(1)
	s.log.Error("replay bundle rejected; installing flow by flow", "err", err)
	flows := append(dels, adds...)
	fm := make([]openflow.Message, len(flows))
	for i, f := range flows {
		fm[i] = f
	}
	rejected, err := c.pipeline(ctx, fm)
	if err != nil {
		return res, err
	}
	clear(s.unsure)
	for i, e := range rejected {
		s.log.Error("replayed flow rejected", "err", &FlowModError{Index: i, Flow: flows[i], Err: e})
		if i >= len(dels) {
			s.unsure[addKeys[i-len(dels)]] = struct{}{}
		}
	}
	return res, nil
}
