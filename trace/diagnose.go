package trace

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/keyroute/keyroute/api"
	"github.com/keyroute/keyroute/fabric"
	"github.com/keyroute/keyroute/hostlayout"
)

// DiagnoseOptions bounds a diagnosis.
type DiagnoseOptions struct {
	// Probes is how many test packets go through the path (default 50).
	Probes int
	// Wait bounds how long counters may take to show the probes
	// (default 3 s; OVS refreshes datapath flow stats about twice a
	// second).
	Wait time.Duration
	// Capture runs a short tcpdump on the destination host's uplink
	// while the probes cross.
	Capture bool
}

// point is one counted place on the path: a host's flow or a fabric
// device's flow whose packet counter should rise by the probe count.
type point struct {
	check api.NodeCheck
	// read returns the counter (nil: nothing to count here).
	read func(context.Context) (uint64, error)
	// drop: the trace says this node drops the packet.
	drop string
	// before is the counter ahead of the probes; readable says it was
	// read, so the point takes part in polling and blame.
	before   uint64
	readable bool
	// prevDev and prevPort name the previous fabric device and its out
	// port, inPort this device's in port: the link blamed when this
	// device sees nothing.
	prevDev, prevPort, inPort string
	dev                       *fabric.Device
}

// Diagnose traces r, checks each node's health, sends bounded probes and
// finds the first node on the path where the counters stop rising. It runs
// in phases: the counted points along the traced path (pathPoints), their
// counters before the probes (readBaselines), the probes themselves
// (sendProbes, with an optional capture), the counters after them
// (pollCounters), and the first node at fault (blame).
func Diagnose(ctx context.Context, e Env, r Request, opt DiagnoseOptions) (api.Diagnosis, Result, error) {
	if opt.Probes <= 0 {
		opt.Probes = 50
	}
	if opt.Wait <= 0 {
		opt.Wait = 3 * time.Second
	}
	d := api.Diagnosis{Time: time.Now().UTC(), Src: r.Src, Dst: r.Dst, Proto: fabric.ProtoName(r.Proto), SPort: r.SPort, DPort: r.DPort}
	res, err := Trace(ctx, e, r)
	if err != nil {
		return d, res, err
	}
	cl, err := e.load(ctx)
	if err != nil {
		return d, res, err
	}
	hosts := pathHosts(cl, res)
	pts, notes := e.pathPoints(ctx, cl, res, hosts)
	d.Checks = append(d.Checks, notes...)
	readBaselines(ctx, pts)
	var capture func() []string
	if opt.Capture && len(hosts) > 1 && res.Wire != nil {
		capture = e.startCapture(ctx, hosts[1], res.Wire, opt)
	}
	if d.Probes, err = e.sendProbes(ctx, cl, r, res, opt.Probes); err != nil {
		return d, res, err
	}
	pollCounters(ctx, pts, d.Probes, opt.Wait)
	for _, p := range pts {
		d.Checks = append(d.Checks, p.check)
	}
	if capture != nil {
		d.Capture = capture()
	}
	d.Suspect = e.blame(ctx, pts, d.Probes)
	if d.Suspect != nil {
		d.Verdict = fmt.Sprintf("suspect %s %s: %s", d.Suspect.Kind, d.Suspect.Node, d.Suspect.Why)
	} else {
		d.Verdict = "no fault found: " + res.Verdict
	}
	return d, res, nil
}

// pathHosts lists the hosts on the traced path: the source host, and the
// keyroute host the packet is addressed to on the fabric when that is
// another one.
func pathHosts(cl cluster, res Result) []string {
	hosts := []string{res.Src.Host}
	if res.Wire != nil {
		if h, ok := cl.hostByIP(res.Wire.Tuple.Dst.String()); ok && h.Name != res.Src.Host {
			hosts = append(hosts, h.Name)
		}
	}
	return hosts
}

