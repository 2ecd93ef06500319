package simcluster

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/keyroute/keyroute/api"
	"github.com/keyroute/keyroute/simhost"
)

// The key-space experiment (DESIGN.md "Key space"): many container pairs
// between two hosts, more than the host pair has keys, with skewed (Zipf)
// traffic and tagged payloads; bytes counted on the fabric's bridge. The
// e2e test TestKeySpaceEviction asserts on it and `make bench` reports it.

// TaggedLoad sends UDP datagrams from every sender to every receiver it
// is told to, each naming its sender and intended receiver
// (kr|<sender>|<receiver>|<seq>|, padded), and checks every datagram a
// receiver gets: one that names another receiver, or that does not come
// from the address of the sender it names, is a misdelivery.
type TaggedLoad struct {
	tick       time.Duration
	port       uint16
	send, recv []*Container
	conns, lns []net.PacketConn
	paused     atomic.Bool
	stop       chan struct{}
	wg, recvWG sync.WaitGroup

	mu sync.Mutex
	// size and every shape each pair: datagrams of size bytes every
	// every-th tick; every 0 is silent.
	size, every [][]int
	// sent and got count each pair's datagrams.
	sent, got [][]int64
	stats     TaggedStats
}

// TaggedStats is what a TaggedLoad sent and what arrived.
type TaggedStats struct {
	Sent     int64 `json:"datagrams_sent"`
	Received int64 `json:"datagrams_received"`
	// Misdeliveries counts datagrams a receiver got that were not meant
	// for it or not from the sender they name; Examples holds the first.
	Misdeliveries int      `json:"misdeliveries"`
	Examples      []string `json:"misdelivery_examples,omitempty"`
	SendErrors    int      `json:"send_errors"`
	// LossyPairs is how many pairs had datagrams not delivered;
	// LossyExamples names the first.
	LossyPairs    int      `json:"lossy_pairs"`
	LossyExamples []string `json:"lossy_examples,omitempty"`
}

// NewTaggedLoad opens the receivers' sockets on port and starts one
// sender per container, ticking every tick; no pair sends until shaped.
func NewTaggedLoad(send, recv []*Container, port uint16, tick time.Duration) (*TaggedLoad, error) {
	l := &TaggedLoad{tick: tick, port: port, send: slices.Clone(send), recv: slices.Clone(recv), stop: make(chan struct{}),
		size: grid[int](len(send), len(recv)), every: grid[int](len(send), len(recv)),
		sent: grid[int64](len(send), len(recv)), got: grid[int64](len(send), len(recv))}
	for _, r := range recv {
		ln, err := r.ListenUDP(int(port))
		if err != nil {
			return nil, errors.Join(fmt.Errorf("tagged load: %w", err), l.close())
		}
		l.lns = append(l.lns, ln)
		l.recvWG.Add(1)
		go l.receive(r, ln)
	}
	for _, s := range send {
		var c net.PacketConn
		if err := s.NS.Do(func() (err error) {
			c, err = net.ListenPacket("udp4", netip.AddrPortFrom(s.IP, 0).String())
			return err
		}); err != nil {
			return nil, errors.Join(fmt.Errorf("tagged load: sender %s: %w", s.Name, err), l.close())
		}
		l.conns = append(l.conns, c)
	}
	for i := range send {
		l.wg.Add(1)
		go l.sender(i)
	}
	return l, nil
}

func grid[T any](n, m int) [][]T {
	out := make([][]T, n)
	for i := range out {
		out[i] = make([]T, m)
	}
	return out
}

// SetShape gives pair (sender i, receiver j) datagrams of size bytes
// every every-th tick (0: silent).
func (l *TaggedLoad) SetShape(i, j, size, every int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.size[i][j], l.every[i][j] = size, every
}

func (l *TaggedLoad) sender(i int) {
	defer l.wg.Done()
	tick := time.NewTicker(l.tick)
	defer tick.Stop()
	var seq, n int
	for {
		select {
		case <-l.stop:
			return
		case <-tick.C:
		}
		n++
		if l.paused.Load() {
			continue
		}
		for j, dst := range l.recv {
			l.mu.Lock()
			size, every := l.size[i][j], l.every[i][j]
			l.mu.Unlock()
			// The offset spreads pairs of one period over its ticks.
			if every == 0 || (n+i+j)%every != 0 {
				continue
			}
			seq++
			msg := fmt.Appendf(nil, "kr|%s|%s|%d|", l.send[i].Name, dst.Name, seq)
			for len(msg) < size {
				msg = append(msg, 'x')
			}
			_, err := l.conns[i].WriteTo(msg, net.UDPAddrFromAddrPort(netip.AddrPortFrom(dst.IP, l.port)))
			l.mu.Lock()
			if err != nil {
				l.stats.SendErrors++
			} else {
				l.stats.Sent++
				l.sent[i][j]++
			}
			l.mu.Unlock()
		}
	}
}

