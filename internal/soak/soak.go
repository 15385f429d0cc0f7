// Package soak is natserve's chaos soak: on the docker compose stack
// (internal/composestack: three NATS nodes, two controllers, an ingress,
// two node agents) it sends an open-loop HTTP load at a fixed rate, every
// request with its own id, while a seeded random schedule kill -9s
// replicas, node agents, the leading controller and NATS nodes, SIGSTOPs
// replicas (and SIGCONTs them), and cuts a node off the network and back.
// Executions are counted from outside: the Counter class publishes the id
// of each request it runs on the fault-exec deployment's subject.
//
// The report: requests sent, succeeded, failed by code, never answered
// (must be 0), executed twice (must be 0: nothing is declared idempotent,
// so every request is promised at most one execution), p50/p99/max per
// fault window, time to recovery and to convergence per fault, and a plot
// of success rate and latency over time with the faults marked.
//
//	make soak                          # 30 minutes, bench/results/soak
//	go run ./bench/cmd/soak -h         # rate, duration, seed, output
//
// deploy's TestChaosSoak runs a short one in CI.
package soak

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand"
	"net/http"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/natserve/natserve/client"
	"github.com/natserve/natserve/internal/composestack"
	"github.com/natserve/natserve/internal/wire"
)

// Kind is a kind of fault.
type Kind string

// The faults of the schedule.
const (
	KillReplica Kind = "kill -9 replica"
	StopReplica Kind = "SIGSTOP replica"
	KillAgent   Kind = "kill -9 node agent"
	KillLeader  Kind = "kill -9 leading controller"
	KillNATS    Kind = "kill -9 NATS node"
	Partition   Kind = "network partition"
)

// Kinds lists every kind of fault, in the report's order.
var Kinds = []Kind{KillReplica, StopReplica, KillAgent, KillLeader, KillNATS, Partition}

// Deployment is the soak's deployment by default, at /soak.
const Deployment = "soak"

// Config is one soak.
type Config struct {
	Stack    *composestack.Stack // up and serving
	Rate     int                 // requests per second (default 200)
	Duration time.Duration       // of the load (default 30m)
	Seed     int64               // of the fault schedule (default 1)
	// Deployment is the name (and route, /NAME) of the deployment the load
	// goes to (default Deployment). A new one is placed on both nodes.
	Deployment string
	// Kinds are the faults to inject (default: all of Kinds).
	Kinds []Kind
	// PerKind is how many faults of each kind (default: 3 per 30 minutes, at least 1).
	PerKind int
	// Warmup is the fault-free start, the baseline (default min(Duration/10, 30s)).
	Warmup time.Duration
	// Deadline is the ingress's request timeout (default: the stack's,
	// 60s unless set); a request not answered by Deadline+Slack is never answered.
	Deadline, Slack time.Duration
	// Replicas of the soak's deployment (default 4, spread over both nodes).
	Replicas int
	// WorkMS is how long each request runs (default 20 ms).
	WorkMS int
	// NodeTimeout is the controller's -node-timeout (default 5s): a partition
	// lasts longer than it, so that the node's replicas move.
	NodeTimeout time.Duration
	Logf        func(format string, args ...any)
}

func (c *Config) defaults() {
	if c.Rate == 0 {
		c.Rate = 200
	}
	if c.Duration == 0 {
		c.Duration = 30 * time.Minute
	}
	if c.Seed == 0 {
		c.Seed = 1
	}
	if c.Deployment == "" {
		c.Deployment = Deployment
	}
	if len(c.Kinds) == 0 {
		c.Kinds = Kinds
	}
	if c.PerKind == 0 {
		c.PerKind = max(1, int(c.Duration/(10*time.Minute)))
	}
	if c.Warmup == 0 {
		c.Warmup = min(c.Duration/10, 30*time.Second)
	}
	if c.Deadline == 0 {
		c.Deadline = c.Stack.RequestTimeout
	}
	if c.Deadline == 0 {
		c.Deadline = 60 * time.Second
	}
	if c.Slack == 0 {
		c.Slack = 10 * time.Second
	}
	if c.Replicas == 0 {
		c.Replicas = 4
	}
	if c.WorkMS == 0 {
		c.WorkMS = 20
	}
	if c.NodeTimeout == 0 {
		c.NodeTimeout = 5 * time.Second
	}
	if c.Logf == nil {
		c.Logf = func(string, ...any) {}
	}
}

