package ingress

import (
	"context"
	"errors"
	"time"

	"github.com/natserve/natserve/client"
	"github.com/natserve/natserve/internal/tracectx"
	"github.com/valyala/fasthttp"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
)

// Observing a request: with tracing or the access log on, serve goes
// through serveObserved, which starts the server span (its parent is the
// HTTP request's traceparent, if any), lets serveRoute fill in what it
// learns (the deployment, the replica that answered), then ends the span
// and writes the access line. With both off, serve calls serveRoute with a
// nil observation: no span, no clock read, no allocation.

const tracerName = "github.com/natserve/natserve/ingress"

// observation is what serveRoute reports about a request being observed.
type observation struct {
	start      time.Time       // when serveObserved began (the metrics' start too)
	ctx        context.Context // carries the server span when traced
	id         string
	deployment string
	route      string // the route prefix matched
	replica    string
	replicaRaw []byte // the replica of a successful reply, from its envelope (no copy unless traced)
}

// replicaName is the replica that answered, or "".
func (o *observation) replicaName() string {
	if o.replicaRaw != nil {
		return string(o.replicaRaw)
	}
	return o.replica
}

// failed records the replica of a failed call, if one answered.
func (o *observation) failed(err error) {
	var ce *client.Error
	if errors.As(err, &ce) {
		o.replica = ce.Replica
	}
}

func (g *Ingress) serveObserved(ctx *fasthttp.RequestCtx, path []byte) {
	start := time.Now()
	o := observation{start: start, ctx: context.Background()}
	var span trace.Span
	if g.tracer != nil {
		o.ctx = w3c.Extract(o.ctx, requestCarrier{&ctx.Request.Header})
		o.ctx, span = g.tracer.Start(o.ctx, string(ctx.Method()), trace.WithSpanKind(trace.SpanKindServer), trace.WithTimestamp(start),
			trace.WithAttributes(attribute.String("http.request.method", string(ctx.Method())), attribute.String("url.path", string(path))))
	}
	g.serveRoute(ctx, path, &o)
	status := ctx.Response.StatusCode()
	n := 0
	if !ctx.Response.IsBodyStream() { // Body() would read a stream to its end before it is sent
		n = len(ctx.Response.Body())
	}
	e := accessEntry{start: start, id: o.id, deployment: o.deployment, replica: o.replica, replicaRaw: o.replicaRaw, method: ctx.Method(), path: path,
		status: status, bytes: n}
	if span != nil {
		if o.route != "" {
			span.SetName(string(ctx.Method()) + " " + o.route)
			span.SetAttributes(attribute.String("http.route", o.route))
		}
		span.SetAttributes(attribute.Int("http.response.status_code", status), tracectx.AttrRequestID.String(o.id),
			tracectx.AttrDeployment.String(o.deployment), tracectx.AttrReplica.String(o.replicaName()))
		if status >= 500 {
			span.SetStatus(codes.Error, "")
		}
		if sc := span.SpanContext(); sc.IsValid() {
			e.traceID = sc.TraceID().String()
		}
		span.End()
	}
	if g.alog != nil {
		var scratch [512]byte
		g.alog.add(appendAccessLine(scratch[:0], &e, time.Since(start)))
	}
}

var w3c propagation.TraceContext

// requestCarrier reads trace context from an HTTP request's headers.
type requestCarrier struct{ h *fasthttp.RequestHeader }

var _ propagation.TextMapCarrier = requestCarrier{}

func (c requestCarrier) Get(key string) string { return string(c.h.Peek(key)) }
func (c requestCarrier) Set(string, string)    {}
func (c requestCarrier) Keys() []string        { return w3c.Fields() }
