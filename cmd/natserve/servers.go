package main

import (
	"context"
	"flag"
	"fmt"
	"github.com/natserve/natserve/internal/gcheadroom"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/natserve/natserve/broker"
	"github.com/natserve/natserve/client"
	"github.com/natserve/natserve/controlplane"
	"github.com/natserve/natserve/ingress"
	"github.com/natserve/natserve/internal/auth"
	"github.com/natserve/natserve/internal/natsconn"
	"github.com/natserve/natserve/internal/wire"
)

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}

func newLogger(w io.Writer, level string) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("-log-level %q: want debug, info, warn or error", level)
	}
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: l})), nil
}

// tlsClientFlags adds the flags of a NATS client's TLS files.
func tlsClientFlags(fs *flag.FlagSet) *natsconn.TLS {
	t := &natsconn.TLS{}
	fs.StringVar(&t.CAFile, "tls-ca", os.Getenv(client.EnvTLSCA), "CA file that signed the broker's TLS certificate ($"+client.EnvTLSCA+")")
	fs.StringVar(&t.CertFile, "tls-cert", os.Getenv(client.EnvTLSCert), "client certificate, for a broker that verifies clients ($"+client.EnvTLSCert+")")
	fs.StringVar(&t.KeyFile, "tls-key", os.Getenv(client.EnvTLSKey), "key of -tls-cert ($"+client.EnvTLSKey+")")
	return t
}

// tlsServerFlags adds the flags of a listener's TLS files under prefix
// ("tls-" or "cluster-tls-").
func tlsServerFlags(fs *flag.FlagSet, prefix, what, caHelp string) *broker.TLSConfig {
	t := &broker.TLSConfig{}
	fs.StringVar(&t.CertFile, prefix+"cert", "", what+" TLS certificate (PEM); with -"+prefix+"key turns TLS on")
	fs.StringVar(&t.KeyFile, prefix+"key", "", "key of -"+prefix+"cert")
	fs.StringVar(&t.CAFile, prefix+"ca", "", caHelp)
	return t
}

type listFlag []string

func (l *listFlag) String() string { return strings.Join(*l, ",") }
func (l *listFlag) Set(v string) error {
	for _, s := range strings.Split(v, ",") {
		if s = strings.TrimSpace(s); s != "" {
			*l = append(*l, s)
		}
	}
	return nil
}

