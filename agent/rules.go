package agent

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"iter"
	"log/slog"
	"maps"
	"net/http"
	"net/netip"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/keyroute/keyroute/api"
	"github.com/keyroute/keyroute/flows"
	"github.com/keyroute/keyroute/openflow"
	"github.com/keyroute/keyroute/registry"
	"github.com/keyroute/keyroute/rules"
	"github.com/keyroute/keyroute/rules/store"
)

// This file enforces network rules (package rules): it follows
// <prefix>rules/ in etcd, resolves each rule's selectors against this
// host's containers (and, for remote name globs, the cluster's), and keeps
// EgressRules/IngressRules and the rate-limit meters on br-int equal to
// the result, as the controller owner "rules".

const (
	rulesOwner = "rules"
	// firstRuleMeter keeps rule meters clear of the punt meter.
	firstRuleMeter = 256
	// maxRuleFlows bounds one rule's cross product (local × remote ×
	// port blocks); a larger rule is refused with an error in the log and
	// in keyroutectl rule stats.
	maxRuleFlows = 10000
)

type ruleEngine struct {
	a     *Agent
	log   *slog.Logger
	store *store.Store
	bad   prometheus.Counter
	dirty chan struct{}

	progMu sync.Mutex // one program at a time

	mu      sync.Mutex
	rules   map[string]rules.Rule
	remote  map[netip.Addr]string // cluster-wide endpoints, while a rule has a remote name glob
	stopEPs context.CancelFunc
	// meters: rule id → meter id; installed: meter id → the rate on the
	// switch now (on the current connection).
	meters    map[string]uint32
	installed map[uint32]rules.Rate
	nextMeter uint32
	cookies   map[uint64]string // cookie id → rule id
	notes     map[string]string // rule id → why it is not (fully) enforced
	nflows    map[string]int
	lastLocal string // local containers when last programmed
	connects  uint64 // br-int connections handled by onConnect
}

// startRules loads the rules and programs them before br-int's first
// replay, so a restarted agent never runs without them; then follows etcd.
// Errors are logged and retried: rules must not stop the agent.
func startRules(ctx context.Context, a *Agent) *ruleEngine {
	e := &ruleEngine{
		a: a, log: a.log.With("component", "rules"), dirty: make(chan struct{}, 1),
		rules: map[string]rules.Rule{}, meters: map[string]uint32{}, installed: map[uint32]rules.Rate{},
		nextMeter: firstRuleMeter, cookies: map[uint64]string{}, notes: map[string]string{}, nflows: map[string]int{},
	}
	e.bad = prometheus.NewCounter(prometheus.CounterOpts{Name: "keyroute_rules_bad_records_total",
		Help: "Rule records in etcd skipped because they failed validation."})
	a.metrics.reg.MustRegister(e.bad)
	badLog := registry.NewBadRecordLog(e.log)
	e.store = store.New(a.reg.Raw(), a.reg.Prefix(), func(key string, err error) {
		e.bad.Inc()
		a.metrics.badRecord(key, err)
		badLog.Log(err) // the other rules stay enforced
	})
	lctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	rs, err := e.store.List(lctx)
	cancel()
	if err != nil {
		e.log.Error("load rules; will follow the watch", "err", err)
	}
	e.mu.Lock()
	for _, r := range rs {
		e.rules[r.ID] = r
	}
	e.mu.Unlock()
	e.program(ctx, true)
	go e.run(ctx)
	return e
}

// endpointsChanged re-resolves name globs after containers came or went;
// program() calls it before it installs the containers' own flows, so a
// new container is never reachable before its rules are in place.
func (e *ruleEngine) endpointsChanged(ctx context.Context) {
	if e != nil {
		e.program(ctx, false)
	}
}

func (e *ruleEngine) markDirty() {
	select {
	case e.dirty <- struct{}{}:
	default:
	}
}

