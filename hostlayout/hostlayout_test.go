package hostlayout

import (
	"strings"
	"testing"
)

func TestPatchNames(t *testing.T) {
	// The defaults keep the names existing hosts have.
	if d := Default(); d.IntegrationPatch() != "patch-phy" || d.PhysicalPatch() != "patch-int" {
		t.Errorf("default patch ports %s, %s; want patch-phy, patch-int", d.IntegrationPatch(), d.PhysicalPatch())
	}
	b := Bridges{Integration: "kr-int", Physical: "kr-phy"}
	if b.IntegrationPatch() != "patch-kr-phy" || b.PhysicalPatch() != "patch-kr-int" {
		t.Errorf("patch ports %s, %s", b.IntegrationPatch(), b.PhysicalPatch())
	}
	if b.GatewayOutput() != "kr-int:3" || b.UplinkOutput() != "kr-phy:1" {
		t.Errorf("outputs %s, %s", b.GatewayOutput(), b.UplinkOutput())
	}
	if (Bridges{}).OrDefault() != Default() || b.OrDefault() != b {
		t.Error("OrDefault")
	}
}

func TestValidate(t *testing.T) {
	for _, ok := range []Bridges{Default(), {"kr-int", "kr-phy"}, {"a", "b"}, {"int_0.x", "phy-15-chars-ok"}} {
		if err := ok.Validate(); err != nil {
			t.Errorf("%+v: %v", ok, err)
		}
	}
	for _, c := range []struct {
		b    Bridges
		want string
	}{
		{Bridges{"", "br-phy"}, "integration bridge: empty"},
		{Bridges{"br-int", "a-name-of-16-chr"}, "longer than 15"},
		{Bridges{"br int", "br-phy"}, "letters, digits"},
		{Bridges{"br/int", "br-phy"}, "letters, digits"},
		{Bridges{"..", "br-phy"}, "not a network device"},
		{Bridges{"br-x", "br-x"}, "both"},
		{Bridges{"kr-gw", "br-phy"}, "port kr-gw"},
		{Bridges{"br-int", "vxlan0"}, "port vxlan0"},
		{Bridges{"br-int", "patch-int"}, "port patch-int"},
		{Bridges{"br-int", "int"}, "both patch ports"},
	} {
		err := c.b.Validate()
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: %v, want an error with %q", c.b, err, c.want)
		}
	}
}
