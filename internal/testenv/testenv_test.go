package testenv

import (
	"fmt"
	"os"
	"runtime"
	"strings"
	"testing"
)

// recorder stands in for a test's T so we can see whether a helper skipped
// or failed it. Like the real T, Skipf and Fatalf end the calling goroutine.
type recorder struct {
	testing.TB
	outcome string // "", "skip" or "fail"
	msg     string
}

func (r *recorder) Helper() {}
func (r *recorder) Skip(args ...any) {
	r.outcome, r.msg = "skip", fmt.Sprint(args...)
	runtime.Goexit()
}
func (r *recorder) Skipf(format string, args ...any) {
	r.outcome, r.msg = "skip", fmt.Sprintf(format, args...)
	runtime.Goexit()
}
func (r *recorder) Fatalf(format string, args ...any) {
	r.outcome, r.msg = "fail", fmt.Sprintf(format, args...)
	runtime.Goexit()
}

func run(t *testing.T, f func(tb testing.TB)) *recorder {
	r := &recorder{TB: t}
	done := make(chan struct{})
	go func() {
		defer close(done)
		f(r)
	}()
	<-done
	return r
}

func setStrict(t *testing.T, ci, require string) {
	t.Setenv("CI", ci)
	t.Setenv("KEYROUTE_REQUIRE_INTEGRATION", require)
}

func TestStrict(t *testing.T) {
	for _, tc := range []struct {
		ci, req string
		want    bool
	}{
		{"", "", false},
		{"false", "0", false},
		{"true", "", true},
		{"", "1", true},
	} {
		setStrict(t, tc.ci, tc.req)
		want := tc.want && !testing.Short()
		if got := Strict(); got != want {
			t.Errorf("CI=%q KEYROUTE_REQUIRE_INTEGRATION=%q short=%v: Strict() = %v, want %v",
				tc.ci, tc.req, testing.Short(), got, want)
		}
	}
}

func TestRequireMissingBinary(t *testing.T) {
	const bin = "krp-no-such-binary"
	setStrict(t, "", "")
	r := run(t, func(tb testing.TB) { Require(tb, "sh", bin) })
	if r.outcome != "skip" || !strings.Contains(r.msg, bin) || strings.Contains(r.msg, "sh,") {
		t.Errorf("non-strict: outcome %q msg %q, want a skip naming only %s", r.outcome, r.msg, bin)
	}

	setStrict(t, "true", "")
	r = run(t, func(tb testing.TB) { Require(tb, bin) })
	want := "fail"
	if testing.Short() {
		want = "skip"
	}
	if r.outcome != want || !strings.Contains(r.msg, bin) {
		t.Errorf("CI=true: outcome %q msg %q, want %s naming %s", r.outcome, r.msg, want, bin)
	}
}

func TestRequirePresentBinary(t *testing.T) {
	setStrict(t, "true", "")
	if r := run(t, func(tb testing.TB) { Require(tb, "sh") }); r.outcome != "" {
		t.Errorf("Require(sh): outcome %q (%s), want the test to go on", r.outcome, r.msg)
	}
}

func TestRequireRoot(t *testing.T) {
	setStrict(t, "true", "")
	r := run(t, func(tb testing.TB) { RequireRoot(tb) })
	switch {
	case testing.Short():
		if r.outcome != "skip" {
			t.Errorf("-short: outcome %q, want skip", r.outcome)
		}
	case os.Geteuid() == 0:
		if r.outcome != "" {
			t.Errorf("as root: outcome %q (%s), want the test to go on", r.outcome, r.msg)
		}
	default:
		if r.outcome != "fail" || !strings.Contains(r.msg, "root") {
			t.Errorf("strict, not root: outcome %q msg %q, want a failure about root", r.outcome, r.msg)
		}
	}
}
