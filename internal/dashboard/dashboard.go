// Package dashboard is natserve's web dashboard: one page (embedded HTML,
// JavaScript and CSS; no build step, no CDN) that shows deployments and
// their status, replicas (node, pid, state, uptime), request rate, p50/p99
// latency and errors per deployment over the last minutes as charts,
// autoscaling decisions, nodes and the last events, updated every second.
//
// Data enters over NATS only, so the dashboard runs anywhere a client may:
// the cluster's state from the control API (Status), and traffic from the
// NATS services protocol ($SRV.STATS), where every replica reports its
// per-method counts and latency histogram and every ingress its per-route
// ones; the dashboard merges the instances (adding histogram buckets) and
// turns counts into rates. Events (replica failed, scaled, deployed, node
// lost) are what changed between two snapshots of the state. It leaves
// through HTTP: the page and /api/state (JSON), behind a login token.
package dashboard

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"
	"github.com/natserve/natserve/client"
	"github.com/natserve/natserve/internal/discovery"
	"github.com/natserve/natserve/internal/wire"
)

// Config configures a Dashboard.
type Config struct {
	// Conn is the NATS connection the dashboard reads through. Required.
	Conn *nats.Conn
	// Token is the login token; Handler refuses requests without it.
	// Required (NewToken makes one).
	Token string
	// Interval is how often the state and stats are polled. Default: 1s.
	Interval time.Duration
	// IdleAfter stops polling when nobody has read the state for this long,
	// so that an unwatched dashboard wakes no replica (each poll asks every
	// replica for its stats); the next read starts it again. Default: 1m.
	IdleAfter time.Duration
	// History is how long the charts reach back. Default: 5m.
	History time.Duration
	// Logger. Default: slog.Default().
	Logger *slog.Logger
}

// NewToken returns a random login token.
func NewToken() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// Dashboard polls the cluster and serves the page.
type Dashboard struct {
	cfg Config
	cl  *client.Client
	log *slog.Logger

	lastView atomic.Int64  // Unix nanoseconds of the last State read
	wake     chan struct{} // a read after an idle spell polls at once

	mu        sync.Mutex // guards everything below
	snap      Snapshot
	prev      map[string]*discovery.Latency // instance endpoint → its last stats
	lastPoll  time.Time
	series    map[string][]Point // deployment → history
	totals    map[string]*Totals // deployment → counts since the dashboard started
	events    []Event
	lastState *client.ClusterStatus
}

// Snapshot is what /api/state returns.
type Snapshot struct {
	Time        time.Time        `json:"time"`
	Leader      string           `json:"leader"`
	Error       string           `json:"error,omitempty"`
	Deployments []DeploymentView `json:"deployments"`
	Nodes       []client.Node    `json:"nodes"`
	Ingresses   int              `json:"ingresses"`
	Events      []Event          `json:"events"`
}

// DeploymentView is one deployment on the page.
type DeploymentView struct {
	Name        string                    `json:"name"`
	Class       string                    `json:"class"`
	Route       string                    `json:"route,omitempty"`
	Status      string                    `json:"status"`
	Message     string                    `json:"message,omitempty"`
	Ready       int                       `json:"ready"`
	Target      int                       `json:"target"`
	Autoscaling *client.AutoscalingStatus `json:"autoscaling,omitempty"`
	Replicas    []ReplicaView             `json:"replicas"`
	Totals      Totals                    `json:"totals"`
	Series      []Point                   `json:"series"`
}

// ReplicaView is one replica on the page.
type ReplicaView struct {
	client.Replica
	UptimeS float64 `json:"uptime_s"`
}

// Totals count requests since the dashboard started: Requests and Errors
// as the replicas processed them (HTTP and handle calls), HTTP as the
// ingresses answered them (every ingress added).
type Totals struct {
	Requests   uint64 `json:"requests"`
	Errors     uint64 `json:"errors"`
	HTTP       uint64 `json:"http"`
	HTTPErrors uint64 `json:"http_errors"`
}

