package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"github.com/natserve/natserve/internal/gcheadroom"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/natserve/natserve/broker"
	"github.com/natserve/natserve/client"
	"github.com/natserve/natserve/controlplane"
	"github.com/natserve/natserve/ingress"
	"github.com/natserve/natserve/internal/auth"
	"github.com/natserve/natserve/internal/metrics"
	"github.com/natserve/natserve/internal/natsconn"
	"github.com/natserve/natserve/internal/wire"
	"github.com/natserve/natserve/worker"
	"github.com/prometheus/client_golang/prometheus"
)

// runUp runs broker, controller, ingress and a node agent in one process
// tree; replicas are child processes. Ctrl-C stops them in order: ingress,
// replicas (drained), controller, broker.
func runUp(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	f, err := parseUpFlags(args, stderr)
	if err != nil {
		return err
	}
	log, err := newLogger(stderr, f.level)
	if err != nil {
		return err
	}
	if n := upMaxProcs(); n > 0 {
		log.Debug("natserve up runs on one P; its replicas on the other CPU", "GOMAXPROCS", n)
	}
	defer gcheadroom.Start(gcHeadroom).Stop()
	closeObs, err := f.observe.apply(f.ingress, stdout)
	if err != nil {
		return err
	}
	defer closeObs()
	var cfg *client.Config
	if f.file != "" { // fail before starting anything
		if cfg, err = client.LoadConfig(f.file); err != nil {
			return err
		}
	}
	if err := os.MkdirAll(f.data, 0o750); err != nil {
		return fmt.Errorf("data dir %s: %w", f.data, err)
	}
	unlock, err := lockDir(f.data)
	if err != nil {
		return err
	}
	defer unlock()

	// Credentials: created on first start, reused after.
	if f.noAuth {
		fmt.Fprintf(stderr, "natserve up: WARNING: -no-auth: anyone who reaches %s:%d may do anything\n", f.natsHost, f.natsPort)
	} else if f.auth, err = auth.Open(filepath.Join(f.data, "auth"), f.node); err != nil {
		return err
	}
	b, err := startUpBroker(ctx, f, log)
	if err != nil {
		return err
	}
	defer func() {
		sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = b.Shutdown(sctx)
	}()

	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	u := &upParts{errs: make(chan error, 3), drain: f.ingress.RequestTimeout + 5*time.Second}
	if err := u.start(runCtx, b, f, log, stderr); err != nil {
		u.stop()
		return err
	}
	printUp(stdout, b, f, u)
	if cfg != nil {
		if err := applyAtStart(runCtx, b, f.credsPath(wire.RoleAdmin), u.ing, cfg, stdout); err != nil {
			fmt.Fprintf(stderr, "natserve: %v\n", err)
		}
	}
	fmt.Fprintf(stdout, "Press Ctrl-C to stop.\n")

	var runErr error
	select {
	case <-ctx.Done():
	case runErr = <-u.errs:
	}
	fmt.Fprintln(stdout, "natserve: shutting down")
	u.stop()
	return runErr
}

// upFlags are natserve up's flags.
type upFlags struct {
	data, natsHost, file, node, level string
	natsPort, maxReplicas             int
	noAuth                            bool // -no-auth: anonymous clients, no credentials (auth is nil)
	spawnRate                         float64
	retention                         time.Duration
	tls                               *broker.TLSConfig
	replicaTLS                        natsconn.TLS // what replicas trust: -tls-ca
	auth                              *auth.Set    // the credentials in <data>/auth
	ingress                           *ingress.Config
	metrics                           *metricsFlags
	metricsToken                      string
	dashboard                         *dashboardFlags
	observe                           *observeFlags
}

