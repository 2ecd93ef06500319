package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"gopkg.in/yaml.v3"

	"github.com/keyroute/keyroute/api"
	"github.com/keyroute/keyroute/fabric"
	"github.com/keyroute/keyroute/trace"
)

// pathFlags are the flags trace and diagnose share: how to reach every
// host's agent, and the fabric model.
type pathFlags struct {
	agents    []string
	hostsFile string
	fabric    string
	sport     uint16
	remote    remoteFlags
}

func (f *pathFlags) add(c *cobra.Command) {
	// Persistent, so diagnose's subcommands take them too.
	fl := c.PersistentFlags()
	fl.StringArrayVar(&f.agents, "agents", nil, "another host's agent API socket as NODE=SOCKET (repeatable); the --socket agent is always used")
	fl.StringVar(&f.hostsFile, "hosts-file", envOr("KEYROUTE_HOSTS_FILE", ""), "YAML map of node name to agent API socket (env KEYROUTE_HOSTS_FILE)")
	fl.StringVar(&f.fabric, "fabric", envOr("KEYROUTE_FABRIC", ""), "fabric model YAML, e.g. configs/fabric.yaml (env KEYROUTE_FABRIC)")
	fl.Uint16Var(&f.sport, "sport", 0, "source port of the traced packet (tcp/udp; default 40000)")
	f.remote.add(c)
}

// env builds the agents map: --hosts-file, then --agents, then the
// --socket agent under its own node name, then every other host's TCP API
// from its host record.
func (f *pathFlags) env(ctx context.Context, g *globals, warn io.Writer) (trace.Env, error) {
	e := trace.Env{Agents: map[string]*api.Client{}}
	if f.hostsFile != "" {
		b, err := os.ReadFile(f.hostsFile)
		if err != nil {
			return e, fmt.Errorf("--hosts-file: %w", err)
		}
		var m map[string]string
		if err := yaml.Unmarshal(b, &m); err != nil {
			return e, fmt.Errorf("--hosts-file %s: want a map of node name to socket path: %w", f.hostsFile, err)
		}
		for n, s := range m {
			e.Agents[n] = api.NewClient(s)
		}
	}
	for _, a := range f.agents {
		n, s, ok := strings.Cut(a, "=")
		if !ok || n == "" || s == "" {
			return e, fmt.Errorf("--agents %q: use NODE=SOCKET", a)
		}
		e.Agents[n] = api.NewClient(s)
	}
	if st, err := g.client().Status(ctx); err == nil {
		e.Agents[st.Node] = g.client()
		f.remote.addRemoteAgents(ctx, e, g.client(), st.Node, warn)
	} else if len(e.Agents) == 0 {
		return e, err
	}
	if f.fabric != "" {
		m, err := fabric.Load(f.fabric)
		if err != nil {
			return e, err
		}
		e.Fabric = m
	}
	return e, nil
}

// prepare reads a trace or diagnose command's request and reaches its
// agents.
func (f *pathFlags) prepare(cmd *cobra.Command, g *globals, args []string) (trace.Request, trace.Env, error) {
	r, err := f.request(args)
	if err != nil {
		return r, trace.Env{}, err
	}
	e, err := f.env(cmd.Context(), g, cmd.ErrOrStderr())
	return r, e, err
}

func (f *pathFlags) request(args []string) (trace.Request, error) {
	r := trace.Request{Src: args[0], Dst: args[1], Proto: fabric.ProtoUDP, SPort: 40000, DPort: 33434}
	if len(args) == 3 {
		p, port, err := trace.ParseProto(args[2])
		if err != nil {
			return r, err
		}
		r.Proto = p
		if port != 0 {
			r.DPort = port
		}
	}
	if f.sport != 0 {
		r.SPort = f.sport
	}
	if r.Proto == fabric.ProtoICMP {
		r.SPort, r.DPort = 0, 0
	}
	return r, nil
}

func traceCmd(g *globals) *cobra.Command {
	var f pathFlags
	c := &cobra.Command{
		Use:   "trace SRC DST [tcp|udp|icmp[/PORT]]",
		Short: "Follow a flow's whole path: source host tables, the header the fabric sees, fabric hops, destination host tables",
		Long: `trace follows one packet from SRC to DST (container names, host/name,
container or host IPs; DST may be an outside IP). It runs ovs-appctl
ofproto/trace on the source host's bridges through its agent, shows how the
packet leaves (fast path with its key, VXLAN with its VNI and outer header,
dropped and by which flow), computes the fabric hops from the fabric model,
and traces the destination host's bridges through that host's agent.

Other hosts' agents are reached at the TCP API their host records publish
(agent setting api_listen), with mutual TLS: keyroutectl presents the
certificate in --pki-dir (default /etc/keyroute/pki, the agent's) named
after the local node (or --cert). --agents NODE=SOCKET or a --hosts-file
(YAML: "h2: /run/keyroute/h2.sock") override that per host.`,
		Args: cobra.RangeArgs(2, 3),
		RunE: func(cmd *cobra.Command, args []string) error {
			r, e, err := f.prepare(cmd, g, args)
			if err != nil {
				return err
			}
			res, err := trace.Trace(cmd.Context(), e, r)
			if err != nil {
				return err
			}
			return g.print(cmd.OutOrStdout(), res, func(w *tabwriter.Writer) { printTrace(w, res) })
		},
	}
	f.add(c)
	return c
}

