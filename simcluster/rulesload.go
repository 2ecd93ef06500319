package simcluster

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"

	"github.com/keyroute/keyroute/api"
	"github.com/keyroute/keyroute/registry"
	"github.com/keyroute/keyroute/rules"
	"github.com/keyroute/keyroute/rules/store"
	"github.com/keyroute/keyroute/simhost"
)

// ruleKeys names rules' etcd keys as the agents read them: rules/store
// owns the layout (used here for Key only; it has no client).
var RuleKeys = store.New(nil, registry.DefaultPrefix, nil)

// EtcdClient is a client for the cluster's etcd, dialled from a namespace
// that reaches it (h1 for the embedded etcd, the fabric for ExternalEtcd).
// The caller closes it.
func (cl *Cluster) EtcdClient() (*clientv3.Client, error) {
	ns := cl.Host(1).NS
	if strings.Contains(cl.EtcdEndpoint, ExternalEtcdIP) {
		ns = cl.Fabric
	}
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   cl.EtcdEndpoints(),
		DialTimeout: 5 * time.Second,
		TLS:         cl.EtcdTLS(),
		Logger:      zap.NewNop(),
		DialOptions: []grpc.DialOption{grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
			return ns.DialContext(ctx, "tcp", addr)
		})},
	})
	if err != nil {
		return nil, fmt.Errorf("etcd client for %s: %w", cl.EtcdEndpoint, err)
	}
	return cli, nil
}

// PutRules writes rules straight into etcd, 100 to a transaction, the way
// bulk tooling would (keyroutectl writes one at a time).
func PutRules(ctx context.Context, cli *clientv3.Client, rs []rules.Rule) error {
	for i := 0; i < len(rs); i += 100 {
		var ops []clientv3.Op
		for _, r := range rs[i:min(i+100, len(rs))] {
			b, err := json.Marshal(r)
			if err != nil {
				return fmt.Errorf("encode rule %s: %w", r.ID, err)
			}
			ops = append(ops, clientv3.OpPut(RuleKeys.Key(r.ID), string(b)))
		}
		if _, err := cli.Txn(ctx).Then(ops...).Commit(); err != nil {
			return fmt.Errorf("put rules %d-%d: %w", i, i+len(ops)-1, err)
		}
	}
	return nil
}

// DeleteAllRules removes every rule from etcd: every key under the rules
// directory, which is the key of the empty id.
func DeleteAllRules(ctx context.Context, cli *clientv3.Client) error {
	if _, err := cli.Delete(ctx, RuleKeys.Key(""), clientv3.WithPrefix()); err != nil {
		return fmt.Errorf("delete rules: %w", err)
	}
	return nil
}

// WaitRulesEnforced polls h's `rule stats` until at least n rules have
// flows installed, or until exactly none do when n is 0.
func (h *Host) WaitRulesEnforced(n int, timeout time.Duration) error {
	c := api.NewClient(h.APISocket)
	return simhost.WaitFor(timeout, func() error {
		stats, err := c.RuleStats(context.Background())
		if err != nil {
			return err
		}
		got := 0
		for _, s := range stats {
			if s.Flows > 0 {
				got++
			}
		}
		if (n == 0 && got != 0) || got < n {
			return fmt.Errorf("%s enforces %d rules, waiting for %d", h.Name, got, n)
		}
		return nil
	})
}

// NonMatchingRules returns n rules of mixed shapes - remote CIDRs outside
// the cluster's used subnets, UDP port ranges, TCP ports, ICMP types - that
// select containers (egress from egressLocal, ingress to ingressLocal,
// name globs) so they are installed, but never match TCP to port 5201 or
// UDP to port 7001 between those containers. Each packet of such traffic
// is looked up against all of them: the load of a busy rule set.
func NonMatchingRules(n int, egressLocal, ingressLocal string) []rules.Rule {
	out := make([]rules.Rule, 0, n)
	for i := range n {
		r := rules.Rule{ID: fmt.Sprintf("bench-%04d", i), Priority: 1 + i%500, Protocol: rules.ProtoAny}
		if i%2 == 0 {
			r.Direction, r.Local = rules.Egress, rules.Selector{Name: egressLocal}
		} else {
			r.Direction, r.Local = rules.Ingress, rules.Selector{Name: ingressLocal}
		}
		switch i % 4 {
		case 0: // a remote /24 outside the cluster's used subnets
			r.Remote = rules.Selector{CIDR: fmt.Sprintf("198.19.%d.0/24", 100+i%150)}
			r.Action = rules.Deny
		case 1: // UDP port ranges above 7001
			r.Protocol, r.Ports = rules.ProtoUDP, fmt.Sprintf("%d-%d", 10000+i, 10000+i+37)
			r.Action = rules.Deny
		case 2: // TCP ports other than 5201
			r.Protocol, r.Ports = rules.ProtoTCP, strconv.Itoa(6000+i)
			r.Action = rules.Deny
		case 3: // ICMP types other than echo and echo reply
			t := uint8(i % 40)
			if t == 0 || t == 8 {
				t = 13
			}
			r.Protocol, r.ICMPType, r.Action = rules.ProtoICMP, &t, rules.Allow
		}
		out = append(out, r)
	}
	return out
}