func (e *ruleEngine) run(ctx context.Context) {
	events := e.store.Watch(ctx)
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case ev, ok := <-events:
			if !ok {
				return
			}
			e.mu.Lock()
			switch ev.Type {
			case registry.EventPut:
				e.rules[ev.Value.ID] = ev.Value
			case registry.EventDelete:
				delete(e.rules, ev.Value.ID)
			}
			e.mu.Unlock()
			// Apply a burst of changes together, but without delay.
			if len(events) == 0 {
				e.program(ctx, true)
			}
		case <-e.dirty:
			e.program(ctx, true)
		case <-tick.C:
			e.onConnect(ctx)
		}
	}
}

// onConnect reinstalls the meters after each new OpenFlow connection
// (ovs-vswitchd may have restarted and lost them, and then its replay could
// not add the flows that use them), deletes rule meters an earlier run
// left behind, and on a reconnect re-adds what the replay missed.
func (e *ruleEngine) onConnect(ctx context.Context) {
	st := e.a.intSw.Stats()
	e.mu.Lock()
	seen := e.connects
	e.mu.Unlock()
	if st.Connects == seen || !e.a.intSw.Connected() {
		return
	}
	e.mu.Lock()
	e.connects = st.Connects
	clear(e.installed)
	e.mu.Unlock()
	e.program(ctx, true)
	if ms, err := e.a.intSw.MeterStats(ctx, openflow.MeterAll); err == nil {
		e.mu.Lock()
		used := map[uint32]bool{}
		for _, id := range e.meters {
			used[id] = true
		}
		e.mu.Unlock()
		var dels []openflow.Message
		for _, m := range ms {
			if m.MeterID >= firstRuleMeter && !used[m.MeterID] {
				dels = append(dels, &openflow.MeterMod{Command: openflow.MeterDelete, MeterID: m.MeterID})
			}
		}
		if err := e.a.intSw.Apply(ctx, dels...); err != nil {
			e.log.Warn("delete stale rule meters", "err", err)
		}
	}
	if st.Connects > 1 {
		if _, err := e.a.intSw.Reconcile(ctx); err != nil {
			e.log.Warn("reconcile br-int after reconnect", "err", err)
		}
	}
}

// localEndpoints returns this host's containers, name → IP, and a
// fingerprint of them.
func (e *ruleEngine) localEndpoints() (map[string]netip.Addr, string) {
	e.a.mu.Lock()
	defer e.a.mu.Unlock()
	out := make(map[string]netip.Addr, len(e.a.endpoints))
	keys := make([]string, 0, len(e.a.endpoints))
	for n, ep := range e.a.endpoints {
		out[n] = ep.IP
		keys = append(keys, n+"="+ep.IP.String())
	}
	sort.Strings(keys)
	return out, strings.Join(keys, ",")
}

// program makes the rule flows and meters equal to the rules resolved
// against the current containers. force=false skips the work when the
// local containers did not change.
func (e *ruleEngine) program(ctx context.Context, force bool) {
	e.progMu.Lock()
	defer e.progMu.Unlock()
	local, fp := e.localEndpoints()
	e.mu.Lock()
	if !force && fp == e.lastLocal {
		e.mu.Unlock()
		return
	}
	e.lastLocal = fp
	rs := make([]rules.Rule, 0, len(e.rules))
	needRemote := false
	for _, r := range e.rules {
		rs = append(rs, r)
		needRemote = needRemote || r.Remote.Name != ""
	}
	e.mu.Unlock()
	sort.Slice(rs, func(i, j int) bool { return rs[i].ID < rs[j].ID })
	e.followRemote(ctx, needRemote)

	if err := e.ensureMeters(ctx, rs); err != nil {
		// Their rules stay off the switch until the meter is in.
		e.log.Warn("install rule meters; retrying", "err", err)
		time.AfterFunc(time.Second, e.markDirty)
	}
	e.mu.Lock()
	fs, cookies, notes, nflows := e.build(rs, local)
	if err := e.checkLimit(len(fs)); err != nil {
		// The previous rule flows stay installed; every rule says why.
		for _, r := range rs {
			notes[r.ID] = err.Error()
		}
		e.notes = notes
		e.mu.Unlock()
		e.log.Error("rules not applied", "err", err)
		return
	}
	e.cookies, e.notes, e.nflows = cookies, notes, nflows
	e.mu.Unlock()
	if err := e.a.intSw.SetDesired(ctx, rulesOwner, fs); err != nil {
		e.log.Error("install rule flows; retrying", "err", err)
		time.AfterFunc(time.Second, e.markDirty)
		return
	}
	e.dropUnusedMeters(ctx, rs)
}

