// Package controlplane is natserve's controller: it keeps the desired state
// of deployments in JetStream KV, serves the control API (deploy, delete,
// list, get, scale, status) on NATS request/reply subjects, places replicas
// on node agents and keeps their count, version and health true.
//
// Several controllers may run; one holds a lease in KV and acts, the others
// wait to take over. All state is in KV, so a restarted controller adopts
// the running replicas instead of restarting them. Data flows in through the
// API and the agents' records (nodes, replica states) and out as
// assignments the agents carry out.
package controlplane

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"
	"github.com/natserve/natserve/client"
	"github.com/natserve/natserve/internal/auth"
	"github.com/natserve/natserve/internal/durable"
	"github.com/natserve/natserve/internal/kvwatch"
	prom "github.com/natserve/natserve/internal/metrics"
	"github.com/natserve/natserve/internal/natsconn"
	"github.com/natserve/natserve/internal/store"
	"github.com/natserve/natserve/internal/wire"
	"github.com/prometheus/client_golang/prometheus"
)

// Config configures a Controller.
type Config struct {
	// NATSURL is the broker (comma-separated for a cluster). Required.
	NATSURL string
	// NATSOptions are extra connection options (e.g. an in-process connection).
	NATSOptions []nats.Option
	// ID names this controller in the lease. Default: host-pid-random.
	ID string
	// KVReplicas is the replication of the buckets (3 in a cluster). Default: 1.
	KVReplicas int
	// LeaseTTL is how long the lease outlives a dead leader. Default: 6s.
	LeaseTTL time.Duration
	// NodeTimeout is how long a node may miss heartbeats before its replicas
	// are placed elsewhere. Default: 5s.
	NodeTimeout time.Duration
	// ReconcileInterval is how often the control loop looks for changes
	// (and acts on them): a pass covers only the deployments that changed
	// or are not settled yet. Default: 100ms.
	ReconcileInterval time.Duration
	// Metrics receives the controller's Prometheus metrics; nil turns them
	// off. Default: nil.
	Metrics prometheus.Registerer
	// Signer mints the NATS identity of each deployment's replicas; nil
	// on a broker without authentication. Default: nil.
	Signer *auth.Signer
	// Revoke, when set, revokes NATS user identities (public keys) in the
	// account: the controller revokes a replica's identity once the
	// replica of a deleted deployment has stopped, and the identities of
	// one still stopping when its name is deployed again, so an identity
	// never serves a later deployment of the same name. natserve up sets it
	// (it holds the operator key); nil leaves identities valid. Default: nil.
	Revoke func(ctx context.Context, users []string) error
	// FullPassInterval is how often the control loop passes over every
	// deployment, changed or not: the safety net of the event-driven loop.
	// Default: 15s.
	FullPassInterval time.Duration
	// DisableRebalance turns rebalancing off: replicas stay where placement
	// put them until they end, however unevenly a lost and returned node
	// leaves them (see rebalance.go). Default: false.
	DisableRebalance bool
	// RebalanceCooldown is the least time between two rebalancing moves of
	// one deployment. Default: 10s.
	RebalanceCooldown time.Duration
	// RebalanceSettle is how long a node must have been alive (heartbeating
	// without a gap longer than NodeTimeout) before replicas move onto it,
	// so a flapping node draws none. Default: 10s.
	RebalanceSettle time.Duration
	// RebalanceMaxMoves bounds the rebalancing moves in flight over all
	// deployments (each starts one replica before it stops another).
	// Default: 8.
	RebalanceMaxMoves int
	// AsyncRetention is how long stored requests' records and results are
	// kept. Default: 24h.
	AsyncRetention time.Duration
	// Logger. Default: slog.Default().
	Logger *slog.Logger
}

