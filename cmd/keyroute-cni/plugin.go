package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/keyroute/keyroute/api"
)

// DefaultSocket is the agent's default API socket (agent config
// api_socket).
const DefaultSocket = "/run/keyroute/agent.sock"

// Plugin-specific CNI error codes (the spec reserves 100 and up).
const (
	ErrPoolExhausted uint = 100 // no free address in this host's pod subnet
	ErrIPInUse       uint = 101 // the requested address is held
)

// NetConf is the plugin's part of a network configuration.
type NetConf struct {
	types.PluginConf
	// Socket is the agent's API socket (default DefaultSocket).
	Socket string `json:"socket,omitempty"`
	// Timeout bounds one call to the agent, e.g. "60s" (default 2m: ADDs
	// on one host are serialised by the agent).
	Timeout string `json:"timeout,omitempty"`
	// RuntimeConfig carries the capabilities the plugin declares.
	RuntimeConfig struct {
		IPs []string `json:"ips,omitempty"`
	} `json:"runtimeConfig,omitempty"`
	// Args may carry the ips convention too: {"cni": {"ips": [...]}}.
	Args struct {
		CNI struct {
			IPs []string `json:"ips,omitempty"`
		} `json:"cni,omitempty"`
	} `json:"args,omitempty"`

	timeout time.Duration
}

// knownFields are the configuration keys the plugin reads or that the
// spec and libcni put into every plugin's configuration; any other key
// is most likely a typo and is refused with its name.
var knownFields = map[string]bool{
	"cniVersion": true, "cniVersions": true, "name": true, "type": true, "capabilities": true,
	"ipam": true, "dns": true, "prevResult": true, "runtimeConfig": true, "args": true,
	"cni.dev/valid-attachments": true, "cni.dev/attachments": true,
	"socket": true, "timeout": true,
}

// parseConf decodes and checks stdin's configuration. Its errors are
// CNI errors naming the field and the fix.
func parseConf(data []byte) (*NetConf, *types.Error) {
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(data, &raw); err != nil {
		return nil, types.NewError(types.ErrDecodingFailure, "keyroute-cni: network configuration is not a JSON object", err.Error())
	}
	keys := make([]string, 0, len(raw))
	for k := range raw {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if !knownFields[k] {
			return nil, types.NewError(types.ErrUnsupportedField,
				fmt.Sprintf("keyroute-cni: unsupported field %q: %s in network configuration %s", k, truncate(raw[k], 64), nameOf(raw)),
				"keyroute-cni reads socket and timeout besides the spec's fields; remove or correct the field")
		}
	}
	var c NetConf
	dec := json.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&c); err != nil {
		return nil, types.NewError(types.ErrDecodingFailure, "keyroute-cni: decode network configuration: "+err.Error(), "")
	}
	bad := func(field, value, fix string) *types.Error {
		return types.NewError(types.ErrInvalidNetworkConfig,
			fmt.Sprintf("keyroute-cni: network configuration %q: %s %q: %s", c.Name, field, value, fix), "")
	}
	if c.IPAM.Type != "" {
		return nil, bad("ipam.type", c.IPAM.Type, "keyroute allocates addresses itself (etcd); remove the ipam section")
	}
	if c.Socket == "" {
		c.Socket = DefaultSocket
	}
	if !filepath.IsAbs(c.Socket) {
		return nil, bad("socket", c.Socket, "give the absolute path of keyroute-agent's API socket (agent config api_socket, default "+DefaultSocket+")")
	}
	c.timeout = 2 * time.Minute
	if c.Timeout != "" {
		d, err := time.ParseDuration(c.Timeout)
		if err != nil || d <= 0 {
			return nil, bad("timeout", c.Timeout, "give a positive duration such as \"60s\"")
		}
		c.timeout = d
	}
	return &c, nil
}

func nameOf(raw map[string]json.RawMessage) string {
	var n string
	json.Unmarshal(raw["name"], &n)
	return fmt.Sprintf("%q", n)
}

func truncate(b []byte, n int) string {
	if len(b) > n {
		return string(b[:n]) + "..."
	}
	return string(b)
}

