package simcluster

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/keyroute/keyroute/hostlayout"
	"github.com/keyroute/keyroute/pki"
	"github.com/keyroute/keyroute/simhost"
)

// Host is one simulated host: a namespace with the uplink Uplink on the
// fabric, a private OVS and (unless NoAgents) a keyroute-agent.
type Host struct {
	// Index is the 1-based host number; Name is "h<Index>".
	Index int
	Name  string
	// NS is the host's network namespace, "<prefix>h<Index>".
	NS *simhost.NetNS
	// OVS is the host's private Open vSwitch.
	OVS *simhost.OVS
	// IP and MAC are the underlay address and the uplink's MAC.
	IP  netip.Addr
	MAC net.HardwareAddr
	// Dir holds the host's files; APISocket, LogPath and ConfigPath are the
	// agent's socket, log (stdout+stderr, appended across restarts) and
	// YAML config.
	Dir, APISocket, LogPath, ConfigPath string
	// MetricsAddr is where the agent serves metrics inside NS ("" if off).
	MetricsAddr string
	// Bridges are the agent's bridge names, as its config sets them.
	Bridges hostlayout.Bridges

	// AgentArgs are extra command-line arguments for the agent's next
	// starts (e.g. --adopt-cluster-settings).
	AgentArgs []string

	cl    *Cluster
	agent *Process
	// configChange, set by RewriteConfig, edits the config after
	// Options.AgentConfig.
	configChange func(cfg map[string]any)
}

// config is the agent YAML the harness writes for h (agent/config.go keys).
func (h *Host) config() map[string]any {
	cl := h.cl
	etcd := map[string]any{"prefix": "/keyroute/"}
	if cl.PKIDir != "" {
		etcd["ca"] = filepath.Join(cl.PKIDir, pki.CACertFile)
		etcd["cert"], etcd["key"] = pki.CertPath(cl.PKIDir, h.Name), pki.KeyPath(cl.PKIDir, h.Name)
	} else {
		etcd["insecure"] = true
	}
	switch {
	case cl.opts.EtcdMembers > 0:
		cl.memberEtcdConfig(h, etcd)
	case cl.opts.ExternalEtcd || h.Index != 1:
		etcd["endpoints"] = []string{cl.EtcdEndpoint}
	default:
		// The peer URL is the default: https://127.0.0.1:2380 with TLS.
		etcd["embedded_client_url"] = cl.EtcdEndpoint
	}
	cfg := map[string]any{
		"node":     h.Name,
		"uplink":   Uplink,
		"host_ip":  h.IP.String(),
		"datapath": cl.opts.Datapath,
		"etcd":     etcd,
		"cluster": map[string]any{
			"pod_cidr": "198.19.0.0/16", "subnet_bits": 24, "vni": int(cl.VNI),
			"vxlan_port": int(cl.VXLANPort), "gateway_mac": "0a:00:00:00:00:01",
		},
		"ovs": cl.ovsConfig(map[string]any{"db_socket": h.OVS.DBSock(), "run_dir": h.OVS.RunDir()}),
		// Each host has its own loopback, so the default port never clashes.
		"metrics_addr": "127.0.0.1:9476",
		"api_socket":   h.APISocket,
		"state_dir":    filepath.Join(h.Dir, "state"),
		"log_level":    "debug",
	}
	if cl.opts.Mode != "" {
		cfg["mode"] = cl.opts.Mode
	}
	if cl.opts.AgentConfig != nil {
		cl.opts.AgentConfig(h.Index, cfg)
	}
	if h.configChange != nil {
		h.configChange(cfg)
	}
	return cfg
}

// RewriteConfig writes the agent's config again with change applied after
// Options.AgentConfig (nil: as the harness first wrote it). It takes effect
// at the agent's next start.
func (h *Host) RewriteConfig(change func(cfg map[string]any)) error {
	h.configChange = change
	return h.writeConfig()
}

// StartAgentRefused starts the agent expecting it to refuse to start: it
// waits up to timeout for the agent to exit with an error (not ready, not
// running on) and returns what the agent logged in this start.
func (h *Host) StartAgentRefused(timeout time.Duration) (string, error) {
	var from int64
	if st, err := os.Stat(h.LogPath); err == nil {
		from = st.Size()
	}
	if err := h.spawnAgent(); err != nil {
		return "", err
	}
	werr := h.agent.Wait(timeout)
	b, _ := os.ReadFile(h.LogPath)
	var out string
	if int64(len(b)) >= from {
		out = string(b[from:])
	}
	switch ended, _ := h.agent.Exited(); {
	case !ended:
		h.agent.Stop(15 * time.Second)
		return out, fmt.Errorf("%s agent still running after %s, want it to refuse to start: %w", h.Name, timeout, werr)
	case werr == nil:
		return out, fmt.Errorf("%s agent exited with status 0, want a refusal", h.Name)
	}
	return out, nil
}