// Controller is the control plane.
type Controller struct {
	cfg Config
	log *slog.Logger

	nc *nats.Conn
	js jetstream.JetStream
	kv *store.Buckets
	m  *ctlMetrics // nil when Config.Metrics is nil

	opening sync.Mutex // serializes this process's request stream creations (openStream)

	mu      sync.Mutex // guards leading, st
	leading bool
	st      *state // the leader's view; nil when not leading

	// A pass's new assignments are written concurrently (createSlots at
	// a time) and the pass waits for all of them (creating) before it ends.
	creating    sync.WaitGroup
	createSlots chan struct{}
}

// createParallel bounds the assignment writes in flight in one pass.
const createParallel = 32

// New returns a controller for cfg; it does no I/O.
func New(cfg Config) (*Controller, error) {
	if cfg.NATSURL == "" && len(cfg.NATSOptions) == 0 {
		return nil, errors.New("controller: NATS URL is required")
	}
	if cfg.ID == "" {
		h, _ := os.Hostname()
		cfg.ID = fmt.Sprintf("%s-%d-%s", h, os.Getpid(), strings.ToLower(nuid.Next()[18:]))
	}
	if cfg.LeaseTTL == 0 {
		cfg.LeaseTTL = 6 * time.Second
	}
	if cfg.NodeTimeout == 0 {
		cfg.NodeTimeout = 5 * time.Second
	}
	if cfg.ReconcileInterval == 0 {
		cfg.ReconcileInterval = 100 * time.Millisecond
	}
	if cfg.FullPassInterval == 0 {
		cfg.FullPassInterval = 15 * time.Second
	}
	if cfg.RebalanceCooldown <= 0 {
		cfg.RebalanceCooldown = 10 * time.Second
	}
	if cfg.RebalanceSettle <= 0 {
		cfg.RebalanceSettle = 10 * time.Second
	}
	if cfg.RebalanceMaxMoves <= 0 {
		cfg.RebalanceMaxMoves = 8
	}
	if cfg.AsyncRetention == 0 {
		cfg.AsyncRetention = DefaultAsyncRetention
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	c := &Controller{cfg: cfg, log: cfg.Logger.With("controller", cfg.ID), createSlots: make(chan struct{}, createParallel)}
	if cfg.Metrics != nil {
		c.m = newCtlMetrics()
	}
	return c, nil
}

// ID returns the controller's id.
func (c *Controller) ID() string { return c.cfg.ID }

// Leading reports whether this controller holds the lease.
func (c *Controller) Leading() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.leading
}

// Run campaigns for the lease and, while it holds it, acts as the
// controller, until ctx ends. On a clean exit it releases the lease so a
// standby takes over at once.
func (c *Controller) Run(ctx context.Context) error {
	nc, err := nats.Connect(c.cfg.NATSURL, natsconn.Options("natserve controller "+c.cfg.ID, c.cfg.NATSOptions...)...)
	if errors.Is(err, nats.ErrAuthorization) {
		return fmt.Errorf("controller: %s: %w: pass the controller's credentials with -creds FILE", c.cfg.NATSURL, client.ErrNoCreds)
	}
	if err != nil {
		return fmt.Errorf("controller: connecting to %s: %w", c.cfg.NATSURL, err)
	}
	defer nc.Close()
	c.nc = nc
	if c.m != nil {
		for _, col := range append(c.m.collectors(), newStateCollector(c), prom.NATSCollector(nc, "controller")) {
			if err := c.cfg.Metrics.Register(col); err != nil {
				return fmt.Errorf("controller: registering metrics: %w", err)
			}
		}
	}
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	c.js = js
	if c.kv, err = store.OpenRetry(ctx, js, store.Config{Replicas: c.cfg.KVReplicas, LeaseTTL: c.cfg.LeaseTTL}, c.log); err != nil {
		return nil // ctx ended
	}
	// Every controller process answers the stored requests' service,
	// leader or not (internal/durable).
	var swg sync.WaitGroup
	swg.Add(1)
	go func() {
		defer swg.Done()
		if err := durable.Serve(ctx, nc, c.log, c.openStream); err != nil {
			c.log.Error("the stored requests' service failed", "err", err)
		}
	}()
	defer swg.Wait()
	c.log.Info("controller started; campaigning for the lease")
	for ctx.Err() == nil {
		rev, err := store.Update(ctx, c.kv.Leader, wire.LeaderKey, c.lease(), 0)
		if err == nil {
			c.lead(ctx, rev)
			continue
		}
		select {
		case <-ctx.Done():
		case <-time.After(c.cfg.LeaseTTL / 6):
		}
	}
	return nil
}

