package worker

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/natserve/natserve/client"
	"github.com/natserve/natserve/internal/kvwatch"
	"github.com/natserve/natserve/internal/metrics"
	"github.com/natserve/natserve/internal/natsconn"
	"github.com/natserve/natserve/internal/store"
	"github.com/natserve/natserve/internal/sysmon"
	"github.com/natserve/natserve/internal/tracing"
	"github.com/natserve/natserve/internal/wire"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/time/rate"
)

// AgentConfig configures a node agent.
type AgentConfig struct {
	// Name is the node's name, unique in the cluster. Default: the host name.
	Name string
	// NATSURL is the broker (comma-separated for a cluster). Required.
	NATSURL string
	// NATSOptions are extra options for the agent's own connection (TLS
	// included: the TLS fields below are for the replicas).
	NATSOptions []nats.Option
	// TLSCAFile, TLSCertFile and TLSKeyFile are the TLS files replicas
	// connect with (their spec carries the paths, made absolute): the CA of
	// the broker's certificate, and a client certificate and key for a
	// broker that verifies clients. Default: "" (plain TCP).
	TLSCAFile, TLSCertFile, TLSKeyFile string
	// Registry lists the classes this program provides. Required.
	Registry *Registry
	// Program is the binary re-executed for each replica with the argument
	// "replica". Default: this program (os.Executable).
	Program string
	// HeartbeatInterval is how often the node's record is refreshed. Default: 1s.
	HeartbeatInterval time.Duration
	// ReadyTimeout bounds a replica's start (constructor included). Default: 5m.
	ReadyTimeout time.Duration
	// StopReplicasOnExit drains every replica when Run returns; otherwise they
	// keep serving and a restarted agent adopts them. Default: false.
	StopReplicasOnExit bool
	// KillReplicasWithAgent gives replicas SIGKILL when the agent process
	// dies (for natserve up, which must leave no orphans). Default: false.
	KillReplicasWithAgent bool
	// OrphanTimeout is how long a replica outlives this agent when no agent
	// adopts it, or its NATS connection, before it drains and exits.
	// Default: 5m.
	OrphanTimeout time.Duration
	// KVReplicas is the replication of buckets the agent creates. Default: 1.
	KVReplicas int
	// ReplicaOutput receives the replicas' stdout and stderr, each line
	// prefixed with the deployment and replica. Default: os.Stderr.
	ReplicaOutput io.Writer
	// ReplicaLogLevel is the replicas' log level (debug, info, warn, error). Default: info.
	ReplicaLogLevel string
	// MaxReplicas caps the replica processes on this node; the node record
	// publishes it so that the controller places no more, and the agent
	// starts no more (extra assignments wait for a free slot). Default:
	// what the node's memory holds, DefaultMaxReplicas().
	MaxReplicas int
	// SpawnRate bounds replica starts per second. Default: 100.
	SpawnRate float64
	// Metrics receives the agent's Prometheus metrics and turns on its
	// replicas' (exported through ReplicaGatherer); nil turns both off.
	// Default: nil.
	Metrics prometheus.Registerer
	// OTLPEndpoint is the OTLP/HTTP endpoint the replicas export trace
	// spans to (in their spec); "" turns their tracing off. Default: "".
	OTLPEndpoint string
	// Logger is the agent's logger. Default: slog.Default().
	Logger *slog.Logger
}

// Agent is a node agent: it heartbeats the node's record, starts the
// replica processes the controller assigns to this node, watches them and
// reports their state.
type Agent struct {
	cfg AgentConfig
	log *slog.Logger

	nc *nats.Conn
	kv *store.Buckets

	mu      sync.Mutex // guards running, waiting, and nc against ReplicaGatherer
	running map[string]*proc
	waiting map[string]store.Assignment // assigned while the node was at MaxReplicas

	starts *rate.Limiter // SpawnRate

	metrics *agentMetrics // nil when Config.Metrics is nil

	// awake holds one token per replica running with the runtime's
	// monitor kept awake (awakeReplicas).
	awake chan struct{}

	spawn chan func()    // run on a locked OS thread when KillReplicasWithAgent
	wg    sync.WaitGroup // the heartbeat
	procs sync.WaitGroup // one per replica process watched
}

