package main

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/keyroute/keyroute/internal/version"
	"github.com/keyroute/keyroute/pki"
)

// The etcd TLS settings come from flags as well as YAML, and
// --check-config refuses plaintext on the host's IP with the fix.
func TestCheckConfigEtcdFlags(t *testing.T) {
	dir := t.TempDir()
	if _, err := pki.InitCA(dir, pki.InitOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := pki.Issue(dir, "h1", pki.IssueOptions{}); err != nil {
		t.Fatal(err)
	}
	base := []string{"--check-config", "--node", "h1", "--uplink", "eth1"}
	err := run(base)
	if err == nil || !strings.Contains(err.Error(), "etcd.embedded_client_url") || !strings.Contains(err.Error(), "keyroutectl pki issue h1") {
		t.Fatalf("plaintext default: %v, want the refusal naming keyroutectl pki", err)
	}
	if err := run(append(base, "--etcd-insecure")); err != nil {
		t.Fatalf("--etcd-insecure: %v", err)
	}
	if err := run(append(base, "--etcd-insecure=false")); err == nil {
		t.Fatal("--etcd-insecure=false accepted plaintext")
	}
	tls := []string{"--etcd-ca", filepath.Join(dir, pki.CACertFile), "--etcd-cert", pki.CertPath(dir, "h1"), "--etcd-key", pki.KeyPath(dir, "h1")}
	if err := run(append(base, tls...)); err != nil {
		t.Fatalf("TLS flags: %v", err)
	}
	err = run(append(append(base, tls...), "--etcd-endpoints", "http://198.18.0.1:2379"))
	if err == nil || !strings.Contains(err.Error(), "etcd.endpoints=http://198.18.0.1:2379: plaintext") {
		t.Fatalf("plaintext endpoint: %v", err)
	}
	if err := run(append(append(base, tls...), "--etcd-endpoints", "https://198.18.0.1:2379")); err != nil {
		t.Fatalf("https endpoint: %v", err)
	}
}

// --help and --version answer with status 0, like keyroutectl's.
func TestHelpAndVersion(t *testing.T) {
	for _, args := range [][]string{{"--help"}, {"-h"}, {"--version"}} {
		cmd := newRoot()
		var out strings.Builder
		cmd.SetOut(&out)
		cmd.SetArgs(args)
		if err := cmd.Execute(); err != nil {
			t.Fatalf("%v: %v", args, err)
		}
		want := "--config"
		if args[0] == "--version" {
			want = "keyroute-agent " + version.String()
		}
		if !strings.Contains(out.String(), want) {
			t.Errorf("%v printed %q, want %q in it", args, out.String(), want)
		}
	}
	if err := run([]string{"extra"}); err == nil {
		t.Error("a stray argument was accepted")
	}
}
