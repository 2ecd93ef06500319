package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/keyroute/keyroute/api"
	"github.com/keyroute/keyroute/pki"
	"github.com/keyroute/keyroute/trace"
)

// remoteFlags say which certificate keyroutectl presents to other hosts'
// agents (their TCP API, api_listen).
type remoteFlags struct {
	pkiDir string
	cert   string
}

func (f *remoteFlags) add(c *cobra.Command) {
	fl := c.PersistentFlags()
	fl.StringVar(&f.pkiDir, "pki-dir", envOr("KEYROUTE_PKI_DIR", defaultPKIDir), "directory with ca.crt and the certificate (NAME.crt, NAME.key) to present to other hosts' agents (env KEYROUTE_PKI_DIR)")
	fl.StringVar(&f.cert, "cert", envOr("KEYROUTE_CERT", ""), "certificate name in --pki-dir (env KEYROUTE_CERT; default: the local agent's node name, the certificate it uses)")
}

// tlsConfig loads the client TLS config: the agents' certificates must
// chain to ca.crt, and keyroutectl presents <name>.crt.
func (f *remoteFlags) tlsConfig(name string) (*tls.Config, error) {
	if f.cert != "" {
		name = f.cert
	}
	ca, cert, key := filepath.Join(f.pkiDir, pki.CACertFile), pki.CertPath(f.pkiDir, name), pki.KeyPath(f.pkiDir, name)
	pair, err := tls.LoadX509KeyPair(cert, key)
	if err != nil {
		return nil, fmt.Errorf("load certificate %s and key %s (--pki-dir, --cert): %w", cert, key, err)
	}
	b, err := os.ReadFile(ca)
	if err != nil {
		return nil, fmt.Errorf("load CA (--pki-dir): %w", err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(b) {
		return nil, fmt.Errorf("load CA %s: no PEM certificate", ca)
	}
	return &tls.Config{Certificates: []tls.Certificate{pair}, RootCAs: roots, MinVersion: tls.VersionTLS12}, nil
}

// addRemoteAgents adds, for every host not in e.Agents yet, a client of
// the TCP API its host record publishes, reached with the certificate of
// local's node (or --cert). A host without one, or a certificate that
// cannot be loaded, is reported on warn and left out: the trace then says
// which host it could not reach.
func (f *remoteFlags) addRemoteAgents(ctx context.Context, e trace.Env, local *api.Client, node string, warn io.Writer) {
	hs, err := local.Hosts(ctx)
	if err != nil {
		fmt.Fprintf(warn, "keyroutectl: cannot list hosts to find their agents: %v\n", err)
		return
	}
	var tc *tls.Config
	var tcErr error
	for _, h := range hs {
		if _, ok := e.Agents[h.Name]; ok {
			continue
		}
		if h.API == "" {
			fmt.Fprintf(warn, "keyroutectl: host %s's agent serves no API over TCP (api_listen); pass --agents %s=SOCKET to reach it\n", h.Name, h.Name)
			continue
		}
		if tc == nil && tcErr == nil {
			tc, tcErr = f.tlsConfig(node)
		}
		if tcErr != nil {
			fmt.Fprintf(warn, "keyroutectl: cannot reach host %s's agent at %s: %v\n", h.Name, h.API, tcErr)
			continue
		}
		e.Agents[h.Name] = api.NewRemoteClient(h.API, tc)
	}
}