// NewAgent returns an agent for cfg; it does no I/O.
func NewAgent(cfg AgentConfig) (*Agent, error) {
	if cfg.Registry == nil {
		return nil, fmt.Errorf("node agent: a registry is required")
	}
	if err := cfg.Registry.Err(); err != nil {
		return nil, err
	}
	if cfg.OTLPEndpoint != "" {
		if _, err := tracing.TracesURL(cfg.OTLPEndpoint); err != nil {
			return nil, fmt.Errorf("agent: %w", err)
		}
	}
	if cfg.Name == "" {
		h, _ := os.Hostname()
		cfg.Name = wire.SanitizeName(h, "node")
	}
	if err := wire.ValidateName("node name", cfg.Name); err != nil {
		return nil, fmt.Errorf("node agent: %w", err)
	}
	if cfg.NATSURL == "" {
		return nil, fmt.Errorf("node agent: NATS URL is required")
	}
	files, err := natsconn.TLS{CAFile: cfg.TLSCAFile, CertFile: cfg.TLSCertFile, KeyFile: cfg.TLSKeyFile}.Abs()
	if err == nil {
		err = files.Validate()
	}
	if err != nil {
		return nil, fmt.Errorf("node agent: replicas' %w", err)
	}
	cfg.TLSCAFile, cfg.TLSCertFile, cfg.TLSKeyFile = files.CAFile, files.CertFile, files.KeyFile
	if cfg.Program == "" {
		p, err := os.Executable()
		if err != nil {
			return nil, fmt.Errorf("node agent: finding this program: %w", err)
		}
		cfg.Program = p
	}
	if cfg.HeartbeatInterval == 0 {
		cfg.HeartbeatInterval = time.Second
	}
	if cfg.ReadyTimeout == 0 {
		cfg.ReadyTimeout = 5 * time.Minute
	}
	if cfg.OrphanTimeout < 0 {
		return nil, fmt.Errorf("agent: orphan timeout %v is negative", cfg.OrphanTimeout)
	}
	if cfg.OrphanTimeout == 0 {
		cfg.OrphanTimeout = DefaultOrphanTimeout
	}
	if cfg.ReplicaOutput == nil {
		cfg.ReplicaOutput = os.Stderr
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.MaxReplicas == 0 {
		cfg.MaxReplicas = DefaultMaxReplicas()
	}
	if cfg.MaxReplicas < 0 {
		return nil, fmt.Errorf("node agent: max replicas %d is negative", cfg.MaxReplicas)
	}
	if cfg.SpawnRate == 0 {
		cfg.SpawnRate = DefaultSpawnRate
	}
	if cfg.SpawnRate < 0 {
		return nil, fmt.Errorf("node agent: spawn rate %v is negative", cfg.SpawnRate)
	}
	return &Agent{
		cfg: cfg, log: cfg.Logger.With("node", cfg.Name), running: map[string]*proc{}, waiting: map[string]store.Assignment{},
		awake:  make(chan struct{}, awakeReplicas()),
		starts: rate.NewLimiter(rate.Limit(cfg.SpawnRate), spawnBurst),
	}, nil
}

// Name returns the node's name.
func (a *Agent) Name() string { return a.cfg.Name }

// Run registers the node and serves assignments until ctx ends.
func (a *Agent) Run(ctx context.Context) error {
	nc, err := nats.Connect(a.cfg.NATSURL, natsconn.Options("natserve node agent "+a.cfg.Name, a.cfg.NATSOptions...)...)
	if errors.Is(err, nats.ErrAuthorization) {
		return fmt.Errorf("node agent %s: %s: %w: pass this node's credentials with -creds FILE (natserve auth init -nodes %s writes them)", a.cfg.Name, a.cfg.NATSURL, client.ErrNoCreds, a.cfg.Name)
	}
	if err != nil {
		return fmt.Errorf("node agent %s: connecting to %s: %w", a.cfg.Name, a.cfg.NATSURL, err)
	}
	defer nc.Close()
	a.mu.Lock()
	a.nc = nc
	a.mu.Unlock()
	if a.cfg.Metrics != nil {
		if err := a.registerMetrics(a.cfg.Metrics); err != nil {
			return err
		}
		if err := a.cfg.Metrics.Register(metrics.NATSCollector(nc, "agent")); err != nil {
			return fmt.Errorf("agent %s: registering metrics: %w", a.cfg.Name, err)
		}
	}
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	// The controller creates the buckets; the agent's identity may only
	// open its three.
	if a.kv, err = store.OpenRetry(ctx, js, store.Config{Replicas: a.cfg.KVReplicas, OpenOnly: true,
		Only: []string{wire.BucketNodes, wire.BucketAssignments, wire.BucketReplicas}}, a.log); err != nil {
		return fmt.Errorf("node agent %s: %w", a.cfg.Name, err)
	}
	if a.cfg.KillReplicasWithAgent {
		a.spawn = make(chan func())
		go a.spawner(ctx)
	}

	// The controller's batched health checks of this node's replicas
	// (agent_health.go). Credentials from before batching refuse this
	// subscription; the controller then pings each replica itself.
	hsub, err := nc.Subscribe(wire.AgentSubject(a.cfg.Name, wire.AgentVerbHealth), a.onHealth)
	if err != nil {
		return fmt.Errorf("node agent %s: subscribing to health checks: %w", a.cfg.Name, err)
	}
	defer func() { _ = hsub.Unsubscribe() }()

	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	a.adopt(runCtx)
	if err := a.heartbeat(runCtx); err != nil {
		return err
	}
	a.log.Info("node agent running", "classes", a.cfg.Registry.Classes(), "program", a.cfg.Program, "max_replicas", a.cfg.MaxReplicas)

	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		t := time.NewTicker(a.cfg.HeartbeatInterval)
		defer t.Stop()
		for {
			select {
			case <-runCtx.Done():
				return
			case <-t.C:
				if err := a.heartbeat(runCtx); err != nil && runCtx.Err() == nil {
					a.log.Warn("heartbeat failed", "err", err)
				}
			}
		}
	}()

	a.watch(runCtx, js)
	cancel()
	a.wg.Wait()
	if a.cfg.StopReplicasOnExit {
		// Replicas drain; then the node leaves, so that the controller
		// places elsewhere at once what it still wants.
		a.stopAll()
		a.procs.Wait()
		dctx, dcancel := context.WithTimeout(context.Background(), 2*time.Second)
		_ = a.kv.Nodes.Delete(dctx, a.cfg.Name)
		dcancel()
	}
	// Otherwise the replicas keep serving and a restarted agent adopts them.
	return nil
}

