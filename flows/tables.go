// Package flows builds keyroute's OpenFlow pipelines as pure functions: a
// host's state in, the flows for br-int and br-phy out. It does no I/O;
// golden tests pin the ovs-ofctl text of what it builds.
package flows

import (
	"fmt"
	"strings"
)

// IntTable is a br-int table and PhyTable a br-phy table: both bridges
// number their tables from 0, so each has its own type and a table number
// always names a table of its own bridge. Numbers only ever increase along
// a pipeline, as goto_table requires.
type (
	IntTable uint8
	PhyTable uint8
)

// br-int tables (DESIGN.md "Pipeline"). The names are what
// `ovs-ofctl --names dump-flows` prints (the agent sets them in OVSDB's
// Flow_Table), what `keyroutectl flows --table` takes, and what the docs
// use.
const (
	Classify     IntTable = 0
	SpoofGuard   IntTable = 1
	ArpResponder IntTable = 2
	EgressRules  IntTable = 3
	EgressCache  IntTable = 4
	Forward      IntTable = 5
	TunnelIn     IntTable = 6
	Restore      IntTable = 7
	IngressRules IntTable = 8
	Deliver      IntTable = 9
	// TunnelOut sends what Forward and EgressCache route through VXLAN
	// out of the tunnel port, or, when it would not fit the uplink once
	// encapsulated, to the agent for an ICMP "fragmentation needed".
	TunnelOut IntTable = 10
)

// br-phy tables: Underlay sorts uplink, LOCAL and patch traffic;
// UnderlayKeys (rewrite mode) decides by DSCP whether a packet from a peer
// host is a keyed one for br-int or the host's own; UnderlayClear (rewrite
// mode) clears key DSCPs on the host's own traffic towards peer hosts.
const (
	Underlay      PhyTable = 0
	UnderlayKeys  PhyTable = 1
	UnderlayClear PhyTable = 2
)

var (
	intTableNames = map[IntTable]string{
		Classify: "Classify", SpoofGuard: "SpoofGuard", ArpResponder: "ArpResponder",
		EgressRules: "EgressRules", EgressCache: "EgressCache", Forward: "Forward",
		TunnelIn: "TunnelIn", Restore: "Restore", IngressRules: "IngressRules", Deliver: "Deliver",
		TunnelOut: "TunnelOut",
	}
	phyTableNames = map[PhyTable]string{
		Underlay: "Underlay", UnderlayKeys: "UnderlayKeys", UnderlayClear: "UnderlayClear",
	}
)

// IntTableNames returns br-int's table names by number (for OVSDB
// Flow_Table rows).
func IntTableNames() map[uint8]string { return byNumber(intTableNames) }

// PhyTableNames returns br-phy's table names by number.
func PhyTableNames() map[uint8]string { return byNumber(phyTableNames) }

func byNumber[T ~uint8](names map[T]string) map[uint8]string {
	m := make(map[uint8]string, len(names))
	for t, n := range names {
		m[uint8(t)] = n
	}
	return m
}

// Name returns t's br-int table name.
func (t IntTable) Name() string { return tableName(intTableNames, t) }

// Name returns t's br-phy table name.
func (t PhyTable) Name() string { return tableName(phyTableNames, t) }

func tableName[T ~uint8](names map[T]string, t T) string {
	if n, ok := names[t]; ok {
		return n
	}
	return fmt.Sprintf("table%d", uint8(t))
}

// ParseIntTable resolves a br-int table name (case-insensitive) or number.
func ParseIntTable(s string) (IntTable, error) {
	for t, n := range intTableNames {
		if strings.EqualFold(n, s) {
			return t, nil
		}
	}
	var n uint8
	if _, err := fmt.Sscanf(s, "%d", &n); err == nil {
		if _, ok := intTableNames[IntTable(n)]; ok {
			return IntTable(n), nil
		}
	}
	return 0, fmt.Errorf("unknown table %q: use one of Classify, SpoofGuard, ArpResponder, EgressRules, EgressCache, Forward, TunnelIn, Restore, IngressRules, Deliver, TunnelOut", s)
}
