package e2e

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/keyroute/keyroute/simcluster"
)

// Containers are kept off their host's control plane and cannot inject
// VXLAN into a peer's tunnel (DESIGN.md "As built"; flows.GuardFlows).
// One cluster, in the agents' default mode, for both.
func TestIsolateControlPlane(t *testing.T) {
	cl := testCluster(t, simcluster.Options{Hosts: 2})
	h1, h2 := cl.Host(1), cl.Host(2)
	attacker, err := cl.Attach(1, "attacker", "")
	if err != nil {
		t.Fatal(err)
	}
	target, err := cl.Attach(2, "target", "")
	if err != nil {
		t.Fatal(err)
	}
	if err := attacker.PingUntil(target.IP.String(), 15*time.Second); err != nil {
		t.Fatalf("attacker -> target: %v", err)
	}

	t.Run("EtcdPortFromContainer", func(t *testing.T) {
		before := rwMetric(rwMetrics(t, h1), "keyroute_control_plane_drops_total", `proto="tcp"`, `port="2379"`)
		// The host itself still reaches its etcd.
		if err := cl.DialEtcd(context.Background(), h1.NS); err != nil {
			t.Fatalf("h1 itself: %v", err)
		}
		gw := gatewayOf(t, h1).String()
		for _, dst := range []string{h1.IP.String(), gw} {
			addr := net.JoinHostPort(dst, "2379")
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			start := time.Now()
			c, err := attacker.NS.DialContext(ctx, "tcp4", addr)
			cancel()
			if err == nil {
				c.Close()
				t.Errorf("container on h1 connected to %s", addr)
				continue
			}
			t.Logf("container on h1 -> %s: %v after %s", addr, err, time.Since(start).Round(time.Millisecond))
		}
		after := rwMetric(rwMetrics(t, h1), "keyroute_control_plane_drops_total", `proto="tcp"`, `port="2379"`)
		if after <= before {
			t.Errorf("keyroute_control_plane_drops_total{proto=tcp,port=2379} on h1: %v -> %v, want it to move", before, after)
		}
		// The container still has its host as gateway for everything else.
		if err := attacker.Ping(gw, 1); err != nil {
			t.Errorf("attacker -> its gateway %s: %v", gw, err)
		}
	})

	t.Run("VXLANInjection", func(t *testing.T) {
		// The target listens; the attacker sends a VXLAN packet to h2's
		// tunnel, from its own socket (h1 masquerades it to h1's IP),
		// carrying a UDP datagram to the target with a spoofed source.
		const port = 7411
		ln, err := target.ListenUDP(port)
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		got := make(chan string, 16)
		go func() {
			buf := make([]byte, 2048)
			for {
				ln.SetReadDeadline(time.Now().Add(30 * time.Second))
				n, from, err := ln.ReadFrom(buf)
				if err != nil {
					close(got)
					return
				}
				got <- fmt.Sprintf("%q from %s", buf[:n], from)
			}
		}()
		spoofed := netip.MustParseAddr("198.19.200.7") // no container's
		inject := func(tag string) {
			t.Helper()
			c, err := attacker.DialUDP(net.JoinHostPort(h2.IP.String(), fmt.Sprint(cl.VXLANPort)))
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			pkt := vxlanPacket(cl.VNI, spoofed, target.IP, 5555, port, []byte(tag))
			for i := 0; i < 5; i++ {
				if _, err := c.Write(pkt); err != nil {
					t.Logf("send: %v", err)
				}
				time.Sleep(50 * time.Millisecond)
			}
		}
		// Positive check of the listener: a genuine datagram arrives.
		if err := sendUDP(attacker, target.IP, port, "genuine"); err != nil {
			t.Fatal(err)
		}
		if m := waitTag(got, "genuine", 5*time.Second); m == "" {
			t.Fatal("the target never received a genuine datagram: the listener proves nothing")
		}

		before := rwMetric(rwMetrics(t, h1), "keyroute_control_plane_drops_total", `proto="udp"`, fmt.Sprintf(`port="%d"`, cl.VXLANPort))
		inject("injected-guarded")
		if m := waitTag(got, "injected-guarded", 3*time.Second); m != "" {
			t.Errorf("the target received an injected VXLAN packet: %s", m)
		}
		after := rwMetric(rwMetrics(t, h1), "keyroute_control_plane_drops_total", `proto="udp"`, fmt.Sprintf(`port="%d"`, cl.VXLANPort))
		if after < before+5 {
			t.Errorf("keyroute_control_plane_drops_total{proto=udp} on h1: %v -> %v, want +5", before, after)
		}

		// The packet is a working injection: without h1's guard flows for
		// the VXLAN port it does reach the target past h2's TunnelIn (a
		// flow set that, like h2's, only checks the tunnel's source).
		if _, err := h1.OVS.Ofctl("del-flows", "br-int", "cookie=0x0c00000000000000/0xff00000000000000,table=1,udp"); err != nil {
			t.Fatal(err)
		}
		inject("injected-unguarded")
		if m := waitTag(got, "injected-unguarded", 5*time.Second); m == "" {
			t.Errorf("without the guard the injection did not arrive either: the guarded check proves nothing")
		} else {
			t.Logf("without the guard the target received: %s", m)
		}
	})
}

