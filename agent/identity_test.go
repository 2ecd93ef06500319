package agent

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/keyroute/keyroute/registry"
)

func TestNodeIDFile(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	id, created, err := loadOrCreateNodeID(dir)
	if err != nil || !created {
		t.Fatalf("first load = %q, %v, %v; want a new ID", id, created, err)
	}
	if err := registry.ValidateNodeID(id); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(filepath.Join(dir, NodeIDFile))
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("node-id file: %v, %v; want mode 0600", st, err)
	}
	again, created, err := loadOrCreateNodeID(dir)
	if err != nil || created || again != id {
		t.Fatalf("second load = %q, %v, %v; want %q kept", again, created, err, id)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		t.Errorf("state dir holds %v, want only node-id (no temporary files)", ents)
	}
	other, _, err := loadOrCreateNodeID(t.TempDir())
	if err != nil || other == id {
		t.Errorf("another state dir's ID = %q, %v; want a different one", other, err)
	}
	if err := os.WriteFile(filepath.Join(dir, NodeIDFile), []byte("garbage\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, _, err := loadOrCreateNodeID(dir); err == nil || !strings.Contains(err.Error(), NodeIDFile) {
		t.Errorf("damaged node-id: %v, want an error naming the file", err)
	}
}

func TestDiffClusterSettings(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Node, cfg.Uplink = "h1", "eth1"
	cfg.Etcd.EmbeddedClientURL = "http://127.0.0.1:2379"
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	s := clusterSettings(&cfg, time.Now())
	if err := s.Validate(); err != nil {
		t.Fatalf("the default config's settings do not validate: %v", err)
	}
	if d := DiffClusterSettings(&cfg, s); len(d) != 0 {
		t.Fatalf("same config: %v, want no differences", d)
	}
	// Spelling is no difference.
	same := cfg
	same.Cluster.GatewayMAC = strings.ToUpper(cfg.Cluster.GatewayMAC)
	same.Cache.Keys = "2-5,6-7,9-39" // the default "2-7,9-39"
	if d := DiffClusterSettings(&same, s); len(d) != 0 {
		t.Errorf("same values spelled differently: %v, want no differences", d)
	}

	other := cfg
	other.Cluster = ClusterConfig{PodCIDR: "10.0.0.0/8", SubnetBits: 20, VNI: 200, VXLANPort: 4790, GatewayMAC: "0a:00:00:00:00:02"}
	other.Cache.Keys = "1-45"
	other.Cache.SendIdle, other.Cache.Quarantine, other.Cache.PendingTimeout = 20*time.Second, 2*time.Second, 7*time.Second
	other.Cache.PuntRate = 5 // not a cluster setting
	diffs := DiffClusterSettings(&other, s)
	want := []SettingDiff{
		{"cluster.pod_cidr", "10.0.0.0/8", "198.19.0.0/16"},
		{"cluster.subnet_bits", "20", "24"},
		{"cluster.vni", "200", "100"},
		{"cluster.vxlan_port", "4790", "4789"},
		{"cluster.gateway_mac", "0a:00:00:00:00:02", "0a:00:00:00:00:01"},
		{"cache.keys", `"1-45"`, `"2-7,9-39"`},
		{"cache.send_idle", "20s", "10s"},
		{"cache.quarantine", "2s", "1s"},
		{"cache.pending_timeout", "7s", "5s"},
	}
	if len(diffs) != len(want) {
		t.Fatalf("diffs = %v, want %v", diffs, want)
	}
	for i := range want {
		if diffs[i] != want[i] {
			t.Errorf("diff %d = %v, want %v", i, diffs[i], want[i])
		}
	}
	err := error(&SettingsMismatchError{Diffs: diffs, By: "h1", Since: s.Since})
	for _, w := range []string{"cluster.vni: config 200, cluster 100", "cache.pending_timeout: config 7s, cluster 5s", "written by h1", "--adopt-cluster-settings"} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error %q does not say %q", err, w)
		}
	}

	// Adopting takes every cluster value and nothing else.
	adopted := other
	got := AdoptClusterSettings(&adopted, s)
	if len(got) != len(want) {
		t.Errorf("adopted %v, want %v", got, want)
	}
	if d := DiffClusterSettings(&adopted, s); len(d) != 0 {
		t.Errorf("after adopting: %v, want no differences", d)
	}
	if adopted.Cache.PuntRate != 5 || adopted.Node != "h1" {
		t.Errorf("adopting changed other fields: %+v", adopted)
	}
	if err := adopted.Validate(); err != nil {
		t.Errorf("adopted config does not validate: %v", err)
	}
	var me *SettingsMismatchError
	if !errors.As(err, &me) {
		t.Error("not a SettingsMismatchError")
	}
}