// build resolves rs against local and returns their flows (the first rule
// by id gets a flow two rules produce), the cookie ids, notes and flow
// counts by rule. Called with e.mu held.
func (e *ruleEngine) build(rs []rules.Rule, local map[string]netip.Addr) ([]*openflow.FlowMod, map[uint64]string, map[string]string, map[string]int) {
	var fs []*openflow.FlowMod
	seen := map[string]bool{}
	cookies := map[uint64]string{}
	notes := map[string]string{}
	nflows := map[string]int{}
	for _, r := range rs {
		rr, note := e.resolve(r, local)
		if note != "" {
			notes[r.ID] = note
		}
		if rr == nil {
			continue
		}
		cookies[rr.ID] = r.ID
		for _, f := range flows.RuleFlows(*rr) {
			// Two rules with the same priority and action may produce the
			// same flow; the first (by id) gets it.
			k := fmt.Sprintf("%d/%d/%s", f.Table, f.Priority, f.Match.String())
			if seen[k] {
				continue
			}
			seen[k] = true
			fs = append(fs, f)
			nflows[r.ID]++
		}
	}
	return fs, cookies, notes, nflows
}

// checkLimit enforces rule_max_flows, the global bound on rule flows.
func (e *ruleEngine) checkLimit(n int) error {
	return ruleFlowLimit(n, e.a.cfg.RuleMaxFlows)
}

func ruleFlowLimit(n, limit int) error {
	if n > limit {
		return fmt.Errorf("rules need %d flows on this host, above the limit of %d (rule_max_flows in the agent config): narrow or remove rules, or raise rule_max_flows", n, limit)
	}
	return nil
}

// checkWith reports whether the rules with r added (or replacing the rule
// with its id) stay within rule_max_flows on this host.
func (e *ruleEngine) checkWith(r rules.Rule) error {
	local, _ := e.localEndpoints()
	e.mu.Lock()
	defer e.mu.Unlock()
	rs := make([]rules.Rule, 0, len(e.rules)+1)
	for id, old := range e.rules {
		if id != r.ID {
			rs = append(rs, old)
		}
	}
	rs = append(rs, r)
	sort.Slice(rs, func(i, j int) bool { return rs[i].ID < rs[j].ID })
	fs, _, _, _ := e.build(rs, local)
	return e.checkLimit(len(fs))
}

