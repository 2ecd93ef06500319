package agent

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/keyroute/keyroute/api"
)

// The TCP API lets through only the read-only routes: a mutating request
// never reaches the agent's handler.
func TestRemoteAPIRefusesMutations(t *testing.T) {
	var reached []string
	full := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { reached = append(reached, r.Method+" "+r.URL.Path) })
	h := remoteAPIHandler(full)
	for _, tc := range []struct {
		method, path string
		ok           bool
	}{
		{"GET", api.PathStatus, true},
		{"GET", api.PathHosts, true},
		{"POST", api.PathTrace, true},
		{"GET", api.PathPorts, true},
		{"POST", api.PathAttach, false},
		{"POST", api.PathDetach, false},
		{"DELETE", api.PathHosts + "/h2", false},
		{"POST", api.PathRules, false},
		{"DELETE", api.PathRules + "/r1", false},
		{"POST", api.PathDiagnoses, false},
		{"POST", api.PathStatus, false},
		{"GET", "/debug/pprof/", false},
	} {
		reached = nil
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(tc.method, tc.path, strings.NewReader("{}")))
		if got := len(reached) == 1; got != tc.ok {
			t.Errorf("%s %s over TCP: reached the agent %v (status %d), want %v", tc.method, tc.path, got, rec.Code, tc.ok)
		}
		if !tc.ok && rec.Code != http.StatusNotFound && rec.Code != http.StatusMethodNotAllowed {
			t.Errorf("%s %s over TCP: status %d, want 404 or 405", tc.method, tc.path, rec.Code)
		}
	}
}