func (l *TaggedLoad) receive(r *Container, ln net.PacketConn) {
	defer l.recvWG.Done()
	buf := make([]byte, 2048)
	for {
		n, from, err := ln.ReadFrom(buf)
		if err != nil {
			return
		}
		l.deliver(r, buf[:n], from.(*net.UDPAddr).AddrPort().Addr().Unmap())
	}
}

// deliver checks one datagram r received.
func (l *TaggedLoad) deliver(r *Container, msg []byte, from netip.Addr) {
	f := bytes.Split(msg, []byte("|"))
	l.mu.Lock()
	defer l.mu.Unlock()
	bad := func(why string) {
		l.stats.Misdeliveries++
		if len(l.stats.Examples) < 20 {
			l.stats.Examples = append(l.stats.Examples, fmt.Sprintf("%s (%s) got %.40q from %s: %s", r.Name, r.IP, msg, from, why))
		}
	}
	if len(f) < 4 || string(f[0]) != "kr" {
		bad("not our datagram")
		return
	}
	i := slices.IndexFunc(l.send, func(c *Container) bool { return c.Name == string(f[1]) })
	j := slices.IndexFunc(l.recv, func(c *Container) bool { return c.Name == r.Name })
	switch {
	case i < 0:
		bad("unknown sender")
	case string(f[2]) != r.Name:
		bad("meant for " + string(f[2]))
	case from != l.send[i].IP:
		bad(fmt.Sprintf("source address is not %s's %s", l.send[i].Name, l.send[i].IP))
	default:
		l.stats.Received++
		l.got[i][j]++
	}
}

// Stats returns the counts so far.
func (l *TaggedLoad) Stats() TaggedStats {
	l.mu.Lock()
	defer l.mu.Unlock()
	st := l.stats
	st.Examples = slices.Clone(st.Examples)
	for i := range l.sent {
		for j := range l.sent[i] {
			if l.got[i][j] < l.sent[i][j] {
				st.LossyPairs++
				if len(st.LossyExamples) < 10 {
					st.LossyExamples = append(st.LossyExamples, fmt.Sprintf("%s→%s: %d of %d delivered",
						l.send[i].Name, l.recv[j].Name, l.got[i][j], l.sent[i][j]))
				}
			}
		}
	}
	return st
}

// Stop stops sending, lets the datagrams in flight arrive, closes every
// socket and returns the final counts. It may be called more than once.
func (l *TaggedLoad) Stop() TaggedStats {
	select {
	case <-l.stop:
		return l.Stats()
	default:
	}
	l.paused.Store(true)
	// In flight: a few ms, but a starved vswitchd may hold a backlog for
	// longer; wait until deliveries stop.
	last := l.Stats().Received
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); {
		time.Sleep(300 * time.Millisecond)
		now := l.Stats().Received
		if now == last {
			break
		}
		last = now
	}
	l.close()
	return l.Stats()
}

func (l *TaggedLoad) close() error {
	select {
	case <-l.stop:
		return nil
	default:
	}
	close(l.stop)
	l.wg.Wait()
	var errs []error
	for _, c := range append(l.conns, l.lns...) {
		errs = append(errs, c.Close())
	}
	l.recvWG.Wait()
	return errors.Join(errs...)
}

// ZipfShape is the shape (datagram size, every how many ticks) of the
// pair of rank r (1-based) when the busiest pair sends topRate bytes/s
// and the pair of rank r topRate/r^s: datagrams of 64 to 1,400 bytes, no
// rarer than every 400 ticks.
func ZipfShape(rank int, s, topRate float64, tick time.Duration) (size, every int) {
	perTick := topRate / math.Pow(float64(rank), s) * tick.Seconds()
	size = min(1400, max(64, int(perTick)))
	return size, max(1, min(400, int(float64(size)/perTick+0.5)))
}

