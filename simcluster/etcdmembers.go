package simcluster

import (
	"context"
	"fmt"
	"strings"
)

// This file runs the embedded etcd as a cluster of Options.EtcdMembers
// members on hosts 1..EtcdMembers (agent config etcd.members); the other
// hosts' agents list the members' client URLs as etcd.endpoints.

// checkEtcdMembers validates Options.EtcdMembers.
func (cl *Cluster) checkEtcdMembers() error {
	n := cl.opts.EtcdMembers
	switch {
	case n == 0:
		return nil
	case n != 3 && n != 5 && n != 7:
		return fmt.Errorf("new cluster: EtcdMembers=%d: want 3, 5 or 7", n)
	case n > cl.opts.Hosts:
		return fmt.Errorf("new cluster: EtcdMembers=%d: more than the %d hosts", n, cl.opts.Hosts)
	case cl.opts.ExternalEtcd:
		return fmt.Errorf("new cluster: EtcdMembers and ExternalEtcd exclude each other")
	}
	return nil
}

func (cl *Cluster) etcdScheme() string {
	if cl.PKIDir == "" {
		return "http"
	}
	return "https"
}

// EtcdEndpoints returns every etcd client URL: the members' with
// EtcdMembers, else EtcdEndpoint alone.
func (cl *Cluster) EtcdEndpoints() []string {
	if cl.opts.EtcdMembers == 0 {
		return []string{cl.EtcdEndpoint}
	}
	var eps []string
	for _, h := range cl.hosts[:cl.opts.EtcdMembers] {
		eps = append(eps, cl.etcdScheme()+"://"+h.IP.String()+":2379")
	}
	return eps
}

// memberEtcdConfig fills host h's etcd section for a cluster of members.
func (cl *Cluster) memberEtcdConfig(h *Host, etcd map[string]any) {
	if h.Index > cl.opts.EtcdMembers {
		etcd["endpoints"] = cl.EtcdEndpoints()
		return
	}
	members := map[string]any{}
	for _, m := range cl.hosts[:cl.opts.EtcdMembers] {
		members[m.Name] = cl.etcdScheme() + "://" + m.IP.String() + ":2380"
	}
	etcd["members"] = members
	etcd["embedded_client_url"] = cl.etcdScheme() + "://" + h.IP.String() + ":2379"
}

// startMembers starts the member hosts' agents together (a member is
// ready only once a quorum runs) and waits until each is ready.
func (cl *Cluster) startMembers(ctx context.Context) error {
	members := cl.hosts[:cl.opts.EtcdMembers]
	for _, h := range members {
		if err := h.spawnAgent(); err != nil {
			return err
		}
	}
	var errs []string
	for _, h := range members {
		if err := h.waitReady(ctx); err != nil {
			errs = append(errs, err.Error())
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("etcd member agents: %s", strings.Join(errs, "\n"))
	}
	return nil
}
