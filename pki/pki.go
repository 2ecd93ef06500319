// Package pki creates keyroute's cluster certificate authority and the
// per-host certificates that authenticate agents to etcd (keyroutectl pki,
// the simcluster harness and the demo use it).
//
// A directory holds the CA (ca.crt, ca.key) and the issued pairs
// (<name>.crt, <name>.key). Keys are ECDSA P-256 in PKCS#8 PEM, mode 0600;
// every file is written to a temporary name and then linked or renamed into
// place, so a reader never sees half a file and an existing file is only
// replaced when the caller asks. A host certificate carries both serverAuth
// and clientAuth: an agent serves the embedded etcd with it and is a client
// of etcd with it.
package pki

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha1"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"time"
)

// File names inside a PKI directory.
const (
	CACertFile = "ca.crt"
	CAKeyFile  = "ca.key"
)

// Default validity periods.
const (
	DefaultCAValidity   = 10 * 365 * 24 * time.Hour
	DefaultCertValidity = 5 * 365 * 24 * time.Hour
)

// ErrExists is returned, wrapped with the file's name, when a file would be
// overwritten without Force.
var ErrExists = errors.New("already exists")

// nameRE limits names to what is safe both as a file name and as a DNS SAN
// (x509 refuses non-ASCII DNS names); "ca" is taken by the CA's files.
var nameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$`)

// ValidateName checks that name can name an issued certificate.
func ValidateName(name string) error {
	if !nameRE.MatchString(name) {
		return fmt.Errorf("name %q: use 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit", name)
	}
	if name == "ca" {
		return fmt.Errorf("name %q is the CA's own file name", name)
	}
	return nil
}

// CertPath and KeyPath are where Issue writes name's certificate and key.
func CertPath(dir, name string) string { return filepath.Join(dir, name+".crt") }
func KeyPath(dir, name string) string  { return filepath.Join(dir, name+".key") }

// InitOptions configures InitCA.
type InitOptions struct {
	// Name is the CA's common name (default "keyroute cluster CA").
	Name string
	// Validity defaults to DefaultCAValidity.
	Validity time.Duration
}

// InitCA creates a new CA in dir (created 0700 if missing). It refuses,
// with ErrExists, if dir already holds ca.crt or ca.key: replacing a CA
// silently would lock every host out of the cluster.
func InitCA(dir string, o InitOptions) (*x509.Certificate, error) {
	if o.Name == "" {
		o.Name = "keyroute cluster CA"
	}
	if o.Validity == 0 {
		o.Validity = DefaultCAValidity
	}
	certPath, keyPath := filepath.Join(dir, CACertFile), filepath.Join(dir, CAKeyFile)
	if err := refuseExisting(certPath, keyPath); err != nil {
		return nil, fmt.Errorf("create CA: %w", err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("create CA: generate key: %w", err)
	}
	serial, err := newSerial()
	if err != nil {
		return nil, fmt.Errorf("create CA: %w", err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: o.Name, Organization: []string{"keyroute"}},
		NotBefore:             now.Add(-time.Hour), // tolerate clocks a little behind
		NotAfter:              now.Add(o.Validity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true, // it signs host certificates only
		SubjectKeyId:          keyID(&key.PublicKey),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("create CA: sign: %w", err)
	}
	if err := writePair(dir, certPath, keyPath, der, key, false); err != nil {
		return nil, fmt.Errorf("create CA: %w", err)
	}
	return x509.ParseCertificate(der)
}

// IssueOptions configures Issue.
type IssueOptions struct {
	// IPs become IP SANs: every address the holder serves etcd on (the
	// embedded etcd listens on the host IP). 127.0.0.1 is always added,
	// and Name is always a DNS SAN, with localhost.
	IPs []netip.Addr
	// DNSNames are further DNS SANs.
	DNSNames []string
	// Validity defaults to DefaultCertValidity, and is cut to the CA's
	// expiry.
	Validity time.Duration
	// Force replaces an existing certificate and key of the same name.
	Force bool
}

// Issue signs a certificate for name with the CA in dir and writes
// <name>.crt and <name>.key there. Without Force it refuses, with
// ErrExists, to replace either file.
func Issue(dir, name string, o IssueOptions) (*x509.Certificate, error) {
	if err := ValidateName(name); err != nil {
		return nil, fmt.Errorf("issue certificate: %w", err)
	}
	if o.Validity == 0 {
		o.Validity = DefaultCertValidity
	}
	ca, caKey, err := LoadCA(dir)
	if err != nil {
		return nil, fmt.Errorf("issue certificate for %s: %w", name, err)
	}
	certPath, keyPath := CertPath(dir, name), KeyPath(dir, name)
	if !o.Force {
		if err := refuseExisting(certPath, keyPath); err != nil {
			return nil, fmt.Errorf("issue certificate for %s: %w (--force replaces it)", name, err)
		}
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("issue certificate for %s: generate key: %w", name, err)
	}
	serial, err := newSerial()
	if err != nil {
		return nil, fmt.Errorf("issue certificate for %s: %w", name, err)
	}
	ips := []net.IP{net.IPv4(127, 0, 0, 1)}
	for _, a := range o.IPs {
		if !a.IsValid() {
			return nil, fmt.Errorf("issue certificate for %s: invalid IP address", name)
		}
		if !a.IsLoopback() {
			ips = append(ips, net.IP(a.Unmap().AsSlice()))
		}
	}
	now := time.Now()
	notAfter := now.Add(o.Validity)
	if notAfter.After(ca.NotAfter) {
		notAfter = ca.NotAfter
	}
	tmpl := &x509.Certificate{
		SerialNumber:   serial,
		Subject:        pkix.Name{CommonName: name, Organization: []string{"keyroute"}},
		NotBefore:      now.Add(-time.Hour),
		NotAfter:       notAfter,
		KeyUsage:       x509.KeyUsageDigitalSignature,
		ExtKeyUsage:    []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		DNSNames:       append([]string{name, "localhost"}, o.DNSNames...),
		IPAddresses:    ips,
		SubjectKeyId:   keyID(&key.PublicKey),
		AuthorityKeyId: ca.SubjectKeyId,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		return nil, fmt.Errorf("issue certificate for %s: sign: %w", name, err)
	}
	if err := writePair(dir, certPath, keyPath, der, key, o.Force); err != nil {
		return nil, fmt.Errorf("issue certificate for %s: %w", name, err)
	}
	return x509.ParseCertificate(der)
}

// LoadCA reads dir's CA certificate and key and checks that they belong
// together.
func LoadCA(dir string) (*x509.Certificate, *ecdsa.PrivateKey, error) {
	certPath, keyPath := filepath.Join(dir, CACertFile), filepath.Join(dir, CAKeyFile)
	certs, err := ReadCerts(certPath)
	if err != nil {
		return nil, nil, fmt.Errorf("load CA (create one with keyroutectl pki init --dir %s): %w", dir, err)
	}
	ca := certs[0]
	if !ca.IsCA {
		return nil, nil, fmt.Errorf("load CA: %s is not a CA certificate", certPath)
	}
	b, err := os.ReadFile(keyPath)
	if err != nil {
		return nil, nil, fmt.Errorf("load CA key: %w", err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "PRIVATE KEY" {
		return nil, nil, fmt.Errorf("load CA key %s: no PEM PRIVATE KEY block", keyPath)
	}
	k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		return nil, nil, fmt.Errorf("load CA key %s: %w", keyPath, err)
	}
	key, ok := k.(*ecdsa.PrivateKey)
	if !ok || !key.PublicKey.Equal(ca.PublicKey) {
		return nil, nil, fmt.Errorf("load CA: %s does not hold the key of %s", keyPath, certPath)
	}
	return ca, key, nil
}

// ReadCerts reads every PEM CERTIFICATE in path; it fails if there is none.
func ReadCerts(path string) ([]*x509.Certificate, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var out []*x509.Certificate
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			break
		}
		if blk.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		out = append(out, c)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%s: no PEM CERTIFICATE", path)
	}
	return out, nil
}

// Verify checks that cert chains to one of the CAs in caPath and may be
// used both as a server and as a client certificate, as an agent uses it.
func Verify(caPath string, cert *x509.Certificate) error {
	cas, err := ReadCerts(caPath)
	if err != nil {
		return fmt.Errorf("verify %s: %w", cert.Subject.CommonName, err)
	}
	roots := x509.NewCertPool()
	for _, c := range cas {
		roots.AddCert(c)
	}
	for _, u := range []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth} {
		if _, err := cert.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{u}}); err != nil {
			return fmt.Errorf("verify %s against %s: %w", cert.Subject.CommonName, caPath, err)
		}
	}
	return nil
}

func refuseExisting(paths ...string) error {
	for _, p := range paths {
		if _, err := os.Lstat(p); err == nil {
			return fmt.Errorf("%s: %w", p, ErrExists)
		} else if !errors.Is(err, os.ErrNotExist) {
			return err
		}
	}
	return nil
}

// writePair writes the key first and the certificate last, so a
// certificate on disk always has its key; if the certificate cannot be
// written, a key written without replacing anything is removed again.
func writePair(dir, certPath, keyPath string, der []byte, key *ecdsa.PrivateKey, replace bool) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	pk, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return fmt.Errorf("encode key: %w", err)
	}
	if err := writeFile(keyPath, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: pk}), 0o600, replace); err != nil {
		return err
	}
	if err := writeFile(certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644, replace); err != nil {
		if !replace {
			os.Remove(keyPath)
		}
		return err
	}
	return nil
}

// writeFile writes data to a temporary file beside path, syncs it and
// moves it into place: with replace by rename, otherwise by link, which
// fails if path exists (no check-then-write race).
func writeFile(path string, data []byte, mode os.FileMode, replace bool) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	tmp := f.Name()
	defer os.Remove(tmp) // gone after rename; the extra name after link
	err = f.Chmod(mode)
	if err == nil {
		_, err = f.Write(data)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		if replace {
			err = os.Rename(tmp, path)
		} else if err = os.Link(tmp, path); errors.Is(err, os.ErrExist) {
			err = ErrExists
		}
	}
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

func newSerial() (*big.Int, error) {
	s, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, fmt.Errorf("serial number: %w", err)
	}
	return s.Add(s, big.NewInt(1)), nil // never 0
}

// keyID is the RFC 5280 method 1 key identifier (SHA-1 of the public key).
func keyID(pub *ecdsa.PublicKey) []byte {
	b, _ := x509.MarshalPKIXPublicKey(pub)
	h := sha1.Sum(b)
	return h[:]
}
