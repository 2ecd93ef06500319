// Command keyroutectl inspects and drives the keyroute agent on this host
// through its local API socket.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"os/signal"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/keyroute/keyroute/api"
	"github.com/keyroute/keyroute/internal/version"
)

// defaultSocket matches the agent's default api_socket.
const defaultSocket = "/run/keyroute/agent.sock"

type globals struct {
	socket  string
	output  string
	timeout time.Duration
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := newRoot().ExecuteContext(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "keyroutectl:", err)
		os.Exit(1)
	}
}

func newRoot() *cobra.Command {
	g := &globals{}
	root := &cobra.Command{
		Use:           "keyroutectl",
		Short:         "Inspect and drive the keyroute agent on this host",
		Version:       version.String(),
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			if g.output != "table" && g.output != "json" {
				return fmt.Errorf("--output %q: use table or json", g.output)
			}
			return nil
		},
	}
	root.PersistentFlags().StringVar(&g.socket, "socket", envOr("KEYROUTE_SOCKET", defaultSocket), "agent API socket (env KEYROUTE_SOCKET)")
	root.PersistentFlags().StringVarP(&g.output, "output", "o", "table", "output format: table or json")
	root.PersistentFlags().DurationVar(&g.timeout, "timeout", 0, fmt.Sprintf("how long to wait for the agent's answer (default %s for questions, %s for changes)", api.DefaultReadTimeout, api.DefaultWriteTimeout))
	root.AddCommand(versionCmd(g), statusCmd(g), hostsCmd(g), endpointsCmd(g), flowsCmd(g), keysCmd(g), cacheCmd(g), attachCmd(g), detachCmd(g), ruleCmd(g))
	root.AddCommand(traceCmd(g), diagnoseCmd(g), pkiCmd(g))
	return root
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

func (g *globals) client() *api.Client {
	c := api.NewClient(g.socket)
	if g.timeout > 0 {
		c.ReadTimeout, c.WriteTimeout = g.timeout, g.timeout
	}
	return c
}

func versionCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Show keyroutectl's version and the local agent's",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			v := struct {
				Client string `json:"client"`
				Agent  string `json:"agent,omitempty"`
				Node   string `json:"node,omitempty"`
				Error  string `json:"agent_error,omitempty"`
			}{Client: version.String()}
			s, err := g.client().Status(cmd.Context())
			if err != nil {
				v.Error = err.Error()
			} else {
				v.Agent, v.Node = s.Version, s.Node
			}
			if perr := g.print(cmd.OutOrStdout(), v, func(w *tabwriter.Writer) {
				fmt.Fprintf(w, "keyroutectl:\t%s\n", v.Client)
				if err == nil {
					fmt.Fprintf(w, "agent:\t%s (node %s)\n", v.Agent, v.Node)
				}
			}); perr != nil {
				return perr
			}
			return err
		},
	}
}

