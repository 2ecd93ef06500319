package ovsdb

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"
)

// OwnerKey is the external_ids key that marks the objects keyroute created;
// its value is the client's Options.Owner.
const OwnerKey = "keyroute-owner"

// BridgeSpec is the desired state of a bridge.
type BridgeSpec struct {
	Name         string
	DatapathType string           // "netdev" or "system"; "" is OVS's default (system)
	HWAddr       net.HardwareAddr // other_config:hwaddr, the LOCAL port's MAC; nil: OVS picks one
	FailMode     string           // "secure" (also when "") or "standalone"
	Protocols    []string         // nil: ["OpenFlow13"]
	// TableNames name OpenFlow tables (0-254) through Flow_Table rows, so that
	// ovs-ofctl --names prints table=Classify. Tables not listed lose their name.
	TableNames map[uint8]string
	// OtherConfig and ExternalIDs are merged: the listed keys are set (an
	// empty value removes the key), other keys are left alone.
	OtherConfig, ExternalIDs map[string]string
}

func (s *BridgeSpec) failMode() string {
	if s.FailMode == "" {
		return "secure"
	}
	return s.FailMode
}

func (s *BridgeSpec) protocols() []string {
	if s.Protocols == nil {
		return []string{"OpenFlow13"}
	}
	return s.Protocols
}

func (s *BridgeSpec) otherConfig() map[string]string {
	oc := map[string]string{}
	for k, v := range s.OtherConfig {
		oc[k] = v
	}
	if s.HWAddr != nil {
		oc["hwaddr"] = s.HWAddr.String()
	}
	return oc
}

func (s *BridgeSpec) validate() error {
	if s.Name == "" {
		return errors.New("bridge name is empty")
	}
	if fm := s.failMode(); fm != "secure" && fm != "standalone" {
		return fmt.Errorf("fail mode %q is neither secure nor standalone", fm)
	}
	if s.HWAddr != nil && len(s.HWAddr) != 6 {
		return fmt.Errorf("hwaddr %s is not an Ethernet address", s.HWAddr)
	}
	for n, name := range s.TableNames {
		if n > 254 {
			return fmt.Errorf("table %d: OpenFlow tables go up to 254", n)
		}
		if name == "" {
			return fmt.Errorf("table %d: empty name", n)
		}
	}
	return nil
}

// PortSpec is the desired state of a port and its single interface of the
// same name.
type PortSpec struct {
	Name string
	// Type is "" (a system network device such as a veth end),
	// "afxdp-nonpmd" (the same device read through an AF_XDP socket),
	// "internal", "patch", "vxlan" or "geneve".
	Type string
	// Options are the Interface options, exactly: peer= for patch ports;
	// remote_ip=, key=, local_ip=, dst_port= for tunnels.
	Options       map[string]string
	OFPortRequest int    // 1-65279; 0 lets OVS choose
	MAC           string // Interface.mac, for internal ports; "": OVS chooses
	// MTURequest is Interface.mtu_request (68-65535); 0 lets OVS choose
	// (an internal port then follows the bridge's smallest MTU).
	MTURequest int
	// ExternalIDs are merged into the Port's and the Interface's external_ids
	// (an empty value removes the key).
	ExternalIDs map[string]string
}

func (s *PortSpec) validate() error {
	if s.Name == "" {
		return errors.New("port name is empty")
	}
	switch s.Type {
	case "", "internal", "afxdp-nonpmd":
	case "patch":
		if s.Options["peer"] == "" {
			return errors.New("patch port needs options peer=")
		}
	case "vxlan", "geneve":
		if s.Options["remote_ip"] == "" {
			return fmt.Errorf("%s port needs options remote_ip=", s.Type)
		}
	default:
		return fmt.Errorf("port type %q is not one of \"\", afxdp-nonpmd, internal, patch, vxlan, geneve", s.Type)
	}
	if s.OFPortRequest < 0 || s.OFPortRequest > 65279 {
		return fmt.Errorf("ofport_request %d is outside 1-65279", s.OFPortRequest)
	}
	if s.MTURequest != 0 && (s.MTURequest < 68 || s.MTURequest > 65535) {
		return fmt.Errorf("mtu_request %d is outside 68-65535", s.MTURequest)
	}
	if s.MAC != "" {
		if hw, err := net.ParseMAC(s.MAC); err != nil || len(hw) != 6 {
			return fmt.Errorf("mac %q is not an Ethernet address", s.MAC)
		}
	}
	return nil
}

