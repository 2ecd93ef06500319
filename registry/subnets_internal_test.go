package registry

import (
	"net/netip"
	"testing"
)

func TestNthSubnetAndLastAddr(t *testing.T) {
	for _, tc := range []struct {
		cluster string
		bits    int
		i       uint64
		want    string
		last    string
	}{
		{"198.19.0.0/16", 24, 0, "198.19.0.0/24", "198.19.0.255"},
		{"198.19.0.0/16", 24, 255, "198.19.255.0/24", "198.19.255.255"},
		{"198.18.0.0/15", 26, 1029, "198.19.1.64/26", "198.19.1.127"},
		{"198.19.0.0/28", 30, 3, "198.19.0.12/30", "198.19.0.15"},
		{"fd00::/48", 64, 0x1ff, "fd00:0:0:1ff::/64", "fd00::1ff:ffff:ffff:ffff:ffff"},
		{"fd00::/32", 64, 0xabcdef12, "fd00:0:abcd:ef12::/64", "fd00:0:abcd:ef12:ffff:ffff:ffff:ffff"},
	} {
		got := nthSubnet(netip.MustParsePrefix(tc.cluster), tc.bits, tc.i)
		if got.String() != tc.want {
			t.Errorf("subnet %d of /%d in %s = %s, want %s", tc.i, tc.bits, tc.cluster, got, tc.want)
		}
		if l := lastAddr(got); l.String() != tc.last {
			t.Errorf("last address of %s = %s, want %s", got, l, tc.last)
		}
	}
}

func TestValidateName(t *testing.T) {
	for _, ok := range []string{"h1", "node-7.example.com", "UPPER_case"} {
		if err := ValidateName(ok); err != nil {
			t.Errorf("ValidateName(%q) = %v", ok, err)
		}
	}
	for _, bad := range []string{"", "a/b", "a b", "tab\t", "nl\n", string(make([]byte, 254))} {
		if err := ValidateName(bad); err == nil {
			t.Errorf("ValidateName(%q) accepted", bad)
		}
	}
}
