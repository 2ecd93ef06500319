// Package etcdtest runs a throwaway embedded etcd server for tests of
// keyroute's etcd packages: one server per test binary, started on first
// use (so pure tests and fuzz workers, which run TestMain too, never start
// it) and stopped by Main; one key prefix per test.
package etcdtest

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/keyroute/keyroute/registry"
)

// shared is the test binary's server, started by the first Endpoints.
var shared struct {
	once sync.Once
	srv  *Server
	err  error
}

// Main runs a package's tests and then stops the shared server, if one
// started: func TestMain(m *testing.M) { os.Exit(etcdtest.Main(m)) }.
func Main(m *testing.M) int {
	code := m.Run()
	if shared.srv != nil {
		shared.srv.Close()
	}
	return code
}

// Endpoints returns the shared server's client URLs, starting it on first
// use; a server that cannot start fails tb.
func Endpoints(tb testing.TB) []string {
	tb.Helper()
	shared.once.Do(func() { shared.srv, shared.err = Start() })
	if shared.err != nil {
		tb.Fatal(shared.err)
	}
	return shared.srv.Endpoints()
}

// Client returns a client of the shared server, closed when tb ends.
func Client(tb testing.TB) *clientv3.Client {
	tb.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: Endpoints(tb), DialTimeout: 5 * time.Second})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { cli.Close() })
	return cli
}

// Server is an embedded etcd in a temporary data directory.
type Server struct {
	*registry.Embedded
	dir string
}

// Start starts a server on free 127.0.0.1 ports. Its log goes to stderr at
// warn level.
func Start() (*Server, error) {
	dir, err := os.MkdirTemp("", "krf-etcd-")
	if err != nil {
		return nil, fmt.Errorf("start test etcd: %w", err)
	}
	client, err1 := FreeURL()
	peer, err2 := FreeURL()
	if err := errors.Join(err1, err2); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	e, err := registry.StartEmbedded(ctx, registry.EmbeddedConfig{
		DataDir: dir, ClientURL: client, PeerURL: peer, Name: "test",
		Logger: slog.New(slog.NewTextHandler(os.Stderr, nil)),
	})
	if err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("start test etcd: %w", err)
	}
	return &Server{Embedded: e, dir: dir}, nil
}

// Close stops the server and removes its data.
func (s *Server) Close() error {
	err := s.Embedded.Close()
	os.RemoveAll(s.dir)
	return err
}

// FreeURL returns http://127.0.0.1:<port> for a port that was free a
// moment ago.
func FreeURL() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", fmt.Errorf("find a free port: %w", err)
	}
	defer l.Close()
	return "http://" + l.Addr().String(), nil
}

var seq atomic.Uint64

// Prefix returns a key prefix no other test in this process uses.
func Prefix(t testing.TB) string {
	name := strings.NewReplacer("/", "_", " ", "_").Replace(t.Name())
	return fmt.Sprintf("/krf-test/%s-%d/", name, seq.Add(1))
}