// interfaceColumns are the Interface columns a PortSpec decides.
func (s *PortSpec) interfaceColumns() Row {
	r := Row{"type": s.Type, "options": nonNilMap(s.Options), "ofport_request": Set{}, "mac": Set{}, "mtu_request": Set{}}
	if s.OFPortRequest != 0 {
		r["ofport_request"] = int64(s.OFPortRequest)
	}
	if s.MTURequest != 0 {
		r["mtu_request"] = int64(s.MTURequest)
	}
	if s.MAC != "" {
		hw, _ := net.ParseMAC(s.MAC) // validated
		r["mac"] = hw.String()
	}
	return r
}

func nonNilMap(m map[string]string) map[string]string {
	if m == nil {
		return map[string]string{}
	}
	return m
}

func eq(column string, value any) []Condition { return []Condition{Cond(column, "==", value)} }

func byUUID(u UUID) []Condition { return eq("_uuid", u) }

// assertRow makes the transaction abort unless the row u still exists with
// that name, so that we never commit changes hanging off a vanished row
// (they would be garbage-collected silently).
func assertRow(table string, u UUID, name string) Operation {
	return Wait(table, byUUID(u), []string{"name"}, "==", []Row{{"name": name}}, 0)
}

// owned returns ids (minus empty values) plus our owner mark.
func (c *Client) owned(ids map[string]string) map[string]string {
	out := map[string]string{OwnerKey: c.owner}
	for k, v := range ids {
		if v != "" && k != OwnerKey {
			out[k] = v
		}
	}
	return out
}

// mergeMutations sets the keys of want in map column col (an empty value
// removes the key), touching only keys whose value differs from cur.
func mergeMutations(col string, cur, want map[string]string) []Mutation {
	del, ins := Set{}, Map{}
	for k, v := range want {
		cv, has := cur[k]
		if (has && cv == v) || (!has && v == "") {
			continue
		}
		if has {
			del = append(del, k)
		}
		if v != "" {
			ins[k] = v
		}
	}
	var muts []Mutation
	if len(del) > 0 {
		muts = append(muts, Mut(col, "delete", del))
	}
	if len(ins) > 0 {
		muts = append(muts, Mut(col, "insert", ins))
	}
	return muts
}

func sameStringSet(a, b []string) bool {
	a, b = slices.Clone(a), slices.Clone(b)
	slices.Sort(a)
	slices.Sort(b)
	return slices.Equal(a, b)
}

func sameMAC(a, b string) bool {
	if a == "" || b == "" {
		return a == b
	}
	ha, err1 := net.ParseMAC(a)
	hb, err2 := net.ParseMAC(b)
	return err1 == nil && err2 == nil && ha.String() == hb.String()
}

// ForeignError is an existing bridge or port that the client's owner did
// not create: it lacks external_ids:keyroute-owner=<owner> (a port: the
// bridge holding it lacks it). ExternalIDs are the object's, which usually
// say who does own it.
type ForeignError struct {
	Kind        string // "bridge" or "port"
	Name        string
	Bridge      string // a port's bridge
	Owner       string // the owner mark the client looked for
	ExternalIDs map[string]string
}

func (e *ForeignError) Error() string {
	what := "bridge " + e.Name
	if e.Kind == "port" {
		what = fmt.Sprintf("port %s on bridge %s", e.Name, e.Bridge)
	}
	return fmt.Sprintf("%s exists and is not %s's (no external_ids:%s=%s); its external_ids: %s",
		what, e.Owner, OwnerKey, e.Owner, formatIDs(e.ExternalIDs))
}

// formatIDs prints a string map as ovs-vsctl does: {a=b, c=d}, keys sorted.
func formatIDs(m map[string]string) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = quoteID(k) + "=" + quoteID(m[k])
	}
	return "{" + strings.Join(parts, ", ") + "}"
}

// quoteID quotes s as ovs-vsctl does: only when it is empty or holds
// anything but letters, digits and -_.:/ (a hostile value cannot forge
// the text around it).
func quoteID(s string) string {
	if s == "" || strings.ContainsFunc(s, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("-_.:/", r))
	}) {
		return strconv.Quote(s)
	}
	return s
}