// PairBytes is what nftables counters on the fabric's bridge saw one host
// send another: packets with a DSCP key (the fast path; the DSCP path
// check's probes aside) and VXLAN packets.
type PairBytes struct {
	FastBytes    int64 `json:"fast_bytes"`
	FastPackets  int64 `json:"fast_packets"`
	VXLANBytes   int64 `json:"vxlan_bytes"`
	VXLANPackets int64 `json:"vxlan_packets"`
}

// Sub is p minus an earlier reading.
func (p PairBytes) Sub(earlier PairBytes) PairBytes {
	return PairBytes{p.FastBytes - earlier.FastBytes, p.FastPackets - earlier.FastPackets,
		p.VXLANBytes - earlier.VXLANBytes, p.VXLANPackets - earlier.VXLANPackets}
}

// vxlanOverhead is what VXLAN adds to a packet: outer Ethernet, IP, UDP
// and VXLAN headers.
const vxlanOverhead = 50

// TunnelBytes is the VXLAN bytes less the encapsulation, so it compares
// with FastBytes: what the containers sent.
func (p PairBytes) TunnelBytes() int64 { return p.VXLANBytes - vxlanOverhead*p.VXLANPackets }

// FastShare is the share of the containers' bytes on the fast path (NaN
// when nothing was counted).
func (p PairBytes) FastShare() float64 {
	if p.FastBytes+p.TunnelBytes() <= 0 {
		return math.NaN()
	}
	return float64(p.FastBytes) / float64(p.FastBytes+p.TunnelBytes())
}

// PairCounter reads nftables counters of one host pair direction on the
// fabric's Linux bridge.
type PairCounter struct {
	cl    *Cluster
	table string
}

// CountPairBytes installs counters on the fabric's bridge for what src
// sends dst, in a table of their own (Close removes it). probePort is the
// agents' DSCP path check port (cache.probe_port), whose probes carry
// every key's DSCP by design and are left out. It needs the Linux-bridge
// fabric (not Options.OVSFabric).
func (cl *Cluster) CountPairBytes(src, dst *Host, probePort uint16) (*PairCounter, error) {
	if cl.opts.OVSFabric != nil {
		return nil, errors.New("count pair bytes: needs the Linux-bridge fabric, the cluster runs an OVS fabric")
	}
	pc := &PairCounter{cl: cl, table: "krpb_" + src.Name + "_" + dst.Name}
	// The first matching rule that accepts ends this chain for the
	// packet, so a probe or VXLAN packet is counted once.
	match := fmt.Sprintf("ip saddr %s ip daddr %s", src.IP, dst.IP)
	script := fmt.Sprintf(`table bridge %[1]s {
	counter fast {}
	counter vxlan {}
	counter probe {}
	chain pairs {
		type filter hook forward priority 0; policy accept;
		%[2]s udp dport %[3]d counter name vxlan accept
		%[2]s udp dport %[4]d counter name probe accept
		%[2]s ip dscp != 0 counter name fast
	}
}`, pc.table, match, cl.VXLANPort, probePort)
	cl.Fabric.Exec("nft", "delete", "table", "bridge", pc.table) // an earlier reading's, if any
	if out, err := cl.Fabric.Exec("sh", "-c", "nft -f - <<'EOF'\n"+script+"\nEOF"); err != nil {
		return nil, fmt.Errorf("fabric counters %s→%s: %w: %s", src.Name, dst.Name, err, out)
	}
	return pc, nil
}

// Read returns the counters' totals since CountPairBytes.
func (pc *PairCounter) Read() (PairBytes, error) {
	out, err := pc.cl.Fabric.Exec("nft", "-j", "list", "counters", "table", "bridge", pc.table)
	if err != nil {
		return PairBytes{}, fmt.Errorf("read fabric counters: %w: %s", err, out)
	}
	return parseNftCounters(out)
}

// parseNftCounters reads `nft -j list counters` into PairBytes.
func parseNftCounters(out string) (PairBytes, error) {
	var doc struct {
		Nftables []struct {
			Counter *struct {
				Name    string `json:"name"`
				Packets int64  `json:"packets"`
				Bytes   int64  `json:"bytes"`
			} `json:"counter"`
		} `json:"nftables"`
	}
	if err := json.Unmarshal([]byte(out), &doc); err != nil {
		return PairBytes{}, fmt.Errorf("fabric counters: %w: %.200s", err, out)
	}
	var p PairBytes
	found := 0
	for _, e := range doc.Nftables {
		switch {
		case e.Counter == nil:
			continue
		case e.Counter.Name == "fast":
			p.FastBytes, p.FastPackets = e.Counter.Bytes, e.Counter.Packets
		case e.Counter.Name == "vxlan":
			p.VXLANBytes, p.VXLANPackets = e.Counter.Bytes, e.Counter.Packets
		default:
			continue
		}
		found++
	}
	if found != 2 {
		return p, fmt.Errorf("fabric counters: fast and vxlan not both listed: %.200s", out)
	}
	return p, nil
}