// pathPoints builds the counted points in path order, each host's with its
// health: the source host, the fabric's hops, the destination host. Checks
// that count nothing (several possible fabric paths) come back apart.
func (e Env) pathPoints(ctx context.Context, cl cluster, res Result, hosts []string) ([]*point, []api.NodeCheck) {
	health := map[string][]string{}
	for _, h := range hosts {
		health[h] = e.hostHealth(ctx, cl, h)
	}
	pts := []*point{e.sourcePoint(res, health[res.Src.Host], cl.bridges(res.Src.Host).Integration)}
	var notes []api.NodeCheck
	switch {
	case len(res.Fabric) == 1 && res.Wire != nil:
		pts = append(pts, e.fabricPoints(ctx, res)...)
	case len(res.Fabric) > 1:
		// Only a single known path can be counted hop by hop.
		notes = append(notes, api.NodeCheck{Node: "fabric", Kind: api.CheckFabric, Note: fmt.Sprintf("%d possible paths (VXLAN source port from OVS's hash): fabric hops not counted", len(res.Fabric))})
	}
	if len(hosts) > 1 {
		pts = append(pts, e.destPoint(res, hosts[1], health[hosts[1]]))
	}
	e.cacheNotes(ctx, res, pts)
	return pts, notes
}

// sourcePoint counts the source host's last br-int flow before the packet
// leaves; an untraced source host is a point without a counter.
func (e Env) sourcePoint(res Result, health []string, integration string) *point {
	if res.Source == nil || len(res.Source.Steps) == 0 {
		return &point{check: api.NodeCheck{Node: res.Src.Host, Kind: api.CheckHost, Point: "agent", Health: append(health, "not traced: "+res.SourceError)}}
	}
	st := lastOn(res.Source.Steps, integration)
	p := &point{check: api.NodeCheck{Node: res.Src.Host, Kind: api.CheckHost, Point: stepWords(st), Health: health}}
	p.read = e.hostFlowReader(res.Src.Host, st)
	if res.Source.Verdict == api.VerdictDrop {
		p.drop = stepWords(res.Source.Steps[max(res.Source.DropStep, 0)])
	}
	return p
}

// fabricPoints counts each hop of the single fabric path on its device's
// OVS; a device the model gives no OVS for is a point without a counter.
func (e Env) fabricPoints(ctx context.Context, res Result) []*point {
	hops := res.Fabric[0].Path.Hops
	pts := make([]*point, 0, len(hops))
	for i, hop := range hops {
		dev, _ := e.Fabric.Device(hop.Device)
		p := &point{check: api.NodeCheck{Node: hop.Device, Kind: api.CheckFabric}, dev: dev, inPort: hop.InPort}
		if i > 0 {
			p.prevDev, p.prevPort = hops[i-1].Device, hops[i-1].OutPort
		}
		if dev.OVS == nil {
			p.check.Note = "no counters (not an OVS device in the model)"
		} else {
			e.fabricPoint(ctx, p, res, hop)
		}
		pts = append(pts, p)
	}
	return pts
}

// destPoint counts the destination host's last flow, or the one that drops
// the packet; a keyed packet dropped by Restore's miss flow is named as a
// missing Restore entry.
func (e Env) destPoint(res Result, node string, health []string) *point {
	p := &point{check: api.NodeCheck{Node: node, Kind: api.CheckHost, Health: health}}
	if res.Dest == nil || len(res.Dest.Steps) == 0 {
		p.check.Point = "agent"
		p.check.Health = append(p.check.Health, "not traced: "+res.DestError)
		return p
	}
	st := res.Dest.Steps[len(res.Dest.Steps)-1]
	if res.Dest.Verdict == api.VerdictDrop && res.Dest.DropStep >= 0 {
		st = res.Dest.Steps[res.Dest.DropStep]
		p.drop = stepWords(st)
		if st.TableName == "Restore" && st.Category == "pipeline" && res.Wire.Key != 0 {
			p.drop = fmt.Sprintf("%s: no Restore entry for key %d from %s, so the table's miss flow drops the keyed packet",
				stepWords(st), res.Wire.Key, res.Wire.Tuple.Src)
		}
	}
	p.check.Point = stepWords(st)
	p.read = e.hostFlowReader(node, st)
	return p
}

// readBaselines reads every point's counter before the probes; a point
// whose counter cannot be read says why and is left out of polling.
func readBaselines(ctx context.Context, pts []*point) {
	for _, p := range pts {
		if p.read == nil {
			continue
		}
		if v, err := p.read(ctx); err == nil {
			p.before, p.readable = v, true
		} else {
			p.check.Note = "counter unreadable: " + err.Error()
		}
	}
}