func (c *Controller) lease() store.Lease {
	h, _ := os.Hostname()
	return store.Lease{Holder: c.cfg.ID, Host: h, PID: os.Getpid(), Renewed: time.Now()}
}

// lead acts as the controller until the lease is lost or ctx ends.
func (c *Controller) lead(parent context.Context, rev uint64) {
	ctx, cancel := context.WithCancel(parent)
	c.log.Info("became leader")
	st := newState()
	wg := &st.wg
	// Stop every goroutine of this term, then wait for them: waiting first
	// would wedge on the watches, which end only when ctx does.
	defer func() {
		cancel()
		wg.Wait()
	}()

	// Load the state before acting on it.
	synced := make(chan string, 6)
	watch := func(kv jetstream.KeyValue, apply func(jetstream.KeyValueEntry)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var once sync.Once // a re-established watch syncs again; lead counts the first
			kvwatch.Run(ctx, kvwatch.Config{JetStream: c.js, Bucket: kv.Bucket(), Logger: c.log}, kvwatch.Handler{
				Entry:  apply,
				Synced: func() { once.Do(func() { synced <- kv.Bucket() }) },
			})
		}()
	}
	watch(c.kv.Deployments, func(e jetstream.KeyValueEntry) { applyEntry(st.deps, e) })
	watch(c.kv.Assignments, func(e jetstream.KeyValueEntry) { applyEntry(st.asgs, e) })
	watch(c.kv.Replicas, func(e jetstream.KeyValueEntry) { applyEntry(st.reps, e) })
	watch(c.kv.Graphs, func(e jetstream.KeyValueEntry) { applyEntry(st.graphs, e) })
	watch(c.kv.Routes, func(e jetstream.KeyValueEntry) { applyEntry(st.routes, e) })
	watch(c.kv.Nodes, func(e jetstream.KeyValueEntry) {
		applyEntry(st.nodes, e)
		st.sawNode(e.Key(), e.Operation() == jetstream.KeyValuePut)
	})
	for i := 0; i < 6; i++ {
		select {
		case <-synced:
		case <-ctx.Done():
			return
		}
	}

	c.mu.Lock()
	c.leading, c.st = true, st
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		c.leading, c.st = false, nil
		c.mu.Unlock()
	}()

	msubs, err := c.subscribeMetrics(ctx, st)
	if err != nil {
		c.log.Error("subscribing to load reports failed", "err", err)
		return
	}
	defer func() {
		for _, s := range msubs {
			_ = s.Unsubscribe()
		}
	}()
	sub, err := c.nc.QueueSubscribe(wire.APISubjects, wire.APIQueueGroup, func(m *nats.Msg) { c.serveAPI(ctx, st, m) })
	if err != nil {
		c.log.Error("subscribing to the control API failed", "err", err)
		return
	}
	defer func() { _ = sub.Unsubscribe() }()
	svc := c.apiService()
	if err := svc.Start(c.nc); err != nil {
		c.log.Warn("announcing the control API service failed", "err", err)
	}
	defer svc.Stop()

	wg.Add(1)
	go func() {
		defer wg.Done()
		c.healthLoop(ctx, st)
	}()
	st.spawn(func() { c.asyncLoop(ctx, st) })

	// The lease is renewed on its own goroutine: a long pass (the first
	// over 1,000 new deployments writes 1,000 assignments) must not delay
	// a renewal past the lease's TTL, which made the leader step down in
	// the middle of a big apply.
	lost := make(chan struct{})
	var leaseRev atomic.Uint64
	leaseRev.Store(rev)
	renewing := make(chan struct{})
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer close(renewing)
		c.renewLease(ctx, &leaseRev, lost)
	}()
	tick := time.NewTicker(c.cfg.ReconcileInterval)
	defer tick.Stop()
	fullPass := time.NewTicker(c.cfg.FullPassInterval)
	defer fullPass.Stop()
	st.ch.markAll() // the first pass covers everything
	lastAlive := map[string]store.Node{}
	for {
		select {
		case <-parent.Done():
			<-renewing // ended with parent: the revision is final
			dctx, dcancel := context.WithTimeout(context.Background(), 2*time.Second)
			_ = c.kv.Leader.Delete(dctx, wire.LeaderKey, jetstream.LastRevision(leaseRev.Load()))
			dcancel()
			c.log.Info("released the lease")
			return
		case <-lost:
			return
		case <-fullPass.C:
			st.ch.markAll()
		case <-tick.C:
			// A node that came or stopped heartbeating concerns every
			// deployment; the heartbeats themselves concern none.
			if alive := st.alive(c.cfg.NodeTimeout); !sameKeys(alive, lastAlive) {
				st.ch.markAll()
				st.mv.nodesChanged(alive, time.Now())
				lastAlive = alive
			}
			if names, reps, full := st.ch.take(); full || len(names) > 0 || len(reps) > 0 {
				start := time.Now()
				c.reconcile(ctx, st, names, reps, full)
				c.m.loopTook(time.Since(start))
			}
		}
	}
}

