package trace

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/keyroute/keyroute/api"
	"github.com/keyroute/keyroute/fabric"
	"github.com/keyroute/keyroute/flows"
	"github.com/keyroute/keyroute/hostlayout"
)

const keyedVNIMask = flows.KeyedVNIFlag

// Env is what a trace reads: every host's agent by node name, and the
// fabric model (nil: no fabric hops).
type Env struct {
	Agents map[string]*api.Client
	Fabric *fabric.Model
}

// Request is one flow to follow: src and dst are container names, IPs,
// host names or host IPs (dst may be any outside IP).
type Request struct {
	Src, Dst     string
	Proto        uint8
	SPort, DPort uint16
}

// Endpoint is a resolved end of the flow.
type Endpoint struct {
	Kind EndpointKind `json:"kind"`
	Name string       `json:"name,omitempty"`
	IP   string       `json:"ip"`
	Host string       `json:"host,omitempty"`
	Port string       `json:"port,omitempty"`
	MAC  string       `json:"mac,omitempty"`
}

// Wire is the header as the fabric sees it.
type Wire struct {
	Kind  WireKind     `json:"kind"`
	Tuple fabric.Tuple `json:"tuple"`
	DSCP  uint8        `json:"dscp"`
	Key   uint8        `json:"key,omitempty"`
	VNI   uint32       `json:"vni,omitempty"`
	// SportUnknown: the outer UDP source port comes from OVS's packet
	// hash, so the fabric path is one of several.
	SportUnknown bool   `json:"sport_unknown,omitempty"`
	Note         string `json:"note,omitempty"`
}

// Result is an end-to-end trace.
type Result struct {
	Request     Request             `json:"request"`
	Src         Endpoint            `json:"src"`
	Dst         Endpoint            `json:"dst"`
	Path        Path                `json:"path"`
	Source      *api.OFTrace        `json:"source,omitempty"`
	SourceError string              `json:"source_error,omitempty"`
	Wire        *Wire               `json:"wire,omitempty"`
	Fabric      []fabric.SharedPath `json:"fabric,omitempty"`
	FabricError string              `json:"fabric_error,omitempty"`
	Dest        *api.OFTrace        `json:"dest,omitempty"`
	DestError   string              `json:"dest_error,omitempty"`
	Verdict     string              `json:"verdict"`
}

// cluster is what the agents know, read once per trace.
type cluster struct {
	hosts []api.Host
	eps   []api.Endpoint
	// gatewayMAC is the cluster's (cluster.gateway_mac), as an agent
	// reports it.
	gatewayMAC string
}

func (e Env) anyAgent(ctx context.Context) (*api.Client, api.Status, error) {
	names := make([]string, 0, len(e.Agents))
	for n := range e.Agents {
		names = append(names, n)
	}
	slices.Sort(names)
	var errs []error
	for _, n := range names {
		if st, err := e.Agents[n].Status(ctx); err == nil {
			return e.Agents[n], st, nil
		} else {
			errs = append(errs, fmt.Errorf("%s: %w", n, err))
		}
	}
	return nil, api.Status{}, fmt.Errorf("no agent answers: %w", errors.Join(errs...))
}

func (e Env) load(ctx context.Context) (cluster, error) {
	c, st, err := e.anyAgent(ctx)
	if err != nil {
		return cluster{}, err
	}
	hs, err := c.Hosts(ctx)
	if err != nil {
		return cluster{}, err
	}
	eps, err := c.Endpoints(ctx, true)
	if err != nil {
		return cluster{}, err
	}
	if _, err := net.ParseMAC(st.GatewayMAC); err != nil {
		return cluster{}, fmt.Errorf("the cluster's gateway MAC %q from %s's status: %w", st.GatewayMAC, st.Node, err)
	}
	return cluster{hosts: hs, eps: eps, gatewayMAC: st.GatewayMAC}, nil
}

// bridges returns a host's bridge names (the defaults for a host that does
// not publish them, or is unknown).
func (cl cluster) bridges(host string) hostlayout.Bridges {
	h, _ := cl.host(host)
	return h.Bridges.OrDefault()
}