func parseUpFlags(args []string, stderr io.Writer) (*upFlags, error) {
	fs := flag.NewFlagSet("up", flag.ContinueOnError)
	fs.SetOutput(stderr)
	f := &upFlags{}
	fs.StringVar(&f.data, "data", "natserve-data", "directory for the broker's JetStream data")
	fs.IntVar(&f.natsPort, "nats-port", 4222, "NATS client port (on 127.0.0.1 unless -nats-host)")
	fs.StringVar(&f.natsHost, "nats-host", "127.0.0.1", "NATS client listen address")
	fs.StringVar(&f.file, "f", "", "config file to apply once everything runs")
	fs.StringVar(&f.node, "name", "local", "this node's name")
	fs.StringVar(&f.level, "log-level", "warn", "debug, info, warn or error")
	fs.BoolVar(&f.noAuth, "no-auth", false, "INSECURE: no credentials, anyone who reaches the NATS port may do anything (to measure what authentication costs)")
	fs.IntVar(&f.maxReplicas, "max-replicas-per-node", 0, "cap on this node's replica processes (0: what its memory holds, memory / 20 MB)")
	fs.DurationVar(&f.retention, "async-retention", controlplane.DefaultAsyncRetention, "how long stored (asynchronous) requests' statuses and results are kept")
	fs.Float64Var(&f.spawnRate, "spawn-rate", worker.DefaultSpawnRate, "replica starts per second on this node")
	f.tls = tlsServerFlags(fs, "tls-", "the NATS port's", "CA file (PEM) that signed -tls-cert; replicas trust it (default: the system's roots)")
	f.ingress = ingressFlags(fs)
	f.metrics = addMetricsFlags(fs, defaultMetricsAddr)
	f.dashboard = addDashboardFlags(fs)
	f.observe = addObserveFlags(fs)
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	var err error
	if f.metricsToken, err = f.metrics.check(); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("up takes no arguments, got %q (flags go before them?)", fs.Args())
	}
	if f.noAuth && !isLoopback(f.natsHost) {
		return nil, fmt.Errorf("-no-auth is for measuring on loopback only: drop it, or keep -nats-host 127.0.0.1")
	}
	if !isLoopback(f.natsHost) && !f.tls.Enabled() {
		return nil, fmt.Errorf("-nats-host %s is off loopback and NATS would be plain TCP: pass -tls-cert FILE -tls-key FILE (and -tls-ca FILE) to serve it over TLS, or keep -nats-host 127.0.0.1", f.natsHost)
	}
	// Replicas connect over TCP on this machine: with TLS they trust -tls-ca.
	if f.tls.Enabled() {
		f.replicaTLS.CAFile = f.tls.CAFile
		if err := f.replicaTLS.Validate(); err != nil {
			return nil, err
		}
	}
	return f, nil
}

// startUpBroker starts the broker and, with TLS, checks that replicas
// will be able to connect to it.
func startUpBroker(ctx context.Context, f *upFlags, log *slog.Logger) (*broker.Broker, error) {
	b, err := broker.New(broker.Config{Host: f.natsHost, Port: f.natsPort, DataDir: filepath.Join(f.data, "broker"), Logger: log, TLS: *f.tls, Auth: f.auth})
	if err != nil {
		return nil, err
	}
	if err := b.Start(ctx); err != nil {
		return nil, err
	}
	if f.replicaTLS.Enabled() { // fail now, not in every replica
		probe, err := credsOptions(f.credsPath(wire.RoleClient))
		if err != nil {
			return nil, err
		}
		nc, err := nats.Connect(b.ClientURL(), append(append(f.replicaTLS.Options(), probe...), nats.Timeout(5*time.Second), nats.NoReconnect())...)
		if err != nil {
			sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			_ = b.Shutdown(sctx)
			return nil, fmt.Errorf("replicas cannot connect to %s over TLS (the certificate must name 127.0.0.1 and be signed by -tls-ca): %w", b.ClientURL(), err)
		}
		nc.Close()
	}
	return b, nil
}