// sendProbes sends count test packets into the source container's br-int
// pipeline and returns how many went out. Probes go only from a container
// (the host stack cannot be injected into a pipeline as a container can)
// and not when the trace already shows the source host drops the packet;
// without the source host's agent none are sent.
func (e Env) sendProbes(ctx context.Context, cl cluster, r Request, res Result, count int) (int, error) {
	if res.Src.Kind != EndpointContainer || res.Path == PathDropped {
		return 0, nil
	}
	c, err := e.agent(res.Src.Host)
	if err != nil {
		return 0, nil // reported by the source host's health
	}
	pr, err := c.Probe(ctx, api.ProbeRequest{Bridge: cl.bridges(res.Src.Host).Integration, InPort: res.Src.Port, SrcMAC: res.Src.MAC, DstMAC: cl.gatewayMAC,
		Src: res.Src.IP, Dst: res.Dst.IP, Proto: fabric.ProtoName(r.Proto), SPort: r.SPort, DPort: r.DPort, Count: count})
	if err != nil {
		return 0, fmt.Errorf("send probes from %s: %w", res.Src.Name, err)
	}
	return pr.Sent, nil
}

// pollCounters reads the readable points until each has risen by the
// probe count or wait is over, and records each point's rise and whether
// it passed. Without probes it reads once.
func pollCounters(ctx context.Context, pts []*point, probes int, wait time.Duration) {
	deadline := time.Now().Add(wait)
	for {
		done := true
		for _, p := range pts {
			if !p.readable {
				continue
			}
			if v, err := p.read(ctx); err == nil {
				p.check.Delta = int64(v - p.before)
			}
			p.check.Passed = probes > 0 && p.check.Delta >= int64(probes)
			done = done && p.check.Passed
		}
		if done || probes == 0 || time.Now().After(deadline) {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// blame walks the path in order and names the first node at fault.
func (e Env) blame(ctx context.Context, pts []*point, probes int) *api.Suspect {
	for _, p := range pts {
		c := p.check
		if p.drop != "" {
			kind := api.SuspectHostTable
			if c.Kind == api.CheckFabric {
				kind = api.SuspectDevice
			}
			return &api.Suspect{Kind: kind, Node: c.Node, Where: p.drop, Why: "the packet is dropped by " + p.drop}
		}
		if c.Kind == api.CheckHost && !p.readable {
			for _, h := range c.Health {
				if strings.HasPrefix(h, "agent") || strings.HasPrefix(h, "not traced") {
					return &api.Suspect{Kind: api.SuspectAgent, Node: c.Node, Why: strings.Join(c.Health, "; ")}
				}
			}
		}
		if p.readable && probes > 0 && !c.Passed {
			if c.Kind == api.CheckFabric {
				if why := e.linkDown(ctx, p); why != "" {
					return &api.Suspect{Kind: api.SuspectLink, Node: p.prevDev + "-" + c.Node,
						Where: fmt.Sprintf("%s:%s <-> %s:%s", p.prevDev, p.prevPort, c.Node, p.inPort), Why: why}
				}
				return &api.Suspect{Kind: api.SuspectDevice, Node: c.Node, Where: c.Point,
					Why: fmt.Sprintf("%d of %d probes counted at %s", c.Delta, probes, c.Point)}
			}
			kind := api.SuspectHostTable
			for _, h := range c.Health {
				if strings.Contains(h, "port") {
					kind = api.SuspectHostPort
				}
			}
			return &api.Suspect{Kind: kind, Node: c.Node, Where: c.Point,
				Why: fmt.Sprintf("%d of %d probes counted at %s; health: %s", c.Delta, probes, c.Point, strings.Join(append([]string{"ok"}, c.Health...), ", "))}
		}
	}
	for _, p := range pts {
		if len(p.check.Health) > 0 && p.check.Kind == api.CheckHost {
			kind := api.SuspectHostPort
			if strings.HasPrefix(p.check.Health[0], "agent") {
				kind = api.SuspectAgent
			}
			return &api.Suspect{Kind: kind, Node: p.check.Node, Why: strings.Join(p.check.Health, "; ")}
		}
	}
	return nil
}

// linkDown checks both ends of the link into p's device.
func (e Env) linkDown(ctx context.Context, p *point) string {
	if p.prevDev == "" {
		return ""
	}
	var why []string
	if prev, ok := e.Fabric.Device(p.prevDev); ok && prev.OVS != nil {
		if down, err := DevicePortsDown(ctx, prev.OVS); err == nil && down[p.prevPort] != "" {
			why = append(why, fmt.Sprintf("%s port %s is %s", p.prevDev, p.prevPort, down[p.prevPort]))
		}
	}
	if p.dev != nil && p.dev.OVS != nil {
		if down, err := DevicePortsDown(ctx, p.dev.OVS); err == nil && down[p.inPort] != "" {
			why = append(why, fmt.Sprintf("%s port %s is %s", p.check.Node, p.inPort, down[p.inPort]))
		}
	}
	return strings.Join(why, "; ")
}

// fabricPoint traces the wire header on an OVS device and counts the flow
// it matches.
func (e Env) fabricPoint(ctx context.Context, p *point, res Result, hop fabric.Hop) {
	h := Header{Src: res.Wire.Tuple.Src, Dst: res.Wire.Tuple.Dst, Proto: res.Wire.Tuple.Proto, SPort: res.Wire.Tuple.SPort, DPort: res.Wire.Tuple.DPort, DSCP: res.Wire.DSCP}
	t, err := DeviceTrace(ctx, p.dev.OVS, h.OVSFlow(hop.InPort))
	if err != nil || len(t.Steps) == 0 {
		p.check.Note = fmt.Sprintf("device trace failed: %v", err)
		return
	}
	st := t.Steps[len(t.Steps)-1]
	p.check.Point = fmt.Sprintf("%s priority %d %s -> %s", hop.Device, st.Priority, st.Match, strings.Join(st.Actions, ","))
	if t.Verdict == api.VerdictDrop {
		p.drop = fmt.Sprintf("%s flow priority %d %s (actions %s)", hop.Device, st.Priority, st.Match, strings.Join(st.Actions, ","))
	}
	acc := p.dev.OVS
	p.read = func(ctx context.Context) (uint64, error) { return DeviceFlowPackets(ctx, acc, st.Priority, st.Match) }
}

// hostFlowReader counts the packets of a host flow identified by bridge,
// table, priority and cookie (summed if several share them).
func (e Env) hostFlowReader(node string, st api.TraceStep) func(context.Context) (uint64, error) {
	c, err := e.agent(node)
	if err != nil {
		return nil
	}
	return func(ctx context.Context) (uint64, error) {
		fs, err := c.Flows(ctx, "")
		if err != nil {
			return 0, err
		}
		var n uint64
		found := false
		for _, f := range fs {
			if f.Bridge == st.Bridge && f.Table == st.Table && int(f.Priority) == st.Priority && f.Cookie == st.Cookie {
				n += f.Packets
				found = true
			}
		}
		if !found {
			return 0, fmt.Errorf("%s: no %s flow in table %s priority %d cookie %s any more", node, st.Bridge, st.TableName, st.Priority, st.Cookie)
		}
		return n, nil
	}
}

func lastOn(steps []api.TraceStep, bridge string) api.TraceStep {
	for i := len(steps) - 1; i >= 0; i-- {
		if steps[i].Bridge == bridge {
			return steps[i]
		}
	}
	return steps[len(steps)-1]
}

// hostHealth lists a host's problems: not a member, agent down, OpenFlow
// or OVSDB disconnected, uplink down or dropping.
func (e Env) hostHealth(ctx context.Context, cl cluster, node string) []string {
	var out []string
	switch h, ok := cl.host(node); {
	case !ok:
		out = append(out, "agent's host is not a cluster member: no host record in etcd (removed with keyroutectl hosts remove?)")
	case h.Agent == api.AgentDown:
		// Peers keep its flows; its OVS forwards without the agent.
		out = append(out, "agent down: no liveness record in etcd (stopped, crashed, or cut off from etcd for a lease TTL)")
	}
	c, err := e.agent(node)
	if err != nil {
		return append(out, "agent not reachable: "+err.Error())
	}
	st, err := c.Status(ctx)
	if err != nil {
		return append(out, "agent not answering: "+err.Error())
	}
	for _, b := range st.Bridges {
		if !b.Connected {
			out = append(out, "OpenFlow connection to "+b.Name+" down")
		}
		if len(b.Ports) == 0 {
			out = append(out, "OVSDB lists no ports on "+b.Name+" (connection down?)")
		}
		for _, p := range b.Ports {
			if p.Error != "" {
				out = append(out, fmt.Sprintf("port %s: %s", p.Name, p.Error))
			}
		}
	}
	ports, err := c.Ports(ctx)
	if err != nil {
		return append(out, "port state unreadable: "+err.Error())
	}
	for _, p := range ports {
		if p.Bridge == cl.bridges(node).Physical && p.OFPort == hostlayout.OFPortUplink && (!p.LinkUp || !p.AdminUp) {
			out = append(out, fmt.Sprintf("uplink port %s is down", p.Name))
		}
		if p.RxErrors+p.TxErrors > 0 {
			out = append(out, fmt.Sprintf("port %s: %d rx / %d tx errors", p.Name, p.RxErrors, p.TxErrors))
		}
	}
	return out
}

// Stats counts how often each node was the suspect, most frequent first.
func Stats(ds []api.Diagnosis) []NodeCount {
	m := map[string]*NodeCount{}
	for _, d := range ds {
		if d.Suspect == nil {
			continue
		}
		k := d.Suspect.Kind + " " + d.Suspect.Node
		if m[k] == nil {
			m[k] = &NodeCount{Kind: d.Suspect.Kind, Node: d.Suspect.Node}
		}
		m[k].Count++
		if d.Time.After(m[k].Last) {
			m[k].Last = d.Time
		}
	}
	out := make([]NodeCount, 0, len(m))
	for _, c := range m {
		out = append(out, *c)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Count != out[j].Count {
			return out[i].Count > out[j].Count
		}
		return out[i].Kind+out[i].Node < out[j].Kind+out[j].Node
	})
	return out
}

// NodeCount is how often one node was blamed.
type NodeCount struct {
	Kind  string    `json:"kind"`
	Node  string    `json:"node"`
	Count int       `json:"count"`
	Last  time.Time `json:"last"`
}

// cacheNotes adds the pair's cache state (rewrite mode) to the source and
// destination checks: the egress entry on the sender, the Restore entry on
// the receiver.
func (e Env) cacheNotes(ctx context.Context, res Result, pts []*point) {
	if res.Src.Kind != EndpointContainer || res.Dst.Kind != EndpointContainer || res.Src.Host == res.Dst.Host {
		return
	}
	for _, p := range pts {
		if p.check.Kind != api.CheckHost {
			continue
		}
		side := map[string]string{res.Src.Host: "egress", res.Dst.Host: "restore"}[p.check.Node]
		c, err := e.agent(p.check.Node)
		if side == "" || err != nil {
			continue
		}
		es, err := c.Cache(ctx)
		if err != nil {
			continue // tunnel mode, or the agent is down (reported already)
		}
		note := "cache: no " + side + " entry for the pair"
		for _, ce := range es {
			if ce.Side == side && ce.Src == res.Src.IP && ce.Dst == res.Dst.IP {
				note = fmt.Sprintf("cache: %s entry key %d %s, %d packets", side, ce.Key, ce.State, ce.Packets)
			}
		}
		p.check.Note = strings.TrimPrefix(p.check.Note+"; "+note, "; ")
	}
}

// startCapture starts a tcpdump for the wire header on node's uplink and
// returns what collects it: a summary line and the first packets.
func (e Env) startCapture(ctx context.Context, node string, w *Wire, opt DiagnoseOptions) func() []string {
	c, err := e.agent(node)
	if err != nil {
		return func() []string { return []string{"no capture: " + err.Error()} }
	}
	proto := fabric.ProtoName(w.Tuple.Proto)
	filter := fmt.Sprintf("%s and src host %s and dst host %s", proto, w.Tuple.Src, w.Tuple.Dst)
	if w.Tuple.Proto == fabric.ProtoTCP || w.Tuple.Proto == fabric.ProtoUDP {
		filter += fmt.Sprintf(" and dst port %d", w.Tuple.DPort)
	}
	started, err := c.StartCapture(ctx, api.CaptureRequest{Filter: filter, Count: opt.Probes, TimeoutMs: int((opt.Wait + time.Second).Milliseconds())})
	if err != nil {
		return func() []string { return []string{"no capture on " + node + ": " + err.Error()} }
	}
	return func() []string {
		r, err := c.CaptureResult(ctx, started.ID)
		if err != nil {
			return []string{"capture on " + node + " failed: " + err.Error()}
		}
		out := []string{fmt.Sprintf("%s %s (%s): %d of %d probes seen (tcpdump: %s)", node, r.Iface, filter, len(r.Lines), opt.Probes, r.Stats)}
		return append(out, r.Lines[:min(3, len(r.Lines))]...)
	}
}
