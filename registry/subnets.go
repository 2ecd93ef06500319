package registry

import (
	"context"
	"fmt"
	"net/netip"
	"strings"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

func (c *Client) subnetKey(p netip.Prefix) string { return c.prefix + "subnets/" + p.String() }

// SubnetClaim is subnets/<cidr>: a pod subnet and the host holding it (the
// value is the bare host name).
type SubnetClaim struct {
	Subnet netip.Prefix
	Host   string
}

// Validate checks that s names an IPv4 pod subnet and a valid host name.
func (s SubnetClaim) Validate() error {
	if err := validateSubnet(s.Subnet); err != nil {
		return fmt.Errorf("subnet claim: subnet: %w", err)
	}
	if err := ValidateName(s.Host); err != nil {
		return fmt.Errorf("subnet claim %s: host: %w", s.Subnet, err)
	}
	return nil
}

// decodeSubnet is the one place a subnet claim is read and checked. The
// claim's size is not held against the cluster's: ClaimSubnet must see a
// host's claim of another size to refuse it with a clear error.
func (c *Client) decodeSubnet(kv *mvccpb.KeyValue) (SubnetClaim, error) {
	fail := func(err error) (SubnetClaim, error) { return SubnetClaim{}, NewRecordError(KindSubnet, kv, err) }
	if err := CheckSize(kv); err != nil {
		return fail(err)
	}
	seg := strings.TrimPrefix(string(kv.Key), c.prefix+"subnets/")
	p, err := netip.ParsePrefix(seg)
	if err != nil {
		return fail(fmt.Errorf("key: %w", err))
	}
	if p.String() != seg {
		return fail(fmt.Errorf("key %.64q is not in canonical form %s", seg, p))
	}
	s := SubnetClaim{Subnet: p, Host: string(kv.Value)}
	if err := s.Validate(); err != nil {
		return fail(err)
	}
	return s, nil
}

// ClaimSubnet gives host a pod subnet of size /bits from cluster: the one it
// already holds, else the lowest free one. Claims are create-if-absent
// transactions on subnets/<cidr>, so racing hosts never share a subnet.
// All hosts must claim the same size; a free candidate that overlaps an
// existing claim of another size is skipped. Cost: 1 read, then 1 write
// (plus 1 per lost race); none if host already holds a subnet.
func (c *Client) ClaimSubnet(ctx context.Context, host string, cluster netip.Prefix, bits int) (netip.Prefix, error) {
	if err := ValidateName(host); err != nil {
		return netip.Prefix{}, fmt.Errorf("claim pod subnet: host: %w", err)
	}
	if err := checkSubnetSize(cluster, bits); err != nil {
		return netip.Prefix{}, fmt.Errorf("claim pod subnet for %s: %w", host, err)
	}
	fail := func(err error) (netip.Prefix, error) {
		return netip.Prefix{}, fmt.Errorf("claim /%d pod subnet of %s for %s: %w", bits, cluster, host, err)
	}
	resp, err := c.cli.Get(ctx, c.prefix+"subnets/", clientv3.WithPrefix())
	if err != nil {
		return fail(err)
	}
	var taken []netip.Prefix
	for _, kv := range resp.Kvs {
		// A bad claim is not held as taken: a key written to overlap the
		// whole cluster must not stop every claim. Its exact key stays
		// unusable, as the claim below is create-if-absent.
		claim, err := c.decodeSubnet(kv)
		if err != nil {
			c.badRecord(string(kv.Key), err)
			continue
		}
		p := claim.Subnet
		if claim.Host != host {
			taken = append(taken, p)
			continue
		}
		if p.Bits() != bits || !cluster.Contains(p.Addr()) {
			return fail(fmt.Errorf("host already holds %s; release it first", p))
		}
		return p, nil
	}
	count := uint64(1) << (bits - cluster.Bits())
next:
	for i := uint64(0); i < count; i++ {
		cand := nthSubnet(cluster, bits, i)
		for _, t := range taken {
			if t.Overlaps(cand) {
				continue next
			}
		}
		key := c.subnetKey(cand)
		tx, err := c.cli.Txn(ctx).
			If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
			Then(clientv3.OpPut(key, host)).
			Else(clientv3.OpGet(key)).
			Commit()
		if err != nil {
			return fail(err)
		}
		if tx.Succeeded {
			return cand, nil
		}
		if kvs := tx.Responses[0].GetResponseRange().Kvs; len(kvs) > 0 && string(kvs[0].Value) == host {
			return cand, nil // a concurrent claim by the same host won
		}
		taken = append(taken, cand)
	}
	return fail(ErrSubnetsExhausted)
}

// ReleaseSubnet frees host's pod subnet. ErrNotFound if nobody holds it,
// ErrNotOwner if another host does. Cost: 1 write.
func (c *Client) ReleaseSubnet(ctx context.Context, host string, subnet netip.Prefix) error {
	if err := ValidateName(host); err != nil {
		return fmt.Errorf("release pod subnet %s: host: %w", subnet, err)
	}
	key := c.subnetKey(subnet)
	tx, err := c.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.Value(key), "=", host)).
		Then(clientv3.OpDelete(key)).
		Else(clientv3.OpGet(key)).
		Commit()
	if err != nil {
		return fmt.Errorf("release pod subnet %s of %s: %w", subnet, host, err)
	}
	if tx.Succeeded {
		return nil
	}
	kvs := tx.Responses[0].GetResponseRange().Kvs
	if len(kvs) == 0 {
		return fmt.Errorf("release pod subnet %s of %s: %w", subnet, host, ErrNotFound)
	}
	return fmt.Errorf("release pod subnet %s of %s: held by %s: %w", subnet, host, kvs[0].Value, ErrNotOwner)
}

// checkSubnetSize accepts /bits subnets of cluster that leave room for a
// network address, a gateway, a last (broadcast) address and one endpoint.
func checkSubnetSize(cluster netip.Prefix, bits int) error {
	if !cluster.IsValid() || cluster != cluster.Masked() || !cluster.Addr().Is4() {
		return fmt.Errorf("cluster CIDR %q is not an IPv4 network address/prefix (the datapath is IPv4 only)", cluster)
	}
	maxBits := cluster.Addr().BitLen() - 2
	if bits < cluster.Bits() || bits > maxBits {
		return fmt.Errorf("subnet size /%d must be within /%d../%d", bits, cluster.Bits(), maxBits)
	}
	if bits-cluster.Bits() > 32 {
		return fmt.Errorf("/%d subnets of %s: more than 2^32 subnets", bits, cluster)
	}
	return nil
}

// nthSubnet returns the i'th /bits subnet of cluster.
func nthSubnet(cluster netip.Prefix, bits int, i uint64) netip.Prefix {
	a := cluster.Addr().As16()
	shift := cluster.Addr().BitLen() - bits // host bits; i fits above them
	// Add i<<shift to the 128-bit big-endian address in a.
	var carry uint64
	for byteIdx, bit := 15, 0; byteIdx >= 0; byteIdx, bit = byteIdx-1, bit+8 {
		var add uint64
		if bit >= shift && bit-shift < 64 {
			add = (i >> (bit - shift)) & 0xff
		} else if bit < shift && shift-bit < 8 {
			add = (i << (shift - bit)) & 0xff
		}
		sum := uint64(a[byteIdx]) + add + carry
		a[byteIdx] = byte(sum)
		carry = sum >> 8
	}
	addr := netip.AddrFrom16(a)
	if cluster.Addr().Is4() {
		addr = addr.Unmap()
	}
	return netip.PrefixFrom(addr, bits)
}
