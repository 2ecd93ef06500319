package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/keyroute/keyroute/keyalloc"
	"github.com/keyroute/keyroute/registry"
)

// NodeIDFile is the file in state_dir that keeps this machine's node ID.
const NodeIDFile = "node-id"

// loadOrCreateNodeID returns the node ID kept in dir/node-id, creating a
// random one (0600, written atomically) on the first start.
func loadOrCreateNodeID(dir string) (id string, created bool, err error) {
	path := filepath.Join(dir, NodeIDFile)
	b, err := os.ReadFile(path)
	switch {
	case err == nil:
		id = strings.TrimSpace(string(b))
		if err := registry.ValidateNodeID(id); err != nil {
			return "", false, fmt.Errorf("node ID file %s: %w; it was damaged: restore it, or, if this machine may take its node name afresh, delete it and release the name with keyroutectl hosts remove <node>", path, err)
		}
		return id, false, nil
	case !errors.Is(err, os.ErrNotExist):
		return "", false, fmt.Errorf("read node ID: %w", err)
	}
	if id, err = registry.NewNodeID(); err != nil {
		return "", false, err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", false, fmt.Errorf("create state_dir: %w", err)
	}
	if err := writeFileAtomic(path, []byte(id+"\n"), 0o600); err != nil {
		return "", false, fmt.Errorf("write node ID: %w", err)
	}
	return id, true, nil
}

