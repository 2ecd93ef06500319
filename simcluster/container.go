package simcluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/keyroute/keyroute/api"
	"github.com/keyroute/keyroute/simhost"
)

// Container is a namespace attached to a host's br-int by keyroutectl.
type Container struct {
	// Name is the container name given to keyroutectl.
	Name string
	// Host is where it is attached.
	Host *Host
	// NS is its namespace, "<prefix>c-<Name>".
	NS *simhost.NetNS
	// IP and MAC are eth0's, as keyroutectl reported them.
	IP  netip.Addr
	MAC net.HardwareAddr
	// Port is the OVS port keyroutectl reported.
	Port string
}

var containerNameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,31}$`)

// Attach creates the namespace of container name and attaches it to host
// hostIdx through `keyroutectl attach`; ip may be empty to let the agent
// choose.
func (cl *Cluster) Attach(hostIdx int, name, ip string) (*Container, error) {
	h := cl.Host(hostIdx)
	if h == nil {
		return nil, fmt.Errorf("attach %s: no host %d (cluster has %d)", name, hostIdx, len(cl.hosts))
	}
	if !containerNameRE.MatchString(name) {
		return nil, fmt.Errorf("attach %q: container names are 1-32 of a-z, 0-9 and '-'", name)
	}
	cl.mu.Lock()
	_, dup := cl.containers[name]
	closed := cl.closed
	cl.mu.Unlock()
	if dup || closed {
		return nil, fmt.Errorf("attach %s: already attached or cluster closed", name)
	}
	ns, err := simhost.NewNetNS(cl.Prefix + "c-" + name)
	if err != nil {
		return nil, fmt.Errorf("attach %s: %w", name, err)
	}
	args := []string{"attach", "--netns", ns.Name, "--name", name, "-o", "json"}
	if ip != "" {
		args = append(args, "--ip", ip)
	}
	out, err := h.Ctl(args...)
	if err != nil {
		return nil, errors.Join(fmt.Errorf("attach %s to %s: %w", name, h.Name, err), ns.Delete())
	}
	c, err := parseAttach(out)
	if err != nil {
		return nil, errors.Join(fmt.Errorf("attach %s to %s: %w", name, h.Name, err), ns.Delete())
	}
	c.Host, c.NS = h, ns
	cl.mu.Lock()
	cl.containers[name] = c
	cl.mu.Unlock()
	return c, nil
}

// parseAttach reads `keyroutectl attach -o json` (an api.Endpoint).
func parseAttach(out string) (*Container, error) {
	var e api.Endpoint
	if err := json.Unmarshal([]byte(out), &e); err != nil {
		return nil, fmt.Errorf("parse keyroutectl attach output %q: %w", out, err)
	}
	ip, err := netip.ParseAddr(e.IP)
	if err != nil {
		return nil, fmt.Errorf("keyroutectl attach output: ip %q: %w", e.IP, err)
	}
	c := &Container{Name: e.Name, IP: ip, Port: e.Port}
	if e.MAC != "" {
		if c.MAC, err = net.ParseMAC(e.MAC); err != nil {
			return nil, fmt.Errorf("keyroutectl attach output: mac %q: %w", e.MAC, err)
		}
	}
	return c, nil
}

// Detach runs `keyroutectl detach` and deletes the container's namespace.
func (cl *Cluster) Detach(c *Container) error {
	_, err := c.Host.Ctl("detach", "--name", c.Name)
	cl.mu.Lock()
	delete(cl.containers, c.Name)
	cl.mu.Unlock()
	return errors.Join(err, c.NS.Delete())
}

// Exec runs a command inside the container.
func (c *Container) Exec(args ...string) (string, error) { return c.NS.Exec(args...) }

var (
	pingStatsRE = regexp.MustCompile(`(\d+) packets transmitted, (\d+) received`)
	pingDupRE   = regexp.MustCompile(`\+(\d+) duplicates`)
)

// Ping sends count echo requests 0.2 s apart and fails unless every one is
// answered exactly once (a duplicate reply is a forwarding bug).
func (c *Container) Ping(dst string, count int) error {
	if count < 1 {
		return fmt.Errorf("ping %s from %s: count %d: want at least 1", dst, c.Name, count)
	}
	out, err := c.Exec("ping", "-n", "-c", strconv.Itoa(count), "-i", "0.2", "-W", "2", dst)
	st, perr := ParsePing(out)
	if perr != nil {
		return fmt.Errorf("ping %s from %s: %w", dst, c.Name, errors.Join(err, perr))
	}
	if st.Received != count || st.Sent != count || st.Duplicates != 0 {
		return fmt.Errorf("ping %s from %s: %d of %d answered, %d duplicate replies", dst, c.Name, st.Received, st.Sent, st.Duplicates)
	}
	return nil
}

// pingStats is ping's summary line.
type PingStats struct{ Sent, Received, Duplicates int }

func ParsePing(out string) (PingStats, error) {
	m := pingStatsRE.FindStringSubmatch(out)
	if m == nil {
		return PingStats{}, fmt.Errorf("no ping statistics in output %q", out)
	}
	var st PingStats
	st.Sent, _ = strconv.Atoi(m[1])
	st.Received, _ = strconv.Atoi(m[2])
	if d := pingDupRE.FindStringSubmatch(out); d != nil {
		st.Duplicates, _ = strconv.Atoi(d[1])
	}
	return st, nil
}

// PingUntil pings once at a time until dst answers or timeout passes, for
// the moment a new container becomes reachable (its endpoint travels
// through etcd to the other agents).
func (c *Container) PingUntil(dst string, timeout time.Duration) error {
	return simhost.WaitFor(timeout, func() error {
		out, err := c.Exec("ping", "-n", "-c", "1", "-W", "1", dst)
		if st, perr := ParsePing(out); perr == nil && st.Received == 1 {
			return nil
		}
		return fmt.Errorf("ping %s from %s: %v", dst, c.Name, err)
	})
}

// StartIperfServer starts `iperf3 -s -p port` in the container and waits
// until it listens. Cluster.Close stops it if the caller does not.
func (c *Container) StartIperfServer(port int) (*Process, error) {
	cl := c.Host.cl
	p, err := startProcess("iperf3 server "+c.Name, filepath.Join(cl.Dir, "iperf3-"+c.Name+"-"+strconv.Itoa(port)+".log"),
		"ip", "netns", "exec", c.NS.Name, "iperf3", "-s", "-p", strconv.Itoa(port))
	if err != nil {
		return nil, err
	}
	cl.procs.add(p)
	err = simhost.WaitFor(10*time.Second, func() error {
		if ended, err := p.Exited(); ended {
			return fmt.Errorf("exited: %v: %s", err, p.LogTail(5))
		}
		out, err := c.Exec("ss", "-Hltn", "sport", "=", ":"+strconv.Itoa(port))
		if err != nil || strings.TrimSpace(out) == "" {
			return fmt.Errorf("not listening on :%d yet (%v)", port, err)
		}
		return nil
	})
	if err != nil {
		return nil, errors.Join(fmt.Errorf("iperf3 server in %s: %w", c.Name, err), p.Stop(5*time.Second))
	}
	return p, nil
}

// IperfResult is what an iperf3 client run measured.
type IperfResult struct {
	// Gbps is the receiver's throughput.
	Gbps float64
	// Bytes received over Seconds, and TCP retransmits by the sender.
	Bytes       int64
	Seconds     float64
	Retransmits int
	// ClientCPUSec is the client's own CPU time (host_total × duration).
	ClientCPUSec float64
	// JSON is iperf3's full -J report.
	JSON []byte
}

// Iperf runs an iperf3 client from the container to dst:port for d, with
// extra iperf3 arguments (e.g. "-P", "4", or "-u", "-b", "100M").
func (c *Container) Iperf(dst string, port int, d time.Duration, extra ...string) (IperfResult, error) {
	secs := int(d.Round(time.Second) / time.Second)
	if secs < 1 {
		secs = 1
	}
	ctx, cancel := context.WithTimeout(context.Background(), d+30*time.Second)
	defer cancel()
	args := append([]string{"netns", "exec", c.NS.Name, "iperf3", "-c", dst, "-p", strconv.Itoa(port),
		"-t", strconv.Itoa(secs), "-J", "--connect-timeout", "3000"}, extra...)
	// An iperf3 server runs one test at a time and may still be closing
	// the previous client's when the next one connects ("the server is
	// busy running a test"): that client is tried again for up to 10 s.
	busyUntil := time.Now().Add(10 * time.Second)
	for {
		out, runErr := exec.CommandContext(ctx, "ip", args...).Output()
		res, err := ParseIperf(out)
		if err == nil {
			return res, nil
		}
		if !strings.Contains(err.Error(), "server is busy") || time.Now().After(busyUntil) {
			return res, fmt.Errorf("iperf3 %s -> %s:%d: %w", c.Name, dst, port, errors.Join(err, runErr))
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// ParseIperf reads an iperf3 -J client report; an "error" field is an
// error, and so is a run that received nothing.
func ParseIperf(out []byte) (IperfResult, error) {
	type sum struct {
		Bytes         int64   `json:"bytes"`
		Seconds       float64 `json:"seconds"`
		BitsPerSecond float64 `json:"bits_per_second"`
	}
	var r struct {
		Error string `json:"error"`
		End   struct {
			SumSent struct {
				Retransmits int `json:"retransmits"`
			} `json:"sum_sent"`
			SumReceived sum `json:"sum_received"`
			// UDP tests report one "sum" instead.
			Sum sum `json:"sum"`
			CPU struct {
				HostTotal float64 `json:"host_total"`
			} `json:"cpu_utilization_percent"`
		} `json:"end"`
	}
	res := IperfResult{JSON: out}
	if err := json.Unmarshal(out, &r); err != nil {
		return res, fmt.Errorf("parse iperf3 -J output: %w (%.200q)", err, out)
	}
	if r.Error != "" {
		return res, fmt.Errorf("iperf3: %s", r.Error)
	}
	s := r.End.SumReceived
	if s.Bytes == 0 {
		s = r.End.Sum
	}
	if s.Bytes == 0 {
		return res, fmt.Errorf("iperf3 received nothing")
	}
	res.Gbps, res.Bytes, res.Seconds, res.Retransmits = s.BitsPerSecond/1e9, s.Bytes, s.Seconds, r.End.SumSent.Retransmits
	res.ClientCPUSec = r.End.CPU.HostTotal / 100 * s.Seconds
	return res, nil
}

// ListenUDP opens a UDP socket on the container's IP, inside its namespace.
func (c *Container) ListenUDP(port int) (net.PacketConn, error) {
	return c.NS.ListenPacket("udp4", netip.AddrPortFrom(c.IP, uint16(port)).String())
}

// DialUDP opens a UDP socket from the container to dst ("ip:port").
func (c *Container) DialUDP(dst string) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return c.NS.DialContext(ctx, "udp4", dst)
}
