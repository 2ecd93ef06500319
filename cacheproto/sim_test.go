package cacheproto

import (
	"container/heap"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"runtime"
	"runtime/debug"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keyroute/keyroute/keyalloc"
)

// The simulator runs 2–3 hosts' machines against a model of etcd
// (records, revisions, ordered watch streams), of each host's OVS
// (EgressCache and Restore entries, idle expiry, FLOW_REMOVED) and
// controller (desired set, replay on reconnect, confirmed installs), and
// of the fabric (keyed packets with delays up to maxFabricDelay). A random
// schedule per seed mixes traffic with faults: delayed and reordered
// results, lost FLOW_REMOVED and punts, lost watch events, switch
// disconnects, agent restarts with and without an OVS restart, etcd
// outages, records deleted by an operator while their sender's agent is
// down, detach and re-attach, 1–3 DSCPs; in half the schedules hosts have
// one or two key addresses each, so keys are (source address,
// destination address, DSCP) triples, a keyed packet goes to the host
// that owns its destination address, and a host may drop its extra
// address (with an agent restart; its peers see its record change). After every step it checks the
// invariant (docs/DESIGN.md "Cache protocol v2") on the flows and on every
// keyed packet that arrives; after the faults stop (losses too), it checks
// liveness.
//
//	go test ./cacheproto -run TestSimulate -schedules 1000000
//	go test ./cacheproto -run TestSimulate -seed 12345 -v   # replay one, with its trace

var (
	flagSchedules = flag.Int("schedules", 100000, "random schedules TestSimulate runs")
	flagSeed      = flag.Uint64("seed", 0, "run only this schedule, printing its trace")
)

const (
	maxFabricDelay = 800 * time.Millisecond // below simConfig's Quarantine
	sendIdle       = 3 * time.Second
	faultPhase     = 25 * time.Second // faults happen before this
	calmPhase      = 15 * time.Second // then traffic only, for liveness
)

var simConfig = Config{Quarantine: time.Second, PendingTimeout: 4 * time.Second, Retry: 300 * time.Millisecond, PuntGrace: time.Second}

func TestSimulate(t *testing.T) {
	if *flagSeed != 0 {
		if err := simulate(*flagSeed, true, t.Logf); err != nil {
			t.Fatal(err)
		}
		return
	}
	n := *flagSchedules
	if testing.Short() {
		n = min(n, 2000)
	}
	// Schedules allocate small objects at a high rate; fewer collections
	// make the CI budget of 100,000 schedules.
	defer debug.SetGCPercent(debug.SetGCPercent(1000))
	base := uint64(time.Now().UnixNano())
	workers := max(1, runtime.GOMAXPROCS(0))
	type result struct {
		steps, packets, drops, swaps int
		seed                         uint64
		err                          error
	}
	results := make(chan result, workers)
	var next atomic.Int64
	var failed atomic.Bool
	for range workers {
		go func() {
			var r result
			for !failed.Load() {
				i := next.Add(1) - 1
				if i >= int64(n) {
					break
				}
				seed := base + uint64(i)*0x9e3779b97f4a7c15 | 1
				s, err := runSchedule(seed)
				if err != nil {
					failed.Store(true)
					r.seed, r.err = seed, err
					break
				}
				r.steps += s.steps
				r.packets += s.delivered
				r.drops += s.dropped
				r.swaps += s.swaps
			}
			results <- r
		}()
	}
	var total result
	for range workers {
		r := <-results
		if r.err != nil && total.err == nil {
			total.seed, total.err = r.seed, r.err
		}
		total.steps += r.steps
		total.packets += r.packets
		total.drops += r.drops
		total.swaps += r.swaps
	}
	if total.err != nil {
		t.Fatalf("%v\nreplay with: go test ./cacheproto -run TestSimulate -seed %d -v", total.err, total.seed)
	}
	t.Logf("%d schedules, %d steps, %d keyed packets restored right, %d dropped for want of a Restore entry, %d key swaps; no invariant broken",
		n, total.steps, total.packets, total.drops, total.swaps)
	if n >= 1000 && total.swaps == 0 {
		t.Fatalf("%d schedules and not one key swap: the simulator no longer exercises eviction", n)
	}
}

func runSchedule(seed uint64) (*sim, error) {
	s := newSim(seed, false, nil)
	return s, s.run()
}

func simulate(seed uint64, trace bool, logf func(string, ...any)) error {
	s := newSim(seed, trace, logf)
	err := s.run()
	if trace {
		for _, l := range s.log {
			logf("%s", l)
		}
	}
	return err
}

// ----------------------------------------------------------------------
// The world.

type simEtcd struct {
	rev     int64
	down    bool
	records map[string]*keyalloc.Record // "src/dst/k"
}

func recKey(src, dst string, k Key) string {
	return fmt.Sprintf("%s/%s/%s/%s/%d", src, dst, k.Src, k.Dst, k.DSCP)
}

type ovsEgress struct {
	nextHop  net.HardwareAddr
	peer     string
	state    State
	key      Key
	lastUsed time.Duration
}