// Fault is one injected fault and what followed.
type Fault struct {
	Kind   Kind
	Target string        // the service or replica
	At     time.Duration // since the load started
	Hold   time.Duration // until restored (SIGCONT, start, reconnect); 0 for a replica kill
	// Moved is, for a node agent's kill or a partition, how many of the
	// deployment's replicas ran on the node.
	Moved int
	// Replaced is, for a partition, how long after the cut the deployment
	// had its replicas again without the cut-off node (0: not measured).
	Replaced time.Duration
	// Converged is how long after the fault the deployment was HEALTHY with
	// exactly its replicas, every container ran and no stray replica process
	// was left (0: not reached before the next fault).
	Converged time.Duration
	// Stray counts replica processes without an assignment seen at the
	// check before convergence (a double count).
	Stray int
	Err   string // the fault could not be injected
}

// result is one request.
type result struct {
	at      time.Duration // sent, since the load started
	latency time.Duration
	code    string // "200", "504 timeout", "conn", "unanswered", …
}

// Run runs the soak and returns its report.
func Run(ctx context.Context, cfg Config) (*Report, error) {
	cfg.defaults()
	s := cfg.Stack
	cl, err := client.Connect(ctx, s.NATSURL(), client.WithTimeout(20*time.Second), client.WithCreds(s.Creds))
	if err != nil {
		return nil, err
	}
	defer cl.Close()
	dep := cfg.Deployment
	prefix := "/" + dep
	spec := client.DeploymentSpec{Name: dep, Class: "Counter", NumReplicas: cfg.Replicas, RoutePrefix: &prefix, MaxOngoingRequests: 50}
	if _, err := cl.Deploy(ctx, spec); err != nil {
		return nil, fmt.Errorf("deploying %s: %w", dep, err)
	}
	wctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	_, err = cl.WaitHealthy(wctx, dep, nil)
	cancel()
	if err != nil {
		return nil, fmt.Errorf("waiting for %s: %w", dep, err)
	}
	// Replicas on both nodes: a node's fault then leaves the other's to serve.
	if err := spread(ctx, cl, spec); err != nil {
		return nil, err
	}
	r := &runner{cfg: cfg, cl: cl, rng: rand.New(rand.NewSource(cfg.Seed)), execs: map[string]int{}}
	if err := composestack.WaitFor(ctx, time.Minute, func() error { return r.converged(ctx) }); err != nil {
		return nil, fmt.Errorf("before the soak: %w", err)
	}
	sub, err := cl.Conn().Subscribe(wire.DeploymentSubject("fault-exec"), func(m *nats.Msg) {
		r.mu.Lock()
		r.execs[string(m.Data)]++
		r.mu.Unlock()
	})
	if err != nil {
		return nil, err
	}
	defer sub.Unsubscribe()
	_ = sub.SetPendingLimits(-1, -1)

	r.start = time.Now()
	loadCtx, stopLoad := context.WithCancel(ctx)
	defer stopLoad()
	var loadWG sync.WaitGroup
	loadWG.Add(1)
	go func() { defer loadWG.Done(); r.load(loadCtx) }()

	r.schedule(ctx)
	if rest := cfg.Duration - time.Since(r.start); rest > 0 {
		select {
		case <-time.After(rest):
		case <-ctx.Done():
		}
	}
	stopLoad()
	r.loadTime = r.since()
	loadWG.Wait()
	// Executions published just before the end still travel.
	_ = cl.Conn().Flush()
	time.Sleep(time.Second)
	return r.report(), ctx.Err()
}

// spread waits until spec's replicas all run, on both nodes. A fresh
// deployment is placed on both; one an earlier soak on the same stack
// left on a single node is rebalanced by the controller once the nodes
// have settled (-rebalance-settle, then one move per -rebalance-cooldown),
// well within the minute waited.
func spread(ctx context.Context, cl *client.Client, spec client.DeploymentSpec) error {
	return composestack.WaitFor(ctx, time.Minute, func() error {
		d, err := cl.Get(ctx, spec.Name)
		if err != nil {
			return err
		}
		nodes := map[string]int{}
		running := 0
		for _, rep := range d.Replicas {
			if rep.State == client.ReplicaRunning {
				nodes[rep.Node]++
				running++
			}
		}
		if running != spec.NumReplicas || len(d.Replicas) != spec.NumReplicas || len(nodes) < 2 {
			return fmt.Errorf("%s: %d replicas listed, %d running, by node %v; want them on both nodes", spec.Name, len(d.Replicas), running, nodes)
		}
		return nil
	})
}

