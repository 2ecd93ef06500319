package ovsdb

import "testing"

func TestForeignErrorText(t *testing.T) {
	e := &ForeignError{Kind: "bridge", Name: "br-int", Owner: "keyroute",
		ExternalIDs: map[string]string{"owner": "neutron", "note": "a b\"c", "": "x"}}
	want := `bridge br-int exists and is not keyroute's (no external_ids:keyroute-owner=keyroute); its external_ids: {""=x, note="a b\"c", owner=neutron}`
	if e.Error() != want {
		t.Errorf("got  %s\nwant %s", e.Error(), want)
	}
	p := &ForeignError{Kind: "port", Name: "vxlan0", Bridge: "br-tun", Owner: "keyroute"}
	if want := "port vxlan0 on bridge br-tun exists and is not keyroute's (no external_ids:keyroute-owner=keyroute); its external_ids: {}"; p.Error() != want {
		t.Errorf("got  %s\nwant %s", p.Error(), want)
	}
}