// upParts are what natserve up runs on its broker; stop stops what start
// started, in order, and waits for it.
type upParts struct {
	ctl   *controlplane.Controller
	agent *worker.Agent
	ing   *ingress.Ingress // nil until started
	errs  chan error       // a part that stopped by itself
	drain time.Duration    // the ingress's shutdown budget
	msrv  *metrics.Server  // /metrics for all of it; nil with metrics off
	dash  *runningDashboard
	dnc   *nats.Conn // the dashboard's

	stopCtl, stopAgent context.CancelFunc // nil until started
	ctlDone, agentDone chan struct{}
}

// start starts the controller, the node agent and the ingress.
func (u *upParts) start(runCtx context.Context, b *broker.Broker, f *upFlags, log *slog.Logger, stderr io.Writer) error {
	ctlOpts, err := inprocAs(b.InProcessOption(), f.credsPath(wire.RoleController))
	if err != nil {
		return err
	}
	agentOpts, err := inprocAs(b.InProcessOption(), f.credsPath("node-"+f.node))
	if err != nil {
		return err
	}
	// The ingress's requests published together leave together.
	ingOpts, err := inprocAs(b.InProcessCoalescingOption(), f.credsPath(wire.RoleIngress))
	if err != nil {
		return err
	}
	// In-process connections skip TLS: a tls:// URL would make nats.go ask
	// for it. Replicas (TCP) still get TLS, from the agent's TLS files.
	url := strings.Replace(b.ClientURL(), "tls://", "nats://", 1)
	reg := f.metrics.registry()
	var revoke func(context.Context, []string) error
	if f.auth != nil {
		// up holds the operator key: it revokes the identities of deleted
		// deployments' replicas in the account and gives the broker the
		// new account JWT.
		revoke = func(_ context.Context, users []string) error {
			tok, err := f.auth.Revoke(users...)
			if err != nil {
				return err
			}
			return b.UpdateAccount(tok)
		}
	}
	u.ctl, err = controlplane.New(controlplane.Config{NATSURL: url, NATSOptions: ctlOpts, ID: f.node + "-controller", Signer: f.signer(), Revoke: revoke, AsyncRetention: f.retention, Logger: log, Metrics: registerer(reg)})
	if err != nil {
		return err
	}
	u.stopCtl, u.ctlDone = u.run("controller", u.ctl.Run)

	// Node agent: replicas are this binary, re-executed.
	u.agent, err = worker.NewAgent(worker.AgentConfig{
		Name: f.node, NATSURL: url, NATSOptions: agentOpts, Registry: registry(),
		StopReplicasOnExit: true, KillReplicasWithAgent: true, Logger: log, ReplicaOutput: stderr, ReplicaLogLevel: f.level,
		MaxReplicas: f.maxReplicas, SpawnRate: f.spawnRate, Metrics: registerer(reg), OTLPEndpoint: f.observe.otlp,
		TLSCAFile: f.replicaTLS.CAFile,
	})
	if err != nil {
		return err
	}
	u.stopAgent, u.agentDone = u.run("node agent", u.agent.Run)

	f.ingress.NATSURL, f.ingress.NATSOptions, f.ingress.Logger, f.ingress.Metrics = url, ingOpts, log, registerer(reg)
	ing, err := ingress.New(*f.ingress)
	if err != nil {
		return err
	}
	if err := ing.Start(runCtx); err != nil {
		return err
	}
	u.ing = ing
	go func() { // the HTTP server stopping by itself stops natserve up, non-zero
		select {
		case <-ing.Done():
			if err := ing.Err(); err != nil {
				u.errs <- err
			}
		case <-runCtx.Done():
		}
	}()
	// One /metrics for all of it: the parts' registry and the replicas',
	// merged at each scrape.
	if reg != nil {
		if u.msrv, err = f.metrics.serve(prometheus.Gatherers{reg, u.agent.ReplicaGatherer()}, f.metricsToken, nil, log); err != nil {
			return err
		}
	}
	if *f.dashboard.addr != "" {
		if u.dnc, err = nats.Connect(url, append(ctlOpts, nats.Name("natserve dashboard"))...); err != nil {
			return fmt.Errorf("dashboard: %w", err)
		}
		if u.dash, err = f.dashboard.start(u.dnc, log); err != nil {
			return err
		}
	}
	return nil
}