type runner struct {
	cfg   Config
	cl    *client.Client
	rng   *rand.Rand
	start time.Time
	// loadTime is how long the load ran: Duration, or longer when the
	// last fault's convergence took it past.
	loadTime time.Duration

	mu      sync.Mutex
	results []result
	execs   map[string]int // request id → executions seen
	faults  []Fault
	ids     []string // request ids, by index of results
}

func (r *runner) since() time.Duration { return time.Since(r.start) }

// load sends cfg.Rate requests a second until ctx ends, then waits for
// every one to be answered (or to pass its deadline and slack).
func (r *runner) load(ctx context.Context) {
	tr := &http.Transport{MaxIdleConnsPerHost: 1024, MaxIdleConns: 1024}
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: tr, Timeout: r.cfg.Deadline + r.cfg.Slack}
	url := fmt.Sprintf("%s/%s?ms=%d", r.cfg.Stack.BaseURL(), r.cfg.Deployment, r.cfg.WorkMS)
	interval := time.Second / time.Duration(r.cfg.Rate)
	var wg sync.WaitGroup
	defer wg.Wait()
	next := time.Now()
	for n := 0; ; n++ {
		if d := time.Until(next); d > 0 {
			select {
			case <-ctx.Done():
				return
			case <-time.After(d):
			}
		} else if ctx.Err() != nil {
			return
		}
		next = next.Add(interval)
		id := fmt.Sprintf("soak-%d-%d", r.cfg.Seed, n)
		wg.Add(1)
		go func() {
			defer wg.Done()
			at := r.since()
			code := do(hc, url, id)
			res := result{at: at, latency: r.since() - at, code: code}
			r.mu.Lock()
			r.results = append(r.results, res)
			r.ids = append(r.ids, id)
			r.mu.Unlock()
		}()
	}
}

// do sends one request and returns its outcome: the status, with the
// error's code for a failure ("504 timeout"), "conn" when the ingress could
// not be reached, or "unanswered" when nothing came back in time.
func do(hc *http.Client, url, id string) string {
	req, _ := http.NewRequest("GET", url, nil)
	req.Header.Set("X-Request-Id", id)
	resp, err := hc.Do(req)
	if err != nil {
		var ne interface{ Timeout() bool }
		if errors.As(err, &ne) && ne.Timeout() {
			return "unanswered"
		}
		return "conn"
	}
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	resp.Body.Close()
	if resp.StatusCode == 200 {
		return "200"
	}
	// "deployment soak: CODE: message"
	code := ""
	if f := strings.SplitN(string(body), ": ", 3); len(f) == 3 && strings.HasPrefix(f[0], "deployment ") {
		code = " " + f[1]
	}
	return fmt.Sprint(resp.StatusCode) + code
}

// schedule injects the faults: PerKind of each kind in a seeded random
// order, spread over the duration after the warm-up; each waits for the
// previous one's convergence.
func (r *runner) schedule(ctx context.Context) {
	var plan []Kind
	for range r.cfg.PerKind {
		plan = append(plan, r.cfg.Kinds...)
	}
	r.rng.Shuffle(len(plan), func(i, j int) { plan[i], plan[j] = plan[j], plan[i] })
	tail := min(r.cfg.Duration/10, 30*time.Second)
	slot := (r.cfg.Duration - r.cfg.Warmup - tail) / time.Duration(len(plan))
	for i, k := range plan {
		at := r.cfg.Warmup + time.Duration(i)*slot + time.Duration(r.rng.Int63n(int64(slot/4)+1))
		if d := at - r.since(); d > 0 {
			select {
			case <-ctx.Done():
				return
			case <-time.After(d):
			}
		}
		if ctx.Err() != nil {
			return
		}
		f := r.inject(ctx, k)
		r.cfg.Logf("soak %v: %s %s (hold %v) converged after %v%s", f.At.Round(time.Second), f.Kind, f.Target, f.Hold.Round(100*time.Millisecond), f.Converged.Round(100*time.Millisecond), errSuffix(f.Err))
		r.mu.Lock()
		r.faults = append(r.faults, f)
		r.mu.Unlock()
	}
}

func errSuffix(e string) string {
	if e == "" {
		return ""
	}
	return ": " + e
}

// hold picks how long a fault lasts before it is undone.
func (r *runner) hold(lo, hi time.Duration) time.Duration {
	return lo + time.Duration(r.rng.Int63n(int64(hi-lo)+1))
}