func (a *Agent) heartbeat(ctx context.Context) error {
	host, _ := os.Hostname()
	now := time.Now()
	methods := map[string][]string{}
	for _, c := range a.cfg.Registry.Classes() {
		methods[c], _ = a.cfg.Registry.Methods(c)
	}
	_, err := store.Put(ctx, a.kv.Nodes, a.cfg.Name, store.Node{
		Name: a.cfg.Name, Host: host, PID: os.Getpid(), Classes: a.cfg.Registry.Classes(), Methods: methods, Heartbeat: now,
		MaxReplicas: a.cfg.MaxReplicas,
	})
	return err
}

// watch applies this node's assignments as they change, until ctx ends.
// After the initial values of each (re-established) watch it stops the
// replicas that are no longer assigned.
func (a *Agent) watch(ctx context.Context, js jetstream.JetStream) {
	var seen map[string]bool // replicas in the current watch's initial values; nil once synced
	kvwatch.Run(ctx, kvwatch.Config{JetStream: js, Bucket: wire.BucketAssignments, Keys: a.cfg.Name + ".*", Logger: a.log}, kvwatch.Handler{
		Restart: func() { seen = map[string]bool{} },
		Synced: func() {
			a.mu.Lock()
			for id, p := range a.running {
				if !seen[id] {
					a.log.Info("stopping unassigned replica", "replica", id)
					go p.stop(syscall.SIGTERM)
				}
			}
			for id := range a.waiting {
				if !seen[id] {
					delete(a.waiting, id)
				}
			}
			a.mu.Unlock()
			seen = nil
		},
		Entry: func(e jetstream.KeyValueEntry) { a.apply(ctx, e, seen) },
	})
}

// apply acts on one assignment entry; seen collects the initial values.
func (a *Agent) apply(ctx context.Context, e jetstream.KeyValueEntry, seen map[string]bool) {
	_, replica, _ := wire.SplitAssignmentKey(e.Key())
	if seen != nil {
		seen[replica] = true
	}
	if e.Operation() != jetstream.KeyValuePut {
		a.stopReplica(replica, syscall.SIGTERM)
		return
	}
	var asg store.Assignment
	if err := json.Unmarshal(e.Value(), &asg); err != nil {
		a.log.Warn("bad assignment record", "key", e.Key(), "err", err)
		return
	}
	switch asg.Desired {
	case store.DesiredRun:
		a.startReplica(ctx, asg)
	case store.DesiredStop:
		a.stopReplica(replica, syscall.SIGTERM)
	case store.DesiredKill:
		a.stopReplica(replica, syscall.SIGKILL)
	}
}

