// Package testenv decides, for tests that need the real system (root, OVS,
// etcd, network namespaces), whether a missing prerequisite skips the test or
// fails it.
//
// Outside CI a developer without root or without Open vSwitch installed still
// gets a green `go test ./...`: such tests skip with a reason. In CI a skip
// would hide a broken environment, so the same gaps fail the test. Strict mode
// is on when CI=true or KEYROUTE_REQUIRE_INTEGRATION=1 (set by `make test`).
// `go test -short` (make test-unit) asks for unit tests only: tests that need
// root always skip then, and a missing binary skips even in strict mode.
//
// Typical use at the top of an integration test:
//
//	testenv.RequireRoot(t)
//	testenv.Require(t, "ovsdb-server", "ovs-vswitchd", "ovs-vsctl")
package testenv

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
)

// Strict reports whether missing prerequisites must fail tests rather than
// skip them: CI=true or KEYROUTE_REQUIRE_INTEGRATION=1, and not -short.
func Strict() bool {
	if testing.Short() {
		return false
	}
	return os.Getenv("CI") == "true" || os.Getenv("KEYROUTE_REQUIRE_INTEGRATION") == "1"
}

// Unavailable stops the test because a prerequisite is missing: it fails in
// strict mode and skips otherwise. The message says what is missing.
func Unavailable(t testing.TB, format string, args ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, args...)
	if Strict() {
		t.Fatalf("prerequisite missing (strict: CI=true or KEYROUTE_REQUIRE_INTEGRATION=1): %s", msg)
	}
	t.Skipf("skipped: %s", msg)
}

// Require stops the test (see Unavailable) unless every named binary is
// found in PATH. It does not skip in -short mode by itself: a test that only
// runs a local tool (ovs-ofctl ofp-print, say) is cheap enough for unit runs.
func Require(t testing.TB, bins ...string) {
	t.Helper()
	var missing []string
	for _, b := range bins {
		if _, err := exec.LookPath(b); err != nil {
			missing = append(missing, b)
		}
	}
	if len(missing) > 0 {
		Unavailable(t, "not found in PATH: %s (run `make deps` as root)", strings.Join(missing, ", "))
	}
}

// RequireRoot marks an integration test: it skips in -short mode, and stops
// the test (see Unavailable) unless it runs as root.
func RequireRoot(t testing.TB) {
	t.Helper()
	if testing.Short() {
		t.Skip("skipped: integration test (needs root) in -short mode")
	}
	if os.Geteuid() != 0 {
		Unavailable(t, "needs root (euid %d); run `make test` as root", os.Geteuid())
	}
}
