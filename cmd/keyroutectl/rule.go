package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/keyroute/keyroute/api"
	"github.com/keyroute/keyroute/rules"
)

// ruleCmd is `keyroutectl rule`: cluster-wide network rules, stored in
// etcd through the local agent.
func ruleCmd(g *globals) *cobra.Command {
	c := &cobra.Command{
		Use:   "rule",
		Short: "Manage network rules (cluster-wide ACLs and rate limits): add, list, show, delete, stats",
	}
	c.AddCommand(ruleAddCmd(g), ruleListCmd(g), ruleShowCmd(g), ruleDeleteCmd(g), ruleStatsCmd(g))
	return c
}

// ruleFlags are add's flags; selectors and rates are parsed in build.
type ruleFlags struct {
	file                        string
	replace                     bool
	local, remote, ports, proto string
	icmpType                    int
	pps, kbps, burst            uint32
}

func ruleAddCmd(g *globals) *cobra.Command {
	var f ruleFlags
	var r rules.Rule
	c := &cobra.Command{
		Use:   "add --id ID --direction egress|ingress --action allow|deny|rate-limit [flags] | add -f FILE",
		Short: "Add a rule (validated; nothing is written if it is invalid or the id is taken)",
		Long: `Add a rule. Selectors (--local: the containers on each host the rule applies to,
--remote: the other end) take "any", a CIDR ("198.19.0.0/16", "cidr:..."), or a
container name glob ("web-*", "name:..."). --ports is a destination port or range
(tcp/udp). Rate limits take --pps or --kbps, with --burst in packets or kbit.
With -f, the rule is read as JSON from FILE ("-": stdin); unknown fields are errors.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			rule, err := f.build(cmd, r)
			if err != nil {
				return err
			}
			out, err := g.client().AddRule(cmd.Context(), rule, f.replace)
			if err != nil {
				return err
			}
			return g.print(cmd.OutOrStdout(), out, func(w *tabwriter.Writer) {
				fmt.Fprintf(w, "rule %s stored: %s (priority %d)\n", out.ID, out.Summary(), out.Priority)
			})
		},
	}
	fl := c.Flags()
	fl.StringVarP(&f.file, "file", "f", "", "read the rule as JSON from this file (- for stdin)")
	fl.BoolVar(&f.replace, "replace", false, "overwrite an existing rule with the same id")
	fl.StringVar(&r.ID, "id", "", "rule id (letters, digits, . _ -)")
	fl.IntVar(&r.Priority, "priority", rules.DefaultPriority, fmt.Sprintf("priority %d..%d; higher wins, at equal priority deny > rate-limit > allow", rules.MinPriority, rules.MaxPriority))
	fl.StringVar((*string)(&r.Direction), "direction", "", "egress (sent by the local containers) or ingress (addressed to them)")
	fl.StringVar(&f.local, "local", "any", "local side: any, CIDR or container name glob")
	fl.StringVar(&f.remote, "remote", "any", "remote side: any, CIDR or container name glob")
	fl.StringVar(&f.proto, "proto", "any", "tcp, udp, icmp or any")
	fl.StringVar(&f.ports, "ports", "", "destination port or range LO-HI (tcp, udp)")
	fl.IntVar(&f.icmpType, "icmp-type", -1, "ICMP type (icmp only)")
	fl.StringVar((*string)(&r.Action), "action", "", "allow, deny or rate-limit")
	fl.Uint32Var(&f.pps, "pps", 0, "rate limit in packets per second")
	fl.Uint32Var(&f.kbps, "kbps", 0, "rate limit in kilobits per second")
	fl.Uint32Var(&f.burst, "burst", 0, "burst in packets (--pps) or kbit (--kbps); default half a second's worth")
	return c
}

// build makes the rule from -f or from the flags, and validates it.
func (f *ruleFlags) build(cmd *cobra.Command, r rules.Rule) (rules.Rule, error) {
	if f.file != "" {
		for _, n := range []string{"id", "priority", "direction", "local", "remote", "proto", "ports", "icmp-type", "action", "pps", "kbps", "burst"} {
			if cmd.Flags().Changed(n) {
				return rules.Rule{}, fmt.Errorf("--%s cannot be combined with -f: put it in the JSON", n)
			}
		}
		var b []byte
		var err error
		if f.file == "-" {
			b, err = io.ReadAll(cmd.InOrStdin())
		} else {
			b, err = os.ReadFile(f.file)
		}
		if err != nil {
			return rules.Rule{}, fmt.Errorf("read rule: %w", err)
		}
		return rules.Parse(b)
	}
	if r.ID == "" || r.Direction == "" || r.Action == "" {
		return rules.Rule{}, errors.New("rule add needs --id, --direction and --action (or -f FILE)")
	}
	var err error
	if r.Local, err = rules.ParseSelector(f.local); err != nil {
		return rules.Rule{}, fmt.Errorf("--local %q: %w", f.local, err)
	}
	if r.Remote, err = rules.ParseSelector(f.remote); err != nil {
		return rules.Rule{}, fmt.Errorf("--remote %q: %w", f.remote, err)
	}
	r.Protocol, r.Ports = rules.Protocol(strings.ToLower(f.proto)), f.ports
	if f.icmpType >= 0 {
		if f.icmpType > 255 {
			return rules.Rule{}, fmt.Errorf("--icmp-type %d: want 0..255", f.icmpType)
		}
		t := uint8(f.icmpType)
		r.ICMPType = &t
	}
	if f.pps != 0 || f.kbps != 0 || f.burst != 0 {
		r.Rate = &rules.Rate{PPS: f.pps, Kbps: f.kbps, Burst: f.burst}
	}
	r.Normalize()
	return r, r.Validate()
}

func ruleListCmd(g *globals) *cobra.Command {
	return listCmd(g, "list", "List the cluster's rules", (*api.Client).Rules,
		"ID\tPRIO\tDIRECTION\tACTION\tLOCAL\tREMOTE\tPROTO\tPORTS\tRATE", func(r rules.Rule) string {
			ports, rate := r.Ports, ""
			if r.ICMPType != nil {
				ports = fmt.Sprintf("type %d", *r.ICMPType)
			}
			if r.Rate != nil {
				rate = r.Rate.String()
			}
			return fmt.Sprintf("%s\t%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s", r.ID, r.Priority, r.Direction, r.Action, r.Local, r.Remote, r.Protocol, orDash(ports), orDash(rate))
		})
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func ruleShowCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "show ID",
		Short: "Show one rule",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			r, err := g.client().Rule(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			return g.print(cmd.OutOrStdout(), r, func(w *tabwriter.Writer) {
				fmt.Fprintf(w, "id:\t%s\n", r.ID)
				fmt.Fprintf(w, "priority:\t%d\n", r.Priority)
				fmt.Fprintf(w, "rule:\t%s\n", r.Summary())
			})
		},
	}
}

func ruleDeleteCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "delete ID",
		Short: "Delete a rule",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := g.client().DeleteRule(cmd.Context(), args[0]); err != nil {
				return err
			}
			if g.output == "json" {
				fmt.Fprintf(cmd.OutOrStdout(), "{\"deleted\":%q}\n", args[0])
				return nil
			}
			fmt.Fprintf(cmd.OutOrStdout(), "deleted rule %s\n", args[0])
			return nil
		},
	}
}

func ruleStatsCmd(g *globals) *cobra.Command {
	return listCmd(g, "stats", "Show this host's packets/bytes matched per rule (flow stats) and meter drops (rate limits)", (*api.Client).RuleStats,
		"ID\tDIRECTION\tACTION\tFLOWS\tPACKETS\tBYTES\tMETER IN\tDROPPED\tNOTE", func(s api.RuleStats) string {
			meterIn, dropped := "-", "-"
			if s.Meter != 0 {
				meterIn, dropped = fmt.Sprint(s.MeterPackets), fmt.Sprint(s.DroppedPackets)
			}
			return fmt.Sprintf("%s\t%s\t%s\t%d\t%d\t%d\t%s\t%s\t%s", s.ID, s.Direction, s.Action, s.Flows, s.Packets, s.Bytes, meterIn, dropped, s.Note)
		})
}
