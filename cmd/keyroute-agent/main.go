// Command keyroute-agent is keyroute's host agent. It reads one YAML config
// (see configs/agent.yaml); flags override it.
package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/coreos/go-systemd/v22/daemon"
	"github.com/spf13/cobra"

	"github.com/keyroute/keyroute/agent"
	"github.com/keyroute/keyroute/internal/version"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "keyroute-agent:", err)
		os.Exit(1)
	}
}

// overrides are the flags that replace config fields when given.
type overrides struct {
	node, uplink, hostIP, etcd, mode, datapath, dbSocket, runDir, apiSocket   string
	metrics, stateDir, logLevel, podCIDR, etcdCA, etcdCert, etcdKey, portType string
	etcdInsecure                                                              bool
}

func run(args []string) error {
	cmd := newRoot()
	cmd.SetArgs(args)
	return cmd.Execute()
}

func newRoot() *cobra.Command {
	var (
		configPath              string
		check, adopt, uninstall bool
		o                       overrides
	)
	root := &cobra.Command{
		Use:   "keyroute-agent [--config FILE] [flags]",
		Short: "keyroute's host agent: sets up br-int and br-phy, registers the host in etcd, attaches containers",
		Long: `keyroute-agent is keyroute's host agent. It reads one YAML config
(--config; configs/agent.yaml documents every field) and each flag below,
when given, overrides the config's field. It runs until SIGTERM or SIGINT;
the dataplane keeps forwarding while it is stopped. Under systemd
(Type=notify) it reports READY=1 once its API socket serves.`,
		Version:       version.String(),
		Args:          cobra.NoArgs,
		SilenceUsage:  true,
		SilenceErrors: true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := agent.LoadConfig(configPath)
			if err != nil {
				return err
			}
			o.apply(&cfg, cmd)
			cfg.AdoptClusterSettings = adopt
			if err := cfg.Validate(); err != nil {
				return fmt.Errorf("invalid configuration:\n%w", err)
			}
			if check {
				if w := cfg.InsecureWarning(orDefault(cfg.HostIP, "<host_ip>")); w != "" {
					fmt.Fprintln(cmd.ErrOrStderr(), "warning:", w)
				}
				fmt.Fprintf(cmd.OutOrStdout(), "%+v\n", cfg)
				return nil
			}
			var level slog.Level
			level.UnmarshalText([]byte(cfg.LogLevel))
			log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
			if uninstall {
				return agent.Uninstall(context.Background(), cfg, log)
			}
			return serve(cfg, log)
		},
	}
	root.SetVersionTemplate("keyroute-agent {{.Version}}\n")
	f := root.Flags()
	f.SortFlags = false
	f.StringVar(&configPath, "config", "", "YAML config file (configs/agent.yaml documents every field)")
	f.BoolVar(&check, "check-config", false, "validate the config, print it, and exit")
	f.BoolVar(&adopt, "adopt-cluster-settings", false, "where this config's cluster.pod_cidr, cluster.subnet_bits, cluster.vni, cluster.vxlan_port, cluster.gateway_mac, cache.keys, cache.send_idle, cache.quarantine or cache.pending_timeout differ from the cluster's settings in etcd, take the cluster's (each logged) instead of refusing to start")
	f.BoolVar(&uninstall, "uninstall", false, "undo this host's setup (host IP back to the uplink, bridges and NAT removed, host record removed from etcd if reachable) and exit; stop the agent first")
	f.StringVar(&o.node, "node", "", "override node")
	f.StringVar(&o.uplink, "uplink", "", "override uplink")
	f.StringVar(&o.hostIP, "host-ip", "", "override host_ip")
	f.StringVar(&o.etcd, "etcd-endpoints", "", "override etcd.endpoints (comma-separated URLs; \"embedded\" for the embedded server)")
	f.StringVar(&o.etcdCA, "etcd-ca", "", "override etcd.ca (the cluster CA, ca.crt of keyroutectl pki init)")
	f.StringVar(&o.etcdCert, "etcd-cert", "", "override etcd.cert (this host's certificate, keyroutectl pki issue)")
	f.StringVar(&o.etcdKey, "etcd-key", "", "override etcd.key (this host's key)")
	f.BoolVar(&o.etcdInsecure, "etcd-insecure", false, "override etcd.insecure (allow plaintext etcd on non-loopback addresses; warns at every start)")
	f.StringVar(&o.mode, "mode", "", "override mode (tunnel|rewrite)")
	f.StringVar(&o.datapath, "datapath", "", "override datapath (auto|system|netdev)")
	f.StringVar(&o.portType, "port-type", "", "override ovs.port_type (auto|system|afxdp)")
	f.StringVar(&o.dbSocket, "ovs-db-socket", "", "override ovs.db_socket")
	f.StringVar(&o.runDir, "ovs-run-dir", "", "override ovs.run_dir")
	f.StringVar(&o.apiSocket, "api-socket", "", "override api_socket")
	f.StringVar(&o.metrics, "metrics-addr", "", "override metrics_addr (\"off\" disables)")
	f.StringVar(&o.stateDir, "state-dir", "", "override state_dir")
	f.StringVar(&o.logLevel, "log-level", "", "override log_level")
	f.StringVar(&o.podCIDR, "pod-cidr", "", "override cluster.pod_cidr")
	return root
}

// apply writes the given flags over cfg.
func (o overrides) apply(cfg *agent.Config, cmd *cobra.Command) {
	set := func(dst *string, v string) {
		if v != "" {
			*dst = v
		}
	}
	set(&cfg.Node, o.node)
	set(&cfg.Uplink, o.uplink)
	set(&cfg.HostIP, o.hostIP)
	set(&cfg.Mode, o.mode)
	set(&cfg.Datapath, o.datapath)
	set(&cfg.OVS.PortType, o.portType)
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
	if cmd.Flags().Changed("etcd-insecure") { // given, even as =false
		cfg.Etcd.Insecure = o.etcdInsecure
	}
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
}

// serve runs the agent until SIGTERM/SIGINT and tells systemd (when
// NOTIFY_SOCKET is set) READY=1 once the agent serves and STOPPING=1 when a
// signal arrives. Without NOTIFY_SOCKET the notifications are no-ops.
func serve(cfg agent.Config, log *slog.Logger) error {
	a, err := agent.New(cfg, log)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	go func() {
		select {
		case <-a.Ready():
			if _, err := daemon.SdNotify(false, daemon.SdNotifyReady); err != nil {
				log.Warn("tell systemd the agent is ready", "err", err)
			}
		case <-ctx.Done():
			return
		}
		<-ctx.Done()
		daemon.SdNotify(false, daemon.SdNotifyStopping)
	}()
	return a.Run(ctx)
}

func orDefault(v, def string) string {
	if v == "" {
		return def
	}
	return v
}