func (h *Host) writeConfig() error {
	b, err := yaml.Marshal(h.config())
	if err != nil {
		return fmt.Errorf("write %s agent config: %w", h.Name, err)
	}
	// Read back what the hook may have changed.
	c := struct {
		MetricsAddr string             `yaml:"metrics_addr"`
		Bridges     hostlayout.Bridges `yaml:"bridges"`
		Cluster     struct {
			VNI       uint32 `yaml:"vni"`
			VXLANPort uint16 `yaml:"vxlan_port"`
		} `yaml:"cluster"`
	}{Bridges: hostlayout.Default()}
	if err := yaml.Unmarshal(b, &c); err != nil {
		return fmt.Errorf("write %s agent config: %w", h.Name, err)
	}
	h.MetricsAddr, h.Bridges = c.MetricsAddr, c.Bridges
	if h.Index == 1 {
		// Captures are read with host 1's overlay settings.
		h.cl.VNI, h.cl.VXLANPort = c.Cluster.VNI, c.Cluster.VXLANPort
	}
	if err := os.WriteFile(h.ConfigPath, b, 0o644); err != nil {
		return fmt.Errorf("write %s agent config: %w", h.Name, err)
	}
	return nil
}

// spawnAgent starts the agent without waiting for it.
func (h *Host) spawnAgent() error {
	if h.agent != nil {
		if ended, _ := h.agent.Exited(); !ended {
			return fmt.Errorf("start %s agent: already running as pid %d", h.Name, h.agent.PID())
		}
	}
	argv := append([]string{"ip", "netns", "exec", h.NS.Name,
		filepath.Join(h.cl.BinDir, "keyroute-agent"), "--config", h.ConfigPath}, h.AgentArgs...)
	p, err := startProcess(h.Name+" agent", h.LogPath, argv...)
	if err != nil {
		return err
	}
	p.daemon = true
	h.cl.procs.add(p)
	h.agent = p
	// For people poking at a kept cluster.
	os.WriteFile(filepath.Join(h.Dir, "agent.pid"), []byte(strconv.Itoa(p.PID())+"\n"), 0o644)
	return nil
}

func (h *Host) startAgent(ctx context.Context) error {
	if err := h.spawnAgent(); err != nil {
		return err
	}
	return h.waitReady(ctx)
}

