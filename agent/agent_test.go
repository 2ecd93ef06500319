package agent

import (
	"context"
	"errors"
	"net/netip"
	"strings"
	"testing"

	"go.etcd.io/etcd/api/v3/mvccpb"

	"github.com/keyroute/keyroute/api"
	"github.com/keyroute/keyroute/registry"
)

func TestHostPortName(t *testing.T) {
	a, b := hostPortName("web-1"), hostPortName("web-2")
	if a == b || len(a) > 15 || !strings.HasPrefix(a, "kr") || a != hostPortName("web-1") {
		t.Fatalf("port names %q %q: must be stable, distinct, kr-prefixed and fit IFNAMSIZ", a, b)
	}
}

func TestContainerMACAndLastAddr(t *testing.T) {
	if m := containerMAC(netip.MustParseAddr("198.19.1.2")); m.String() != "0a:58:c6:13:01:02" {
		t.Fatalf("MAC %s", m)
	}
	if l := lastAddr(netip.MustParsePrefix("198.19.1.0/24")); l != netip.MustParseAddr("198.19.1.255") {
		t.Fatalf("last %s", l)
	}
}

func TestNetnsPathError(t *testing.T) {
	_, err := netnsPath("no-such-netns-kr")
	if err == nil || !strings.Contains(err.Error(), `network namespace "no-such-netns-kr" not found`) || !strings.Contains(err.Error(), "ip netns add") {
		t.Fatalf("want a clear error with the fix, got %v", err)
	}
}

func TestParseIPv4(t *testing.T) {
	pkt := make([]byte, 14+20)
	pkt[12], pkt[13] = 0x08, 0x00
	pkt[14] = 0x45
	pkt[15] = 10 << 2
	copy(pkt[26:], []byte{198, 19, 0, 2, 198, 19, 1, 2})
	src, dst, dscp, err := parseIPv4(pkt)
	if err != nil || src.String() != "198.19.0.2" || dst.String() != "198.19.1.2" || dscp != 10 {
		t.Fatalf("got %s %s %d %v", src, dst, dscp, err)
	}
	for _, bad := range [][]byte{nil, pkt[:20], append([]byte{}, pkt[:12]...)} {
		if _, _, _, err := parseIPv4(bad); err == nil {
			t.Errorf("%d-byte frame accepted", len(bad))
		}
	}
	arp := append([]byte{}, pkt...)
	arp[12], arp[13] = 0x08, 0x06
	if _, _, _, err := parseIPv4(arp); err == nil {
		t.Error("ARP frame accepted as IPv4")
	}
}

// keyroute_etcd_bad_records_total has a kind label: every kind shows from
// the start, and a skipped record moves its own kind's count.
func TestBadRecordMetricByKind(t *testing.T) {
	m := newMetrics()
	kv := &mvccpb.KeyValue{Key: []byte("/keyroute/hosts/evil"), ModRevision: 3}
	m.badRecord(string(kv.Key), registry.NewRecordError(registry.KindHost, kv, errors.New("underlay IP: 2001:db8::1 is not IPv4")))
	m.badRecord(string(kv.Key), registry.NewRecordError(registry.KindRoaming, kv, errors.New("x")))
	m.badRecord(string(kv.Key), registry.NewRecordError(registry.KindRoaming, kv, errors.New("x")))
	mfs, err := m.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, mf := range mfs {
		if mf.GetName() != "keyroute_etcd_bad_records_total" {
			continue
		}
		for _, s := range mf.GetMetric() {
			got[s.GetLabel()[0].GetValue()] = s.GetCounter().GetValue()
		}
	}
	if len(got) != len(registry.RecordKinds) || got["host"] != 1 || got["roaming"] != 2 || got["key"] != 0 {
		t.Fatalf("keyroute_etcd_bad_records_total by kind = %v", got)
	}
}

// containerMAC cannot panic, whatever address reaches it.
func TestContainerMACNotIPv4(t *testing.T) {
	if m := containerMAC(netip.MustParseAddr("2001:db8::c0a8:102")); len(m) != 6 {
		t.Fatalf("MAC %s", m)
	}
}

// A pre-made port's saved state comes back from OVSDB, which any root user
// can edit: bad values are refused, good ones round-trip.
func TestLinkStateDecode(t *testing.T) {
	s := linkState{MTU: 1500, Up: true, Addrs: []string{"192.0.2.1/24", "2001:db8::1/64"}}
	got, err := decodeLinkState(s.encode())
	if err != nil || got.MTU != 1500 || !got.Up || len(got.Addrs) != 2 || got.Addrs[1] != "2001:db8::1/64" {
		t.Fatalf("round trip: %+v, %v", got, err)
	}
	for _, bad := range []string{"", "{", `{"mtu":0}`, `{"mtu":1500,"addrs":["nonsense"]}`, `{"mtu":99999999}`} {
		if s, err := decodeLinkState(bad); err == nil {
			t.Errorf("decodeLinkState(%q) = %+v, want an error", bad, s)
		}
	}
}

func TestEndpointMAC(t *testing.T) {
	for _, ok := range []string{"52:54:00:12:34:56", "02:AA:bb:cc:dd:ee"} {
		if _, err := parseEndpointMAC(ok); err != nil {
			t.Errorf("%s: %v", ok, err)
		}
	}
	for _, bad := range []string{"", "52:54:00:12:34", "01:00:5e:00:00:01", "00:00:00:00:00:00", "ff:ff:ff:ff:ff:ff", "00:00:00:00:fe:80:00:00:00:00:00:00:00:00:00:01"} {
		if _, err := parseEndpointMAC(bad); !errors.Is(err, ErrBadRequest) {
			t.Errorf("parseEndpointMAC(%q) = %v, want a bad request", bad, err)
		}
	}
	a, err := randomMAC()
	if err != nil {
		t.Fatal(err)
	}
	b, _ := randomMAC()
	if a[0]&1 != 0 || a[0]&2 == 0 || a.String() == b.String() {
		t.Errorf("random MACs %s %s: want distinct locally administered unicast", a, b)
	}
}

// An attach request names a namespace or a port, never both or neither.
func TestAttachRequestShape(t *testing.T) {
	a := &Agent{}
	for _, tc := range []struct {
		req  api.AttachRequest
		want string
	}{
		{api.AttachRequest{Name: "x"}, "needs --netns"},
		{api.AttachRequest{Name: "x", NetNS: "c1", Port: "tap0"}, "not both"},
		{api.AttachRequest{Name: "x", NetNS: "keyroute-no-such-ns"}, "not found"},
	} {
		_, err := a.attachFromAPI(context.Background(), tc.req)
		if !errors.Is(err, ErrBadRequest) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: %v, want a bad request saying %q", tc.req, err, tc.want)
		}
	}
}
