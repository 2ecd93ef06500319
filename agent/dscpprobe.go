package agent

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/keyroute/keyroute/api"
	"github.com/keyroute/keyroute/cacheproto"
)

// The DSCP path check (DESIGN.md "As built"): before a host pair uses keys,
// this host's agent sends the peer's agent one UDP probe per key, from
// hostIP:probe_port to peerIP:probe_port with that key as DSCP; the peer
// answers with the DSCP it received. A path whose every key arrives
// unchanged is verified; one that re-marks or bleaches any key, or loses
// some keys' probes, keeps the pair on VXLAN (fallback "dscp_path"). br-phy
// lets the probes keep their DSCP and hands them to LOCAL (flows.Rewrite
// ProbePort). Paths are checked when a peer appears and every
// cache.probe_interval.

// Path states.
const (
	PathUnchecked  = "unchecked"  // no answer yet (peer agent not running, or not checked yet)
	PathVerified   = "verified"   // every key arrived unchanged
	PathRemarked   = "re-marked"  // some key arrived with another DSCP
	PathUnanswered = "unanswered" // some keys' probes got no answer while others did
	PathOff        = "off"        // cache.probe_port is 0: keys used unchecked
)

const (
	probeMagic     = "KRDP"
	probeRequest   = 1
	probeReply     = 2
	probeAttempts  = 3
	probeWait      = 400 * time.Millisecond
	probeParallel  = 16
	probeMinGap    = 2 * time.Second // a peer is probed at most this often
	probeRetryFast = 2 * time.Second // a path nobody answered is retried sooner
	// probeSample is how many keys a re-check of a verified path probes,
	// in rotation, so that every key is probed again every few intervals
	// while a cluster of N hosts costs each agent N·probeSample probes per
	// interval, not N·len(keys). A path not verified is checked with every
	// key.
	probeSample = 8
)

type pathInfo struct {
	state   string
	detail  string
	checked time.Time
	last    time.Time // last round started
	next    int       // the re-check sample's first key index
}

type probeAnswer struct {
	sent, got uint8
	from      netip.Addr
}

type prober struct {
	a        *Agent
	port     uint16
	keys     []uint8
	interval time.Duration

	conn  *net.UDPConn
	sendM sync.Mutex // setsockopt(IP_TOS) and the write it applies to

	mu      sync.Mutex
	paths   map[string]*pathInfo // by peer name
	waiting map[uint64]chan probeAnswer
	kick    chan string
}

func newProber(a *Agent, port uint16, keys []uint8, interval time.Duration) *prober {
	return &prober{a: a, port: port, keys: keys, interval: interval,
		paths: map[string]*pathInfo{}, waiting: map[uint64]chan probeAnswer{}, kick: make(chan string, 64)}
}

// listen binds the probe socket on the host IP; it must run after the IP
// sits on br-phy.
func (p *prober) listen(ip netip.Addr) error {
	conn, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(ip, p.port)))
	if err != nil {
		return fmt.Errorf("DSCP path probe: listen on %s:%d (cache.probe_port): %w", ip, p.port, err)
	}
	if err := setsockoptInt(conn, syscall.IPPROTO_IP, syscall.IP_RECVTOS, 1); err != nil {
		conn.Close()
		return fmt.Errorf("DSCP path probe: IP_RECVTOS: %w", err)
	}
	p.conn = conn
	return nil
}

func setsockoptInt(c *net.UDPConn, level, opt, v int) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) { serr = syscall.SetsockoptInt(int(fd), level, opt, v) }); err != nil {
		return err
	}
	return serr
}

// send writes b to dst with the given DSCP.
func (p *prober) send(dst netip.Addr, dscp uint8, b []byte) error {
	p.sendM.Lock()
	defer p.sendM.Unlock()
	if err := setsockoptInt(p.conn, syscall.IPPROTO_IP, syscall.IP_TOS, int(dscp)<<2); err != nil {
		return err
	}
	_, err := p.conn.WriteToUDPAddrPort(b, netip.AddrPortFrom(dst, p.port))
	return err
}

// run serves probes and checks every peer's path until ctx ends.
func (p *prober) run(ctx context.Context) {
	go func() {
		<-ctx.Done()
		p.conn.Close()
	}()
	go p.serve()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	sem := make(chan struct{}, probeParallel)
	start := func(name string, ip netip.Addr) {
		sem <- struct{}{}
		go func() {
			defer func() { <-sem }()
			p.check(ctx, name, ip)
		}()
	}
	for {
		var only string
		select {
		case <-ctx.Done():
			return
		case only = <-p.kick:
		case <-tick.C:
		}
		now := time.Now()
		for _, h := range p.peers() {
			if only != "" && h.Name != only {
				continue
			}
			if !p.due(h.Name, now, only != "") {
				continue
			}
			start(h.Name, h.UnderlayIP)
		}
	}
}

