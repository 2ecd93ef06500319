package registry

import (
	"encoding/json"
	"errors"
	"net/netip"
	"reflect"
	"strings"
	"testing"

	"go.etcd.io/etcd/api/v3/mvccpb"
)

// The decoders are the one place each record kind is checked; these tests
// and fuzz targets call them on raw keys and values, without etcd.

func testClient() *Client {
	return &Client{prefix: DefaultPrefix, cluster: Cluster{PodCIDR: netip.MustParsePrefix("198.19.0.0/16"), SubnetBits: 24}}
}

func kv(key string, value string) *mvccpb.KeyValue {
	return &mvccpb.KeyValue{Key: []byte(DefaultPrefix + key), Value: []byte(value), ModRevision: 7}
}

const (
	goodHost     = `{"name":"h1","underlayIP":"198.18.0.1","underlayMAC":"02:00:00:00:00:01","podSubnet":"198.19.1.0/24","datapath":"netdev","agentVersion":"0.1.0"}`
	ipv6Host     = `{"name":"evil","underlayIP":"2001:db8::1","underlayMAC":"02:00:00:00:00:09","podSubnet":"198.19.9.0/24"}`
	goodEndpoint = `{"ip":"198.19.1.5","host":"h1","name":"c1","mac":"0a:58:c6:13:01:05","netns":"/run/netns/c1","port":"kr0123456789a"}`
	cniEndpoint  = `{"ip":"198.19.1.6","host":"h1","name":"0123abcd_x.y-z:eth0","mac":"0a:58:c6:13:01:06","netns":"/run/netns/c2","port":"kr0123456789b","container_id":"0123abcd_x.y-z","ifname":"eth0"}`
	ipv6Roaming  = `{"ip":"2001:db8::5","host":"h1","name":"x"}`
)

// checkBad fails t unless err is a RecordError of kind wrapping
// ErrBadRecord whose text contains want.
func checkBad(t *testing.T, kind string, err error, want string) {
	t.Helper()
	switch {
	case err == nil:
		t.Errorf("accepted, want an error containing %q", want)
	case !errors.Is(err, ErrBadRecord) || RecordKind(err) != kind:
		t.Errorf("error %v: want a %s RecordError wrapping ErrBadRecord", err, kind)
	case !strings.Contains(err.Error(), want):
		t.Errorf("error %q does not contain %q", err, want)
	}
}

