package controlplane

import (
	"slices"
	"sync"
	"time"

	"github.com/natserve/natserve/client"
	"github.com/natserve/natserve/internal/store"
	"github.com/natserve/natserve/internal/wire"
)

// changes is what makes the control loop event-driven: the tables' change
// hooks record here which deployments need a pass (their spec, one of their
// assignments or a replica's state changed, a health check flipped, a node
// came or went), and keep the indexes a pass needs (a deployment's
// assignments, replicas per node) so that a pass over one deployment does
// not walk the whole cluster. A deployment whose pass leaves it anything
// but settled (not HEALTHY, autoscaled, a replica on a lost node) asks for
// the next pass itself; a periodic full pass is the safety net.
type changes struct {
	healthKick chan struct{} // cap 1: an assignment or a replica state changed

	mu     sync.Mutex                     // guards the fields below
	dirty  map[string]bool                // deployments to reconcile at the next pass
	reps   map[string]bool                // replica states to look at (clean-up)
	full   bool                           // a full pass is due
	byDep  map[string]map[string]struct{} // deployment → its assignment keys
	depOf  map[string]string              // replica → its deployment (assigned replicas)
	procs  map[string]int                 // node → assignments (each a process until dropped)
	run    map[string]int                 // node → assignments that should run
	hashes map[string]specHash            // deployment → its spec's hashes

	passes     uint64 // deployment passes run
	fullPasses uint64 // full passes run
	ticks      uint64 // control loop wake-ups

	due     map[string]time.Time // deployment → when to pass over it again without a change
	nextDue time.Time            // the earliest of due (zero: none)
}

// specHash caches hashes(spec) for one spec revision.
type specHash struct {
	rev       uint64
	code, cfg string
}

func newChanges() *changes {
	return &changes{
		healthKick: make(chan struct{}, 1), dirty: map[string]bool{}, reps: map[string]bool{},
		byDep: map[string]map[string]struct{}{}, depOf: map[string]string{},
		procs: map[string]int{}, run: map[string]int{}, hashes: map[string]specHash{}, due: map[string]time.Time{},
	}
}

// hook wires the tables of st to ch.
func (ch *changes) hook(st *state) {
	st.deps.onChange = func(name string, _, _ *client.DeploymentSpec) { ch.mark(name) }
	st.asgs.onChange = ch.assignment
	st.reps.onChange = ch.replica
	st.nodes.onChange = func(_ string, prev, next *store.Node) {
		if prev == nil || next == nil || !slices.Equal(prev.Classes, next.Classes) || prev.MaxReplicas != next.MaxReplicas {
			ch.markAll()
		}
	}
}

// mark asks for a pass over a deployment.
func (ch *changes) mark(name string) {
	ch.mu.Lock()
	ch.dirty[name] = true
	ch.mu.Unlock()
}

// markReplica asks for a pass over the deployment a replica is assigned to.
func (ch *changes) markReplica(replica string) {
	ch.mu.Lock()
	if d, ok := ch.depOf[replica]; ok {
		ch.dirty[d] = true
	}
	ch.mu.Unlock()
}

// wakeAt asks for a pass over a deployment at t even if nothing changes
// by then (a rebalancing move waiting for a settle time or a cooldown).
// Only the earliest wake-up is compared at each tick: idle, it costs one
// time comparison.
func (ch *changes) wakeAt(name string, t time.Time) {
	ch.mu.Lock()
	defer ch.mu.Unlock()
	if d, ok := ch.due[name]; ok && !t.Before(d) {
		return
	}
	ch.due[name] = t
	if ch.nextDue.IsZero() || t.Before(ch.nextDue) {
		ch.nextDue = t
	}
}

// wakeDue marks the deployments whose wake-up is due; ch.mu is held.
func (ch *changes) wakeDue(now time.Time) {
	if ch.nextDue.IsZero() || now.Before(ch.nextDue) {
		return
	}
	ch.nextDue = time.Time{}
	for name, t := range ch.due {
		if now.Before(t) {
			if ch.nextDue.IsZero() || t.Before(ch.nextDue) {
				ch.nextDue = t
			}
			continue
		}
		ch.dirty[name] = true
		delete(ch.due, name)
	}
}

// markAll asks for a full pass.
func (ch *changes) markAll() {
	ch.mu.Lock()
	ch.full = true
	ch.mu.Unlock()
}

