package e2e

import (
	"context"
	"fmt"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/keyroute/keyroute/internal/testenv"
	"github.com/keyroute/keyroute/simcluster"
)

// The multi-host tests share one build of keyroute-agent and keyroutectl per
// test binary: the first test that needs them builds them into a directory
// TestMain owns. KEYROUTE_E2E_BIN names a directory with prebuilt binaries
// instead (e.g. `make build` output), which skips the build.

var (
	sharedBinDir    string // created by TestMain, removed when the tests end
	sharedBuildOnce sync.Once
	sharedBuildErr  error
)

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "keyroute-e2e-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e tests:", err)
		os.Exit(1)
	}
	sharedBinDir = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// testBinaries returns the directory holding keyroute-agent and keyroutectl,
// building them on first use. A failed build fails every test that asks.
func testBinaries(t *testing.T) string {
	t.Helper()
	if dir := os.Getenv("KEYROUTE_E2E_BIN"); dir != "" {
		return dir
	}
	sharedBuildOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		sharedBuildErr = simcluster.BuildBinaries(ctx, sharedBinDir)
	})
	if sharedBuildErr != nil {
		t.Fatalf("build the binaries under test: %v", sharedBuildErr)
	}
	return sharedBinDir
}

// requireDatapath stops t (see internal/testenv) when the datapath the
// cluster would use (dp, else KEYROUTE_E2E_DATAPATH) cannot run here.
func requireDatapath(t *testing.T, dp string) {
	t.Helper()
	if dp == "" {
		var err error
		if dp, err = simcluster.DatapathFromEnv(); err != nil {
			t.Fatal(err)
		}
	}
	if dp == simcluster.DatapathSystem {
		if why := simcluster.KernelDatapathMissing(); why != "" {
			testenv.Unavailable(t, "%s=system: %s", simcluster.EnvDatapath, why)
		}
	}
}

// testCluster starts a simulated cluster for t, or skips/fails t (see
// internal/testenv) when root or a required program is missing. BinDir
// defaults to the shared build, Logger to the test log. The cluster is
// closed when t ends; if t failed, the tail of every agent's log is logged
// first, as that is where the reason usually is.
func testCluster(t *testing.T, opts simcluster.Options) *simcluster.Cluster {
	t.Helper()
	testenv.RequireRoot(t)
	testenv.Require(t, "ovs-vswitchd", "ovsdb-server", "ovsdb-tool", "ovs-vsctl", "ovs-ofctl", "ovs-appctl",
		"tcpdump", "iperf3", "nft", "ip", "ping", "ss", "ethtool")
	requireDatapath(t, opts.Datapath)
	if opts.BinDir == "" {
		opts.BinDir = testBinaries(t)
	}
	if opts.Logger == nil {
		opts.Logger = simcluster.TestLogger(t)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cl, err := simcluster.NewCluster(ctx, opts)
	if err != nil {
		t.Fatalf("start cluster: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			for _, h := range cl.Hosts() {
				t.Logf("last lines of %s:\n%s", h.LogPath, simcluster.LogTail(h.LogPath, 40))
			}
		}
		if err := cl.Close(); err != nil {
			t.Errorf("close cluster: %v", err)
		}
	})
	return cl
}