func (a *Agent) startReplica(ctx context.Context, asg store.Assignment) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if _, ok := a.running[asg.Replica]; ok {
		return // running, or adopted
	}
	// A replica that already ran to its end must not start again.
	var st store.ReplicaState
	if _, err := store.Get(ctx, a.kv.Replicas, wire.ReplicaKey(a.cfg.Name, asg.Replica), &st); err == nil && (st.State == client.ReplicaStopped || st.State == client.ReplicaFailed) {
		return
	}
	if len(a.running) >= a.cfg.MaxReplicas {
		// The controller places no more than the cap; this holds the line
		// if it does (an old controller, or a cap just lowered).
		if len(a.waiting) == 0 {
			a.log.Warn("at the replica cap; further replicas wait for a free slot", "max_replicas", a.cfg.MaxReplicas)
		}
		a.waiting[asg.Replica] = asg
		return
	}
	delete(a.waiting, asg.Replica)
	p := &proc{a: a, asg: asg, done: make(chan struct{}), stopping: make(chan struct{})}
	a.running[asg.Replica] = p
	a.procs.Add(1)
	go func() {
		defer a.procs.Done()
		p.run(ctx)
		a.mu.Lock()
		delete(a.running, asg.Replica)
		var next *store.Assignment
		for _, w := range a.waiting {
			next = &w
			break
		}
		a.mu.Unlock()
		if next != nil && ctx.Err() == nil {
			a.startReplica(ctx, *next)
		}
	}()
}

func (a *Agent) stopReplica(replica string, sig syscall.Signal) {
	a.mu.Lock()
	p := a.running[replica]
	delete(a.waiting, replica)
	a.mu.Unlock()
	if p != nil {
		p.stop(sig)
	}
}

func (a *Agent) stopAll() {
	a.mu.Lock()
	ps := make([]*proc, 0, len(a.running))
	for _, p := range a.running {
		ps = append(ps, p)
	}
	a.mu.Unlock()
	for _, p := range ps {
		p.stop(syscall.SIGTERM)
	}
	for _, p := range ps {
		timeout := time.Duration(p.asg.GracefulShutdownTimeoutS*float64(time.Second)) + 5*time.Second
		select {
		case <-p.done:
		case <-time.After(timeout):
			p.stop(syscall.SIGKILL)
			<-p.done
		}
	}
}

// spawner starts processes from one locked OS thread, so that
// Pdeathsig (sent when the starting thread exits) fires only when the
// agent process dies.
func (a *Agent) spawner(ctx context.Context) {
	runtime.LockOSThread() // never unlocked: the thread lives as long as the process
	for {
		select {
		case f := <-a.spawn:
			f()
		case <-ctx.Done():
			// keep serving spawn requests made during shutdown
			for {
				f := <-a.spawn
				f()
			}
		}
	}
}

// adopt takes over replicas a previous agent of this node started and that
// still answer: their processes keep running, unchanged.
func (a *Agent) adopt(ctx context.Context) {
	keys, err := a.kv.Replicas.ListKeysFiltered(ctx, wire.ReplicaKey(a.cfg.Name, "*"))
	if err != nil {
		return
	}
	for key := range keys.Keys() {
		var st store.ReplicaState
		rev, err := store.Get(ctx, a.kv.Replicas, key, &st)
		if err != nil || st.Node != a.cfg.Name || (st.State != client.ReplicaRunning && st.State != client.ReplicaStarting) {
			continue
		}
		var asg store.Assignment
		if _, err := store.Get(ctx, a.kv.Assignments, wire.AssignmentKey(a.cfg.Name, st.Replica), &asg); err != nil {
			continue
		}
		if st.PID > 0 && syscall.Kill(st.PID, 0) == nil && a.ping(st.Deployment, st.Replica, time.Second) == nil {
			if err := a.tellAdopted(st.Deployment, st.Replica); err != nil { // it exits after its orphan timeout; we watch that
				a.log.Warn("replica did not take the adoption", "replica", st.Replica, "err", err)
			}
			p := &proc{a: a, asg: asg, pid: st.PID, adopted: true, done: make(chan struct{})}
			a.mu.Lock()
			a.running[st.Replica] = p
			a.mu.Unlock()
			a.log.Info("adopted replica", "replica", st.Replica, "pid", st.PID)
			a.procs.Add(1)
			go func() {
				defer a.procs.Done()
				p.watchAdopted(ctx)
				a.mu.Lock()
				delete(a.running, st.Replica)
				a.mu.Unlock()
			}()
			continue
		}
		st.State, st.Error, st.Updated = client.ReplicaFailed, "lost while its node agent was down", time.Now()
		_, _ = store.Update(ctx, a.kv.Replicas, key, st, rev)
	}
}

