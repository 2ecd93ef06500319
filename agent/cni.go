package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/keyroute/keyroute/api"
	"github.com/keyroute/keyroute/ovsdb"
	"github.com/keyroute/keyroute/registry"
)

// This file serves the CNI plugin (cmd/keyroute-cni). A CNI attachment
// is an ordinary endpoint named registry.CNIName(container ID, ifname)
// whose record also carries both, so DEL and GC find it again after an
// agent restart. The plugin only relays: OVS, etcd and netlink stay the
// agent's.

// kindError gives an error an API kind (api.Kind*).
type kindError struct {
	kind string
	err  error
}

func (e *kindError) Error() string { return e.err.Error() }
func (e *kindError) Unwrap() error { return e.err }

// errorClass maps an error to the API's HTTP status and kind.
func errorClass(err error) (int, string) {
	var ke *kindError
	switch {
	case errors.As(err, &ke) && ke.kind == api.KindNotFound:
		return http.StatusNotFound, ke.kind
	case errors.As(err, &ke):
		return http.StatusBadRequest, ke.kind
	case errors.Is(err, registry.ErrAddrsExhausted):
		return http.StatusInsufficientStorage, api.KindPoolExhausted
	case errors.Is(err, registry.ErrIPInUse):
		return http.StatusConflict, api.KindIPInUse
	case errors.Is(err, ErrBadRequest):
		return http.StatusBadRequest, api.KindBadRequest
	}
	return http.StatusInternalServerError, ""
}

func (a *Agent) cniHandlers(mux *http.ServeMux) {
	mux.HandleFunc("POST "+api.PathCNIAdd, a.handle(func(r *http.Request) (any, error) {
		var req api.CNIAddRequest
		if err := decodeBody(r, &req); err != nil {
			return nil, err
		}
		return a.CNIAdd(r.Context(), req)
	}))
	mux.HandleFunc("POST "+api.PathCNIDel, a.handle(func(r *http.Request) (any, error) {
		var req api.CNIAttachment
		if err := decodeBody(r, &req); err != nil {
			return nil, err
		}
		return map[string]string{}, a.CNIDel(r.Context(), req)
	}))
	mux.HandleFunc("POST "+api.PathCNICheck, a.handle(func(r *http.Request) (any, error) {
		var req api.CNICheckRequest
		if err := decodeBody(r, &req); err != nil {
			return nil, err
		}
		return a.CNICheck(r.Context(), req)
	}))
	mux.HandleFunc("POST "+api.PathCNIGC, a.handle(func(r *http.Request) (any, error) {
		var req api.CNIGCRequest
		if err := decodeBody(r, &req); err != nil {
			return nil, err
		}
		return a.CNIGC(r.Context(), req.Valid)
	}))
	mux.HandleFunc("GET "+api.PathCNIStatus, a.handle(func(r *http.Request) (any, error) { return a.CNIStatus(r.Context()), nil }))
}

func validateAttachment(at api.CNIAttachment) error {
	if err := registry.ValidateContainerID(at.ContainerID); err != nil {
		return badRequest("container ID: %v", err)
	}
	if err := registry.ValidateIfName(at.IfName); err != nil {
		return badRequest("interface name: %v", err)
	}
	return nil
}

// CNIAdd attaches the runtime's namespace req.NetNS as interface
// req.IfName. ADD again with the same namespace returns the attachment.
func (a *Agent) CNIAdd(ctx context.Context, req api.CNIAddRequest) (api.CNIAddResult, error) {
	if err := validateAttachment(req.CNIAttachment); err != nil {
		return api.CNIAddResult{}, err
	}
	if req.NetNS == "" || req.NetNS[0] != '/' {
		return api.CNIAddResult{}, &kindError{api.KindBadNetNS, fmt.Errorf("netns %q is not a path to a network namespace", req.NetNS)}
	}
	if err := checkNetNS(req.NetNS); err != nil {
		return api.CNIAddResult{}, &kindError{api.KindBadNetNS, err}
	}
	ep, err := a.attach(ctx, attachRequest{NetNS: req.NetNS, Name: registry.CNIName(req.ContainerID, req.IfName),
		IP: req.IP, ContainerID: req.ContainerID, IfName: req.IfName})
	if err != nil {
		return api.CNIAddResult{}, err
	}
	return api.CNIAddResult{Endpoint: toAPIEndpoint(ep), Gateway: a.host.Gateway.String(), MTU: a.containerMTU,
		PodSubnet: a.host.Subnet.String(), ClusterCIDR: a.host.Cluster.String()}, nil
}