func printOFTrace(w io.Writer, t *api.OFTrace) {
	for i, s := range t.Steps {
		mark := " "
		if i == t.DropStep {
			mark = "X"
		}
		fmt.Fprintf(w, "  %s %s %-12s\tprio %d\t%s\t%s\n", mark, s.Bridge, s.TableName, s.Priority, s.Category, s.Match)
		fmt.Fprintf(w, "      \t\t\t-> %s\n", strings.Join(s.Actions, " "))
		for _, n := range s.Notes {
			fmt.Fprintf(w, "      \t\t\t   %s\n", n)
		}
	}
	fmt.Fprintf(w, "  datapath actions: %s\n", t.DatapathActions)
}

func printTrace(w *tabwriter.Writer, r trace.Result) {
	fmt.Fprintf(w, "trace %s %s (%s) -> %s %s (%s), %s sport %d dport %d\n", r.Src.Kind, r.Request.Src, r.Src.IP, r.Dst.Kind, r.Request.Dst, r.Dst.IP,
		fabric.ProtoName(r.Request.Proto), r.Request.SPort, r.Request.DPort)
	fmt.Fprintf(w, "\n1. source host %s\n", r.Src.Host)
	if r.Source != nil {
		printOFTrace(w, r.Source)
	} else {
		fmt.Fprintf(w, "  not traced: %s\n", r.SourceError)
	}
	fmt.Fprintf(w, "  leaves as: %s\n", r.Path)
	fmt.Fprintf(w, "\n2. header on the fabric\n")
	if r.Wire == nil {
		fmt.Fprintf(w, "  none: the packet does not reach the fabric\n")
	} else {
		wt := r.Wire
		sport := fmt.Sprint(wt.Tuple.SPort)
		if wt.SportUnknown {
			sport = "(OVS hash)"
		}
		fmt.Fprintf(w, "  %s: %s %s:%s > %s:%d dscp %d", wt.Kind, fabric.ProtoName(wt.Tuple.Proto), wt.Tuple.Src, sport, wt.Tuple.Dst, wt.Tuple.DPort, wt.DSCP)
		if wt.VNI != 0 {
			fmt.Fprintf(w, " vni 0x%x", wt.VNI)
		}
		if wt.Key != 0 {
			fmt.Fprintf(w, " key %d", wt.Key)
		}
		fmt.Fprintln(w)
		if wt.Note != "" {
			fmt.Fprintf(w, "  note: %s\n", wt.Note)
		}
		fmt.Fprintf(w, "\n3. fabric hops\n")
		if r.FabricError != "" {
			fmt.Fprintf(w, "  %s\n", r.FabricError)
		}
		for _, sp := range r.Fabric {
			if len(r.Fabric) > 1 || wt.SportUnknown {
				fmt.Fprintf(w, "  path %s: %.1f%% of source ports (e.g. %d)\n", sp.Path, 100*sp.Share, sp.ExampleSport)
			}
			for _, h := range sp.Path.Hops {
				fmt.Fprintf(w, "  %s (%s)\tin %s\tout %s\t-> %s", h.Device, h.Tier, h.InPort, h.OutPort, h.Next)
				if h.ECMP != nil {
					fmt.Fprintf(w, "\tecmp %s over %s: hash 0x%08x, member %d of %v", h.ECMP.Function, strings.Join(h.ECMP.Fields, ","), h.ECMP.Hash, h.ECMP.Index, h.ECMP.Members)
				}
				fmt.Fprintln(w)
			}
		}
		fmt.Fprintf(w, "\n4. destination host\n")
		switch {
		case r.Dest != nil:
			printOFTrace(w, r.Dest)
		case r.DestError != "":
			fmt.Fprintf(w, "  not traced: %s\n", r.DestError)
		default:
			fmt.Fprintf(w, "  none\n")
		}
	}
	fmt.Fprintf(w, "\nverdict: %s\n", r.Verdict)
}

