package main

import (
	"flag"
	"fmt"
	"log/slog"
	"net/http"

	"github.com/natserve/natserve/internal/metrics"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// Default metrics addresses: natserve up and the node agent (one scrape
// target per machine) on Ray's metrics export port; the ingress and the
// controller beside it.
const (
	defaultMetricsAddr           = "127.0.0.1:8080"
	defaultIngressMetricsAddr    = "127.0.0.1:8081"
	defaultControllerMetricsAddr = "127.0.0.1:8082"
)

// metricsFlags are the flags every long-running command shares.
type metricsFlags struct {
	on        *bool
	addr      *string
	tokenFile *string
	def       string
}

func addMetricsFlags(fs *flag.FlagSet, def string) *metricsFlags {
	return &metricsFlags{
		def:       def,
		on:        fs.Bool("metrics", true, "count and export Prometheus metrics (false: the request path skips them, for benchmarks)"),
		addr:      fs.String("metrics-addr", def, "Prometheus /metrics listen address (a taken default falls back to a free port)"),
		tokenFile: fs.String("metrics-token-file", envOr("NATSERVE_METRICS_TOKEN_FILE", ""), "file holding the bearer token /metrics requires; required off loopback ($NATSERVE_METRICS_TOKEN_FILE; or the token itself in $NATSERVE_METRICS_TOKEN)"),
	}
}

// registry returns a fresh registry with the Go runtime and process
// collectors, or nil with metrics off.
func (f *metricsFlags) registry() *prometheus.Registry {
	if !*f.on {
		return nil
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return reg
}

// check validates the flags before anything starts.
func (f *metricsFlags) check() (token string, err error) {
	if !*f.on {
		return "", nil
	}
	if token, err = metrics.ReadToken(*f.tokenFile); err != nil {
		return "", err
	}
	return token, metrics.CheckExposure(*f.addr, token)
}

// serve listens for /metrics (and extra routes on mux, if given).
func (f *metricsFlags) serve(g prometheus.Gatherer, token string, mux *http.ServeMux, log *slog.Logger) (*metrics.Server, error) {
	if !*f.on {
		return nil, nil
	}
	if mux == nil {
		mux = http.NewServeMux()
	}
	mux.Handle("/metrics", metrics.Handler(g, token))
	s, err := metrics.Listen(*f.addr, *f.addr == f.def, mux, log)
	if err != nil {
		return nil, err
	}
	return s, nil
}

func metricsURL(s *metrics.Server) string {
	if s == nil {
		return "off"
	}
	return fmt.Sprintf("http://%s/metrics", s.Addr())
}

// registerer turns a nil *Registry into a nil interface (metrics off).
func registerer(reg *prometheus.Registry) prometheus.Registerer {
	if reg == nil {
		return nil
	}
	return reg
}