func TestDecodeHost(t *testing.T) {
	c := testClient()
	if h, err := c.decodeHost(kv("hosts/h1", goodHost)); err != nil || h.Name != "h1" {
		t.Fatalf("good host: %+v, %v", h, err)
	}
	withBridges := goodHost[:len(goodHost)-1] + `,"bridges":{"integration":"kr-int","physical":"kr-phy"}}`
	if h, err := c.decodeHost(kv("hosts/h1", withBridges)); err != nil || h.Bridges.Integration != "kr-int" || h.Bridges.Physical != "kr-phy" {
		t.Fatalf("host with bridges: %+v, %v", h, err)
	}
	withAPI := goodHost[:len(goodHost)-1] + `,"apiAddr":"198.18.0.1:9478"}`
	if h, err := c.decodeHost(kv("hosts/h1", withAPI)); err != nil || h.APIAddr != netip.MustParseAddrPort("198.18.0.1:9478") {
		t.Fatalf("good host with API address: %+v, %v", h, err)
	}
	with := func(field string, value any) string {
		var m map[string]any
		if err := json.Unmarshal([]byte(goodHost), &m); err != nil {
			t.Fatal(err)
		}
		m[field] = value
		b, _ := json.Marshal(m)
		return string(b)
	}
	for _, tc := range []struct {
		name, key, value, want string
	}{
		{"IPv6 underlay", "hosts/evil", ipv6Host, "underlay IP: 2001:db8::1 is not IPv4"},
		{"4in6 underlay", "hosts/h1", with("underlayIP", "::ffff:198.18.0.1"), "underlay IP: ::ffff:198.18.0.1 is not IPv4"},
		{"no underlay", "hosts/h1", with("underlayIP", ""), "underlay IP: missing"},
		{"unspecified underlay", "hosts/h1", with("underlayIP", "0.0.0.0"), "underlay IP: 0.0.0.0 is not a unicast"},
		{"multicast underlay", "hosts/h1", with("underlayIP", "239.1.1.1"), "underlay IP: 239.1.1.1 is not a unicast"},
		{"broadcast underlay", "hosts/h1", with("underlayIP", "255.255.255.255"), "underlay IP: 255.255.255.255 is not a unicast"},
		{"loopback underlay", "hosts/h1", with("underlayIP", "127.0.0.1"), "underlay IP: 127.0.0.1 is not a unicast"},
		{"unparsable underlay", "hosts/h1", with("underlayIP", "300.1.1.1"), "300.1.1.1"},
		{"8-byte MAC", "hosts/h1", with("underlayMAC", "02:00:00:00:00:00:00:01"), "underlay MAC"},
		{"multicast MAC", "hosts/h1", with("underlayMAC", "01:00:5e:00:00:01"), "underlay MAC: 01:00:5e:00:00:01 is a multicast"},
		{"broadcast MAC", "hosts/h1", with("underlayMAC", "ff:ff:ff:ff:ff:ff"), "underlay MAC: ff:ff:ff:ff:ff:ff is a multicast"},
		{"zero MAC", "hosts/h1", with("underlayMAC", "00:00:00:00:00:00"), "underlay MAC: 00:00:00:00:00:00 is the zero"},
		{"no MAC", "hosts/h1", with("underlayMAC", ""), "underlay MAC"},
		{"IPv6 subnet", "hosts/h1", with("podSubnet", "fd00::/64"), "pod subnet: fd00::/64 is not IPv4"},
		{"host bits in subnet", "hosts/h1", with("podSubnet", "198.19.1.1/24"), "pod subnet: 198.19.1.1/24 is not a network address"},
		{"subnet of another size", "hosts/h1", with("podSubnet", "198.19.0.0/23"), "pod subnet: 198.19.0.0/23 is not a /24 subnet of the cluster's 198.19.0.0/16"},
		{"subnet outside the cluster", "hosts/h1", with("podSubnet", "10.0.0.0/24"), "pod subnet: 10.0.0.0/24 is not a /24"},
		{"the whole internet", "hosts/h1", with("podSubnet", "0.0.0.0/0"), "pod subnet: 0.0.0.0/0: size /0"},
		{"no subnet", "hosts/h1", with("podSubnet", ""), "pod subnet: missing"},
		{"bad name", "hosts/a b", with("name", "a b"), "host name"},
		{"name not the key's", "hosts/h2", goodHost, `record names host "h1", its key "h2"`},
		{"datapath", "hosts/h1", with("datapath", "dpdk"), `datapath "dpdk"`},
		{"version", "hosts/h1", with("agentVersion", "1\n2"), "agent version"},
		{"long version", "hosts/h1", with("agentVersion", strings.Repeat("v", 65)), "agent version"},
		{"bridge name", "hosts/h1", with("bridges", map[string]string{"integration": "a b", "physical": "kr-phy"}), "bridges: integration bridge"},
		{"one bridge", "hosts/h1", with("bridges", map[string]string{"integration": "kr-int"}), "bridges: physical bridge: empty"},
		{"same bridges", "hosts/h1", with("bridges", map[string]string{"integration": "kr", "physical": "kr"}), "bridges: integration and physical bridge are both"},
		{"bridges not an object", "hosts/h1", with("bridges", "br-int"), "bridges"},
		{"API address without port", "hosts/h1", with("apiAddr", "198.18.0.1"), "API address"},
		{"API address port 0", "hosts/h1", with("apiAddr", "198.18.0.1:0"), "API address 198.18.0.1:0: port 0"},
		{"API address loopback", "hosts/h1", with("apiAddr", "127.0.0.1:9478"), "API address: 127.0.0.1 is not a unicast"},
		{"API address IPv6", "hosts/h1", with("apiAddr", "[2001:db8::1]:9478"), "API address: 2001:db8::1 is not IPv4"},
		{"API address unspecified", "hosts/h1", with("apiAddr", "0.0.0.0:9478"), "API address: 0.0.0.0 is not a unicast"},
		{"underlay IP IPv6", "hosts/h1", with("underlayIPs", []string{"fd00::1"}), "underlay IPs[0]: fd00::1 is not IPv4"},
		{"underlay IP multicast", "hosts/h1", with("underlayIPs", []string{"224.0.0.1"}), "underlay IPs[0]: 224.0.0.1 is not a unicast"},
		{"underlay IP the host IP", "hosts/h1", with("underlayIPs", []string{"198.18.0.1"}), "underlay IPs[0]: 198.18.0.1 listed twice"},
		{"underlay IP twice", "hosts/h1", with("underlayIPs", []string{"198.18.1.1", "198.18.1.1"}), "underlay IPs[1]: 198.18.1.1 listed twice"},
		{"underlay IPs too many", "hosts/h1", with("underlayIPs", []string{"198.18.1.1", "198.18.1.2", "198.18.1.3", "198.18.1.4", "198.18.1.5", "198.18.1.6", "198.18.1.7", "198.18.1.8"}), "8 underlay IPs, at most 7"},
		{"underlay IPs not a list", "hosts/h1", with("underlayIPs", "198.18.1.1"), "underlayIPs"},
		{"not JSON", "hosts/h1", "{", "unexpected end of JSON"},
		{"null", "hosts/h1", "null", "host name: empty name"},
		{"oversize", "hosts/h1", goodHost[:len(goodHost)-1] + `,"pad":"` + strings.Repeat("x", MaxRecordSize) + `"}`, "exceeds the 65536-byte limit"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := c.decodeHost(kv(tc.key, tc.value))
			checkBad(t, KindHost, err, tc.want)
		})
	}
}

