// Package flows builds keyroute's OpenFlow pipelines as pure functions: a
// host's state in, the flows for br-int and br-phy out. It does no I/O;
// golden tests pin the ovs-ofctl text of what it builds.
package flows

import (
	"fmt"
	"strings"
)

// Table is a br-int or br-phy table. Numbers only ever increase along the
// pipeline, as goto_table requires.
type Table uint8

// br-int tables (DESIGN.md "Pipeline"). The names are what
// `ovs-ofctl --names dump-flows` prints, what `keyroutectl flows --table`
// takes, and what the docs use.
const (
	Classify     Table = 0
	SpoofGuard   Table = 1
	ArpResponder Table = 2
	EgressRules  Table = 3
	EgressCache  Table = 4
	Forward      Table = 5
	TunnelIn     Table = 6
	Restore      Table = 7
	IngressRules Table = 8
	Deliver      Table = 9
)

// br-phy tables: Underlay sorts uplink, LOCAL and patch traffic;
// UnderlayKeys (rewrite mode) decides by DSCP whether a packet from a peer
// host is a keyed one for br-int or the host's own; UnderlayClear (rewrite
// mode) clears key DSCPs on the host's own traffic towards peer hosts.
const (
	Underlay      Table = 0
	UnderlayKeys  Table = 1
	UnderlayClear Table = 2
)

var intTableNames = map[Table]string{
	Classify: "Classify", SpoofGuard: "SpoofGuard", ArpResponder: "ArpResponder",
	EgressRules: "EgressRules", EgressCache: "EgressCache", Forward: "Forward",
	TunnelIn: "TunnelIn", Restore: "Restore", IngressRules: "IngressRules", Deliver: "Deliver",
}

// IntTableNames returns br-int's table names by number (for OVSDB
// Flow_Table rows).
func IntTableNames() map[uint8]string {
	m := make(map[uint8]string, len(intTableNames))
	for t, n := range intTableNames {
		m[uint8(t)] = n
	}
	return m
}

// PhyTableNames returns br-phy's table names by number.
func PhyTableNames() map[uint8]string {
	return map[uint8]string{uint8(Underlay): "Underlay", uint8(UnderlayKeys): "UnderlayKeys", uint8(UnderlayClear): "UnderlayClear"}
}

// Name returns the br-int name of t.
func (t Table) Name() string {
	if n, ok := intTableNames[t]; ok {
		return n
	}
	return fmt.Sprintf("table%d", uint8(t))
}

// ParseTable resolves a br-int table name (case-insensitive) or number.
func ParseTable(s string) (Table, error) {
	for t, n := range intTableNames {
		if strings.EqualFold(n, s) {
			return t, nil
		}
	}
	var n uint8
	if _, err := fmt.Sscanf(s, "%d", &n); err == nil {
		if _, ok := intTableNames[Table(n)]; ok {
			return Table(n), nil
		}
	}
	return 0, fmt.Errorf("unknown table %q: use one of Classify, SpoofGuard, ArpResponder, EgressRules, EgressCache, Forward, TunnelIn, Restore, IngressRules, Deliver", s)
}