// tellAdopted tells a replica that this agent now answers for it.
func (a *Agent) tellAdopted(deployment, replica string) error {
	b, _ := json.Marshal(adoption{Node: a.cfg.Name, PID: os.Getpid()})
	m, err := a.nc.Request(wire.ReplicaSubject(deployment, replica, wire.VerbAdopt), b, time.Second)
	if err != nil {
		return err
	}
	if e := m.Header.Get(wire.HeaderError); e != "" {
		return errors.New(e)
	}
	return nil
}

func (a *Agent) ping(deployment, replica string, timeout time.Duration) error {
	_, err := a.nc.Request(wire.ReplicaSubject(deployment, replica, wire.VerbPing), nil, timeout)
	return err
}

// proc is one replica process.
type proc struct {
	a       *Agent
	asg     store.Assignment
	adopted bool

	mu      sync.Mutex // guards cmd, pid, stopped, ready
	cmd     *exec.Cmd
	pid     int
	stopped bool
	ready   bool       // it answered a ping
	link    *agentLink // nil when adopted (or the socket pair failed)

	done     chan struct{} // closed when the process has exited
	stopping chan struct{} // closed by the first stop
}

func (p *proc) state(s string, pid, exit int, msg string, started time.Time) {
	p.mu.Lock()
	early := !p.ready && !p.adopted && s == client.ReplicaFailed
	p.mu.Unlock()
	st := store.ReplicaState{
		Replica: p.asg.Replica, Node: p.asg.Node, Deployment: p.asg.Deployment, PID: pid, State: s,
		ExitCode: exit, Error: msg, CodeHash: p.asg.CodeHash, ConfigHash: p.asg.ConfigHash, Started: started, Updated: time.Now(),
		EarlyExit: early,
	}
	for i := 0; i < 3; i++ {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, err := store.Put(ctx, p.a.kv.Replicas, wire.ReplicaKey(p.asg.Node, p.asg.Replica), st)
		cancel()
		if err == nil {
			return
		}
		p.a.log.Warn("writing replica state failed", "replica", p.asg.Replica, "state", s, "err", err)
		time.Sleep(200 * time.Millisecond)
	}
}

