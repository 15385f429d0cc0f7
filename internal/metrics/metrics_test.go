package metrics

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

func TestMethodIndexIsBounded(t *testing.T) {
	for m, want := range map[string]string{"GET": "GET", "PATCH": "PATCH", "get": "OTHER", "BREW": "OTHER", "": "OTHER", "GETX": "OTHER"} {
		if got := Methods[MethodIndex([]byte(m))]; got != want {
			t.Errorf("method %q → %s, want %s", m, got, want)
		}
	}
	if n := testing.AllocsPerRun(100, func() { MethodIndex([]byte("DELETE")) }); n != 0 {
		t.Errorf("MethodIndex allocates %v", n)
	}
}

func TestExposureNeedsToken(t *testing.T) {
	for _, tc := range []struct {
		addr, token string
		ok          bool
	}{
		{"127.0.0.1:8080", "", true}, {"localhost:8080", "", true}, {"[::1]:8080", "", true},
		{"0.0.0.0:8080", "", false}, {":8080", "", false}, {"10.0.0.1:8080", "", false}, {"0.0.0.0:8080", "t", true},
	} {
		err := CheckExposure(tc.addr, tc.token)
		if (err == nil) != tc.ok || (err != nil && !errors.Is(err, ErrToken)) {
			t.Errorf("CheckExposure(%q, %q) = %v", tc.addr, tc.token, err)
		}
	}
}

func TestReadToken(t *testing.T) {
	dir := t.TempDir()
	good, empty := filepath.Join(dir, "good"), filepath.Join(dir, "empty")
	_ = os.WriteFile(good, []byte("  abc\n"), 0o600)
	_ = os.WriteFile(empty, []byte("\n"), 0o600)
	if tok, err := ReadToken(good); tok != "abc" || err != nil {
		t.Errorf("good: %q %v", tok, err)
	}
	for _, p := range []string{empty, filepath.Join(dir, "missing")} {
		if _, err := ReadToken(p); !errors.Is(err, ErrToken) {
			t.Errorf("%s: %v", p, err)
		}
	}
	t.Setenv(TokenEnv, "fromenv")
	if tok, _ := ReadToken(""); tok != "fromenv" {
		t.Errorf("env token %q", tok)
	}
}

func TestHandlerBearer(t *testing.T) {
	reg := prometheus.NewRegistry()
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: "natserve_test_total", Help: "x"})
	reg.MustRegister(c)
	c.Add(3)
	srv := httptest.NewServer(Handler(reg, "tok"))
	defer srv.Close()
	resp, err := http.Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized || resp.Header.Get("WWW-Authenticate") == "" {
		t.Errorf("no token: %s", resp.Status)
	}
	f, err := Scrape(srv.URL, "tok")
	if err != nil {
		t.Fatal(err)
	}
	if v, ok := f.Value("natserve_test_total", nil); !ok || v != 3 {
		t.Errorf("value %v %v", v, ok)
	}
}