func TestDecodeAlive(t *testing.T) {
	c := testClient()
	if a, err := c.decodeAlive(kv("alive/h1", `{"host":"h1","since":"2024-01-02T03:04:05Z"}`)); err != nil || a.Host != "h1" {
		t.Fatalf("good alive: %+v, %v", a, err)
	}
	for _, tc := range []struct{ name, key, value, want string }{
		{"no since", "alive/h1", `{"host":"h1"}`, "alive h1: since: no start time"},
		{"bad name", "alive/h1", `{"host":"","since":"2024-01-02T03:04:05Z"}`, "alive host name: empty name"},
		{"other host", "alive/h2", `{"host":"h1","since":"2024-01-02T03:04:05Z"}`, `record names host "h1"`},
		{"version", "alive/h1", `{"host":"h1","agentVersion":"\u0000","since":"2024-01-02T03:04:05Z"}`, "alive h1: agent version"},
		{"not JSON", "alive/h1", `[]`, "cannot unmarshal array"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := c.decodeAlive(kv(tc.key, tc.value))
			checkBad(t, KindAlive, err, tc.want)
		})
	}
}

func TestDecodeSubnet(t *testing.T) {
	c := testClient()
	if s, err := c.decodeSubnet(kv("subnets/198.19.1.0/24", "h1")); err != nil || s.Host != "h1" || s.Subnet.String() != "198.19.1.0/24" {
		t.Fatalf("good claim: %+v, %v", s, err)
	}
	for _, tc := range []struct{ name, key, value, want string }{
		{"not a CIDR", "subnets/junk", "h1", "key: netip.ParsePrefix"},
		{"IPv6", "subnets/fd00::/64", "h1", "subnet: fd00::/64 is not IPv4"},
		{"host bits", "subnets/198.19.1.1/24", "h1", "subnet: 198.19.1.1/24 is not a network address"},
		{"too small", "subnets/198.19.1.0/31", "h1", "size /31"},
		{"bad host", "subnets/198.19.1.0/24", "a/b", "subnet claim 198.19.1.0/24: host"},
		{"no host", "subnets/198.19.1.0/24", "", "host: empty name"},
		{"oversize", "subnets/198.19.1.0/24", strings.Repeat("h", MaxRecordSize+1), "exceeds"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := c.decodeSubnet(kv(tc.key, tc.value))
			checkBad(t, KindSubnet, err, tc.want)
		})
	}
}

