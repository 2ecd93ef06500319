package agent

import (
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/google/nftables"

	"github.com/keyroute/keyroute/internal/testenv"
)

// The agent's nftables objects, written through netlink into a scratch
// namespace, read back by nft as a user would list them.
func TestNftablesRuleset(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.Require(t, "ip", "nft")
	ns := fmt.Sprintf("krnft-%d", os.Getpid())
	run := func(args ...string) string {
		t.Helper()
		out, err := exec.Command("ip", append([]string{"netns", "exec", ns}, args...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("%v: %v: %s", args, err, out)
		}
		return string(out)
	}
	if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v: %s", err, out)
	}
	t.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() })
	run("ip", "link", "add", "d0", "type", "veth", "peer", "name", "d1")
	f, err := os.Open("/run/netns/" + ns)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	orig := nftNew
	nftNew = func() (*nftables.Conn, error) { return nftables.New(nftables.WithNetNSFd(int(f.Fd()))) }
	t.Cleanup(func() { nftNew = orig })

	cluster := netip.MustParsePrefix("198.19.0.0/16")
	for i := 0; i < 2; i++ { // again: idempotent, one rule and one chain
		if err := isolatePort("d0"); err != nil {
			t.Fatal(err)
		}
		if err := nftMasquerade(cluster); err != nil {
			t.Fatal(err)
		}
	}
	got := run("nft", "list", "ruleset")
	for _, want := range []string{
		`table netdev keyroute`,
		`chain port-d0 {`,
		`type filter hook ingress device "d0" priority filter; policy drop;`,
		`table ip keyroute`,
		`type nat hook postrouting priority srcnat; policy accept;`,
		`ip saddr 198.19.0.0/16 ip daddr != 198.19.0.0/16 masquerade`,
	} {
		if n := strings.Count(got, want); n != 1 {
			t.Errorf("ruleset has %q %d times, want once:\n%s", want, n, got)
		}
	}
	releasePort("d0")
	releasePort("d0") // already gone: fine
	if got := run("nft", "list", "table", "netdev", "keyroute"); strings.Contains(got, "port-d0") {
		t.Errorf("port-d0 left after releasePort:\n%s", got)
	}
	// The kernel datapath's start removes every port chain, the
	// masquerade stays.
	if err := isolatePort("d0"); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 2; i++ {
		if err := removePortChains(); err != nil {
			t.Fatalf("removePortChains (%d): %v", i, err)
		}
	}
	if got := run("nft", "list", "tables"); strings.Contains(got, "netdev keyroute") || !strings.Contains(got, "ip keyroute") {
		t.Errorf("tables after removePortChains:\n%s", got)
	}
	if err := removeNftables(); err != nil {
		t.Fatal(err)
	}
	if err := removeNftables(); err != nil {
		t.Fatalf("second removal: %v", err)
	}
	if got := strings.TrimSpace(run("nft", "list", "ruleset")); got != "" {
		t.Errorf("ruleset after removeNftables:\n%s", got)
	}
}
