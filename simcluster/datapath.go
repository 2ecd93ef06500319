package simcluster

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"time"
)

// EnvDatapath selects the simulated hosts' OVS datapath for a whole run:
// unset or "netdev" (userspace, the default: no kernel module needed) or
// "system" (the openvswitch kernel module). Options.Datapath overrides it.
const EnvDatapath = "KEYROUTE_E2E_DATAPATH"

// Datapaths the harness can give its hosts (agent config `datapath`).
const (
	DatapathNetdev = "netdev"
	DatapathSystem = "system"
)

// DatapathFromEnv returns the datapath EnvDatapath names, netdev if unset.
func DatapathFromEnv() (string, error) {
	switch v := strings.TrimSpace(os.Getenv(EnvDatapath)); v {
	case "":
		return DatapathNetdev, nil
	case DatapathNetdev, DatapathSystem:
		return v, nil
	default:
		return "", fmt.Errorf("%s=%q: want %s or %s", EnvDatapath, v, DatapathNetdev, DatapathSystem)
	}
}

// KernelDatapathMissing returns why this machine cannot run hosts on the
// system datapath, or "" if it can: the openvswitch module must be loaded
// (/sys/module/openvswitch) or loadable (`modprobe -n openvswitch`).
func KernelDatapathMissing() string {
	if _, err := os.Stat("/sys/module/openvswitch"); err == nil {
		return ""
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "modprobe", "-n", "openvswitch").CombinedOutput()
	if err == nil {
		return ""
	}
	return fmt.Sprintf("no openvswitch kernel module: /sys/module/openvswitch absent and `modprobe -n openvswitch` failed: %v: %s",
		err, strings.TrimSpace(string(out)))
}

// Datapath is the OVS datapath of the cluster's hosts.
func (cl *Cluster) Datapath() string { return cl.opts.Datapath }
