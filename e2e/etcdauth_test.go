package e2e

import (
	"context"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/keyroute/keyroute/api"
	"github.com/keyroute/keyroute/internal/testenv"
	"github.com/keyroute/keyroute/simcluster"
	"github.com/keyroute/keyroute/simhost"
)

// outsiderIP is the fabric machine that is not a cluster host.
var outsiderIP = netip.MustParseAddr("198.18.0.200")

// ctlPKI builds the cluster's PKI the way the README's multi-host recipe
// does, with the keyroutectl binary under test: a CA, a certificate per
// host with its IP, one for the harness's client and, for an external
// etcd, one for its server.
func ctlPKI(t *testing.T, bin string, hosts int, external bool) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "pki")
	run := func(args ...string) {
		t.Helper()
		out, err := exec.Command(filepath.Join(bin, "keyroutectl"), append([]string{"pki"}, args...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("keyroutectl pki %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	run("init", "--dir", dir)
	for i := 1; i <= hosts; i++ {
		run("issue", "h"+strconv.Itoa(i), "--dir", dir, "--ip", netip.AddrFrom4([4]byte{198, 18, 0, byte(i)}).String())
	}
	run("issue", simcluster.HarnessCert, "--dir", dir)
	if external {
		run("issue", "etcd", "--dir", dir, "--ip", simcluster.ExternalEtcdIP)
	}
	return dir
}

// requireRefused fails t unless every probe from who was refused, both
// read and write, and logs how.
func requireRefused(t *testing.T, cl *simcluster.Cluster, who string, ns *simhost.NetNS) {
	t.Helper()
	// The network does let who reach etcd: what turns it away is etcd.
	if err := cl.DialEtcd(context.Background(), ns); err != nil {
		t.Fatalf("%s cannot reach etcd at all, so the probes would prove nothing: %v", who, err)
	}
	probes, err := cl.ProbeEtcd(context.Background(), ns)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range probes {
		if p.Read == nil {
			t.Errorf("%s read the cluster's etcd (%s)", who, p.Way)
		}
		if p.Write == nil {
			t.Errorf("%s wrote to the cluster's etcd (%s)", who, p.Way)
		}
		t.Logf("%s, %s: read refused: %v; write refused: %v", who, p.Way, p.Read, p.Write)
	}
}

// requireHealthy fails t unless h's agent reports etcd healthy over https.
func requireHealthy(t *testing.T, h *simcluster.Host) {
	t.Helper()
	s, err := api.NewClient(h.APISocket).Status(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if !s.Etcd.Healthy || len(s.Etcd.Endpoints) == 0 || !strings.HasPrefix(s.Etcd.Endpoints[0], "https://") {
		t.Errorf("%s etcd status %+v, want healthy over https", h.Name, s.Etcd)
	}
}

// With TLS (the default), a container on h2 and a machine on the fabric
// that is not a cluster host reach h1's embedded etcd but can neither read
// nor write it, in plaintext, over TLS without a certificate, with another
// CA's certificate or with curl; the agents, holding certificates of the
// cluster CA made with keyroutectl pki, work.
func TestEtcdTLSTurnsAwayContainersAndOutsiders(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.Require(t, "curl")
	bin := testBinaries(t)
	cl := testCluster(t, simcluster.Options{Hosts: 2, BinDir: bin, PKIDir: ctlPKI(t, bin, 2, false)})
	h1, h2 := cl.Host(1), cl.Host(2)
	if cl.EtcdEndpoint != "https://198.18.0.1:2379" {
		t.Fatalf("etcd endpoint %s, want https on h1", cl.EtcdEndpoint)
	}
	for _, h := range cl.Hosts() {
		requireHealthy(t, h)
	}
	hosts, err := api.NewClient(h2.APISocket).Hosts(context.Background())
	if err != nil || len(hosts) != 2 || hosts[0].Agent != api.AgentUp || hosts[1].Agent != api.AgentUp {
		t.Fatalf("h2 sees hosts %+v (%v), want h1 and h2 up", hosts, err)
	}

	spy, err := cl.Attach(2, "spy", "")
	if err != nil {
		t.Fatal(err)
	}
	outsider, err := cl.AddFabricMachine("outsider", outsiderIP)
	if err != nil {
		t.Fatal(err)
	}
	requireRefused(t, cl, "container spy on h2", spy.NS)
	requireRefused(t, cl, "fabric machine "+outsiderIP.String(), outsider)

	// Nothing landed, and a holder of a cluster certificate can write.
	if keys, err := cl.IntruderKeys(context.Background()); err != nil || len(keys) != 0 {
		t.Errorf("keys written without a certificate: %v (%v)", keys, err)
	}
	cli := etcdClientT(t, cl)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := cli.Put(ctx, simcluster.IntruderPrefix+"with-the-harness-certificate", "ok"); err != nil {
		t.Errorf("put with a cluster certificate: %v", err)
	}
	if keys, err := cl.IntruderKeys(ctx); err != nil || len(keys) != 1 {
		t.Errorf("keys after a put with a cluster certificate: %v (%v), want one", keys, err)
	}
	if _, err := cli.Delete(ctx, simcluster.IntruderPrefix, clientv3.WithPrefix()); err != nil {
		t.Error(err)
	}

	// The agents still serve: the new container reaches one on h1.
	peer, err := cl.Attach(1, "peer", "")
	if err != nil {
		t.Fatal(err)
	}
	if err := spy.PingUntil(peer.IP.String(), 15*time.Second); err != nil {
		t.Errorf("spy -> peer across hosts: %v", err)
	}
	// The embedded etcd's server saw the refused handshakes, in h1's log.
	if b, _ := os.ReadFile(h1.LogPath); !strings.Contains(string(b), "rejected connection") {
		t.Logf("h1's log does not mention rejected connections")
	}
	if b, _ := os.ReadFile(h1.LogPath); strings.Contains(string(b), "etcd.insecure") {
		t.Errorf("h1 warns about etcd.insecure with TLS set up")
	}
}

// An external etcd with TLS and client-certificate authentication: the
// agent connects with its certificate; a machine on the fabric that is not
// a cluster host cannot use it.
func TestEtcdTLSExternal(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.Require(t, "curl", "etcd")
	cl := testCluster(t, simcluster.Options{Hosts: 1, ExternalEtcd: true})
	if cl.EtcdEndpoint != "https://"+simcluster.ExternalEtcdIP+":2379" {
		t.Fatalf("etcd endpoint %s, want https", cl.EtcdEndpoint)
	}
	requireHealthy(t, cl.Host(1))
	outsider, err := cl.AddFabricMachine("outsider", outsiderIP)
	if err != nil {
		t.Fatal(err)
	}
	requireRefused(t, cl, "fabric machine "+outsiderIP.String(), outsider)
	if keys, err := cl.IntruderKeys(context.Background()); err != nil || len(keys) != 0 {
		t.Errorf("keys written without a certificate: %v (%v)", keys, err)
	}
}

// With etcd.insecure: true, plaintext on the host IP is allowed and every
// agent start says so in the log; without it, the same config is refused
// with the fix. The fabric machine's plaintext writes go through: what
// TLS stops above.
func TestEtcdInsecureWarns(t *testing.T) {
	testenv.Require(t, "curl")
	cl := testCluster(t, simcluster.Options{Hosts: 2, PlaintextEtcd: true})
	h1, h2 := cl.Host(1), cl.Host(2)
	const warn = "etcd.insecure: true: etcd is plaintext and unauthenticated at http://198.18.0.1:2379"
	count := func(h *simcluster.Host) int {
		b, err := os.ReadFile(h.LogPath)
		if err != nil {
			t.Fatal(err)
		}
		return strings.Count(string(b), warn)
	}
	for _, h := range cl.Hosts() {
		if n := count(h); n != 1 {
			t.Errorf("%s logged %q %d times, want once", h.Name, warn, n)
		}
	}
	if err := h2.StopAgent(); err != nil {
		t.Fatal(err)
	}
	if err := h2.StartAgent(); err != nil {
		t.Fatal(err)
	}
	if n := count(h2); n != 2 {
		t.Errorf("h2 logged the warning %d times after a restart, want 2 (every start)", n)
	}

	out, err := exec.Command(filepath.Join(cl.BinDir, "keyroute-agent"), "--config", h1.ConfigPath, "--check-config", "--etcd-insecure=false").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "etcd.embedded_client_url=http://198.18.0.1:2379: plaintext etcd on a non-loopback address") ||
		!strings.Contains(string(out), "keyroutectl pki issue h1") {
		t.Errorf("h1's config without etcd.insecure: %v\n%s\nwant the refusal naming keyroutectl pki", err, out)
	}
	out, err = exec.Command(filepath.Join(cl.BinDir, "keyroute-agent"), "--config", h1.ConfigPath, "--check-config").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "warning: "+warn) {
		t.Errorf("--check-config with etcd.insecure: %v\n%s\nwant the warning", err, out)
	}

	outsider, err := cl.AddFabricMachine("outsider", outsiderIP)
	if err != nil {
		t.Fatal(err)
	}
	probes, err := cl.ProbeEtcd(context.Background(), outsider)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range probes {
		if strings.Contains(p.Way, "plaintext") && (p.Read != nil || p.Write != nil) {
			t.Errorf("plaintext etcd, %s from the fabric machine: read %v, write %v; want both to work", p.Way, p.Read, p.Write)
		}
	}
	if keys, err := cl.IntruderKeys(context.Background()); err != nil || len(keys) != 2 {
		t.Errorf("keys written in plaintext: %v (%v), want 2", keys, err)
	}
}