// print writes v as JSON, or calls table for humans.
func (g *globals) print(w io.Writer, v any, table func(*tabwriter.Writer)) error {
	if g.output == "json" {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	table(tw)
	return tw.Flush()
}

func statusCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "status",
		Short: "Show this host's agent: node, datapath and port type and why, bridges, etcd, counts",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			s, err := g.client().Status(cmd.Context())
			if err != nil {
				return err
			}
			return g.print(cmd.OutOrStdout(), s, func(w *tabwriter.Writer) {
				fmt.Fprintf(w, "node:\t%s\n", s.Node)
				fmt.Fprintf(w, "version:\t%s\n", s.Version)
				fmt.Fprintf(w, "mode:\t%s\n", s.Mode)
				fmt.Fprintf(w, "host:\t%s (%s)\n", s.HostIP, s.HostMAC)
				fmt.Fprintf(w, "pod subnet:\t%s (gateway %s, MAC %s)\n", s.PodSubnet, s.Gateway, s.GatewayMAC)
				fmt.Fprintf(w, "datapath:\t%s: %s\n", s.Datapath, s.DatapathReason)
				fmt.Fprintf(w, "ports:\t%s\n", s.PortType)
				for _, b := range s.Bridges {
					state := "connected"
					if !b.Connected {
						state = "NOT CONNECTED"
					}
					var ports []string
					for _, p := range b.Ports {
						ps := fmt.Sprintf("%s(%d)", p.Name, p.OFPort)
						if p.Error != "" {
							ps += " error: " + p.Error
						}
						ports = append(ports, ps)
					}
					fmt.Fprintf(w, "bridge %s:\tOpenFlow %s; ports %s\n", b.Name, state, strings.Join(ports, ", "))
				}
				health := "healthy"
				if !s.Etcd.Healthy {
					health = "UNHEALTHY: " + s.Etcd.Error
				}
				kind := "external"
				if s.Etcd.Embedded {
					kind = "embedded"
				}
				fmt.Fprintf(w, "etcd:\t%s %s, %s\n", kind, strings.Join(s.Etcd.Endpoints, ","), health)
				fmt.Fprintf(w, "counts:\t%d hosts, %d local endpoints, %d flows\n", s.Counts.Hosts, s.Counts.Endpoints, s.Counts.Flows)
				if c := s.Cache; c != nil {
					sync := "serving punts"
					if !c.Synced {
						sync = "starting (punts ignored until the start-up reconcile)"
					}
					fmt.Fprintf(w, "cache:\t%s; sender entries %s; %d restore entries; %d keys released\n", sync, kvList(c.States), c.Restores, c.Released)
					if len(c.Repairs) > 0 || len(c.Fallbacks) > 0 {
						fmt.Fprintf(w, "cache repairs:\t%s; fallbacks %s\n", kvList(c.Repairs), kvList(c.Fallbacks))
					}
				}
				for _, d := range s.DSCPPaths {
					use := "keys in use"
					if d.State != "verified" && d.State != "off" {
						use = "pairs stay on VXLAN"
					}
					line := d.State
					if d.Detail != "" {
						line += ": " + d.Detail
					}
					fmt.Fprintf(w, "dscp path to %s:\t%s (%s)\n", d.Peer, line, use)
				}
				fmt.Fprintf(w, "uptime:\t%s\n", s.Uptime)
			})
		},
	}
}

func hostsCmd(g *globals) *cobra.Command {
	c := &cobra.Command{
		Use:   "hosts",
		Short: "List cluster hosts with their agents' state (up/down); hosts remove NAME ends a membership",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			hs, err := g.client().Hosts(cmd.Context())
			if err != nil {
				return err
			}
			if len(hs) > 0 && hs[0].StaleSince != "" && g.output != "json" {
				// To stderr, so scripts reading the table still can, and
				// people see it.
				fmt.Fprintf(cmd.ErrOrStderr(), "STALE: the agent's own view, as of %s (stale since then): %s\n", hs[0].StaleSince, hs[0].StaleReason)
			}
			return g.print(cmd.OutOrStdout(), hs, func(w *tabwriter.Writer) {
				fmt.Fprintln(w, "NAME\tIP\tMAC\tPOD SUBNET\tDATAPATH\tAGENT\tVERSION")
				for _, h := range hs {
					agent := h.Agent
					if h.StaleSince != "" {
						agent += " (stale)"
					}
					fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", h.Name, h.IP, h.MAC, h.PodSubnet, h.Datapath, agent, orDash(h.AgentVersion))
				}
			})
		},
	}
	c.AddCommand(hostsRemoveCmd(g))
	return c
}