// requestedIP picks the address asked for through the ips capability,
// args.cni.ips or CNI_ARGS IP=; "" if none. Only one IPv4 address can be
// given: keyroute attaches one per interface.
func requestedIP(c *NetConf, cniArgs string) (string, *types.Error) {
	var asked []string
	asked = append(asked, c.RuntimeConfig.IPs...)
	asked = append(asked, c.Args.CNI.IPs...)
	for _, kv := range strings.Split(cniArgs, ";") {
		if k, v, ok := strings.Cut(kv, "="); ok && k == "IP" {
			asked = append(asked, v)
		}
	}
	var ips []netip.Addr
	for _, s := range asked {
		a, err := netip.ParseAddr(s)
		if err != nil {
			p, perr := netip.ParsePrefix(s)
			if perr != nil {
				return "", types.NewError(types.ErrInvalidNetworkConfig, fmt.Sprintf("keyroute-cni: requested IP %q is neither an address nor an address/prefix", s), "")
			}
			a = p.Addr()
		}
		if !a.Is4() {
			return "", types.NewError(types.ErrInvalidNetworkConfig, fmt.Sprintf("keyroute-cni: requested IP %s is not IPv4: keyroute's pod network is IPv4 only", a), "")
		}
		if len(ips) == 0 || ips[0] != a {
			ips = append(ips, a)
		}
	}
	switch len(ips) {
	case 0:
		return "", nil
	case 1:
		return ips[0].String(), nil
	}
	return "", types.NewError(types.ErrInvalidNetworkConfig, fmt.Sprintf("keyroute-cni: %d different IPs requested (%v): keyroute gives an interface one address", len(ips), ips), "")
}

// cniError turns an agent call's error into a CNI error a person can act
// on.
func cniError(op, socket string, err error) *types.Error {
	if errors.Is(err, api.ErrAgentDown) {
		code := types.ErrTryAgainLater
		if op == "STATUS" {
			code = types.ErrPluginNotAvailable
		}
		return types.NewError(code, fmt.Sprintf("keyroute-cni %s: keyroute-agent does not answer on %s: start it (or fix \"socket\" in the network configuration)", op, socket), err.Error())
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return types.NewError(types.ErrTryAgainLater, fmt.Sprintf("keyroute-cni %s: keyroute-agent on %s did not answer in time", op, socket), err.Error())
	}
	code := types.ErrInternal
	var ae *api.AgentError
	if errors.As(err, &ae) {
		switch ae.Kind {
		case api.KindPoolExhausted:
			code = ErrPoolExhausted
		case api.KindIPInUse:
			code = ErrIPInUse
		case api.KindBadNetNS:
			code = types.ErrInvalidNetNS
		case api.KindNotFound:
			code = types.ErrUnknownContainer
		case api.KindBadRequest:
			code = types.ErrInvalidNetworkConfig
		}
	}
	return types.NewError(code, fmt.Sprintf("keyroute-cni %s: %v", op, err), "")
}

func setup(args *skel.CmdArgs) (*NetConf, *api.Client, context.Context, context.CancelFunc, *types.Error) {
	c, cerr := parseConf(args.StdinData)
	if cerr != nil {
		return nil, nil, nil, nil, cerr
	}
	ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
	return c, api.NewClient(c.Socket), ctx, cancel, nil
}

func cmdAdd(args *skel.CmdArgs) error {
	c, cl, ctx, cancel, cerr := setup(args)
	if cerr != nil {
		return cerr
	}
	defer cancel()
	ip, cerr := requestedIP(c, args.Args)
	if cerr != nil {
		return cerr
	}
	res, err := cl.CNIAdd(ctx, api.CNIAddRequest{
		CNIAttachment: api.CNIAttachment{ContainerID: args.ContainerID, IfName: args.IfName},
		NetNS:         args.Netns, IP: ip,
	})
	if err != nil {
		return cniError("ADD", c.Socket, err)
	}
	r, err := result(res, args.Netns, c.DNS)
	if err != nil {
		return types.NewError(types.ErrInternal, "keyroute-cni ADD: agent's answer: "+err.Error(), "")
	}
	r.CNIVersion = c.CNIVersion
	return types.PrintResult(r, c.CNIVersion)
}