type ovsRestore struct{ pair Pair }

type simHost struct {
	name  string
	ip    int
	local map[netip.Addr]bool
	addrs []netip.Addr // key addresses (underlay IP, underlay_ips)

	// OVS.
	egress  map[Pair]*ovsEgress
	restore map[RecvKey]ovsRestore

	// The controller of the running agent: its recorded desired set and
	// whether the switch is connected and replayed.
	connected bool
	complete  bool
	dSend     []FlowSend
	dRestore  []FlowRestore

	// The agent.
	m   *Machine
	inc int // incarnation; results for an older one are lost
}

type simEvent struct {
	at  time.Duration
	seq int
	fn  func()
}

type eventQueue []*simEvent

func (q eventQueue) Len() int { return len(q) }
func (q eventQueue) Less(i, j int) bool {
	if q[i].at != q[j].at {
		return q[i].at < q[j].at
	}
	return q[i].seq < q[j].seq
}
func (q eventQueue) Swap(i, j int) { q[i], q[j] = q[j], q[i] }
func (q *eventQueue) Push(x any)   { *q = append(*q, x.(*simEvent)) }
func (q *eventQueue) Pop() any {
	old := *q
	e := old[len(old)-1]
	*q = old[:len(old)-1]
	return e
}

type sim struct {
	rnd   *rand.Rand
	seed  uint64
	now   time.Duration
	epoch time.Time
	q     eventQueue
	seq   int
	hosts []*simHost
	etcd  simEtcd
	keys  []uint8 // DSCPs
	// Per-stream FIFO: the time the last event of each watch stream is due,
	// so that streams stay ordered whatever their delays.
	streamAt map[string]time.Duration
	active   map[Pair]bool // pairs sending traffic
	// rate is what each pair carries while active (bytes/s), skewed so
	// that eviction has busy and quiet pairs to tell apart; evict says
	// whether this schedule's agents run with Eviction.
	rate   map[Pair]float64
	evict  bool
	swaps  int
	pairs  []Pair
	hostOf map[netip.Addr]*simHost
	// addrOwner is the host of each key address: where the fabric takes
	// a keyed packet. formerOwner keeps the host of an address it
	// dropped (a keyed packet to it is lost; its OVS may still send from
	// it until its agent's reconcile).
	addrOwner, formerOwner map[netip.Addr]*simHost

	// Fault rates, drawn per schedule.
	pLoseFR, pLosePunt, pLoseWatch, pCommitLost float64

	trace     bool
	logf      func(string, ...any)
	log       []string
	steps     int
	delivered int
	dropped   int
	fail      error // a misdelivery found by arrive
	// flowsChanged says an OVS table changed since the last check.
	flowsChanged bool
}

func newSim(seed uint64, trace bool, logf func(string, ...any)) *sim {
	s := &sim{rnd: rand.New(rand.NewPCG(seed, seed^0x5eed)), seed: seed, epoch: time.Unix(1e9, 0),
		etcd: simEtcd{records: map[string]*keyalloc.Record{}}, streamAt: map[string]time.Duration{},
		active: map[Pair]bool{}, rate: map[Pair]float64{}, hostOf: map[netip.Addr]*simHost{}, addrOwner: map[netip.Addr]*simHost{}, formerOwner: map[netip.Addr]*simHost{},
		trace: trace, logf: logf}
	nh := 2 + s.rnd.IntN(2)
	for k := range 1 + s.rnd.IntN(3) {
		s.keys = append(s.keys, uint8(7+k))
	}
	multi := s.rnd.IntN(2) == 0
	for i := range nh {
		h := &simHost{name: fmt.Sprintf("h%d", i+1), ip: i + 1, local: map[netip.Addr]bool{},
			egress: map[Pair]*ovsEgress{}, restore: map[RecvKey]ovsRestore{}}
		na := 1
		if multi {
			na += s.rnd.IntN(2)
		}
		for a := range na {
			ip := netip.AddrFrom4([4]byte{198, 18, byte(a), byte(i + 1)})
			h.addrs = append(h.addrs, ip)
			s.addrOwner[ip] = h
		}
		for c := range 2 {
			ip := netip.AddrFrom4([4]byte{10, byte(i + 1), 0, byte(c + 1)})
			h.local[ip] = true
			s.hostOf[ip] = h
		}
		s.hosts = append(s.hosts, h)
	}
	for ip, h := range s.hostOf {
		for ip2, h2 := range s.hostOf {
			if h != h2 {
				s.pairs = append(s.pairs, Pair{ip, ip2})
			}
		}
	}
	slices.SortFunc(s.pairs, comparePair)
	for _, p := range s.pairs {
		if s.rnd.IntN(3) > 0 {
			s.active[p] = true
		}
		s.rate[p] = []float64{10, 1e3, 1e5, 1e7}[s.rnd.IntN(4)]
	}
	s.evict = s.rnd.IntN(2) == 0
	s.pLoseFR = []float64{0, 0.1, 0.5}[s.rnd.IntN(3)]
	s.pLosePunt = []float64{0, 0.2}[s.rnd.IntN(2)]
	s.pLoseWatch = []float64{0, 0, 0.1}[s.rnd.IntN(3)]
	s.pCommitLost = []float64{0, 0.1}[s.rnd.IntN(2)]
	return s
}