func diagnoseCmd(g *globals) *cobra.Command {
	var f pathFlags
	var probes int
	var wait time.Duration
	var noSave, capture bool
	c := &cobra.Command{
		Use:   "diagnose SRC DST [tcp|udp|icmp[/PORT]]",
		Short: "Find which hop of a flow's path is at fault: counters under bounded probes, health, verdict (kept in etcd)",
		Long: `diagnose traces the flow (see trace), checks each host's health (membership,
agent liveness, OpenFlow/OVSDB connections, ports, errors), sends --probes test
packets into the source container's pipeline (packet-out, DSCP 0) and reads
the counters of the flow each node uses: the first node whose count stops
rising is the suspect. Fabric devices are counted when the fabric model says
how to reach their OVS. The result is stored in etcd under
<prefix>diagnoses/ (see diagnose list and diagnose stats). With --capture,
the destination host's agent runs tcpdump on its uplink for the probes.`,
		Args: cobra.RangeArgs(2, 3),
		RunE: func(cmd *cobra.Command, args []string) error {
			r, e, err := f.prepare(cmd, g, args)
			if err != nil {
				return err
			}
			d, _, err := trace.Diagnose(cmd.Context(), e, r, trace.DiagnoseOptions{Probes: probes, Wait: wait, Capture: capture})
			if err != nil {
				return err
			}
			if !noSave {
				saved, err := saveDiagnosis(cmd.Context(), g.client(), e, d)
				if err != nil {
					fmt.Fprintln(cmd.ErrOrStderr(), "keyroutectl: diagnosis not stored:", err)
				} else {
					d = saved
				}
			}
			return g.print(cmd.OutOrStdout(), d, func(w *tabwriter.Writer) { printDiagnosis(w, d) })
		},
	}
	f.add(c)
	c.Flags().IntVar(&probes, "probes", 50, "test packets to send (at most 1000)")
	c.Flags().DurationVar(&wait, "wait", 3*time.Second, "how long counters may take to show the probes")
	c.Flags().BoolVar(&noSave, "no-save", false, "do not store the diagnosis in etcd")
	c.Flags().BoolVar(&capture, "capture", false, "also capture the probes (tcpdump) on the destination host's uplink")
	c.AddCommand(diagnoseListCmd(g), diagnoseStatsCmd(g))
	return c
}

// saveDiagnosis stores d through the local agent, else the first other
// agent that takes it; each try is bounded, as the fault being diagnosed
// may be what cuts an agent off from etcd.
func saveDiagnosis(ctx context.Context, local *api.Client, e trace.Env, d api.Diagnosis) (api.Diagnosis, error) {
	clients := []*api.Client{local}
	for _, c := range e.Agents {
		// Other hosts' TCP APIs do not store diagnoses: that writes etcd.
		if c.Socket != "" && c.Socket != local.Socket {
			clients = append(clients, c)
		}
	}
	var errs []error
	for _, c := range clients {
		sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		saved, err := c.SaveDiagnosis(sctx, d)
		cancel()
		if err == nil {
			return saved, nil
		}
		errs = append(errs, fmt.Errorf("%s: %w", c.Socket, err))
	}
	return d, errors.Join(errs...)
}

func printDiagnosis(w *tabwriter.Writer, d api.Diagnosis) {
	fmt.Fprintf(w, "diagnosis %s: %s -> %s %s sport %d dport %d, %d probes\n", d.ID, d.Src, d.Dst, d.Proto, d.SPort, d.DPort, d.Probes)
	fmt.Fprintln(w, "NODE\tKIND\tDELTA\tPASSED\tPOINT\tHEALTH / NOTE")
	for _, c := range d.Checks {
		h := strings.Join(c.Health, "; ")
		if h == "" {
			h = "ok"
		}
		if c.Note != "" {
			h += " (" + c.Note + ")"
		}
		passed := fmt.Sprint(c.Passed)
		if c.Point == "" {
			passed = "-"
		}
		fmt.Fprintf(w, "%s\t%s\t%d\t%s\t%s\t%s\n", c.Node, c.Kind, c.Delta, passed, c.Point, h)
	}
	for _, l := range d.Capture {
		fmt.Fprintf(w, "capture: %s\n", l)
	}
	fmt.Fprintf(w, "verdict: %s\n", d.Verdict)
	if d.Suspect != nil && d.Suspect.Where != "" {
		fmt.Fprintf(w, "where: %s\n", d.Suspect.Where)
	}
}

func diagnoseListCmd(g *globals) *cobra.Command {
	return listCmd(g, "list", "List stored diagnoses, oldest first", (*api.Client).Diagnoses,
		"TIME\tSRC\tDST\tPROTO\tSUSPECT\tVERDICT", func(d api.Diagnosis) string {
			s := "-"
			if d.Suspect != nil {
				s = d.Suspect.Kind + " " + d.Suspect.Node
			}
			return fmt.Sprintf("%s\t%s\t%s\t%s\t%s\t%s", d.Time.Format(time.RFC3339), d.Src, d.Dst, d.Proto, s, d.Verdict)
		})
}

func diagnoseStatsCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "stats",
		Short: "Which nodes stored diagnoses blame, most often first",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ds, err := g.client().Diagnoses(cmd.Context())
			if err != nil {
				return err
			}
			st := trace.Stats(ds)
			return g.print(cmd.OutOrStdout(), st, func(w *tabwriter.Writer) {
				fmt.Fprintf(w, "%d diagnoses\n", len(ds))
				fmt.Fprintln(w, "KIND\tNODE\tCOUNT\tLAST")
				for _, s := range st {
					fmt.Fprintf(w, "%s\t%s\t%d\t%s\n", s.Kind, s.Node, s.Count, s.Last.Format(time.RFC3339))
				}
			})
		},
	}
}
