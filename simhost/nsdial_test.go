package simhost

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/keyroute/keyroute/internal/testenv"
)

// Sockets opened through Do live in the namespace: a server there is
// reachable from the namespace and invisible from the caller's.
func TestNetNSDialAndListen(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.Require(t, "ip", "ss")
	ns, err := NewNetNS(fmt.Sprintf("krsimd-%d", os.Getpid()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Delete() })

	pc, err := ns.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	port := pc.LocalAddr().(*net.UDPAddr).Port
	out, err := ns.Exec("ss", "-Hlun")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, fmt.Sprintf("127.0.0.1:%d", port)) {
		t.Fatalf("UDP socket :%d not listed inside %s:\n%s", port, ns.Name, out)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := ns.DialContext(ctx, "udp4", pc.LocalAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	pc.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 16)
	nr, _, err := pc.ReadFrom(buf)
	if err != nil || string(buf[:nr]) != "hello" {
		t.Fatalf("read %q, %v; want hello", buf[:nr], err)
	}

	// HTTP through the namespace reaches a server listening only there.
	var ln net.Listener
	if err := ns.Do(func() error {
		var err error
		ln, err = net.Listen("tcp4", "127.0.0.1:0")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "inside") })}
	go srv.Serve(ln)
	defer srv.Close()
	resp, err := ns.HTTPClient().Get("http://" + ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(body) != "inside" {
		t.Fatalf("body %q, want inside", body)
	}
	if _, err := (&net.Dialer{Timeout: time.Second}).Dial("tcp4", ln.Addr().String()); err == nil {
		t.Fatalf("%s reachable from the caller's namespace; the listener leaked out of %s", ln.Addr(), ns.Name)
	}

	if err := (&NetNS{Name: "krsimd-does-not-exist"}).Do(func() error { return nil }); err == nil {
		t.Fatal("Do in a missing namespace succeeded")
	}
}
