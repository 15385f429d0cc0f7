// Package ingress is natserve's HTTP front door: a fasthttp server that
// matches each request's path against the route table (watched from the
// control plane's KV, swapped atomically), wraps the request in a msgpack
// envelope and sends it to the deployment's NATS queue group, and writes the
// replica's reply back. Ingresses are stateless; run as many as needed.
//
// Errors map to HTTP status in one table (wire.Code.HTTPStatus): unknown
// route 404, no replica 503 with Retry-After, every replica busy 503,
// deadline 504, user error 500, body over the limit 413, headers too large
// 431, malformed request 400.
package ingress

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"
	"github.com/natserve/natserve/client"
	"github.com/natserve/natserve/internal/discovery"
	"github.com/natserve/natserve/internal/kvwatch"
	"github.com/natserve/natserve/internal/metrics"
	"github.com/natserve/natserve/internal/natsconn"
	"github.com/natserve/natserve/internal/wire"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/valyala/fasthttp"
	"go.opentelemetry.io/otel/trace"
)

// Config configures an Ingress.
type Config struct {
	// Addr is the listen address. Default: 127.0.0.1:8000.
	Addr string
	// NATSURL is the broker (comma-separated for a cluster).
	NATSURL string
	// NATSOptions are extra connection options (e.g. in-process).
	NATSOptions []nats.Option
	// RequestTimeout is each request's deadline (request_timeout_s). Default: 60s.
	RequestTimeout time.Duration
	// MaxBusyRetries bounds how often a request that found every replica
	// busy is retried before 503; 0 retries until the deadline. Default: 0.
	MaxBusyRetries int
	// MaxRequestBodySize is the body limit in bytes; it is capped so that an
	// envelope fits the broker's max payload. Default: that cap.
	MaxRequestBodySize int
	// MaxHeaderBytes bounds the request line and headers (431 above); each open connection holds a buffer this size. Default: 8 KiB.
	MaxHeaderBytes int
	// ReadTimeout bounds reading one request, headers and body (slowloris). Default: 30s.
	ReadTimeout time.Duration
	// WriteTimeout bounds writing one response. Default: 30s.
	WriteTimeout time.Duration
	// IdleTimeout bounds a keep-alive connection's wait for its next request. Default: 90s.
	IdleTimeout time.Duration
	// MaxConnections bounds open connections; connections over it get a 503
	// and are closed. Default: the open-file soft limit (RLIMIT_NOFILE) less
	// 64, which leaves descriptors for NATS and files.
	MaxConnections int
	// MaxConnsPerIP bounds the open connections from one client address,
	// so that one client cannot take them all; over it a connection gets a
	// 429 and is closed. Clients behind a proxy or NAT share an address:
	// raise it there, or set -1 for no limit. Default: MaxConnections / 2.
	MaxConnsPerIP int
	// Listener, if set, is served instead of listening on Addr (socket
	// activation, tests); Shutdown closes it. Default: nil.
	Listener net.Listener
	// ReduceMemoryUsage releases each idle connection's buffers (fasthttp's
	// option of that name): less memory with many idle keep-alive
	// connections, a little more CPU per request. Default: false.
	ReduceMemoryUsage bool
	// DrainDelay is how long /-/healthz answers 503 before the listener
	// closes on Shutdown, so load balancers stop sending. Default: 0.
	DrainDelay time.Duration
	// TLSCertFile and TLSKeyFile, when set, make the listener serve HTTPS
	// with this PEM certificate and key. Default: "" (plain HTTP).
	TLSCertFile, TLSKeyFile string
	// Metrics receives the ingress's Prometheus metrics; nil turns
	// counting off (the request path then skips it). Default: nil.
	Metrics prometheus.Registerer
	// AccessLog receives the access log, one JSON line per request to a
	// deployment or graph, buffered and written every 250 ms (and on
	// Shutdown). Default: nil, no access log.
	AccessLog io.Writer
	// TracerProvider traces requests (a server span each, its context sent
	// on to the replicas). Default: nil, off.
	TracerProvider trace.TracerProvider
	// SSEKeepAlive is the longest quiet time on a server-sent events
	// stream: a comment line (": keep-alive") then goes out, so that
	// proxies do not cut it. Default: 15s.
	SSEKeepAlive time.Duration
	// WebSocketIdleTimeout closes a WebSocket connection (close code 1001)
	// after this long without a frame in either direction. Default: 5m.
	WebSocketIdleTimeout time.Duration
	// WebSocketMaxLifetime closes a WebSocket connection (close code 1001)
	// this long after it opened. Default: 24h.
	WebSocketMaxLifetime time.Duration
	// Logger. Default: slog.Default().
	Logger *slog.Logger
}