// CheckOwnership returns a *ForeignError for the first of bridges that
// exists without the client's owner mark, or of ports that exists on such
// a bridge. Absent bridges and ports are free. It reads and writes
// nothing else, so a caller can check everything before it changes
// anything.
func (c *Client) CheckOwnership(ctx context.Context, bridges, ports []string) error {
	res, err := c.Transact(ctx, DB,
		Select("Bridge", nil, "_uuid", "name", "ports", "external_ids"),
		Select("Port", nil, "_uuid", "name", "external_ids"))
	if err != nil {
		return fmt.Errorf("check ownership of bridges %v and ports %v: %w", bridges, ports, err)
	}
	byName := map[string]Row{}
	holder := map[UUID]Row{}
	for _, b := range res[0].Rows {
		byName[b.String("name")] = b
		for _, p := range b.UUIDs("ports") {
			holder[p] = b
		}
	}
	ours := func(b Row) bool { return b.StringMap("external_ids")[OwnerKey] == c.owner }
	for _, name := range bridges {
		if b, ok := byName[name]; ok && !ours(b) {
			return &ForeignError{Kind: "bridge", Name: name, Owner: c.owner, ExternalIDs: b.StringMap("external_ids")}
		}
	}
	for _, p := range res[1].Rows {
		if !slices.Contains(ports, p.String("name")) {
			continue
		}
		if b, ok := holder[p.UUID()]; ok && !ours(b) {
			return &ForeignError{Kind: "port", Name: p.String("name"), Bridge: b.String("name"), Owner: c.owner,
				ExternalIDs: p.StringMap("external_ids")}
		}
	}
	return nil
}

// EnsureBridge creates the bridge with its internal LOCAL port and links it
// into Open_vSwitch.bridges, or brings an existing one in line with spec.
// Up to date, it writes nothing. An existing bridge without the client's
// owner mark is a *ForeignError: it belongs to another OVS user and is
// never changed.
func (c *Client) EnsureBridge(ctx context.Context, spec BridgeSpec) error {
	if err := spec.validate(); err != nil {
		return fmt.Errorf("ensure bridge %s: %w", spec.Name, err)
	}
	res, err := c.Transact(ctx, DB,
		Select("Open_vSwitch", nil, "_uuid"),
		Select("Bridge", eq("name", spec.Name), "_uuid", "datapath_type", "fail_mode", "protocols",
			"other_config", "external_ids", "ports", "flow_tables"),
		Select("Port", eq("name", spec.Name), "_uuid"),
		Select("Interface", eq("name", spec.Name), "_uuid", "type"),
		Select("Flow_Table", nil, "_uuid", "name"))
	if err != nil {
		return fmt.Errorf("ensure bridge %s: read: %w", spec.Name, err)
	}
	if n := len(res[0].Rows); n != 1 {
		return fmt.Errorf("ensure bridge %s: Open_vSwitch table has %d rows, want 1 (is the database initialised?)", spec.Name, n)
	}
	var ops []Operation
	if len(res[1].Rows) == 0 {
		ops = c.createBridgeOps(&spec, res[0].Rows[0].UUID())
	} else {
		ops, err = c.updateBridgeOps(&spec, res[1].Rows[0], res[2].Rows, res[3].Rows, res[4].Rows)
		if err != nil {
			return fmt.Errorf("ensure bridge %s: %w", spec.Name, err)
		}
	}
	if len(ops) == 0 {
		return nil
	}
	if _, err := c.Transact(ctx, DB, ops...); err != nil {
		return fmt.Errorf("ensure bridge %s: %w", spec.Name, err)
	}
	return nil
}

func (c *Client) createBridgeOps(spec *BridgeSpec, root UUID) []Operation {
	mark := c.owned(nil)
	ops := []Operation{
		Insert("Interface", Row{"name": spec.Name, "type": "internal", "external_ids": mark}, "local_iface"),
		Insert("Port", Row{"name": spec.Name, "interfaces": NamedUUID("local_iface"), "external_ids": mark}, "local_port"),
	}
	tables := Map{}
	for n, name := range spec.TableNames {
		id := fmt.Sprintf("table%d", n)
		ops = append(ops, Insert("Flow_Table", Row{"name": name, "external_ids": mark}, id))
		tables[int64(n)] = NamedUUID(id)
	}
	oc := map[string]string{}
	for k, v := range spec.otherConfig() {
		if v != "" {
			oc[k] = v
		}
	}
	ops = append(ops,
		Insert("Bridge", Row{
			"name": spec.Name, "datapath_type": spec.DatapathType, "fail_mode": spec.failMode(),
			"protocols": spec.protocols(), "other_config": oc, "external_ids": c.owned(spec.ExternalIDs),
			"ports": NamedUUID("local_port"), "flow_tables": tables,
		}, "bridge"),
		Mutate("Open_vSwitch", byUUID(root), Mut("bridges", "insert", NamedUUID("bridge"))))
	return ops
}