// lose draws whether a message is lost, with probability p during the
// fault phase; after it nothing is lost.
func (s *sim) lose(p float64) bool {
	return s.now < faultPhase && s.rnd.Float64() < p
}

func (s *sim) logt(format string, args ...any) {
	if s.trace {
		s.log = append(s.log, fmt.Sprintf("%8.3fs ", s.now.Seconds())+fmt.Sprintf(format, args...))
	}
}

func (s *sim) at(d time.Duration, fn func()) {
	s.seq++
	heap.Push(&s.q, &simEvent{at: s.now + d, seq: s.seq, fn: fn})
}

func (s *sim) delay() time.Duration { return time.Duration(s.rnd.IntN(60)) * time.Millisecond }

func (s *sim) wall() time.Time { return s.epoch.Add(s.now) }

func (s *sim) host(name string) *simHost {
	for _, h := range s.hosts {
		if h.name == name {
			return h
		}
	}
	return nil
}

// stream schedules fn on an ordered stream (a watch) of host h.
func (s *sim) stream(name string, fn func()) {
	at := max(s.now+s.delay(), s.streamAt[name])
	s.streamAt[name] = at
	s.seq++
	heap.Push(&s.q, &simEvent{at: at, seq: s.seq, fn: fn})
}

// ----------------------------------------------------------------------
// The run.

func (s *sim) run() error {
	for _, h := range s.hosts {
		s.startAgent(h, false)
	}
	// Traffic: every active pair sends every 100–400 ms, with pauses.
	for _, p := range s.pairs {
		s.at(time.Duration(s.rnd.IntN(500))*time.Millisecond, s.sender(p))
	}
	// Ticks, rates and anti-entropy.
	for _, h := range s.hosts {
		s.at(100*time.Millisecond, s.ticker(h))
		s.at(time.Duration(500+s.rnd.IntN(1000))*time.Millisecond, s.rates(h))
		s.at(time.Duration(2000+s.rnd.IntN(2000))*time.Millisecond, s.antiEntropy(h))
	}
	// Faults.
	for t := time.Duration(0); t < faultPhase; t += time.Duration(500+s.rnd.IntN(3000)) * time.Millisecond {
		s.seq++
		heap.Push(&s.q, &simEvent{at: t, seq: s.seq, fn: s.fault()})
	}
	end := faultPhase + calmPhase
	for s.q.Len() > 0 {
		e := heap.Pop(&s.q).(*simEvent)
		if e.at > end {
			break
		}
		s.now = e.at
		e.fn()
		s.steps++
		if err := s.check(); err != nil {
			return fmt.Errorf("seed %d at %s: %w", s.seed, s.now, err)
		}
	}
	return s.liveness()
}

func (s *sim) ticker(h *simHost) func() {
	var fn func()
	fn = func() {
		// OVS's idle expiry runs whether or not an agent does.
		s.expire(h)
		if h.m != nil {
			s.apply(h, h.m.Tick(s.wall()))
		}
		s.at(250*time.Millisecond, fn)
	}
	return fn
}

// rates reports every local pair's traffic, as the agent reads it from
// its EgressCache counters: what the pair sends while active.
func (s *sim) rates(h *simHost) func() {
	var fn func()
	fn = func() {
		defer s.at(time.Duration(1000+s.rnd.IntN(1000))*time.Millisecond, fn)
		if h.m == nil {
			return
		}
		r := map[Pair]float64{}
		for _, p := range s.pairs {
			if h.local[p.Src] && s.active[p] {
				r[p] = s.rate[p]
			}
		}
		before := h.m.Count.Swaps
		s.apply(h, h.m.Rates(s.wall(), r))
		if n := h.m.Count.Swaps - before; n > 0 {
			s.swaps += int(n)
			s.logt("%s: %d key swaps", h.name, n)
		}
	}
	return fn
}

func (s *sim) antiEntropy(h *simHost) func() {
	var fn func()
	fn = func() {
		defer s.at(time.Duration(2000+s.rnd.IntN(2000))*time.Millisecond, fn)
		if h.m == nil || !h.connected || s.etcd.down {
			return
		}
		gen := h.m.confirmed
		egress := map[Pair]Key{}
		for p, f := range h.egress {
			egress[p] = f.key
		}
		sent, recv := s.list(h)
		rev := s.etcd.rev
		m, inc := h.m, h.inc
		// The reads take a while; events in between are processed first.
		s.at(s.delay(), func() {
			if h.inc == inc {
				before := fmt.Sprint(m.Count.Repairs)
				s.apply(h, m.AntiEntropy(s.wall(), gen, egress, sent, recv, rev))
				if after := fmt.Sprint(m.Count.Repairs); after != before {
					s.logt("%s: anti-entropy repairs %s", h.name, after)
				}
			}
		})
	}
	return fn
}

