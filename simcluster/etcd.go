package simcluster

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"time"

	"github.com/keyroute/keyroute/pki"
)

// startEtcd runs Debian's etcd in the fabric namespace at ExternalEtcdIP
// and waits until it reports healthy. With TLS it serves the "etcd"
// certificate and requires client (and peer) certificates of the cluster
// CA, as an operator's etcd cluster would.
func (cl *Cluster) startEtcd(ctx context.Context) error {
	dir := filepath.Join(cl.Dir, "etcd")
	peer := "http://127.0.0.1:2380"
	var tlsArgs []string
	if cl.PKIDir != "" {
		peer = "https://127.0.0.1:2380"
		ca, cert, key := filepath.Join(cl.PKIDir, pki.CACertFile), pki.CertPath(cl.PKIDir, "etcd"), pki.KeyPath(cl.PKIDir, "etcd")
		tlsArgs = []string{"--cert-file", cert, "--key-file", key, "--trusted-ca-file", ca, "--client-cert-auth",
			"--peer-cert-file", cert, "--peer-key-file", key, "--peer-trusted-ca-file", ca, "--peer-client-cert-auth"}
	}
	args := append([]string{"ip", "netns", "exec", cl.Fabric.Name,
		"etcd", "--name", "fabric", "--data-dir", filepath.Join(dir, "data"),
		"--listen-client-urls", cl.EtcdEndpoint, "--advertise-client-urls", cl.EtcdEndpoint,
		"--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
		"--initial-cluster", "fabric=" + peer, "--initial-cluster-state", "new"}, tlsArgs...)
	p, err := startProcess("etcd", filepath.Join(cl.Dir, "etcd.log"), args...)
	if err != nil {
		return err
	}
	p.daemon = true
	cl.procs.add(p)
	cl.etcd = p
	return cl.waitEtcd(ctx)
}

// waitEtcd polls etcd's /health from inside the fabric namespace.
func (cl *Cluster) waitEtcd(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, ReadyTimeout)
	defer cancel()
	client := cl.EtcdHTTPClient(cl.Fabric)
	var last error
	for {
		if ended, err := cl.etcd.Exited(); ended {
			return fmt.Errorf("etcd exited while starting (%v):\n%s", err, cl.etcd.LogTail(30))
		}
		last = etcdHealthy(ctx, client, cl.EtcdEndpoint+"/health")
		if last == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("etcd at %s not healthy: %v\n%s", cl.EtcdEndpoint, last, cl.etcd.LogTail(30))
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// etcdHealthy asks etcd's /health endpoint.
func etcdHealthy(ctx context.Context, client *http.Client, url string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), `"health":"true"`) {
		return fmt.Errorf("GET %s: %s %s", url, resp.Status, strings.TrimSpace(string(body)))
	}
	return nil
}

// StopEtcd stops the external etcd (an outage, for tests). Only with
// Options.ExternalEtcd.
func (cl *Cluster) StopEtcd() error {
	if cl.etcd == nil {
		return fmt.Errorf("stop etcd: the cluster runs no external etcd (Options.ExternalEtcd)")
	}
	return cl.etcd.Stop(10 * time.Second)
}

// EtcdStopped reports whether the external etcd is down (StopEtcd, or it
// died), so a test's cleanup can bring it back.
func (cl *Cluster) EtcdStopped() bool {
	if cl.etcd == nil {
		return false
	}
	ended, _ := cl.etcd.Exited()
	return ended
}

// StartEtcd restarts the external etcd with its data and waits until it is
// healthy.
func (cl *Cluster) StartEtcd(ctx context.Context) error {
	if cl.etcd == nil {
		return fmt.Errorf("start etcd: the cluster runs no external etcd (Options.ExternalEtcd)")
	}
	if ended, _ := cl.etcd.Exited(); !ended {
		return fmt.Errorf("start etcd: already running as pid %d", cl.etcd.PID())
	}
	return cl.startEtcd(ctx)
}
