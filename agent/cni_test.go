package agent

import (
	"fmt"
	"net/http"
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
