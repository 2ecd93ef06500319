package agent

import (
	"fmt"
	"net/http"
	"os"
	"strings"
	"testing"

	"github.com/keyroute/keyroute/api"
	"github.com/keyroute/keyroute/registry"
)

func TestErrorClass(t *testing.T) {
	for _, tc := range []struct {
		err    error
		status int
		kind   string
	}{
		{fmt.Errorf("allocate: %w", registry.ErrAddrsExhausted), http.StatusInsufficientStorage, api.KindPoolExhausted},
		{fmt.Errorf("%w: %w", ErrBadRequest, registry.ErrIPInUse), http.StatusConflict, api.KindIPInUse},
		{badRequest("container ID: empty"), http.StatusBadRequest, api.KindBadRequest},
		{&kindError{api.KindBadNetNS, fmt.Errorf("netns gone")}, http.StatusBadRequest, api.KindBadNetNS},
		{fmt.Errorf("check: %w", &kindError{api.KindNotFound, fmt.Errorf("none")}), http.StatusNotFound, api.KindNotFound},
		{fmt.Errorf("ovsdb down"), http.StatusInternalServerError, ""},
	} {
		if st, kind := errorClass(tc.err); st != tc.status || kind != tc.kind {
			t.Errorf("errorClass(%v) = %d %q, want %d %q", tc.err, st, kind, tc.status, tc.kind)
		}
	}
}

func TestCheckNetNS(t *testing.T) {
	if err := checkNetNS("/proc/self/ns/net"); err != nil {
		t.Errorf("own network namespace: %v", err)
	}
	f := t.TempDir() + "/ns"
	if err := os.WriteFile(f, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := checkNetNS(f); err == nil || !strings.Contains(err.Error(), "mount namespace the agent does not share") {
		t.Errorf("plain file: %v", err)
	}
	if err := checkNetNS(t.TempDir() + "/none"); err == nil {
		t.Error("missing path accepted")
	}
}
