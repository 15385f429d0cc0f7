package metrics

import (
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// ErrToken is returned (wrapped) when an endpoint off loopback has no token.
var ErrToken = errors.New("metrics token")

// Handler serves g's metrics in the format the scraper asks for. With a
// token, a request must carry "Authorization: Bearer <token>" (Prometheus's
// `authorization` scrape setting) or get 401. Metrics that fail to gather
// (a replica that went away mid-scrape) are left out, not fatal.
func Handler(g prometheus.Gatherer, token string) http.Handler {
	h := promhttp.HandlerFor(g, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError})
	if token == "" {
		return h
	}
	return RequireBearer(h, token)
}

// RequireBearer wraps h so that requests without the bearer token get 401.
func RequireBearer(h http.Handler, token string) http.Handler {
	want := []byte("Bearer " + token)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if subtle.ConstantTimeCompare([]byte(r.Header.Get("Authorization")), want) != 1 {
			w.Header().Set("WWW-Authenticate", `Bearer realm="natserve metrics"`)
			http.Error(w, "unauthorized: send Authorization: Bearer <token>", http.StatusUnauthorized)
			return
		}
		h.ServeHTTP(w, r)
	})
}

// TokenEnv holds a metrics bearer token itself, for where a file is
// awkward (docker compose); a token file wins over it.
const TokenEnv = "NATSERVE_METRICS_TOKEN"

// ReadToken reads a token file (surrounding white space dropped); ""
// reads $NATSERVE_METRICS_TOKEN instead. An empty file is an error: it
// would turn authentication off.
func ReadToken(path string) (string, error) {
	if path == "" {
		return strings.TrimSpace(os.Getenv(TokenEnv)), nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("%w: %v", ErrToken, err)
	}
	t := strings.TrimSpace(string(b))
	if t == "" {
		return "", fmt.Errorf("%w: %s is empty", ErrToken, path)
	}
	return t, nil
}

// Loopback reports whether addr (host:port) listens on loopback only.
func Loopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// CheckExposure refuses a metrics address off loopback without a token.
func CheckExposure(addr, token string) error {
	if addr == "" || token != "" || Loopback(addr) {
		return nil
	}
	return fmt.Errorf("%w: metrics on %s (not loopback) need a bearer token (-metrics-token-file)", ErrToken, addr)
}

// Server is an HTTP listener for /metrics (and whatever else the mux holds).
type Server struct {
	srv *http.Server
	ln  net.Listener
	log *slog.Logger
}

// Listen opens addr. When addr is the component's default (fallback true)
// and taken — several components on one machine, tests — it listens on a
// free port of the same host instead and logs it; an address the user
// chose must be free.
func Listen(addr string, fallback bool, h http.Handler, log *slog.Logger) (*Server, error) {
	if log == nil {
		log = slog.Default()
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil && fallback {
		host, _, _ := net.SplitHostPort(addr)
		if ln, err = net.Listen("tcp", net.JoinHostPort(host, "0")); err == nil {
			log.Warn("default metrics address taken; listening on a free port", "want", addr, "addr", ln.Addr().String())
		}
	}
	if err != nil {
		return nil, fmt.Errorf("metrics: cannot listen on %s: %w", addr, err)
	}
	s := &Server{ln: ln, log: log, srv: &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 2 * time.Minute}}
	go func() {
		if err := s.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("metrics server stopped", "err", err)
		}
	}()
	return s, nil
}

// Addr is the address listened on.
func (s *Server) Addr() string { return s.ln.Addr().String() }

// Shutdown stops the server. Nil-safe.
func (s *Server) Shutdown(ctx context.Context) error {
	if s == nil {
		return nil
	}
	return s.srv.Shutdown(ctx)
}

// Mux returns a mux with g's metrics on /metrics.
func Mux(g prometheus.Gatherer, token string) *http.ServeMux {
	mux := http.NewServeMux()
	mux.Handle("/metrics", Handler(g, token))
	return mux
}