func (p *proc) run(ctx context.Context) {
	defer close(p.done)
	if !p.waitTurn(ctx) {
		return // stopped (or the agent is stopping) before it started: nothing to report
	}
	spec := ReplicaSpec{
		Deployment: p.asg.Deployment, Class: p.asg.Class, Replica: p.asg.Replica, Version: p.asg.Version, Node: p.asg.Node,
		InitArgs: p.asg.InitArgs, UserConfig: p.asg.UserConfig, Batching: p.asg.Batching, MaxOngoingRequests: p.asg.MaxOngoingRequests,
		GracefulShutdownTimeoutS: p.asg.GracefulShutdownTimeoutS, NATSURL: p.a.cfg.NATSURL, Metrics: p.a.cfg.Metrics != nil, OTLPEndpoint: p.a.cfg.OTLPEndpoint, Creds: p.asg.Creds,
		NATSCAFile: p.a.cfg.TLSCAFile, NATSCertFile: p.a.cfg.TLSCertFile, NATSKeyFile: p.a.cfg.TLSKeyFile,
		AgentPID: os.Getpid(), OrphanTimeoutS: p.a.cfg.OrphanTimeout.Seconds(), IdempotentMethods: p.asg.IdempotentMethods,
	}
	// The agent link (link.go): readiness and health pings without the broker.
	link, theirs, err := newLinkPair()
	if err != nil {
		p.a.log.Warn("no agent link; pinging the replica over NATS", "replica", p.asg.Replica, "err", err)
	} else {
		spec.AgentLinkFD = linkFD
		defer link.close()
	}
	specJSON, _ := json.Marshal(spec)
	tail := &tailWriter{max: 8 << 10}
	out := io.MultiWriter(tail, &prefixWriter{w: p.a.cfg.ReplicaOutput, prefix: "[" + p.asg.Deployment + " " + p.asg.Replica + "] "})
	// A private working directory (0700), also its TMPDIR.
	dir, err := replicaDir(p.asg.Replica)
	if err != nil {
		p.state(client.ReplicaFailed, 0, -1, "creating its working directory: "+err.Error(), time.Now())
		return
	}
	defer os.RemoveAll(dir)
	cmd := exec.Command(p.a.cfg.Program, "replica")
	cmd.Dir = dir
	awake := p.a.takeAwake()
	if awake {
		defer p.a.releaseAwake()
	}
	cmd.Env = replicaEnv(dir, p.a.cfg.ReplicaLogLevel, awake)
	// The spec (with the credentials) travels on an inherited pipe.
	cmd.Stdin = bytes.NewReader(specJSON)
	// One writer value for both, so exec gives the child one pipe and
	// copies it in one goroutine, with a small buffer (outputCopier).
	copier := &outputCopier{w: out}
	cmd.Stdout, cmd.Stderr = copier, copier
	if theirs != nil {
		cmd.ExtraFiles = []*os.File{theirs} // fd 3 = linkFD
	}
	if p.a.cfg.KillReplicasWithAgent {
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	}
	var startErr error
	if p.a.spawn != nil {
		done := make(chan struct{})
		p.a.spawn <- func() { startErr = cmd.Start(); close(done) }
		<-done
	} else {
		startErr = cmd.Start()
	}
	started := time.Now()
	if theirs != nil {
		theirs.Close() // the child's copy is its own
	}
	if startErr != nil {
		p.state(client.ReplicaFailed, 0, -1, "starting "+p.a.cfg.Program+": "+startErr.Error(), started)
		return
	}
	p.mu.Lock()
	p.cmd, p.pid, p.link = cmd, cmd.Process.Pid, link
	stopped := p.stopped
	p.mu.Unlock()
	if stopped {
		_ = cmd.Process.Kill()
	}
	pid := cmd.Process.Pid
	if p.a.metrics != nil {
		p.a.metrics.starts.WithLabelValues(p.asg.Deployment).Inc()
	}
	p.a.log.Info("replica started", "deployment", p.asg.Deployment, "replica", p.asg.Replica, "pid", pid)
	p.state(client.ReplicaStarting, pid, 0, "", started)

	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()

	// Ready when it says so on its link or, until it said hello there (a
	// program built with an older SDK never does), when it answers a ping.
	ready := time.NewTicker(25 * time.Millisecond)
	readyBy := time.After(p.a.cfg.ReadyTimeout)
	var hello, readyLink <-chan struct{} // nil without a link: never
	if link != nil {
		hello, readyLink = link.hello, link.readyCh
	}
	tick := ready.C
	var waitErr error
wait:
	for {
		select {
		case waitErr = <-exited:
			ready.Stop()
			p.exit(waitErr, tail, started)
			return
		case <-hello:
			hello, tick = nil, nil // it will say ready: no pings
			ready.Stop()
		case <-readyLink:
			break wait
		case <-tick:
			if p.a.ping(p.asg.Deployment, p.asg.Replica, 250*time.Millisecond) == nil {
				break wait
			}
		case <-readyBy:
			p.a.log.Warn("replica not ready in time; killing it", "replica", p.asg.Replica, "ready_timeout", p.a.cfg.ReadyTimeout)
			_ = cmd.Process.Kill()
		}
	}
	ready.Stop()
	p.mu.Lock()
	p.ready = true
	p.mu.Unlock()
	p.state(client.ReplicaRunning, pid, 0, "", started)
	p.exit(<-exited, tail, started)
}

func (p *proc) exit(err error, tail *tailWriter, started time.Time) {
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			code = -int(ws.Signal())
		}
	}
	p.mu.Lock()
	stopped, ready := p.stopped, p.ready
	p.mu.Unlock()
	state, msg := client.ReplicaStopped, ""
	if (code != 0 || !stopped) && !(stopped && !ready) { // one stopped while starting was killed on purpose
		state = client.ReplicaFailed
		msg = tail.lastLine()
		if code < 0 {
			msg = fmt.Sprintf("killed by signal %d", -code)
		} else if msg == "" {
			msg = fmt.Sprintf("exited with code %d", code)
		}
	}
	if p.a.metrics != nil {
		p.a.metrics.exits.WithLabelValues(p.asg.Deployment, state).Inc()
	}
	p.a.log.Info("replica exited", "deployment", p.asg.Deployment, "replica", p.asg.Replica, "code", code, "state", state)
	p.publishExit(fmt.Sprintf("exited with code %d", code))
	p.state(state, p.pid, code, msg, started)
}