// renewLease renews the lease every TTL/4 until ctx ends; it closes lost
// when the lease is gone (taken, expired, or not renewed for 3/4 of its
// TTL).
func (c *Controller) renewLease(ctx context.Context, rev *atomic.Uint64, lost chan<- struct{}) {
	renew := time.NewTicker(c.cfg.LeaseTTL / 4)
	defer renew.Stop()
	lastRenew := time.Now()
	for {
		select {
		case <-ctx.Done():
			return
		case <-renew.C:
		}
		rctx, rcancel := context.WithTimeout(ctx, c.cfg.LeaseTTL/4)
		written := time.Now()
		nrev, err := store.Update(rctx, c.kv.Leader, wire.LeaderKey, c.lease(), rev.Load())
		if errors.Is(err, jetstream.ErrKeyExists) {
			// A renewal that timed out on a busy broker may have been
			// written all the same: the lease is still ours if it names
			// this controller (an expired lease is gone from the bucket).
			var l store.Lease
			if grev, gerr := store.Get(rctx, c.kv.Leader, wire.LeaderKey, &l); gerr == nil && l.Holder == c.cfg.ID {
				nrev, err, written = grev, nil, l.Renewed
			}
		}
		rcancel()
		switch {
		case ctx.Err() != nil:
			return
		case err == nil:
			rev.Store(nrev)
			lastRenew = written
		case errors.Is(err, jetstream.ErrKeyExists) || time.Since(lastRenew) > c.cfg.LeaseTTL*3/4:
			c.log.Warn("lost the lease; stepping down", "err", err)
			close(lost)
			return
		default:
			c.log.Warn("renewing the lease failed; retrying", "err", err)
		}
	}
}

func sameKeys[V any](a, b map[string]V) bool {
	if len(a) != len(b) {
		return false
	}
	for k := range a {
		if _, ok := b[k]; !ok {
			return false
		}
	}
	return true
}

// Stats counts the control loop's work while this controller leads (zero
// otherwise): for tests and benchmarks.
func (c *Controller) Stats() PassStats {
	c.mu.Lock()
	st := c.st
	c.mu.Unlock()
	if st == nil {
		return PassStats{}
	}
	return st.ch.stats()
}

func applyEntry[T any](t *table[T], e jetstream.KeyValueEntry) {
	if e.Operation() == jetstream.KeyValuePut {
		t.putJSON(e.Key(), e.Revision(), e.Value())
	} else {
		t.del(e.Key(), e.Revision())
	}
}