// accepts is the receiving agent's check of a record (agent validRecv):
// the destination is one of h's containers, the key's destination one of
// h's addresses and its source one of the sender's.
func (s *sim) accepts(h *simHost, r keyalloc.Record) bool {
	return h.local[r.Dst] && slices.Contains(h.addrs, r.Key.Dst) && slices.Contains(s.host(r.SrcHost).addrs, r.Key.Src)
}

// list reads h's records as sender and the valid ones towards it.
func (s *sim) list(h *simHost) (sent, recv []keyalloc.Record) {
	for _, r := range s.etcd.records {
		if r.SrcHost == h.name {
			sent = append(sent, *r)
		}
		if r.DstHost == h.name && s.accepts(h, *r) {
			idx := *r
			idx.State = keyalloc.StatePending // the pair index carries no state
			recv = append(recv, idx)
		}
	}
	order := func(a, b keyalloc.Record) int {
		return strings.Compare(recKey(a.SrcHost, a.DstHost, a.Key), recKey(b.SrcHost, b.DstHost, b.Key))
	}
	slices.SortFunc(sent, order)
	slices.SortFunc(recv, order)
	return sent, recv
}

func (s *sim) sender(p Pair) func() {
	var fn func()
	fn = func() {
		defer s.at(time.Duration(250+s.rnd.IntN(750))*time.Millisecond, fn)
		if !s.active[p] {
			return
		}
		src := s.hostOf[p.Src]
		if !src.local[p.Src] {
			return
		}
		dst := s.hostOf[p.Dst]
		f, ok := src.egress[p]
		if !ok {
			// Miss: VXLAN (always right) and a punt.
			if src.m != nil && !s.lose(s.pLosePunt) {
				m, inc := src.m, src.inc
				s.at(s.delay(), func() {
					if src.inc == inc {
						s.apply(src, m.Punt(s.wall(), p, dst.name, net.HardwareAddr{2, 0, 0, 0, 0, byte(dst.ip)}))
					}
				})
			}
			return
		}
		f.lastUsed = s.now
		if f.state != StateReady {
			return // VXLAN
		}
		// The fabric takes the packet to whoever owns the key's
		// destination address, not to the pair's host.
		key := f.key
		s.at(time.Duration(s.rnd.Int64N(int64(maxFabricDelay))), func() { s.arrive(key, p) })
	}
	return fn
}

// owner is the host of a key address, or the host that dropped it.
func (s *sim) owner(a netip.Addr) *simHost {
	if h := s.addrOwner[a]; h != nil {
		return h
	}
	return s.formerOwner[a]
}

// validKey is the agents' view of a key after an address change: both
// its addresses still belong to a host.
func (s *sim) validKey(k Key) bool { return s.addrOwner[k.Src] != nil && s.addrOwner[k.Dst] != nil }

// misdelivery is set by arrive and returned by check.
var errMisdelivery = errors.New("misdelivery")

// arrive is a keyed packet reaching the host of its key's destination
// address, whose Restore entries match the whole key (the peer is implied
// by the source address).
func (s *sim) arrive(key Key, sent Pair) {
	h, from := s.addrOwner[key.Dst], s.owner(key.Src)
	if h == nil && s.formerOwner[key.Dst] != nil {
		s.dropped++
		s.logt("keyed packet %s->%s key %s dropped (destination address dropped)", sent.Src, sent.Dst, key)
		return
	}
	if h == nil || from == nil {
		s.fail = fmt.Errorf("%w: packet %s->%s sent with key %s on unknown addresses", errMisdelivery, sent.Src, sent.Dst, key)
		return
	}
	r, ok := h.restore[RecvKey{from.name, key}]
	if !ok {
		s.dropped++
		s.logt("%s: keyed packet %s->%s key %s from %s dropped (no Restore)", h.name, sent.Src, sent.Dst, key, from.name)
		return
	}
	if r.pair != sent {
		s.fail = fmt.Errorf("%w: %s restored key %s from %s as %s->%s, the packet was sent for %s->%s",
			errMisdelivery, h.name, key, from.name, r.pair.Src, r.pair.Dst, sent.Src, sent.Dst)
		return
	}
	s.delivered++
}

// ----------------------------------------------------------------------
// Faults.

