package tracectx

import (
	"context"
	"net/textproto"
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/natserve/natserve/internal/wire"
	"go.opentelemetry.io/otel/trace"
)

func TestInjectExtract(t *testing.T) {
	tid, _ := trace.TraceIDFromHex("4bf92f3577b34da6a3ce929d0e0e4736")
	sid, _ := trace.SpanIDFromHex("00f067aa0ba902b7")
	ts, _ := trace.ParseTraceState("vendor=value")
	sc := trace.NewSpanContext(trace.SpanContextConfig{TraceID: tid, SpanID: sid, TraceFlags: trace.FlagsSampled, TraceState: ts})
	h := nats.Header{}
	Inject(trace.ContextWithSpanContext(context.Background(), sc), h)
	if got := h.Get(wire.HeaderTraceparent); got != "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01" {
		t.Fatalf("traceparent %q", got)
	}
	if got := h.Get(wire.HeaderTracestate); got != "vendor=value" {
		t.Fatalf("tracestate %q", got)
	}
	back := trace.SpanContextFromContext(Extract(context.Background(), h))
	if !back.IsRemote() || back.TraceID() != tid || back.SpanID() != sid || !back.IsSampled() || back.TraceState().Get("vendor") != "value" {
		t.Fatalf("extracted %+v", back)
	}
	// Nothing to inject without a span; nothing extracted from junk.
	h2 := nats.Header{}
	Inject(context.Background(), h2)
	if len(h2) != 0 {
		t.Fatalf("injected %v without a span", h2)
	}
	for _, junk := range []string{"", "00-zz-00f067aa0ba902b7-01", "00-00000000000000000000000000000000-00f067aa0ba902b7-01", "garbage"} {
		if sc := trace.SpanContextFromContext(Extract(context.Background(), nats.Header{wire.HeaderTraceparent: {junk}})); sc.IsValid() {
			t.Errorf("traceparent %q extracted as %v", junk, sc)
		}
	}
	if sc := trace.SpanContextFromContext(Extract(context.Background(), nil)); sc.IsValid() {
		t.Error("nil header extracted a span")
	}
	// The header names are the W3C fields in HTTP's canonical form.
	for _, f := range w3c.Fields() {
		if n := headerName(f); n != textproto.CanonicalMIMEHeaderKey(f) {
			t.Errorf("field %s travels as %q", f, n)
		}
	}
}
