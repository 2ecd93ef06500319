package main

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/keyroute/keyroute/pki"
)

// keyroutectl presents the local node's certificate from --pki-dir, or
// --cert's; a missing file is named with the flags that change it.
func TestRemoteTLSConfig(t *testing.T) {
	dir := t.TempDir()
	if _, err := pki.InitCA(dir, pki.InitOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"h1", "admin"} {
		if _, err := pki.Issue(dir, n, pki.IssueOptions{IPs: []netip.Addr{netip.MustParseAddr("198.18.0.1")}}); err != nil {
			t.Fatal(err)
		}
	}
	f := remoteFlags{pkiDir: dir}
	if tc, err := f.tlsConfig("h1"); err != nil || len(tc.Certificates) != 1 || tc.RootCAs == nil {
		t.Fatalf("node h1's certificate: %+v, %v", tc, err)
	}
	if _, err := f.tlsConfig("h2"); err == nil || !strings.Contains(err.Error(), "h2.crt") || !strings.Contains(err.Error(), "--pki-dir, --cert") {
		t.Errorf("no certificate for node h2: %v, want an error naming h2.crt and the flags", err)
	}
	f.cert = "admin"
	if _, err := f.tlsConfig("h2"); err != nil {
		t.Errorf("--cert admin overrides the node name: %v", err)
	}
	f = remoteFlags{pkiDir: t.TempDir(), cert: "admin"}
	if _, err := f.tlsConfig("h1"); err == nil || !strings.Contains(err.Error(), "admin.crt") {
		t.Errorf("empty --pki-dir: %v, want an error naming admin.crt", err)
	}
}
