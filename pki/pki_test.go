package pki

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestIssueChainsAndCarriesSANs(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "pki")
	ca, err := InitCA(dir, InitOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !ca.IsCA || !ca.MaxPathLenZero || ca.KeyUsage&x509.KeyUsageCertSign == 0 {
		t.Errorf("CA certificate: IsCA %v, MaxPathLenZero %v, usage %v", ca.IsCA, ca.MaxPathLenZero, ca.KeyUsage)
	}
	if fi, err := os.Stat(dir); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("PKI dir mode: %v %v, want 0700", fi.Mode(), err)
	}
	c, err := Issue(dir, "h1", IssueOptions{IPs: []netip.Addr{netip.MustParseAddr("198.18.0.1"), netip.MustParseAddr("10.0.0.1")}})
	if err != nil {
		t.Fatal(err)
	}
	if c.Subject.CommonName != "h1" {
		t.Errorf("CN %q, want h1", c.Subject.CommonName)
	}
	if !slices.Contains(c.DNSNames, "h1") {
		t.Errorf("DNS SANs %v lack the node name", c.DNSNames)
	}
	var ips []string
	for _, ip := range c.IPAddresses {
		ips = append(ips, ip.String())
	}
	for _, want := range []string{"198.18.0.1", "10.0.0.1", "127.0.0.1"} {
		if !slices.Contains(ips, want) {
			t.Errorf("IP SANs %v lack %s", ips, want)
		}
	}
	if !slices.Contains(c.ExtKeyUsage, x509.ExtKeyUsageServerAuth) || !slices.Contains(c.ExtKeyUsage, x509.ExtKeyUsageClientAuth) {
		t.Errorf("EKU %v, want serverAuth and clientAuth", c.ExtKeyUsage)
	}
	if c.NotAfter.After(ca.NotAfter) {
		t.Errorf("certificate outlives its CA: %v > %v", c.NotAfter, ca.NotAfter)
	}
	if err := Verify(filepath.Join(dir, CACertFile), c); err != nil {
		t.Fatal(err)
	}
	if err := c.VerifyHostname("198.18.0.1"); err != nil {
		t.Error(err)
	}
	if err := c.VerifyHostname("198.18.0.2"); err == nil {
		t.Error("certificate valid for an address it was not issued for")
	}

	// The files are what TLS stacks (etcd's included) load.
	pair, err := tls.LoadX509KeyPair(CertPath(dir, "h1"), KeyPath(dir, "h1"))
	if err != nil {
		t.Fatalf("load issued pair: %v", err)
	}
	if pair.Leaf == nil || pair.Leaf.SerialNumber.Cmp(c.SerialNumber) != 0 {
		t.Error("loaded pair is not the issued certificate")
	}
	for _, f := range []struct {
		name string
		mode os.FileMode
	}{{CAKeyFile, 0o600}, {"h1.key", 0o600}, {CACertFile, 0o644}, {"h1.crt", 0o644}} {
		fi, err := os.Stat(filepath.Join(dir, f.name))
		if err != nil || fi.Mode().Perm() != f.mode {
			t.Errorf("%s: mode %v %v, want %v", f.name, fi.Mode().Perm(), err, f.mode)
		}
	}
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if strings.Contains(e.Name(), ".tmp-") {
			t.Errorf("temporary file left behind: %s", e.Name())
		}
	}

	// A certificate from another CA does not verify against this one.
	other := filepath.Join(t.TempDir(), "other")
	if _, err := InitCA(other, InitOptions{}); err != nil {
		t.Fatal(err)
	}
	foreign, err := Issue(other, "h1", IssueOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := Verify(filepath.Join(dir, CACertFile), foreign); err == nil {
		t.Error("a certificate of another CA verified")
	}
}

func TestRefusesToOverwrite(t *testing.T) {
	dir := t.TempDir()
	if _, err := InitCA(dir, InitOptions{}); err != nil {
		t.Fatal(err)
	}
	caBefore, _ := os.ReadFile(filepath.Join(dir, CACertFile))
	if _, err := InitCA(dir, InitOptions{}); !errors.Is(err, ErrExists) {
		t.Fatalf("second init: %v, want ErrExists", err)
	}
	// A lone ca.key (a half-copied directory) is refused too.
	lone := t.TempDir()
	os.WriteFile(filepath.Join(lone, CAKeyFile), []byte("x"), 0o600)
	if _, err := InitCA(lone, InitOptions{}); !errors.Is(err, ErrExists) || !strings.Contains(err.Error(), CAKeyFile) {
		t.Fatalf("init over a lone ca.key: %v, want ErrExists naming it", err)
	}
	if caAfter, _ := os.ReadFile(filepath.Join(dir, CACertFile)); string(caAfter) != string(caBefore) {
		t.Fatal("refused init changed ca.crt")
	}

	first, err := Issue(dir, "h2", IssueOptions{})
	if err != nil {
		t.Fatal(err)
	}
	keyBefore, _ := os.ReadFile(KeyPath(dir, "h2"))
	if _, err := Issue(dir, "h2", IssueOptions{}); !errors.Is(err, ErrExists) || !strings.Contains(err.Error(), "--force") {
		t.Fatalf("second issue: %v, want ErrExists naming --force", err)
	}
	if keyAfter, _ := os.ReadFile(KeyPath(dir, "h2")); string(keyAfter) != string(keyBefore) {
		t.Fatal("refused issue changed the key")
	}
	second, err := Issue(dir, "h2", IssueOptions{Force: true, IPs: []netip.Addr{netip.MustParseAddr("198.18.0.2")}})
	if err != nil {
		t.Fatal(err)
	}
	if second.SerialNumber.Cmp(first.SerialNumber) == 0 || !second.IPAddresses[len(second.IPAddresses)-1].Equal(net.ParseIP("198.18.0.2")) {
		t.Error("forced issue did not replace the certificate")
	}
	if _, err := tls.LoadX509KeyPair(CertPath(dir, "h2"), KeyPath(dir, "h2")); err != nil {
		t.Fatalf("forced issue left a mismatched pair: %v", err)
	}
}

func TestIssueRefusesBadNamesAndMissingCA(t *testing.T) {
	dir := t.TempDir()
	if _, err := Issue(dir, "h1", IssueOptions{}); err == nil || !strings.Contains(err.Error(), "keyroutectl pki init") {
		t.Fatalf("issue without a CA: %v, want the init hint", err)
	}
	if _, err := InitCA(dir, InitOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"", "ca", "../x", "a/b", "h 1", "-h", "hé"} {
		if _, err := Issue(dir, name, IssueOptions{}); err == nil {
			t.Errorf("issue %q: no error", name)
		}
	}
	// A CA key that does not match the certificate is refused.
	other := t.TempDir()
	if _, err := InitCA(other, InitOptions{}); err != nil {
		t.Fatal(err)
	}
	k, _ := os.ReadFile(filepath.Join(other, CAKeyFile))
	os.WriteFile(filepath.Join(dir, CAKeyFile), k, 0o600)
	if _, err := Issue(dir, "h1", IssueOptions{}); err == nil || !strings.Contains(err.Error(), "does not hold the key") {
		t.Fatalf("mismatched CA key: %v", err)
	}
}

func TestValidityIsCutToTheCA(t *testing.T) {
	dir := t.TempDir()
	ca, err := InitCA(dir, InitOptions{Validity: 48 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	c, err := Issue(dir, "h1", IssueOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !c.NotAfter.Equal(ca.NotAfter) {
		t.Errorf("NotAfter %v, want the CA's %v", c.NotAfter, ca.NotAfter)
	}
}