// checkNetNS checks that path is a network namespace as this agent sees
// it. A runtime in a mount namespace the agent does not share (a slave
// of the host's, as `ip netns exec` makes) creates its namespace's bind
// mount where the agent sees only the empty file under it.
func checkNetNS(path string) error {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return fmt.Errorf("netns %s: %w", path, os.ErrNotExist)
	}
	if st.Type != unix.NSFS_MAGIC {
		return fmt.Errorf("netns %s is not a namespace where keyroute-agent looks (file system 0x%x): the runtime made it in a mount namespace the agent does not share; run both in the host's mount namespace (in Kubernetes: mount /run/netns with mountPropagation HostToContainer)", path, st.Type)
	}
	return nil
}

// cniEndpoint finds the endpoint of a CNI attachment: the live one, else
// a record left in etcd whose port was gone at the agent's start.
func (a *Agent) cniEndpoint(ctx context.Context, name string) (ep registry.Endpoint, live, ok bool, err error) {
	a.mu.Lock()
	ep, ok = a.endpoints[name]
	a.mu.Unlock()
	if ok {
		return ep, true, true, nil
	}
	eps, err := a.reg.ListEndpoints(ctx, registry.EndpointFilter{Host: a.cfg.Node})
	if err != nil {
		return registry.Endpoint{}, false, false, fmt.Errorf("list this host's endpoints: %w", err)
	}
	for _, e := range eps {
		if e.Name == name {
			return e, false, true, nil
		}
	}
	return registry.Endpoint{}, false, false, nil
}

// CNIDel removes an attachment; one that does not exist is no error.
func (a *Agent) CNIDel(ctx context.Context, at api.CNIAttachment) error {
	if validateAttachment(at) != nil {
		return nil // ADD refuses such names: nothing can exist
	}
	name := registry.CNIName(at.ContainerID, at.IfName)
	ep, live, ok, err := a.cniEndpoint(ctx, name)
	if err != nil || !ok {
		return err
	}
	return a.removeCNI(ctx, ep, live)
}

// removeCNI detaches a live endpoint, or removes what is left of one
// that is not (its port, veth and record).
func (a *Agent) removeCNI(ctx context.Context, ep registry.Endpoint, live bool) error {
	if live {
		err := a.Detach(ctx, ep.Name)
		if errors.Is(err, ErrBadRequest) {
			return nil // detached meanwhile
		}
		return err
	}
	a.attachMu.Lock()
	defer a.attachMu.Unlock()
	if err := a.db.DeletePort(ctx, a.cfg.Bridges.Integration, ep.Port); err != nil && !errors.Is(err, ovsdb.ErrNotFound) {
		return fmt.Errorf("remove port %s of %s: %w", ep.Port, ep.Name, err)
	}
	releasePort(ep.Port)
	if err := deleteLink(ep.Port); err != nil {
		return err
	}
	if err := a.reg.DeleteEndpoint(ctx, ep.IP, a.cfg.Node); err != nil && !errors.Is(err, registry.ErrNotFound) {
		return fmt.Errorf("release %s of %s: %w", ep.IP, ep.Name, err)
	}
	a.log.Info("removed stale container record", "name", ep.Name, "ip", ep.IP)
	return nil
}

// CNICheck says what differs from what ADD made: the record, the OVS
// port, the host end of the veth and the container's interface.
func (a *Agent) CNICheck(ctx context.Context, req api.CNICheckRequest) (api.Endpoint, error) {
	ep, err := a.cniCheck(ctx, req)
	if err != nil {
		return api.Endpoint{}, err
	}
	return toAPIEndpoint(ep), nil
}

func (a *Agent) cniCheck(ctx context.Context, req api.CNICheckRequest) (registry.Endpoint, error) {
	fail := func(err error) (registry.Endpoint, error) { return registry.Endpoint{}, err }
	if err := validateAttachment(req.CNIAttachment); err != nil {
		return fail(err)
	}
	name := registry.CNIName(req.ContainerID, req.IfName)
	a.mu.Lock()
	ep, ok := a.endpoints[name]
	a.mu.Unlock()
	if !ok {
		return fail(&kindError{api.KindNotFound, fmt.Errorf("container %s has no attachment %s on %s: ADD it again", req.ContainerID, req.IfName, a.cfg.Node)})
	}
	if req.NetNS != "" && req.NetNS != ep.Netns {
		return fail(fmt.Errorf("container %s %s is attached to netns %s, not %s", req.ContainerID, req.IfName, ep.Netns, req.NetNS))
	}
	info, err := a.db.Interface(ctx, ep.Port)
	if err != nil || info.OFPort <= 0 {
		return fail(fmt.Errorf("container %s %s: OVS port %s on %s is missing or has no OpenFlow port (%v)", req.ContainerID, req.IfName, ep.Port, a.cfg.Bridges.Integration, err))
	}
	host, err := netlink.LinkByName(ep.Port)
	if err != nil {
		return fail(fmt.Errorf("container %s %s: host end %s: %w", req.ContainerID, req.IfName, ep.Port, err))
	}
	if host.Attrs().Flags&net.FlagUp == 0 {
		return fail(fmt.Errorf("container %s %s: host end %s is down", req.ContainerID, req.IfName, ep.Port))
	}
	return ep, checkContainerLink(ep)
}

