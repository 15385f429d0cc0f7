package worker

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/nats-io/nats.go"
	"github.com/natserve/natserve/client"
	"github.com/natserve/natserve/internal/metrics"
	"github.com/natserve/natserve/internal/natsconn"
	"github.com/natserve/natserve/internal/profile"
	"github.com/natserve/natserve/internal/tracing"
	"github.com/natserve/natserve/internal/wire"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// Exit codes of a replica process, read by the node agent (defined in
// internal/wire with the rest of the protocol).
const (
	ExitOK          = wire.ExitOK
	ExitError       = wire.ExitError
	ExitConstructor = wire.ExitConstructor // the constructor (or first reconfigure) failed; retrying may not help
)

// Main runs the program as natserve's worker side and exits. With no
// argument or "agent [-nats URL] [-name NODE]" it is a node agent; with
// "replica" (how the agent re-executes it) it serves one replica described
// by the ReplicaSpec on its standard input; with "classes" it lists the registered classes.
// SIGINT and SIGTERM stop it gracefully.
func Main(reg *Registry) {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := Run(ctx, reg, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", filepath.Base(os.Args[0]), err)
		if errors.Is(err, ErrConstructor) || errors.Is(err, ErrUnknownClass) {
			os.Exit(ExitConstructor)
		}
		os.Exit(ExitError)
	}
}

// Run is Main without the exit, for programs that add commands of their own.
func Run(ctx context.Context, reg *Registry, args []string, stdout, stderr io.Writer) error {
	if err := reg.Err(); err != nil {
		return err
	}
	cmd := "agent"
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		cmd, args = args[0], args[1:]
	}
	switch cmd {
	case "agent":
		return runAgent(ctx, reg, args, stderr)
	case "replica":
		return RunReplicaProcess(ctx, reg, os.Stdin, stderr)
	case "classes":
		for _, c := range reg.Classes() {
			fmt.Fprintln(stdout, c)
		}
		return nil
	}
	return fmt.Errorf("unknown command %q (want: agent, classes)", cmd)
}

// runAgent parses the agent's flags and runs it until ctx ends.
func runAgent(ctx context.Context, reg *Registry, args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("agent", flag.ContinueOnError)
	fs.SetOutput(stderr)
	url := fs.String("nats", envOr("NATSERVE_URL", "nats://127.0.0.1:4222"), "NATS server URL(s), comma-separated ($NATSERVE_URL)")
	name := fs.String("name", os.Getenv("NATSERVE_NODE"), "node name ($NATSERVE_NODE; default: the host name)")
	kvReplicas := fs.Int("kv-replicas", 1, "unused: the controller creates the buckets")
	creds := fs.String("creds", "", "this node's NATS credentials file (default: $NATSERVE_CREDS, then the admin credentials of natserve up in ./"+client.DefaultCredsPath+")")
	drain := fs.Bool("stop-replicas-on-exit", false, "on SIGTERM, drain and stop the replicas (in a container); otherwise they keep serving and a restarted agent adopts them")
	maxReplicas := fs.Int("max-replicas-per-node", 0, "cap on this node's replica processes (0: what its memory holds, memory / 20 MB)")
	spawnRate := fs.Float64("spawn-rate", DefaultSpawnRate, "replica starts per second on this node")
	var files natsconn.TLS
	fs.StringVar(&files.CAFile, "tls-ca", os.Getenv(client.EnvTLSCA), "CA file that signed the broker's TLS certificate, for the agent and its replicas ($"+client.EnvTLSCA+")")
	fs.StringVar(&files.CertFile, "tls-cert", os.Getenv(client.EnvTLSCert), "client certificate, for a broker that verifies clients ($"+client.EnvTLSCert+")")
	fs.StringVar(&files.KeyFile, "tls-key", os.Getenv(client.EnvTLSKey), "key of -tls-cert ($"+client.EnvTLSKey+")")
	orphan := fs.Duration("orphan-timeout", DefaultOrphanTimeout, "how long a replica outlives its agent unadopted, or NATS, before it drains and exits")
	metricsOn := fs.Bool("metrics", true, "count and export Prometheus metrics for the node and its replicas")
	metricsAddr := fs.String("metrics-addr", DefaultMetricsAddr, "the node's Prometheus /metrics listen address, its replicas' included (a taken default falls back to a free port)")
	tokenFile := fs.String("metrics-token-file", os.Getenv("NATSERVE_METRICS_TOKEN_FILE"), "file holding the bearer token /metrics requires; required off loopback ($NATSERVE_METRICS_TOKEN_FILE; or the token itself in $NATSERVE_METRICS_TOKEN)")
	otlp := fs.String("otlp-endpoint", tracing.EndpointFromEnv(), "OTLP/HTTP endpoint the replicas send trace spans to, e.g. http://127.0.0.1:4318 (default: $OTEL_EXPORTER_OTLP_TRACES_ENDPOINT or $OTEL_EXPORTER_OTLP_ENDPOINT; empty: tracing off)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *maxReplicas < 0 || *spawnRate <= 0 {
		return fmt.Errorf("-max-replicas-per-node must be at least 0 and -spawn-rate above 0")
	}
	if err := files.Validate(); err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	var nopts []nats.Option
	if p := client.FindCreds(*creds); p != "" {
		var err error
		if nopts, err = client.CredsOptions(p); err != nil {
			return err
		}
	}
	cfg := AgentConfig{
		Name: *name, NATSURL: *url, NATSOptions: append(files.Options(), nopts...), Registry: reg, KVReplicas: *kvReplicas, StopReplicasOnExit: *drain, Logger: log, ReplicaOutput: stderr,
		MaxReplicas: *maxReplicas, SpawnRate: *spawnRate, OrphanTimeout: *orphan, OTLPEndpoint: *otlp,
		TLSCAFile: files.CAFile, TLSCertFile: files.CertFile, TLSKeyFile: files.KeyFile,
	}
	var preg *prometheus.Registry
	token := ""
	if *metricsOn {
		var err error
		if token, err = metrics.ReadToken(*tokenFile); err != nil {
			return err
		}
		if err := metrics.CheckExposure(*metricsAddr, token); err != nil {
			return err
		}
		preg = prometheus.NewRegistry()
		preg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
		cfg.Metrics = preg
	}
	a, err := NewAgent(cfg)
	if err != nil {
		return err
	}
	if preg != nil {
		srv, err := metrics.Listen(*metricsAddr, *metricsAddr == DefaultMetricsAddr, metrics.Mux(prometheus.Gatherers{preg, a.ReplicaGatherer()}, token), log)
		if err != nil {
			return err
		}
		defer srv.Shutdown(context.Background())
		log.Info("node metrics", "url", "http://"+srv.Addr()+"/metrics")
	}
	return a.Run(ctx)
}

