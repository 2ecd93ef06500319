package main

import (
	"encoding/json"
	"fmt"
	"sort"

	"github.com/keyroute/keyroute/api"
)

// parseHosts reads `keyroutectl hosts -o json`, sorted by name.
func parseHosts(b []byte) ([]api.Host, error) {
	var hs []api.Host
	if err := json.Unmarshal(b, &hs); err != nil {
		return nil, fmt.Errorf("hosts JSON: %w (%.200q)", err, b)
	}
	sort.Slice(hs, func(i, j int) bool { return hs[i].Name < hs[j].Name })
	return hs, nil
}

// tableRow sums one bridge table's flows.
type tableRow struct {
	Bridge    string
	Table     uint8
	TableName string
	Flows     int
	Packets   uint64
}

// parseFlows reads `keyroutectl flows -o json` and sums flows and packets
// per bridge and table: br-int first (it holds the pipeline), tables in
// pipeline order.
func parseFlows(b []byte) ([]tableRow, error) {
	var fs []api.Flow
	if err := json.Unmarshal(b, &fs); err != nil {
		return nil, fmt.Errorf("flows JSON: %w (%.200q)", err, b)
	}
	type key struct {
		bridge string
		table  uint8
	}
	byKey := map[key]*tableRow{}
	var rows []*tableRow
	for _, f := range fs {
		k := key{f.Bridge, f.Table}
		r := byKey[k]
		if r == nil {
			r = &tableRow{Bridge: f.Bridge, Table: f.Table, TableName: f.TableName}
			byKey[k] = r
			rows = append(rows, r)
		}
		r.Flows++
		r.Packets += f.Packets
	}
	sort.Slice(rows, func(i, j int) bool {
		a, b := rows[i], rows[j]
		if a.Bridge != b.Bridge {
			return a.Bridge < b.Bridge // "br-int" < "br-phy"
		}
		return a.Table < b.Table
	})
	out := make([]tableRow, len(rows))
	for i, r := range rows {
		out[i] = *r
	}
	return out, nil
}
