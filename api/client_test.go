package api

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Each way of not getting an answer says whether the agent runs: no
// socket and a refused connection mean it does not; a permission error
// and a timeout mean it does, and say what to do.
func TestClientErrorClassification(t *testing.T) {
	dir := t.TempDir()

	t.Run("no socket", func(t *testing.T) {
		sock := filepath.Join(dir, "none.sock")
		_, err := NewClient(sock).Status(context.Background())
		if !errors.Is(err, ErrAgentDown) || !strings.Contains(err.Error(), "no socket at "+sock) {
			t.Fatalf("got %v, want ErrAgentDown naming the missing socket", err)
		}
	})

	t.Run("refused", func(t *testing.T) {
		// A socket file a stopped agent left behind: nobody listens.
		sock := filepath.Join(dir, "stale.sock")
		ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
		if err != nil {
			t.Fatal(err)
		}
		ln.SetUnlinkOnClose(false)
		ln.Close()
		_, err = NewClient(sock).Hosts(context.Background())
		if !errors.Is(err, ErrAgentDown) || !strings.Contains(err.Error(), "nothing listens on "+sock) {
			t.Fatalf("got %v, want ErrAgentDown saying nothing listens", err)
		}
	})

	t.Run("timeout", func(t *testing.T) {
		// An agent that accepts and never answers (busy, hung).
		sock := filepath.Join(dir, "hung.sock")
		ln, err := net.Listen("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		release := make(chan struct{})
		defer close(release)
		srv := &http.Server{Handler: http.HandlerFunc(func(http.ResponseWriter, *http.Request) { <-release })}
		go srv.Serve(ln)
		defer srv.Close()
		c := NewClient(sock)
		c.ReadTimeout = 300 * time.Millisecond
		start := time.Now()
		_, err = c.Hosts(context.Background())
		took := time.Since(start)
		if !errors.Is(err, ErrAgentTimeout) || errors.Is(err, ErrAgentDown) || !strings.Contains(err.Error(), "300ms") {
			t.Fatalf("got %v, want ErrAgentTimeout naming the 300ms deadline", err)
		}
		if took > 2*time.Second {
			t.Fatalf("the client waited %s with a 300ms deadline", took)
		}
	})

	t.Run("default deadline", func(t *testing.T) {
		c := NewClient(filepath.Join(dir, "x.sock"))
		if c.ReadTimeout != DefaultReadTimeout || DefaultReadTimeout > 2*time.Second {
			t.Fatalf("default read timeout %s, want %s ≤ 2 s", c.ReadTimeout, DefaultReadTimeout)
		}
	})

	t.Run("permission denied", func(t *testing.T) {
		sock := filepath.Join(dir, "private.sock")
		ln, err := net.Listen("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		os.Chmod(sock, 0o600)
		// Root may connect anyway, so the classification is checked on the
		// error connect(2) returns to anyone else.
		dialErr := &url.Error{Op: "Get", URL: "http://agent/v1/status", Err: &net.OpError{Op: "dial", Net: "unix",
			Err: os.NewSyscallError("connect", syscall.EACCES)}}
		err = classify(sock, dialErr, time.Second)
		if !errors.Is(err, ErrPermission) || errors.Is(err, ErrAgentDown) ||
			!strings.Contains(err.Error(), "needs root") || !strings.Contains(err.Error(), "mode 0600") {
			t.Fatalf("got %v, want ErrPermission naming root, the group and the socket's mode", err)
		}
		if os.Geteuid() != 0 {
			_, err := NewClient(sock).Status(context.Background())
			if !errors.Is(err, ErrPermission) {
				t.Fatalf("real connect as uid %d: got %v, want ErrPermission", os.Geteuid(), err)
			}
		}
	})

	t.Run("agent error passes through", func(t *testing.T) {
		sock := filepath.Join(dir, "ok.sock")
		ln, err := net.Listen("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			w.WriteHeader(http.StatusInternalServerError)
			w.Write([]byte(`{"error":"list keys: etcd at https://198.18.0.1:2379 unreachable"}`))
		})}
		go srv.Serve(ln)
		defer srv.Close()
		_, err = NewClient(sock).Keys(context.Background())
		if err == nil || err.Error() != "list keys: etcd at https://198.18.0.1:2379 unreachable" {
			t.Fatalf("got %v, want the agent's own error", err)
		}
	})
}