// resolve turns a rule into what this host enforces, or nil (with a note
// when that is a problem rather than "selects nothing here").
func (e *ruleEngine) resolve(r rules.Rule, local map[string]netip.Addr) (*flows.ResolvedRule, string) {
	rr := &flows.ResolvedRule{ID: ruleCookieID(r.ID), Priority: uint16(r.Priority), Ingress: r.Direction == rules.Ingress, ICMPType: -1}
	var ok bool
	if rr.Local, ok = selectPrefixes(r.Local, maps.All(local)); !ok {
		return nil, ""
	}
	if rr.Remote, ok = selectPrefixes(r.Remote, func(yield func(string, netip.Addr) bool) {
		for ip, n := range e.remote {
			if !yield(n, ip) {
				return
			}
		}
	}); !ok {
		return nil, ""
	}
	sortPrefixes(rr.Local)
	sortPrefixes(rr.Remote)
	switch r.Protocol {
	case rules.ProtoTCP:
		rr.Proto = flows.ProtoTCP
	case rules.ProtoUDP:
		rr.Proto = flows.ProtoUDP
	case rules.ProtoICMP:
		rr.Proto = flows.ProtoICMP
	}
	if r.Ports != "" {
		rr.PortLo, rr.PortHi, _ = rules.ParsePorts(r.Ports)
	}
	if r.ICMPType != nil {
		rr.ICMPType = int16(*r.ICMPType)
	}
	switch r.Action {
	case rules.Allow:
		rr.Action = flows.RuleAllow
	case rules.Deny:
		rr.Action = flows.RuleDeny
	case rules.RateLimit:
		rr.Action = flows.RuleMeter
		id, ok := e.meters[r.ID]
		if !ok || e.installed[id] != *r.Rate {
			return nil, "meter not installed (yet)"
		}
		rr.Meter = id
	}
	if n := flows.RuleFlowCount(*rr); n > maxRuleFlows {
		e.log.Error("rule not enforced: too many flows; use CIDRs or fewer name matches", "rule", r.ID, "flows", n, "max", maxRuleFlows)
		return nil, fmt.Sprintf("NOT ENFORCED: %d flows > %d", n, maxRuleFlows)
	}
	return rr, ""
}

func sortPrefixes(ps []netip.Prefix) {
	sort.Slice(ps, func(i, j int) bool { return ps[i].Addr().Less(ps[j].Addr()) })
}

// ruleCookieID names a rule in its flows' cookies: 48 bits of a hash of
// its id, the same on every host.
func ruleCookieID(id string) uint64 {
	h := fnv.New64a()
	h.Write([]byte(id))
	return h.Sum64() & (1<<48 - 1)
}

// ensureMeters gives every rate-limit rule a meter on the switch with its
// current rate. Without a connection it does nothing: the flows wait.
func (e *ruleEngine) ensureMeters(ctx context.Context, rs []rules.Rule) error {
	if !e.a.intSw.Connected() {
		return nil
	}
	var errs []error
	for _, r := range rs {
		if r.Action != rules.RateLimit {
			continue
		}
		e.mu.Lock()
		id, ok := e.meters[r.ID]
		if !ok {
			id = e.nextMeter
			e.nextMeter++
			e.meters[r.ID] = id
		}
		have, inst := e.installed[id]
		e.mu.Unlock()
		if inst && have == *r.Rate {
			continue
		}
		rate := *r.Rate
		mm := flows.RuleMeterMod(openflow.MeterAdd, id, rate.Kbps != 0, rate.PPS+rate.Kbps, rate.EffectiveBurst())
		if inst {
			mm.Command = openflow.MeterModify
		}
		err := e.a.intSw.Apply(ctx, mm)
		var em *openflow.ErrorMsg
		if errors.As(err, &em) && em.ErrType == openflow.ErrTypeMeterModFailed && em.Code == 1 { // OFPMMFC_METER_EXISTS: left by an earlier run
			mm.Command = openflow.MeterModify
			err = e.a.intSw.Apply(ctx, mm)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("install meter %d of rule %s (%s): %w", id, r.ID, rate, err))
			continue
		}
		e.mu.Lock()
		e.installed[id] = rate
		e.mu.Unlock()
	}
	return errors.Join(errs...)
}

// dropUnusedMeters deletes the meters of rules that are gone or no longer
// rate limits, after their flows are gone.
func (e *ruleEngine) dropUnusedMeters(ctx context.Context, rs []rules.Rule) {
	keep := map[string]bool{}
	for _, r := range rs {
		if r.Action == rules.RateLimit {
			keep[r.ID] = true
		}
	}
	e.mu.Lock()
	var dels []openflow.Message
	var ids []uint32
	for rid, id := range e.meters {
		if !keep[rid] {
			dels = append(dels, &openflow.MeterMod{Command: openflow.MeterDelete, MeterID: id})
			ids = append(ids, id)
			delete(e.meters, rid)
		}
	}
	e.mu.Unlock()
	if len(dels) == 0 || !e.a.intSw.Connected() {
		return
	}
	if err := e.a.intSw.Apply(ctx, dels...); err != nil {
		e.log.Warn("delete unused rule meters", "meters", ids, "err", err)
	}
	e.mu.Lock()
	for _, id := range ids {
		delete(e.installed, id)
	}
	e.mu.Unlock()
}

