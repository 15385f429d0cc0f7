package ingress

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/natserve/natserve/client"
	"github.com/natserve/natserve/examples/hello"
	"github.com/natserve/natserve/internal/testutil"
	"github.com/natserve/natserve/worker"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/valyala/fasthttp"
)

// BenchmarkServeVsFasthttp runs the ingress's request path (route match,
// envelope, NATS request to a replica, reply) and, as its baseline, a
// fasthttp handler that writes the same body directly; it reports both and
// their ratio. The replica runs in this process over TCP to the broker; the
// ingress connects in process, as in natserve up.
func BenchmarkServeVsFasthttp(b *testing.B) {
	b.Run("metrics=off", func(b *testing.B) { benchServe(b, nil) })
	b.Run("metrics=on", func(b *testing.B) { benchServe(b, prometheus.NewRegistry()) })
}

func benchServe(b *testing.B, metricsReg prometheus.Registerer) {
	br := testutil.Broker(b)
	var reg worker.Registry
	hello.Register(&reg)
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	r, err := worker.NewReplica(&reg, worker.ReplicaSpec{Deployment: "hello", Class: "Hello", Replica: "rbench", NATSURL: br.ClientURL(), MaxOngoingRequests: 100, InitArgs: json.RawMessage(`[]`), Metrics: metricsReg != nil, Creds: testutil.ReplicaCreds(b, br.ClientURL(), "hello")}, quiet)
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = r.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	g, err := New(Config{Addr: "127.0.0.1:0", NATSOptions: testutil.CredsOptions(b, br.ClientURL(), "ingress"), NATSURL: br.ClientURL(), Logger: quiet, Metrics: metricsReg})
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
	testutil.Eventually(b, 10*time.Second, func() error {
		var c fasthttp.RequestCtx
		c.Init(&req, nil, nil)
		g.serve(&c)
		if c.Response.StatusCode() != 200 {
			return fasthttpErr(c.Response.Body())
		}
		return nil
	})
	baseline := func(c *fasthttp.RequestCtx) {
		c.SetContentType("application/octet-stream")
		c.SetBody(hello.Payload(20))
	}
	run := func(h fasthttp.RequestHandler) time.Duration {
		var c fasthttp.RequestCtx
		start := time.Now()
		for i := 0; i < b.N; i++ {
			c.Init(&req, nil, nil)
			h(&c)
			if c.Response.StatusCode() != 200 {
				b.Fatalf("status %d", c.Response.StatusCode())
			}
		}
		return time.Since(start)
	}
	b.ReportAllocs()
	b.ResetTimer()
	base := run(baseline)
	full := run(g.serve)
	b.ReportMetric(float64(base.Nanoseconds())/float64(b.N), "fasthttp-ns/op")
	b.ReportMetric(float64(full.Nanoseconds())/float64(b.N), "natserve-ns/op")
	b.ReportMetric(float64(full)/float64(base), "natserve/fasthttp-time")
}

type fasthttpErr []byte

func (e fasthttpErr) Error() string { return string(e) }
