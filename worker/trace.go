package worker

import (
	"context"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/natserve/natserve/internal/tracectx"
	"github.com/natserve/natserve/internal/tracing"
	"github.com/natserve/natserve/internal/wire"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
)

// Tracing in a replica: when its spec names an OTLP endpoint (the node
// agent's setting, not the user's environment), each request gets a server
// span whose parent is the caller's span from the request headers; the
// method's ctx carries it, so that handle calls made with it (and spans the
// user makes with otel's global provider, which the replica sets) join the
// request's trace.

const tracerName = "github.com/natserve/natserve/worker"

// startTracing sets up the exporter the spec asks for, if any.
func (r *Replica) startTracing() error {
	if r.spec.OTLPEndpoint == "" {
		return nil
	}
	p, err := tracing.New(tracing.Config{URL: r.spec.OTLPEndpoint, Service: r.spec.Deployment, Instance: r.spec.Replica,
		Attributes: []string{"natserve.node", r.spec.Node, "natserve.class", r.spec.Class}})
	if err != nil {
		return err
	}
	r.traces = p
	r.tracer = p.TracerProvider().Tracer(tracerName)
	otel.SetTracerProvider(p.TracerProvider())
	return nil
}

// stopTracing exports the spans still buffered.
func (r *Replica) stopTracing() {
	if r.traces == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := r.traces.Shutdown(ctx); err != nil {
		r.log.Warn("exporting the last spans failed", "err", err)
	}
}

// startServe starts the server span of m; r.tracer is not nil.
func (r *Replica) startServe(m *nats.Msg, md *wire.RequestMeta) (context.Context, trace.Span) {
	method := md.Method
	ctx := tracectx.Extract(context.Background(), m.Header)
	return r.tracer.Start(ctx, tracectx.ServeSpan(r.spec.Deployment, method), trace.WithSpanKind(trace.SpanKindServer),
		trace.WithAttributes(tracectx.AttrDeployment.String(r.spec.Deployment), tracectx.AttrReplica.String(r.spec.Replica),
			tracectx.AttrMethod.String(method), tracectx.AttrRequestID.String(md.RequestID)))
}

// endServe ends a server span with the call's outcome.
func endServe(span trace.Span, oc *outcome) {
	if oc.code != "" {
		span.SetAttributes(tracectx.AttrCode.String(string(oc.code)))
		span.SetStatus(codes.Error, oc.text)
	}
	span.End()
}