func TestDecodeEndpointAndRoaming(t *testing.T) {
	c := testClient()
	if e, err := c.decodeEndpoint(kv("endpoints/198.19.1.5", goodEndpoint)); err != nil || e.Name != "c1" {
		t.Fatalf("good endpoint: %+v, %v", e, err)
	}
	if e, err := c.decodeRoaming(kv("roaming/198.19.1.5", goodEndpoint)); err != nil || e.Name != "c1" {
		t.Fatalf("good roaming: %+v, %v", e, err)
	}
	if e, err := c.decodeEndpoint(kv("endpoints/198.19.1.6", cniEndpoint)); err != nil || e.ContainerID != "0123abcd_x.y-z" || e.IfName != "eth0" {
		t.Fatalf("good CNI endpoint: %+v, %v", e, err)
	}
	for _, tc := range []struct{ name, ip, value, want string }{
		{"IPv6", "2001:db8::5", ipv6Roaming, "IP: 2001:db8::5 is not IPv4"},
		{"outside the cluster", "10.1.2.3", `{"ip":"10.1.2.3","host":"h1","name":"x"}`, "IP: 10.1.2.3 is outside the cluster's 198.19.0.0/16"},
		{"no IP", "", `{"host":"h1","name":"x"}`, "IP: missing"},
		{"key of another IP", "198.19.1.9", `{"ip":"198.19.1.8","host":"h1","name":"x"}`, `record holds IP 198.19.1.8, its key "198.19.1.9"`},
		{"no host", "198.19.1.5", `{"ip":"198.19.1.5","name":"x"}`, "endpoint host: empty name"},
		{"bad host", "198.19.1.5", `{"ip":"198.19.1.5","host":"a/b","name":"x"}`, "endpoint host"},
		{"no name", "198.19.1.5", `{"ip":"198.19.1.5","host":"h1"}`, "endpoint on h1: name: empty name"},
		{"bad MAC", "198.19.1.5", `{"ip":"198.19.1.5","host":"h1","name":"x","mac":"zz"}`, "MAC"},
		{"multicast MAC", "198.19.1.5", `{"ip":"198.19.1.5","host":"h1","name":"x","mac":"33:33:00:00:00:01"}`, "endpoint h1/x: MAC: 33:33:00:00:00:01 is a multicast"},
		{"long port", "198.19.1.5", `{"ip":"198.19.1.5","host":"h1","name":"x","port":"kr0123456789abcdef"}`, "endpoint h1/x: port"},
		{"port with a slash", "198.19.1.5", `{"ip":"198.19.1.5","host":"h1","name":"x","port":"a/b"}`, "endpoint h1/x: port"},
		{"long netns", "198.19.1.5", `{"ip":"198.19.1.5","host":"h1","name":"x","netns":"` + strings.Repeat("n", 4097) + `"}`, "endpoint h1/x: netns"},
		{"netns with a newline", "198.19.1.5", `{"ip":"198.19.1.5","host":"h1","name":"x","netns":"a\nb"}`, "endpoint h1/x: netns"},
		{"container ID without ifname", "198.19.1.5", `{"ip":"198.19.1.5","host":"h1","name":"x","container_id":"abc"}`, "endpoint h1/x: interface name"},
		{"ifname without container ID", "198.19.1.5", `{"ip":"198.19.1.5","host":"h1","name":"x","ifname":"eth0"}`, "endpoint h1/x: container ID: empty"},
		{"container ID with a slash", "198.19.1.5", `{"ip":"198.19.1.5","host":"h1","name":"x","container_id":"a/b","ifname":"eth0"}`, "endpoint h1/x: container ID"},
		{"container ID starting with a dash", "198.19.1.5", `{"ip":"198.19.1.5","host":"h1","name":"x","container_id":"-a","ifname":"eth0"}`, "endpoint h1/x: container ID"},
		{"long container ID", "198.19.1.5", `{"ip":"198.19.1.5","host":"h1","name":"x","container_id":"` + strings.Repeat("a", 238) + `","ifname":"eth0"}`, "endpoint h1/x: container ID"},
		{"ifname with a colon", "198.19.1.5", `{"ip":"198.19.1.5","host":"h1","name":"x","container_id":"abc","ifname":"eth:0"}`, "endpoint h1/x: interface name"},
		{"long ifname", "198.19.1.5", `{"ip":"198.19.1.5","host":"h1","name":"x","container_id":"abc","ifname":"eth0123456789abc"}`, "endpoint h1/x: interface name"},
		{"ifname dot-dot", "198.19.1.5", `{"ip":"198.19.1.5","host":"h1","name":"x","container_id":"abc","ifname":".."}`, "endpoint h1/x: interface name"},
		{"multicast IP", "239.0.0.1", `{"ip":"239.0.0.1","host":"h1","name":"x"}`, "IP: 239.0.0.1 is not a unicast"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := c.decodeEndpoint(kv("endpoints/"+tc.ip, tc.value))
			checkBad(t, KindEndpoint, err, tc.want)
			_, err = c.decodeRoaming(kv("roaming/"+tc.ip, tc.value))
			checkBad(t, KindRoaming, err, tc.want)
		})
	}
	// Without the cluster's settings only the record itself is checked.
	free := &Client{prefix: DefaultPrefix}
	if _, err := free.decodeEndpoint(kv("endpoints/10.1.2.3", `{"ip":"10.1.2.3","host":"h1","name":"x"}`)); err != nil {
		t.Errorf("endpoint outside an unknown cluster: %v", err)
	}
}