// Scheme is "https" when c serves TLS, else "http".
func (c *Config) Scheme() string {
	if c.TLSCertFile != "" {
		return "https"
	}
	return "http"
}

// DefaultConfig returns the defaults.
func DefaultConfig() Config {
	return Config{
		Addr: "127.0.0.1:8000", RequestTimeout: 60 * time.Second, MaxHeaderBytes: 8 << 10,
		ReadTimeout: 30 * time.Second, WriteTimeout: 30 * time.Second, IdleTimeout: 90 * time.Second,
		WebSocketIdleTimeout: 5 * time.Minute, WebSocketMaxLifetime: 24 * time.Hour, SSEKeepAlive: 15 * time.Second,
	}
}

// ErrConfig is returned (wrapped) by New for a bad configuration.
var ErrConfig = errors.New("ingress config")

// Validate reports the first problem with c.
func (c *Config) Validate() error {
	switch {
	case c.NATSURL == "" && len(c.NATSOptions) == 0:
		return fmt.Errorf("%w: NATS URL is required", ErrConfig)
	case c.RequestTimeout <= 0:
		return fmt.Errorf("%w: request timeout must be positive", ErrConfig)
	case c.MaxHeaderBytes < 1024:
		return fmt.Errorf("%w: max header bytes %d is below 1024", ErrConfig, c.MaxHeaderBytes)
	case c.MaxRequestBodySize < 0:
		return fmt.Errorf("%w: max request body size is negative", ErrConfig)
	case c.SSEKeepAlive < 0:
		return fmt.Errorf("%w: SSE keep-alive interval must not be negative", ErrConfig)
	case c.WebSocketIdleTimeout < 0 || c.WebSocketMaxLifetime < 0:
		return fmt.Errorf("%w: WebSocket idle timeout and maximum lifetime must not be negative", ErrConfig)
	case c.MaxConnections < 0:
		return fmt.Errorf("%w: max connections %d is negative", ErrConfig, c.MaxConnections)
	case c.MaxConnsPerIP < -1:
		return fmt.Errorf("%w: max connections per IP %d: want -1 (no limit), 0 (the default) or a positive number", ErrConfig, c.MaxConnsPerIP)
	}
	if _, _, err := net.SplitHostPort(c.Addr); err != nil {
		return fmt.Errorf("%w: listen address %q: %v", ErrConfig, c.Addr, err)
	}
	if (c.TLSCertFile == "") != (c.TLSKeyFile == "") {
		return fmt.Errorf("%w: HTTPS needs both a cert file and a key file (got cert %q, key %q)", ErrConfig, c.TLSCertFile, c.TLSKeyFile)
	}
	if c.TLSCertFile != "" {
		if _, err := tls.LoadX509KeyPair(c.TLSCertFile, c.TLSKeyFile); err != nil {
			return fmt.Errorf("%w: HTTPS certificate %s / key %s: %v", ErrConfig, c.TLSCertFile, c.TLSKeyFile, err)
		}
	}
	return nil
}

// Ingress is the HTTP server.
type Ingress struct {
	cfg Config
	log *slog.Logger

	routes   atomic.Pointer[table]
	limits   atomic.Pointer[map[string]int] // deployment → max_queued_requests
	draining atomic.Bool
	// loaded: the route table holds the routes bucket's initial values;
	// until then /-/healthz answers 503 (a load balancer or Kubernetes
	// readiness probe must not send traffic that would all be 404).
	loaded  atomic.Bool
	streams sync.Map // deployment → true: its default method streams
	wsMu    sync.Mutex
	ws      map[*wsRelay]struct{} // open WebSocket relays; Shutdown closes them
	wsWG    sync.WaitGroup

	tracer trace.Tracer // nil: tracing off
	alog   *accessLog   // nil: no access log

	nc      *nats.Conn
	cl      *client.Client
	srv     *fasthttp.Server
	maxBody int

	metrics *metricSet         // nil when Config.Metrics is nil
	svc     *discovery.Service // the ingress in `nats micro ls`

	mu       sync.Mutex // guards ln, done, stopErr, watchers
	ln       net.Listener
	done     chan struct{}      // closed when the HTTP server has stopped
	stopErr  error              // why it stopped, if not by Shutdown
	watchers []*kvwatch.Watcher // the route watches; Shutdown stops them
}

