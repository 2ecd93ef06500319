package simcluster

import (
	"fmt"
	"os"
	"strings"
)

// EnvPortType forces the simulated hosts' ovs.port_type for a whole run:
// unset leaves the agent's default (auto: AF_XDP ports on these netdev
// hosts where they come up), "system" or "afxdp" force one.
// Options.PortType overrides it.
const EnvPortType = "KEYROUTE_E2E_PORT_TYPE"

// Port types the harness can give its hosts (agent config ovs.port_type).
const (
	PortTypeAuto   = "auto"
	PortTypeSystem = "system"
	PortTypeAFXDP  = "afxdp"
)

// PortTypeFromEnv returns the port type EnvPortType names, "" if unset
// (the agent's default).
func PortTypeFromEnv() (string, error) {
	v := strings.TrimSpace(os.Getenv(EnvPortType))
	if err := checkPortType(v); err != nil {
		return "", fmt.Errorf("%s: %w", EnvPortType, err)
	}
	return v, nil
}

func checkPortType(v string) error {
	switch v {
	case "", PortTypeAuto, PortTypeSystem, PortTypeAFXDP:
		return nil
	}
	return fmt.Errorf("port type %q: want %s, %s or %s", v, PortTypeAuto, PortTypeSystem, PortTypeAFXDP)
}

// resolvePortType fills opts.PortType from the environment when unset.
func resolvePortType(opts *Options) error {
	if opts.PortType == "" {
		v, err := PortTypeFromEnv()
		if err != nil {
			return fmt.Errorf("new cluster: %w", err)
		}
		opts.PortType = v
	}
	if err := checkPortType(opts.PortType); err != nil {
		return fmt.Errorf("new cluster: PortType: %w", err)
	}
	return nil
}

// ovsConfig adds the port type to an agent config's ovs section ("" keeps
// the agent's default).
func (cl *Cluster) ovsConfig(ovs map[string]any) map[string]any {
	if cl.opts.PortType != "" {
		ovs["port_type"] = cl.opts.PortType
	}
	return ovs
}

// PortType is the ovs.port_type the harness gives its hosts ("": the
// agent's default, auto).
func (cl *Cluster) PortType() string { return cl.opts.PortType }