// publishExit tells callers at once that the replica is gone, so that
// those holding a request it acknowledged fail it (or resend an idempotent
// one) without waiting for their deadline. Published before the KV write,
// which may take longer.
func (p *proc) publishExit(reason string) {
	b, _ := json.Marshal(wire.ReplicaExit{Replica: p.asg.Replica, Deployment: p.asg.Deployment, Node: p.asg.Node, Reason: reason})
	if err := p.a.nc.Publish(wire.ReplicaExitSubject(p.a.cfg.Name), b); err != nil {
		p.a.log.Warn("publishing a replica exit failed", "replica", p.asg.Replica, "err", err)
	}
}

// waitTurn waits for the spawn rate limit; it reports false if the
// replica was stopped (or ctx ended) first.
func (p *proc) waitTurn(ctx context.Context) bool {
	r := p.a.starts.Reserve()
	d := r.Delay()
	if d == 0 {
		return true
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-p.stopping:
	case <-ctx.Done():
	}
	r.Cancel()
	return false
}

// stop signals the process. One that is still starting has nothing to
// drain and may sit in a long constructor: it is killed at once.
func (p *proc) stop(sig syscall.Signal) {
	p.mu.Lock()
	if !p.stopped && p.stopping != nil {
		close(p.stopping)
	}
	p.stopped = true
	pid := p.pid
	if !p.ready && !p.adopted {
		sig = syscall.SIGKILL
	}
	p.mu.Unlock()
	if pid > 0 {
		_ = syscall.Kill(pid, sig)
	}
}

// watchAdopted follows a replica this agent did not start, by pid.
func (p *proc) watchAdopted(ctx context.Context) {
	defer close(p.done)
	t := time.NewTicker(200 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if syscall.Kill(p.pid, 0) != nil {
				p.mu.Lock()
				stopped := p.stopped
				p.mu.Unlock()
				state := client.ReplicaFailed
				if stopped {
					state = client.ReplicaStopped
				}
				p.publishExit("adopted replica exited")
				p.state(state, p.pid, 0, "adopted replica exited", time.Time{})
				return
			}
		}
	}
}

// tailWriter keeps the last max bytes written.
type tailWriter struct {
	mu  sync.Mutex
	max int
	b   []byte
}

func (t *tailWriter) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.b = append(t.b, p...)
	if len(t.b) > t.max {
		t.b = append(t.b[:0], t.b[len(t.b)-t.max:]...)
	}
	return len(p), nil
}

func (t *tailWriter) lastLine() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	lines := bytes.Split(bytes.TrimSpace(t.b), []byte("\n"))
	return strings.TrimSpace(string(lines[len(lines)-1]))
}

// prefixWriter prefixes each line.
// outputCopier is a replica's stdout and stderr. exec copies the child's
// pipe into it for the replica's whole life; io.Copy's own buffer is 32 KiB,
// which at 1,000 replicas was 28 MB of natserve up's heap (the largest
// single item, issue 22). Replicas log little: ReadFrom copies with 4 KiB.
type outputCopier struct{ w io.Writer }

func (o *outputCopier) Write(p []byte) (int, error) { return o.w.Write(p) }

func (o *outputCopier) ReadFrom(r io.Reader) (int64, error) {
	// struct{ io.Writer } hides this ReadFrom from io.CopyBuffer.
	return io.CopyBuffer(struct{ io.Writer }{o.w}, r, make([]byte, 4<<10))
}

type prefixWriter struct {
	mu     sync.Mutex
	w      io.Writer
	prefix string
	mid    bool
}

func (pw *prefixWriter) Write(p []byte) (int, error) {
	pw.mu.Lock()
	defer pw.mu.Unlock()
	var out []byte
	for _, c := range p {
		if !pw.mid {
			out = append(out, pw.prefix...)
			pw.mid = true
		}
		out = append(out, c)
		if c == '\n' {
			pw.mid = false
		}
	}
	_, err := pw.w.Write(out)
	return len(p), err
}

// replicaEnvKeep are the variables a replica inherits from its agent:
// nothing else (no credentials, no tokens of the agent's environment).
var replicaEnvKeep = []string{"PATH", "HOME", "LANG", "TZ", "GORACE", "GOCOVERDIR", "NATSERVE_REPLICA_PPROF"}