func runBroker(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	d := broker.DefaultConfig()
	fs := flag.NewFlagSet("broker", flag.ContinueOnError)
	fs.SetOutput(stderr)
	name := fs.String("name", d.Name, "server name, unique in a cluster")
	host := fs.String("host", d.Host, "client listen address")
	port := fs.Int("port", d.Port, "client port")
	data := fs.String("data", "natserve-data/broker", "JetStream data directory")
	sync := fs.Bool("sync-always", false, "fsync every JetStream write (recommended in a cluster)")
	cluster := fs.String("cluster-name", d.Cluster.Name, "cluster name")
	clusterHost := fs.String("cluster-host", "", "route listen address (default: -host)")
	clusterPort := fs.Int("cluster-port", 0, "route port; 0 runs without a cluster")
	var routes listFlag
	fs.Var(&routes, "routes", "cluster peers, nats-route://host:port, comma-separated or repeated")
	// Route TLS defaults to the client TLS files when no -cluster-tls-* is given.
	ctls := tlsServerFlags(fs, "tls-", "the client port's", "CA file (PEM) of client certificates, for -tls-verify")
	fs.BoolVar(&ctls.Verify, "tls-verify", false, "require every client to present a certificate signed by -tls-ca (mutual TLS)")
	rtls := tlsServerFlags(fs, "cluster-tls-", "the route port's", "CA file (PEM) that signed every member's route certificate (required with route TLS)")
	level := fs.String("log-level", "info", "debug, info, warn or error")
	authDir := fs.String("auth", "natserve-data/auth", "directory of the operator, accounts and role credentials (created on first start; every cluster member needs the same), or a broker's share of them (auth init -split DIR writes DIR/broker: JWTs only)")
	var nodes listFlag
	fs.Var(&nodes, "nodes", "node agents to write credentials for, comma-separated")
	routeSecret := fs.String("route-secret", "", "file holding the cluster route secret every member presents and requires (default: "+auth.RouteSecretFile+" in -auth, which auth init writes)")
	noAuth := fs.Bool("no-auth", false, "INSECURE: accept anonymous clients (for deployments not yet given credentials)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *clusterPort != 0 && !rtls.Enabled() && rtls.KeyFile == "" && rtls.CAFile == "" && ctls.Enabled() {
		rtls.CertFile, rtls.KeyFile, rtls.CAFile = ctls.CertFile, ctls.KeyFile, ctls.CAFile // routes reuse the client TLS files
	}
	log, err := newLogger(stderr, *level)
	if err != nil {
		return err
	}
	var set *auth.Set
	if *noAuth {
		fmt.Fprintf(stderr, "natserve broker: WARNING: -no-auth: anyone who reaches %s:%d may do anything\n", *host, *port)
	} else if auth.ServerOnly(*authDir) {
		// A broker's share of a split set (auth init -split): JWTs only.
		if set, err = auth.LoadServer(*authDir); err != nil {
			return err
		}
	} else if set, err = auth.Open(*authDir, nodes...); err != nil {
		return err
	}
	var secret string
	if *routeSecret != "" {
		if secret, err = auth.LoadRouteSecret(*routeSecret); err != nil {
			return err
		}
	}
	b, err := broker.New(broker.Config{
		Name: *name, Host: *host, Port: *port, DataDir: *data, SyncAlways: *sync, Logger: log, Debug: *level == "debug", TLS: *ctls, Auth: set,
		Cluster: broker.ClusterConfig{Name: *cluster, Host: *clusterHost, Port: *clusterPort, Routes: routes, TLS: *rtls, Secret: secret},
	})
	if err != nil {
		return err
	}
	if err := b.Start(ctx); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "natserve broker %s listening on %s (data in %s)\n", *name, b.ClientURL(), *data)
	if set != nil && auth.HasSeeds(set.Dir) {
		fmt.Fprintf(stdout, "  creds       %s\n", set.CredsPath(wire.RoleAdmin))
	}
	<-ctx.Done()
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return b.Shutdown(sctx)
}

