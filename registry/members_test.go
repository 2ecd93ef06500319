package registry_test

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keyroute/keyroute/registry"
)

// Three embedded members form one cluster over peer mutual TLS; a client
// given one member learns the others; with one member stopped the others
// serve within 2 s; the stopped member restarted with its data dir
// rejoins and catches up.
func TestEmbeddedMembers(t *testing.T) {
	ctx := ctxT(t)
	names := []string{"m1", "m2", "m3"}
	dir := testPKI(t, names...)
	clientURL, peerURL, dataDir := map[string]string{}, map[string]string{}, map[string]string{}
	for _, n := range names {
		clientURL[n], peerURL[n], dataDir[n] = httpsURL(t), httpsURL(t), t.TempDir()
	}
	start := func(n string) (*registry.Embedded, error) {
		return registry.StartEmbedded(ctx, registry.EmbeddedConfig{
			DataDir: dataDir[n], ClientURL: clientURL[n], PeerURL: peerURL[n], Name: n,
			Members: peerURL, TLS: files(dir, n), Logger: quiet,
		})
	}
	// A member is ready only with a quorum: start them together.
	members := map[string]*registry.Embedded{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, n := range names {
		wg.Add(1)
		go func() {
			defer wg.Done()
			e, err := start(n)
			if err != nil {
				t.Errorf("start member %s: %v", n, err)
				return
			}
			mu.Lock()
			members[n] = e
			mu.Unlock()
		}()
	}
	wg.Wait()
	t.Cleanup(func() {
		for _, e := range members {
			e.Close()
		}
	})
	if t.Failed() {
		t.FailNow()
	}

	c, err := registry.New(members["m3"].Endpoints(), registry.WithLogger(quiet), registry.WithTLS(files(dir, "m3")), registry.WithAutoSync(time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if eps := c.Raw().Endpoints(); len(eps) != 3 {
		t.Fatalf("client endpoints after sync: %v, want the 3 members' client URLs", eps)
	}
	if _, err := c.Raw().Put(ctx, "/k/before", "1"); err != nil {
		t.Fatal(err)
	}

	members["m1"].Close()
	delete(members, "m1")
	for i := range 5 {
		start := time.Now()
		octx, cancel := context.WithTimeout(ctx, 2*time.Second)
		_, err := c.Raw().Put(octx, "/k/during", strings.Repeat("x", i+1))
		cancel()
		if err != nil {
			t.Fatalf("put %d with member m1 stopped: %v after %s, want an answer within 2s", i, err, time.Since(start))
		}
	}

	e, err := start("m1")
	if err != nil {
		t.Fatalf("restart member m1 with its data dir: %v", err)
	}
	members["m1"] = e
	only, err := registry.New(e.Endpoints(), registry.WithLogger(quiet), registry.WithTLS(files(dir, "m1")))
	if err != nil {
		t.Fatal(err)
	}
	defer only.Close()
	r, err := only.Raw().Get(ctx, "/k/during")
	if err != nil || len(r.Kvs) != 1 || string(r.Kvs[0].Value) != "xxxxx" {
		t.Fatalf("read through the rejoined member: %v, %v; want what was written while it was down", r, err)
	}
}

func TestEmbeddedMembersRefused(t *testing.T) {
	ctx := ctxT(t)
	dir := testPKI(t, "m1")
	peer := httpsURL(t)
	for _, tc := range []struct {
		members map[string]string
		want    string
	}{
		{map[string]string{"m2": httpsURL(t), "m3": httpsURL(t)}, `do not name this member "m1"`},
		{map[string]string{"m1": httpsURL(t), "m2": httpsURL(t)}, "but it serves " + peer},
		{map[string]string{"m1": peer, "m2": peer}, "share the peer URL"},
	} {
		_, err := registry.StartEmbedded(ctx, registry.EmbeddedConfig{DataDir: t.TempDir(), ClientURL: httpsURL(t), PeerURL: peer,
			Name: "m1", Members: tc.members, TLS: files(dir, "m1"), Logger: quiet})
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("members %v: got %v, want an error containing %q", tc.members, err, tc.want)
		}
	}
}
