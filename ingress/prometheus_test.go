package ingress

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/micro"
	"github.com/natserve/natserve/client"
	"github.com/natserve/natserve/examples/hello"
	"github.com/natserve/natserve/internal/discovery"
	"github.com/natserve/natserve/internal/metrics"
	"github.com/natserve/natserve/internal/testutil"
	"github.com/natserve/natserve/internal/wire"
	"github.com/natserve/natserve/worker"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/valyala/fasthttp"
)

// metricsStack runs a broker, one in-process hello replica and an ingress
// whose metrics go to a fresh registry served by an httptest server.
func metricsStack(t *testing.T) (g *Ingress, scrape func() metrics.Families, url string) {
	t.Helper()
	br := testutil.Broker(t)
	var reg worker.Registry
	hello.Register(&reg)
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	r, err := worker.NewReplica(&reg, worker.ReplicaSpec{Deployment: "hello", Class: "Hello", Replica: "r1", NATSURL: br.ClientURL(), MaxOngoingRequests: 10, InitArgs: json.RawMessage(`[]`), Creds: testutil.ReplicaCreds(t, br.ClientURL(), "hello")}, quiet)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = r.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	pr := prometheus.NewRegistry()
	g, err = New(Config{Addr: "127.0.0.1:0", NATSURL: br.ClientURL(), NATSOptions: testutil.CredsOptions(t, br.ClientURL(), "ingress"), Logger: quiet, Metrics: pr})
	if err != nil {
		t.Fatal(err)
	}
	if err := g.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = g.Shutdown(context.Background()) })
	g.setRoutes(map[string]client.DeploymentSpec{"hello": {Name: "hello"}, "nobody": {Name: "nobody"}})
	srv := httptest.NewServer(metrics.Handler(pr, ""))
	t.Cleanup(srv.Close)
	scrape = func() metrics.Families {
		t.Helper()
		f, err := metrics.Scrape(srv.URL, "")
		if err != nil {
			t.Fatal(err)
		}
		return f
	}
	url = "http://" + g.Addr()
	testutil.Eventually(t, 10*time.Second, func() error {
		resp, err := http.Get(url + "/hello")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			return fmt.Errorf("status %d", resp.StatusCode)
		}
		return nil
	})
	return g, scrape, url
}

func do(t *testing.T, method, url string) int {
	t.Helper()
	req, _ := http.NewRequest(method, url, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

func TestMetricsCountTraffic(t *testing.T) {
	_, scrape, url := metricsStack(t)
	before := scrape()
	ok := func(f metrics.Families) float64 {
		v, _ := f.Value("natserve_http_requests_total", map[string]string{"deployment": "hello", "route": "/hello", "method": "GET", "status": "200"})
		return v
	}
	for i := 0; i < 7; i++ {
		if c := do(t, "GET", url+"/hello/some/raw/path?x=1"); c != 200 {
			t.Fatalf("GET: %d", c)
		}
	}
	if c := do(t, "BREW", url+"/hello"); c != 200 {
		t.Fatalf("BREW: %d", c)
	}
	if c := do(t, "GET", url+"/nowhere/123"); c != 404 {
		t.Fatalf("GET /nowhere: %d", c)
	}
	if c := do(t, "POST", url+"/nobody"); c != 503 {
		t.Fatalf("POST /nobody: %d", c)
	}
	after := scrape()
	if d := ok(after) - ok(before); d != 7 {
		t.Errorf("GET 200 counter moved by %v, want 7", d)
	}
	checks := []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"natserve_http_requests_total", map[string]string{"deployment": "hello", "method": "OTHER", "status": "200"}, 1},
		{"natserve_http_requests_total", map[string]string{"deployment": "", "route": "", "method": "GET", "status": "404"}, 1},
		{"natserve_http_requests_total", map[string]string{"deployment": "nobody", "route": "/nobody", "method": "POST", "status": "503"}, 1},
		{"natserve_http_request_errors_total", map[string]string{"deployment": "nobody", "code": string(wire.CodeNoReplicas)}, 1},
		{"natserve_http_requests_ongoing", map[string]string{"deployment": "hello"}, 0},
		{"natserve_http_queued_requests", map[string]string{"deployment": "hello"}, 0},
		{"natserve_nats_connected", map[string]string{"conn": "ingress"}, 1},
	}
	for _, c := range checks {
		if v, found := after.Value(c.name, c.labels); !found || v != c.want {
			t.Errorf("%s%v = %v (found %v), want %v", c.name, c.labels, v, found, c.want)
		}
	}
	// The latency histogram counts every request of the route, with the
	// shared buckets.
	if v, _ := after.Value("natserve_http_request_duration_seconds", map[string]string{"deployment": "hello", "route": "/hello"}); v < 9 {
		t.Errorf("latency histogram count %v, want ≥ 9", v)
	}
	h := after["natserve_http_request_duration_seconds"].GetMetric()[0].GetHistogram()
	if len(h.GetBucket()) != len(metrics.LatencyBuckets)+1 { // and +Inf
		t.Errorf("%d buckets, want %d", len(h.GetBucket()), len(metrics.LatencyBuckets))
	}
	// No raw path, query or request id leaks into a label.
	for _, mf := range after {
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if strings.Contains(l.GetValue(), "raw") || strings.Contains(l.GetValue(), "nowhere") || strings.Contains(l.GetValue(), "?") {
					t.Errorf("%s has label %s=%q", mf.GetName(), l.GetName(), l.GetValue())
				}
			}
		}
	}
}

