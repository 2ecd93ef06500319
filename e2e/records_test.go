package e2e

// Hardened etcd records (issue 11): whatever anyone writes into the
// cluster's etcd, an agent skips what is bad, counts it by kind, logs it
// once and keeps serving.

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/keyroute/keyroute/registry"
	"github.com/keyroute/keyroute/simcluster"
	"github.com/keyroute/keyroute/simhost"
)

// badRecord is one raw etcd write under /keyroute/.
type badRecord struct {
	kind, key, value string
}

// badRecordCorpus returns bad records of every kind for a cluster whose
// hosts are h1 and h2: the IPv6 host and roaming records that used to
// panic every agent, one record per rejected field, oversize values, and
// truncated and random values (a small fuzz corpus). None of them lands on
// a key the cluster uses: a real host, container, claim or key pair.
func badRecordCorpus() []badRecord {
	big := strings.Repeat("x", registry.MaxRecordSize+1)
	rs := []badRecord{
		// The two records of the issue.
		{registry.KindHost, "hosts/evil", `{"name":"evil","underlayIP":"2001:db8::1","underlayMAC":"02:00:00:00:00:99","podSubnet":"198.19.200.0/24"}`},
		{registry.KindRoaming, "roaming/2001:db8::5", `{"ip":"2001:db8::5","host":"h2","name":"x"}`},

		{registry.KindHost, "hosts/evil-4in6", `{"name":"evil-4in6","underlayIP":"::ffff:10.9.9.9","underlayMAC":"02:00:00:00:00:98","podSubnet":"198.19.201.0/24"}`},
		{registry.KindHost, "hosts/evil-mcast", `{"name":"evil-mcast","underlayIP":"10.9.9.9","underlayMAC":"01:00:5e:00:00:01","podSubnet":"198.19.202.0/24"}`},
		{registry.KindHost, "hosts/evil-size", `{"name":"evil-size","underlayIP":"10.9.9.9","underlayMAC":"02:00:00:00:00:97","podSubnet":"198.19.0.0/23"}`},
		{registry.KindHost, "hosts/evil-net6", `{"name":"evil-net6","underlayIP":"10.9.9.9","underlayMAC":"02:00:00:00:00:96","podSubnet":"fd00::/64"}`},
		{registry.KindHost, "hosts/evil-all", `{"name":"evil-all","underlayIP":"10.9.9.9","underlayMAC":"02:00:00:00:00:95","podSubnet":"0.0.0.0/0"}`},
		{registry.KindHost, "hosts/evil-name", `{"name":"h1","underlayIP":"10.9.9.9","underlayMAC":"02:00:00:00:00:94","podSubnet":"198.19.203.0/24"}`},
		{registry.KindHost, "hosts/big", `{"name":"big","pad":"` + big + `"}`},
		{registry.KindAlive, "alive/evil", `{"host":"evil"}`},
		{registry.KindAlive, "alive/evil2", `{"host":"h1","since":"2024-01-02T03:04:05Z"}`},
		{registry.KindSubnet, "subnets/fd00::/64", "evil"},
		{registry.KindSubnet, "subnets/0.0.0.0/0", "evil"},
		{registry.KindSubnet, "subnets/198.19.250.0/24", "not a name"},
		{registry.KindEndpoint, "endpoints/2001:db8::6", `{"ip":"2001:db8::6","host":"h2","name":"v6","port":"krv6"}`},
		{registry.KindEndpoint, "endpoints/10.9.9.9", `{"ip":"10.9.9.9","host":"h1","name":"outside"}`},
		{registry.KindEndpoint, "endpoints/198.19.250.7", `{"ip":"198.19.250.7","host":"h1","name":"m","mac":"ff:ff:ff:ff:ff:ff"}`},
		{registry.KindEndpoint, "endpoints/198.19.250.8", `{"ip":"198.19.250.9","host":"h1","name":"moved"}`},
		{registry.KindEndpoint, "endpoints/198.19.250.10", big},
		{registry.KindRoaming, "roaming/198.19.250.11", `{"ip":"198.19.250.11","name":"nohost"}`},
		{registry.KindRoaming, "roaming/10.0.0.5", `{"ip":"10.0.0.5","host":"h1","name":"outside"}`},
		{registry.KindKey, "keys/h1/evil/7", `{"src":"fd00::1","dst":"198.19.2.3","state":"ready"}`},
		{registry.KindKey, "keys/h1/evil/99", `{"src":"198.19.1.2","dst":"198.19.2.3","state":"ready"}`},
		{registry.KindKey, "keys/h2/evil/07", `{"src":"198.19.1.2","dst":"198.19.2.3","state":"ready"}`},
		{registry.KindKey, "keys/h2/evil/9", big},
		{registry.KindKey, "keys/h2/evil/99", `{"src":"198.19.1.2","dst":"198.19.2.3","state":"ready"}`},
		{registry.KindPair, "pairs/h1/evil/fd00::1-fd00::2", `{"key":5}`},
		{registry.KindPair, "pairs/h2/evil/198.19.9.2-198.19.1.3", `{"key":99}`},
		{registry.KindRule, "rules/evil6", `{"id":"evil6","direction":"egress","local":{},"remote":{"cidr":"2001:db8::/32"},"action":"deny"}`},
		{registry.KindRule, "rules/evil-ports", `{"id":"evil-ports","direction":"ingress","local":{},"remote":{},"protocol":"tcp","ports":"0-99999","action":"deny"}`},
		{registry.KindRule, "rules/big", big},
	}
	// Truncated good records (a prefix of a JSON object is never valid)
	// and random bytes, from a fixed seed so a failure replays.
	good := map[string]string{
		"hosts/":         `{"name":"h9","underlayIP":"10.9.9.9","underlayMAC":"02:00:00:00:00:09","podSubnet":"198.19.209.0/24"}`,
		"endpoints/":     `{"ip":"198.19.250.30","host":"h1","name":"c9","mac":"0a:58:c6:13:fa:1e"}`,
		"roaming/":       `{"ip":"198.19.250.31","host":"h1","name":"c9"}`,
		"keys/h1/evil/":  `{"src":"198.19.1.2","dst":"198.19.2.3","state":"ready"}`,
		"pairs/h2/evil/": `{"key":5}`,
		"rules/":         `{"id":"r9","direction":"egress","local":{},"remote":{},"action":"deny"}`,
	}
	kinds := map[string]string{"hosts/": registry.KindHost, "endpoints/": registry.KindEndpoint, "roaming/": registry.KindRoaming,
		"keys/h1/evil/": registry.KindKey, "pairs/h2/evil/": registry.KindPair, "rules/": registry.KindRule}
	rnd := rand.New(rand.NewPCG(11, 11))
	for dir, v := range good {
		for i := range 3 {
			key := fmt.Sprintf("%sfuzz-%d", dir, i)
			switch dir {
			case "endpoints/", "roaming/":
				key = fmt.Sprintf("%s198.19.251.%d", dir, i+1)
			case "keys/h1/evil/":
				key = fmt.Sprintf("%s%d", dir, 20+i)
			case "pairs/h2/evil/":
				key = fmt.Sprintf("%s198.19.9.%d-198.19.1.3", dir, i+1)
			}
			val := v[:rnd.IntN(len(v))]
			if i == 2 {
				b := make([]byte, 1+rnd.IntN(200))
				for j := range b {
					b[j] = byte(rnd.IntN(256))
				}
				val = string(b)
			}
			rs = append(rs, badRecord{kinds[dir], key, val})
		}
	}
	return rs
}

