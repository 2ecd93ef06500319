package agent

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"sort"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/keyroute/keyroute/api"
	"github.com/keyroute/keyroute/controller"
	"github.com/keyroute/keyroute/openflow"
	"github.com/keyroute/keyroute/trace"
)

// This file serves keyroutectl trace and diagnose: ofproto/trace on this
// host's bridges, bounded probe packets into a pipeline, port state and
// counters, and the diagnoses kept in etcd under <prefix>diagnoses/.

// maxProbes bounds one probe request, so diagnose cannot flood a host.
const maxProbes = 1000

// flowSpecRE keeps ofproto/trace input to flow syntax: it reaches
// ovs-appctl as one argument, never through a shell, but an option-like
// argument ("-generate") must not get through either.
var flowSpecRE = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.:=,/x-]*$`)

func (a *Agent) bridgeSwitch(name string) (*controller.Switch, error) {
	switch name {
	case a.cfg.Bridges.Integration, "":
		return a.intSw, nil
	case a.cfg.Bridges.Physical:
		return a.phySw, nil
	}
	return nil, badRequest("bridge %q: use %s or %s", name, a.cfg.Bridges.Integration, a.cfg.Bridges.Physical)
}

// OFTrace runs ofproto/trace on one of this host's bridges and parses it.
func (a *Agent) OFTrace(ctx context.Context, r api.OFTraceRequest) (api.OFTrace, error) {
	if r.Bridge == "" {
		r.Bridge = a.cfg.Bridges.Integration
	}
	if _, err := a.bridgeSwitch(r.Bridge); err != nil {
		return api.OFTrace{}, err
	}
	if !flowSpecRE.MatchString(r.Flow) {
		return api.OFTrace{}, badRequest("flow %q: use ovs-ofctl flow syntax (field=value,...)", r.Flow)
	}
	out, err := a.appctl("ofproto/trace", r.Bridge, r.Flow)
	if err != nil {
		return api.OFTrace{}, badRequest("trace on %s: %v", r.Bridge, err)
	}
	t, err := trace.ParseOFProto(a.cfg.Bridges, r.Bridge, out)
	if err != nil {
		return api.OFTrace{}, err
	}
	t.Node = a.cfg.Node
	return t, nil
}

// Probe sends r.Count copies of a test packet into a bridge's pipeline as
// if it had arrived on r.InPort.
func (a *Agent) Probe(ctx context.Context, r api.ProbeRequest) (api.ProbeResult, error) {
	sw, err := a.bridgeSwitch(r.Bridge)
	if err != nil {
		return api.ProbeResult{}, err
	}
	if r.Count < 1 || r.Count > maxProbes {
		return api.ProbeResult{}, badRequest("count %d: use 1..%d", r.Count, maxProbes)
	}
	pkt, err := trace.ProbePacket(r)
	if err != nil {
		return api.ProbeResult{}, badRequest("probe packet: %v", err)
	}
	info, err := a.db.Interface(ctx, r.InPort)
	if err != nil || info.OFPort <= 0 {
		return api.ProbeResult{}, badRequest("in_port %q: not a port with an OpenFlow number here (%v)", r.InPort, err)
	}
	po := &openflow.PacketOut{BufferID: openflow.NoBuffer, InPort: uint32(info.OFPort),
		Actions: []openflow.Action{openflow.OutputPort(openflow.PortTable)}, Data: pkt}
	sent := 0
	for ; sent < r.Count; sent++ {
		if err := sw.Send(po); err != nil {
			return api.ProbeResult{Sent: sent}, fmt.Errorf("send probe %d: %w", sent+1, err)
		}
	}
	if err := sw.Barrier(ctx); err != nil {
		return api.ProbeResult{Sent: sent}, err
	}
	return api.ProbeResult{Sent: sent}, nil
}

// Ports returns both bridges' ports with link state and counters.
func (a *Agent) Ports(ctx context.Context) ([]api.PortState, error) {
	var out []api.PortState
	for _, b := range []struct {
		name string
		sw   *controller.Switch
	}{{a.cfg.Bridges.Integration, a.intSw}, {a.cfg.Bridges.Physical, a.phySw}} {
		desc, err := b.sw.PortDesc(ctx)
		if err != nil {
			return nil, fmt.Errorf("%s ports: %w", b.name, err)
		}
		stats, err := b.sw.PortStats(ctx, openflow.PortAny)
		if err != nil {
			return nil, fmt.Errorf("%s port counters: %w", b.name, err)
		}
		byNo := map[uint32]openflow.PortStats{}
		for _, s := range stats {
			byNo[s.PortNo] = s
		}
		for _, p := range desc {
			s := byNo[p.PortNo]
			out = append(out, api.PortState{Bridge: b.name, Name: p.Name, OFPort: p.PortNo,
				// OFPPS_LINK_DOWN is bit 0 of state, OFPPC_PORT_DOWN bit 0 of config.
				LinkUp: p.State&1 == 0, AdminUp: p.Config&1 == 0,
				RxPackets: counter(s.RxPackets), TxPackets: counter(s.TxPackets), RxDropped: counter(s.RxDropped),
				TxDropped: counter(s.TxDropped), RxErrors: counter(s.RxErrors), TxErrors: counter(s.TxErrors)})
		}
	}
	return out, nil
}

// counter maps OpenFlow's "not supported" (all ones) to 0; patch and
// tunnel ports report it.
func counter(v uint64) uint64 {
	if v == ^uint64(0) {
		return 0
	}
	return v
}

func (a *Agent) diagnosesPrefix() string { return a.cfg.Etcd.Prefix + "diagnoses/" }

// SaveDiagnosis stores a diagnosis in etcd; its ID orders by time.
func (a *Agent) SaveDiagnosis(ctx context.Context, d api.Diagnosis) (api.Diagnosis, error) {
	if d.Time.IsZero() {
		d.Time = time.Now().UTC()
	}
	d.ID = fmt.Sprintf("%020d-%s", d.Time.UnixNano(), a.cfg.Node)
	b, err := json.Marshal(d)
	if err != nil {
		return d, err
	}
	if _, err := a.reg.Raw().Put(ctx, a.diagnosesPrefix()+d.ID, string(b)); err != nil {
		return d, fmt.Errorf("store diagnosis in etcd: %w", err)
	}
	return d, nil
}

// Diagnoses lists stored diagnoses, oldest first; unreadable records are
// skipped with a warning.
func (a *Agent) Diagnoses(ctx context.Context) ([]api.Diagnosis, error) {
	resp, err := a.reg.Raw().Get(ctx, a.diagnosesPrefix(), clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("list diagnoses from etcd: %w", err)
	}
	out := []api.Diagnosis{}
	for _, kv := range resp.Kvs {
		var d api.Diagnosis
		if err := json.Unmarshal(kv.Value, &d); err != nil {
			a.log.Warn("skipping bad diagnosis record", "key", string(kv.Key), "err", err)
			continue
		}
		out = append(out, d)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, nil
}

// traceHandlers registers this file's endpoints.
func (a *Agent) traceHandlers(mux *http.ServeMux) {
	mux.HandleFunc("POST "+api.PathTrace, a.handle(func(r *http.Request) (any, error) {
		var req api.OFTraceRequest
		if err := decodeBody(r, &req); err != nil {
			return nil, err
		}
		return a.OFTrace(r.Context(), req)
	}))
	mux.HandleFunc("POST "+api.PathProbe, a.handle(func(r *http.Request) (any, error) {
		var req api.ProbeRequest
		if err := decodeBody(r, &req); err != nil {
			return nil, err
		}
		return a.Probe(r.Context(), req)
	}))
	mux.HandleFunc("GET "+api.PathPorts, a.handle(func(r *http.Request) (any, error) { return a.Ports(r.Context()) }))
	mux.HandleFunc("POST "+api.PathDiagnoses, a.handle(func(r *http.Request) (any, error) {
		var d api.Diagnosis
		if err := decodeBody(r, &d); err != nil {
			return nil, err
		}
		if strings.TrimSpace(d.Src) == "" || strings.TrimSpace(d.Dst) == "" {
			return nil, badRequest("diagnosis needs src and dst")
		}
		return a.SaveDiagnosis(r.Context(), d)
	}))
	mux.HandleFunc("POST "+api.PathCapture, a.handle(func(r *http.Request) (any, error) {
		var req api.CaptureRequest
		if err := decodeBody(r, &req); err != nil {
			return nil, err
		}
		return a.StartCapture(r.Context(), req)
	}))
	mux.HandleFunc("GET "+api.PathCapture, a.handle(func(r *http.Request) (any, error) {
		return a.CaptureResult(r.Context(), r.URL.Query().Get("id"))
	}))
	mux.HandleFunc("GET "+api.PathDiagnoses, a.handle(func(r *http.Request) (any, error) { return a.Diagnoses(r.Context()) }))
}

// captureFilterRE keeps BPF filters to BPF's characters (tcpdump gets the
// filter as arguments, never through a shell).
var captureFilterRE = regexp.MustCompile(`^[A-Za-z0-9 .:/()!&|=<>-]{0,256}$`)

// checkCaptureFilter accepts a BPF expression only: BPF's characters, and
// no leading '-', so it can never be read as a tcpdump option (it is also
// passed after "--", which ends tcpdump's options).
func checkCaptureFilter(f string) error {
	if !captureFilterRE.MatchString(f) {
		return badRequest("filter %q: use a BPF expression", f)
	}
	if strings.HasPrefix(strings.TrimSpace(f), "-") {
		return badRequest("filter %q: a BPF expression cannot start with '-' (tcpdump options are not accepted)", f)
	}
	return nil
}

// maxCaptures bounds concurrent captures.
const maxCaptures = 4

// captures holds running and uncollected captures by ID. It lives outside
// Agent so this file owns it; IDs are unique per process.
var captures = struct {
	sync.Mutex
	jobs map[string]*captureJob
}{jobs: map[string]*captureJob{}}

// captureJob is one running or finished tcpdump.
type captureJob struct {
	done  chan struct{}
	lines []string
	stats string
	err   error
}

// StartCapture runs tcpdump on the uplink and returns once it listens.
func (a *Agent) StartCapture(ctx context.Context, r api.CaptureRequest) (api.CaptureResult, error) {
	if err := checkCaptureFilter(r.Filter); err != nil {
		return api.CaptureResult{}, err
	}
	if r.Count < 1 || r.Count > maxProbes {
		return api.CaptureResult{}, badRequest("count %d: use 1..%d", r.Count, maxProbes)
	}
	if r.TimeoutMs < 1 || r.TimeoutMs > 10000 {
		return api.CaptureResult{}, badRequest("timeout_ms %d: use 1..10000", r.TimeoutMs)
	}
	captures.Lock()
	running := len(captures.jobs)
	captures.Unlock()
	if running >= maxCaptures {
		return api.CaptureResult{}, badRequest("%d captures already running or uncollected", running)
	}
	dev, release, err := a.captureDev(ctx)
	if err != nil {
		return api.CaptureResult{}, err
	}
	cctx, cancel0 := context.WithTimeout(context.Background(), time.Duration(r.TimeoutMs)*time.Millisecond)
	cancel := func() { cancel0(); release() }
	// A small snap length keeps libpcap's ring at many small frames: with
	// the default (256 KiB frames) a burst of probes overflows it.
	args := append([]string{"-nn", "-v", "-l", "--immediate-mode", "-s", "128", "-i", dev, "-c", fmt.Sprint(r.Count), "--"}, strings.Fields(r.Filter)...)
	cmd := exec.CommandContext(cctx, "tcpdump", args...)
	// SIGINT at the timeout, so tcpdump prints its counts.
	cmd.Cancel = func() error { return cmd.Process.Signal(os.Interrupt) }
	cmd.WaitDelay = 2 * time.Second
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		cancel()
		return api.CaptureResult{}, err
	}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		cancel()
		return api.CaptureResult{}, err
	}
	if err := cmd.Start(); err != nil {
		cancel()
		return api.CaptureResult{}, fmt.Errorf("start tcpdump on %s: %w", dev, err)
	}
	job := &captureJob{done: make(chan struct{})}
	listening := make(chan error, 1)
	stderrDone := make(chan struct{})
	go func() {
		defer close(stderrDone)
		sc := bufio.NewScanner(stderr)
		var last string
		for sc.Scan() {
			last = sc.Text()
			if strings.Contains(last, "listening on") {
				listening <- nil
				// What is left is tcpdump's closing count of captured
				// and dropped packets.
				rest, _ := io.ReadAll(stderr)
				job.stats = strings.Join(strings.Fields(string(rest)), " ")
				return
			}
		}
		listening <- fmt.Errorf("tcpdump on %s: %s", dev, last)
	}()
	go func() {
		defer close(job.done)
		defer cancel()
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			l := sc.Text()
			// -v continues a packet on indented lines.
			if strings.HasPrefix(l, " ") && len(job.lines) > 0 {
				job.lines[len(job.lines)-1] += " " + strings.TrimSpace(l)
				continue
			}
			job.lines = append(job.lines, l)
		}
		<-stderrDone // Wait closes the pipes
		// A capture that ends by its timeout just saw fewer packets.
		if err := cmd.Wait(); err != nil && cctx.Err() == nil {
			job.err = err
		}
	}()
	select {
	case err := <-listening:
		if err != nil {
			cancel()
			<-job.done
			return api.CaptureResult{}, err
		}
	case <-ctx.Done():
		cancel()
		return api.CaptureResult{}, ctx.Err()
	}
	id := fmt.Sprintf("%d", time.Now().UnixNano())
	captures.Lock()
	captures.jobs[id] = job
	captures.Unlock()
	// Uncollected captures are forgotten a while after they end.
	go func() {
		<-job.done
		time.Sleep(time.Minute)
		captures.Lock()
		delete(captures.jobs, id)
		captures.Unlock()
	}()
	return api.CaptureResult{ID: id, Iface: a.cfg.Uplink}, nil
}

// CaptureResult waits for a capture to end and returns its packets.
func (a *Agent) CaptureResult(ctx context.Context, id string) (api.CaptureResult, error) {
	captures.Lock()
	job, ok := captures.jobs[id]
	captures.Unlock()
	if !ok {
		return api.CaptureResult{}, badRequest("no capture %q (finished more than a minute ago, or never started)", id)
	}
	select {
	case <-job.done:
	case <-ctx.Done():
		return api.CaptureResult{}, ctx.Err()
	}
	captures.Lock()
	delete(captures.jobs, id)
	captures.Unlock()
	if job.err != nil {
		return api.CaptureResult{}, fmt.Errorf("tcpdump on %s: %w", a.cfg.Uplink, job.err)
	}
	return api.CaptureResult{ID: id, Iface: a.cfg.Uplink, Lines: job.lines, Stats: job.stats}, nil
}