// inject runs one fault through to its convergence.
func (r *runner) inject(ctx context.Context, k Kind) Fault {
	// At is set again just before the fault is issued: choosing its target
	// (a status query, docker ps) took 0.1–0.5 s on a busy machine, and
	// counted as the system's time to recover.
	f := Fault{Kind: k, At: r.since()}
	s := r.cfg.Stack
	fail := func(err error) Fault {
		f.Err = err.Error()
		_ = r.converged(ctx) // leave the stack whole for the next one
		return f
	}
	restoreAt := func(hold time.Duration, undo func() error) error {
		f.Hold = hold
		select {
		case <-ctx.Done():
		case <-time.After(hold - (r.since() - f.At)):
		}
		return undo()
	}
	startContainer := func(id string) func() error {
		return func() error { _, err := composestack.Docker(context.Background(), "start", id); return err }
	}
	var err error
	switch k {
	case KillReplica, StopReplica:
		sig := syscall.SIGKILL
		if k == StopReplica {
			sig = syscall.SIGSTOP
		}
		var p composestack.Proc
		f.Target, p, err = r.pickReplica(ctx)
		if err != nil {
			return fail(err)
		}
		f.At = r.since() // the fault is the signal, not the choosing of its target
		if err := syscall.Kill(p.HostPID, sig); err != nil {
			return fail(fmt.Errorf("kill -%d %d: %w", sig, p.HostPID, err))
		}
		if k == StopReplica {
			err = restoreAt(r.hold(3*time.Second, 8*time.Second), func() error { return syscall.Kill(p.HostPID, syscall.SIGCONT) })
		}
	case KillAgent, KillLeader, KillNATS:
		svc := ""
		switch k {
		case KillAgent:
			svc, f.Moved = r.busiestNode(ctx)
		case KillNATS:
			svc = fmt.Sprintf("nats%d", 1+r.rng.Intn(3))
		case KillLeader:
			st, err := r.cl.Status(ctx)
			if err != nil {
				return fail(err)
			}
			if st.Leader == "" {
				return fail(errors.New("no leader"))
			}
			svc = st.Leader
		}
		f.Target = svc
		var id string
		if id, err = s.Container(ctx, svc); err != nil {
			return fail(err)
		}
		f.At = r.since() // the kill lands during the docker command
		if _, err := composestack.Docker(ctx, "kill", "--signal", "KILL", id); err != nil {
			return fail(err)
		}
		err = restoreAt(r.hold(3*time.Second, 10*time.Second), startContainer(id))
	case Partition:
		var svc string
		svc, f.Moved = r.busiestNode(ctx)
		f.Target = svc
		var id string
		if id, err = s.Container(ctx, svc); err != nil {
			return fail(err)
		}
		f.At = r.since() // the cut lands during the docker command
		if _, err := composestack.Docker(ctx, "network", "disconnect", s.Network(), id); err != nil {
			return fail(err)
		}
		// Longer than the node timeout, so that the node's replicas move.
		hold := r.hold(r.cfg.NodeTimeout+3*time.Second, 2*r.cfg.NodeTimeout+5*time.Second)
		// The controller replaces the node's replicas on the other one within the node timeout.
		_ = composestack.WaitFor(ctx, hold-100*time.Millisecond, func() error {
			d, err := r.cl.Get(ctx, r.cfg.Deployment)
			if err != nil {
				return err
			}
			n := 0
			for _, rep := range d.Replicas {
				if rep.Node == svc {
					return fmt.Errorf("a replica on %s", svc)
				}
				if rep.State == client.ReplicaRunning {
					n++
				}
			}
			if n < d.Spec.NumReplicas {
				return fmt.Errorf("%d of %d running", n, d.Spec.NumReplicas)
			}
			f.Replaced = r.since() - f.At
			return nil
		})
		err = restoreAt(hold, func() error {
			_, err := composestack.Docker(context.Background(), "network", "connect", "--alias", svc, s.Network(), id)
			return err
		})
	}
	if err != nil {
		f.Err = err.Error()
	}
	// Convergence: whole stack, spec's replica counts, no stray process.
	var lastStray int
	cerr := composestack.WaitFor(ctx, 2*time.Minute, func() error {
		err := r.converged(ctx)
		var se strayError
		if errors.As(err, &se) {
			lastStray = int(se)
		}
		return err
	})
	f.Stray = lastStray
	if cerr != nil {
		if f.Err == "" {
			f.Err = "not converged: " + cerr.Error()
		}
	} else {
		f.Converged = r.since() - f.At
	}
	return f
}

