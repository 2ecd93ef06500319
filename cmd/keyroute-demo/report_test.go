package main

import (
	"testing"

	"github.com/keyroute/keyroute/api"
)

func TestParseHosts(t *testing.T) {
	hs, err := parseHosts([]byte(`[{"name":"h2","ip":"198.18.0.2","pod_subnet":"198.19.2.0/24","datapath":"netdev"},
		{"name":"h1","ip":"198.18.0.1","mac":"02:00:00:00:00:01","pod_subnet":"198.19.1.0/24","datapath":"netdev"}]`))
	if err != nil {
		t.Fatal(err)
	}
	want := api.Host{Name: "h1", IP: "198.18.0.1", MAC: "02:00:00:00:00:01", PodSubnet: "198.19.1.0/24", Datapath: "netdev"}
	if len(hs) != 2 || hs[0] != want || hs[1].Name != "h2" {
		t.Errorf("hosts = %+v", hs)
	}
	for _, bad := range []string{``, `42`, `{"hosts":[]}`} {
		if hs, err := parseHosts([]byte(bad)); err == nil {
			t.Errorf("parseHosts(%q) = %+v, want an error", bad, hs)
		}
	}
}

func TestParseFlows(t *testing.T) {
	rows, err := parseFlows([]byte(`[
		{"bridge":"br-phy","table":0,"table_name":"Underlay","packets":4},
		{"bridge":"br-int","table":5,"table_name":"Forward","packets":10},
		{"bridge":"br-int","table":0,"table_name":"Classify","packets":7},
		{"bridge":"br-int","table":0,"table_name":"Classify","packets":3},
		{"bridge":"br-int","table":9,"table_name":"Deliver"}]`))
	if err != nil {
		t.Fatal(err)
	}
	want := []tableRow{
		{Bridge: "br-int", Table: 0, TableName: "Classify", Flows: 2, Packets: 10},
		{Bridge: "br-int", Table: 5, TableName: "Forward", Flows: 1, Packets: 10},
		{Bridge: "br-int", Table: 9, TableName: "Deliver", Flows: 1, Packets: 0},
		{Bridge: "br-phy", Table: 0, TableName: "Underlay", Flows: 1, Packets: 4},
	}
	if len(rows) != len(want) {
		t.Fatalf("rows = %+v", rows)
	}
	for i := range want {
		if rows[i] != want[i] {
			t.Errorf("row %d = %+v, want %+v", i, rows[i], want[i])
		}
	}
	for _, bad := range []string{`nope`, `{"flows":[]}`, `[{"table":"Forward"}]`} {
		if rows, err := parseFlows([]byte(bad)); err == nil {
			t.Errorf("parseFlows(%q) = %+v, want an error", bad, rows)
		}
	}
}
