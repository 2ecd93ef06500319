package main

import (
	"bytes"
	"encoding/json"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/keyroute/keyroute/pki"
)

func ctl(t *testing.T, args ...string) (string, error) {
	t.Helper()
	root := newRoot()
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&out)
	root.SetArgs(args)
	err := root.Execute()
	return out.String(), err
}

func TestPKICommands(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "pki")
	out, err := ctl(t, "pki", "init", "--dir", dir)
	if err != nil || !strings.Contains(out, "keep here") {
		t.Fatalf("pki init: %v\n%s", err, out)
	}
	if _, err := ctl(t, "pki", "init", "--dir", dir); err == nil || !strings.Contains(err.Error(), "already exists") {
		t.Fatalf("second pki init: %v, want a refusal", err)
	}
	if _, err := ctl(t, "pki", "issue", "h1", "--dir", dir, "--ip", "198.18.0.300"); err == nil || !strings.Contains(err.Error(), `--ip "198.18.0.300"`) {
		t.Fatalf("bad --ip: %v", err)
	}
	out, err = ctl(t, "pki", "issue", "h1", "--dir", dir, "--ip", "198.18.0.1,10.0.0.1", "-o", "json")
	if err != nil {
		t.Fatalf("pki issue: %v\n%s", err, out)
	}
	var f pkiFile
	if err := json.Unmarshal([]byte(out), &f); err != nil {
		t.Fatalf("pki issue -o json: %v\n%s", err, out)
	}
	if f.Subject != "h1" || f.Path != pki.CertPath(dir, "h1") || f.Key != pki.KeyPath(dir, "h1") ||
		!slices.Contains(f.IPs, "198.18.0.1") || !slices.Contains(f.IPs, "10.0.0.1") || !slices.Contains(f.DNS, "h1") {
		t.Errorf("pki issue output %+v", f)
	}
	if _, err := ctl(t, "pki", "issue", "h1", "--dir", dir); err == nil || !strings.Contains(err.Error(), "--force") {
		t.Fatalf("second pki issue: %v, want a refusal naming --force", err)
	}
	if out, err := ctl(t, "pki", "issue", "h1", "--dir", dir, "--ip", "198.18.0.1", "--force"); err != nil || !strings.Contains(out, "cert: /etc/keyroute/pki/h1.crt") {
		t.Fatalf("pki issue --force: %v\n%s", err, out)
	}
}