// Close removes the counters' table.
func (pc *PairCounter) Close() error {
	if out, err := pc.cl.Fabric.Exec("nft", "delete", "table", "bridge", pc.table); err != nil {
		return fmt.Errorf("remove fabric counters: %w: %s", err, out)
	}
	return nil
}

// KeySpaceOptions shapes RunKeySpace; zero fields take the defaults,
// which are TestKeySpaceEviction's.
type KeySpaceOptions struct {
	// Senders on host 1 × Receivers on host 2 pairs (default 20 × 10).
	Senders   int `json:"senders"`
	Receivers int `json:"receivers"`
	// Tick is every sender's interval (default 10 ms).
	Tick time.Duration `json:"tick"`
	// TopRate is the busiest pair's bytes/s (default 140,000); the pair
	// of rank r sends TopRate/r^Exponent (default exponent 2).
	TopRate  float64 `json:"top_rate_bytes_per_sec"`
	Exponent float64 `json:"zipf_exponent"`
	// Chat is how long every pair first sends 64 bytes every 4 s, so the
	// keys go to the pairs that ask first (default 8 s); Settle how long
	// the skewed traffic runs before the bytes are counted (20 s), and
	// Measure how long they are counted (20 s).
	Chat    time.Duration `json:"chat"`
	Settle  time.Duration `json:"settle"`
	Measure time.Duration `json:"measure"`
	// Port is the receivers' UDP port (default 7000); ProbePort the
	// agents' cache.probe_port (default 9477).
	Port      uint16 `json:"port"`
	ProbePort uint16 `json:"probe_port"`
}

func (o KeySpaceOptions) withDefaults() KeySpaceOptions {
	def := func(v *time.Duration, d time.Duration) {
		if *v == 0 {
			*v = d
		}
	}
	if o.Senders == 0 {
		o.Senders = 20
	}
	if o.Receivers == 0 {
		o.Receivers = 10
	}
	def(&o.Tick, 10*time.Millisecond)
	def(&o.Chat, 8*time.Second)
	def(&o.Settle, 20*time.Second)
	def(&o.Measure, 20*time.Second)
	if o.TopRate == 0 {
		o.TopRate = 140_000
	}
	if o.Exponent == 0 {
		o.Exponent = 2
	}
	if o.Port == 0 {
		o.Port = 7000
	}
	if o.ProbePort == 0 {
		o.ProbePort = 9477
	}
	return o
}

// KeySpaceResult is what RunKeySpace measured.
type KeySpaceResult struct {
	Options KeySpaceOptions `json:"options"`
	Pairs   int             `json:"pairs"`
	// Wire is host 1 → host 2 on the fabric over the Measure window;
	// FastShare its share of the containers' bytes on the fast path.
	Wire      PairBytes `json:"wire"`
	FastShare float64   `json:"fast_share"`
	// KeySwaps is host 1's keyroute_cache_key_swaps_total gained over
	// the whole run.
	KeySwaps float64 `json:"key_swaps"`
	// Load is the tagged traffic over the whole run.
	Load TaggedStats `json:"load"`
}

