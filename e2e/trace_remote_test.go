package e2e

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/keyroute/keyroute/api"
	"github.com/keyroute/keyroute/simcluster"
	"github.com/keyroute/keyroute/trace"
)

// keyroutectl trace and diagnose on h1 reach h2's agent with no flags:
// through the TCP API h2's host record publishes (api_listen), with the
// cluster's mutual TLS; h2's unix socket is never given. The TCP API
// refuses mutating requests and clients without a cluster certificate.
func TestTraceRemoteAgents(t *testing.T) {
	const apiPort = "9478"
	cl := rwCluster(t, simcluster.Options{AgentConfig: func(_ int, cfg map[string]any) {
		cfg["api_listen"] = ":" + apiPort
	}})
	h1, h2 := cl.Host(1), cl.Host(2)
	c1 := rwAttach(t, cl, 1, "c1")[0]
	c2 := rwAttach(t, cl, 2, "c2")[0]
	if err := c1.PingUntil(c2.IP.String(), 10*time.Second); err != nil {
		t.Fatal(err)
	}

	var hs []api.Host
	rwCtl(t, h1, "hosts", &hs)
	for _, h := range hs {
		want := cl.Host(map[string]int{"h1": 1, "h2": 2}[h.Name]).IP.String() + ":" + apiPort
		if h.API != want {
			t.Errorf("host %s publishes API %q, want %q", h.Name, h.API, want)
		}
	}

	// keyroutectl as on host h1: in its namespace, its own agent's socket,
	// the PKI directory holding h1's certificate, nothing about h2.
	ctl := func(args ...string) (string, string, error) {
		ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
		defer cancel()
		argv := append([]string{"netns", "exec", h1.NS.Name, filepath.Join(cl.BinDir, "keyroutectl"),
			"--socket", h1.APISocket}, args...)
		cmd := exec.CommandContext(ctx, "ip", argv...)
		cmd.Env = append(os.Environ(), "KEYROUTE_PKI_DIR="+cl.PKIDir)
		var out, errb bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &errb
		err := cmd.Run()
		return out.String(), errb.String(), err
	}
	logFrom := func() int64 {
		st, err := os.Stat(h2.LogPath)
		if err != nil {
			t.Fatal(err)
		}
		return st.Size()
	}
	h2Log := func(from int64) string {
		b, _ := os.ReadFile(h2.LogPath)
		return string(b[from:])
	}

	from := logFrom()
	out, stderr, err := ctl("trace", "c1", "c2", "icmp", "-o", "json")
	if err != nil {
		t.Fatalf("keyroutectl trace c1 c2 on h1: %v: %s", err, stderr)
	}
	var r trace.Result
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		t.Fatalf("trace: %v\n%s", err, out)
	}
	if r.Dest == nil || r.DestError != "" || r.Dest.Node != "h2" {
		t.Fatalf("trace c1 -> c2 did not trace h2's bridges: dest error %q, dest %+v\nstderr: %s", r.DestError, r.Dest, stderr)
	}
	if l := h2Log(from); !strings.Contains(l, "remote API request") || !strings.Contains(l, "path="+api.PathTrace) || !strings.Contains(l, "client=h1") {
		t.Errorf("h2's agent logged no trace request over TCP from h1:\n%s", l)
	}

	out, stderr, err = ctl("diagnose", "c1", "c2", "icmp", "--probes", "10", "--no-save", "-o", "json")
	if err != nil {
		t.Fatalf("keyroutectl diagnose c1 c2 on h1: %v: %s", err, stderr)
	}
	var d api.Diagnosis
	if err := json.Unmarshal([]byte(out), &d); err != nil {
		t.Fatalf("diagnose: %v\n%s", err, out)
	}
	sawH2 := false
	for _, c := range d.Checks {
		if c.Node == "h2" && c.Kind == "host" {
			sawH2 = true
			for _, h := range c.Health {
				if strings.Contains(h, "agent not") {
					t.Errorf("diagnose did not reach h2's agent: %s", h)
				}
			}
		}
	}
	if !sawH2 {
		t.Errorf("diagnose has no check of host h2: %s", out)
	}

	// The TCP API itself, from h1's namespace with a cluster certificate:
	// read-only routes answer, mutating ones are refused before reaching
	// the agent; without a certificate the handshake fails.
	base := "https://" + h2.IP.String() + ":" + apiPort
	client := func(tc *tls.Config) *http.Client {
		return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DialContext: h1.NS.DialContext, TLSClientConfig: tc}}
	}
	do := func(c *http.Client, method, path, body string) (int, error) {
		req, err := http.NewRequestWithContext(t.Context(), method, base+path, strings.NewReader(body))
		if err != nil {
			return 0, err
		}
		resp, err := c.Do(req)
		if err != nil {
			return 0, err
		}
		resp.Body.Close()
		return resp.StatusCode, nil
	}
	withCert := client(cl.EtcdTLS())
	if code, err := do(withCert, "GET", api.PathStatus, ""); err != nil || code != http.StatusOK {
		t.Errorf("GET %s over TCP with a cluster certificate: %d, %v; want 200", api.PathStatus, code, err)
	}
	for _, m := range []struct{ method, path, body string }{
		{"POST", api.PathAttach, `{"netns":"x","name":"evil"}`},
		{"POST", api.PathDetach, `{"name":"c2"}`},
		{"DELETE", api.PathHosts + "/h1", ""},
		{"POST", api.PathRules, `{}`},
		{"POST", api.PathDiagnoses, `{}`},
	} {
		code, err := do(withCert, m.method, m.path, m.body)
		if err != nil || code != http.StatusNotFound && code != http.StatusMethodNotAllowed {
			t.Errorf("%s %s over TCP: %d, %v; want 404 or 405", m.method, m.path, code, err)
		}
	}
	var eps []api.Endpoint
	rwCtl(t, h2, "endpoints", &eps)
	if len(eps) != 1 || eps[0].Name != "c2" {
		t.Errorf("h2's endpoints after the refused requests: %+v, want c2 alone", eps)
	}
	noCert := cl.EtcdTLS()
	noCert.Certificates, noCert.GetClientCertificate = nil, nil
	if code, err := do(client(noCert), "GET", api.PathStatus, ""); err == nil {
		t.Errorf("GET %s over TCP without a client certificate: %d, want the TLS handshake refused", api.PathStatus, code)
	} else {
		t.Logf("without a client certificate: %v", err)
	}
}
