package ingress

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/natserve/natserve/client"
	"github.com/natserve/natserve/examples/hello"
	"github.com/natserve/natserve/internal/testutil"
	"github.com/natserve/natserve/internal/tracing"
	"github.com/natserve/natserve/worker"
	"github.com/valyala/fasthttp"
)

// BenchmarkObserve runs the ingress's request path (as
// BenchmarkServeVsFasthttp does) with the access log and tracing off, each
// on, and both on: "off" is the baseline, and must allocate no more than
// the request path without observation code. The access log goes to
// io.Discard, spans to an OTLP receiver in this process that drops them.
func BenchmarkObserve(b *testing.B) {
	br := testutil.Broker(b)
	var reg worker.Registry
	hello.Register(&reg)
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	r, err := worker.NewReplica(&reg, worker.ReplicaSpec{Deployment: "hello", Class: "Hello", Replica: "rbench", NATSURL: br.ClientURL(), MaxOngoingRequests: 100, InitArgs: json.RawMessage(`[]`)}, quiet)
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = r.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	sink := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _, _ = io.Copy(io.Discard, r.Body) }))
	defer sink.Close()
	tp, err := tracing.New(tracing.Config{URL: sink.URL, Service: "bench"})
	if err != nil {
		b.Fatal(err)
	}
	defer tp.Shutdown(context.Background())

	for _, tc := range []struct {
		name   string
		log    bool
		traced bool
	}{{"off", false, false}, {"access-log", true, false}, {"tracing", false, true}, {"both", true, true}} {
		b.Run(tc.name, func(b *testing.B) {
			cfg := Config{Addr: "127.0.0.1:0", NATSURL: br.ClientURL(), Logger: quiet}
			if tc.log {
				cfg.AccessLog = io.Discard
			}
			if tc.traced {
				cfg.TracerProvider = tp.TracerProvider()
			}
			g, err := New(cfg)
			if err != nil {
				b.Fatal(err)
			}
			if err := g.Start(context.Background()); err != nil {
				b.Fatal(err)
			}
			defer g.Shutdown(context.Background())
			g.setRoutes(map[string]client.DeploymentSpec{"hello": {Name: "hello"}})
			var req fasthttp.Request
			req.SetRequestURI("/hello?size=20")
			var c fasthttp.RequestCtx
			testutil.Eventually(b, 10*time.Second, func() error {
				c.Init(&req, nil, nil)
				g.serve(&c)
				if c.Response.StatusCode() != 200 {
					return fasthttpErr(c.Response.Body())
				}
				return nil
			})
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				c.Init(&req, nil, nil)
				g.serve(&c)
				if c.Response.StatusCode() != 200 {
					b.Fatalf("status %d", c.Response.StatusCode())
				}
			}
		})
	}
}

// BenchmarkAccessLine compares writing one access line by hand (what the
// ingress does) with slog's JSON handler over a buffered writer, the
// baseline.
func BenchmarkAccessLine(b *testing.B) {
	e := accessEntry{start: time.Now(), id: "Lk3mX0T2pVQn8yZ4aB7cDe", deployment: "hello", replica: "hello-7f9c2a1b",
		method: []byte("GET"), path: []byte("/hello/items/42"), status: 200, bytes: 20}
	b.Run("hand", func(b *testing.B) {
		l := newAccessLog(io.Discard, slog.Default())
		defer l.Close()
		b.ReportAllocs()
		for i := 0; i < b.N; i++ {
			var scratch [512]byte
			l.add(appendAccessLine(scratch[:0], &e, 412*time.Microsecond))
		}
	})
	b.Run("slog", func(b *testing.B) {
		w := bufio.NewWriterSize(io.Discard, 64<<10)
		log := slog.New(slog.NewJSONHandler(w, nil))
		b.ReportAllocs()
		for i := 0; i < b.N; i++ {
			log.LogAttrs(context.Background(), slog.LevelInfo, "access", slog.String("request_id", e.id), slog.String("deployment", e.deployment),
				slog.String("method", string(e.method)), slog.String("path", string(e.path)), slog.Int("status", e.status),
				slog.Int("bytes", e.bytes), slog.Float64("latency_ms", 0.412), slog.String("replica", e.replica))
		}
	})
}
