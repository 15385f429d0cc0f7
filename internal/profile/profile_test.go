package profile

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestHandler(t *testing.T) {
	h := Handler()
	for _, tc := range []struct {
		path   string
		status int
		want   string
	}{
		{"/debug/pprof/", 200, "goroutine"},
		{"/debug/pprof/goroutine?debug=1", 200, "goroutine profile:"},
		{"/debug/pprof/heap?debug=1", 200, "heap profile:"},
		{"/debug/pprof/nosuch", 404, "unknown profile nosuch"},
		{"/debug/pprof/profile?seconds=1", 200, ""},
	} {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest("GET", tc.path, nil))
		if rec.Code != tc.status || !strings.Contains(rec.Body.String(), tc.want) {
			t.Errorf("GET %s: %d %.80q, want %d containing %q", tc.path, rec.Code, rec.Body.String(), tc.status, tc.want)
		}
	}
	// The package registers nothing on the default mux.
	rec := httptest.NewRecorder()
	http.DefaultServeMux.ServeHTTP(rec, httptest.NewRequest("GET", "/debug/pprof/", nil))
	if rec.Code != 404 {
		t.Errorf("default mux serves /debug/pprof/: %d", rec.Code)
	}
}
