package netnsutil

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"testing"

	"github.com/keyroute/keyroute/internal/testenv"
)

func TestPath(t *testing.T) {
	for in, want := range map[string]string{
		"c1":              "/run/netns/c1",
		"/proc/42/ns/net": "/proc/42/ns/net",
		"./relative/ns":   "./relative/ns",
	} {
		if got := Path(in); got != want {
			t.Errorf("Path(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestDoMissingNamespace(t *testing.T) {
	err := Do("/run/netns/keyroute-no-such-ns", func() error { t.Error("fn ran"); return nil })
	if !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("got %v, want a not-exist error", err)
	}
}

// fn runs in the namespace, its error comes back, and the caller's thread
// pool is left in the original namespace.
func TestDoEntersAndReturns(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.Require(t, "ip")
	name := fmt.Sprintf("krnsu-%d", os.Getpid())
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v: %s", err, out)
	}
	t.Cleanup(func() { exec.Command("ip", "netns", "del", name).Run() })
	self := func() string {
		l, err := os.Readlink("/proc/thread-self/ns/net")
		if err != nil {
			t.Fatal(err)
		}
		return l
	}
	before := self()
	var inside string
	sentinel := errors.New("from fn")
	err := Do(Path(name), func() error { inside = self(); return sentinel })
	if !errors.Is(err, sentinel) {
		t.Fatalf("Do returned %v, want fn's error", err)
	}
	if inside == before || inside == "" {
		t.Fatalf("fn ran in %q, the caller's namespace %q", inside, before)
	}
	if after := self(); after != before {
		t.Fatalf("caller moved from %s to %s", before, after)
	}
}
