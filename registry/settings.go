package registry

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// ClusterSettings is cluster/settings: the settings every agent of the
// cluster must agree on, written once by the first agent (agent config
// field names in the comments).
type ClusterSettings struct {
	PodCIDR    string `json:"podCIDR"`    // cluster.pod_cidr
	SubnetBits int    `json:"subnetBits"` // cluster.subnet_bits
	VNI        uint32 `json:"vni"`        // cluster.vni
	VXLANPort  uint16 `json:"vxlanPort"`  // cluster.vxlan_port
	GatewayMAC string `json:"gatewayMAC"` // cluster.gateway_mac
	// Keys is the DSCP key set (cache.keys), e.g. "1-63,!46".
	Keys           string   `json:"keys"`
	SendIdle       Duration `json:"sendIdle"`       // cache.send_idle
	Quarantine     Duration `json:"quarantine"`     // cache.quarantine
	PendingTimeout Duration `json:"pendingTimeout"` // cache.pending_timeout
	// Since is when the first agent wrote the settings; By is its node.
	Since time.Time `json:"since"`
	By    string    `json:"by"`
}

// Duration is a time.Duration that JSON writes as "10s".
type Duration time.Duration

// MarshalJSON writes d as a Go duration string.
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

// UnmarshalJSON reads a Go duration string.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return err
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return err
	}
	*d = Duration(v)
	return nil
}

// Validate checks the settings' form; the agent's config validation holds
// the finer rules (it checks adopted settings again).
func (s ClusterSettings) Validate() error {
	p, err := netip.ParsePrefix(s.PodCIDR)
	if err != nil || !p.Addr().Is4() || p.Masked() != p {
		return fmt.Errorf("cluster settings: pod CIDR %q is not an IPv4 network", s.PodCIDR)
	}
	if s.SubnetBits <= p.Bits() || s.SubnetBits > 30 {
		return fmt.Errorf("cluster settings: subnet bits %d outside /%d..30", s.SubnetBits, p.Bits()+1)
	}
	if s.VNI == 0 || s.VNI >= 1<<24 {
		return fmt.Errorf("cluster settings: VNI %d outside 1..16777215", s.VNI)
	}
	if s.VXLANPort == 0 {
		return fmt.Errorf("cluster settings: VXLAN port 0")
	}
	if mac, err := net.ParseMAC(s.GatewayMAC); err != nil || len(mac) != 6 || mac[0]&1 == 1 {
		return fmt.Errorf("cluster settings: gateway MAC %q is not a unicast Ethernet address", s.GatewayMAC)
	}
	if s.Keys == "" || len(s.Keys) > 256 || strings.Trim(s.Keys, "0123456789,-! ") != "" {
		return fmt.Errorf("cluster settings: key set %.40q is not a DSCP list such as 1-63,!46", s.Keys)
	}
	for _, d := range []struct {
		name string
		v    Duration
	}{{"send idle", s.SendIdle}, {"quarantine", s.Quarantine}, {"pending timeout", s.PendingTimeout}} {
		if d.v <= 0 || time.Duration(d.v) > 24*time.Hour {
			return fmt.Errorf("cluster settings: %s %v outside (0, 24h]", d.name, time.Duration(d.v))
		}
	}
	if err := ValidateName(s.By); err != nil {
		return fmt.Errorf("cluster settings: writer: %w", err)
	}
	if s.Since.IsZero() {
		return fmt.Errorf("cluster settings: no write time")
	}
	return nil
}

// ClaimClusterSettings writes s as cluster/settings if there are none yet
// and returns the cluster's settings: s and created, or the stored ones. A
// stored record that does not validate is counted and returned as an error
// wrapping ErrBadRecord. Cost: 1 transaction.
func (c *Client) ClaimClusterSettings(ctx context.Context, s ClusterSettings) (stored ClusterSettings, created bool, err error) {
	if err := s.Validate(); err != nil {
		return ClusterSettings{}, false, err
	}
	val, err := json.Marshal(s)
	if err != nil {
		return ClusterSettings{}, false, fmt.Errorf("cluster settings: %w", err)
	}
	key := c.settingsKey()
	resp, err := c.cli.Txn(ctx).If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
		Then(clientv3.OpPut(key, string(val))).Else(clientv3.OpGet(key)).Commit()
	if err != nil {
		return ClusterSettings{}, false, fmt.Errorf("cluster settings: %w", err)
	}
	if resp.Succeeded {
		return s, true, nil
	}
	kvs := resp.Responses[0].GetResponseRange().Kvs
	if len(kvs) == 0 { // cannot happen: the Get runs in the failed transaction
		return ClusterSettings{}, false, fmt.Errorf("cluster settings: record vanished")
	}
	stored, err = c.decodeSettings(kvs[0])
	if err != nil {
		c.badRecord(string(kvs[0].Key), err)
		return ClusterSettings{}, false, err
	}
	return stored, false, nil
}

// GetClusterSettings returns the cluster's settings; ErrNotFound if no
// agent wrote them yet.
func (c *Client) GetClusterSettings(ctx context.Context) (ClusterSettings, error) {
	resp, err := c.cli.Get(ctx, c.settingsKey())
	if err != nil {
		return ClusterSettings{}, fmt.Errorf("get cluster settings: %w", err)
	}
	if len(resp.Kvs) == 0 {
		return ClusterSettings{}, fmt.Errorf("get cluster settings: %w", ErrNotFound)
	}
	return c.decodeSettings(resp.Kvs[0])
}

func (c *Client) settingsKey() string { return c.prefix + "cluster/settings" }

func (c *Client) decodeSettings(kv *mvccpb.KeyValue) (ClusterSettings, error) {
	if len(kv.Value) > MaxRecordSize {
		return ClusterSettings{}, NewRecordError(KindSettings, kv, fmt.Errorf("value is %d bytes, more than %d", len(kv.Value), MaxRecordSize))
	}
	var s ClusterSettings
	if err := json.Unmarshal(kv.Value, &s); err != nil {
		return ClusterSettings{}, NewRecordError(KindSettings, kv, err)
	}
	if err := s.Validate(); err != nil {
		return ClusterSettings{}, NewRecordError(KindSettings, kv, err)
	}
	return s, nil
}