// RunKeySpace attaches Senders containers to host 1 and Receivers to host
// 2 (named s<i> and r<j>), waits until the agents have checked their DSCP
// paths, lets every pair chat quietly, then turns the traffic skewed:
// ranks in a fixed random order, so the busiest pairs are not the first
// to ask for a key. Misdeliveries are counted, not an error: the caller
// decides.
func RunKeySpace(ctx context.Context, cl *Cluster, o KeySpaceOptions) (res KeySpaceResult, err error) {
	o = o.withDefaults()
	res = KeySpaceResult{Options: o, Pairs: o.Senders * o.Receivers, FastShare: math.NaN()}
	h1, h2 := cl.Host(1), cl.Host(2)
	if h1 == nil || h2 == nil {
		return res, errors.New("key space: needs two hosts")
	}
	if err := WaitDSCPPaths(ctx, cl, 30*time.Second); err != nil {
		return res, fmt.Errorf("key space: %w", err)
	}
	var senders, receivers []*Container
	for i := range o.Senders {
		c, err := cl.Attach(1, fmt.Sprintf("s%d", i), "")
		if err != nil {
			return res, fmt.Errorf("key space: %w", err)
		}
		senders = append(senders, c)
	}
	for j := range o.Receivers {
		c, err := cl.Attach(2, fmt.Sprintf("r%d", j), "")
		if err != nil {
			return res, fmt.Errorf("key space: %w", err)
		}
		receivers = append(receivers, c)
	}
	swaps0, err := hostCounter(h1, "keyroute_cache_key_swaps_total")
	if err != nil {
		return res, fmt.Errorf("key space: %w", err)
	}
	load, err := NewTaggedLoad(senders, receivers, o.Port, o.Tick)
	if err != nil {
		return res, fmt.Errorf("key space: %w", err)
	}
	defer func() { res.Load = load.Stop() }() // res is the named result: the caller gets the final counts
	// The keys go to the pairs that ask first, whatever they will carry:
	// 64 bytes every 4 s, well inside send_idle, so none idles out.
	quiet := max(1, int(4*time.Second/o.Tick))
	for i := range o.Senders {
		for j := range o.Receivers {
			load.SetShape(i, j, 64, quiet)
		}
	}
	if err := sleepCtx(ctx, o.Chat); err != nil {
		return res, err
	}
	rank := rand.New(rand.NewPCG(1, 2)).Perm(res.Pairs)
	for i := range o.Senders {
		for j := range o.Receivers {
			size, every := ZipfShape(rank[i*o.Receivers+j]+1, o.Exponent, o.TopRate, o.Tick)
			load.SetShape(i, j, size, every)
		}
	}
	if err := sleepCtx(ctx, o.Settle); err != nil {
		return res, err
	}
	pc, err := cl.CountPairBytes(h1, h2, o.ProbePort)
	if err != nil {
		return res, fmt.Errorf("key space: %w", err)
	}
	defer pc.Close()
	before, err := pc.Read()
	if err != nil {
		return res, fmt.Errorf("key space: %w", err)
	}
	if err := sleepCtx(ctx, o.Measure); err != nil {
		return res, err
	}
	after, err := pc.Read()
	if err != nil {
		return res, fmt.Errorf("key space: %w", err)
	}
	res.Wire = after.Sub(before)
	res.FastShare = res.Wire.FastShare()
	swaps1, err := hostCounter(h1, "keyroute_cache_key_swaps_total")
	if err != nil {
		return res, fmt.Errorf("key space: %w", err)
	}
	res.KeySwaps = swaps1 - swaps0
	if math.IsNaN(res.FastShare) {
		return res, errors.New("key space: no host 1 → host 2 traffic counted on the fabric")
	}
	return res, nil
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(d):
		return nil
	}
}

// hostCounter reads one counter (no labels) from h's agent metrics.
func hostCounter(h *Host, name string) (float64, error) {
	text, err := h.Metrics()
	if err != nil {
		return 0, err
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := p.TextToMetricFamilies(strings.NewReader(text))
	if err != nil {
		return 0, fmt.Errorf("%s metrics: %w", h.Name, err)
	}
	mf := mfs[name]
	if mf == nil || len(mf.GetMetric()) == 0 {
		return 0, fmt.Errorf("%s metrics: no %s", h.Name, name)
	}
	return mf.GetMetric()[0].GetCounter().GetValue(), nil
}

// WaitDSCPPaths waits until every agent has a verdict ("verified" or
// "off") on its DSCP path to every other host, so pairs use keys from
// their first punt.
func WaitDSCPPaths(ctx context.Context, cl *Cluster, timeout time.Duration) error {
	return simhost.WaitFor(timeout, func() error {
		if err := ctx.Err(); err != nil {
			return err
		}
		for _, h := range cl.Hosts() {
			st, err := api.NewClient(h.APISocket).Status(ctx)
			if err != nil {
				return fmt.Errorf("%s status: %w", h.Name, err)
			}
			if len(st.DSCPPaths) < len(cl.Hosts())-1 {
				return fmt.Errorf("%s: DSCP path checks towards %d of %d peers", h.Name, len(st.DSCPPaths), len(cl.Hosts())-1)
			}
			for _, p := range st.DSCPPaths {
				if p.State != "verified" && p.State != "off" {
					return fmt.Errorf("%s: DSCP path to %s is %s (%s)", h.Name, p.Peer, p.State, p.Detail)
				}
			}
		}
		return nil
	})
}
