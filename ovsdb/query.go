package ovsdb

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"time"
)

// PortInfo describes one interface and the port and bridge it belongs to.
type PortInfo struct {
	Name        string // interface name (keyroute's ports have one interface of the port's name)
	Port        string
	Bridge      string
	Type        string
	Options     map[string]string // Interface.options
	OFPort      int               // -1: OVS could not add it; 0: not assigned yet
	Error       string            // Interface.error
	MAC         string            // Interface.mac_in_use, else Interface.mac
	ExternalIDs map[string]string // Interface.external_ids
}

// PortError is an interface that OVS could not add (Interface.error set or
// ofport -1).
type PortError struct {
	Port, Bridge, Reason string
}

func (e *PortError) Error() string {
	return fmt.Sprintf("port %s on %s: %s", e.Port, e.Bridge, e.Reason)
}

// portInfos reads the interfaces matching where, with their ports and bridges.
func (c *Client) portInfos(ctx context.Context, where []Condition) ([]PortInfo, []Row, error) {
	res, err := c.Transact(ctx, DB,
		Select("Bridge", nil, "name", "ports"),
		Select("Port", nil, "_uuid", "name", "interfaces"),
		Select("Interface", where, "_uuid", "name", "type", "options", "ofport", "error", "mac", "mac_in_use", "external_ids"))
	if err != nil {
		return nil, nil, err
	}
	bridgeOf := map[UUID]string{}
	for _, b := range res[0].Rows {
		for _, p := range b.UUIDs("ports") {
			bridgeOf[p] = b.String("name")
		}
	}
	type portRef struct {
		name, bridge string
	}
	portOf := map[UUID]portRef{}
	for _, p := range res[1].Rows {
		for _, i := range p.UUIDs("interfaces") {
			portOf[i] = portRef{p.String("name"), bridgeOf[p.UUID()]}
		}
	}
	var out []PortInfo
	for _, i := range res[2].Rows {
		mac := i.String("mac_in_use")
		if mac == "" {
			mac = i.String("mac")
		}
		ref := portOf[i.UUID()]
		out = append(out, PortInfo{Name: i.String("name"), Port: ref.name, Bridge: ref.bridge,
			Type: i.String("type"), Options: i.StringMap("options"), OFPort: int(i.Int("ofport")), Error: i.String("error"),
			MAC: mac, ExternalIDs: i.StringMap("external_ids")})
	}
	sort.Slice(out, func(a, b int) bool { return out[a].Name < out[b].Name })
	return out, res[0].Rows, nil
}

// ListPorts returns the interfaces of bridge's ports (its LOCAL port
// included), sorted by name.
func (c *Client) ListPorts(ctx context.Context, bridge string) ([]PortInfo, error) {
	all, bridges, err := c.portInfos(ctx, nil)
	if err != nil {
		return nil, fmt.Errorf("list ports of %s: %w", bridge, err)
	}
	if !slices.ContainsFunc(bridges, func(b Row) bool { return b.String("name") == bridge }) {
		return nil, fmt.Errorf("list ports: bridge %s: %w", bridge, ErrNotFound)
	}
	var out []PortInfo
	for _, p := range all {
		if p.Bridge == bridge {
			out = append(out, p)
		}
	}
	return out, nil
}

// Interface returns one interface by name.
func (c *Client) Interface(ctx context.Context, name string) (PortInfo, error) {
	infos, _, err := c.portInfos(ctx, eq("name", name))
	if err != nil {
		return PortInfo{}, fmt.Errorf("interface %s: %w", name, err)
	}
	if len(infos) == 0 {
		return PortInfo{}, fmt.Errorf("interface %s: %w", name, ErrNotFound)
	}
	return infos[0], nil
}

// DefaultWaitTimeout bounds WaitOFPort when its context has no deadline.
const DefaultWaitTimeout = 30 * time.Second