func (s *sim) fault() func() {
	return func() {
		h := s.hosts[s.rnd.IntN(len(s.hosts))]
		switch s.rnd.IntN(10) {
		case 0: // switch disconnect
			if h.connected {
				s.logt("%s: switch disconnected", h.name)
				h.connected = false
				s.at(time.Duration(200+s.rnd.IntN(3000))*time.Millisecond, func() { s.reconnect(h) })
			}
		case 1: // agent restart, OVS keeps its flows
			s.restart(h, false)
		case 2: // agent and OVS restart
			s.restart(h, true)
		case 3: // etcd outage
			if !s.etcd.down {
				s.logt("etcd down")
				s.etcd.down = true
				s.at(time.Duration(500+s.rnd.IntN(4000))*time.Millisecond, func() { s.logt("etcd up"); s.etcd.down = false })
			}
		case 4: // detach a container and attach it again later (same IP)
			var ips []netip.Addr
			for ip := range h.local {
				if h.local[ip] {
					ips = append(ips, ip)
				}
			}
			if len(ips) == 0 {
				return
			}
			slices.SortFunc(ips, netip.Addr.Compare)
			ip := ips[s.rnd.IntN(len(ips))]
			s.logt("%s: detach %s", h.name, ip)
			h.local[ip] = false
			if h.m != nil {
				s.apply(h, h.m.Detach(s.wall(), ip))
			}
			s.at(time.Duration(500+s.rnd.IntN(3000))*time.Millisecond, func() { s.logt("%s: attach %s", h.name, ip); h.local[ip] = true })
		case 5, 6: // traffic pattern changes
			p := s.pairs[s.rnd.IntN(len(s.pairs))]
			s.active[p] = !s.active[p]
		case 7: // a burst of idle expiry: every entry of h idles out now
			for p, f := range h.egress {
				f.lastUsed = s.now - sendIdle
				_ = p
			}
		case 8: // an operator deletes a record of a sender whose agent is down
			// While a sender's agent runs only it deletes its records
			// (DESIGN.md "Cache protocol v2", the model's assumptions).
			if s.etcd.down || len(s.etcd.records) == 0 {
				return
			}
			ks := make([]string, 0, len(s.etcd.records))
			for k, r := range s.etcd.records {
				if src := s.host(r.SrcHost); src.m == nil {
					ks = append(ks, k)
				}
			}
			if len(ks) == 0 {
				return
			}
			slices.Sort(ks)
			r := *s.etcd.records[ks[s.rnd.IntN(len(ks))]]
			s.logt("etcd: record %s->%s key %s deleted by someone else", r.SrcHost, r.DstHost, r.Key)
			_ = s.release(r)
		case 9: // the operator drops h's extra address (its agent restarts)
			if len(h.addrs) < 2 {
				return
			}
			lost := h.addrs[len(h.addrs)-1]
			s.logt("%s: drops address %s", h.name, lost)
			h.addrs = h.addrs[:len(h.addrs)-1]
			delete(s.addrOwner, lost)
			s.formerOwner[lost] = h
			s.restart(h, false)
			// Peers see its host record change (agent.watchHosts).
			for _, p := range s.hosts {
				if p != h {
					// Not lost: the host watch resyncs with a snapshot,
					// which the agent compares with what it had.
					if p.m == nil {
						continue // its start drains
					}
					m, inc, peer := p.m, p.inc, p
					s.stream(p.name+"/hosts", func() {
						if peer.inc == inc {
							s.apply(peer, m.KeysGone(s.wall(), h.name, s.validKey))
						}
					})
				}
			}
		}
	}
}

func (s *sim) reconnect(h *simHost) {
	if h.m == nil || h.connected {
		return
	}
	s.logt("%s: switch reconnected, replay", h.name)
	s.replay(h)
	h.connected = true
}

// replay is the controller's replay on connect: the recorded desired set
// is added; once complete (after the start-up reconcile) undesired cache
// flows go too.
func (s *sim) replay(h *simHost) {
	s.flowsChanged = true
	if h.complete {
		for p := range h.egress {
			if !slices.ContainsFunc(h.dSend, func(f FlowSend) bool { return f.Pair == p }) {
				delete(h.egress, p)
			}
		}
		ks := make([]RecvKey, 0, len(h.restore))
		for k := range h.restore {
			ks = append(ks, k)
		}
		slices.SortFunc(ks, compareRecvKey)
		for _, k := range ks {
			if !slices.ContainsFunc(h.dRestore, func(f FlowRestore) bool { return f.Peer == k.Peer && f.Key == k.Key }) {
				s.logt("%s: Restore key %s from %s (%s->%s) removed", h.name, k.Key, k.Peer, h.restore[k].pair.Src, h.restore[k].pair.Dst)
				delete(h.restore, k)
			}
		}
	}
	for _, f := range h.dSend {
		s.putEgress(h, f)
	}
	for _, f := range h.dRestore {
		k, r := RecvKey{f.Peer, f.Key}, ovsRestore{Pair{f.Src, f.Dst}}
		if h.restore[k] != r {
			s.logt("%s: Restore key %s from %s is now %s->%s", h.name, f.Key, f.Peer, f.Src, f.Dst)
		}
		h.restore[k] = r
	}
}

func (s *sim) putEgress(h *simHost, f FlowSend) {
	cur, ok := h.egress[f.Pair]
	if ok && cur.state == f.State && cur.key == f.Key && cur.peer == f.Peer {
		return // identical: OVS keeps it, idle timer included
	}
	h.egress[f.Pair] = &ovsEgress{peer: f.Peer, state: f.State, key: f.Key, nextHop: f.NextHop, lastUsed: s.now}
	s.flowsChanged = true
}

