package registry_test

import (
	"context"
	"crypto/tls"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/keyroute/keyroute/pki"
	"github.com/keyroute/keyroute/registry"
	"github.com/keyroute/keyroute/registry/etcdtest"
)

// httpsURL is a free loopback https URL.
func httpsURL(t *testing.T) string {
	u, err := etcdtest.FreeURL()
	if err != nil {
		t.Fatal(err)
	}
	return "https://" + strings.TrimPrefix(u, "http://")
}

func testPKI(t *testing.T, names ...string) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "pki")
	if _, err := pki.InitCA(dir, pki.InitOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, n := range names {
		if _, err := pki.Issue(dir, n, pki.IssueOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func files(dir, name string) *registry.TLSFiles {
	return &registry.TLSFiles{CA: filepath.Join(dir, pki.CACertFile), Cert: pki.CertPath(dir, name), Key: pki.KeyPath(dir, name)}
}

// The embedded server with TLS serves only clients with a certificate of
// the cluster CA: none, another CA's and plaintext are all turned away.
func TestEmbeddedTLSRequiresClientCertificate(t *testing.T) {
	ctx := ctxT(t)
	dir := testPKI(t, "h1", "tool")
	e, err := registry.StartEmbedded(ctx, registry.EmbeddedConfig{
		DataDir: t.TempDir(), ClientURL: httpsURL(t), PeerURL: httpsURL(t), Logger: quiet, TLS: files(dir, "h1"),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	ep := e.Endpoints()[0]
	if !strings.HasPrefix(ep, "https://") {
		t.Fatalf("endpoint %s, want https", ep)
	}

	c, err := registry.New(e.Endpoints(), registry.WithLogger(quiet), registry.WithTLS(files(dir, "tool")))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Raw().Put(ctx, "/probe/ok", "1"); err != nil {
		t.Fatalf("put with a cluster certificate: %v", err)
	}

	other := testPKI(t, "h1")
	foreign, err := files(other, "h1").ClientConfig()
	if err != nil {
		t.Fatal(err)
	}
	foreign.InsecureSkipVerify = true // the server's refusal is under test, not ours
	for _, tc := range []struct {
		name     string
		endpoint string
		tls      *tls.Config
	}{
		{"no client certificate", ep, &tls.Config{InsecureSkipVerify: true}},
		{"another CA's certificate", ep, foreign},
		{"plaintext", "http://" + strings.TrimPrefix(ep, "https://"), nil},
	} {
		cli, err := clientv3.New(clientv3.Config{Endpoints: []string{tc.endpoint}, TLS: tc.tls, DialTimeout: time.Second, Logger: zap.NewNop()})
		if err != nil {
			t.Fatal(err)
		}
		rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		_, perr := cli.Put(rctx, "/probe/"+tc.name, "x")
		_, gerr := cli.Get(rctx, "/probe/ok")
		cancel()
		cli.Close()
		if perr == nil || gerr == nil {
			t.Errorf("%s: put %v, get %v; want both refused", tc.name, perr, gerr)
		}
		t.Logf("%s: refused: %v", tc.name, perr)
	}
	// The gRPC errors above are timeouts; over HTTP the reason shows: the
	// TLS handshake ends with the server's alert.
	hc := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	_, herr := hc.Post(ep+"/v3/kv/put", "application/json", strings.NewReader(`{"key":"L3Byb2JlL2h0dHA=","value":"eA=="}`))
	if herr == nil || !strings.Contains(herr.Error(), "certificate required") {
		t.Errorf("HTTP put without a client certificate: %v, want the server's 'certificate required' alert", herr)
	}
	resp, err := c.Raw().Get(ctx, "/probe/", clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil || resp.Count != 1 {
		t.Errorf("keys under /probe/: %v %v, want only the authenticated one", resp, err)
	}
}

func TestEmbeddedRefusesUnsafeSetups(t *testing.T) {
	ctx := ctxT(t)
	dir := testPKI(t, "h1")
	loop := httpsURL(t)
	for _, tc := range []struct {
		name string
		cfg  registry.EmbeddedConfig
		want string
	}{
		{"plaintext on a host address", registry.EmbeddedConfig{ClientURL: "http://192.0.2.1:2379", PeerURL: "http://127.0.0.1:2380"},
			"client URL http://192.0.2.1:2379 is plaintext on a non-loopback address"},
		{"plaintext peer on a host address", registry.EmbeddedConfig{ClientURL: loop, PeerURL: "http://192.0.2.1:2380", TLS: files(dir, "h1")},
			"peer URL http://192.0.2.1:2380 is plaintext"},
		{"https without certificates", registry.EmbeddedConfig{ClientURL: loop, PeerURL: "http://127.0.0.1:2380"},
			"is https but no CA, certificate and key"},
		// 127.0.0.2 is loopback, but not in the certificate.
		{"certificate without the address", registry.EmbeddedConfig{ClientURL: "https://127.0.0.2:2379", PeerURL: "http://127.0.0.1:2380", TLS: files(dir, "h1")},
			"keyroutectl pki issue h1 --ip 127.0.0.2 --force"},
		{"missing key", registry.EmbeddedConfig{ClientURL: loop, PeerURL: "http://127.0.0.1:2380",
			TLS: &registry.TLSFiles{CA: filepath.Join(dir, pki.CACertFile), Cert: pki.CertPath(dir, "h1"), Key: filepath.Join(dir, "nope.key")}},
			"nope.key"},
		{"certificate of another CA", registry.EmbeddedConfig{ClientURL: loop, PeerURL: "http://127.0.0.1:2380",
			TLS: &registry.TLSFiles{CA: filepath.Join(testPKI(t), pki.CACertFile), Cert: pki.CertPath(dir, "h1"), Key: pki.KeyPath(dir, "h1")}},
			"certificate signed by unknown authority"},
	} {
		tc.cfg.DataDir, tc.cfg.Logger = t.TempDir(), quiet
		e, err := registry.StartEmbedded(ctx, tc.cfg)
		if err == nil {
			e.Close()
		}
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error containing %q", tc.name, err, tc.want)
		}
	}
}

func TestPlaintextURL(t *testing.T) {
	for u, want := range map[string]bool{
		"http://127.0.0.1:2379":  false,
		"http://[::1]:2379":      false,
		"http://localhost:2379":  false,
		"https://10.0.0.1:2379":  false,
		"http://10.0.0.1:2379":   true,
		"http://etcd.local:2379": true,
	} {
		if got := registry.PlaintextURL(u); got != want {
			t.Errorf("PlaintextURL(%s) = %v, want %v", u, got, want)
		}
	}
	if _, err := registry.New([]string{"http://127.0.0.1:1"}, registry.WithTLS(&registry.TLSFiles{})); err == nil || !strings.Contains(err.Error(), "not https") {
		t.Errorf("TLS with an http endpoint: %v", err)
	}
}
