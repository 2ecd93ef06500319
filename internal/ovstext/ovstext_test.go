package ovstext

import (
	"slices"
	"testing"
)

func TestSplitTop(t *testing.T) {
	for _, c := range []struct {
		in   string
		want []string
	}{
		{"eth(src=a,dst=b),ipv4(src=c,tos=0/0xfc),2", []string{"eth(src=a,dst=b)", "ipv4(src=c,tos=0/0xfc)", "2"}},
		{"set(ipv4(src=1.2.3.4,dst=5.6.7.8)), tnl_push(header(vxlan(flags=0x8)),out_port(2)),3", []string{"set(ipv4(src=1.2.3.4,dst=5.6.7.8))", "tnl_push(header(vxlan(flags=0x8)),out_port(2))", "3"}},
		{"drop", []string{"drop"}},
		{"", []string{""}},
	} {
		if got := SplitTop(c.in); !slices.Equal(got, c.want) {
			t.Errorf("SplitTop(%q) = %q, want %q", c.in, got, c.want)
		}
	}
}