// WaitOFPort waits, through a monitor, until ovs-vswitchd has given the
// interface an OpenFlow port number and returns it. If OVS could not add the
// interface it returns a *PortError carrying Interface.error, e.g. "port x on
// br-int: could not open network device x (No such device)". A missing
// interface is an ErrNotFound error.
func (c *Client) WaitOFPort(ctx context.Context, iface string) (uint32, error) {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, DefaultWaitTimeout)
		defer cancel()
	}
	// latest holds the newest state of the interface; an empty Row means
	// it was deleted. Only the monitor's dispatch goroutine sends.
	latest := make(chan Row, 1)
	put := func(r Row) {
		select {
		case <-latest:
		default:
		}
		latest <- r
	}
	m, err := c.Monitor(ctx, DB, map[string][]string{"Interface": {"name", "ofport", "error"}}, func(u TableUpdates) {
		for _, ru := range u["Interface"] {
			switch {
			case ru.New != nil && ru.New.String("name") == iface:
				put(ru.New)
			case ru.New == nil && ru.Old.String("name") == iface:
				put(Row{})
			}
		}
	})
	if err != nil {
		return 0, fmt.Errorf("wait for ofport of %s: %w", iface, err)
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
		defer cancel()
		m.Cancel(cctx)
	}()
	// Monitor returned after the handler saw the snapshot, so an interface
	// that exists has put its row by now.
	var row Row
	select {
	case row = <-latest:
	default:
		return 0, fmt.Errorf("wait for ofport of %s: %w", iface, ErrNotFound)
	}
	for {
		if len(row) == 0 {
			return 0, fmt.Errorf("wait for ofport of %s: interface deleted: %w", iface, ErrNotFound)
		}
		ofport := row.Int("ofport")
		if reason := row.String("error"); reason != "" || ofport == -1 {
			if reason == "" {
				reason = "ofport -1 (OVS could not add it)"
			}
			return 0, c.portError(ctx, iface, reason)
		}
		if ofport > 0 {
			return uint32(ofport), nil
		}
		select {
		case row = <-latest:
		case <-ctx.Done():
			return 0, fmt.Errorf("wait for ofport of %s: %w", iface, ctx.Err())
		}
	}
}

func (c *Client) portError(ctx context.Context, iface, reason string) error {
	pe := &PortError{Port: iface, Bridge: "?", Reason: reason}
	if info, err := c.Interface(ctx, iface); err == nil && info.Bridge != "" {
		pe.Bridge = info.Bridge
		if info.Port != "" {
			pe.Port = info.Port
		}
	}
	return pe
}

// DatapathTypes returns Open_vSwitch.datapath_types: the datapaths this
// ovs-vswitchd supports ("netdev", "system"), as it reported them at start.
func (c *Client) DatapathTypes(ctx context.Context) ([]string, error) {
	res, err := c.Transact(ctx, DB, Select("Open_vSwitch", nil, "datapath_types"))
	if err != nil {
		return nil, fmt.Errorf("read datapath types: %w", err)
	}
	if len(res[0].Rows) != 1 {
		return nil, fmt.Errorf("read datapath types: Open_vSwitch table has %d rows, want 1", len(res[0].Rows))
	}
	types := res[0].Rows[0].Strings("datapath_types")
	sort.Strings(types)
	return types, nil
}

// SetOpenvSwitchOtherConfig merges kv into Open_vSwitch.other_config (an
// empty value removes the key); it writes nothing if all are set already.
func (c *Client) SetOpenvSwitchOtherConfig(ctx context.Context, kv map[string]string) error {
	res, err := c.Transact(ctx, DB, Select("Open_vSwitch", nil, "_uuid", "other_config"))
	if err != nil {
		return fmt.Errorf("set Open_vSwitch other_config: %w", err)
	}
	if len(res[0].Rows) != 1 {
		return fmt.Errorf("set Open_vSwitch other_config: Open_vSwitch table has %d rows, want 1", len(res[0].Rows))
	}
	root := res[0].Rows[0]
	muts := mergeMutations("other_config", root.StringMap("other_config"), kv)
	if len(muts) == 0 {
		return nil
	}
	if _, err := c.Transact(ctx, DB, Mutate("Open_vSwitch", byUUID(root.UUID()), muts...)); err != nil {
		return fmt.Errorf("set Open_vSwitch other_config: %w", err)
	}
	return nil
}

// SwitchInfo is what the Open_vSwitch table says about this ovs-vswitchd's
// build and global settings.
type SwitchInfo struct {
	// IfaceTypes are the interface types it supports, sorted
	// ("afxdp-nonpmd" only in builds with AF_XDP).
	IfaceTypes []string
	// OtherConfig is Open_vSwitch other_config (e.g.
	// userspace-tso-enable).
	OtherConfig map[string]string
}

// Switch reads the Open_vSwitch table's iface_types and other_config.
func (c *Client) Switch(ctx context.Context) (SwitchInfo, error) {
	res, err := c.Transact(ctx, DB, Select("Open_vSwitch", nil, "iface_types", "other_config"))
	if err != nil {
		return SwitchInfo{}, fmt.Errorf("read the Open_vSwitch table: %w", err)
	}
	if len(res[0].Rows) != 1 {
		return SwitchInfo{}, fmt.Errorf("read the Open_vSwitch table: %d rows, want 1", len(res[0].Rows))
	}
	r := res[0].Rows[0]
	types := r.Strings("iface_types")
	sort.Strings(types)
	return SwitchInfo{IfaceTypes: types, OtherConfig: r.StringMap("other_config")}, nil
}