func (c *Client) updateBridgeOps(spec *BridgeSpec, br Row, ports, ifaces, flowTables []Row) ([]Operation, error) {
	if br.StringMap("external_ids")[OwnerKey] != c.owner {
		return nil, &ForeignError{Kind: "bridge", Name: spec.Name, Owner: c.owner, ExternalIDs: br.StringMap("external_ids")}
	}
	bu := br.UUID()
	var ops []Operation
	set := Row{}
	if br.String("datapath_type") != spec.DatapathType {
		set["datapath_type"] = spec.DatapathType
	}
	if br.String("fail_mode") != spec.failMode() {
		set["fail_mode"] = spec.failMode()
	}
	if !sameStringSet(br.Strings("protocols"), spec.protocols()) {
		set["protocols"] = spec.protocols()
	}
	muts := mergeMutations("other_config", br.StringMap("other_config"), spec.otherConfig())
	muts = append(muts, mergeMutations("external_ids", br.StringMap("external_ids"), spec.ExternalIDs)...)

	// Flow_Table names.
	names := map[UUID]string{}
	for _, ft := range flowTables {
		names[ft.UUID()] = ft.String("name")
	}
	cur := br.Map("flow_tables")
	drop, add := Set{}, Map{}
	for k, v := range cur {
		n, _ := k.(int64)
		ft, _ := v.(UUID)
		want, ok := spec.TableNames[uint8(n)]
		switch {
		case n < 0 || n > 254 || !ok:
			drop = append(drop, n)
		case names[ft] != want:
			ops = append(ops, Update("Flow_Table", byUUID(ft), Row{"name": want}))
		}
	}
	for n, name := range spec.TableNames {
		if _, ok := cur[int64(n)]; !ok {
			id := fmt.Sprintf("table%d", n)
			ops = append(ops, Insert("Flow_Table", Row{"name": name, "external_ids": c.owned(nil)}, id))
			add[int64(n)] = NamedUUID(id)
		}
	}
	if len(drop) > 0 {
		muts = append(muts, Mut("flow_tables", "delete", drop))
	}
	if len(add) > 0 {
		muts = append(muts, Mut("flow_tables", "insert", add))
	}

	// The LOCAL port: a port named like the bridge with an internal interface.
	switch {
	case len(ports) == 0 && len(ifaces) > 0:
		return nil, fmt.Errorf("interface %s belongs to another port", spec.Name)
	case len(ports) == 0:
		mark := c.owned(nil)
		ops = append(ops,
			Insert("Interface", Row{"name": spec.Name, "type": "internal", "external_ids": mark}, "local_iface"),
			Insert("Port", Row{"name": spec.Name, "interfaces": NamedUUID("local_iface"), "external_ids": mark}, "local_port"))
		muts = append(muts, Mut("ports", "insert", NamedUUID("local_port")))
	case !slices.Contains(br.UUIDs("ports"), ports[0].UUID()):
		return nil, fmt.Errorf("port %s is on another bridge", spec.Name)
	case len(ifaces) == 1 && ifaces[0].String("type") != "internal":
		ops = append(ops, Update("Interface", byUUID(ifaces[0].UUID()), Row{"type": "internal"}))
	}

	if len(set) > 0 {
		ops = append(ops, Update("Bridge", byUUID(bu), set))
	}
	if len(muts) > 0 {
		ops = append(ops, Mutate("Bridge", byUUID(bu), muts...))
	}
	if len(ops) == 0 {
		return nil, nil
	}
	return append([]Operation{assertRow("Bridge", bu, spec.Name)}, ops...), nil
}