// result builds the CNI result: the interface inside the container with
// its MAC and MTU, the address (a /32: the container reaches everything
// through the gateway, an on-link next hop) and the default route.
func result(res api.CNIAddResult, netns string, dns types.DNS) (*current.Result, error) {
	ip, err := netip.ParseAddr(res.Endpoint.IP)
	if err != nil {
		return nil, fmt.Errorf("ip %q: %w", res.Endpoint.IP, err)
	}
	gw, err := netip.ParseAddr(res.Gateway)
	if err != nil {
		return nil, fmt.Errorf("gateway %q: %w", res.Gateway, err)
	}
	idx := 0
	return &current.Result{
		Interfaces: []*current.Interface{{Name: res.Endpoint.IfName, Mac: res.Endpoint.MAC, Mtu: res.MTU, Sandbox: netns}},
		IPs: []*current.IPConfig{{Interface: &idx, Address: net.IPNet{IP: ip.AsSlice(), Mask: net.CIDRMask(32, 32)},
			Gateway: gw.AsSlice()}},
		Routes: []*types.Route{{Dst: net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}, GW: gw.AsSlice()}},
		DNS:    dns,
	}, nil
}

func cmdDel(args *skel.CmdArgs) error {
	c, cl, ctx, cancel, cerr := setup(args)
	if cerr != nil {
		return cerr
	}
	defer cancel()
	if err := cl.CNIDel(ctx, api.CNIAttachment{ContainerID: args.ContainerID, IfName: args.IfName}); err != nil {
		return cniError("DEL", c.Socket, err)
	}
	return nil
}

func cmdCheck(args *skel.CmdArgs) error {
	c, cl, ctx, cancel, cerr := setup(args)
	if cerr != nil {
		return cerr
	}
	defer cancel()
	ep, err := cl.CNICheck(ctx, api.CNICheckRequest{
		CNIAttachment: api.CNIAttachment{ContainerID: args.ContainerID, IfName: args.IfName}, NetNS: args.Netns})
	if err != nil {
		return cniError("CHECK", c.Socket, err)
	}
	// The runtime's cached result must still describe the attachment.
	if c.RawPrevResult != nil {
		if err := version.ParsePrevResult(&c.PluginConf); err != nil {
			return types.NewError(types.ErrDecodingFailure, "keyroute-cni CHECK: prevResult: "+err.Error(), "")
		}
		prev, err := current.NewResultFromResult(c.PrevResult)
		if err != nil {
			return types.NewError(types.ErrDecodingFailure, "keyroute-cni CHECK: prevResult: "+err.Error(), "")
		}
		found := false
		for _, ipc := range prev.IPs {
			found = found || ipc.Address.IP.String() == ep.IP
		}
		if !found {
			return types.NewError(types.ErrInternal, fmt.Sprintf("keyroute-cni CHECK: container %s %s holds %s, which the runtime's prevResult does not list", args.ContainerID, args.IfName, ep.IP), "")
		}
	}
	return nil
}

func cmdGC(args *skel.CmdArgs) error {
	c, cl, ctx, cancel, cerr := setup(args)
	if cerr != nil {
		return cerr
	}
	defer cancel()
	req := api.CNIGCRequest{Valid: []api.CNIAttachment{}}
	for _, a := range c.ValidAttachments {
		req.Valid = append(req.Valid, api.CNIAttachment{ContainerID: a.ContainerID, IfName: a.IfName})
	}
	if _, err := cl.CNIGC(ctx, req); err != nil {
		return cniError("GC", c.Socket, err)
	}
	return nil
}

func cmdStatus(args *skel.CmdArgs) error {
	c, cl, ctx, cancel, cerr := setup(args)
	if cerr != nil {
		return cerr
	}
	defer cancel()
	st, err := cl.CNIStatus(ctx)
	if err != nil {
		return cniError("STATUS", c.Socket, err)
	}
	if !st.Ready {
		return types.NewError(types.ErrPluginNotAvailable, "keyroute-cni STATUS: keyroute-agent is not ready: "+st.Reason, "")
	}
	return nil
}
