// Command keyroute-agent is keyroute's host agent. It reads one YAML config
// (see configs/agent.yaml); flags override it.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/keyroute/keyroute/agent"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "keyroute-agent:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	fs := flag.NewFlagSet("keyroute-agent", flag.ContinueOnError)
	configPath := fs.String("config", "", "YAML config file (configs/agent.yaml documents every field)")
	check := fs.Bool("check-config", false, "validate the config, print it, and exit")
	adopt := fs.Bool("adopt-cluster-settings", false, "where this config's cluster.pod_cidr, cluster.subnet_bits, cluster.vni, cluster.vxlan_port, cluster.gateway_mac, cache.keys, cache.send_idle, cache.quarantine or cache.pending_timeout differ from the cluster's settings in etcd, take the cluster's (each logged) instead of refusing to start")
	uninstall := fs.Bool("uninstall", false, "undo this host's setup (host IP back to the uplink, bridges and NAT removed, host record removed from etcd if reachable) and exit; stop the agent first")
	// Overrides: each flag, when given, replaces the config file's value.
	var o struct {
		node, uplink, hostIP, etcd, mode, datapath, dbSocket, runDir, apiSocket string
		metrics, stateDir, logLevel, podCIDR, etcdCA, etcdCert, etcdKey         string
		etcdInsecure                                                            bool
	}
	fs.StringVar(&o.node, "node", "", "override node")
	fs.StringVar(&o.uplink, "uplink", "", "override uplink")
	fs.StringVar(&o.hostIP, "host-ip", "", "override host_ip")
	fs.StringVar(&o.etcd, "etcd-endpoints", "", "override etcd.endpoints (comma-separated URLs; \"embedded\" for the embedded server)")
	fs.StringVar(&o.etcdCA, "etcd-ca", "", "override etcd.ca (the cluster CA, ca.crt of keyroutectl pki init)")
	fs.StringVar(&o.etcdCert, "etcd-cert", "", "override etcd.cert (this host's certificate, keyroutectl pki issue)")
	fs.StringVar(&o.etcdKey, "etcd-key", "", "override etcd.key (this host's key)")
	fs.BoolVar(&o.etcdInsecure, "etcd-insecure", false, "override etcd.insecure (allow plaintext etcd on non-loopback addresses; warns at every start)")
	fs.StringVar(&o.mode, "mode", "", "override mode (tunnel|rewrite)")
	fs.StringVar(&o.datapath, "datapath", "", "override datapath (auto|system|netdev)")
	fs.StringVar(&o.dbSocket, "ovs-db-socket", "", "override ovs.db_socket")
	fs.StringVar(&o.runDir, "ovs-run-dir", "", "override ovs.run_dir")
	fs.StringVar(&o.apiSocket, "api-socket", "", "override api_socket")
	fs.StringVar(&o.metrics, "metrics-addr", "", "override metrics_addr (\"off\" disables)")
	fs.StringVar(&o.stateDir, "state-dir", "", "override state_dir")
	fs.StringVar(&o.logLevel, "log-level", "", "override log_level")
	fs.StringVar(&o.podCIDR, "pod-cidr", "", "override cluster.pod_cidr")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q (all settings are flags or config fields)", fs.Arg(0))
	}
	cfg, err := agent.LoadConfig(*configPath)
	if err != nil {
		return err
	}
	set := func(dst *string, v string) {
		if v != "" {
			*dst = v
		}
	}
	cfg.AdoptClusterSettings = *adopt
	set(&cfg.Node, o.node)
	set(&cfg.Uplink, o.uplink)
	set(&cfg.HostIP, o.hostIP)
	set(&cfg.Mode, o.mode)
	set(&cfg.Datapath, o.datapath)
	set(&cfg.OVS.DBSocket, o.dbSocket)
	set(&cfg.OVS.RunDir, o.runDir)
	set(&cfg.APISocket, o.apiSocket)
	set(&cfg.MetricsAddr, o.metrics)
	set(&cfg.StateDir, o.stateDir)
	set(&cfg.LogLevel, o.logLevel)
	set(&cfg.Cluster.PodCIDR, o.podCIDR)
	set(&cfg.Etcd.CA, o.etcdCA)
	set(&cfg.Etcd.Cert, o.etcdCert)
	set(&cfg.Etcd.Key, o.etcdKey)
	fs.Visit(func(f *flag.Flag) {
		if f.Name == "etcd-insecure" { // given, even as =false
			cfg.Etcd.Insecure = o.etcdInsecure
		}
	})
	if o.metrics == "off" {
		cfg.MetricsAddr = ""
	}
	switch o.etcd {
	case "":
	case "embedded":
		cfg.Etcd.Endpoints = nil
	default:
		cfg.Etcd.Endpoints = strings.Split(o.etcd, ",")
	}
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("invalid configuration:\n%w", err)
	}
	if *check {
		if w := cfg.InsecureWarning(orDefault(cfg.HostIP, "<host_ip>")); w != "" {
			fmt.Fprintln(os.Stderr, "warning:", w)
		}
		fmt.Printf("%+v\n", cfg)
		return nil
	}
	var level slog.Level
	level.UnmarshalText([]byte(cfg.LogLevel))
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	if *uninstall {
		return agent.Uninstall(context.Background(), cfg, log)
	}
	a, err := agent.New(cfg, log)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return a.Run(ctx)
}

func orDefault(v, def string) string {
	if v == "" {
		return def
	}
	return v
}
