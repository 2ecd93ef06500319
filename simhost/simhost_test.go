package simhost

import (
	"fmt"
	"os"
	"strings"
	"testing"
	"time"
)

func TestStartOVSInNetNS(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for network namespaces")
	}
	if _, err := Run("ovs-vswitchd", "--version"); err != nil {
		if os.Getenv("CI") == "true" || os.Getenv("KEYROUTE_REQUIRE_INTEGRATION") == "1" {
			t.Fatalf("ovs-vswitchd missing: %v", err)
		}
		t.Skip("ovs-vswitchd not installed")
	}
	name := fmt.Sprintf("krsim-%d", os.Getpid())
	ns, err := NewNetNS(name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Delete() })
	o, err := StartOVS(t.TempDir(), name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { o.Stop() })
	if _, err := o.Vsctl("add-br", "br0", "--", "set", "bridge", "br0", "datapath_type=netdev"); err != nil {
		t.Fatal(err)
	}
	if err := WaitFor(10*time.Second, func() error { _, err := os.Stat(o.MgmtSocket("br0")); return err }); err != nil {
		t.Fatal(err)
	}
	out, err := o.Ofctl("dump-flows", "br0")
	if err != nil {
		t.Fatal(err)
	}
	if out != "" && !strings.Contains(out, "NORMAL") {
		t.Fatalf("fresh bridge flows = %q", out)
	}
	// the bridge's LOCAL port lives in our namespace, not the caller's
	if _, err := ns.Exec("ip", "link", "show", "br0"); err != nil {
		t.Fatalf("br0 not in %s: %v", name, err)
	}
	pid, _ := o.PID("ovs-vswitchd")
	if err := o.Stop(); err != nil {
		t.Fatal(err)
	}
	if alive(pid) {
		t.Fatalf("ovs-vswitchd %d still running after Stop", pid)
	}
}
