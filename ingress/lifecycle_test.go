package ingress_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/natserve/natserve/client"
	"github.com/natserve/natserve/ingress"
	"github.com/natserve/natserve/internal/store"
	"github.com/natserve/natserve/internal/testutil"
	"github.com/natserve/natserve/internal/wire"
	"go.uber.org/goleak"
)

// TestIngressStopsItsGoroutines starts an ingress in this process with a
// context that never ends, serves a route from KV, shuts it down and
// checks that nothing it started still runs: Shutdown, not Start's ctx,
// stops the route watches.
func TestIngressStopsItsGoroutines(t *testing.T) {
	verify := testutil.LeakCheck(t)
	b := testutil.Broker(t)
	nc := testutil.Conn(t, b.ClientURL())
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	kv, err := store.Open(context.Background(), js, store.Config{})
	if err != nil {
		t.Fatal(err)
	}
	spec := client.DeploymentSpec{Name: "nowhere", Class: "Probe", NumReplicas: 1}
	// The controller publishes what callers may read in the routes bucket.
	if _, err := store.Put(context.Background(), kv.Routes, wire.RouteDeploymentPrefix+spec.Name, wire.RouteRecord{Deployment: spec.Name, Route: "/nowhere"}); err != nil {
		t.Fatal(err)
	}

	g, err := ingress.New(ingress.Config{NATSURL: b.ClientURL(), NATSOptions: testutil.CredsOptions(t, b.ClientURL(), "ingress"), Addr: "127.0.0.1:0", Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	if err := g.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	hc := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 10 * time.Second}
	get := func(path string) (int, string) {
		resp, err := hc.Get("http://" + g.Addr() + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body)
	}
	testutil.Eventually(t, 20*time.Second, func() error {
		var routes map[string]string
		code, body := get("/-/routes")
		if code != 200 || json.Unmarshal([]byte(body), &routes) != nil || routes["/nowhere"] != "nowhere" {
			return fmt.Errorf("/-/routes: %d %s", code, body)
		}
		return nil
	})
	if code, body := get("/nowhere"); code != http.StatusServiceUnavailable {
		t.Errorf("GET /nowhere with no replica: %d %q, want 503", code, body)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := g.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	hc.CloseIdleConnections()
	nc.Close()
	verify(b,
		// fasthttp's: one date ticker per process, started by the first
		// server and shared by all; not this ingress's.
		goleak.IgnoreAnyFunction("github.com/valyala/fasthttp.updateServerDate.func1"),
		// fasthttp's worker-pool cleaner: Shutdown stops it, but it sleeps
		// up to MaxIdleWorkerDuration (10s) before it sees the stop.
		goleak.IgnoreAnyFunction("github.com/valyala/fasthttp.(*workerPool).Start.func2"),
	)
}