// DefaultMetricsAddr is where a node agent serves /metrics by default
// (Ray's metrics export port).
const DefaultMetricsAddr = "127.0.0.1:8080"

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}

// LogLevelEnv sets a replica's log level (debug, info, warn, error).
const LogLevelEnv = "NATSERVE_LOG_LEVEL"

// RunReplicaProcess serves the replica described by the ReplicaSpec (JSON)
// read from spec until ctx ends, logging to logw. In this process, the
// client finds no default credentials: a replica has its own identity.
func RunReplicaProcess(ctx context.Context, reg *Registry, in io.Reader, logw io.Writer) error {
	client.DisableDefaultCreds()
	raw, err := io.ReadAll(io.LimitReader(in, MaxSpecBytes+1))
	if err != nil {
		return fmt.Errorf("%w: reading the spec from standard input: %v", ErrSpec, err)
	}
	if len(raw) == 0 {
		return fmt.Errorf("%w: no spec on standard input (replicas are started by the node agent)", ErrSpec)
	}
	if len(raw) > MaxSpecBytes {
		return fmt.Errorf("%w: spec on standard input is over %d bytes", ErrSpec, MaxSpecBytes)
	}
	var spec ReplicaSpec
	if err := json.Unmarshal(raw, &spec); err != nil {
		return fmt.Errorf("%w: spec on standard input: %v", ErrSpec, err)
	}
	level := slog.LevelInfo
	if v := os.Getenv(LogLevelEnv); v != "" {
		_ = level.UnmarshalText([]byte(v))
	}
	log := slog.New(slog.NewTextHandler(logw, &slog.HandlerOptions{Level: level}))
	// The agent reads our output through a pipe; once it is gone, a log line
	// must fail (EPIPE), not kill the replica with SIGPIPE.
	signal.Ignore(syscall.SIGPIPE)
	r, err := NewReplica(reg, spec, log)
	if err != nil {
		return err
	}
	if addr := os.Getenv(PprofEnv); addr != "" { // the first replica to bind it wins
		pctx, stop := context.WithCancel(ctx)
		served := make(chan struct{})
		go func() {
			defer close(served)
			profile.Serve(pctx, addr, log)
		}()
		defer func() { stop(); <-served }()
	}
	return r.Run(ctx)
}

// PprofEnv, when set to an address (127.0.0.1:6061), makes a replica serve
// the Go runtime's profiles at /debug/pprof/ on it, on a mux of its own
// (never on http.DefaultServeMux, which a user's handler may serve).
const PprofEnv = "NATSERVE_REPLICA_PPROF"