// EnsurePort creates the port (with one interface of the same name) on
// bridge, or updates it in place. A port on another bridge is moved if it
// carries our owner mark, else that is an error. Up to date, it writes
// nothing.
func (c *Client) EnsurePort(ctx context.Context, bridge string, spec PortSpec) error {
	if err := spec.validate(); err != nil {
		return fmt.Errorf("ensure port %s on %s: %w", spec.Name, bridge, err)
	}
	res, err := c.Transact(ctx, DB,
		Select("Bridge", nil, "_uuid", "name", "ports"),
		Select("Port", eq("name", spec.Name), "_uuid", "interfaces", "external_ids"),
		Select("Interface", eq("name", spec.Name), "_uuid", "type", "options", "ofport_request", "mac", "mtu_request", "external_ids"))
	if err != nil {
		return fmt.Errorf("ensure port %s on %s: read: %w", spec.Name, bridge, err)
	}
	ops, err := c.ensurePortOps(bridge, &spec, res[0].Rows, res[1].Rows, res[2].Rows)
	if err != nil {
		return fmt.Errorf("ensure port %s on %s: %w", spec.Name, bridge, err)
	}
	if len(ops) == 0 {
		return nil
	}
	if _, err := c.Transact(ctx, DB, ops...); err != nil {
		return fmt.Errorf("ensure port %s on %s: %w", spec.Name, bridge, err)
	}
	return nil
}

func (c *Client) ensurePortOps(bridge string, spec *PortSpec, bridges, ports, ifaces []Row) ([]Operation, error) {
	var target Row
	for _, b := range bridges {
		if b.String("name") == bridge {
			target = b
		}
	}
	if target == nil {
		return nil, fmt.Errorf("bridge %s: %w", bridge, ErrNotFound)
	}
	assert := assertRow("Bridge", target.UUID(), bridge)
	want := spec.interfaceColumns()

	if len(ports) == 0 {
		if len(ifaces) > 0 {
			return nil, fmt.Errorf("interface %s belongs to another port", spec.Name)
		}
		mark := c.owned(spec.ExternalIDs)
		want["name"], want["external_ids"] = spec.Name, mark
		return []Operation{assert,
			Insert("Interface", want, "iface"),
			Insert("Port", Row{"name": spec.Name, "interfaces": NamedUUID("iface"), "external_ids": mark}, "port"),
			Mutate("Bridge", byUUID(target.UUID()), Mut("ports", "insert", NamedUUID("port"))),
		}, nil
	}

	port := ports[0]
	pu := port.UUID()
	members := port.UUIDs("interfaces")
	if len(ifaces) == 0 || len(members) != 1 || members[0] != ifaces[0].UUID() {
		return nil, fmt.Errorf("port %s is not a single interface of the same name; not managing it", spec.Name)
	}
	iface := ifaces[0]

	var ops []Operation
	var holder Row
	for _, b := range bridges {
		if slices.Contains(b.UUIDs("ports"), pu) {
			holder = b
		}
	}
	if holder == nil || holder.UUID() != target.UUID() {
		if holder != nil {
			if o := port.StringMap("external_ids")[OwnerKey]; o != c.owner {
				return nil, fmt.Errorf("port is on bridge %s and not owned by %q (owner %q)", holder.String("name"), c.owner, o)
			}
			ops = append(ops, Mutate("Bridge", byUUID(holder.UUID()), Mut("ports", "delete", pu)))
		}
		ops = append(ops, Mutate("Bridge", byUUID(target.UUID()), Mut("ports", "insert", pu)))
	}

	set := Row{}
	if iface.String("type") != spec.Type {
		set["type"] = spec.Type
	}
	if !mapsEqual(iface.StringMap("options"), spec.Options) {
		set["options"] = want["options"]
	}
	if iface.Int("ofport_request") != int64(spec.OFPortRequest) {
		set["ofport_request"] = want["ofport_request"]
	}
	if iface.Int("mtu_request") != int64(spec.MTURequest) {
		set["mtu_request"] = want["mtu_request"]
	}
	if !sameMAC(iface.String("mac"), spec.MAC) {
		set["mac"] = want["mac"]
	}
	if len(set) > 0 {
		ops = append(ops, Update("Interface", byUUID(iface.UUID()), set))
	}
	if muts := mergeMutations("external_ids", iface.StringMap("external_ids"), spec.ExternalIDs); len(muts) > 0 {
		ops = append(ops, Mutate("Interface", byUUID(iface.UUID()), muts...))
	}
	if muts := mergeMutations("external_ids", port.StringMap("external_ids"), spec.ExternalIDs); len(muts) > 0 {
		ops = append(ops, Mutate("Port", byUUID(pu), muts...))
	}
	if len(ops) == 0 {
		return nil, nil
	}
	return append([]Operation{assert}, ops...), nil
}

func mapsEqual(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if bv, ok := b[k]; !ok || bv != v {
			return false
		}
	}
	return true
}