func TestBadRecordLogOnce(t *testing.T) {
	l := NewBadRecordLog(nil)
	c := testClient()
	_, err := c.decodeHost(kv("hosts/evil", ipv6Host))
	if !l.Log(err) || l.Log(err) {
		t.Fatal("a bad record's version must be logged exactly once")
	}
	k := kv("hosts/evil", ipv6Host)
	k.ModRevision++ // written again
	_, err = c.decodeHost(k)
	if !l.Log(err) {
		t.Fatal("a new version of a bad record must be logged")
	}
	// Memory is bounded: the oldest entries are forgotten.
	for i := range badLogSize {
		l.Log(&RecordError{Kind: KindHost, Key: "k", Revision: int64(1000 + i), Err: errors.New("x")})
	}
	if len(l.seen) != badLogSize || len(l.ring) != badLogSize {
		t.Fatalf("log remembers %d/%d entries, want %d", len(l.seen), len(l.ring), badLogSize)
	}
}

// Fuzz targets. The property for every decoder: it never panics; what it
// rejects is a RecordError of its kind; what it accepts passes Validate,
// sits at its canonical key and survives re-encoding unchanged.

func checkDecoded(t *testing.T, kind string, err error, valid func() error) bool {
	t.Helper()
	if err != nil {
		if !errors.Is(err, ErrBadRecord) || RecordKind(err) != kind {
			t.Fatalf("rejection %v is not a %s RecordError", err, kind)
		}
		return false
	}
	if err := valid(); err != nil {
		t.Fatalf("decoded record fails Validate: %v", err)
	}
	return true
}

func FuzzDecodeHost(f *testing.F) {
	f.Add("h1", []byte(`{"name":"h1","underlayIP":"198.18.0.1","underlayMAC":"02:00:00:00:00:01","podSubnet":"198.19.1.0/24","underlayIPs":[]}`))
	f.Add("h1", []byte(`{"name":"h1","underlayIP":"198.18.0.1","underlayMAC":"02:00:00:00:00:01","podSubnet":"198.19.1.0/24","underlayIPs":["198.18.1.1"]}`))
	f.Add("h1", []byte(goodHost))
	f.Add("evil", []byte(ipv6Host))
	f.Add("h1", []byte(`{"name":"h1","underlayIP":"198.18.0.1","underlayMAC":"0200.0000.0001","podSubnet":"198.19.1.0/24"}`))
	f.Add("h1", []byte(`{"name":"h1","underlayIP":"::ffff:198.18.0.1","underlayMAC":"02:00:00:00:00:01","podSubnet":"198.19.1.0/24"}`))
	f.Add("h1", []byte(`{"name":"h1","underlayIP":"198.18.0.1","underlayMAC":"02:00:00:00:00:01","podSubnet":"fd00::/64"}`))
	f.Add("h1", []byte(`null`))
	f.Add("h1", []byte(`{"name":"h1","underlayIP":"198.18.0.1","underlayMAC":"02:00:00:00:00:01","podSubnet":"198.19.1.0/24","apiAddr":"198.18.0.1:9478"}`))
	f.Add("h1", []byte(`{"name":"h1","underlayIP":"198.18.0.1","underlayMAC":"02:00:00:00:00:01","podSubnet":"198.19.1.0/24","apiAddr":"[::ffff:198.18.0.1]:9478"}`))
	c := testClient()
	f.Fuzz(func(t *testing.T, name string, value []byte) {
		h, err := c.decodeHost(&mvccpb.KeyValue{Key: []byte(c.hostKey(name)), Value: value})
		if !checkDecoded(t, KindHost, err, h.Validate) {
			return
		}
		if c.hostKey(h.Name) != c.hostKey(name) {
			t.Fatalf("host %q decoded from key %q", h.Name, name)
		}
		b, err := json.Marshal(h)
		if err != nil {
			t.Fatalf("re-encode %+v: %v", h, err)
		}
		again, err := c.decodeHost(&mvccpb.KeyValue{Key: []byte(c.hostKey(h.Name)), Value: b})
		if err != nil || !reflect.DeepEqual(again, h) {
			t.Fatalf("re-decoded %+v, %v; want %+v", again, err, h)
		}
	})
}

