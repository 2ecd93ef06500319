package simcluster

import (
	"context"
	"crypto/tls"
	"encoding/base64"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"

	"github.com/keyroute/keyroute/pki"
	"github.com/keyroute/keyroute/registry"
	"github.com/keyroute/keyroute/simhost"
)

// HarnessCert names the certificate the harness's own etcd clients use
// (EtcdClient, EtcdHTTPClient), as an operator's tool would.
const HarnessCert = "harness"

// IntruderPrefix is where ProbeEtcd tries to write.
const IntruderPrefix = "/keyroute/intruder/"

// setupPKI creates the cluster CA and certificates in <Dir>/pki with the
// same code as keyroutectl pki (or takes Options.PKIDir), and loads the
// harness's client TLS config.
func (cl *Cluster) setupPKI() error {
	dir := cl.opts.PKIDir
	if dir == "" {
		dir = filepath.Join(cl.Dir, "pki")
		if _, err := pki.InitCA(dir, pki.InitOptions{Name: "keyroute e2e CA " + cl.Prefix}); err != nil {
			return fmt.Errorf("cluster PKI: %w", err)
		}
		issue := func(name string, ips ...netip.Addr) error {
			_, err := pki.Issue(dir, name, pki.IssueOptions{IPs: ips})
			return err
		}
		for _, h := range cl.hosts {
			if err := issue(h.Name, h.IP); err != nil {
				return fmt.Errorf("cluster PKI: %w", err)
			}
		}
		if err := issue(HarnessCert); err != nil {
			return fmt.Errorf("cluster PKI: %w", err)
		}
		if cl.opts.ExternalEtcd {
			if err := issue("etcd", netip.MustParseAddr(ExternalEtcdIP)); err != nil {
				return fmt.Errorf("cluster PKI: %w", err)
			}
		}
	}
	tc, err := (&registry.TLSFiles{CA: filepath.Join(dir, pki.CACertFile),
		Cert: pki.CertPath(dir, HarnessCert), Key: pki.KeyPath(dir, HarnessCert)}).ClientConfig()
	if err != nil {
		return fmt.Errorf("cluster PKI: %w", err)
	}
	cl.PKIDir, cl.etcdTLS = dir, tc
	return nil
}

// EtcdTLS returns the harness's client TLS config for etcd (the
// "harness" certificate), or nil with PlaintextEtcd.
func (cl *Cluster) EtcdTLS() *tls.Config { return cl.etcdTLS.Clone() }

// EtcdHTTPClient returns an HTTP client for etcd's HTTP endpoints
// (/health, /metrics, the JSON gateway) whose connections start in ns and
// carry the harness's client certificate.
func (cl *Cluster) EtcdHTTPClient(ns *simhost.NetNS) *http.Client {
	return &http.Client{Transport: &http.Transport{DialContext: ns.DialContext, DisableKeepAlives: true, TLSClientConfig: cl.EtcdTLS()}}
}

var machineNameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,10}$`)

// AddFabricMachine adds a machine on the fabric that is not a cluster
// host: a namespace "<prefix>m-<name>" whose eth0 (address ip/24) is a
// port of FabricBridge, with no agent, OVS or certificate. It goes with
// the cluster.
func (cl *Cluster) AddFabricMachine(name string, ip netip.Addr) (*simhost.NetNS, error) {
	if cl.opts.OVSFabric != nil {
		return nil, fmt.Errorf("add fabric machine %s: only on the fab0 bridge, not on an OVS fabric", name)
	}
	if !machineNameRE.MatchString(name) {
		return nil, fmt.Errorf("add fabric machine %q: use 1-11 of a-z, 0-9 and '-'", name)
	}
	ns, err := simhost.NewNetNS(cl.Prefix + "m-" + name)
	if err != nil {
		return nil, fmt.Errorf("add fabric machine %s: %w", name, err)
	}
	port := "m-" + name
	if err := simhost.AddVeth("eth0", ns.Name, port, cl.Fabric.Name); err != nil {
		return nil, fmt.Errorf("add fabric machine %s: %w", name, err)
	}
	if _, err := cl.Fabric.Exec("ip", "link", "set", port, "master", FabricBridge); err != nil {
		return nil, fmt.Errorf("add fabric machine %s: %w", name, err)
	}
	if _, err := ns.Exec("ip", "addr", "add", ip.String()+"/24", "dev", "eth0"); err != nil {
		return nil, fmt.Errorf("add fabric machine %s: %w", name, err)
	}
	return ns, nil
}

// etcdHostPort is EtcdEndpoint's host:port.
func (cl *Cluster) etcdHostPort() string {
	u, err := url.Parse(cl.EtcdEndpoint)
	if err != nil {
		return cl.EtcdEndpoint
	}
	return u.Host
}

// DialEtcd opens (and closes) a TCP connection from ns to etcd's client
// port: whether the network lets ns reach etcd at all, so that a refused
// probe shows etcd's authentication at work and not a missing route.
func (cl *Cluster) DialEtcd(ctx context.Context, ns *simhost.NetNS) error {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	c, err := ns.DialContext(ctx, "tcp", cl.etcdHostPort())
	if err != nil {
		return fmt.Errorf("TCP to etcd at %s from %s: %w", cl.etcdHostPort(), ns.Name, err)
	}
	return c.Close()
}

// EtcdProbe is one way of using the cluster's etcd without the cluster's
// certificates, and what came of it.
type EtcdProbe struct {
	Way string
	// Read and Write are nil when the read (of the hosts' records) or the
	// write (under IntruderPrefix) worked.
	Read, Write error
}

// ProbeEtcd tries, from ns, to read and write the cluster's etcd the ways
// someone without the cluster's certificates would, all at once: etcd's
// gRPC API in plaintext, over TLS without a client certificate, and over
// TLS with a certificate of another CA made to look like h1's; and curl
// (a process in ns) on the JSON gateway over TLS without a certificate
// and in plaintext. No way verifies the server: what is under test is
// whether the server accepts the client.
func (cl *Cluster) ProbeEtcd(ctx context.Context, ns *simhost.NetNS) ([]EtcdProbe, error) {
	// A missing curl would count as a refusal.
	if _, err := exec.LookPath("curl"); err != nil {
		return nil, fmt.Errorf("probe etcd: %w (run make deps)", err)
	}
	hp := cl.etcdHostPort()
	foreign, err := cl.foreignCert()
	if err != nil {
		return nil, err
	}
	noCert := &tls.Config{InsecureSkipVerify: true}
	foreign.InsecureSkipVerify = true
	key := func(way string) string {
		return IntruderPrefix + strings.NewReplacer(" ", "-", ",", "", "'", "").Replace(way) + "-" + ns.Name
	}
	ways := []struct {
		way string
		run func(key string) EtcdProbe
	}{
		{"gRPC, plaintext", func(k string) EtcdProbe { return grpcProbe(ctx, ns, "http://"+hp, nil, k) }},
		{"gRPC, TLS without a client certificate", func(k string) EtcdProbe { return grpcProbe(ctx, ns, "https://"+hp, noCert, k) }},
		{"gRPC, TLS with another CA's certificate", func(k string) EtcdProbe { return grpcProbe(ctx, ns, "https://"+hp, foreign, k) }},
		{"curl, TLS without a client certificate", func(k string) EtcdProbe { return curlProbe(ctx, ns, "https://"+hp, k) }},
		{"curl, plaintext", func(k string) EtcdProbe { return curlProbe(ctx, ns, "http://"+hp, k) }},
	}
	out := make([]EtcdProbe, len(ways))
	var wg sync.WaitGroup
	for i, w := range ways {
		wg.Go(func() {
			out[i] = w.run(key(w.way))
			out[i].Way = w.way
		})
	}
	wg.Wait()
	return out, nil
}

// foreignCert is a client certificate named h1, with h1's address, from
// a CA the cluster does not trust.
func (cl *Cluster) foreignCert() (*tls.Config, error) {
	dir, err := os.MkdirTemp(cl.Dir, "intruder-pki-")
	if err != nil {
		return nil, fmt.Errorf("intruder PKI: %w", err)
	}
	if _, err := pki.InitCA(dir, pki.InitOptions{Name: "keyroute cluster CA"}); err != nil {
		return nil, fmt.Errorf("intruder PKI: %w", err)
	}
	if _, err := pki.Issue(dir, "h1", pki.IssueOptions{IPs: []netip.Addr{cl.hosts[0].IP}}); err != nil {
		return nil, fmt.Errorf("intruder PKI: %w", err)
	}
	pair, err := tls.LoadX509KeyPair(pki.CertPath(dir, "h1"), pki.KeyPath(dir, "h1"))
	if err != nil {
		return nil, fmt.Errorf("intruder PKI: %w", err)
	}
	return &tls.Config{Certificates: []tls.Certificate{pair}}, nil
}

// probeTimeout bounds each probe's read and write: a refused gRPC client
// retries until its deadline.
const probeTimeout = 3 * time.Second

func grpcProbe(ctx context.Context, ns *simhost.NetNS, endpoint string, tc *tls.Config, key string) (p EtcdProbe) {
	cli, err := clientv3.New(clientv3.Config{
		Endpoints: []string{endpoint}, TLS: tc, DialTimeout: probeTimeout, Logger: zap.NewNop(),
		DialOptions: []grpc.DialOption{grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
			return ns.DialContext(ctx, "tcp", addr)
		})},
	})
	if err != nil {
		return EtcdProbe{Read: err, Write: err}
	}
	defer cli.Close()
	rctx, cancel := context.WithTimeout(ctx, probeTimeout)
	_, p.Read = cli.Get(rctx, "/keyroute/hosts/", clientv3.WithPrefix())
	cancel()
	wctx, cancel := context.WithTimeout(ctx, probeTimeout)
	_, p.Write = cli.Put(wctx, key, "written without the cluster's certificate")
	cancel()
	return p
}

// curlProbe posts to etcd's JSON gateway with curl run in ns. Success is
// an HTTP 2xx answer carrying etcd's response header.
func curlProbe(ctx context.Context, ns *simhost.NetNS, base, key string) EtcdProbe {
	b64 := func(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }
	post := func(path, body string) error {
		cctx, cancel := context.WithTimeout(ctx, probeTimeout+2*time.Second)
		defer cancel()
		out, err := exec.CommandContext(cctx, "ip", "netns", "exec", ns.Name, "curl", "-fsS", "-k",
			"--max-time", fmt.Sprint(int(probeTimeout/time.Second)), "-X", "POST", "-d", body, base+path).CombinedOutput()
		if err != nil {
			return fmt.Errorf("curl %s%s: %w: %s", base, path, err, strings.TrimSpace(string(out)))
		}
		if !strings.Contains(string(out), `"header"`) {
			return fmt.Errorf("curl %s%s: not an etcd answer: %.200s", base, path, out)
		}
		return nil
	}
	return EtcdProbe{
		Read:  post("/v3/kv/range", fmt.Sprintf(`{"key":%q,"range_end":%q}`, b64("/keyroute/hosts/"), b64("/keyroute/hosts0"))),
		Write: post("/v3/kv/put", fmt.Sprintf(`{"key":%q,"value":%q}`, b64(key), b64("written without the cluster's certificate"))),
	}
}

// IntruderKeys lists the keys under IntruderPrefix, read with the
// harness's certificate.
func (cl *Cluster) IntruderKeys(ctx context.Context) ([]string, error) {
	cli, err := cl.EtcdClient()
	if err != nil {
		return nil, err
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	resp, err := cli.Get(ctx, IntruderPrefix, clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", IntruderPrefix, err)
	}
	var keys []string
	for _, kv := range resp.Kvs {
		keys = append(keys, string(kv.Key))
	}
	return keys, nil
}
