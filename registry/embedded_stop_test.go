package registry_test

import (
	"net"
	"net/url"
	"testing"
	"time"

	"github.com/keyroute/keyroute/registry"
	"github.com/keyroute/keyroute/registry/etcdtest"
)

// A peer agent's watch and lease keep-alive streams stay open until the
// server stops; Close must still return within the agent's stop budget
// (2 s; etcd alone waits 7 s for them) with both ports free for a restart.
func TestEmbeddedCloseWithOpenStreams(t *testing.T) {
	dir := testPKI(t, "h1", "h2")
	for _, tc := range []struct {
		name         string
		client, peer string
		tls          bool
	}{
		{"plaintext", "", "", false},
		{"tls", httpsURL(t), httpsURL(t), true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := ctxT(t)
			cfg := registry.EmbeddedConfig{DataDir: t.TempDir(), ClientURL: tc.client, PeerURL: tc.peer, Logger: quiet}
			var opts []registry.Option
			if tc.tls {
				cfg.TLS = files(dir, "h1")
				opts = append(opts, registry.WithTLS(files(dir, "h2")))
			} else {
				var err error
				if cfg.ClientURL, err = etcdtest.FreeURL(); err != nil {
					t.Fatal(err)
				}
				if cfg.PeerURL, err = etcdtest.FreeURL(); err != nil {
					t.Fatal(err)
				}
			}
			e, err := registry.StartEmbedded(ctx, cfg)
			if err != nil {
				t.Fatal(err)
			}
			c, err := registry.New(e.Endpoints(), append(opts, registry.WithLogger(quiet))...)
			if err != nil {
				e.Close()
				t.Fatal(err)
			}
			defer c.Close()
			watch := c.WatchHosts(ctx)
			if _, err := c.RegisterHost(ctx, host(2), 15*time.Second); err != nil {
				e.Close()
				t.Fatal(err)
			}
			next(t, watch) // the stream is open and delivering

			start := time.Now()
			e.Close()
			took := time.Since(start)
			t.Logf("Close took %s", took.Round(time.Millisecond))
			if took > 2*time.Second {
				t.Errorf("Close with a peer's open streams took %s, want ≤ 2 s", took.Round(time.Millisecond))
			}
			for _, u := range []string{cfg.ClientURL, cfg.PeerURL} {
				pu, _ := url.Parse(u)
				l, err := net.Listen("tcp", pu.Host)
				if err != nil {
					t.Errorf("port of %s after Close: %v", u, err)
					continue
				}
				l.Close()
			}
		})
	}
}
