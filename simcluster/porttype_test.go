package simcluster

import (
	"context"
	"testing"
)

func TestPortTypeFromEnv(t *testing.T) {
	for _, tc := range []struct {
		env, want string
		ok        bool
	}{{"", "", true}, {"system", "system", true}, {"afxdp", "afxdp", true}, {"auto", "auto", true}, {"xdp", "", false}} {
		t.Setenv(EnvPortType, tc.env)
		got, err := PortTypeFromEnv()
		if got != tc.want || (err == nil) != tc.ok {
			t.Errorf("%s=%q: got %q, %v; want %q (ok %v)", EnvPortType, tc.env, got, err, tc.want, tc.ok)
		}
	}
	// A bad option is refused before anything is built.
	t.Setenv(EnvPortType, "")
	if cl, err := NewCluster(context.Background(), Options{PortType: "xdp"}); err == nil {
		cl.Close()
		t.Error("NewCluster with PortType xdp succeeded")
	}
}