// waitReady polls `keyroutectl status` until it succeeds, the agent exits,
// or ReadyTimeout passes.
func (h *Host) waitReady(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, ReadyTimeout)
	defer cancel()
	start := time.Now()
	var last error
	for {
		if ended, err := h.agent.Exited(); ended {
			return fmt.Errorf("%s agent exited while starting (%v); last lines of %s:\n%s%s", h.Name, err, h.LogPath, h.agent.LogTail(30), h.vswitchdTail())
		}
		_, last = h.CtlContext(ctx, 5*time.Second, "status", "-o", "json")
		if last == nil {
			h.cl.log.Info("agent ready", "host", h.Name, "pid", h.agent.PID(), "after", time.Since(start).Round(time.Millisecond))
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s agent not ready after %s (last status: %v); last lines of %s:\n%s%s",
				h.Name, time.Since(start).Round(time.Millisecond), last, h.LogPath, h.agent.LogTail(30), h.vswitchdTail())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// StopAgent stops the agent with SIGTERM (SIGKILL after 15 s). OVS and its
// flows stay, as on a real host whose agent is restarted.
func (h *Host) StopAgent() error {
	if h.agent == nil {
		return fmt.Errorf("stop %s agent: not started", h.Name)
	}
	return h.agent.Stop(15 * time.Second)
}

// KillAgent stops the agent with SIGKILL, as a crash: its etcd lease is
// left to expire. OVS and its flows stay.
func (h *Host) KillAgent() error {
	if h.agent == nil {
		return fmt.Errorf("kill %s agent: not started", h.Name)
	}
	return h.agent.Kill()
}

// StartAgent starts the agent again with the same config and state, and
// waits until it is ready.
func (h *Host) StartAgent() error {
	return h.startAgent(context.Background())
}

// AgentPID is the running agent's PID, or 0.
func (h *Host) AgentPID() int {
	if h.agent == nil {
		return 0
	}
	if ended, _ := h.agent.Exited(); ended {
		return 0
	}
	return h.agent.PID()
}

// Agent is the agent process (nil before it first started).
func (h *Host) Agent() *Process { return h.agent }

// Cluster returns the cluster the host belongs to.
func (h *Host) Cluster() *Cluster { return h.cl }

// Ctl runs `keyroutectl --socket <APISocket> args...` and returns its
// stdout; an error carries stderr.
func (h *Host) Ctl(args ...string) (string, error) {
	return h.CtlContext(context.Background(), 60*time.Second, args...)
}

// CtlContext is Ctl with a context and a timeout of its own.
func (h *Host) CtlContext(ctx context.Context, timeout time.Duration, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	argv := append([]string{"--socket", h.APISocket}, args...)
	cmd := exec.CommandContext(ctx, filepath.Join(h.cl.BinDir, "keyroutectl"), argv...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		if ctx.Err() != nil {
			err = errors.Join(err, ctx.Err())
		}
		return out.String(), fmt.Errorf("%s: keyroutectl %s: %w: %s", h.Name, strings.Join(args, " "), err, strings.TrimSpace(errb.String()))
	}
	return out.String(), nil
}

// Metrics fetches the agent's Prometheus metrics text from inside the
// host's namespace.
func (h *Host) Metrics() (string, error) {
	if h.MetricsAddr == "" {
		return "", fmt.Errorf("%s: metrics are off (metrics_addr empty)", h.Name)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+h.MetricsAddr+"/metrics", nil)
	if err != nil {
		return "", fmt.Errorf("%s metrics: %w", h.Name, err)
	}
	resp, err := h.NS.HTTPClient().Do(req)
	if err != nil {
		return "", fmt.Errorf("%s metrics: %w", h.Name, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err == nil && resp.StatusCode != http.StatusOK {
		err = fmt.Errorf("%s", resp.Status)
	}
	if err != nil {
		return "", fmt.Errorf("%s metrics: %w", h.Name, err)
	}
	return string(b), nil
}

// Exec runs a command in the host's namespace.
func (h *Host) Exec(args ...string) (string, error) { return h.NS.Exec(args...) }

// RestartVswitchd restarts the host's ovs-vswitchd as a crash or an
// upgrade would: the daemon is stopped by its PID and started again with
// the same arguments, every OpenFlow flow is lost, the database (bridges,
// ports) stays. The netdev datapath's internal ports are taps that die with
// the daemon and come back bare, so the host IP is put back on br-phy and
// OVS's tunnel neighbours for the other hosts are set again, as the host's
// network configuration would (with the kernel datapath they survive).
// It returns once the agent has reconnected to both bridges
// (keyroute_openflow_reconnects_total moved for each), i.e. has started
// its replay, or after timeout.
func (h *Host) RestartVswitchd(timeout time.Duration) error {
	reconnects := func() (map[string]float64, error) {
		m, err := h.Metrics()
		if err != nil {
			return nil, err
		}
		out := map[string]float64{}
		for _, line := range strings.Split(m, "\n") {
			for _, br := range []string{h.Bridges.Integration, h.Bridges.Physical} {
				if strings.HasPrefix(line, `keyroute_openflow_reconnects_total{bridge="`+br+`"}`) {
					f := strings.Fields(line)
					out[br], _ = strconv.ParseFloat(f[len(f)-1], 64)
				}
			}
		}
		if len(out) != 2 {
			return nil, fmt.Errorf("%s metrics: keyroute_openflow_reconnects_total for %s and %s not found", h.Name, h.Bridges.Integration, h.Bridges.Physical)
		}
		return out, nil
	}
	before, err := reconnects()
	if err != nil {
		return err
	}
	pid, _ := h.OVS.PID("ovs-vswitchd")
	if err := h.OVS.StopVswitchd(); err != nil {
		return err
	}
	if err := h.OVS.StartVswitchd(); err != nil {
		return err
	}
	newPID, _ := h.OVS.PID("ovs-vswitchd")
	if newPID == pid {
		return fmt.Errorf("%s: ovs-vswitchd pid %d after its restart, as before", h.Name, newPID)
	}
	deadline := time.Now().Add(timeout)
	left := func() time.Duration { return max(time.Until(deadline), time.Second) }
	err = simhost.WaitFor(left(), func() error {
		if _, err := h.Exec("ip", "link", "set", h.Bridges.Physical, "up"); err != nil {
			return err
		}
		_, err := h.Exec("ip", "addr", "replace", h.IP.String()+"/24", "dev", h.Bridges.Physical)
		return err
	})
	if err != nil {
		return fmt.Errorf("%s: host IP back on %s after restarting ovs-vswitchd: %w", h.Name, h.Bridges.Physical, err)
	}
	for _, peer := range h.cl.Hosts() {
		if peer != h {
			if _, err := h.OVS.Appctl("tnl/arp/set", h.Bridges.Physical, peer.IP.String(), peer.MAC.String()); err != nil {
				return fmt.Errorf("%s: tunnel neighbour %s after restarting ovs-vswitchd: %w", h.Name, peer.Name, err)
			}
		}
	}
	return simhost.WaitFor(left(), func() error {
		now, err := reconnects()
		if err != nil {
			return err
		}
		for br, n := range now {
			if n <= before[br] {
				return fmt.Errorf("%s: the agent has not reconnected to %s after ovs-vswitchd's restart (pid %d -> %d)", h.Name, br, pid, newPID)
			}
		}
		return nil
	})
}

// vswitchdTail is the end of the host's ovs-vswitchd log, for an agent
// that did not start: a slow or stuck switch shows there (long poll
// intervals, port errors).
func (h *Host) vswitchdTail() string {
	b, err := os.ReadFile(filepath.Join(h.OVS.Dir, "log", "ovs-vswitchd.log"))
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	return "\nlast lines of ovs-vswitchd.log:\n" + strings.Join(lines[max(0, len(lines)-15):], "\n")
}
