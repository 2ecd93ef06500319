package main

import (
	"crypto/x509"
	"fmt"
	"net/netip"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/keyroute/keyroute/pki"
)

// defaultPKIDir is where configs/agent.yaml's comments and the README
// put a host's certificates.
const defaultPKIDir = "/etc/keyroute/pki"

// pkiCmd is `keyroutectl pki`: the cluster CA and host certificates that
// authenticate agents to etcd. It works on files only, with no agent.
func pkiCmd(g *globals) *cobra.Command {
	c := &cobra.Command{
		Use:   "pki",
		Short: "Create the cluster CA and per-host certificates for etcd's TLS (init, issue)",
		Long: `Every agent authenticates to etcd with a certificate signed by the cluster CA,
and the embedded etcd serves with it; etcd refuses clients without one.
Run init once, on an admin machine or the first host, then issue one
certificate per host with every address it serves etcd on (its host IP).
Copy ca.crt, <node>.crt and <node>.key to that host and point etcd.ca,
etcd.cert and etcd.key at them. ca.key signs new hosts in: keep it off the
other hosts.`,
	}
	c.AddCommand(pkiInitCmd(g), pkiIssueCmd(g))
	return c
}

type pkiFile struct {
	Path     string    `json:"path"`
	Subject  string    `json:"subject"`
	NotAfter time.Time `json:"not_after"`
	DNS      []string  `json:"dns_sans,omitempty"`
	IPs      []string  `json:"ip_sans,omitempty"`
	Key      string    `json:"key"`
}

func fileOf(c *x509.Certificate, certPath, keyPath string) pkiFile {
	f := pkiFile{Path: certPath, Subject: c.Subject.CommonName, NotAfter: c.NotAfter.UTC(), DNS: c.DNSNames, Key: keyPath}
	for _, ip := range c.IPAddresses {
		f.IPs = append(f.IPs, ip.String())
	}
	return f
}

func pkiInitCmd(g *globals) *cobra.Command {
	var dir string
	var days int
	c := &cobra.Command{
		Use:   "init [--dir DIR]",
		Short: "Create the cluster CA (ca.crt, ca.key) in DIR; refuses if one is there",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if days < 1 {
				return fmt.Errorf("--days %d: want at least 1", days)
			}
			ca, err := pki.InitCA(dir, pki.InitOptions{Validity: time.Duration(days) * 24 * time.Hour})
			if err != nil {
				return err
			}
			f := fileOf(ca, filepath.Join(dir, pki.CACertFile), filepath.Join(dir, pki.CAKeyFile))
			return g.print(cmd.OutOrStdout(), f, func(w *tabwriter.Writer) {
				fmt.Fprintf(w, "created the cluster CA %q, valid until %s\n", f.Subject, f.NotAfter.Format(time.DateOnly))
				fmt.Fprintf(w, "  %s\tcopy to every host (etcd.ca)\n", f.Path)
				fmt.Fprintf(w, "  %s\tkeep here: it signs new hosts in\n", f.Key)
				fmt.Fprintf(w, "next: keyroutectl pki issue <node> --dir %s --ip <its host IP>\n", dir)
			})
		},
	}
	c.Flags().StringVar(&dir, "dir", defaultPKIDir, "directory for the CA (created 0700)")
	c.Flags().IntVar(&days, "days", int(pki.DefaultCAValidity/(24*time.Hour)), "validity in days")
	return c
}

func pkiIssueCmd(g *globals) *cobra.Command {
	var (
		dir   string
		ips   []string
		dns   []string
		days  int
		force bool
	)
	c := &cobra.Command{
		Use:   "issue NODE --ip HOST_IP [--dir DIR]",
		Short: "Sign a certificate for a host (NODE.crt, NODE.key in DIR) with the cluster CA",
		Long: `Sign a certificate for host NODE (its node name) with the CA in DIR, for
serving and for using etcd. Give every address the host serves etcd on
with --ip (the embedded etcd serves on the host IP); the node name,
localhost and 127.0.0.1 are always included. An existing NODE.crt is kept
unless --force. Tools that only read etcd (no --ip) get one the same way.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			node := args[0]
			if days < 1 {
				return fmt.Errorf("--days %d: want at least 1", days)
			}
			o := pki.IssueOptions{DNSNames: dns, Validity: time.Duration(days) * 24 * time.Hour, Force: force}
			for _, s := range ips {
				a, err := netip.ParseAddr(strings.TrimSpace(s))
				if err != nil {
					return fmt.Errorf("--ip %q: not an IP address", s)
				}
				o.IPs = append(o.IPs, a)
			}
			cert, err := pki.Issue(dir, node, o)
			if err != nil {
				return err
			}
			f := fileOf(cert, pki.CertPath(dir, node), pki.KeyPath(dir, node))
			return g.print(cmd.OutOrStdout(), f, func(w *tabwriter.Writer) {
				fmt.Fprintf(w, "issued %s, valid until %s, for %s\n", node, f.NotAfter.Format(time.DateOnly), strings.Join(append(f.DNS, f.IPs...), ", "))
				fmt.Fprintf(w, "copy to %s: %s, %s and %s, then set in its agent config\n", node,
					filepath.Join(dir, pki.CACertFile), f.Path, f.Key)
				fmt.Fprintf(w, "  etcd:\n    ca: %s\n    cert: %s\n    key: %s\n",
					filepath.Join(defaultPKIDir, pki.CACertFile), pki.CertPath(defaultPKIDir, node), pki.KeyPath(defaultPKIDir, node))
				if len(o.IPs) == 0 {
					fmt.Fprintf(w, "note: no --ip: fine for a client, but this certificate cannot serve the embedded etcd on a host IP\n")
				}
			})
		},
	}
	c.Flags().StringVar(&dir, "dir", defaultPKIDir, "directory holding the CA; the certificate and key are written there")
	c.Flags().StringSliceVar(&ips, "ip", nil, "IP address the host serves etcd on (repeat or comma-separate)")
	c.Flags().StringSliceVar(&dns, "dns", nil, "further DNS name for the certificate (repeat or comma-separate)")
	c.Flags().IntVar(&days, "days", int(pki.DefaultCertValidity/(24*time.Hour)), "validity in days (cut to the CA's)")
	c.Flags().BoolVar(&force, "force", false, "replace an existing certificate and key of this name")
	return c
}
