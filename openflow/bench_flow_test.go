package openflow

import "testing"

// The benchmarks use keyroute's egress cache entry (rewriteFlow): match
// in_port, ip, nw_src, nw_dst, ip_dscp; set_field x5 and output.

func BenchmarkEncodeFlowMod(b *testing.B) {
	fm := rewriteFlow()
	buf := make([]byte, 0, 512)
	b.ReportAllocs()
	for b.Loop() {
		var err error
		if buf, err = AppendMessage(buf[:0], fm, 1); err != nil {
			b.Fatal(err)
		}
	}
	b.SetBytes(int64(len(buf)))
}

func BenchmarkDecodeFlowMod(b *testing.B) {
	raw, err := Marshal(rewriteFlow(), 1)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.SetBytes(int64(len(raw)))
	for b.Loop() {
		if _, _, err := Decode(raw); err != nil {
			b.Fatal(err)
		}
	}
}