// Point is one poll's rates and latency for a deployment.
type Point struct {
	T       int64   `json:"t"`        // Unix milliseconds
	RPS     float64 `json:"rps"`      // requests/s processed by its replicas
	ErrPS   float64 `json:"err_ps"`   // of which failed
	P50     float64 `json:"p50_ms"`   // processing time percentiles, ms
	P99     float64 `json:"p99_ms"`   //
	HTTPRPS float64 `json:"http_rps"` // HTTP requests/s at the ingresses
	HTTPP99 float64 `json:"http_p99_ms"`
}

// Event is something that happened, seen between two polls.
type Event struct {
	Time       time.Time `json:"time"`
	Kind       string    `json:"kind"` // deployed, updated, deleted, scaled, replica_failed, replica_started, status, node_lost, node_joined
	Deployment string    `json:"deployment,omitempty"`
	Message    string    `json:"message"`
}

const maxEvents = 200

// New returns a dashboard for cfg; it does no I/O.
func New(cfg Config) (*Dashboard, error) {
	if cfg.Conn == nil {
		return nil, errors.New("dashboard: a NATS connection is required")
	}
	if cfg.Token == "" {
		return nil, errors.New("dashboard: a login token is required")
	}
	if cfg.Interval == 0 {
		cfg.Interval = time.Second
	}
	if cfg.IdleAfter == 0 {
		cfg.IdleAfter = time.Minute
	}
	if cfg.History == 0 {
		cfg.History = 5 * time.Minute
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &Dashboard{
		cfg: cfg, cl: client.New(cfg.Conn, client.WithTimeout(5*time.Second)), log: cfg.Logger.With("component", "dashboard"),
		prev: map[string]*discovery.Latency{}, series: map[string][]Point{}, totals: map[string]*Totals{},
		wake: make(chan struct{}, 1),
	}, nil
}

// Run polls until ctx ends, while somebody reads the state (see
// Config.IdleAfter).
func (d *Dashboard) Run(ctx context.Context) error {
	defer d.cl.Close()
	t := time.NewTicker(d.cfg.Interval)
	defer t.Stop()
	for {
		if d.watched() {
			d.Poll(ctx)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		case <-d.wake:
		}
	}
}

// watched reports whether the state was read within IdleAfter.
func (d *Dashboard) watched() bool {
	return time.Since(time.Unix(0, d.lastView.Load())) < d.cfg.IdleAfter
}

// State returns the last snapshot. Reading it keeps the polling going; the
// first read after an idle spell wakes it at once.
func (d *Dashboard) State() Snapshot {
	if !d.watched() {
		select {
		case d.wake <- struct{}{}:
		default:
		}
	}
	d.lastView.Store(time.Now().UnixNano())
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.snap
}

// Poll reads the state and the stats once and updates the snapshot.
func (d *Dashboard) Poll(ctx context.Context) {
	now := time.Now()
	sctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	st, stErr := d.cl.Status(sctx)
	if stErr == nil { // Status leaves out the replicas; List has them
		var deps []client.Deployment
		if deps, stErr = d.cl.List(sctx); stErr == nil {
			st.Deployments = deps
		}
	}
	cancel()
	stats := d.gatherStats(ctx)

	d.mu.Lock()
	defer d.mu.Unlock()
	first := d.lastPoll.IsZero()
	dt := now.Sub(d.lastPoll).Seconds()
	// Per deployment: the deltas of every replica and ingress instance.
	type acc struct {
		rep, http           discovery.Latency
		repErrs, httpErrors uint64
	}
	accs := map[string]*acc{}
	get := func(dep string) *acc {
		a := accs[dep]
		if a == nil {
			a = &acc{}
			accs[dep] = a
		}
		return a
	}
	seen := map[string]bool{}
	classes := map[string]string{}
	ingresses := 0
	for _, s := range stats {
		isIngress := s.Name == wire.IngressService
		if isIngress {
			ingresses++
		} else if s.Name == wire.ControllerService || s.Metadata["class"] == "" {
			continue // not a deployment's replica
		} else {
			classes[s.Name] = s.Metadata["class"]
		}
		for _, e := range s.Endpoints {
			var lat discovery.Latency
			if len(e.Data) == 0 || wire.UnmarshalJSON(e.Data, &lat) != nil {
				continue
			}
			key := s.Name + "\x00" + s.ID + "\x00" + e.Name
			seen[key] = true
			prev, had := d.prev[key]
			d.prev[key] = &lat
			if first || (!had && s.Started.Before(d.lastPoll)) {
				continue // counted before the dashboard looked: a baseline
			}
			delta := lat.Sub(prev)
			errs := uint64(0)
			for _, n := range delta.Errors {
				errs += n
			}
			if isIngress {
				a := get(e.Name) // an ingress endpoint is named after its deployment
				a.http.Add(delta)
				a.httpErrors += errs
			} else {
				a := get(s.Name)
				a.rep.Add(delta)
				a.repErrs += errs
			}
		}
	}
	for k := range d.prev {
		if !seen[k] {
			delete(d.prev, k)
		}
	}
	d.lastPoll = now

	snap := Snapshot{Time: now, Ingresses: ingresses, Events: nil}
	if stErr != nil {
		snap.Error = "control API: " + stErr.Error()
		if d.lastState != nil {
			st = d.lastState // keep showing what was last known
		}
	} else {
		d.diff(now, d.lastState, st)
		d.lastState = st
	}
	names := map[string]bool{}
	var views []DeploymentView
	if st != nil {
		snap.Leader, snap.Nodes = st.Leader, st.Nodes
		for _, dep := range st.Deployments {
			names[dep.Spec.Name] = true
			route, _ := dep.Spec.Route()
			v := DeploymentView{Name: dep.Spec.Name, Class: dep.Spec.Class, Route: route, Status: dep.Status, Message: dep.Message,
				Ready: dep.Ready, Target: dep.Target, Autoscaling: dep.Autoscaling}
			for _, r := range dep.Replicas {
				rv := ReplicaView{Replica: r}
				if !r.Started.IsZero() {
					rv.UptimeS = now.Sub(r.Started).Seconds()
				}
				v.Replicas = append(v.Replicas, rv)
			}
			views = append(views, v)
		}
	}
	for name, class := range classes { // serving, though the control API does not list it (yet)
		if !names[name] {
			names[name] = true
			views = append(views, DeploymentView{Name: name, Class: class, Status: "UNKNOWN"})
		}
	}
	cutoff := now.Add(-d.cfg.History).UnixMilli()
	for i := range views {
		v := &views[i]
		tot := d.totals[v.Name]
		if tot == nil {
			tot = &Totals{}
			d.totals[v.Name] = tot
		}
		if a := accs[v.Name]; a != nil {
			tot.Requests += a.rep.Count
			tot.Errors += a.repErrs
			tot.HTTP += a.http.Count
			tot.HTTPErrors += a.httpErrors
		}
		v.Totals = *tot
		if !first && dt > 0 {
			p := Point{T: now.UnixMilli()}
			if a := accs[v.Name]; a != nil {
				p.RPS, p.ErrPS = float64(a.rep.Count)/dt, float64(a.repErrs)/dt
				p.P50, p.P99 = a.rep.Quantile(0.5)*1000, a.rep.Quantile(0.99)*1000
				p.HTTPRPS, p.HTTPP99 = float64(a.http.Count)/dt, a.http.Quantile(0.99)*1000
			}
			s := append(d.series[v.Name], p)
			for len(s) > 0 && s[0].T < cutoff {
				s = s[1:]
			}
			d.series[v.Name] = s
		}
		v.Series = append([]Point(nil), d.series[v.Name]...)
	}
	for name := range d.series {
		if !names[name] {
			delete(d.series, name)
			delete(d.totals, name)
		}
	}
	sortViews(views)
	snap.Deployments = views
	snap.Events = append([]Event(nil), d.events...)
	d.snap = snap
}

// gatherStats asks every service instance for its stats and collects the
// replies for a short while: until 300 ms pass, or 50 ms pass without one
// once some came.
func (d *Dashboard) gatherStats(ctx context.Context) []micro.Stats {
	nc := d.cfg.Conn
	inbox := nc.NewRespInbox()
	ch := make(chan *nats.Msg, 1024)
	sub, err := nc.ChanSubscribe(inbox, ch)
	if err != nil {
		return nil
	}
	defer func() { _ = sub.Unsubscribe() }()
	if err := nc.PublishRequest(wire.ServiceSubject(wire.SrvStats, "", ""), inbox, nil); err != nil {
		return nil
	}
	var out []micro.Stats
	deadline := time.NewTimer(300 * time.Millisecond)
	defer deadline.Stop()
	quiet := time.NewTimer(time.Hour)
	defer quiet.Stop()
	for {
		select {
		case m := <-ch:
			var s micro.Stats
			if wire.UnmarshalJSON(m.Data, &s) == nil && s.Type == micro.StatsResponseType {
				out = append(out, s)
			}
			quiet.Reset(50 * time.Millisecond)
		case <-quiet.C:
			return out
		case <-deadline.C:
			return out
		case <-ctx.Done():
			return out
		}
	}
}

// diff records the events between two states.
func (d *Dashboard) diff(now time.Time, old, cur *client.ClusterStatus) {
	if old == nil {
		return
	}
	add := func(kind, dep, format string, args ...any) {
		d.events = append(d.events, Event{Time: now, Kind: kind, Deployment: dep, Message: fmt.Sprintf(format, args...)})
		if len(d.events) > maxEvents {
			d.events = d.events[len(d.events)-maxEvents:]
		}
	}
	was := map[string]client.Deployment{}
	for _, x := range old.Deployments {
		was[x.Spec.Name] = x
	}
	for _, x := range cur.Deployments {
		name := x.Spec.Name
		o, ok := was[name]
		delete(was, name)
		if !ok {
			add("deployed", name, "deployment %s deployed: class %s, %d replica(s)", name, x.Spec.Class, x.Target)
			continue
		}
		if o.Spec.Version != x.Spec.Version || string(o.Spec.InitArgs) != string(x.Spec.InitArgs) || string(o.Spec.UserConfig) != string(x.Spec.UserConfig) {
			add("updated", name, "deployment %s updated (version %q)", name, x.Spec.Version)
		}
		if o.Target != x.Target {
			why := ""
			if x.Autoscaling != nil && x.Autoscaling.LastDecision != "" {
				why = ": " + x.Autoscaling.LastDecision
			}
			add("scaled", name, "deployment %s scaled %d → %d%s", name, o.Target, x.Target, why)
		}
		if o.Status != x.Status {
			add("status", name, "deployment %s is %s%s", name, x.Status, suffix(x.Message))
		}
		oldReps := map[string]client.Replica{}
		for _, r := range o.Replicas {
			oldReps[r.ID] = r
		}
		for _, r := range x.Replicas {
			or, had := oldReps[r.ID]
			switch {
			case r.State == client.ReplicaFailed && (!had || or.State != client.ReplicaFailed):
				add("replica_failed", name, "replica %s of %s failed on %s%s", r.ID, name, r.Node, suffix(r.Error))
			case r.State == client.ReplicaRunning && (!had || or.State != client.ReplicaRunning):
				add("replica_started", name, "replica %s of %s running on %s (pid %d)", r.ID, name, r.Node, r.PID)
			}
		}
	}
	for name := range was {
		add("deleted", name, "deployment %s deleted", name)
	}
	oldNodes := map[string]bool{}
	for _, n := range old.Nodes {
		oldNodes[n.Name] = n.Alive
	}
	for _, n := range cur.Nodes {
		alive, had := oldNodes[n.Name]
		switch {
		case n.Alive && (!had || !alive):
			add("node_joined", "", "node %s joined (%s)", n.Name, n.Host)
		case !n.Alive && had && alive:
			add("node_lost", "", "node %s stopped heartbeating", n.Name)
		}
	}
}

func suffix(s string) string {
	if s == "" {
		return ""
	}
	return ": " + s
}
