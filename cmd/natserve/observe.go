package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/natserve/natserve/ingress"
	"github.com/natserve/natserve/internal/tracing"
)

// observeFlags are the access log and tracing flags of up and ingress.
type observeFlags struct {
	accessLog     bool
	accessLogFile string
	otlp          string
}

func addObserveFlags(fs *flag.FlagSet) *observeFlags {
	o := &observeFlags{}
	fs.BoolVar(&o.accessLog, "access-log", true, "write an access log: one JSON line per request")
	fs.StringVar(&o.accessLogFile, "access-log-file", "", "append the access log to this file (default: standard output)")
	fs.StringVar(&o.otlp, "otlp-endpoint", tracing.EndpointFromEnv(), "OTLP/HTTP endpoint to send trace spans to, e.g. http://127.0.0.1:4318 (default: $OTEL_EXPORTER_OTLP_TRACES_ENDPOINT or $OTEL_EXPORTER_OTLP_ENDPOINT; empty: tracing off)")
	return o
}

// apply sets the ingress's access log and tracer provider; the returned
// function flushes the spans and closes the file, after the ingress stops.
func (o *observeFlags) apply(cfg *ingress.Config, stdout io.Writer) (func(), error) {
	var closers []func()
	done := func() {
		for _, c := range closers {
			c()
		}
	}
	if o.otlp != "" {
		p, err := tracing.New(tracing.Config{URL: o.otlp, Service: "natserve-ingress"})
		if err != nil {
			return nil, err
		}
		cfg.TracerProvider = p.TracerProvider()
		closers = append(closers, func() {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			_ = p.Shutdown(ctx)
		})
	}
	if o.accessLog {
		cfg.AccessLog = stdout
		if o.accessLogFile != "" {
			f, err := os.OpenFile(o.accessLogFile, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
			if err != nil {
				done()
				return nil, fmt.Errorf("-access-log-file: %w", err)
			}
			cfg.AccessLog = f
			closers = append(closers, func() { _ = f.Close() })
		}
	}
	return done, nil
}