// writeFileAtomic writes a temporary file with perm in path's directory,
// syncs it and renames it to path, so path is either absent or complete.
func writeFileAtomic(path string, data []byte, perm os.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer os.Remove(tmp) // after a successful rename, there is nothing to remove
	if err := f.Chmod(perm); err != nil {
		f.Close()
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	if d, err := os.Open(filepath.Dir(path)); err == nil {
		d.Sync()
		d.Close()
	}
	return nil
}

// claimNode binds the node name to this machine's node ID in etcd, or
// refuses the start when another machine holds it.
func (a *Agent) claimNode(ctx context.Context, hostIP netip.Addr) error {
	id, created, err := loadOrCreateNodeID(a.cfg.StateDir)
	if err != nil {
		return fmt.Errorf("node identity: %w", err)
	}
	if created {
		a.log.Info("created this machine's node ID", "file", filepath.Join(a.cfg.StateDir, NodeIDFile), "id", id)
	}
	hostname, _ := os.Hostname()
	n, err := a.reg.ClaimNode(ctx, registry.NodeClaim{Name: a.cfg.Node, ID: id, HostIP: hostIP,
		Hostname: hostname, Since: time.Now().UTC().Truncate(time.Second)})
	if err != nil {
		return fmt.Errorf("node identity: %w", err)
	}
	a.log.Info("node name claimed", "node", n.Name, "id", n.ID, "since", n.Since.Format(time.RFC3339))
	return nil
}

// SettingDiff is one cluster setting where the config and the cluster's
// settings differ.
type SettingDiff struct {
	Field           string // config field, e.g. cluster.vni
	Config, Cluster string
}

func (d SettingDiff) String() string {
	return fmt.Sprintf("%s: config %s, cluster %s", d.Field, d.Config, d.Cluster)
}

// clusterSettings returns the config's cluster settings, as the first
// agent writes them.
func clusterSettings(cfg *Config, now time.Time) registry.ClusterSettings {
	return registry.ClusterSettings{
		PodCIDR: cfg.Cluster.PodCIDR, SubnetBits: cfg.Cluster.SubnetBits, VNI: cfg.Cluster.VNI,
		VXLANPort: cfg.Cluster.VXLANPort, GatewayMAC: cfg.Cluster.GatewayMAC, Keys: cfg.Cache.Keys,
		SendIdle: registry.Duration(cfg.Cache.SendIdle), Quarantine: registry.Duration(cfg.Cache.Quarantine),
		PendingTimeout: registry.Duration(cfg.Cache.PendingTimeout),
		Since:          now.UTC().Truncate(time.Second), By: cfg.Node,
	}
}

// settingFields lists the settings compared, each with its config field,
// a comparison by meaning (e.g. MAC case, key set order) and adoption.
var settingFields = []struct {
	field string
	show  func(c *Config) string
	clus  func(s registry.ClusterSettings) string
	same  func(c *Config, s registry.ClusterSettings) bool
	adopt func(c *Config, s registry.ClusterSettings)
}{
	{"cluster.pod_cidr",
		func(c *Config) string { return c.Cluster.PodCIDR },
		func(s registry.ClusterSettings) string { return s.PodCIDR },
		func(c *Config, s registry.ClusterSettings) bool {
			a, err1 := netip.ParsePrefix(c.Cluster.PodCIDR)
			b, err2 := netip.ParsePrefix(s.PodCIDR)
			return err1 == nil && err2 == nil && a == b
		},
		func(c *Config, s registry.ClusterSettings) { c.Cluster.PodCIDR = s.PodCIDR }},
	{"cluster.subnet_bits",
		func(c *Config) string { return fmt.Sprint(c.Cluster.SubnetBits) },
		func(s registry.ClusterSettings) string { return fmt.Sprint(s.SubnetBits) },
		func(c *Config, s registry.ClusterSettings) bool { return c.Cluster.SubnetBits == s.SubnetBits },
		func(c *Config, s registry.ClusterSettings) { c.Cluster.SubnetBits = s.SubnetBits }},
	{"cluster.vni",
		func(c *Config) string { return fmt.Sprint(c.Cluster.VNI) },
		func(s registry.ClusterSettings) string { return fmt.Sprint(s.VNI) },
		func(c *Config, s registry.ClusterSettings) bool { return c.Cluster.VNI == s.VNI },
		func(c *Config, s registry.ClusterSettings) { c.Cluster.VNI = s.VNI }},
	{"cluster.vxlan_port",
		func(c *Config) string { return fmt.Sprint(c.Cluster.VXLANPort) },
		func(s registry.ClusterSettings) string { return fmt.Sprint(s.VXLANPort) },
		func(c *Config, s registry.ClusterSettings) bool { return c.Cluster.VXLANPort == s.VXLANPort },
		func(c *Config, s registry.ClusterSettings) { c.Cluster.VXLANPort = s.VXLANPort }},
	{"cluster.gateway_mac",
		func(c *Config) string { return c.Cluster.GatewayMAC },
		func(s registry.ClusterSettings) string { return s.GatewayMAC },
		func(c *Config, s registry.ClusterSettings) bool {
			a, err1 := net.ParseMAC(c.Cluster.GatewayMAC)
			b, err2 := net.ParseMAC(s.GatewayMAC)
			return err1 == nil && err2 == nil && a.String() == b.String()
		},
		func(c *Config, s registry.ClusterSettings) { c.Cluster.GatewayMAC = s.GatewayMAC }},
	{"cache.keys",
		func(c *Config) string { return fmt.Sprintf("%q", c.Cache.Keys) },
		func(s registry.ClusterSettings) string { return fmt.Sprintf("%q", s.Keys) },
		func(c *Config, s registry.ClusterSettings) bool {
			a, err1 := keyalloc.ParseKeySet(c.Cache.Keys)
			b, err2 := keyalloc.ParseKeySet(s.Keys)
			return err1 == nil && err2 == nil && slices.Equal(a.Keys(), b.Keys())
		},
		func(c *Config, s registry.ClusterSettings) { c.Cache.Keys = s.Keys }},
	{"cache.send_idle",
		func(c *Config) string { return c.Cache.SendIdle.String() },
		func(s registry.ClusterSettings) string { return time.Duration(s.SendIdle).String() },
		func(c *Config, s registry.ClusterSettings) bool { return c.Cache.SendIdle == time.Duration(s.SendIdle) },
		func(c *Config, s registry.ClusterSettings) { c.Cache.SendIdle = time.Duration(s.SendIdle) }},
	{"cache.quarantine",
		func(c *Config) string { return c.Cache.Quarantine.String() },
		func(s registry.ClusterSettings) string { return time.Duration(s.Quarantine).String() },
		func(c *Config, s registry.ClusterSettings) bool {
			return c.Cache.Quarantine == time.Duration(s.Quarantine)
		},
		func(c *Config, s registry.ClusterSettings) { c.Cache.Quarantine = time.Duration(s.Quarantine) }},
	{"cache.pending_timeout",
		func(c *Config) string { return c.Cache.PendingTimeout.String() },
		func(s registry.ClusterSettings) string { return time.Duration(s.PendingTimeout).String() },
		func(c *Config, s registry.ClusterSettings) bool {
			return c.Cache.PendingTimeout == time.Duration(s.PendingTimeout)
		},
		func(c *Config, s registry.ClusterSettings) { c.Cache.PendingTimeout = time.Duration(s.PendingTimeout) }},
}

// DiffClusterSettings compares cfg with the cluster's settings field by
// field, by meaning (a MAC's case or a key set's spelling is no
// difference), and returns every difference in config-file order.
func DiffClusterSettings(cfg *Config, s registry.ClusterSettings) []SettingDiff {
	var out []SettingDiff
	for _, f := range settingFields {
		if !f.same(cfg, s) {
			out = append(out, SettingDiff{Field: f.field, Config: f.show(cfg), Cluster: f.clus(s)})
		}
	}
	return out
}

// AdoptClusterSettings sets cfg's differing fields to the cluster's and
// returns what it changed.
func AdoptClusterSettings(cfg *Config, s registry.ClusterSettings) []SettingDiff {
	diffs := DiffClusterSettings(cfg, s)
	for _, d := range diffs {
		for _, f := range settingFields {
			if f.field == d.Field {
				f.adopt(cfg, s)
			}
		}
	}
	return diffs
}

// SettingsMismatchError refuses a start whose config differs from the
// cluster's settings.
type SettingsMismatchError struct {
	Diffs []SettingDiff
	// By and Since say which agent wrote the cluster's settings, when.
	By    string
	Since time.Time
}

func (e *SettingsMismatchError) Error() string {
	parts := make([]string, len(e.Diffs))
	for i, d := range e.Diffs {
		parts[i] = d.String()
	}
	return fmt.Sprintf("this config differs from the cluster's settings (cluster/settings in etcd, written by %s at %s): %s; "+
		"every agent must use the same values: fix this host's config, or start with --adopt-cluster-settings to take the cluster's",
		e.By, e.Since.UTC().Format(time.RFC3339), strings.Join(parts, "; "))
}

// agreeClusterSettings writes the config's cluster settings if this is the
// first agent, and otherwise compares: a difference refuses the start, or
// with AdoptClusterSettings is taken from the cluster (each field logged).
// It returns whether it adopted anything.
func (a *Agent) agreeClusterSettings(ctx context.Context) (adopted bool, err error) {
	s, created, err := a.reg.ClaimClusterSettings(ctx, clusterSettings(&a.cfg, time.Now()))
	if err != nil {
		return false, fmt.Errorf("cluster settings: %w", err)
	}
	if created {
		a.log.Info("wrote the cluster's settings to etcd (first agent)", "pod_cidr", s.PodCIDR, "vni", s.VNI,
			"vxlan_port", s.VXLANPort, "keys", s.Keys)
		return false, nil
	}
	if !a.cfg.AdoptClusterSettings {
		if diffs := DiffClusterSettings(&a.cfg, s); len(diffs) > 0 {
			return false, &SettingsMismatchError{Diffs: diffs, By: s.By, Since: s.Since}
		}
		return false, nil
	}
	cfg := a.cfg
	diffs := AdoptClusterSettings(&cfg, s)
	if len(diffs) == 0 {
		return false, nil
	}
	if err := cfg.Validate(); err != nil {
		return false, fmt.Errorf("cluster settings: the cluster's values do not fit this host's config: %w", err)
	}
	for _, d := range diffs {
		a.log.Warn("adopted the cluster's setting (--adopt-cluster-settings)", "field", d.Field, "config", d.Config, "cluster", d.Cluster)
	}
	a.cfg = cfg
	return true, nil
}