// run runs a part until its stop is called (not until natserve up's ctx
// ends: stop orders the parts); a failure goes to u.errs.
func (u *upParts) run(what string, run func(context.Context) error) (context.CancelFunc, chan struct{}) {
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := run(ctx); err != nil {
			u.errs <- fmt.Errorf("%s: %w", what, err)
		}
	}()
	return stop, done
}

// stop stops the parts in order: ingress, node agent (which drains the
// replicas), controller. The broker is the caller's.
func (u *upParts) stop() {
	u.dash.stop()
	if u.dnc != nil {
		u.dnc.Close()
	}
	if u.ing != nil {
		sctx, cancel := context.WithTimeout(context.Background(), u.drain)
		_ = u.ing.Shutdown(sctx)
		cancel()
	}
	if u.stopAgent != nil {
		u.stopAgent()
		<-u.agentDone
	}
	if u.stopCtl != nil {
		u.stopCtl()
		<-u.ctlDone
	}
	if u.msrv != nil {
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_ = u.msrv.Shutdown(sctx)
		cancel()
	}
}

func printUp(stdout io.Writer, b *broker.Broker, f *upFlags, u *upParts) {
	fmt.Fprintf(stdout, "natserve is up\n")
	fmt.Fprintf(stdout, "  broker      %s (data in %s)\n", b.ClientURL(), f.data)
	if f.auth != nil {
		fmt.Fprintf(stdout, "  creds       %s\n", f.auth.CredsPath(wire.RoleAdmin))
	} else {
		fmt.Fprintf(stdout, "  creds       none (-no-auth: INSECURE)\n")
	}
	if f.tls.CAFile != "" {
		fmt.Fprintf(stdout, "  tls         clients trust %s (-tls-ca or $%s)\n", f.tls.CAFile, client.EnvTLSCA)
	}
	fmt.Fprintf(stdout, "  http        %s://%s\n", f.ingress.Scheme(), u.ing.Addr())
	fmt.Fprintf(stdout, "  metrics     %s\n", metricsURL(u.msrv))
	fmt.Fprintf(stdout, "  dashboard   %s\n", dashboardURL(u.dash))
	fmt.Fprintf(stdout, "  controller  %s\n", u.ctl.ID())
	fmt.Fprintf(stdout, "  node        %s (classes: %s)\n", u.agent.Name(), strings.Join(registry().Classes(), ", "))
}

// upMaxProcs gives natserve up one P on a machine (or CPU limit) of at
// most two CPUs, unless GOMAXPROCS is set; it returns the new value, or
// 0 when it left Go's default.
//
// natserve up's ingress and broker hand every request between
// goroutines several times; with a second P, each hand-off may wake an
// idle thread, which spins looking for work (futex wake-ups,
// findRunnable, runtime lock contention) on the CPU that wrk's clients
// and the replicas need. Measured on 2 cores (issue 18, paired harness
// runs, c64 20 B): server CPU 48.1 → 38.2 µs per request, requests/s
// +12%. Its replicas already run with one P on such machines
// (worker.ReplicaMaxProcsEnv).
// gcHeadroom is how much natserve up and natserve ingress allocate at
// least between two garbage collections (package gcheadroom): their live
// heap is a few MB, so Go's GOGC 100 collected 25 times a second at one
// 10 KB request at a time, and each cycle was the p99 (issue 18: 1.4–1.5
// → 0.65–0.7 ms; RSS under that load 41 → 57 MB). A live heap above it
// (a large control plane) has GOGC 100 as before; $GOGC set is the user's.
const gcHeadroom = 16 << 20

