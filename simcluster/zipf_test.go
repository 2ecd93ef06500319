package simcluster

import (
	"math"
	"testing"
	"time"
)

func TestZipfShape(t *testing.T) {
	for _, c := range []struct {
		rank        int
		size, every int
	}{
		{1, 1400, 1},   // 1,400 B a tick: the busiest pair, 140 kB/s
		{2, 350, 1},    // 140k/4 × 10 ms
		{10, 64, 5},    // 14 B a tick: 64-byte datagrams every 5th tick
		{50, 64, 114},  // 0.56 B a tick
		{200, 64, 400}, // 0.035 B a tick: capped at one every 4 s

	} {
		size, every := ZipfShape(c.rank, 2, 140_000, 10*time.Millisecond)
		if size != c.size || every != c.every {
			t.Errorf("rank %d: size %d every %d, want %d every %d", c.rank, size, every, c.size, c.every)
		}
	}
}

func TestPairBytesShare(t *testing.T) {
	before := PairBytes{FastBytes: 100, FastPackets: 1, VXLANBytes: 200, VXLANPackets: 2}
	after := PairBytes{FastBytes: 1100, FastPackets: 11, VXLANBytes: 450, VXLANPackets: 5}
	d := after.Sub(before)
	// 3 VXLAN packets of 250 B on the wire carry 250 - 150 = 100 B.
	if d.TunnelBytes() != 100 || math.Abs(d.FastShare()-1000.0/1100) > 1e-12 {
		t.Fatalf("delta %+v: tunnel %d, share %v", d, d.TunnelBytes(), d.FastShare())
	}
	if !math.IsNaN((PairBytes{}).FastShare()) {
		t.Error("share of nothing is not NaN")
	}
}

func TestParseNftCounters(t *testing.T) {
	out := `{"nftables": [{"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}},
{"counter": {"family": "bridge", "name": "fast", "table": "krpb_h1_h2", "handle": 1, "packets": 12, "bytes": 3400}},
{"counter": {"family": "bridge", "name": "vxlan", "table": "krpb_h1_h2", "handle": 2, "packets": 3, "bytes": 900}},
{"counter": {"family": "bridge", "name": "probe", "table": "krpb_h1_h2", "handle": 3, "packets": 9, "bytes": 999}}]}`
	p, err := parseNftCounters(out)
	if err != nil {
		t.Fatal(err)
	}
	if p != (PairBytes{FastBytes: 3400, FastPackets: 12, VXLANBytes: 900, VXLANPackets: 3}) {
		t.Fatalf("got %+v", p)
	}
	if _, err := parseNftCounters(`{"nftables": [{"counter": {"name": "fast", "packets": 1, "bytes": 2}}]}`); err == nil {
		t.Error("no vxlan counter: no error")
	}
	if _, err := parseNftCounters("Error: No such file or directory"); err == nil {
		t.Error("not JSON: no error")
	}
}
