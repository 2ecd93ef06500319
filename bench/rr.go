package bench

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"syscall"
	"time"
)

// The request/response tool: one UDP transaction outstanding at a time, so
// transactions per second is 1/RTT and the RTT percentiles are the path's
// latency, with no sockperf needed. cmd/keyroute-bench runs both ends as
// hidden subcommands inside the namespaces (`ip netns exec`).

// RRResult is what RRClient measured; the client prints it as JSON.
type RRResult struct {
	Transactions int     `json:"transactions"`
	Lost         int     `json:"lost"`
	Seconds      float64 `json:"seconds"`
	TPS          float64 `json:"tps"`
	P50us        float64 `json:"p50_us"`
	P99us        float64 `json:"p99_us"`
	MeanUs       float64 `json:"mean_us"`
	// CPUSec is the client process's own CPU time (for the foreign-load
	// column).
	CPUSec float64 `json:"cpu_sec"`
}

// RRServe echoes every datagram on conn back to its sender until conn is
// closed.
func RRServe(conn net.PacketConn) error {
	buf := make([]byte, 65536)
	for {
		n, from, err := conn.ReadFrom(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			return fmt.Errorf("rr server: %w", err)
		}
		if _, err := conn.WriteTo(buf[:n], from); err != nil {
			return fmt.Errorf("rr server: reply to %s: %w", from, err)
		}
	}
}

// RRClient runs transactions of size-byte datagrams over conn (connected
// to a server) for d. A reply not back within timeout counts as lost; a
// late reply of an earlier transaction is skipped by its sequence number.
func RRClient(conn net.Conn, d time.Duration, size int, timeout time.Duration) (RRResult, error) {
	if size < 8 {
		size = 8
	}
	req := make([]byte, size)
	resp := make([]byte, 65536)
	var rtts []float64
	var res RRResult
	start := time.Now()
	var seq uint64
	for time.Since(start) < d {
		seq++
		binary.BigEndian.PutUint64(req, seq)
		t0 := time.Now()
		if _, err := conn.Write(req); err != nil {
			return res, fmt.Errorf("rr client: send: %w", err)
		}
		deadline := t0.Add(timeout)
		for {
			conn.SetReadDeadline(deadline)
			n, err := conn.Read(resp)
			if err != nil {
				var ne net.Error
				if errors.As(err, &ne) && ne.Timeout() {
					res.Lost++
					break
				}
				// ECONNREFUSED from an ICMP port unreachable: no server.
				return res, fmt.Errorf("rr client: receive: %w", err)
			}
			if n >= 8 && binary.BigEndian.Uint64(resp) == seq {
				rtts = append(rtts, float64(time.Since(t0).Nanoseconds())/1e3)
				break
			}
		}
	}
	res.Seconds = time.Since(start).Seconds()
	res.Transactions = len(rtts)
	if len(rtts) == 0 {
		return res, fmt.Errorf("rr client: no reply in %s (%d lost)", d, res.Lost)
	}
	res.TPS = float64(len(rtts)) / res.Seconds
	res.P50us, res.P99us = Quantile(rtts, 0.50), Quantile(rtts, 0.99)
	var sum float64
	for _, r := range rtts {
		sum += r
	}
	res.MeanUs = sum / float64(len(rtts))
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) == nil {
		res.CPUSec = tvSec(ru.Utime) + tvSec(ru.Stime)
	}
	return res, nil
}

func tvSec(tv syscall.Timeval) float64 { return float64(tv.Sec) + float64(tv.Usec)/1e6 }

// RRMain is the entry point of the hidden subcommands: "rr-server ADDR"
// serves until killed; "rr-client ADDR SECONDS SIZE" prints an RRResult
// as JSON.
func RRMain(args []string, stdout io.Writer) error {
	if len(args) < 2 {
		return fmt.Errorf("usage: rr-server ADDR | rr-client ADDR SECONDS SIZE")
	}
	switch args[0] {
	case "rr-server":
		conn, err := net.ListenPacket("udp4", args[1])
		if err != nil {
			return fmt.Errorf("rr server: %w", err)
		}
		fmt.Fprintln(os.Stderr, "listening on", conn.LocalAddr())
		return RRServe(conn)
	case "rr-client":
		if len(args) != 4 {
			return fmt.Errorf("usage: rr-client ADDR SECONDS SIZE")
		}
		var secs float64
		var size int
		if _, err := fmt.Sscan(args[2], &secs); err != nil || secs <= 0 {
			return fmt.Errorf("rr client: SECONDS %q: want a positive number", args[2])
		}
		if _, err := fmt.Sscan(args[3], &size); err != nil || size < 8 || size > 65000 {
			return fmt.Errorf("rr client: SIZE %q: want 8..65000", args[3])
		}
		conn, err := net.Dial("udp4", args[1])
		if err != nil {
			return fmt.Errorf("rr client: %w", err)
		}
		defer conn.Close()
		res, err := RRClient(conn, time.Duration(secs*float64(time.Second)), size, 200*time.Millisecond)
		if err != nil {
			return err
		}
		return json.NewEncoder(stdout).Encode(res)
	default:
		return fmt.Errorf("unknown subcommand %q", args[0])
	}
}
