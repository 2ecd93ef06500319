package controller

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keyroute/keyroute/openflow"
)

// benchFlows returns n distinct flows in table 1, one per destination
// address in 198.18.0.0/15, as the agent's per-pair flows look.
func benchFlows(n int) []*openflow.FlowMod {
	base := netip.MustParseAddr("198.18.0.0").As4()
	first := uint32(base[0])<<24 | uint32(base[1])<<16
	flows := make([]*openflow.FlowMod, n)
	for i := range flows {
		a := first + uint32(i)
		dst := netip.AddrFrom4([4]byte{byte(a >> 24), byte(a >> 16), byte(a >> 8), byte(a)})
		flows[i] = &openflow.FlowMod{Table: 1, Priority: 100, Cookie: uint64(i),
			Match:        match(openflow.MatchEthType(0x0800), openflow.MatchIPv4Dst(dst), openflow.MatchIPDSCP(0)),
			Instructions: actions(openflow.NewSetField(openflow.MatchIPDSCP(uint8(1+i%62))), openflow.OutputPort(1))}
	}
	return flows
}

func (e *ovsEnv) flowCount(tb testing.TB) int {
	out := e.ofctl("dump-aggregate", "br0")
	m := regexp.MustCompile(`flow_count=(\d+)`).FindStringSubmatch(out)
	if m == nil {
		tb.Fatalf("dump-aggregate: %q", out)
	}
	n, _ := strconv.Atoi(m[1])
	return n
}

// BenchmarkInstall compares Install (pipelined flow mods ending with a
// barrier) with `ovs-ofctl add-flows` of the same flows on the same bridge
// (which waits for a barrier after every flow mod), and, for reference,
// `ovs-ofctl --bundle add-flows` (one bundle). Metrics: ns/flow for each
// and ofctl/keyroute (how many times faster Install is than add-flows).
// Run with -benchtime=1x: one iteration is a full install.
func BenchmarkInstall(b *testing.B) {
	for _, n := range []int{10_000, 100_000} {
		b.Run(fmt.Sprintf("flows=%d", n), func(b *testing.B) {
			e := newOVSEnv(b, testOptions())
			flows := benchFlows(n)
			var text strings.Builder
			for _, f := range flows {
				text.WriteString(f.String())
				text.WriteByte('\n')
			}
			file := filepath.Join(b.TempDir(), "flows.txt")
			if err := os.WriteFile(file, []byte(text.String()), 0o644); err != nil {
				b.Fatal(err)
			}
			ctx := context.Background()
			var ours, theirs, theirsBundle time.Duration
			b.ResetTimer()
			for range b.N {
				b.StopTimer()
				e.ofctl("del-flows", "br0")
				b.StartTimer()
				start := time.Now()
				if err := e.sw.Install(ctx, flows); err != nil {
					b.Fatal(err)
				}
				ours += time.Since(start)
				b.StopTimer()
				if got := e.flowCount(b); got != n {
					b.Fatalf("Install left %d flows, want %d", got, n)
				}
				e.ofctl("del-flows", "br0")
				start = time.Now()
				e.ofctl("add-flows", "br0", file)
				theirs += time.Since(start)
				if got := e.flowCount(b); got != n {
					b.Fatalf("ovs-ofctl add-flows left %d flows, want %d", got, n)
				}
				e.ofctl("del-flows", "br0")
				start = time.Now()
				e.ofctl("--bundle", "add-flows", "br0", file)
				theirsBundle += time.Since(start)
				if got := e.flowCount(b); got != n {
					b.Fatalf("ovs-ofctl --bundle add-flows left %d flows, want %d", got, n)
				}
				b.StartTimer()
			}
			total := float64(b.N * n)
			b.ReportMetric(float64(ours.Nanoseconds())/total, "ns/flow")
			b.ReportMetric(float64(theirs.Nanoseconds())/total, "ofctl-ns/flow")
			b.ReportMetric(theirs.Seconds()/ours.Seconds(), "ofctl/keyroute")
			b.ReportMetric(float64(theirsBundle.Nanoseconds())/total, "ofctl-bundle-ns/flow")
		})
	}
}

// BenchmarkPacketInOVS measures packet-ins delivered to OnPacketIn per
// second from a live ovs-vswitchd: packet-outs into a table whose flow
// sends every packet back to the controller.
func BenchmarkPacketInOVS(b *testing.B) {
	opts := testOptions()
	opts.QueueLen = 1 << 16
	var handled atomic.Int64
	opts.OnPacketIn = func(*openflow.PacketIn2) { handled.Add(1) }
	e := newOVSEnv(b, opts)
	a, c := e.addHost("a", 1), e.addHost("b", 2)
	ctx := context.Background()
	punt := &openflow.FlowMod{Priority: 100, Match: match(openflow.MatchInPort(openflow.PortController)), Instructions: actions(&openflow.Controller{})}
	if err := e.sw.Install(ctx, []*openflow.FlowMod{punt}); err != nil {
		b.Fatal(err)
	}
	po := &openflow.PacketOut{BufferID: openflow.NoBuffer, InPort: openflow.PortController,
		Actions: []openflow.Action{openflow.OutputPort(openflow.PortTable)}, Data: icmpEcho(a, c, b, 1)}
	const burst = 10_000
	msgs := make([]openflow.Message, burst)
	for i := range msgs {
		msgs[i] = po
	}
	var elapsed time.Duration
	b.ResetTimer()
	for range b.N {
		start := time.Now()
		if err := e.sw.Apply(ctx, msgs...); err != nil {
			b.Fatal(err)
		}
		// The barrier reply follows every packet-in the burst caused.
		st := e.sw.Stats()
		want := int64(st.PacketIns - st.PacketInsDropped)
		for handled.Load() < want {
			time.Sleep(100 * time.Microsecond)
		}
		elapsed += time.Since(start)
	}
	st := e.sw.Stats()
	b.ReportMetric(float64(handled.Load())/elapsed.Seconds(), "pktin/s")
	b.ReportMetric(float64(st.PacketIns)/float64(b.N*burst), "pktin/pktout")
	b.ReportMetric(float64(st.PacketInsDropped), "dropped")
}

// BenchmarkPacketInDecode measures the controller alone: PACKET_IN2s from
// an in-memory switch, decoded and delivered to OnPacketIn.
func BenchmarkPacketInDecode(b *testing.B) {
	opts := testOptions()
	opts.QueueLen = 1 << 16
	var handled atomic.Int64
	opts.OnPacketIn = func(*openflow.PacketIn2) { handled.Add(1) }
	h := startHarness(b, opts, nil)
	f := h.nextFake()
	h.waitConnected()
	pin := &openflow.PacketIn2{Packet: make([]byte, 98), Cookie: 1, Table: 2, Reason: openflow.PacketInReasonAction,
		Userdata: []byte("krc"), Metadata: match(openflow.MatchInPort(1))}
	one, err := openflow.Marshal(pin, 0)
	if err != nil {
		b.Fatal(err)
	}
	const batch = 1000
	buf := make([]byte, 0, batch*len(one))
	for range batch {
		buf = append(buf, one...)
	}
	b.ResetTimer()
	start := time.Now()
	for range b.N {
		if err := f.sendRaw(buf); err != nil {
			b.Fatal(err)
		}
	}
	for handled.Load() < int64(b.N*batch)-int64(h.sw.Stats().PacketInsDropped) {
		time.Sleep(50 * time.Microsecond)
	}
	elapsed := time.Since(start)
	b.ReportMetric(float64(handled.Load())/elapsed.Seconds(), "pktin/s")
}
