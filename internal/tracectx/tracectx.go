// Package tracectx carries W3C trace context (traceparent, tracestate)
// across NATS messages, in the headers internal/wire names. It depends only
// on OpenTelemetry's API, so that the client stays lean; the SDK and the
// exporter live in internal/tracing.
package tracectx

import (
	"context"

	"github.com/nats-io/nats.go"
	"github.com/natserve/natserve/internal/wire"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/propagation"
)

var w3c propagation.TraceContext

// Inject writes the span context of ctx into h (nothing without a valid
// one). h is not handed to the propagator: a header map that does not
// escape stays on its caller's stack when tracing is off.
func Inject(ctx context.Context, h nats.Header) {
	var f fields
	w3c.Inject(ctx, &f)
	if f.parent != "" {
		h[wire.HeaderTraceparent] = []string{f.parent}
		if f.state != "" {
			h[wire.HeaderTracestate] = []string{f.state}
		}
	}
}

// fields receives what the propagator injects.
type fields struct{ parent, state string }

func (f *fields) Get(string) string { return "" }
func (f *fields) Keys() []string    { return nil }
func (f *fields) Set(field, value string) {
	switch field {
	case "traceparent":
		f.parent = value
	case "tracestate":
		f.state = value
	}
}

// Extract returns ctx with the remote span context h carries, if any (a
// malformed traceparent is ignored, as W3C asks).
func Extract(ctx context.Context, h nats.Header) context.Context {
	if h == nil {
		return ctx
	}
	return w3c.Extract(ctx, carrier(h))
}

// carrier maps the propagator's field names to natserve's header names.
type carrier nats.Header

var _ propagation.TextMapCarrier = carrier(nil)

func headerName(field string) string {
	switch field {
	case "traceparent":
		return wire.HeaderTraceparent
	case "tracestate":
		return wire.HeaderTracestate
	}
	return field
}

func (c carrier) Get(field string) string {
	if v := c[headerName(field)]; len(v) > 0 {
		return v[0]
	}
	return ""
}

func (c carrier) Set(field, value string) { c[headerName(field)] = []string{value} }

func (c carrier) Keys() []string {
	keys := make([]string, 0, len(c))
	for k := range c {
		keys = append(keys, k)
	}
	return keys
}

// Span attribute keys natserve sets.
const (
	AttrDeployment = attribute.Key("natserve.deployment")
	AttrMethod     = attribute.Key("natserve.method")
	AttrReplica    = attribute.Key("natserve.replica")
	AttrRequestID  = attribute.Key("natserve.request_id")
	AttrCode       = attribute.Key("natserve.code")
	AttrGraph      = attribute.Key("natserve.graph")
	AttrNode       = attribute.Key("natserve.graph.node")
)

// CallSpan names the client span of a call to deployment.method (span
// names are built here only).
func CallSpan(deployment, method string) string {
	if method != "" {
		return "call " + deployment + "." + method
	}
	return "call " + deployment
}

// ServeSpan names a replica's span for a request to deployment.method.
func ServeSpan(deployment, method string) string {
	if method != "" {
		return "serve " + deployment + "." + method
	}
	return "serve " + deployment
}

// QueueSpan names the span of a request waiting at its caller for a free replica.
func QueueSpan(deployment string) string { return "queue " + deployment }

// GraphSpan names the span of a graph run in its caller.
func GraphSpan(graph string) string { return "graph " + graph }