func runController(ctx context.Context, args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("controller", flag.ContinueOnError)
	fs.SetOutput(stderr)
	url := fs.String("nats", envOr("NATSERVE_URL", "nats://127.0.0.1:4222"), "NATS server URL(s), comma-separated ($NATSERVE_URL)")
	id := fs.String("id", "", "controller id (default: host-pid-random)")
	kvReplicas := fs.Int("kv-replicas", 1, "replication of the control-plane buckets (3 in a cluster)")
	nodeTimeout := fs.Duration("node-timeout", 5*time.Second, "how long a node may miss heartbeats before its replicas move")
	leaseTTL := fs.Duration("lease-ttl", 6*time.Second, "how long the leader's lease outlives it")
	rebalance := fs.Bool("rebalance", true, "move replicas of an unevenly spread deployment, one at a time, onto the emptiest node (false: replicas stay where they were placed)")
	cooldown := fs.Duration("rebalance-cooldown", 10*time.Second, "least time between two rebalancing moves of one deployment")
	settle := fs.Duration("rebalance-settle", 10*time.Second, "how long a node must have been alive before replicas move onto it")
	maxMoves := fs.Int("rebalance-max-moves", 8, "rebalancing moves in flight at once over all deployments")
	retention := fs.Duration("async-retention", controlplane.DefaultAsyncRetention, "how long stored (asynchronous) requests' statuses and results are kept")
	tlsFiles := tlsClientFlags(fs)
	level := fs.String("log-level", "info", "debug, info, warn or error")
	mf := addMetricsFlags(fs, defaultControllerMetricsAddr)
	df := addDashboardFlags(fs)
	creds := fs.String("creds", os.Getenv(client.CredsEnv), "the controller's NATS credentials file ($NATSERVE_CREDS)")
	signer := fs.String("signer", "", "the account signing key that mints replica identities (default: "+auth.SignerFile+" beside -creds)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if err := tlsFiles.Validate(); err != nil {
		return err
	}
	log, err := newLogger(stderr, *level)
	if err != nil {
		return err
	}
	token, err := mf.check()
	if err != nil {
		return err
	}
	reg := mf.registry()
	cfg := controlplane.Config{NATSURL: *url, NATSOptions: tlsFiles.Options(), ID: *id, KVReplicas: *kvReplicas, NodeTimeout: *nodeTimeout, LeaseTTL: *leaseTTL, AsyncRetention: *retention, Logger: log, Metrics: registerer(reg),
		DisableRebalance: !*rebalance, RebalanceCooldown: *cooldown, RebalanceSettle: *settle, RebalanceMaxMoves: *maxMoves}
	if *creds != "" {
		copts, err := client.CredsOptions(*creds)
		if err != nil {
			return err
		}
		cfg.NATSOptions = append(cfg.NATSOptions, copts...)
		if *signer == "" {
			*signer = filepath.Join(filepath.Dir(*creds), auth.SignerFile)
		}
		if cfg.Signer, err = auth.LoadSigner(*signer, *creds); err != nil {
			return err
		}
	}
	c, err := controlplane.New(cfg)
	if err != nil {
		return err
	}
	msrv, err := mf.serve(reg, token, nil, log)
	if err != nil {
		return err
	}
	defer msrv.Shutdown(context.Background())
	log.Info("controller metrics", "url", metricsURL(msrv))
	if *df.addr != "" {
		dnc, err := nats.Connect(*url, append(cfg.NATSOptions, nats.Name("natserve dashboard"), nats.MaxReconnects(-1))...)
		if err != nil {
			return fmt.Errorf("dashboard: connecting to %s: %w", *url, err)
		}
		defer dnc.Close()
		dash, err := df.start(dnc, log)
		if err != nil {
			return err
		}
		defer dash.stop()
		fmt.Fprintf(stderr, "natserve controller dashboard: %s\n", dashboardURL(dash))
	}
	return c.Run(ctx)
}

func ingressFlags(fs *flag.FlagSet) *ingress.Config {
	d := ingress.DefaultConfig()
	cfg := &ingress.Config{}
	fs.StringVar(&cfg.Addr, "addr", d.Addr, "HTTP listen address")
	fs.DurationVar(&cfg.RequestTimeout, "request-timeout", d.RequestTimeout, "deadline of each request (request_timeout_s) ($NATSERVE_REQUEST_TIMEOUT)")
	if v := os.Getenv("NATSERVE_REQUEST_TIMEOUT"); v != "" {
		if err := fs.Set("request-timeout", v); err != nil {
			cfg.RequestTimeout = -1 // the ingress refuses it: "request timeout must be positive"
		}
	}
	fs.IntVar(&cfg.MaxBusyRetries, "max-busy-retries", 0, "retries while every replica is busy before 503 (0: until the deadline)")
	fs.IntVar(&cfg.MaxRequestBodySize, "max-body-size", 0, "request body limit in bytes (default and cap: the broker's max payload less headers)")
	fs.IntVar(&cfg.MaxHeaderBytes, "max-header-bytes", d.MaxHeaderBytes, "request line and headers limit (431 above)")
	fs.DurationVar(&cfg.ReadTimeout, "read-timeout", d.ReadTimeout, "time to read one request (slowloris guard)")
	fs.DurationVar(&cfg.WriteTimeout, "write-timeout", d.WriteTimeout, "time to write one response")
	fs.DurationVar(&cfg.IdleTimeout, "idle-timeout", d.IdleTimeout, "keep-alive idle timeout (keep_alive_timeout_s)")
	fs.IntVar(&cfg.MaxConnections, "max-connections", 0, "open connection limit (0: the open-file limit less 64)")
	fs.IntVar(&cfg.MaxConnsPerIP, "max-conns-per-ip", 0, "open connection limit per client address (0: half of -max-connections; -1: none; raise it behind a proxy)")
	fs.BoolVar(&cfg.ReduceMemoryUsage, "reduce-memory-usage", false, "release idle connections' buffers (less memory with many idle connections, a little more CPU)")
	fs.DurationVar(&cfg.SSEKeepAlive, "sse-keepalive", d.SSEKeepAlive, "longest quiet time on an SSE stream before a comment line (\": keep-alive\") goes out")
	fs.DurationVar(&cfg.WebSocketIdleTimeout, "ws-idle-timeout", d.WebSocketIdleTimeout, "close a WebSocket (code 1001) after this long without a frame")
	fs.DurationVar(&cfg.WebSocketMaxLifetime, "ws-max-lifetime", d.WebSocketMaxLifetime, "close a WebSocket (code 1001) this long after it opened")
	fs.DurationVar(&cfg.DrainDelay, "drain-delay", 0, "on shutdown, how long /-/healthz answers 503 before the listener closes")
	fs.StringVar(&cfg.TLSCertFile, "http-tls-cert", "", "serve HTTPS with this certificate (PEM); needs -http-tls-key")
	fs.StringVar(&cfg.TLSKeyFile, "http-tls-key", "", "key of -http-tls-cert")
	return cfg
}