// busiestNode picks the node running the most replicas of the soak's
// deployment (either on a tie), so that its fault moves some.
func (r *runner) busiestNode(ctx context.Context) (string, int) {
	n := map[string]int{}
	if d, err := r.cl.Get(ctx, r.cfg.Deployment); err == nil {
		for _, rep := range d.Replicas {
			n[rep.Node]++
		}
	}
	node := fmt.Sprintf("worker%d", 1+r.rng.Intn(2))
	for _, w := range []string{"worker1", "worker2"} {
		if n[w] > n[node] {
			node = w
		}
	}
	return node, n[node]
}

// pickReplica picks a running replica of the soak's deployment and finds its process.
func (r *runner) pickReplica(ctx context.Context) (string, composestack.Proc, error) {
	d, err := r.cl.Get(ctx, r.cfg.Deployment)
	if err != nil {
		return "", composestack.Proc{}, err
	}
	var running []client.Replica
	for _, rep := range d.Replicas {
		if rep.State == client.ReplicaRunning && rep.PID != 0 {
			running = append(running, rep)
		}
	}
	if len(running) == 0 {
		return "", composestack.Proc{}, errors.New("no running replica")
	}
	rep := running[r.rng.Intn(len(running))]
	procs, err := r.cfg.Stack.Procs(ctx, rep.Node)
	if err != nil {
		return "", composestack.Proc{}, err
	}
	for _, p := range procs {
		if p.PID == rep.PID {
			return rep.Node + "/" + rep.ID, p, nil
		}
	}
	return "", composestack.Proc{}, fmt.Errorf("replica %s: pid %d not in %s's processes", rep.ID, rep.PID, rep.Node)
}

type strayError int

func (e strayError) Error() string {
	return fmt.Sprintf("%d replica processes more than running replicas", int(e))
}

// converged checks that every service runs, the soak's deployment is
// HEALTHY with exactly its replicas, all running, and that the nodes run no
// more replica processes than the control plane counts.
func (r *runner) converged(ctx context.Context) error {
	s := r.cfg.Stack
	cs, err := s.Containers(ctx)
	if err != nil {
		return err
	}
	for _, svc := range composestack.Services {
		if cs[svc].State != "running" {
			return fmt.Errorf("%s is %s", svc, cs[svc].State)
		}
	}
	ds, err := r.cl.List(ctx)
	if err != nil {
		return err
	}
	running := 0
	for _, d := range ds {
		d, err := r.cl.Get(ctx, d.Spec.Name) // with its replicas
		if err != nil {
			return err
		}
		if d.Spec.Name == r.cfg.Deployment {
			n := 0
			for _, rep := range d.Replicas {
				if rep.State == client.ReplicaRunning {
					n++
				}
			}
			if d.Status != client.StatusHealthy || n != d.Spec.NumReplicas || len(d.Replicas) != d.Spec.NumReplicas {
				return fmt.Errorf("%s: %s, %d replicas listed, %d running, spec %d", d.Spec.Name, d.Status, len(d.Replicas), n, d.Spec.NumReplicas)
			}
		}
		for _, rep := range d.Replicas {
			if rep.State == client.ReplicaRunning || rep.State == client.ReplicaStarting {
				running++
			}
		}
	}
	procs := 0
	for _, w := range []string{"worker1", "worker2"} {
		ps, err := s.Procs(ctx, w)
		if err != nil {
			return err
		}
		for _, p := range ps {
			if f := strings.Fields(p.Args); len(f) > 1 && f[1] == "replica" {
				procs++
			}
		}
	}
	if procs > running {
		return strayError(procs - running)
	}
	if procs < running {
		return fmt.Errorf("%d replica processes for %d running replicas", procs, running)
	}
	return nil
}

// duplicates counts the ids that ran more than once, and the 200s never
// seen to run (their execution's message was lost in a NATS failover:
// informative only).
func (r *runner) duplicates() (dups, executed int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, n := range r.execs {
		executed++
		if n > 1 {
			dups++
		}
	}
	return dups, executed
}

func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	return sorted[min(len(sorted)-1, int(float64(len(sorted))*p))]
}

func sortedLatencies(rs []result) []time.Duration {
	l := make([]time.Duration, len(rs))
	for i, x := range rs {
		l[i] = x.latency
	}
	slices.Sort(l)
	return l
}