func (p *prober) peers() []struct {
	Name       string
	UnderlayIP netip.Addr
} {
	p.a.mu.Lock()
	defer p.a.mu.Unlock()
	var out []struct {
		Name       string
		UnderlayIP netip.Addr
	}
	for _, h := range p.a.peers {
		if h.UnderlayIP.Is4() {
			out = append(out, struct {
				Name       string
				UnderlayIP netip.Addr
			}{h.Name, h.UnderlayIP})
		}
	}
	return out
}

// due reports whether name's path should be checked now, and marks the
// round started if so.
func (p *prober) due(name string, now time.Time, kicked bool) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	pi := p.paths[name]
	if pi == nil {
		pi = &pathInfo{state: PathUnchecked}
		p.paths[name] = pi
	}
	gap := p.interval
	if pi.state == PathUnchecked {
		gap = probeRetryFast
	}
	if kicked {
		gap = probeMinGap
	}
	if !pi.last.IsZero() && now.Sub(pi.last) < gap {
		return false
	}
	pi.last = now
	return true
}

// peerGone forgets a peer's path.
func (p *prober) peerGone(name string) {
	p.mu.Lock()
	delete(p.paths, name)
	p.mu.Unlock()
}

// peerSeen asks for a check of a new or changed peer.
func (p *prober) peerSeen(name string) {
	select {
	case p.kick <- name:
	default:
	}
}