func (s *sim) restart(h *simHost, ovsToo bool) {
	s.logt("%s: agent restart (OVS restart %v)", h.name, ovsToo)
	h.m, h.connected, h.complete, h.dSend, h.dRestore = nil, false, false, nil, nil
	h.inc++
	if ovsToo {
		h.egress, h.restore = map[Pair]*ovsEgress{}, map[RecvKey]ovsRestore{}
		s.flowsChanged = true
	}
	inc := h.inc
	s.at(time.Duration(300+s.rnd.IntN(3000))*time.Millisecond, func() {
		if h.inc == inc {
			s.startAgent(h, true)
		}
	})
}

// startAgent is the agent's start-up: it waits for etcd, loads, connects
// (the replay adds only), reconciles (undesired cache flows go), then
// serves punts.
func (s *sim) startAgent(h *simHost, restarted bool) {
	if s.etcd.down {
		inc := h.inc
		s.at(200*time.Millisecond, func() {
			if h.inc == inc {
				s.startAgent(h, restarted)
			}
		})
		return
	}
	cfg := simConfig
	cfg.Keys = len(s.keys)
	cfg.AddrPairs = func(peer string) int { return len(h.addrs) * len(s.host(peer).addrs) }
	cfg.ValidKey = func(peer string, k Key) bool {
		return s.addrOwner[k.Src] == h && s.addrOwner[k.Dst] == s.host(peer)
	}
	if s.evict {
		cfg.Eviction = Eviction{On: true, Factor: 2, MinRate: 100, Hold: time.Second, MaxSwaps: 2}
	}
	h.m = New(cfg, s.wall())
	sent, recv := s.list(h)
	egress := map[Pair]EgressFlow{}
	for p, f := range h.egress {
		ef := EgressFlow{Peer: f.peer, State: f.state, Key: f.key, NextHop: f.nextHop}
		if !ef.Key.IsZero() && !slices.Contains(h.addrs, ef.Key.Src) {
			// The agent reads the key's address from the cookie's index
			// among its addresses; one it no longer has reads as none.
			ef.Key, ef.State = Key{}, StateFallback
		}
		egress[p] = ef
	}
	s.apply(h, h.m.Start(s.wall(), sent, recv, egress, func(ip netip.Addr) bool { return h.local[ip] }))
	// The agent drains keys on addresses its peers dropped while it was
	// down (agent/cache.go start).
	for _, p := range s.hosts {
		if p != h {
			s.apply(h, h.m.KeysGone(s.wall(), p.name, s.validKey))
		}
	}
	s.replay(h)
	h.complete = true
	s.replay(h)
	h.connected = true
	s.apply(h, h.m.Reconciled(s.wall()))
}

// ----------------------------------------------------------------------
// Effects.

func (s *sim) apply(h *simHost, effs []Effect) {
	m, inc := h.m, h.inc
	back := func(fn func() []Effect) {
		s.at(s.delay(), func() {
			if h.inc == inc {
				s.apply(h, fn())
			}
		})
	}
	for _, e := range effs {
		switch e := e.(type) {
		case Install:
			h.dSend, h.dRestore = e.Send, e.Restore
			ok := h.connected
			if ok {
				s.replay(h) // the bundle: exactly the desired set of the cache owner
			}
			s.logt("%s: install gen %d ok=%v (%d egress, %d restore)", h.name, e.Gen, ok, len(e.Send), len(e.Restore))
			back(func() []Effect { return m.Installed(s.wall(), e.Gen, ok) })
		case Allocate:
			s.at(s.delay(), func() {
				rec, err := s.allocate(h.name, e)
				lost := err == nil && s.lose(s.pCommitLost)
				if lost {
					err = errors.New("commit answer lost")
				}
				s.logt("%s: allocate %s->%s: key %s err %v", h.name, e.Pair.Src, e.Pair.Dst, rec.Key, err)
				back(func() []Effect { return m.Allocated(s.wall(), e.Pair, rec, err) })
			})
		case MarkReady:
			s.at(s.delay(), func() {
				stale, err := s.markReady(e.Rec)
				back(func() []Effect { return m.Marked(s.wall(), e.Rec, stale, err) })
			})
		case Release:
			s.at(s.delay(), func() {
				err := s.release(e.Rec)
				s.logt("%s: release %s->%s key %s rev %d: %v", h.name, e.Rec.SrcHost, e.Rec.DstHost, e.Rec.Key, e.Rec.CreateRevision, err)
				back(func() []Effect { return m.Released(s.wall(), e.Rec, err) })
			})
		}
	}
}

var errEtcdDown = errors.New("etcd unavailable")