// followRemote keeps a cluster-wide endpoint view while some rule has a
// remote name glob (only then does an agent need other hosts' container
// names). It lists synchronously first, so such a rule is enforced from
// its first programming on.
func (e *ruleEngine) followRemote(ctx context.Context, need bool) {
	e.mu.Lock()
	running := e.stopEPs != nil
	if !need && running {
		e.stopEPs()
		e.stopEPs, e.remote = nil, nil
	}
	e.mu.Unlock()
	if !need || running {
		return
	}
	remote := map[netip.Addr]string{}
	lctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	eps, err := e.a.reg.ListEndpoints(lctx, registry.EndpointFilter{})
	cancel()
	if err != nil {
		e.log.Warn("list the cluster's endpoints for remote name globs; following the watch", "err", err)
	}
	for _, ep := range eps {
		remote[ep.IP] = ep.Name
	}
	wctx, stop := context.WithCancel(ctx)
	e.mu.Lock()
	e.stopEPs, e.remote = stop, remote
	e.mu.Unlock()
	evs := e.a.reg.WatchEndpoints(wctx, registry.EndpointFilter{})
	go func() {
		for ev := range evs {
			e.mu.Lock()
			if wctx.Err() != nil {
				e.mu.Unlock()
				return
			}
			switch ev.Type {
			case registry.EventPut:
				remote[ev.Value.IP] = ev.Value.Name
			case registry.EventDelete:
				delete(remote, ev.Value.IP)
			}
			e.mu.Unlock()
			if len(evs) == 0 {
				e.markDirty()
			}
		}
	}()
}

// Stats reads this host's counters per rule from the rule tables' flow
// stats and the meters' stats.
func (e *ruleEngine) Stats(ctx context.Context) ([]api.RuleStats, error) {
	e.mu.Lock()
	byID := map[string]*api.RuleStats{}
	var out []*api.RuleStats
	for _, r := range e.rules {
		s := &api.RuleStats{ID: r.ID, Direction: string(r.Direction), Action: string(r.Action),
			Flows: e.nflows[r.ID], Note: e.notes[r.ID], Meter: e.meters[r.ID]}
		byID[r.ID] = s
		out = append(out, s)
	}
	cookies := e.cookies
	e.mu.Unlock()
	for _, t := range []flows.IntTable{flows.EgressRules, flows.IngressRules} {
		st, err := e.a.intSw.FlowStats(ctx, &openflow.FlowStatsRequest{Table: uint8(t), OutPort: openflow.PortAny, OutGroup: openflow.GroupAny,
			Cookie: flows.Cookie(flows.CatRule, 0), CookieMask: flows.CategoryMask})
		if err != nil {
			return nil, fmt.Errorf("dump %s: %w", t.Name(), err)
		}
		for _, f := range st {
			if s := byID[cookies[flows.CookieID(f.Cookie)]]; s != nil {
				s.Packets += f.PacketCount
				s.Bytes += f.ByteCount
			}
		}
	}
	ms, err := e.a.intSw.MeterStats(ctx, openflow.MeterAll)
	if err != nil {
		return nil, err
	}
	byMeter := map[uint32]openflow.MeterStats{}
	for _, m := range ms {
		byMeter[m.MeterID] = m
	}
	res := make([]api.RuleStats, 0, len(out))
	for _, s := range out {
		if m, ok := byMeter[s.Meter]; ok && s.Meter != 0 {
			s.MeterPackets, s.MeterBytes = m.PacketInCount, m.ByteInCount
			for _, b := range m.Bands {
				s.DroppedPackets += b.PacketCount
				s.DroppedBytes += b.ByteCount
			}
		}
		res = append(res, *s)
	}
	sort.Slice(res, func(i, j int) bool { return res[i].ID < res[j].ID })
	return res, nil
}

