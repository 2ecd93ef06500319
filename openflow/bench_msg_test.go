package openflow

import "testing"

func BenchmarkDecodePacketIn2(b *testing.B) {
	raw := msgReadHex(b, "packet_in2")[0]
	b.ReportAllocs()
	b.SetBytes(int64(len(raw)))
	for b.Loop() {
		if _, _, err := Decode(raw); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkEncodePacketOut(b *testing.B) {
	po := &PacketOut{BufferID: NoBuffer, InPort: PortController, Actions: []Action{msgRawOutput(2)}, Data: msgUDPFrame()}
	buf := make([]byte, 0, 256)
	b.ReportAllocs()
	for b.Loop() {
		var err error
		if buf, err = AppendMessage(buf[:0], po, 1); err != nil {
			b.Fatal(err)
		}
	}
}