func (s *sim) allocate(src string, a Allocate) (keyalloc.Record, error) {
	if s.etcd.down {
		return keyalloc.Record{}, errEtcdDown
	}
	// An existing record of the pair is returned as it is.
	for _, r := range s.etcd.records {
		if r.SrcHost == src && r.DstHost == a.Peer && r.Src == a.Pair.Src && r.Dst == a.Pair.Dst {
			return *r, nil
		}
	}
	// Like keyalloc: any free key of sender addresses × receiver
	// addresses × DSCPs.
	var free []Key
	for _, sa := range s.host(src).addrs {
		for _, da := range s.host(a.Peer).addrs {
			for _, d := range s.keys {
				k := Key{Src: sa, Dst: da, DSCP: d}
				if _, used := s.etcd.records[recKey(src, a.Peer, k)]; !used && !slices.Contains(a.Exclude, k) {
					free = append(free, k)
				}
			}
		}
	}
	if len(free) == 0 {
		return keyalloc.Record{}, fmt.Errorf("keys: %w", keyalloc.ErrKeysExhausted)
	}
	s.etcd.rev++
	r := &keyalloc.Record{SrcHost: src, DstHost: a.Peer, Key: free[s.rnd.IntN(len(free))], Src: a.Pair.Src, Dst: a.Pair.Dst,
		State: keyalloc.StatePending, CreateRevision: s.etcd.rev, ModRevision: s.etcd.rev}
	s.etcd.records[recKey(src, a.Peer, r.Key)] = r
	s.watchPut(*r, true)
	return *r, nil
}

func (s *sim) markReady(r keyalloc.Record) (stale bool, err error) {
	if s.etcd.down {
		return false, errEtcdDown
	}
	cur, ok := s.etcd.records[recKey(r.SrcHost, r.DstHost, r.Key)]
	if !ok || cur.CreateRevision != r.CreateRevision {
		return true, nil
	}
	if cur.State == keyalloc.StateReady {
		return false, nil
	}
	s.etcd.rev++
	cur.State, cur.ModRevision = keyalloc.StateReady, s.etcd.rev
	s.logt("etcd: %s->%s key %s %s->%s ready", r.SrcHost, r.DstHost, r.Key, r.Src, r.Dst)
	s.watchPut(*cur, false)
	return false, nil
}

func (s *sim) release(r keyalloc.Record) error {
	if s.etcd.down {
		return errEtcdDown
	}
	k := recKey(r.SrcHost, r.DstHost, r.Key)
	cur, ok := s.etcd.records[k]
	if !ok || cur.CreateRevision != r.CreateRevision {
		return nil
	}
	s.etcd.rev++
	delete(s.etcd.records, k)
	rec := *cur
	src, dst := s.host(r.SrcHost), s.host(r.DstHost)
	s.watchEvent(src, "sent", func(m *Machine) []Effect { return m.SentRecordDeleted(s.wall(), rec) })
	s.watchEvent(dst, "recv", func(m *Machine) []Effect { return m.RecvRecordDeleted(s.wall(), rec) })
	return nil
}

// watchPut delivers a record change to the sender's keys/ watch and, for
// a creation, to the receiver's pairs/ watch (if the destination is one
// of its containers: the agent checks that).
func (s *sim) watchPut(r keyalloc.Record, created bool) {
	src, dst := s.host(r.SrcHost), s.host(r.DstHost)
	s.watchEvent(src, "sent", func(m *Machine) []Effect { return m.SentRecord(s.wall(), r) })
	if created {
		idx := r
		idx.State = keyalloc.StatePending
		s.watchEvent(dst, "recv", func(m *Machine) []Effect {
			if !s.accepts(dst, idx) {
				return nil
			}
			return m.RecvRecord(s.wall(), idx)
		})
	}
}

func (s *sim) watchEvent(h *simHost, stream string, fn func(*Machine) []Effect) {
	if h.m == nil || s.lose(s.pLoseWatch) {
		return // a lost event; the next anti-entropy (or start) finds it
	}
	m, inc := h.m, h.inc
	s.stream(h.name+"/"+stream, func() {
		if h.inc == inc {
			s.apply(h, fn(m))
		}
	})
}

// ----------------------------------------------------------------------
// OVS idle expiry, run from the ticker.

func (s *sim) expire(h *simHost) {
	ps := make([]Pair, 0, len(h.egress))
	for p, f := range h.egress {
		if s.now-f.lastUsed >= sendIdle {
			ps = append(ps, p)
		}
	}
	slices.SortFunc(ps, comparePair)
	for _, p := range ps {
		f := h.egress[p]
		delete(h.egress, p)
		s.flowsChanged = true
		s.logt("%s: egress %s->%s key %s idled out", h.name, p.Src, p.Dst, f.key)
		if h.m != nil && h.connected && !s.lose(s.pLoseFR) {
			m, inc, key := h.m, h.inc, f.key
			s.at(s.delay(), func() {
				if h.inc == inc {
					s.apply(h, m.FlowRemoved(s.wall(), p, key))
				}
			})
		}
	}
}

// ----------------------------------------------------------------------
// Checks.