// checkContainerLink checks the interface inside the container: present,
// up, with the endpoint's MAC and address.
func checkContainerLink(ep registry.Endpoint) error {
	nsh, err := netns.GetFromPath(ep.Netns)
	if err != nil {
		return fmt.Errorf("open netns %s: %w", ep.Netns, err)
	}
	defer nsh.Close()
	h, err := netlink.NewHandleAt(nsh)
	if err != nil {
		return fmt.Errorf("netlink in %s: %w", ep.Netns, err)
	}
	defer h.Close()
	l, err := h.LinkByName(ep.IfName)
	if err != nil {
		return fmt.Errorf("%s in %s: %w", ep.IfName, ep.Netns, err)
	}
	if mac := endpointMAC(ep); l.Attrs().HardwareAddr.String() != mac.String() {
		return fmt.Errorf("%s in %s has MAC %s, want %s", ep.IfName, ep.Netns, l.Attrs().HardwareAddr, mac)
	}
	if l.Attrs().Flags&net.FlagUp == 0 {
		return fmt.Errorf("%s in %s is down", ep.IfName, ep.Netns)
	}
	addrs, err := h.AddrList(l, unix.AF_INET)
	if err != nil {
		return fmt.Errorf("addresses of %s in %s: %w", ep.IfName, ep.Netns, err)
	}
	var have []string
	for _, ad := range addrs {
		if ad.IP.Equal(ep.IP.AsSlice()) {
			return nil
		}
		have = append(have, ad.IPNet.String())
	}
	return fmt.Errorf("%s in %s lacks its address %s (has %v)", ep.IfName, ep.Netns, ep.IP, have)
}

// CNIGC removes this host's CNI attachments that valid does not name.
func (a *Agent) CNIGC(ctx context.Context, valid []api.CNIAttachment) (api.CNIGCResult, error) {
	keep := make(map[string]bool, len(valid))
	for _, v := range valid {
		keep[registry.CNIName(v.ContainerID, v.IfName)] = true
	}
	eps, err := a.reg.ListEndpoints(ctx, registry.EndpointFilter{Host: a.cfg.Node})
	if err != nil {
		return api.CNIGCResult{}, fmt.Errorf("list this host's endpoints: %w", err)
	}
	res := api.CNIGCResult{Removed: []api.CNIAttachment{}}
	var errs []error
	for _, ep := range eps {
		if ep.ContainerID == "" || keep[ep.Name] {
			continue
		}
		a.mu.Lock()
		_, live := a.endpoints[ep.Name]
		a.mu.Unlock()
		if err := a.removeCNI(ctx, ep, live); err != nil {
			errs = append(errs, fmt.Errorf("remove %s %s: %w", ep.ContainerID, ep.IfName, err))
			continue
		}
		res.Removed = append(res.Removed, api.CNIAttachment{ContainerID: ep.ContainerID, IfName: ep.IfName})
	}
	if len(res.Removed) > 0 {
		a.log.Info("CNI GC removed attachments", "count", len(res.Removed))
	}
	return res, errors.Join(errs...)
}

// CNIStatus is ready while br-int's OpenFlow connection is up and etcd
// answers: what ADD needs.
func (a *Agent) CNIStatus(ctx context.Context) api.CNIStatus {
	if !a.intSw.Connected() {
		return api.CNIStatus{Reason: fmt.Sprintf("no OpenFlow connection to %s (is ovs-vswitchd running?)", a.cfg.Bridges.Integration)}
	}
	hctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if _, err := a.reg.Raw().Get(hctx, "health"); err != nil {
		return api.CNIStatus{Reason: fmt.Sprintf("etcd does not answer: %v", err)}
	}
	return api.CNIStatus{Ready: true}
}