func upMaxProcs() int {
	if _, set := os.LookupEnv("GOMAXPROCS"); set || runtime.GOMAXPROCS(0) > 2 {
		return 0
	}
	runtime.GOMAXPROCS(1)
	return 1
}

// inprocAs returns the options of a part that connects in-process
// (inproc: the broker's InProcessOption or InProcessCoalescingOption) with
// the credentials in credsPath.
func inprocAs(inproc nats.Option, credsPath string) ([]nats.Option, error) {
	opts, err := credsOptions(credsPath)
	return append([]nats.Option{inproc}, opts...), err
}

// credsOptions are the options of credsPath; none for "" (-no-auth).
func credsOptions(credsPath string) ([]nats.Option, error) {
	if credsPath == "" {
		return nil, nil
	}
	return client.CredsOptions(credsPath)
}

// credsPath is the creds file of role ("node-NAME" for a node agent), or
// "" with -no-auth.
func (f *upFlags) credsPath(role string) string {
	switch {
	case f.auth == nil:
		return ""
	case strings.HasPrefix(role, "node-"):
		return f.auth.NodeCredsPath(strings.TrimPrefix(role, "node-"))
	}
	return f.auth.CredsPath(role)
}

// signer mints replicas' identities; nil with -no-auth.
func (f *upFlags) signer() *auth.Signer {
	if f.auth == nil {
		return nil
	}
	return f.auth.Signer()
}

// applyAtStart applies the config file once a controller leads and the
// local node is registered, and waits for the deployments.
func applyAtStart(ctx context.Context, b *broker.Broker, adminCreds string, ing *ingress.Ingress, cfg *client.Config, stdout io.Writer) error {
	opts, err := inprocAs(b.InProcessOption(), adminCreds)
	if err != nil {
		return err
	}
	nc, err := nats.Connect("", opts...)
	if err != nil {
		return err
	}
	defer nc.Close()
	cl := client.New(nc)
	deadline := time.Now().Add(30 * time.Second)
	for {
		actx, cancel := context.WithTimeout(ctx, 5*time.Second)
		_, err = cl.Apply(actx, cfg, client.ApplyOptions{})
		cancel()
		if err == nil || !errors.Is(err, client.ErrUnknownClass) || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond) // the node agent is still registering
	}
	if err != nil {
		return fmt.Errorf("applying %s: %w", cfg.File, err)
	}
	for _, d := range cfg.Deployments {
		wctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
		dep, err := cl.WaitHealthy(wctx, d.Spec.Name, nil)
		cancel()
		if err != nil {
			return err
		}
		route, on := dep.Spec.Route()
		for i := 0; on && i < 100 && ing.Route(route) != d.Spec.Name; i++ {
			time.Sleep(20 * time.Millisecond) // the ingress's route watch catches up
		}
		fmt.Fprintf(stdout, "  deployment  %s: %d replica(s), route %s, %s\n", d.Spec.Name, dep.Ready, route, dep.Status)
	}
	return nil
}

// isLoopback reports whether host (a -nats-host) is a loopback address;
// an empty host or 0.0.0.0 listens on every interface.
func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// lockDir takes an exclusive lock on dir so that two natserve up runs do
// not share a data directory.
func lockDir(dir string) (func(), error) {
	path := filepath.Join(dir, "natserve.lock")
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("data dir %s: %w", dir, err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		b, _ := os.ReadFile(path)
		f.Close()
		holder := strings.TrimSpace(string(b))
		if holder == "" {
			holder = "another process"
		} else {
			holder = "pid " + holder
		}
		return nil, fmt.Errorf("data dir %s is in use by another natserve (%s); stop it or pass -data DIR", dir, holder)
	}
	_ = f.Truncate(0)
	_, _ = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	return func() { _ = f.Close(); _ = os.Remove(path) }, nil
}
