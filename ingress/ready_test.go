package ingress

import (
	"testing"

	"github.com/natserve/natserve/client"
	"github.com/valyala/fasthttp"
)

// An ingress whose route table is not loaded yet is not ready: a load
// balancer (or a Kubernetes readiness probe on /-/healthz) must not send it
// traffic that would all be 404.
func TestHealthzWaitsForRoutes(t *testing.T) {
	g, err := New(Config{Addr: "127.0.0.1:0", NATSURL: "nats://127.0.0.1:1"})
	if err != nil {
		t.Fatal(err)
	}
	get := func() (int, string) {
		var ctx fasthttp.RequestCtx
		ctx.Request.SetRequestURI("/-/healthz")
		g.serve(&ctx)
		return ctx.Response.StatusCode(), string(ctx.Response.Body())
	}
	if code, body := get(); code != fasthttp.StatusServiceUnavailable {
		t.Fatalf("healthz before the routes loaded: %d %q, want 503", code, body)
	}
	g.setRoutes(map[string]client.DeploymentSpec{"hello": {Name: "hello"}})
	if code, body := get(); code != fasthttp.StatusOK {
		t.Fatalf("healthz after the routes loaded: %d %q, want 200", code, body)
	}
}
