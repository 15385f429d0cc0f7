package client

import (
	"context"
	"errors"

	"github.com/natserve/natserve/internal/tracectx"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
)

// Tracing: a Client given a tracer provider (WithTracerProvider) makes a
// client span for each call (handle calls and graph nodes), a span for a
// graph run and one for the time a request waits here for a free replica,
// and sends the span context to the replica in the request's headers.
// Without one, c.tracer is nil and calls make no span and allocate nothing
// for tracing.

const tracerName = "github.com/natserve/natserve/client"

// WithTracerProvider traces the client's calls with tp (nil: off).
func WithTracerProvider(tp trace.TracerProvider) Option {
	return func(o *Options) { o.TracerProvider = tp }
}

func (c *Client) initTracer() {
	if c.opts.TracerProvider != nil {
		c.tracer = c.opts.TracerProvider.Tracer(tracerName)
	}
}

// startCall starts the client span of a call; c.tracer is not nil.
func (c *Client) startCall(ctx context.Context, deployment, method string) (context.Context, trace.Span) {
	return c.tracer.Start(ctx, tracectx.CallSpan(deployment, method), trace.WithSpanKind(trace.SpanKindClient),
		trace.WithAttributes(tracectx.AttrDeployment.String(deployment), tracectx.AttrMethod.String(method), tracectx.AttrRequestID.String(RequestID(ctx))))
}

// endSpan ends span, marking it failed with err's code and message.
func endSpan(span trace.Span, err error) {
	if err != nil {
		var ce *Error
		if errors.As(err, &ce) {
			span.SetAttributes(tracectx.AttrCode.String(ce.Code))
			if ce.Replica != "" {
				span.SetAttributes(tracectx.AttrReplica.String(ce.Replica))
			}
		}
		span.SetStatus(codes.Error, err.Error())
	}
	span.End()
}

// startQueue starts the span of a request waiting here for a free replica
// (every replica busy, or the deployment waking from zero).
func (c *Client) startQueue(ctx context.Context, deployment string) trace.Span {
	_, span := c.tracer.Start(ctx, tracectx.QueueSpan(deployment), trace.WithAttributes(tracectx.AttrDeployment.String(deployment)))
	return span
}