// registerRuleRoutes serves rule CRUD (through etcd, cluster-wide) and
// this host's rule stats.
func (a *Agent) registerRuleRoutes(mux *http.ServeMux) {
	e := a.rules
	mux.HandleFunc("GET "+api.PathRules, a.handle(func(r *http.Request) (any, error) {
		ctx, cancel := context.WithTimeout(r.Context(), etcdAnswerTimeout)
		defer cancel()
		rs, err := e.store.List(ctx)
		if etcdUnreachable(err) {
			return nil, a.unreachableError("list rules", err)
		}
		if rs == nil {
			rs = []rules.Rule{}
		}
		return rs, err
	}))
	mux.HandleFunc("GET "+api.PathRule, a.handle(func(r *http.Request) (any, error) {
		if err := rules.ValidateID(r.PathValue("id")); err != nil {
			return nil, badRequest("%v", err)
		}
		ctx, cancel := context.WithTimeout(r.Context(), etcdAnswerTimeout)
		defer cancel()
		rule, err := e.store.Get(ctx, r.PathValue("id"))
		if etcdUnreachable(err) {
			return nil, a.unreachableError("get rule", err)
		}
		return rule, ruleErr(err)
	}))
	mux.HandleFunc("POST "+api.PathRules, a.handle(func(r *http.Request) (any, error) {
		var rule rules.Rule
		if err := decodeBody(r, &rule); err != nil {
			return nil, err
		}
		if err := a.requireEtcd("add rule " + rule.ID); err != nil {
			return nil, err
		}
		rule.Normalize()
		if err := rule.Validate(); err != nil {
			return nil, badRequest("%v", err)
		}
		if err := e.checkWith(rule); err != nil {
			return nil, badRequest("rule %s: %v", rule.ID, err)
		}
		if err := e.store.Put(r.Context(), rule, r.URL.Query().Get("replace") != ""); err != nil {
			return nil, ruleErr(err)
		}
		a.log.Info("rule stored", "rule", rule.ID, "summary", rule.Summary())
		return rule, nil
	}))
	mux.HandleFunc("DELETE "+api.PathRule, a.handle(func(r *http.Request) (any, error) {
		id := r.PathValue("id")
		if err := rules.ValidateID(id); err != nil {
			return nil, badRequest("%v", err)
		}
		if err := a.requireEtcd("delete rule " + id); err != nil {
			return nil, err
		}
		if err := e.store.Delete(r.Context(), id); err != nil {
			return nil, ruleErr(err)
		}
		a.log.Info("rule deleted", "rule", id)
		return map[string]string{"deleted": id}, nil
	}))
	mux.HandleFunc("GET "+api.PathRuleStats, a.handle(func(r *http.Request) (any, error) { return e.Stats(r.Context()) }))
}

// ruleErr classifies store errors the caller caused as bad requests.
func ruleErr(err error) error {
	if errors.Is(err, store.ErrExists) || errors.Is(err, store.ErrNotFound) {
		return badRequest("%v", err)
	}
	return err
}

// selectPrefixes resolves a rule's selector: a name pattern to the /32s of
// the matching endpoints (ok false when none matches, so the rule has
// nothing to apply to), a CIDR to itself, an empty selector to nothing.
func selectPrefixes(s rules.Selector, endpoints iter.Seq2[string, netip.Addr]) (ps []netip.Prefix, ok bool) {
	switch {
	case s.Name != "":
		for n, ip := range endpoints {
			if s.Matches(n) {
				ps = append(ps, netip.PrefixFrom(ip, 32))
			}
		}
		return ps, len(ps) > 0
	case s.CIDR != "":
		p, _ := s.Prefix()
		return []netip.Prefix{p}, true
	}
	return nil, true
}
