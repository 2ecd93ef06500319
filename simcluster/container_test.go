package simcluster

import (
	"context"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/keyroute/keyroute/internal/testenv"
	"github.com/keyroute/keyroute/simhost"
)

func TestParseAttach(t *testing.T) {
	c, err := parseAttach(`{"name":"a1","ip":"198.19.1.2","mac":"02:00:00:00:01:02","host":"h1","port":"kr-a1"}`)
	if err != nil {
		t.Fatal(err)
	}
	if c.Name != "a1" || c.IP != netip.MustParseAddr("198.19.1.2") || c.MAC.String() != "02:00:00:00:01:02" || c.Port != "kr-a1" {
		t.Errorf("parsed %+v", c)
	}
	for _, bad := range []string{``, `not json`, `{"name":"x","ip":"nope"}`, `{"name":"x","ip":"198.19.1.2/24"}`,
		`{"name":"x","ip":"198.19.1.2","mac":"zz"}`} {
		if c, err := parseAttach(bad); err == nil {
			t.Errorf("parseAttach(%q) = %+v, want an error", bad, c)
		}
	}
}

func TestParsePing(t *testing.T) {
	out := "PING 198.19.2.2 (198.19.2.2) 56(84) bytes of data.\n\n--- 198.19.2.2 ping statistics ---\n" +
		"5 packets transmitted, 4 received, 20% packet loss, time 805ms\n"
	st, err := ParsePing(out)
	if err != nil || st != (PingStats{Sent: 5, Received: 4}) {
		t.Errorf("parsePing = %+v, %v; want 5 sent, 4 received", st, err)
	}
	out = "4 packets transmitted, 4 received, +3 duplicates, 0% packet loss, time 941ms\n"
	if st, err := ParsePing(out); err != nil || st != (PingStats{Sent: 4, Received: 4, Duplicates: 3}) {
		t.Errorf("parsePing with duplicates = %+v, %v", st, err)
	}
	if _, err := ParsePing("ping: connect: Network is unreachable"); err == nil {
		t.Error("parsePing without statistics succeeded")
	}
}

func TestParseIperf(t *testing.T) {
	tcp := `{"start":{},"end":{"sum_sent":{"bytes":350000000,"retransmits":3},
		"sum_received":{"bytes":349000000,"bits_per_second":931000000.5}}}`
	r, err := ParseIperf([]byte(tcp))
	if err != nil || r.Gbps < 0.930 || r.Gbps > 0.932 || r.Retransmits != 3 || r.Bytes != 349000000 {
		t.Errorf("tcp: %+v, %v", r, err)
	}
	udp := `{"end":{"sum":{"bytes":12500000,"bits_per_second":100000000}}}`
	if r, err := ParseIperf([]byte(udp)); err != nil || r.Gbps != 0.1 {
		t.Errorf("udp: %+v, %v", r, err)
	}
	for _, bad := range []string{
		`{"start":{},"end":{},"error":"unable to connect to server: Connection refused"}`,
		`{"end":{"sum_received":{"bytes":0}}}`,
		``,
	} {
		if r, err := ParseIperf([]byte(bad)); err == nil {
			t.Errorf("ParseIperf(%q) = %+v, want an error", bad, r)
		}
	}
}

