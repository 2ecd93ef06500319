package bench

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/keyroute/keyroute/api"
	"github.com/keyroute/keyroute/simcluster"
	"github.com/keyroute/keyroute/simhost"
)

// TSOCheck is what the userspace-TSO variant saw for one path besides the
// throughput samples: whether the path passed traffic at all and how the
// TCP checksums of the frames on the fabric looked.
type TSOCheck struct {
	Path      Path   `json:"path"`
	PingOK    bool   `json:"ping_ok"`
	PingError string `json:"ping_error,omitempty"`
	// Segments counts captured TCP frames on the sender's fabric port,
	// Incorrect those tcpdump -vv calls "incorrect" (cksum), Large those
	// longer than the MTU (TSO frames not segmented before the wire).
	Segments  int    `json:"segments"`
	Incorrect int    `json:"incorrect_checksums"`
	Large     int    `json:"larger_than_mtu"`
	Error     string `json:"error,omitempty"`
}

// enableTSO restarts both vswitchds of o with
// other_config:userspace-tso-enable=true and turns TX offloads (checksum,
// TSO) back on for every veth on the path. A restarted vswitchd recreates
// br-phy's tap without the host IP and forgets its tunnel neighbours, so
// both are put back here; the agent reconnects and replays its flows.
func enableTSO(ctx context.Context, o *overlay) (string, error) {
	hosts := o.cl.Hosts()
	for _, h := range hosts {
		if _, err := h.OVS.Vsctl("set", "Open_vSwitch", ".", "other_config:userspace-tso-enable=true"); err != nil {
			return "", fmt.Errorf("%s: enable userspace TSO: %w", h.Name, err)
		}
		if err := h.OVS.StopVswitchd(); err != nil {
			return "", err
		}
		if err := h.OVS.StartVswitchd(); err != nil {
			return "", err
		}
	}
	for _, h := range hosts {
		err := simhost.WaitFor(20*time.Second, func() error {
			if _, err := h.Exec("ip", "link", "set", "br-phy", "up"); err != nil {
				return err
			}
			_, err := h.Exec("ip", "addr", "replace", h.IP.String()+"/24", "dev", "br-phy")
			return err
		})
		if err != nil {
			return "", fmt.Errorf("%s: host IP back on br-phy after restart: %w", h.Name, err)
		}
		for _, peer := range hosts {
			if peer != h {
				h.OVS.Appctl("tnl/arp/set", "br-phy", peer.IP.String(), peer.MAC.String())
			}
		}
		err = simhost.WaitFor(30*time.Second, func() error {
			st, err := api.NewClient(h.APISocket).Status(ctx)
			if err != nil {
				return err
			}
			for _, b := range st.Bridges {
				if !b.Connected {
					return fmt.Errorf("%s: bridge %s not connected to the agent yet", h.Name, b.Name)
				}
			}
			return nil
		})
		if err != nil {
			return "", err
		}
	}
	if err := offloadsOn(o); err != nil {
		return "", err
	}
	// Flows are replayed on reconnect, but give the agent a moment and
	// check end to end before measuring.
	if err := o.c1.PingUntil(o.c2.IP.String(), 10*time.Second); err != nil {
		return "", fmt.Errorf("after the TSO restart: %w", err)
	}
	b, _ := os.ReadFile(filepath.Join(hosts[0].OVS.Dir, "log", "ovs-vswitchd.log"))
	var tsoLines []string
	for _, l := range strings.Split(string(b), "\n") {
		if strings.Contains(l, "Segmentation Offloading") || strings.Contains(l, "TSO") {
			tsoLines = append(tsoLines, l[strings.LastIndex(l, "|")+1:])
		}
	}
	if len(tsoLines) == 0 {
		return "", errors.New("ovs-vswitchd.log says nothing about TSO after the restart")
	}
	return tsoLines[len(tsoLines)-1], nil
}

// offloadsOn turns TX checksum offload and TSO on for the fabric ports,
// the uplinks and both ends of the container veths.
func offloadsOn(o *overlay) error {
	var errs []error
	et := func(ns, dev string) {
		if _, err := simhost.Run("ip", "netns", "exec", ns, "ethtool", "-K", dev, "tx", "on", "tso", "on", "gso", "on"); err != nil {
			errs = append(errs, fmt.Errorf("offloads on %s/%s: %w", ns, dev, err))
		}
	}
	for _, h := range o.cl.Hosts() {
		et(o.cl.Fabric.Name, h.Name)
		et(h.NS.Name, simcluster.Uplink)
	}
	for _, c := range []*simcluster.Container{o.c1, o.c2} {
		et(c.Host.NS.Name, c.Port)
		et(c.NS.Name, "eth0")
	}
	return errors.Join(errs...)
}

var lengthRE = regexp.MustCompile(`proto TCP \(6\), length (\d+)`)

// checkWire captures TCP frames leaving the sending host on its fabric
// port while a short iperf3 runs, and counts bad checksums and frames
// longer than the MTU.
func checkWire(ctx context.Context, o *overlay, p *path, tc *TSOCheck) {
	if _, err := runIn(ctx, 10*time.Second, p.client.ns, "ping", "-n", "-c", "3", "-i", "0.2", "-W", "1", p.server.ip.String()); err != nil {
		tc.PingError = err.Error()
	} else {
		tc.PingOK = true
	}
	fab := o.cl.Fabric.Name
	dump, err := startServer("tcpdump "+string(p.name), fab, filepath.Join(o.cl.Dir, "tso-wire-"+string(p.name)+".txt"),
		"tcpdump", "-i", o.cl.Host(1).Name, "-nn", "-vv", "-c", "40", "-l", "greater 200")
	if err != nil {
		tc.Error = err.Error()
		return
	}
	defer dump.stop()
	time.Sleep(500 * time.Millisecond) // tcpdump attaching; its log says when, but tcpdump -l buffers that line
	runIn(ctx, 15*time.Second, p.client.ns, "iperf3", "-c", p.server.ip.String(), "-p", "5201", "-t", "2", "--connect-timeout", "2000")
	select {
	case <-dump.done:
	case <-time.After(2 * time.Second):
	}
	dump.stop()
	b, _ := os.ReadFile(dump.log)
	// tcpdump -vv prints an IP line ("proto TCP (6), length N") and a
	// TCP line ("Flags [.], cksum 0x... (incorrect -> 0x...)") per
	// segment, inner ones too for VXLAN.
	for _, l := range strings.Split(string(b), "\n") {
		switch {
		case strings.Contains(l, "proto TCP"):
			tc.Segments++
			if m := lengthRE.FindStringSubmatch(l); m != nil {
				var n int
				fmt.Sscan(m[1], &n)
				if n > 1500 {
					tc.Large++
				}
			}
		case strings.Contains(l, "Flags [") && strings.Contains(l, "incorrect"):
			tc.Incorrect++
		}
	}
}