func hostsRemoveCmd(g *globals) *cobra.Command {
	var force bool
	c := &cobra.Command{
		Use:   "remove NAME [--force]",
		Short: "End a host's cluster membership: every agent drops its flows and the keys shared with it",
		Long: `Remove a host from the cluster. A host stays a member while its agent is
down (its OVS keeps forwarding), so peers keep its flows and keys through an
agent outage; this command is how a host that is gone for good leaves.
It is refused while the host's agent runs, unless --force. It also releases
the node name (nodes/NAME), so another machine may start with it. On the
host itself, keyroute-agent --uninstall does this too.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := g.client().RemoveHost(cmd.Context(), args[0], force); err != nil {
				return err
			}
			if g.output == "json" {
				fmt.Fprintf(cmd.OutOrStdout(), "{\"removed\":%q}\n", args[0])
				return nil
			}
			fmt.Fprintf(cmd.OutOrStdout(), "removed host %s\n", args[0])
			return nil
		},
	}
	c.Flags().BoolVar(&force, "force", false, "remove the host even while its agent runs")
	return c
}

func endpointsCmd(g *globals) *cobra.Command {
	var all bool
	c := &cobra.Command{
		Use:   "endpoints",
		Short: "List containers attached on this host (--all: the whole cluster)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			es, err := g.client().Endpoints(cmd.Context(), all)
			if err != nil {
				return err
			}
			return g.print(cmd.OutOrStdout(), es, func(w *tabwriter.Writer) {
				fmt.Fprintln(w, "NAME\tIP\tMAC\tHOST\tPORT")
				for _, e := range es {
					fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\n", e.Name, e.IP, e.MAC, e.Host, e.Port)
				}
			})
		},
	}
	c.Flags().BoolVar(&all, "all", false, "list every host's containers")
	return c
}

func flowsCmd(g *globals) *cobra.Command {
	var table string
	c := &cobra.Command{
		Use:   "flows",
		Short: "Show this host's flows grouped by table, with cookie categories in words",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			fs, err := g.client().Flows(cmd.Context(), table)
			if err != nil {
				return err
			}
			// Bridges in the agent's order (the integration bridge first,
			// whatever the names), then tables along the pipeline.
			rank := map[string]int{}
			for _, f := range fs {
				if _, ok := rank[f.Bridge]; !ok {
					rank[f.Bridge] = len(rank)
				}
			}
			sort.SliceStable(fs, func(i, j int) bool {
				if fs[i].Bridge != fs[j].Bridge {
					return rank[fs[i].Bridge] < rank[fs[j].Bridge]
				}
				if fs[i].Table != fs[j].Table {
					return fs[i].Table < fs[j].Table
				}
				return fs[i].Priority > fs[j].Priority
			})
			return g.print(cmd.OutOrStdout(), fs, func(w *tabwriter.Writer) {
				last := ""
				for _, f := range fs {
					head := f.Bridge + " " + f.TableName
					if head != last {
						fmt.Fprintf(w, "\n%s (table %d)\n", head, f.Table)
						fmt.Fprintln(w, "  PRIO\tCATEGORY\tPACKETS\tMATCH\tACTIONS")
						last = head
					}
					fmt.Fprintf(w, "  %d\t%s\t%d\t%s\t%s\n", f.Priority, f.Category, f.Packets, f.Match, f.Actions)
				}
			})
		},
	}
	c.Flags().StringVar(&table, "table", "", "only this table (name such as Forward, or number)")
	return c
}

func attachCmd(g *globals) *cobra.Command {
	var r api.AttachRequest
	c := &cobra.Command{
		Use:   "attach (--netns NAME|PATH --name NAME | --port IFNAME [--name NAME]) [--ip IP] [--mac MAC]",
		Short: "Connect a network namespace, or an existing interface such as a VM's tap, to the overlay",
		Long: "With --netns the agent makes a veth into the namespace and configures its eth0.\n" +
			"With --port it takes an interface that already exists on the host (a VM's tap, a veth end)\n" +
			"as it is: --mac is the VM's own MAC, and detach gives the interface back as it was.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			switch {
			case r.NetNS != "" && r.Port != "":
				return errors.New("attach takes --netns or --port, not both")
			case r.NetNS != "" && r.Name == "":
				return errors.New("attach --netns needs --name")
			case r.NetNS == "" && r.Port == "":
				return errors.New("attach needs --netns (and --name) or --port")
			}
			e, err := g.client().Attach(cmd.Context(), r)
			if err != nil {
				return err
			}
			return g.print(cmd.OutOrStdout(), e, func(w *tabwriter.Writer) {
				fmt.Fprintf(w, "attached %s: ip %s, mac %s, port %s on %s\n", e.Name, e.IP, e.MAC, e.Port, e.Host)
			})
		},
	}
	c.Flags().StringVar(&r.NetNS, "netns", "", "network namespace name (ip netns) or path")
	c.Flags().StringVar(&r.Name, "name", "", "container name, unique on this host (with --port, default: the port's name)")
	c.Flags().StringVar(&r.Port, "port", "", "existing interface of this host to attach as it is (a VM's tap, a veth end)")
	c.Flags().StringVar(&r.IP, "ip", "", "IP address (default: next free in this host's pod subnet)")
	c.Flags().StringVar(&r.MAC, "mac", "", "the endpoint's MAC, e.g. the VM's NIC (default: random, locally administered)")
	return c
}

func detachCmd(g *globals) *cobra.Command {
	var r api.DetachRequest
	c := &cobra.Command{
		Use:   "detach --name NAME",
		Short: "Disconnect a container and release its IP",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if r.Name == "" {
				return errors.New("detach needs --name")
			}
			if err := g.client().Detach(cmd.Context(), r); err != nil {
				return err
			}
			if g.output == "json" {
				fmt.Fprintln(cmd.OutOrStdout(), `{"detached":`+fmt.Sprintf("%q", r.Name)+`}`)
				return nil
			}
			fmt.Fprintf(cmd.OutOrStdout(), "detached %s\n", r.Name)
			return nil
		},
	}
	c.Flags().StringVar(&r.Name, "name", "", "container name")
	return c
}

func keysCmd(g *globals) *cobra.Command {
	return listCmd(g, "keys", "List cache key allocations cluster-wide: pair, key, state, age, rate (rewrite mode)", (*api.Client).Keys,
		"SRC HOST\tDST HOST\tKEY\tSRC\tDST\tSTATE\tAGE\tRATE", func(k api.Key) string {
			return fmt.Sprintf("%s\t%s\t%s\t%s\t%s\t%s\t%ds\t%s", k.SrcHost, k.DstHost, keyText(k.KeySrc, k.KeyDst, k.Key), k.Src, k.Dst, k.State, k.AgeSec, rate(k))
		})
}

// rate prints a pair's traffic as its sender measured it; "-" where this
// agent is not the sender and so does not know it.
// keyText shows a key as its address pair and DSCP,
// "198.18.0.1>198.18.0.2/5"; "-" for none.
func keyText(src, dst string, dscp uint8) string {
	if dscp == 0 {
		return "-"
	}
	if src == "" || dst == "" {
		return strconv.Itoa(int(dscp))
	}
	return fmt.Sprintf("%s>%s/%d", src, dst, dscp)
}

func rate(k api.Key) string {
	if k.RateBps == 0 {
		return "-"
	}
	return humanRate(k.RateBps)
}

// humanRate prints bytes/s in B/s, kB/s, MB/s or GB/s.
func humanRate(bps float64) string {
	for _, u := range []string{"B/s", "kB/s", "MB/s"} {
		if bps < 1000 {
			return fmt.Sprintf("%.3g %s", bps, u)
		}
		bps /= 1000
	}
	return fmt.Sprintf("%.3g GB/s", bps)
}

func cacheCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "cache",
		Short: "List this host's EgressCache and Restore entries with packet/byte counters (rewrite mode)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			es, err := g.client().Cache(cmd.Context())
			if err != nil {
				return err
			}
			return g.print(cmd.OutOrStdout(), es, func(w *tabwriter.Writer) {
				fmt.Fprintln(w, "SIDE\tPEER\tKEY\tSRC\tDST\tSTATE\tPACKETS\tBYTES\tIDLE")
				for _, e := range es {
					// Restore entries and held keys have no idle timeout.
					idle := "-"
					if e.IdleTimeout > 0 {
						idle = fmt.Sprintf("%ds", e.IdleTimeout)
					}
					fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%d\t%d\t%s\n", e.Side, e.Peer, keyText(e.KeySrc, e.KeyDst, e.Key), e.Src, e.Dst, e.State, e.Packets, e.Bytes, idle)
				}
			})
		},
	}
}

// kvList prints a count map sorted by key, "none" when empty.
func kvList[V int | uint64](m map[string]V) string {
	if len(m) == 0 {
		return "none"
	}
	parts := make([]string, 0, len(m))
	for _, k := range slices.Sorted(maps.Keys(m)) {
		parts = append(parts, fmt.Sprintf("%s %d", k, m[k]))
	}
	return strings.Join(parts, ", ")
}

// listCmd is a command without arguments that lists what get returns:
// with -o json or yaml as it is, else as a table of header and one row
// per item.
func listCmd[T any](g *globals, use, short string, get func(*api.Client, context.Context) ([]T, error), header string, row func(T) string) *cobra.Command {
	return &cobra.Command{
		Use:   use,
		Short: short,
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			items, err := get(g.client(), cmd.Context())
			if err != nil {
				return err
			}
			return g.print(cmd.OutOrStdout(), items, func(w *tabwriter.Writer) {
				fmt.Fprintln(w, header)
				for _, it := range items {
					fmt.Fprintln(w, row(it))
				}
			})
		},
	}
}