// New returns an ingress for cfg (defaults filled in); it does no I/O.
func New(cfg Config) (*Ingress, error) {
	d := DefaultConfig()
	if cfg.Addr == "" {
		cfg.Addr = d.Addr
	}
	if cfg.RequestTimeout == 0 {
		cfg.RequestTimeout = d.RequestTimeout
	}
	if cfg.MaxHeaderBytes == 0 {
		cfg.MaxHeaderBytes = d.MaxHeaderBytes
	}
	if cfg.ReadTimeout == 0 {
		cfg.ReadTimeout = d.ReadTimeout
	}
	if cfg.WriteTimeout == 0 {
		cfg.WriteTimeout = d.WriteTimeout
	}
	if cfg.IdleTimeout == 0 {
		cfg.IdleTimeout = d.IdleTimeout
	}
	if cfg.SSEKeepAlive == 0 {
		cfg.SSEKeepAlive = d.SSEKeepAlive
	}
	if cfg.WebSocketIdleTimeout == 0 {
		cfg.WebSocketIdleTimeout = d.WebSocketIdleTimeout
	}
	if cfg.WebSocketMaxLifetime == 0 {
		cfg.WebSocketMaxLifetime = d.WebSocketMaxLifetime
	}
	if cfg.MaxConnections == 0 {
		cfg.MaxConnections = defaultMaxConnections()
	}
	if cfg.MaxConnsPerIP == 0 {
		cfg.MaxConnsPerIP = max(cfg.MaxConnections/2, 1)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	g := &Ingress{cfg: cfg, log: cfg.Logger.With("component", "ingress")}
	if cfg.Metrics != nil {
		g.metrics = newMetricSet(g)
	}
	g.storeTable(newTable(nil))
	return g, nil
}

// Start connects to NATS, starts watching routes and listens. It returns
// once the listener is open; Addr then reports it.
func (g *Ingress) Start(ctx context.Context) error {
	nc, err := nats.Connect(g.cfg.NATSURL, natsconn.Options("natserve ingress", g.cfg.NATSOptions...)...)
	if err != nil {
		return fmt.Errorf("ingress: connecting to %s: %w", g.cfg.NATSURL, err)
	}
	g.nc = nc
	if g.metrics != nil {
		for _, c := range append(g.metrics.collectors(), metrics.NATSCollector(nc, "ingress")) {
			if err := g.cfg.Metrics.Register(c); err != nil {
				nc.Close()
				return fmt.Errorf("ingress: registering metrics: %w", err)
			}
		}
	}
	g.svc = &discovery.Service{Name: wire.IngressService, ID: strings.ToLower(nuid.Next()), Description: "natserve HTTP ingress",
		Endpoints: g.serviceEndpoints, Stats: g.serviceStats}
	if err := g.svc.Start(nc); err != nil {
		nc.Close()
		return fmt.Errorf("ingress: %w", err)
	}
	g.cl = client.New(nc, client.WithTimeout(g.cfg.RequestTimeout), client.WithMaxBusyRetries(g.cfg.MaxBusyRetries), client.WithQueueLimit(g.queueLimit),
		client.WithTracerProvider(g.cfg.TracerProvider), client.WithSender(wire.RoleIngress))
	if g.cfg.TracerProvider != nil {
		g.tracer = g.cfg.TracerProvider.Tracer(tracerName)
	}
	if g.metrics != nil {
		if err := g.cfg.Metrics.Register(metrics.MultiplexCollector("ingress", "deployment", g.cl)); err != nil {
			nc.Close()
			return fmt.Errorf("ingress: registering metrics: %w", err)
		}
	}
	// The envelope must fit the broker's max payload: leave room for the
	// headers, the NATS headers and the envelope's own framing.
	limit := int(nc.MaxPayload()) - g.cfg.MaxHeaderBytes - 4096
	if limit < 1024 {
		nc.Close()
		return fmt.Errorf("ingress: the broker's max payload %d leaves no room for a body", nc.MaxPayload())
	}
	g.maxBody = limit
	if g.cfg.MaxRequestBodySize > 0 && g.cfg.MaxRequestBodySize < limit {
		g.maxBody = g.cfg.MaxRequestBodySize
	}
	g.srv = &fasthttp.Server{
		Handler:                       g.serve,
		ErrorHandler:                  g.parseError,
		Name:                          "natserve",
		Concurrency:                   g.cfg.MaxConnections,
		MaxConnsPerIP:                 max(g.cfg.MaxConnsPerIP, 0),
		ReadBufferSize:                g.cfg.MaxHeaderBytes,
		ReadTimeout:                   g.cfg.ReadTimeout,
		WriteTimeout:                  g.cfg.WriteTimeout,
		IdleTimeout:                   g.cfg.IdleTimeout,
		MaxRequestBodySize:            g.maxBody,
		CloseOnShutdown:               true,
		ReduceMemoryUsage:             g.cfg.ReduceMemoryUsage,
		DisablePreParseMultipartForm:  true,
		NoDefaultContentType:          true,
		DisableHeaderNamesNormalizing: false,
		Logger:                        fasthttpLogger{g.log},
	}
	ln := g.cfg.Listener
	if ln == nil {
		if ln, err = net.Listen("tcp", g.cfg.Addr); err != nil {
			nc.Close()
			return fmt.Errorf("ingress: cannot listen on %s: %w", g.cfg.Addr, err)
		}
	}
	js, err := jetstream.New(nc)
	if err != nil {
		_ = ln.Close()
		nc.Close()
		return fmt.Errorf("ingress: %w", err)
	}
	if lim := fdLimit(); lim > 0 && g.cfg.MaxConnections > lim-fdReserve {
		g.log.Warn("max connections is not below the open-file limit less a reserve; accept retries once descriptors run out",
			"max_connections", g.cfg.MaxConnections, "open_file_limit", lim, "reserve", fdReserve)
	}
	rl := newRetryListener(ln, g.log)
	if g.cfg.AccessLog != nil {
		g.alog = newAccessLog(g.cfg.AccessLog, g.log)
	}
	g.mu.Lock()
	g.ln, g.done = rl, make(chan struct{})
	// The watches live until Shutdown, not until ctx (Start's) ends.
	g.watchers = g.watchRoutes(js)
	g.mu.Unlock()
	go g.serveHTTP(rl)
	g.log.Info("ingress listening", "addr", ln.Addr().String(), "scheme", g.cfg.Scheme(), "max_body_bytes", g.maxBody, "request_timeout", g.cfg.RequestTimeout,
		"max_connections", g.cfg.MaxConnections, "max_conns_per_ip", g.cfg.MaxConnsPerIP)
	return nil
}

// serveHTTP runs the HTTP server until Shutdown; if it stops for any other
// reason, Done is closed and Err says why.
func (g *Ingress) serveHTTP(ln net.Listener) {
	var err error
	if g.cfg.TLSCertFile != "" {
		err = g.srv.ServeTLS(ln, g.cfg.TLSCertFile, g.cfg.TLSKeyFile)
	} else {
		err = g.srv.Serve(ln)
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if !g.draining.Load() {
		if err == nil {
			err = errors.New("the listener was closed")
		}
		g.stopErr = fmt.Errorf("ingress: http server on %s stopped: %w", ln.Addr(), err)
		g.log.Error("http server stopped", "err", err)
	}
	close(g.done)
}

// Done is closed when the HTTP server has stopped: after Shutdown, or on a
// failure that Err reports. Nil before Start.
func (g *Ingress) Done() <-chan struct{} {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.done
}

// Err reports why the HTTP server stopped if it stopped without Shutdown.
func (g *Ingress) Err() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.stopErr
}

// Addr returns the listen address once started.
func (g *Ingress) Addr() string {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.ln == nil {
		return ""
	}
	return g.ln.Addr().String()
}

// queueLimit is a deployment's max_queued_requests (-1: no limit).
func (g *Ingress) queueLimit(deployment string) int {
	if m := g.limits.Load(); m != nil {
		if n, ok := (*m)[deployment]; ok {
			return n
		}
	}
	return -1
}

// Route returns the deployment the ingress routes path to, or "".
func (g *Ingress) Route(path string) string {
	if r := g.routes.Load().match([]byte(path)); r != nil {
		return r.deployment
	}
	return ""
}

// MaxBodySize is the body limit in force.
func (g *Ingress) MaxBodySize() int { return g.maxBody }

// Shutdown drains: /-/healthz answers 503 for DrainDelay, then the listener
// closes, in-flight requests finish (until ctx ends) and the NATS
// connection drains. Idempotent.
func (g *Ingress) Shutdown(ctx context.Context) error {
	if g.draining.Swap(true) {
		return nil
	}
	g.log.Info("ingress draining", "drain_delay", g.cfg.DrainDelay)
	select {
	case <-time.After(g.cfg.DrainDelay):
	case <-ctx.Done():
	}
	var err error
	if g.srv != nil {
		err = g.srv.ShutdownWithContext(ctx)
		g.mu.Lock()
		done, ln := g.done, g.ln
		g.mu.Unlock()
		if ln != nil {
			// fasthttp closes only the listeners Serve has registered; a
			// Shutdown right after Start may come first.
			_ = ln.Close()
		}
		if done != nil {
			<-done
		}
	}
	g.closeWebSockets(ctx)
	if g.svc != nil {
		g.svc.Stop()
	}
	g.mu.Lock()
	watchers := g.watchers
	g.watchers = nil
	g.mu.Unlock()
	for _, w := range watchers {
		w.Stop()
	}
	if g.cl != nil {
		g.cl.Close() // its watches; the connection is ours and drains below
	}
	if g.nc != nil {
		_ = g.nc.Drain()
	}
	if g.alog != nil {
		g.alog.Close()
	}
	return err
}

// watchRoutes starts the watch that keeps the route table equal to the
// routes bucket (the deployments' routes and limits, and the graphs, as the
// controller publishes them for callers).
func (g *Ingress) watchRoutes(js jetstream.JetStream) []*kvwatch.Watcher {
	var mu sync.Mutex // guards specs, graphs
	specs := map[string]wire.RouteRecord{}
	graphs := map[string]*client.GraphSpec{}
	publish := func() {
		mu.Lock()
		defer mu.Unlock()
		routes := map[string]string{}
		limits := map[string]int{}
		for name, s := range specs {
			if s.Route != "" {
				routes[s.Route] = name
			}
			if s.MaxQueuedRequests != 0 {
				limits[name] = s.MaxQueuedRequests
			}
		}
		g.limits.Store(&limits)
		gs := make([]*client.GraphSpec, 0, len(graphs))
		for _, gr := range graphs {
			gs = append(gs, gr)
		}
		g.storeTable(newTable(routes, gs...))
		g.loaded.Store(true)
	}
	return []*kvwatch.Watcher{
		g.watchBucket(js, wire.BucketRoutes, func() { mu.Lock(); clear(graphs); clear(specs); mu.Unlock() }, func(key string, val []byte) {
			mu.Lock()
			defer mu.Unlock()
			if name, ok := strings.CutPrefix(key, wire.RouteGraphPrefix); ok {
				var spec client.GraphSpec
				if val != nil && json.Unmarshal(val, &spec) == nil {
					graphs[name] = &spec
				} else {
					delete(graphs, name)
				}
				return
			}
			name, _ := strings.CutPrefix(key, wire.RouteDeploymentPrefix)
			var r wire.RouteRecord
			if val != nil && json.Unmarshal(val, &r) == nil {
				specs[name] = r
			} else {
				delete(specs, name)
			}
		}, publish),
	}
}

// watchBucket follows a bucket: reset forgets what an earlier watch
// delivered, apply gets each change (nil value for a delete), publish runs
// after the initial values and after each later change that has no other
// change queued behind it (Delta 0): an apply of 1,000 deployments
// rebuilds the route table a few times, not 1,000 times over 1,000 routes.
func (g *Ingress) watchBucket(js jetstream.JetStream, bucket string, reset func(), apply func(string, []byte), publish func()) *kvwatch.Watcher {
	synced := false
	return kvwatch.Start(context.Background(), kvwatch.Config{JetStream: js, Bucket: bucket, Logger: g.log}, kvwatch.Handler{
		Restart: func() { synced = false; reset() },
		Entry: func(e jetstream.KeyValueEntry) {
			if e.Operation() == jetstream.KeyValuePut {
				apply(e.Key(), e.Value())
			} else {
				apply(e.Key(), nil)
			}
			if synced && e.Delta() == 0 {
				publish()
			}
		},
		Synced: func() { synced = true; publish() },
	})
}

type fasthttpLogger struct{ l *slog.Logger }

func (f fasthttpLogger) Printf(format string, args ...any) {
	f.l.Debug("fasthttp", "msg", fmt.Sprintf(format, args...))
}

// setRoutes replaces the route table with the routes of specs.
func (g *Ingress) setRoutes(specs map[string]client.DeploymentSpec) {
	routes := map[string]string{}
	for name, s := range specs {
		if p, on := s.Route(); on {
			routes[p] = name
		}
	}
	g.storeTable(newTable(routes))
	g.loaded.Store(true)
}

// storeTable resolves the new table's metric children and swaps it in.
func (g *Ingress) storeTable(t *table) {
	if g.metrics != nil {
		live := make(map[string]bool, len(t.byPrefix))
		for p, rt := range t.byPrefix {
			rt.metrics = g.metrics.route(p, rt.deployment)
			live[p+"\x00"+rt.deployment] = true
		}
		g.metrics.retain(live)
	}
	g.routes.Store(t)
}
