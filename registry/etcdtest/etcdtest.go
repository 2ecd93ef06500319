// Package etcdtest runs a throwaway embedded etcd server for tests of
// keyroute's etcd packages: one server per test binary (start it in
// TestMain), one key prefix per test.
package etcdtest

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keyroute/keyroute/registry"
)

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
