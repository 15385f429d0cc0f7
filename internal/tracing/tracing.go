// Package tracing sets up OpenTelemetry tracing for natserve's processes:
// an OTLP/HTTP exporter behind a batching tracer provider, configured by a
// traces URL (a flag, the standard OTEL_EXPORTER_OTLP_* variables, or a
// replica's spec). Span contexts cross NATS in the W3C trace context headers
// that internal/wire names; the ingress, the client and the replica make
// their spans themselves from the provider they are given. Tracing is off
// unless a URL is configured: components then hold a nil tracer and the
// request path creates no span and allocates nothing for it.
//
// OTLP/HTTP rather than gRPC: it needs no long-lived gRPC connection in every
// replica process, passes through ordinary HTTP proxies and load balancers,
// speaks to every collector (port 4318), and a test receiver is a plain
// net/http handler.
package tracing

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"strings"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"
)

// ErrConfig is returned (wrapped) for a bad tracing configuration.
var ErrConfig = errors.New("tracing config")

// TracesPath is the OTLP/HTTP path of traces, appended to an endpoint
// given without a path.
const TracesPath = "/v1/traces"

// Config configures a Provider.
type Config struct {
	// URL is the OTLP/HTTP traces URL (http or https; a URL without a path
	// gets TracesPath). Required.
	URL string
	// Service is the resource's service.name. Default: "natserve".
	Service string
	// Instance is the resource's service.instance.id (a replica id). Default: none.
	Instance string
	// Attributes are extra resource attributes, name and value alternating. Default: none.
	Attributes []string
}

// TracesURL checks an OTLP endpoint and returns its traces URL: the URL as
// given when it has a path, otherwise the URL with TracesPath.
func TracesURL(endpoint string) (string, error) {
	u, err := url.Parse(endpoint)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return "", fmt.Errorf("%w: OTLP endpoint %q: want http://host:port or https://host:port", ErrConfig, endpoint)
	}
	if u.Path == "" || u.Path == "/" {
		u.Path = TracesPath
	}
	return u.String(), nil
}

// EndpointFromEnv returns the traces endpoint the standard variables name:
// OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, else OTEL_EXPORTER_OTLP_ENDPOINT with
// TracesPath; "" when neither is set, or when OTEL_SDK_DISABLED=true or
// OTEL_TRACES_EXPORTER=none turn tracing off.
func EndpointFromEnv() string {
	if strings.EqualFold(os.Getenv("OTEL_SDK_DISABLED"), "true") || os.Getenv("OTEL_TRACES_EXPORTER") == "none" {
		return ""
	}
	if v := os.Getenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"); v != "" {
		return v
	}
	if v := os.Getenv("OTEL_EXPORTER_OTLP_ENDPOINT"); v != "" {
		return strings.TrimSuffix(v, "/") + TracesPath
	}
	return ""
}

// Provider is a tracer provider exporting over OTLP/HTTP.
type Provider struct {
	tp *sdktrace.TracerProvider
}

var _ trace.TracerProvider = (*sdktrace.TracerProvider)(nil)

// New returns a provider for cfg. It does no I/O: spans are batched and
// exported in the background (sampling follows OTEL_TRACES_SAMPLER, by
// default every trace, and the caller's decision for remote parents).
func New(cfg Config) (*Provider, error) {
	u, err := TracesURL(cfg.URL)
	if err != nil {
		return nil, err
	}
	if len(cfg.Attributes)%2 != 0 {
		return nil, fmt.Errorf("%w: resource attributes must come in pairs", ErrConfig)
	}
	if cfg.Service == "" {
		cfg.Service = "natserve"
	}
	exp, err := otlptracehttp.New(context.Background(), otlptracehttp.WithEndpointURL(u))
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrConfig, err)
	}
	attrs := []attribute.KeyValue{semconv.ServiceName(cfg.Service)}
	if cfg.Instance != "" {
		attrs = append(attrs, semconv.ServiceInstanceID(cfg.Instance))
	}
	for i := 0; i+1 < len(cfg.Attributes); i += 2 {
		attrs = append(attrs, attribute.String(cfg.Attributes[i], cfg.Attributes[i+1]))
	}
	res := resource.NewWithAttributes(semconv.SchemaURL, attrs...)
	tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(exp), sdktrace.WithResource(res))
	return &Provider{tp: tp}, nil
}

// TracerProvider returns the provider to hand to components.
func (p *Provider) TracerProvider() trace.TracerProvider { return p.tp }

// Shutdown exports the spans still buffered and stops the exporter, until
// ctx ends. Idempotent.
func (p *Provider) Shutdown(ctx context.Context) error {
	if p == nil {
		return nil
	}
	return p.tp.Shutdown(ctx)
}