// While two containers on two hosts ping each other, bad records of every
// kind are written straight into etcd: both agents stay up and forwarding,
// count the records by kind and log each once. An agent restarted with the
// records still there starts and serves.
func TestBadRecordsInEtcd(t *testing.T) {
	cl := rwCluster(t, simcluster.Options{})
	h1, h2 := cl.Host(1), cl.Host(2)
	c1 := rwAttach(t, cl, 1, "c1")[0]
	c2 := rwAttach(t, cl, 2, "c2")[0]
	for _, p := range [][2]*simcluster.Container{{c1, c2}, {c2, c1}} {
		if err := p[0].PingUntil(p[1].IP.String(), 15*time.Second); err != nil {
			t.Fatal(err)
		}
	}
	pids := map[string]int{h1.Name: h1.AgentPID(), h2.Name: h2.AgentPID()}

	const interval, count = 50 * time.Millisecond, 200 // 10 s
	wait12 := rwBgPing(t, c1, c2.IP.String(), interval, count)
	wait21 := rwBgPing(t, c2, c1.IP.String(), interval, count)
	time.Sleep(time.Second)

	cli := etcdClientT(t, cl)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	corpus := badRecordCorpus()
	for _, r := range corpus {
		if _, err := cli.Put(ctx, "/keyroute/"+r.key, r.value); err != nil {
			t.Fatalf("write %s: %v", r.key, err)
		}
	}
	t.Logf("wrote %d bad records into etcd", len(corpus))

	// Re-reads must not log again: keyroutectl hosts lists the host and
	// alive records each time, endpoints the endpoint records (and so the
	// agents read those kinds at all).
	for range 3 {
		for _, h := range []*simcluster.Host{h1, h2} {
			for _, cmd := range []string{"hosts", "endpoints"} {
				if _, err := h.Ctl(cmd); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	// What each agent reads while running: host, roaming and rule records
	// cluster-wide, its own key records and pair index, alive and endpoint
	// records for keyroutectl. Subnet claims are read at start-up only.
	running := []string{registry.KindHost, registry.KindAlive, registry.KindEndpoint, registry.KindRoaming,
		registry.KindKey, registry.KindPair, registry.KindRule}
	for _, h := range []*simcluster.Host{h1, h2} {
		waitBadCounts(t, h, running)
	}

	st12, out12 := wait12()
	st21, out21 := wait21()
	for _, s := range []struct {
		name string
		st   simcluster.PingStats
		out  string
	}{{"c1->c2", st12, out12}, {"c2->c1", st21, out21}} {
		t.Logf("%s while bad records were written: %d of %d answered", s.name, s.st.Received, s.st.Sent)
		// Not one lost packet is the expectation; two allow for a slow CI
		// host without hiding an outage (a crash loses seconds of them).
		if s.st.Received < s.st.Sent-2 || s.st.Sent < count {
			t.Errorf("%s while bad records were written: %d of %d answered\n%s", s.name, s.st.Received, s.st.Sent, s.out)
		}
	}
	for _, h := range []*simcluster.Host{h1, h2} {
		if pid := h.AgentPID(); pid != pids[h.Name] {
			t.Errorf("%s agent PID %d, was %d: it exited\n%s", h.Name, pid, pids[h.Name], simcluster.LogTail(h.LogPath, 40))
		}
		if _, err := h.Ctl("status"); err != nil {
			t.Errorf("%s: status: %v", h.Name, err)
		}
		m := rwMetrics(t, h)
		if n := rwMetric(m, "keyroute_flows_skipped_inputs_total"); n != 0 {
			t.Errorf("%s: keyroute_flows_skipped_inputs_total %v: a bad address got past the decoders", h.Name, n)
		}
		// One log line per bad record version, however often it was read.
		for _, key := range []string{"hosts/evil", "roaming/2001:db8::5", "alive/evil", "endpoints/2001:db8::6", "rules/evil6", "keys/" + h.Name + "/evil/99"} {
			if n := countLogLines(t, h, key); n != 1 {
				t.Errorf("%s logged %s %d times, want once", h.Name, key, n)
			}
		}
		assertNoPanic(t, h)
	}

	// A restart meets every bad record at once, subnet claims included.
	if err := h2.StopAgent(); err != nil {
		t.Fatal(err)
	}
	if err := h2.StartAgent(); err != nil {
		t.Fatalf("%s agent does not start with bad records in etcd: %v\n%s", h2.Name, err, simcluster.LogTail(h2.LogPath, 40))
	}
	if _, err := h2.Ctl("status"); err != nil {
		t.Fatalf("restarted %s: status: %v", h2.Name, err)
	}
	for _, p := range [][2]*simcluster.Container{{c1, c2}, {c2, c1}} {
		if err := p[0].PingUntil(p[1].IP.String(), 15*time.Second); err != nil {
			t.Fatalf("after restarting %s: %v", h2.Name, err)
		}
		if err := p[0].Ping(p[1].IP.String(), 5); err != nil {
			t.Errorf("after restarting %s: %v", h2.Name, err)
		}
	}
	for _, cmd := range []string{"hosts", "endpoints"} {
		if _, err := h2.Ctl(cmd); err != nil {
			t.Fatal(err)
		}
	}
	waitBadCounts(t, h2, append(running, registry.KindSubnet))
	if pid := h1.AgentPID(); pid != pids[h1.Name] {
		t.Errorf("%s agent PID %d, was %d: it exited", h1.Name, pid, pids[h1.Name])
	}
	assertNoPanic(t, h2)
}

// waitBadCounts waits until h's keyroute_etcd_bad_records_total moved for
// every kind given.
func waitBadCounts(t *testing.T, h *simcluster.Host, kinds []string) {
	t.Helper()
	var m string
	err := simhost.WaitFor(15*time.Second, func() error {
		var err error
		if m, err = h.Metrics(); err != nil {
			return err
		}
		var missing []string
		for _, k := range kinds {
			if rwMetric(m, "keyroute_etcd_bad_records_total", fmt.Sprintf(`kind="%s"`, k)) == 0 {
				missing = append(missing, k)
			}
		}
		if len(missing) > 0 {
			return fmt.Errorf("%s: keyroute_etcd_bad_records_total has not moved for %v", h.Name, missing)
		}
		return nil
	})
	if err != nil {
		t.Errorf("%v\n%s", err, grepLines(m, "keyroute_etcd_bad_records_total"))
		return
	}
	t.Logf("%s: %s", h.Name, strings.Join(strings.Fields(grepLines(m, "keyroute_etcd_bad_records_total{")), " "))
}

// countLogLines counts the agent log's "skipping bad record" lines for key
// (below /keyroute/).
func countLogLines(t *testing.T, h *simcluster.Host, key string) int {
	t.Helper()
	b, err := os.ReadFile(h.LogPath)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, l := range strings.Split(string(b), "\n") {
		if strings.Contains(l, "skipping bad record in etcd") && strings.Contains(l, " key=/keyroute/"+key+" ") {
			n++
		}
	}
	return n
}

func assertNoPanic(t *testing.T, h *simcluster.Host) {
	t.Helper()
	b, err := os.ReadFile(h.LogPath)
	if err != nil {
		t.Fatal(err)
	}
	if i := strings.Index(string(b), "panic:"); i >= 0 {
		t.Errorf("%s agent log has a panic:\n%s", h.Name, string(b[i:min(len(b), i+2000)]))
	}
}

func grepLines(text, sub string) string {
	var out []string
	for _, l := range strings.Split(text, "\n") {
		if strings.Contains(l, sub) && !strings.HasPrefix(l, "#") {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
