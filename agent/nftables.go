package agent

import (
	"fmt"
	"net/netip"
	"os"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
)

// nftTable names the agent's two nftables tables: "ip keyroute" holds the
// masquerade rule, "netdev keyroute" one ingress chain per port OVS reads.
// Removing them removes exactly what the agent added. They are written
// through netlink (google/nftables), so the agent needs no nft binary.
const nftTable = "keyroute"

var (
	nftPortsTable = &nftables.Table{Family: nftables.TableFamilyNetdev, Name: nftTable}
	nftNATTable   = &nftables.Table{Family: nftables.TableFamilyIPv4, Name: nftTable}
)

// nftNew opens a netlink connection to nftables in the agent's namespace;
// tests point it at another one.
var nftNew = func() (*nftables.Conn, error) { return nftables.New() }

func nftApply(what string, build func(c *nftables.Conn)) error {
	c, err := nftNew()
	if err != nil {
		return fmt.Errorf("nftables: %s: %w", what, err)
	}
	build(c)
	if err := c.Flush(); err != nil {
		return fmt.Errorf("nftables: %s: %w", what, err)
	}
	return nil
}

func portChain(dev string) *nftables.Chain {
	return &nftables.Chain{Name: "port-" + dev, Table: nftPortsTable}
}

// isolatePort keeps the host's own stack from processing packets that
// arrive on a port OVS reads (the uplink, a container's veth). Only the
// netdev datapath needs it (datapathPlan): it reads ports through packet
// sockets, which see a frame before the ingress hook drops it, so OVS still
// gets everything. Without this the kernel answers ARP for the gateway on
// container veths and accepts (and, with forwarding on, re-routes) uplink
// traffic: every packet twice.
func isolatePort(dev string) error {
	return nftApply("isolate "+dev, func(c *nftables.Conn) {
		c.AddTable(nftPortsTable)
		ch := portChain(dev)
		ch.Type, ch.Hooknum, ch.Priority, ch.Device = nftables.ChainTypeFilter, nftables.ChainHookIngress, nftables.ChainPriorityFilter, dev
		drop := nftables.ChainPolicyDrop
		ch.Policy = &drop
		c.AddChain(ch)
	})
}

// releasePort removes a port's ingress chain; a chain already gone (with its
// device, or never made on the kernel datapath) is fine.
func releasePort(dev string) {
	// An error can only mean the chain is not there.
	_ = nftApply("release "+dev, func(c *nftables.Conn) { c.DelChain(portChain(dev)) })
}

// removePortChains deletes every port's ingress chain (the whole netdev
// table): on the kernel datapath, chains left by an earlier run on netdev
// would starve OVS.
func removePortChains() error {
	return nftApply("remove port chains", func(c *nftables.Conn) {
		c.AddTable(nftPortsTable)
		c.DelTable(nftPortsTable)
	})
}

// ensureMasquerade lets containers reach destinations outside the cluster
// CIDR: traffic leaving the cluster is masqueraded to the host IP. It also
// turns on IPv4 forwarding, which routing through the gateway port needs.
func ensureMasquerade(cluster netip.Prefix) error {
	if err := os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1"), 0o644); err != nil {
		return fmt.Errorf("enable IPv4 forwarding: %w", err)
	}
	return nftMasquerade(cluster)
}

func nftMasquerade(cluster netip.Prefix) error {
	return nftApply("masquerade", func(c *nftables.Conn) {
		// Add-then-delete empties a table that may or may not exist, in
		// the same transaction that fills it again.
		c.AddTable(nftNATTable)
		c.DelTable(nftNATTable)
		c.AddTable(nftNATTable)
		accept := nftables.ChainPolicyAccept
		ch := c.AddChain(&nftables.Chain{Name: "postrouting", Table: nftNATTable, Type: nftables.ChainTypeNAT,
			Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityNATSource, Policy: &accept})
		c.AddRule(&nftables.Rule{Table: nftNATTable, Chain: ch, Exprs: masqueradeExprs(cluster)})
	})
}

// masqueradeExprs is `ip saddr CLUSTER ip daddr != CLUSTER masquerade`.
func masqueradeExprs(cluster netip.Prefix) []expr.Any {
	cluster = cluster.Masked()
	net4 := cluster.Addr().As4()
	mask := prefixToIPNet(cluster).Mask
	match := func(offset uint32, op expr.CmpOp) []expr.Any {
		return []expr.Any{
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: offset, Len: 4},
			&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: mask, Xor: make([]byte, 4)},
			&expr.Cmp{Op: op, Register: 1, Data: net4[:]},
		}
	}
	const ipv4Src, ipv4Dst = 12, 16
	out := append(match(ipv4Src, expr.CmpOpEq), match(ipv4Dst, expr.CmpOpNeq)...)
	return append(out, &expr.Masq{})
}

// removeNftables deletes the agent's nftables tables.
func removeNftables() error {
	return nftApply("remove tables", func(c *nftables.Conn) {
		for _, t := range []*nftables.Table{nftNATTable, nftPortsTable} {
			c.AddTable(t)
			c.DelTable(t)
		}
	})
}