func runIngress(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("ingress", flag.ContinueOnError)
	fs.SetOutput(stderr)
	url := fs.String("nats", envOr("NATSERVE_URL", "nats://127.0.0.1:4222"), "NATS server URL(s), comma-separated ($NATSERVE_URL)")
	level := fs.String("log-level", "info", "debug, info, warn or error")
	tlsFiles := tlsClientFlags(fs)
	creds := fs.String("creds", os.Getenv(client.CredsEnv), "the ingress's NATS credentials file ($NATSERVE_CREDS)")
	cfg := ingressFlags(fs)
	mf := addMetricsFlags(fs, defaultIngressMetricsAddr)
	obs := addObserveFlags(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if err := tlsFiles.Validate(); err != nil {
		return err
	}
	log, err := newLogger(stderr, *level)
	if err != nil {
		return err
	}
	token, err := mf.check()
	if err != nil {
		return err
	}
	reg := mf.registry()
	cfg.NATSURL, cfg.NATSOptions, cfg.Logger, cfg.Metrics = *url, tlsFiles.Options(), log, registerer(reg)
	// Requests published together leave in one write (as natserve up's).
	cfg.NATSOptions = append(cfg.NATSOptions, natsconn.Coalescing(nats.DefaultTimeout))
	defer gcheadroom.Start(gcHeadroom).Stop() // as natserve up's
	if *creds != "" {
		copts, err := client.CredsOptions(*creds)
		if err != nil {
			return err
		}
		cfg.NATSOptions = append(cfg.NATSOptions, copts...)
	}
	closeObs, err := obs.apply(cfg, stdout)
	if err != nil {
		return err
	}
	defer closeObs()
	g, err := ingress.New(*cfg)
	if err != nil {
		return err
	}
	if err := g.Start(ctx); err != nil {
		return err
	}
	msrv, err := mf.serve(reg, token, nil, log)
	if err != nil {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_ = g.Shutdown(sctx)
		cancel()
		return err
	}
	defer msrv.Shutdown(context.Background())
	fmt.Fprintf(stdout, "natserve ingress listening on %s://%s (metrics %s)\n", cfg.Scheme(), g.Addr(), metricsURL(msrv))
	select {
	case <-ctx.Done():
	case <-g.Done(): // the HTTP server stopped by itself: exit non-zero
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = g.Shutdown(sctx)
		return g.Err()
	}
	sctx, cancel := context.WithTimeout(context.Background(), cfg.DrainDelay+cfg.RequestTimeout+5*time.Second)
	defer cancel()
	return g.Shutdown(sctx)
}
