package dashboard_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/natserve/natserve/client"
	"github.com/natserve/natserve/examples/hello"
	"github.com/natserve/natserve/ingress"
	"github.com/natserve/natserve/internal/dashboard"
	"github.com/natserve/natserve/internal/store"
	"github.com/natserve/natserve/internal/testutil"
	"github.com/natserve/natserve/internal/wire"
	"github.com/natserve/natserve/worker"
	"github.com/prometheus/client_golang/prometheus"
)

func TestMain(m *testing.M) { testutil.Main(m) }

// TestRatesMergeTwoIngresses runs two replicas of one deployment behind two
// ingresses: the dashboard's counts are the sums over every instance.
func TestRatesMergeTwoIngresses(t *testing.T) {
	br := testutil.Broker(t)
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	var reg worker.Registry
	hello.Register(&reg)
	for _, id := range []string{"r1", "r2"} {
		r, err := worker.NewReplica(&reg, worker.ReplicaSpec{Deployment: "hello", Class: "Hello", Replica: id, NATSURL: br.ClientURL(), InitArgs: json.RawMessage(`[]`), Metrics: true, Creds: testutil.ReplicaCreds(t, br.ClientURL(), "hello")}, quiet)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { _ = r.Run(ctx); close(done) }()
		t.Cleanup(func() { cancel(); <-done })
	}
	var bases []string
	for i := 0; i < 2; i++ {
		g, err := ingress.New(ingress.Config{Addr: "127.0.0.1:0", NATSURL: br.ClientURL(), NATSOptions: testutil.CredsOptions(t, br.ClientURL(), "ingress"), Logger: quiet, Metrics: prometheus.NewRegistry()})
		if err != nil {
			t.Fatal(err)
		}
		if err := g.Start(context.Background()); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = g.Shutdown(context.Background()) })
		bases = append(bases, "http://"+g.Addr())
	}
	// The routes come from the control plane's KV: write the deployment there.
	nc := testutil.Conn(t, br.ClientURL())
	putDeployment(t, nc, client.DeploymentSpec{Name: "hello", Class: "Hello", NumReplicas: 2})
	get := func(base string) int {
		resp, err := http.Get(base + "/hello")
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode
	}
	for _, b := range bases {
		testutil.Eventually(t, 10*time.Second, func() error {
			if c := get(b); c != 200 {
				return fmt.Errorf("GET %s/hello: %d", b, c)
			}
			return nil
		})
	}
	d, err := dashboard.New(dashboard.Config{Conn: nc, Token: "t0k", Logger: quiet, Interval: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	d.Poll(ctx) // the baseline: what was counted before the dashboard looked does not count
	const n = 15
	for i := 0; i < n; i++ {
		for _, b := range bases {
			if c := get(b); c != 200 {
				t.Fatalf("GET: %d", c)
			}
		}
	}
	var v dashboard.DeploymentView
	testutil.Eventually(t, 10*time.Second, func() error {
		d.Poll(ctx)
		st := d.State()
		if st.Ingresses != 2 {
			return fmt.Errorf("%d ingresses seen", st.Ingresses)
		}
		for _, x := range st.Deployments {
			if x.Name == "hello" {
				v = x
			}
		}
		if v.Totals.HTTP != 2*n || v.Totals.Requests != 2*n {
			return fmt.Errorf("totals %+v, want %d HTTP requests (both ingresses) and %d processed (both replicas)", v.Totals, 2*n, 2*n)
		}
		return nil
	})
	if len(v.Series) == 0 || v.Class != "Hello" {
		t.Fatalf("view %+v", v)
	}
	var sum float64
	for _, p := range v.Series {
		sum += p.HTTPRPS
	}
	if sum <= 0 {
		t.Errorf("no HTTP rate in the series %+v", v.Series)
	}
	if last := v.Series[len(v.Series)-1]; last.P99 < 0 || last.P50 > last.P99 {
		t.Errorf("percentiles %+v", last)
	}
}

func TestLoginToken(t *testing.T) {
	br := testutil.Broker(t)
	nc := testutil.Conn(t, br.ClientURL())
	d, err := dashboard.New(dashboard.Config{Conn: nc, Token: "s3cret"})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(d.Handler())
	t.Cleanup(srv.Close)
	noRedirect := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	for _, path := range []string{"/", "/api/state", "/static/app.js", "/?token=wrong"} {
		resp, err := noRedirect.Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized {
			t.Errorf("GET %s without the token: %s, want 401", path, resp.Status)
		}
	}
	// The token in the URL sets a cookie; later requests need nothing else.
	jar, _ := cookiejar.New(nil)
	c := &http.Client{Jar: jar}
	resp, err := c.Get(srv.URL + "/?token=s3cret")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(body), "natserve dashboard") || resp.Request.URL.RawQuery != "" {
		t.Fatalf("first visit: %s %s (url %s)", resp.Status, body, resp.Request.URL)
	}
	for _, path := range []string{"/api/state", "/static/app.js", "/static/style.css"} {
		resp, err := c.Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Errorf("GET %s with the cookie: %s", path, resp.Status)
		}
	}
	req, _ := http.NewRequest("GET", srv.URL+"/api/state", nil)
	req.Header.Set("Authorization", "Bearer s3cret")
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Errorf("bearer: %s", resp.Status)
	}
}

func putDeployment(t *testing.T, nc *nats.Conn, spec client.DeploymentSpec) {
	t.Helper()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	b, err := store.Open(ctx, js, store.Config{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := store.Put(ctx, b.Deployments, spec.Name, spec); err != nil {
		t.Fatal(err)
	}
	// What the controller publishes for callers (the ingress reads it).
	route, _ := spec.Route()
	if _, err := store.Put(ctx, b.Routes, wire.RouteDeploymentPrefix+spec.Name, wire.RouteRecord{Deployment: spec.Name, Route: route}); err != nil {
		t.Fatal(err)
	}
}

// TestIdleDashboardPollsNothing: a dashboard nobody reads sends no stats
// request (each would wake every replica); a read starts the polling at
// once, and it stops again IdleAfter after the last read.
func TestIdleDashboardPollsNothing(t *testing.T) {
	br := testutil.Broker(t)
	nc := testutil.Conn(t, br.ClientURL())
	spy := testutil.Conn(t, br.ClientURL())
	var mu sync.Mutex
	asked := 0
	count := func() int { mu.Lock(); defer mu.Unlock(); return asked }
	if _, err := spy.Subscribe(wire.ServiceSubject(wire.SrvStats, "", ""), func(*nats.Msg) { mu.Lock(); asked++; mu.Unlock() }); err != nil {
		t.Fatal(err)
	}
	if err := spy.Flush(); err != nil {
		t.Fatal(err)
	}
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	d, err := dashboard.New(dashboard.Config{Conn: nc, Token: "t0k", Logger: quiet, Interval: 20 * time.Millisecond, IdleAfter: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = d.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })

	time.Sleep(500 * time.Millisecond) // observe quiet: 25 intervals, nobody reading
	if n := count(); n != 0 {
		t.Fatalf("unwatched dashboard sent %d stats requests, want 0", n)
	}
	_ = d.State()
	testutil.Eventually(t, 10*time.Second, func() error {
		if n := count(); n == 0 {
			return fmt.Errorf("no stats request after a read")
		}
		return nil
	})
	// After the last read, polling stops: the count settles.
	testutil.Eventually(t, 20*time.Second, func() error {
		before := count()
		time.Sleep(200 * time.Millisecond)
		if after := count(); after != before {
			return fmt.Errorf("still polling: %d → %d", before, after)
		}
		return nil
	})
}
