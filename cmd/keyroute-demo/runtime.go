package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/keyroute/keyroute/api"
	"github.com/keyroute/keyroute/simcluster"
	"github.com/keyroute/keyroute/simhost"
)

// runtimeDemo (--runtime) starts containers with podman instead of
// keyroutectl: podman (Debian's, CNI network backend, a private
// configuration per simulated host) calls keyroute-cni, which asks that
// host's agent. It shows the containers on the fast path and their
// attachments gone after `podman rm`.
func runtimeDemo(d *demo, cl *simcluster.Cluster) {
	if _, err := os.Stat(filepath.Join(cl.BinDir, "keyroute-cni")); err != nil {
		d.step("find keyroute-cni", func() (string, error) {
			return "", fmt.Errorf("%w: build it next to keyroute-agent (make build)", err)
		})
		return
	}
	for _, bin := range []string{"podman", "runc"} {
		if _, err := exec.LookPath(bin); err != nil {
			d.step("find "+bin, func() (string, error) { return "", fmt.Errorf("%w: run make deps", err) })
			return
		}
	}
	type ctr struct {
		pm       *simcluster.Podman
		h        *simcluster.Host
		name, ip string
	}
	var cs []ctr
	defer func() {
		for _, c := range cs {
			c.pm.Close()
		}
	}()
	for i, name := range []string{"web", "client"} {
		h := cl.Host(i + 1)
		var c ctr
		ok := d.step(fmt.Sprintf("podman run %s on %s (CNI network %q, image from busybox-static, nothing pulled)", name, h.Name, simcluster.CNINetwork), func() (string, error) {
			pm, err := simcluster.NewPodman(h)
			if err != nil {
				return "", err
			}
			if err := pm.ImportBusybox(); err != nil {
				return "", err
			}
			c = ctr{pm: pm, h: h, name: name}
			cs = append(cs, c)
			if _, err := pm.Run(2*time.Minute, "run", "-d", "--name", name, "--network", simcluster.CNINetwork, "--cap-add", "NET_RAW", simcluster.PodmanImage, "sleep", "3600"); err != nil {
				return "", err
			}
			ip, err := pm.Run(time.Minute, "inspect", "-f", `{{(index .NetworkSettings.Networks "`+simcluster.CNINetwork+`").IPAddress}}`, name)
			if err != nil {
				return "", err
			}
			c.ip = ip
			cs[len(cs)-1] = c
			return ip, nil
		})
		if !ok {
			return
		}
	}
	web, client := cs[0], cs[1]
	d.step(fmt.Sprintf("%s's agent records %s under podman's container ID", web.h.Name, web.name), func() (string, error) {
		eps, err := api.NewClient(web.h.APISocket).Endpoints(context.Background(), false)
		if err != nil {
			return "", err
		}
		for _, ep := range eps {
			if ep.IP == web.ip {
				return fmt.Sprintf("container_id %.12s… ifname %s port %s", ep.ContainerID, ep.IfName, ep.Port), nil
			}
		}
		return "", fmt.Errorf("no endpoint with %s", web.ip)
	})
	ping := func(n int) error {
		_, err := client.pm.Run(time.Minute, "exec", client.name, "ping", "-c", fmt.Sprint(n), "-i", "0.2", "-W", "2", web.ip)
		return err
	}
	var key uint8
	d.step(fmt.Sprintf("%s (h2) -> %s (h1) until the pair's key is ready", client.name, web.name), func() (string, error) {
		err := simhost.WaitFor(30*time.Second, func() error {
			if err := ping(2); err != nil {
				return err
			}
			keys, err := api.NewClient(client.h.APISocket).Keys(context.Background())
			if err != nil {
				return err
			}
			for _, k := range keys {
				if k.Src == client.ip && k.Dst == web.ip && k.State == "ready" {
					key = k.Key
					return nil
				}
			}
			return fmt.Errorf("no ready key for %s -> %s yet", client.ip, web.ip)
		})
		return fmt.Sprintf("key %d", key), err
	})
	d.step("wire between h2 and h1 during 5 pings", func() (string, error) {
		pkts, err := cl.CaptureDuring(cl.Fabric, client.h.Name, "icmp or udp port 4789", func() error { return ping(5) })
		if err != nil {
			return "", err
		}
		pc := simcluster.CountPaths(pkts)
		if pc.VXLAN > 0 || pc.Rewrite < 10 {
			return "", fmt.Errorf("want 10 rewritten packets and no VXLAN, saw %s", pc)
		}
		return pc.String() + ", host IPs only, no VXLAN", nil
	})
	for _, c := range cs {
		d.step(fmt.Sprintf("podman rm %s: CNI DEL removes its port and record on %s", c.name, c.h.Name), func() (string, error) {
			if _, err := c.pm.Run(2*time.Minute, "rm", "--force", "--time", "0", c.name); err != nil {
				return "", err
			}
			eps, err := api.NewClient(c.h.APISocket).Endpoints(context.Background(), false)
			if err != nil {
				return "", err
			}
			for _, ep := range eps {
				if ep.IP == c.ip {
					return "", fmt.Errorf("%s still attached: %+v", c.name, ep)
				}
			}
			ports, err := c.h.OVS.Vsctl("list-ports", "br-int")
			return "br-int ports left: " + strings.Join(strings.Fields(ports), " "), err
		})
	}
}