// The traffic helpers against two hand-wired namespaces (no agent needed):
// ping, iperf3 server/client with its report parsed, UDP sockets inside
// the containers, and a capture with a packet count.
func TestContainerTrafficHelpers(t *testing.T) {
	requireSim(t)
	testenv.Require(t, "iperf3")
	cl, err := NewCluster(context.Background(), Options{Hosts: 1, NoAgents: true, Logger: TestLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cl.Close() })
	var cs []*Container
	for i, name := range []string{"x1", "x2"} {
		ns, err := simhost.NewNetNS(cl.Prefix + "c-" + name)
		if err != nil {
			t.Fatal(err)
		}
		cs = append(cs, &Container{Name: name, Host: cl.Host(1), NS: ns, IP: netip.AddrFrom4([4]byte{198, 19, 9, byte(i + 1)})})
	}
	x1, x2 := cs[0], cs[1]
	if err := simhost.AddVeth("eth0", x1.NS.Name, "eth0", x2.NS.Name); err != nil {
		t.Fatal(err)
	}
	for _, c := range cs {
		if _, err := c.Exec("ip", "addr", "add", c.IP.String()+"/24", "dev", "eth0"); err != nil {
			t.Fatal(err)
		}
	}

	if err := x1.PingUntil(x2.IP.String(), 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := x1.Ping(x2.IP.String(), 2); err != nil {
		t.Fatal(err)
	}
	if err := x1.Ping("198.19.9.99", 1); err == nil || !strings.Contains(err.Error(), "0 of 1 answered") {
		t.Errorf("ping to nobody: %v; want 0 of 1 answered", err)
	}
	if err := x1.Ping(x2.IP.String(), 0); err == nil {
		t.Error("ping with count 0 succeeded")
	}

	pkts, err := cl.CaptureDuring(x2.NS, "eth0", "icmp", func() error { return x1.Ping(x2.IP.String(), 2) })
	if err != nil || len(pkts) != 4 {
		t.Errorf("capture during 2 pings: %d packets (%v), want 4: %v", len(pkts), err, pkts)
	}
	c, err := cl.StartCapture(x2.NS, "eth0", "icmp", 2)
	if err != nil {
		t.Fatal(err)
	}
	pkts, err = c.Wait(time.Second) // nothing is pinging
	if err == nil || len(pkts) != 0 {
		t.Errorf("idle capture for 2 packets: %d packets, err %v; want 0 and an error", len(pkts), err)
	}

	srv, err := x2.StartIperfServer(5299)
	if err != nil {
		t.Fatal(err)
	}
	r, err := x1.Iperf(x2.IP.String(), 5299, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if r.Gbps <= 0 || r.Bytes <= 0 || len(r.JSON) == 0 {
		t.Errorf("iperf3 result %+v", r)
	}
	t.Logf("iperf3 over a plain veth: %.2f Gb/s", r.Gbps)
	if _, err := x1.Iperf(x2.IP.String(), 5298, time.Second); err == nil {
		t.Error("iperf3 to a port without a server succeeded")
	}
	if err := srv.Stop(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	if simhost.PIDAlive(srv.PID()) {
		t.Error("iperf3 server alive after Stop")
	}

	ln, err := x2.ListenUDP(9999)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	conn, err := x1.DialUDP(netip.AddrPortFrom(x2.IP, 9999).String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := conn.Write([]byte("to x2")); err != nil {
		t.Fatal(err)
	}
	ln.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 64)
	n, from, err := ln.ReadFrom(buf)
	if err != nil || string(buf[:n]) != "to x2" || !strings.HasPrefix(from.String(), x1.IP.String()+":") {
		t.Errorf("x2 read %q from %v (%v); want \"to x2\" from %s", buf[:n], from, err, x1.IP)
	}
}

func TestParseIperfBench(t *testing.T) {
	r, err := ParseIperf([]byte(`{"end":{"sum_sent":{"retransmits":7},"sum_received":{"bytes":1000000000,"seconds":8,"bits_per_second":1e9},
		"cpu_utilization_percent":{"host_total":50}}}`))
	if err != nil {
		t.Fatal(err)
	}
	if r.Gbps != 1 || r.Retransmits != 7 || r.Bytes != 1e9 || r.ClientCPUSec != 4 {
		t.Fatalf("got %+v", r)
	}
	if _, err := ParseIperf([]byte(`{"error":"unable to connect to server: Connection timed out"}`)); err == nil ||
		!strings.Contains(err.Error(), "unable to connect") {
		t.Errorf("iperf3 error report: got %v", err)
	}
	if _, err := ParseIperf([]byte("iperf3: garbage")); err == nil {
		t.Error("non-JSON: no error")
	}
}