func (ch *changes) assignment(key string, prev, next *store.Assignment) {
	ch.mu.Lock()
	defer ch.mu.Unlock()
	if prev != nil {
		if keys := ch.byDep[prev.Deployment]; keys != nil {
			delete(keys, key)
			if len(keys) == 0 {
				delete(ch.byDep, prev.Deployment)
			}
		}
		delete(ch.depOf, prev.Replica)
		ch.count(ch.procs, prev.Node, -1)
		if prev.Desired == store.DesiredRun {
			ch.count(ch.run, prev.Node, -1)
		}
		ch.dirty[prev.Deployment] = true
	}
	if next != nil {
		keys := ch.byDep[next.Deployment]
		if keys == nil {
			keys = map[string]struct{}{}
			ch.byDep[next.Deployment] = keys
		}
		keys[key] = struct{}{}
		ch.depOf[next.Replica] = next.Deployment
		ch.count(ch.procs, next.Node, 1)
		if next.Desired == store.DesiredRun {
			ch.count(ch.run, next.Node, 1)
		}
		ch.dirty[next.Deployment] = true
	}
	ch.signalHealth()
}

func (ch *changes) signalHealth() {
	select {
	case ch.healthKick <- struct{}{}:
	default:
	}
}

func (ch *changes) count(m map[string]int, node string, d int) {
	if m[node]+d == 0 {
		delete(m, node)
		return
	}
	m[node] += d
}

// replica sees a replica state change: a change of state (not a rewrite
// of the same one) concerns its deployment's pass; every change may leave
// a state to clean up.
func (ch *changes) replica(key string, prev, next *store.ReplicaState) {
	ch.mu.Lock()
	defer ch.mu.Unlock()
	ch.reps[key] = true
	if prev == nil || next == nil || prev.State != next.State || prev.PID != next.PID {
		_, replica, _ := wire.SplitAssignmentKey(key) // <node>.<replica>
		if d, ok := ch.depOf[replica]; ok {
			ch.dirty[d] = true
		}
	}
	ch.signalHealth()
}

// take returns the deployments and replica states to look at, and whether
// a full pass is due (then the caller looks at all of them).
func (ch *changes) take() (deps, reps []string, full bool) {
	ch.mu.Lock()
	defer ch.mu.Unlock()
	ch.ticks++
	ch.wakeDue(time.Now())
	full = ch.full
	if !full {
		for d := range ch.dirty {
			deps = append(deps, d)
		}
		for r := range ch.reps {
			reps = append(reps, r)
		}
	}
	clear(ch.dirty)
	clear(ch.reps)
	ch.full = false
	return deps, reps, full
}

// assigned returns the assignment keys of a deployment, sorted, and every
// deployment that has assignments.
func (ch *changes) assigned(name string) []string {
	ch.mu.Lock()
	defer ch.mu.Unlock()
	out := make([]string, 0, len(ch.byDep[name]))
	for k := range ch.byDep[name] {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

func (ch *changes) assignedDeps() []string {
	ch.mu.Lock()
	defer ch.mu.Unlock()
	out := make([]string, 0, len(ch.byDep))
	for d := range ch.byDep {
		out = append(out, d)
	}
	return out
}

// load returns the assignments that should run per node (a copy).
func (ch *changes) load() map[string]int {
	ch.mu.Lock()
	defer ch.mu.Unlock()
	out := make(map[string]int, len(ch.run))
	for n, c := range ch.run {
		out[n] = c
	}
	return out
}

// nodeProcs returns the assignments on a node.
func (ch *changes) nodeProcs(node string) int {
	ch.mu.Lock()
	defer ch.mu.Unlock()
	return ch.procs[node]
}

// live reports whether a replica is assigned.
func (ch *changes) live(replica string) bool {
	ch.mu.Lock()
	defer ch.mu.Unlock()
	_, ok := ch.depOf[replica]
	return ok
}

// specHashes returns hashes(spec) for the spec at rev, computing them once
// per revision.
func (ch *changes) specHashes(name string, rev uint64, spec *client.DeploymentSpec) (code, cfg string) {
	ch.mu.Lock()
	h, ok := ch.hashes[name]
	ch.mu.Unlock()
	if ok && h.rev == rev && rev != 0 {
		return h.code, h.cfg
	}
	code, cfg = hashes(spec)
	if rev != 0 {
		ch.mu.Lock()
		ch.hashes[name] = specHash{rev: rev, code: code, cfg: cfg}
		ch.mu.Unlock()
	}
	return code, cfg
}

func (ch *changes) forget(name string) {
	ch.mu.Lock()
	defer ch.mu.Unlock()
	delete(ch.hashes, name)
	delete(ch.due, name)
}

func (ch *changes) countPass(full bool, deps int) {
	ch.mu.Lock()
	defer ch.mu.Unlock()
	ch.passes += uint64(deps)
	if full {
		ch.fullPasses++
	}
}

// PassStats counts the control loop's work: wake-ups, deployment passes
// and full passes (for tests and benchmarks).
type PassStats struct {
	Ticks, Passes, FullPasses uint64
}

func (ch *changes) stats() PassStats {
	ch.mu.Lock()
	defer ch.mu.Unlock()
	return PassStats{Ticks: ch.ticks, Passes: ch.passes, FullPasses: ch.fullPasses}
}