// replicaEnv is the minimal, explicit environment of a replica process.
//
// GODEBUG=updatemaxprocs=0: the Go runtime (1.25+) otherwise rereads the
// cgroup CPU limit every second to adjust GOMAXPROCS, which woke every idle
// replica once a second; a replica keeps the GOMAXPROCS it started with.
// awake adds sysmon.Setting (awakeReplicas). The GODEBUG the agent was
// started with is kept, after these, so that it may override them.
func replicaEnv(dir, level string, awake bool) []string {
	env := []string{"TMPDIR=" + dir}
	for _, k := range replicaEnvKeep {
		if v, ok := os.LookupEnv(k); ok {
			env = append(env, k+"="+v)
		}
	}
	godebug := "updatemaxprocs=0"
	user := sysmon.UserGODEBUG()
	if awake && !sysmon.Sets(user) {
		godebug = sysmon.With(godebug)
	}
	if user != "" {
		godebug += "," + user
	}
	env = append(env, "GODEBUG="+godebug)
	v, set := os.LookupEnv(ReplicaMaxProcsEnv)
	if n := replicaMaxProcs(v, set, runtime.GOMAXPROCS(0)); n != "" {
		env = append(env, "GOMAXPROCS="+n)
	}
	if level != "" {
		env = append(env, LogLevelEnv+"="+level)
	}
	return env
}

// ReplicaMaxProcsEnv, in a node agent's environment, sets its replicas'
// GOMAXPROCS: a number, or 0 for Go's default (every CPU the process may
// use). Unset, a replica on a machine (or CPU limit) of at most two CPUs
// runs with GOMAXPROCS 1.
const ReplicaMaxProcsEnv = "NATSERVE_REPLICA_GOMAXPROCS"

// replicaMaxProcs is the GOMAXPROCS of a replica ("" for Go's default)
// given ReplicaMaxProcsEnv's value (set: whether it is) and the agent's
// own GOMAXPROCS (Go's default: the CPUs or the cgroup's CPU limit).
//
// One P on a small machine: the replica shares two CPUs with the broker
// and the ingress, and a second P mostly spins and hands goroutines
// between threads (futex wake-ups, findRunnable). Measured on 2 cores
// (issue 18, paired harness runs): c1 +25% requests/s, p50 175 → 148 µs,
// replica CPU 87 → 67 µs/request; c64 +4.6% requests/s, replica CPU
// 19.4 → 17.0 µs/request. What kept replicas off it before — an
// acknowledgment left in nats.go's buffer while a CPU-bound call runs —
// no longer holds: a call runs once the broker confirmed its
// acknowledgment (idempotent methods, which skip that, may be sent again
// by definition). User code that wants more CPUs in one replica sets
// ReplicaMaxProcsEnv, or uses more replicas.
func replicaMaxProcs(v string, set bool, procs int) string {
	if set {
		if n, err := strconv.Atoi(strings.TrimSpace(v)); err == nil && n > 0 {
			return strconv.Itoa(n)
		}
		return ""
	}
	if procs <= 2 {
		return "1"
	}
	return ""
}

// awakeReplicas is how many replicas of a node at once run with the Go
// runtime's monitor kept awake (package sysmon): one per CPU. On the
// request path it saves a replica ~16 µs of p50 and ~1.5 µs of CPU per
// request (issue 18, 2 cores); idle, it costs ~2 ms of CPU a second
// (against ~0), which the bound keeps below ~0.2% of the node's CPUs
// however many replicas it runs. The replicas started first get it.
func awakeReplicas() int { return runtime.NumCPU() }

// takeAwake reports whether a replica starting now runs with the monitor
// awake, taking one of the node's tokens; releaseAwake gives it back when
// the replica has exited.
func (a *Agent) takeAwake() bool {
	select {
	case a.awake <- struct{}{}:
		return true
	default:
		return false
	}
}

func (a *Agent) releaseAwake() { <-a.awake }

// replicaDir makes a replica's private working directory (0700) in the
// temporary directory, creating that first where the image has none (a
// FROM scratch container has no /tmp).
func replicaDir(replica string) (string, error) {
	dir, err := os.MkdirTemp("", "natserve-replica-"+replica+"-")
	if err == nil || !errors.Is(err, fs.ErrNotExist) {
		return dir, err
	}
	base := os.TempDir()
	if err := os.MkdirAll(base, 0o700); err != nil {
		return "", err
	}
	return os.MkdirTemp(base, "natserve-replica-"+replica+"-")
}