func sendUDP(from *simcluster.Container, to netip.Addr, port int, tag string) error {
	c, err := from.DialUDP(net.JoinHostPort(to.String(), fmt.Sprint(port)))
	if err != nil {
		return err
	}
	defer c.Close()
	for i := 0; i < 3; i++ {
		if _, err := c.Write([]byte(tag)); err != nil {
			return err
		}
		time.Sleep(50 * time.Millisecond)
	}
	return nil
}

// waitTag returns the first received message containing tag, or "" after
// d.
func waitTag(got <-chan string, tag string, d time.Duration) string {
	deadline := time.After(d)
	for {
		select {
		case m, ok := <-got:
			if !ok {
				return ""
			}
			if strings.Contains(m, tag) {
				return m
			}
		case <-deadline:
			return ""
		}
	}
}

// vxlanPacket is a VXLAN payload (RFC 7348 header and inner Ethernet
// frame) carrying an IPv4/UDP datagram src:sport -> dst:dport.
func vxlanPacket(vni uint32, src, dst netip.Addr, sport, dport uint16, payload []byte) []byte {
	var b bytes.Buffer
	b.Write([]byte{0x08, 0, 0, 0})
	b.Write([]byte{byte(vni >> 16), byte(vni >> 8), byte(vni), 0})
	b.Write([]byte{0x0a, 0, 0, 0, 0, 0x01})          // eth dst: the gateway MAC
	b.Write([]byte{0x0a, 0x58, 0xc6, 0x13, 0xc8, 7}) // eth src
	b.Write([]byte{0x08, 0x00})
	ip := make([]byte, 20)
	ip[0], ip[8], ip[9] = 0x45, 64, 17
	binary.BigEndian.PutUint16(ip[2:], uint16(20+8+len(payload)))
	s, d := src.As4(), dst.As4()
	copy(ip[12:], s[:])
	copy(ip[16:], d[:])
	binary.BigEndian.PutUint16(ip[10:], ipChecksum(ip))
	b.Write(ip)
	udp := make([]byte, 8)
	binary.BigEndian.PutUint16(udp[0:], sport)
	binary.BigEndian.PutUint16(udp[2:], dport)
	binary.BigEndian.PutUint16(udp[4:], uint16(8+len(payload)))
	b.Write(udp) // checksum 0: none
	b.Write(payload)
	return b.Bytes()
}

func ipChecksum(h []byte) uint16 {
	var sum uint32
	for i := 0; i+1 < len(h); i += 2 {
		sum += uint32(h[i])<<8 | uint32(h[i+1])
	}
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	return ^uint16(sum)
}