func FuzzDecodeAlive(f *testing.F) {
	f.Add("h1", []byte(`{"host":"h1","agentVersion":"0.1.0","since":"2024-01-02T03:04:05Z"}`))
	f.Add("h1", []byte(`{"host":"h1","since":"2024-01-02T03:04:05+01:00"}`))
	f.Add("h1", []byte(`{"host":"h1","since":"0001-01-01T00:00:00Z"}`))
	c := testClient()
	f.Fuzz(func(t *testing.T, name string, value []byte) {
		a, err := c.decodeAlive(&mvccpb.KeyValue{Key: []byte(c.aliveKey(name)), Value: value})
		if !checkDecoded(t, KindAlive, err, a.Validate) {
			return
		}
		b, err := json.Marshal(aliveJSON(a))
		if err != nil {
			t.Fatalf("re-encode %+v: %v", a, err)
		}
		again, err := c.decodeAlive(&mvccpb.KeyValue{Key: []byte(c.aliveKey(a.Host)), Value: b})
		if err != nil || again.Host != a.Host || again.AgentVersion != a.AgentVersion || !again.Since.Equal(a.Since) {
			t.Fatalf("re-decoded %+v, %v; want %+v", again, err, a)
		}
	})
}

func FuzzDecodeSubnet(f *testing.F) {
	f.Add("198.19.1.0/24", []byte("h1"))
	f.Add("fd00::/64", []byte("h1"))
	f.Add("198.19.1.1/24", []byte("h1"))
	f.Add("0.0.0.0/0", []byte("h1"))
	c := testClient()
	f.Fuzz(func(t *testing.T, seg string, value []byte) {
		key := c.prefix + "subnets/" + seg
		s, err := c.decodeSubnet(&mvccpb.KeyValue{Key: []byte(key), Value: value})
		if !checkDecoded(t, KindSubnet, err, s.Validate) {
			return
		}
		if c.subnetKey(s.Subnet) != key || s.Host != string(value) {
			t.Fatalf("claim %+v decoded from %q=%q", s, key, value)
		}
	})
}

func fuzzEndpoint(f *testing.F, kind, dir string, decode func(*mvccpb.KeyValue) (Endpoint, error)) {
	f.Add("198.19.1.5", []byte(goodEndpoint))
	f.Add("2001:db8::5", []byte(ipv6Roaming))
	f.Add("198.19.1.6", []byte(cniEndpoint))
	f.Add("198.19.1.6", []byte(`{"ip":"198.19.1.6","host":"h1","name":"x","container_id":"-a","ifname":"eth0"}`))
	f.Add("198.19.1.6", []byte(`{"ip":"198.19.1.6","host":"h1","name":"x","container_id":"a","ifname":"e\u00e9"}`))
	f.Add("198.19.1.5", []byte(`{"ip":"198.19.1.5","host":"h1","name":"x","mac":"0a-58-c6-13-01-05"}`))
	f.Add("10.1.2.3", []byte(`{"ip":"10.1.2.3","host":"h1","name":"x"}`))
	f.Add("198.19.1.5", []byte(`{"ip":"198.19.1.5","host":"h1","name":"x","port":"kr0123456789abcdef"}`))
	f.Fuzz(func(t *testing.T, seg string, value []byte) {
		key := DefaultPrefix + dir + seg
		e, err := decode(&mvccpb.KeyValue{Key: []byte(key), Value: value})
		if !checkDecoded(t, kind, err, e.Validate) {
			return
		}
		if DefaultPrefix+dir+e.IP.String() != key {
			t.Fatalf("endpoint %s decoded from key %q", e.IP, key)
		}
		b, err := json.Marshal(e)
		if err != nil {
			t.Fatalf("re-encode %+v: %v", e, err)
		}
		again, err := decode(&mvccpb.KeyValue{Key: []byte(key), Value: b})
		if err != nil || !reflect.DeepEqual(again, e) {
			t.Fatalf("re-decoded %+v, %v; want %+v", again, err, e)
		}
	})
}

func FuzzDecodeEndpoint(f *testing.F) {
	fuzzEndpoint(f, KindEndpoint, "endpoints/", testClient().decodeEndpoint)
}

func FuzzDecodeRoaming(f *testing.F) {
	fuzzEndpoint(f, KindRoaming, "roaming/", testClient().decodeRoaming)
}