func (s *sim) check() error {
	if s.fail != nil {
		return s.fail
	}
	if !s.flowsChanged {
		return nil
	}
	s.flowsChanged = false
	// The invariant on flows: R restores k from P as X ⇒ P's OVS rewrites
	// no other pair with k — the whole triple, whatever peer P's entry
	// names, since the fabric delivers by k's destination address.
	for _, r := range s.hosts {
		for k, x := range r.restore {
			p := s.host(k.Peer)
			for pair, f := range p.egress {
				if f.state == StateReady && f.key == k.Key && pair != x.pair {
					return fmt.Errorf("invariant: %s restores key %s from %s as %s->%s, while %s rewrites %s->%s with key %s",
						r.name, k.Key, p.name, x.pair.Src, x.pair.Dst, p.name, pair.Src, pair.Dst, k.Key)
				}
			}
		}
	}
	// A sender's OVS never has two pairs on one key, and rewrites only
	// from its own addresses to its entry's peer's.
	for _, h := range s.hosts {
		seen := map[Key]Pair{}
		for p, f := range h.egress {
			if f.state != StateReady {
				continue
			}
			if s.owner(f.key.Src) != h || s.owner(f.key.Dst) != s.host(f.peer) {
				return fmt.Errorf("invariant: %s rewrites %s->%s with key %s, not from its addresses %v to %s's", h.name, p.Src, p.Dst, f.key, h.addrs, f.peer)
			}
			if o, dup := seen[f.key]; dup {
				return fmt.Errorf("invariant: %s rewrites both %s->%s and %s->%s with key %s towards %s", h.name, o.Src, o.Dst, p.Src, p.Dst, f.key, f.peer)
			}
			seen[f.key] = p
		}
	}
	return nil
}

// liveness: after the calm phase every active pair whose containers are
// attached and whose agents run is on the fast path or a counted fallback,
// and its keyed packets arrive.
func (s *sim) liveness() error {
	var bad []string
	for _, p := range s.pairs {
		src, dst := s.hostOf[p.Src], s.hostOf[p.Dst]
		if !s.active[p] || !src.local[p.Src] || !dst.local[p.Dst] || src.m == nil || dst.m == nil {
			continue
		}
		e, ok := src.m.Entry(p)
		if !ok || (e.State != StateReady && e.State != StateFallback) {
			st := "none"
			if ok {
				st = e.State.String()
			}
			bad = append(bad, fmt.Sprintf("%s->%s %s", p.Src, p.Dst, st))
			continue
		}
		if e.State == StateFallback && e.Reason == "keys_exhausted" {
			// Out of keys is a reason only while it lasts: with a key
			// towards the peer free, a pair that still sends must have
			// tried again.
			if held := src.m.heldKeys(dst.name); len(held) < len(s.keys)*len(src.addrs)*len(dst.addrs) {
				bad = append(bad, fmt.Sprintf("%s->%s on fallback (keys_exhausted) while %s holds only keys %v of %v towards %s",
					p.Src, p.Dst, src.name, held, s.keys, dst.name))
			}
		}
		if e.State == StateReady {
			if f, on := src.egress[p]; !on || f.state != StateReady {
				bad = append(bad, fmt.Sprintf("%s->%s ready without its flow", p.Src, p.Dst))
			} else if r, on := dst.restore[RecvKey{src.name, f.key}]; !on || r.pair != p {
				bad = append(bad, fmt.Sprintf("%s->%s ready without the receiver's Restore", p.Src, p.Dst))
			}
		}
	}
	bad = append(bad, s.evictionSettled()...)
	if len(bad) > 0 {
		return fmt.Errorf("seed %d: liveness: after %s without faults: %s", s.seed, calmPhase, strings.Join(bad, "; "))
	}
	return nil
}

// evictionSettled checks eviction's fixpoint at the end of the calm phase:
// towards each peer, no pair out of keys (not already waiting for a key a
// swap freed) is busy enough to take the key of a keyed pair that has
// held its key for Hold. So the busiest pairs got the keys.
func (s *sim) evictionSettled() []string {
	if !s.evict {
		return nil
	}
	var bad []string
	for _, h := range s.hosts {
		if h.m == nil {
			continue
		}
		ev, now := h.m.cfg.Eviction, s.wall()
		send, _ := h.m.Entries()
		for _, w := range send {
			if w.State != StateFallback || w.Reason != ReasonExhausted || !s.active[w.Pair] || w.Rate < ev.MinRate || h.m.isReserved(w.Pair, w.Peer) {
				continue
			}
			for _, l := range send {
				if l.Peer == w.Peer && l.State == StateReady && now.Sub(l.Since) >= ev.Hold+2*time.Second && w.Rate > ev.Factor*l.Rate {
					bad = append(bad, fmt.Sprintf("%s: %s->%s (%.0f B/s) out of keys while %s->%s (%.0f B/s) keeps key %s",
						h.name, w.Pair.Src, w.Pair.Dst, w.Rate, l.Pair.Src, l.Pair.Dst, l.Rate, l.Key))
				}
			}
		}
	}
	return bad
}