// resolve finds a container (name, host/name or IP), a host (name or IP),
// or an outside IP.
func (cl cluster) resolve(s string) (Endpoint, error) {
	hostPart, name, scoped := strings.Cut(s, "/")
	for _, ep := range cl.eps {
		if ep.IP == s || (!scoped && ep.Name == s) || (scoped && ep.Host == hostPart && ep.Name == name) {
			return Endpoint{Kind: EndpointContainer, Name: ep.Name, IP: ep.IP, Host: ep.Host, Port: ep.Port, MAC: ep.MAC}, nil
		}
	}
	for _, h := range cl.hosts {
		if h.IP == s || h.Name == s {
			return Endpoint{Kind: EndpointHost, Name: h.Name, IP: h.IP, Host: h.Name, MAC: h.MAC}, nil
		}
	}
	if a, err := netip.ParseAddr(s); err == nil && a.Is4() {
		return Endpoint{Kind: EndpointOutside, IP: s}, nil
	}
	return Endpoint{}, fmt.Errorf("%q is not a container, host or IPv4 address of this cluster", s)
}

func (cl cluster) host(name string) (api.Host, bool) {
	for _, h := range cl.hosts {
		if h.Name == name {
			return h, true
		}
	}
	return api.Host{}, false
}

func (cl cluster) hostByIP(ip string) (api.Host, bool) {
	for _, h := range cl.hosts {
		if h.IP == ip {
			return h, true
		}
	}
	return api.Host{}, false
}

func (e Env) agent(node string) (*api.Client, error) {
	c, ok := e.Agents[node]
	if !ok {
		return nil, fmt.Errorf("no API for host %s: its agent publishes none (set api_listen there), or pass --agents %s=SOCKET or --hosts-file", node, node)
	}
	return c, nil
}

// Trace follows r from its source host's pipeline across the fabric to
// its destination host's pipeline.
func Trace(ctx context.Context, e Env, r Request) (Result, error) {
	res := Result{Request: r}
	cl, err := e.load(ctx)
	if err != nil {
		return res, err
	}
	if res.Src, err = cl.resolve(r.Src); err != nil {
		return res, fmt.Errorf("source: %w", err)
	}
	if res.Dst, err = cl.resolve(r.Dst); err != nil {
		return res, fmt.Errorf("destination: %w", err)
	}
	if res.Src.Kind == EndpointOutside {
		return res, fmt.Errorf("source %s: trace starts at a container or a host", r.Src)
	}
	sa, err1 := netip.ParseAddr(res.Src.IP)
	da, err2 := netip.ParseAddr(res.Dst.IP)
	if err := errors.Join(err1, err2); err != nil {
		return res, fmt.Errorf("addresses of %s and %s: %w", r.Src, r.Dst, err)
	}
	inner := Header{Src: sa, Dst: da, Proto: r.Proto, SPort: r.SPort, DPort: r.DPort}
	hb := cl.bridges(res.Src.Host)
	bridge, inPort := hb.Integration, res.Src.Port
	switch {
	case res.Src.Kind == EndpointContainer:
		inner.SrcMAC, inner.DstMAC = res.Src.MAC, cl.gatewayMAC
	case res.Dst.Kind == EndpointContainer:
		// The host routes the pod CIDR through its gateway port.
		inPort, inner.SrcMAC, inner.DstMAC = strconv.Itoa(int(hostlayout.OFPortGateway)), hostlayout.GatewayPortMAC.String(), cl.gatewayMAC
	default:
		bridge, inPort, inner.SrcMAC = hb.Physical, "LOCAL", res.Src.MAC
		if h, ok := cl.hostByIP(res.Dst.IP); ok {
			inner.DstMAC = h.MAC
		}
	}
	src, err := e.agent(res.Src.Host)
	if err == nil {
		var t api.OFTrace
		t, err = src.OFTrace(ctx, api.OFTraceRequest{Bridge: bridge, Flow: inner.OVSFlow(inPort)})
		res.Source = &t
	}
	if err != nil {
		res.SourceError = err.Error()
		res.Source = nil
		res.Verdict = "source host " + res.Src.Host + " not traced: " + err.Error()
		return res, nil
	}
	e.classifySource(&res, cl, inner)
	if res.Wire != nil && e.Fabric != nil {
		var err error
		if res.Wire.SportUnknown {
			res.Fabric, err = e.Fabric.RouteAnySport(res.Wire.Tuple)
		} else {
			var p fabric.Path
			if p, err = e.Fabric.Route(res.Wire.Tuple); err == nil {
				res.Fabric = []fabric.SharedPath{{Path: p, Ports: 1, Share: 1, ExampleSport: p.Tuple.SPort}}
			}
		}
		if err != nil {
			res.FabricError = err.Error()
		}
	} else if res.Wire != nil {
		res.FabricError = fabric.ErrNoModel.Error()
	}
	if res.Wire != nil && res.Path != PathOutside {
		e.traceDest(ctx, &res, cl, inner)
	}
	res.Verdict = verdict(res)
	return res, nil
}