func TestMetricsRouteRemovedDropsSeries(t *testing.T) {
	g, scrape, url := metricsStack(t)
	do(t, "POST", url+"/nobody")
	if _, found := scrape().Value("natserve_http_requests_total", map[string]string{"deployment": "nobody"}); !found {
		t.Fatal("no series for /nobody")
	}
	g.setRoutes(map[string]client.DeploymentSpec{"hello": {Name: "hello"}})
	f := scrape()
	if _, found := f.Value("natserve_http_requests_total", map[string]string{"deployment": "nobody"}); found {
		t.Error("series of a removed route remain")
	}
	if _, found := f.Value("natserve_http_requests_total", map[string]string{"deployment": "hello"}); !found {
		t.Error("series of a kept route are gone")
	}
}

func TestIngressIsAMicroService(t *testing.T) {
	g, _, url := metricsStack(t)
	for i := 0; i < 3; i++ {
		do(t, "GET", url+"/hello")
	}
	do(t, "GET", url+"/nobody")
	nc := testutil.Conn(t, g.nc.ConnectedUrl())
	m, err := nc.Request(wire.ServiceSubject(wire.SrvStats, wire.IngressService, g.svc.ID), nil, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var st micro.Stats
	if err := json.Unmarshal(m.Data, &st); err != nil {
		t.Fatal(err)
	}
	if st.Type != micro.StatsResponseType || st.Name != wire.IngressService || len(st.Endpoints) != 2 {
		t.Fatalf("stats %+v", st)
	}
	byName := map[string]*micro.EndpointStats{}
	for _, e := range st.Endpoints {
		byName[e.Name] = e
	}
	h, nb := byName["hello"], byName["nobody"]
	if h == nil || nb == nil || h.NumRequests < 4 || h.NumErrors >= h.NumRequests-3 || nb.NumRequests != 1 || nb.NumErrors != 1 || nb.LastError == "" {
		t.Fatalf("endpoint stats hello %+v nobody %+v", h, nb)
	}
	var lat discovery.Latency
	if err := json.Unmarshal(nb.Data, &lat); err != nil || lat.Errors[string(wire.CodeNoReplicas)] != 1 || lat.Count != 1 {
		t.Errorf("stats data %s (%v)", nb.Data, err)
	}
	m, err = nc.Request(wire.ServiceSubject(wire.SrvPing, "", ""), nil, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var p micro.Ping
	if err := json.Unmarshal(m.Data, &p); err != nil || p.Type != micro.PingResponseType || p.Version != "0.0.0" {
		t.Errorf("ping %s", m.Data)
	}
}

// BenchmarkRouteMetrics is what metrics add to one request: a route's
// start and done (ongoing gauge, latency histogram, status counter of
// resolved children); the baseline is the time.Now pair alone.
func BenchmarkRouteMetrics(b *testing.B) {
	g, err := New(Config{NATSURL: "nats://127.0.0.1:1", Metrics: prometheus.NewRegistry()})
	if err != nil {
		b.Fatal(err)
	}
	rm := g.metrics.route("/hello", "hello")
	var c fasthttp.RequestCtx
	var req fasthttp.Request
	req.SetRequestURI("/hello")
	c.Init(&req, nil, nil)
	c.SetStatusCode(200)
	b.Run("baseline", func(b *testing.B) {
		b.ReportAllocs()
		var d time.Duration
		for i := 0; i < b.N; i++ {
			d += time.Since(time.Now())
		}
		_ = d
	})
	b.Run("metrics", func(b *testing.B) {
		b.ReportAllocs()
		for i := 0; i < b.N; i++ {
			rm.done(&c, rm.start())
		}
	})
}