// usable reports whether pairs towards peer may use keys.
func (p *prober) usable(peer string) bool {
	if p == nil {
		return true
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	pi := p.paths[peer]
	return pi != nil && pi.state == PathVerified
}

// check runs one round towards peer: every key, up to probeAttempts tries
// each, then a verdict.
func (p *prober) check(ctx context.Context, name string, ip netip.Addr) {
	keys := p.roundKeys(name)
	got := map[uint8]uint8{} // sent → received
	for range probeAttempts {
		var missing []uint8
		for _, k := range keys {
			if _, ok := got[k]; !ok {
				missing = append(missing, k)
			}
		}
		if len(missing) == 0 || ctx.Err() != nil {
			break
		}
		ch := make(chan probeAnswer, len(missing))
		var nonces []uint64
		for _, k := range missing {
			n := nonce()
			nonces = append(nonces, n)
			p.mu.Lock()
			p.waiting[n] = ch
			p.mu.Unlock()
			b := make([]byte, 0, 14)
			b = append(b, probeMagic...)
			b = append(b, probeRequest, k)
			b = binary.BigEndian.AppendUint64(b, n)
			if err := p.send(ip, k, b); err != nil && ctx.Err() == nil {
				p.a.log.Debug("DSCP probe send failed", "peer", name, "dscp", k, "err", err)
			}
		}
		timer := time.NewTimer(probeWait)
	collect:
		for len(got) < len(keys) {
			select {
			case ans := <-ch:
				if ans.from == ip {
					got[ans.sent] = ans.got
				}
			case <-timer.C:
				break collect
			case <-ctx.Done():
				break collect
			}
		}
		timer.Stop()
		p.mu.Lock()
		for _, n := range nonces {
			delete(p.waiting, n)
		}
		p.mu.Unlock()
	}
	if ctx.Err() != nil {
		return
	}
	p.verdict(name, keys, got)
}

// roundKeys is the keys a round towards name probes: all of them unless
// the path is verified, then the next probeSample in rotation.
func (p *prober) roundKeys(name string) []uint8 {
	p.mu.Lock()
	defer p.mu.Unlock()
	pi := p.paths[name]
	if pi == nil || pi.state != PathVerified || len(p.keys) <= probeSample {
		return p.keys
	}
	keys := make([]uint8, 0, probeSample)
	for i := range probeSample {
		keys = append(keys, p.keys[(pi.next+i)%len(p.keys)])
	}
	pi.next = (pi.next + probeSample) % len(p.keys)
	return keys
}

func (p *prober) verdict(name string, keys []uint8, got map[uint8]uint8) {
	var bad, lost []string
	for _, k := range keys {
		g, ok := got[k]
		switch {
		case !ok:
			lost = append(lost, fmt.Sprint(k))
		case g != k:
			bad = append(bad, fmt.Sprintf("sent %d got %d", k, g))
		}
	}
	state, detail := PathVerified, fmt.Sprintf("%d keys", len(keys))
	if len(keys) < len(p.keys) {
		detail = fmt.Sprintf("%d keys; re-checked %d", len(p.keys), len(keys))
	}
	switch {
	case len(bad) > 0:
		state, detail = PathRemarked, strings.Join(firstN(bad, 4), ", ")
	case len(got) == 0:
		state, detail = PathUnchecked, "no answer from the peer's agent"
	case len(lost) > 0:
		state, detail = PathUnanswered, "no answer for DSCP "+strings.Join(firstN(lost, 8), ",")
	}
	result := map[string]string{PathVerified: "verified", PathRemarked: "remarked", PathUnchecked: "no_answer", PathUnanswered: "lost"}[state]
	p.a.metrics.dscpChecks.WithLabelValues(name, result).Inc()

	p.mu.Lock()
	pi := p.paths[name]
	if pi == nil { // the peer left meanwhile
		p.mu.Unlock()
		return
	}
	prev := pi.state
	if state == PathUnchecked && prev != PathUnchecked {
		// Nobody answered at all: the peer's agent is down or
		// restarting; keep the last verdict, its flows do not change.
		pi.detail = "last check: no answer from the peer's agent"
		p.mu.Unlock()
		return
	}
	pi.state, pi.detail, pi.checked = state, detail, time.Now()
	p.mu.Unlock()

	if state != prev {
		lvl := p.a.log.Info
		if state != PathVerified {
			lvl = p.a.log.Warn
		}
		lvl("DSCP path to peer "+state, "peer", name, "detail", detail, "was", prev)
	}
	c := p.a.cache
	if c == nil {
		return
	}
	switch {
	case state == PathVerified && prev != PathVerified:
		c.do(func(now time.Time) []cacheproto.Effect { return c.m.PathOK(now, name, "dscp_path") })
	case state != PathVerified && state != PathUnchecked && state != prev:
		c.do(func(now time.Time) []cacheproto.Effect { return c.m.PathLost(now, name) })
	}
}

func firstN(s []string, n int) []string {
	if len(s) > n {
		return append(slices.Clip(s[:n]), fmt.Sprintf("… %d more", len(s)-n))
	}
	return s
}

func nonce() uint64 {
	var b [8]byte
	rand.Read(b[:])
	return binary.BigEndian.Uint64(b[:])
}

// serve answers peers' probes with the DSCP they arrived with, and hands
// answers to our own probes to their waiting round.
func (p *prober) serve() {
	buf := make([]byte, 64)
	oob := make([]byte, 64)
	for {
		n, oobn, _, from, err := p.conn.ReadMsgUDPAddrPort(buf, oob)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		b := buf[:n]
		if n < 14 || string(b[:4]) != probeMagic || from.Port() != p.port {
			continue
		}
		src := from.Addr().Unmap()
		switch b[4] {
		case probeRequest:
			tos, ok := recvTOS(oob[:oobn])
			if !ok || !p.isPeer(src) {
				continue
			}
			r := append(slices.Clip(b[:14]), tos>>2)
			r[4] = probeReply
			p.send(src, 0, r)
		case probeReply:
			if n < 15 {
				continue
			}
			p.mu.Lock()
			ch := p.waiting[binary.BigEndian.Uint64(b[6:14])]
			p.mu.Unlock()
			if ch != nil {
				select {
				case ch <- probeAnswer{sent: b[5], got: b[14], from: src}:
				default:
				}
			}
		}
	}
}

func (p *prober) isPeer(ip netip.Addr) bool {
	p.a.mu.Lock()
	defer p.a.mu.Unlock()
	for _, h := range p.a.peers {
		if h.UnderlayIP == ip {
			return true
		}
	}
	return false
}

// recvTOS finds the IP_TOS control message.
func recvTOS(oob []byte) (uint8, bool) {
	msgs, err := syscall.ParseSocketControlMessage(oob)
	if err != nil {
		return 0, false
	}
	for _, m := range msgs {
		if m.Header.Level == syscall.IPPROTO_IP && m.Header.Type == syscall.IP_TOS && len(m.Data) >= 1 {
			return m.Data[0], true
		}
	}
	return 0, false
}

// dscpPaths lists every peer's path state for keyroutectl status.
func (a *Agent) dscpPaths() []api.DSCPPath {
	if a.cfg.Mode != ModeRewrite {
		return nil
	}
	p := a.probe
	var out []api.DSCPPath
	a.mu.Lock()
	for _, h := range a.peers {
		out = append(out, api.DSCPPath{Peer: h.Name, State: PathOff})
	}
	a.mu.Unlock()
	for i := range out {
		if p == nil {
			continue
		}
		out[i].State = PathUnchecked
		p.mu.Lock()
		if pi := p.paths[out[i].Peer]; pi != nil {
			out[i].State, out[i].Detail = pi.state, pi.detail
			if !pi.checked.IsZero() {
				out[i].Checked = pi.checked.UTC().Format(time.RFC3339)
			}
		}
		p.mu.Unlock()
	}
	slices.SortFunc(out, func(a, b api.DSCPPath) int { return strings.Compare(a.Peer, b.Peer) })
	return out
}