// classifySource reads where the packet leaves the source host.
func (e Env) classifySource(res *Result, cl cluster, inner Header) {
	t := res.Source
	hb := cl.bridges(res.Src.Host)
	gatewayOut, uplinkOut := hb.GatewayOutput(), hb.UplinkOutput()
	switch t.Verdict {
	case api.VerdictDrop:
		res.Path = PathDropped
	case api.VerdictController:
		res.Path = PathController
	case api.VerdictTunnel:
		res.Path = PathVXLAN
		w := &Wire{Kind: WireVXLAN, VNI: t.Tunnel.VNI, DSCP: t.Tunnel.DSCP, SportUnknown: true,
			Note: "outer UDP source port comes from OVS's packet hash: the fabric path is one of several"}
		src, err1 := netip.ParseAddr(t.Tunnel.Src)
		dst, err2 := netip.ParseAddr(t.Tunnel.Dst)
		if err1 != nil || err2 != nil {
			res.SourceError = "no outer IPv4 header in the datapath actions: " + t.DatapathActions
			return
		}
		w.Tuple = fabric.Tuple{Src: src, Dst: dst, Proto: fabric.ProtoUDP, DPort: t.Tunnel.UDPDst}
		if t.Tunnel.VNI&keyedVNIMask != 0 {
			w.Key = uint8(t.Tunnel.VNI & 0x3f)
			w.Note += fmt.Sprintf("; keyed VNI: cache entry pending for key %d", w.Key)
		}
		res.Wire = w
	case api.VerdictOutput:
		fin := t.FinalFlow
		if fin == "unchanged" || fin == "" {
			fin = t.Flow
		}
		h, err := FinalHeader(fin)
		if err != nil {
			res.Path = PathUnknown
			res.SourceError = err.Error()
			return
		}
		switch {
		case slices.Contains(t.Outputs, uplinkOut) && h.DSCP != 0 && res.Src.Kind == EndpointContainer:
			res.Path = PathFast
			res.Wire = &Wire{Kind: WireRewritten, Tuple: h.Tuple(), DSCP: h.DSCP, Key: h.DSCP,
				Note: "container addresses rewritten to host addresses; the key is in DSCP"}
		case slices.Contains(t.Outputs, uplinkOut):
			res.Path = PathHostStack
			res.Wire = &Wire{Kind: WireHost, Tuple: h.Tuple(), DSCP: h.DSCP}
		case slices.Contains(t.Outputs, gatewayOut) && res.Dst.Kind == EndpointOutside:
			res.Path = PathOutside
			// The host masquerades it; the fabric sees the host's address
			// (and possibly another source port).
			src, _ := cl.host(res.Src.Host)
			tup := h.Tuple()
			if a, err := netip.ParseAddr(src.IP); err == nil {
				tup.Src = a
			}
			res.Wire = &Wire{Kind: WireMasqueraded, Tuple: tup, Note: "via the gateway port into the host stack, masqueraded to the host IP (the source port may change)"}
		case slices.Contains(t.Outputs, gatewayOut):
			res.Path = PathHostStack
		default:
			res.Path = PathSameHost
		}
	}
}

