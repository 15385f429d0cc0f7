package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/natserve/natserve/broker"
	"github.com/natserve/natserve/client"
	"github.com/natserve/natserve/controlplane"
	"github.com/natserve/natserve/ingress"
	"github.com/natserve/natserve/internal/natsconn"
	"github.com/natserve/natserve/worker"
)

// runUp runs broker, controller, ingress and a node agent in one process
// tree; replicas are child processes. Ctrl-C stops them in order: ingress,
// replicas (drained), controller, broker.
func runUp(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("up", flag.ContinueOnError)
	fs.SetOutput(stderr)
	data := fs.String("data", "natserve-data", "directory for the broker's JetStream data")
	natsPort := fs.Int("nats-port", 4222, "NATS client port (on 127.0.0.1 unless -nats-host)")
	natsHost := fs.String("nats-host", "127.0.0.1", "NATS client listen address")
	file := fs.String("f", "", "config file to apply once everything runs")
	node := fs.String("name", "local", "this node's name")
	level := fs.String("log-level", "warn", "debug, info, warn or error")
	maxReplicas := fs.Int("max-replicas-per-node", 0, "cap on this node's replica processes (0: what its memory holds, memory / 20 MB)")
	spawnRate := fs.Float64("spawn-rate", worker.DefaultSpawnRate, "replica starts per second on this node")
	ntls := tlsServerFlags(fs, "tls-", "the NATS port's", "CA file (PEM) that signed -tls-cert; replicas trust it (default: the system's roots)")
	icfg := ingressFlags(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("up takes no arguments, got %q (flags go before them?)", fs.Args())
	}
	if !isLoopback(*natsHost) && !ntls.Enabled() {
		return fmt.Errorf("-nats-host %s is off loopback and NATS would be plain TCP: pass -tls-cert FILE -tls-key FILE (and -tls-ca FILE) to serve it over TLS, or keep -nats-host 127.0.0.1", *natsHost)
	}
	// Replicas connect over TCP on this machine: with TLS they trust -tls-ca.
	replicaTLS := natsconn.TLS{}
	if ntls.Enabled() {
		replicaTLS.CAFile = ntls.CAFile
		if err := replicaTLS.Validate(); err != nil {
			return err
		}
	}
	log, err := newLogger(stderr, *level)
	if err != nil {
		return err
	}
	var cfg *client.Config
	if *file != "" { // fail before starting anything
		if cfg, err = client.LoadConfig(*file); err != nil {
			return err
		}
	}
	if err := os.MkdirAll(*data, 0o750); err != nil {
		return fmt.Errorf("data dir %s: %w", *data, err)
	}
	unlock, err := lockDir(*data)
	if err != nil {
		return err
	}
	defer unlock()

	// Broker.
	b, err := broker.New(broker.Config{Host: *natsHost, Port: *natsPort, DataDir: filepath.Join(*data, "broker"), Logger: log, TLS: *ntls})
	if err != nil {
		return err
	}
	if err := b.Start(ctx); err != nil {
		return err
	}
	defer func() {
		sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = b.Shutdown(sctx)
	}()
	if replicaTLS.Enabled() { // fail now, not in every replica
		nc, err := nats.Connect(b.ClientURL(), append(replicaTLS.Options(), nats.Timeout(5*time.Second), nats.NoReconnect())...)
		if err != nil {
			return fmt.Errorf("replicas cannot connect to %s over TLS (the certificate must name 127.0.0.1 and be signed by -tls-ca): %w", b.ClientURL(), err)
		}
		nc.Close()
	}
	inproc := b.InProcessOption()
	// In-process connections skip TLS: a tls:// URL would make nats.go ask
	// for it. Replicas (TCP) still get TLS, from the agent's TLS files.
	url := strings.Replace(b.ClientURL(), "tls://", "nats://", 1)

	var wg sync.WaitGroup
	errs := make(chan error, 3)
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()

	// Controller.
	ctl, err := controlplane.New(controlplane.Config{NATSURL: url, NATSOptions: []nats.Option{inproc}, ID: *node + "-controller", Logger: log})
	if err != nil {
		return err
	}
	ctlCtx, stopCtl := context.WithCancel(context.Background())
	defer stopCtl()
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := ctl.Run(ctlCtx); err != nil {
			errs <- fmt.Errorf("controller: %w", err)
		}
	}()

	// Node agent: replicas are this binary, re-executed.
	agent, err := worker.NewAgent(worker.AgentConfig{
		Name: *node, NATSURL: url, NATSOptions: []nats.Option{inproc}, Registry: registry(),
		StopReplicasOnExit: true, KillReplicasWithAgent: true, Logger: log, ReplicaOutput: stderr, ReplicaLogLevel: *level,
		MaxReplicas: *maxReplicas, SpawnRate: *spawnRate,
		TLSCAFile: replicaTLS.CAFile,
	})
	if err != nil {
		return err
	}
	agentCtx, stopAgent := context.WithCancel(context.Background())
	defer stopAgent()
	agentDone := make(chan struct{})
	go func() {
		defer close(agentDone)
		if err := agent.Run(agentCtx); err != nil {
			errs <- fmt.Errorf("node agent: %w", err)
		}
	}()

	// Ingress.
	icfg.NATSURL, icfg.NATSOptions, icfg.Logger = url, []nats.Option{inproc}, log
	ing, err := ingress.New(*icfg)
	if err != nil {
		return err
	}
	if err := ing.Start(runCtx); err != nil {
		stopAgent()
		<-agentDone
		stopCtl()
		wg.Wait()
		return err
	}

	go func() { // the HTTP server stopping by itself stops natserve up, non-zero
		select {
		case <-ing.Done():
			if err := ing.Err(); err != nil {
				errs <- err
			}
		case <-runCtx.Done():
		}
	}()

	fmt.Fprintf(stdout, "natserve is up\n")
	fmt.Fprintf(stdout, "  broker      %s (data in %s)\n", b.ClientURL(), *data)
	if ntls.CAFile != "" {
		fmt.Fprintf(stdout, "  tls         clients trust %s (-tls-ca or $%s)\n", ntls.CAFile, client.EnvTLSCA)
	}
	fmt.Fprintf(stdout, "  http        %s://%s\n", icfg.Scheme(), ing.Addr())
	fmt.Fprintf(stdout, "  controller  %s\n", ctl.ID())
	fmt.Fprintf(stdout, "  node        %s (classes: %s)\n", agent.Name(), strings.Join(registry().Classes(), ", "))
	if cfg != nil {
		if err := applyAtStart(runCtx, b, ing, cfg, stdout); err != nil {
			fmt.Fprintf(stderr, "natserve: %v\n", err)
		}
	}
	fmt.Fprintf(stdout, "Press Ctrl-C to stop.\n")

	var runErr error
	select {
	case <-ctx.Done():
	case runErr = <-errs:
	}
	fmt.Fprintln(stdout, "natserve: shutting down")
	sctx, scancel := context.WithTimeout(context.Background(), icfg.RequestTimeout+5*time.Second)
	_ = ing.Shutdown(sctx)
	scancel()
	stopAgent() // drains the replicas
	<-agentDone
	stopCtl()
	wg.Wait()
	return runErr
}

// applyAtStart applies the config file once a controller leads and the
// local node is registered, and waits for the deployments.
func applyAtStart(ctx context.Context, b *broker.Broker, ing *ingress.Ingress, cfg *client.Config, stdout io.Writer) error {
	nc, err := nats.Connect("", b.InProcessOption())
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