// state is the leader's view of the store plus what it keeps in memory.
type state struct {
	creates inflight // assignments being written (placement counts them)
	deps    *table[client.DeploymentSpec]
	asgs    *table[store.Assignment]
	reps    *table[store.ReplicaState]
	nodes   *table[store.Node]
	graphs  *table[client.GraphSpec]
	routes  *table[json.RawMessage] // what callers may read (routes.go)

	metrics *metrics
	ch      *changes // what changed since the last pass; indexes
	mv      *moves   // rebalancing moves in flight; when nodes joined

	// wg counts the goroutines of this leadership term (watches, health
	// checks, reconfigures); lead cancels them and waits for them before
	// it returns, so none acts after stepping down.
	wg sync.WaitGroup

	mu     sync.Mutex // guards seen, dep, health, busy
	seen   map[string]time.Time
	dep    map[string]*depState
	health map[string]*healthState
	// healthQ orders each node's health checks by when they are due
	// (see dueQueue); guarded by mu like health.
	healthQ map[string]*dueQueue
	// healthWake (cap 1) wakes the health loop when a check was queued.
	healthWake chan struct{}
	// noBatch: nodes whose agent left a health batch unanswered, until when
	// their replicas are pinged directly; guarded by mu.
	noBatch map[string]time.Time
	busy    map[string]bool // replicas with a reconfigure in flight
	wakes   map[string]bool // deployments a caller asked to wake
}

func newState() *state {
	st := &state{
		deps: newTable[client.DeploymentSpec](), asgs: newTable[store.Assignment](),
		reps: newTable[store.ReplicaState](), nodes: newTable[store.Node](), graphs: newTable[client.GraphSpec](), routes: newTable[json.RawMessage](),
		seen: map[string]time.Time{}, dep: map[string]*depState{}, health: map[string]*healthState{}, healthQ: map[string]*dueQueue{}, healthWake: make(chan struct{}, 1), noBatch: map[string]time.Time{}, busy: map[string]bool{},
		metrics: newMetrics(), ch: newChanges(), mv: newMoves(),
	}
	st.ch.hook(st)
	return st
}

// spawn runs f on a goroutine of this term (see wg).
func (s *state) spawn(f func()) {
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		f()
	}()
}

func (s *state) sawNode(name string, alive bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if alive {
		s.seen[name] = time.Now()
	} else {
		delete(s.seen, name)
	}
}

// alive returns the nodes that heartbeated within timeout.
func (s *state) alive(timeout time.Duration) map[string]store.Node {
	out := map[string]store.Node{}
	s.mu.Lock()
	seen := make(map[string]time.Time, len(s.seen))
	for k, v := range s.seen {
		seen[k] = v
	}
	s.mu.Unlock()
	for _, n := range s.nodes.all() {
		if t, ok := seen[n.key]; ok && time.Since(t) < timeout {
			out[n.key] = n.val
		}
	}
	return out
}

// depState is what the controller remembers of a deployment between loops.
type depState struct {
	specRev    uint64
	failHash   string // code hash the constructor failures count against
	failures   int
	lastErr    string
	lastCrash  string
	nextStart  time.Time
	healthyRev uint64 // spec revision that last reached HEALTHY
	status     string
	message    string
	ready      int

	// Rebalancing (rebalance.go): the replacement a move started and the
	// node it relieves ("" when no move is in flight); when the last move ended.
	moveReplica string
	moveFrom    string
	lastMove    time.Time

	// Autoscaling (autoTarget < 0 until first decided).
	autoTarget  int
	decision    client.Decision
	scaleReason string
	ongoing     float64
}

func (s *state) snapshot(name string) depState {
	s.mu.Lock()
	defer s.mu.Unlock()
	if d, ok := s.dep[name]; ok {
		return *d
	}
	return depState{status: client.StatusUpdating, autoTarget: -1}
}