// traceDest runs the destination host's half: the packet as it arrives
// from the fabric.
func (e Env) traceDest(ctx context.Context, res *Result, cl cluster, inner Header) {
	dh, ok := cl.hostByIP(res.Wire.Tuple.Dst.String())
	if !ok {
		res.DestError = "destination " + res.Wire.Tuple.Dst.String() + " is not a keyroute host"
		return
	}
	c, err := e.agent(dh.Name)
	if err != nil {
		res.DestError = err.Error()
		return
	}
	var req api.OFTraceRequest
	hb := cl.bridges(dh.Name)
	switch res.Wire.Kind {
	case WireVXLAN:
		req = api.OFTraceRequest{Bridge: hb.Integration, Flow: inner.OVSFlow(strconv.Itoa(int(hostlayout.OFPortVXLAN)),
			fmt.Sprintf("tun_id=0x%x", res.Wire.VNI), "tun_src="+res.Wire.Tuple.Src.String(), "tun_dst="+res.Wire.Tuple.Dst.String())}
	default:
		h := Header{Src: res.Wire.Tuple.Src, Dst: res.Wire.Tuple.Dst, Proto: res.Wire.Tuple.Proto, SPort: res.Wire.Tuple.SPort,
			DPort: res.Wire.Tuple.DPort, DSCP: res.Wire.DSCP, DstMAC: dh.MAC}
		if sh, ok := cl.hostByIP(h.Src.String()); ok {
			h.SrcMAC = sh.MAC
		}
		req = api.OFTraceRequest{Bridge: hb.Physical, Flow: h.OVSFlow(strconv.Itoa(int(hostlayout.OFPortUplink)))}
	}
	t, err := c.OFTrace(ctx, req)
	if err != nil {
		res.DestError = err.Error()
		return
	}
	res.Dest = &t
}

func stepWords(s api.TraceStep) string {
	return fmt.Sprintf("%s %s (table %d) %s flow, priority %d, match %s", s.Bridge, s.TableName, s.Table, s.Category, s.Priority, s.Match)
}

func verdict(r Result) string {
	switch r.Path {
	case PathDropped:
		if i := r.Source.DropStep; i >= 0 {
			return fmt.Sprintf("dropped on %s at %s", r.Src.Host, stepWords(r.Source.Steps[i]))
		}
		return "dropped on " + r.Src.Host + " (datapath actions: drop)"
	case PathController:
		return "sent only to " + r.Src.Host + "'s agent"
	case PathSameHost:
		return "delivered on " + r.Src.Host + " without leaving it (same host)"
	case PathOutside:
		return "leaves " + r.Src.Host + " through the gateway port, masqueraded to the host IP, towards " + r.Dst.IP
	}
	how := map[Path]string{PathFast: "fast path (no encapsulation, key in DSCP)", PathVXLAN: "VXLAN", PathHostStack: "host to host"}[r.Path]
	if r.Path == PathFast {
		how = fmt.Sprintf("fast path (no encapsulation, key %d in DSCP)", r.Wire.Key)
	}
	if r.Path == PathVXLAN {
		how = fmt.Sprintf("VXLAN (VNI 0x%x)", r.Wire.VNI)
	}
	switch {
	case r.DestError != "":
		return how + "; destination side not traced: " + r.DestError
	case r.Dest == nil:
		return how
	case r.Dest.Verdict == api.VerdictDrop:
		if i := r.Dest.DropStep; i >= 0 {
			return fmt.Sprintf("%s; dropped on the destination host at %s", how, stepWords(r.Dest.Steps[i]))
		}
		return how + "; dropped on the destination host"
	default:
		last := r.Dest.Steps[len(r.Dest.Steps)-1]
		return fmt.Sprintf("%s; delivered by %s", how, stepWords(last))
	}
}