// DeletePort removes the port from bridge; OVS garbage-collects its Port and
// Interface rows.
func (c *Client) DeletePort(ctx context.Context, bridge, name string) error {
	res, err := c.Transact(ctx, DB,
		Select("Bridge", eq("name", bridge), "_uuid", "ports"),
		Select("Port", eq("name", name), "_uuid"))
	if err != nil {
		return fmt.Errorf("delete port %s from %s: %w", name, bridge, err)
	}
	if len(res[0].Rows) == 0 {
		return fmt.Errorf("delete port %s: bridge %s: %w", name, bridge, ErrNotFound)
	}
	br := res[0].Rows[0]
	if len(res[1].Rows) == 0 || !slices.Contains(br.UUIDs("ports"), res[1].Rows[0].UUID()) {
		return fmt.Errorf("delete port %s: not on bridge %s: %w", name, bridge, ErrNotFound)
	}
	if _, err := c.Transact(ctx, DB,
		assertRow("Bridge", br.UUID(), bridge),
		Mutate("Bridge", byUUID(br.UUID()), Mut("ports", "delete", res[1].Rows[0].UUID()))); err != nil {
		return fmt.Errorf("delete port %s from %s: %w", name, bridge, err)
	}
	return nil
}

// DeleteBridge removes the bridge; OVS garbage-collects its ports, interfaces
// and flow tables.
func (c *Client) DeleteBridge(ctx context.Context, name string) error {
	res, err := c.Transact(ctx, DB,
		Select("Open_vSwitch", nil, "_uuid"),
		Select("Bridge", eq("name", name), "_uuid"))
	if err != nil {
		return fmt.Errorf("delete bridge %s: %w", name, err)
	}
	if len(res[1].Rows) == 0 {
		return fmt.Errorf("delete bridge %s: %w", name, ErrNotFound)
	}
	if len(res[0].Rows) != 1 {
		return fmt.Errorf("delete bridge %s: Open_vSwitch table has %d rows, want 1", name, len(res[0].Rows))
	}
	if _, err := c.Transact(ctx, DB,
		Mutate("Open_vSwitch", byUUID(res[0].Rows[0].UUID()), Mut("bridges", "delete", res[1].Rows[0].UUID()))); err != nil {
		return fmt.Errorf("delete bridge %s: %w", name, err)
	}
	return nil
}

// DeleteOwned removes, in one transaction, every bridge and every port
// marked external_ids:keyroute-owner=owner. Bridges without that mark stay,
// minus the marked ports on them.
func (c *Client) DeleteOwned(ctx context.Context, owner string) error {
	if owner == "" {
		return errors.New("delete owned objects: empty owner")
	}
	mark := []Condition{Cond("external_ids", "includes", map[string]string{OwnerKey: owner})}
	res, err := c.Transact(ctx, DB,
		Select("Open_vSwitch", nil, "_uuid"),
		Select("Bridge", nil, "_uuid", "name", "ports", "external_ids"),
		Select("Port", mark, "_uuid"))
	if err != nil {
		return fmt.Errorf("delete objects of %s: %w", owner, err)
	}
	if len(res[0].Rows) != 1 {
		return fmt.Errorf("delete objects of %s: Open_vSwitch table has %d rows, want 1", owner, len(res[0].Rows))
	}
	ownedPorts := map[UUID]bool{}
	for _, p := range res[2].Rows {
		ownedPorts[p.UUID()] = true
	}
	var ops []Operation
	var bridges Set
	var names []string
	for _, b := range res[1].Rows {
		if b.StringMap("external_ids")[OwnerKey] == owner {
			bridges = append(bridges, b.UUID())
			names = append(names, b.String("name"))
			continue
		}
		var drop Set
		for _, p := range b.UUIDs("ports") {
			if ownedPorts[p] {
				drop = append(drop, p)
			}
		}
		if len(drop) > 0 {
			ops = append(ops, Mutate("Bridge", byUUID(b.UUID()), Mut("ports", "delete", drop)))
		}
	}
	if len(bridges) > 0 {
		ops = append(ops, Mutate("Open_vSwitch", byUUID(res[0].Rows[0].UUID()), Mut("bridges", "delete", bridges)))
	}
	if len(ops) == 0 {
		return nil
	}
	if _, err := c.Transact(ctx, DB, ops...); err != nil {
		return fmt.Errorf("delete objects of %s (bridges %s): %w", owner, strings.Join(names, ","), err)
	}
	return nil
}
