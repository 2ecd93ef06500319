package registry

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"os"
	"strings"

	"go.etcd.io/etcd/client/pkg/v3/transport"
)

// TLSFiles names the PEM files of a cluster member's TLS identity, with
// the meaning of etcd's flags: CA verifies the other end (the server for a
// client, clients for a server: --trusted-ca-file with
// --client-cert-auth), Cert and Key are this member's certificate (served
// by an embedded server, presented as a client).
type TLSFiles struct {
	CA, Cert, Key string
}

func (f *TLSFiles) info(clientCertAuth bool) transport.TLSInfo {
	return transport.TLSInfo{CertFile: f.Cert, KeyFile: f.Key, TrustedCAFile: f.CA, ClientCertAuth: clientCertAuth}
}

// ClientConfig loads the files into a client TLS config: the server must
// chain to CA, and the client presents Cert.
func (f *TLSFiles) ClientConfig() (*tls.Config, error) {
	if f.CA == "" || f.Cert == "" || f.Key == "" {
		return nil, fmt.Errorf("etcd TLS: CA, certificate and key are all needed (ca %q, cert %q, key %q)", f.CA, f.Cert, f.Key)
	}
	c, err := f.info(false).ClientConfig()
	if err != nil {
		return nil, fmt.Errorf("etcd TLS (ca %s, cert %s, key %s): %w", f.CA, f.Cert, f.Key, err)
	}
	return c, nil
}

// Check loads the files and checks that the certificate chains to the CA
// and may be used as a client (and, with server, as a server) certificate.
// It returns the certificate.
func (f *TLSFiles) Check(server bool) (*x509.Certificate, error) {
	pair, err := tls.LoadX509KeyPair(f.Cert, f.Key)
	if err != nil {
		return nil, fmt.Errorf("load certificate %s and key %s: %w", f.Cert, f.Key, err)
	}
	leaf := pair.Leaf
	if leaf == nil {
		if leaf, err = x509.ParseCertificate(pair.Certificate[0]); err != nil {
			return nil, fmt.Errorf("parse certificate %s: %w", f.Cert, err)
		}
	}
	roots, err := caPool(f.CA)
	if err != nil {
		return nil, err
	}
	usages := []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	if server {
		usages = append(usages, x509.ExtKeyUsageServerAuth)
	}
	inter := x509.NewCertPool()
	for _, der := range pair.Certificate[1:] {
		if c, err := x509.ParseCertificate(der); err == nil {
			inter.AddCert(c)
		}
	}
	for _, u := range usages {
		if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{u}}); err != nil {
			return nil, fmt.Errorf("certificate %s against CA %s: %w", f.Cert, f.CA, err)
		}
	}
	return leaf, nil
}

func caPool(path string) (*x509.CertPool, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("load CA: %w", err)
	}
	p := x509.NewCertPool()
	if !p.AppendCertsFromPEM(b) {
		return nil, fmt.Errorf("load CA %s: no PEM certificate", path)
	}
	return p, nil
}

// IsLoopbackURL reports whether rawURL's host is a loopback address or
// "localhost": the only place keyroute lets etcd speak plaintext, as only
// the host itself can reach it.
func IsLoopbackURL(rawURL string) bool {
	u, err := url.Parse(rawURL)
	if err != nil {
		return false
	}
	h := u.Hostname()
	if strings.EqualFold(h, "localhost") {
		return true
	}
	a, err := netip.ParseAddr(h)
	return err == nil && a.IsLoopback()
}

// PlaintextURL reports whether rawURL is plaintext (http) towards a
// non-loopback address.
func PlaintextURL(rawURL string) bool {
	return strings.HasPrefix(rawURL, "http://") && !IsLoopbackURL(rawURL)
}

// checkServes returns an error unless cert may serve the host of rawURL
// (an IP SAN for an address, a DNS SAN for a name), so a certificate
// issued without the host IP fails at start with the fix, not later as a
// client's TLS error.
func checkServes(cert *x509.Certificate, certFile, what, rawURL string) error {
	u, err := url.Parse(rawURL)
	if err != nil {
		return err
	}
	h := u.Hostname()
	if ip := net.ParseIP(h); ip != nil && ip.IsUnspecified() {
		return nil // every address: nothing to match against
	}
	if err := cert.VerifyHostname(h); err != nil {
		return fmt.Errorf("certificate %s cannot serve the %s URL %s (%w): issue it again with that address, e.g. keyroutectl pki issue %s --ip %s --force",
			certFile, what, rawURL, err, cert.Subject.CommonName, h)
	}
	return nil
}
