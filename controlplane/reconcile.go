package controlplane

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"
	"github.com/natserve/natserve/client"
	"github.com/natserve/natserve/internal/auth"
	"github.com/natserve/natserve/internal/store"
	"github.com/natserve/natserve/internal/wire"
)

func (s *state) storeDep(name string, d depState) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.dep[name] = &d
}

// hashes returns the code hash (what needs a restart to change) and the
// config hash (user_config, applied in place) of a spec.
func hashes(spec *client.DeploymentSpec) (code, cfg string) {
	compact := func(b json.RawMessage) string {
		var buf bytes.Buffer
		if len(b) == 0 || json.Compact(&buf, b) != nil {
			return string(b)
		}
		return buf.String()
	}
	key := fmt.Sprintf("%s\x00%s\x00%s\x00%d\x00%g", spec.Class, compact(spec.InitArgs), spec.Version, spec.MaxOngoingRequests, spec.GracefulShutdownTimeoutS)
	if len(spec.IdempotentMethods) > 0 { // replicas learn it at start; absent, the hash stays as it was
		key += "\x00" + strings.Join(spec.IdempotentMethods, ",")
	}
	h := sha256.Sum256([]byte(key))
	var batching []byte
	if len(spec.Batching) > 0 {
		batching, _ = json.Marshal(spec.Batching) // map keys sorted: stable
	}
	c := sha256.Sum256([]byte(compact(spec.UserConfig) + "\x00" + string(batching)))
	return hex.EncodeToString(h[:6]), hex.EncodeToString(c[:6])
}

// rolloutSize is how many replicas a rolling update replaces at once:
// max(1, 20% of the target), as in Ray Serve.
func rolloutSize(target int) int { return max(1, target/5) }

type view struct {
	a     store.Assignment
	rev   uint64
	st    store.ReplicaState
	hasSt bool
	ready bool
}

// reconcile runs one pass of the control loop over what changed since the
// last one (every deployment when full): deleted deployments are drained,
// the others brought to their spec, and replica states left by dropped
// assignments are cleaned up.
func (c *Controller) reconcile(ctx context.Context, st *state, names, reps []string, full bool) {
	alive := st.alive(c.cfg.NodeTimeout)
	if full {
		names = append(st.deps.keys(), st.ch.assignedDeps()...)
		reps = st.reps.keys()
	}
	slices.Sort(names)
	names = slices.Compact(names)
	// Load per node, for placement.
	load := st.ch.load()
	var present []string
	for _, name := range names {
		if _, _, ok := st.deps.get(name); ok {
			present = append(present, name)
			continue
		}
		var drop []view
		for _, v := range c.views(st, name) { // deleted deployment: drain what is left
			if c.retire(ctx, st, v, alive) {
				drop = append(drop, v)
			}
		}
		// A stopped replica's identity is revoked before its assignment
		// goes (if revoking fails, the next pass tries again).
		if c.revokeIdentities(ctx, drop) {
			for _, v := range drop {
				c.dropAssignment(ctx, st, v)
			}
		}
		st.mu.Lock()
		delete(st.dep, name)
		st.mu.Unlock()
		st.ch.forget(name)
		st.mv.end(name)
	}
	for _, name := range present {
		spec, rev, ok := st.deps.get(name)
		if !ok {
			continue
		}
		if !c.reconcileOne(ctx, st, &spec, rev, c.views(st, name), alive, load) {
			st.ch.mark(name) // not settled: look again at the next pass
		}
	}
	c.creating.Wait() // this pass's new assignments are stored (or failed)
	st.ch.countPass(full, len(present))
	c.syncRoutes(ctx, st)
	// Forget what is gone.
	for _, key := range reps {
		r, rev, ok := st.reps.get(key)
		if !ok || r.State != client.ReplicaStopped && r.State != client.ReplicaFailed {
			continue
		}
		// The key (<node>.<replica>), not the record, names the node: only
		// that node's agent may write under it.
		if _, _, ok := st.asgs.get(key); !ok {
			c.deleteKey(ctx, st.reps, c.kv.Replicas, key, rev)
		}
	}
	if full {
		st.metrics.forget(st.ch.live)
	}
}

// views returns a deployment's assignments, with their replicas' states,
// sorted by key.
func (c *Controller) views(st *state, name string) []view {
	keys := st.ch.assigned(name)
	vs := make([]view, 0, len(keys))
	for _, k := range keys {
		a, rev, ok := st.asgs.get(k)
		if !ok {
			continue
		}
		rs, _, ok := st.reps.get(wire.ReplicaKey(a.Node, a.Replica))
		vs = append(vs, view{a: a, rev: rev, st: rs, hasSt: ok})
	}
	return vs
}

// retire moves an assignment of a deleted deployment towards its end; it
// reports whether the assignment is to be dropped (its replica is gone).
func (c *Controller) retire(ctx context.Context, st *state, v view, alive map[string]store.Node) (drop bool) {
	_, nodeUp := alive[v.a.Node]
	switch {
	case !nodeUp, v.hasSt && (v.st.State == client.ReplicaStopped || v.st.State == client.ReplicaFailed):
		return true
	case v.a.Desired == store.DesiredRun:
		c.setDesired(ctx, st, v, store.DesiredStop)
	case !v.hasSt:
		return true
	}
	return false
}

// revokeIdentities revokes the NATS identities of vs's replicas (with
// Config.Revoke); it reports false if that failed.
func (c *Controller) revokeIdentities(ctx context.Context, vs []view) bool {
	if c.cfg.Revoke == nil || len(vs) == 0 {
		return true
	}
	var users []string
	for _, v := range vs {
		if v.a.Creds == "" {
			continue
		}
		u, err := auth.CredsUser(v.a.Creds)
		if err != nil {
			c.log.Warn("an assignment's replica identity is unreadable", "replica", v.a.Replica, "err", err)
			continue
		}
		users = append(users, u)
	}
	if len(users) == 0 {
		return true
	}
	if err := c.cfg.Revoke(ctx, users); err != nil {
		c.log.Error("revoking replica identities failed", "deployment", vs[0].a.Deployment, "identities", len(users), "err", err)
		return false
	}
	c.log.Info("replica identities revoked", "deployment", vs[0].a.Deployment, "identities", len(users))
	return true
}

// reconcileOne brings one deployment towards its spec; it reports whether
// the deployment is settled (HEALTHY, not autoscaled, every replica on a
// live node): only then does it wait for a change before its next pass.
func (c *Controller) reconcileOne(ctx context.Context, st *state, spec *client.DeploymentSpec, specRev uint64, vs []view, alive map[string]store.Node, load map[string]int) (settled bool) {
	p := &depPass{c: c, ctx: ctx, st: st, spec: spec, alive: alive, load: load, now: time.Now()}
	p.code, p.cfg = st.ch.specHashes(spec.Name, specRev, spec)
	p.ds = st.snapshot(spec.Name)
	p.ds.specRev = specRev
	if p.ds.failHash != p.code {
		p.ds.failHash, p.ds.failures, p.ds.lastErr = p.code, 0, ""
	}
	cur, old := p.sortReplicas(vs)
	cur, surge, moving := p.takeSurge(cur)
	target, readyCur := p.target(cur)
	limit := min(max(target, 1)*3, spec.MaxConstructorRetryCount)
	failed := p.ds.failures >= limit && readyCur == 0
	autoscaling := spec.Autoscaled() && p.ds.decision.Want != p.ds.autoTarget
	if moving {
		cur = p.finishMove(cur, surge, target, readyCur, len(old) == 0 && !failed && !autoscaling)
		readyCur = 0
		for _, v := range cur {
			if v.ready {
				readyCur++
			}
		}
	}

	cur = p.scaleDown(cur, target)
	placeMsg := ""
	if !failed {
		placeMsg = p.scaleUp(cur, old, target, readyCur)
	}
	p.retireOld(old, target, readyCur, failed)
	cfgCurrent := p.reconfigure(cur)
	p.setStatus(specRev, limit, failed, target, readyCur, len(cur), len(old), cfgCurrent, placeMsg)
	p.maybeMove(cur, len(old) > 0, autoscaling)
	st.storeDep(spec.Name, p.ds)
	return p.ds.status == client.StatusHealthy && !spec.Autoscaled() && !p.orphans && p.ds.moveReplica == ""
}

// depPass is one reconcile pass over one deployment: what the steps of
// reconcileOne share.
type depPass struct {
	c     *Controller
	ctx   context.Context
	st    *state
	spec  *client.DeploymentSpec
	alive map[string]store.Node
	load  map[string]int // replicas per node, kept current as the pass acts
	now   time.Time
	code  string   // the spec's code hash
	cfg   string   // the spec's config hash
	ds    depState // stored at the end of the pass

	orphans bool // a replica is on a node that stopped heartbeating
}

// sortReplicas drops the assignments whose replica ended or whose node is
// lost (counting constructor failures and crashes), and splits the rest
// that should run into the current version's and older ones.
func (p *depPass) sortReplicas(vs []view) (cur, old []view) {
	c, spec := p.c, p.spec
	for _, v := range vs {
		_, nodeUp := p.alive[v.a.Node]
		if !nodeUp {
			p.orphans = true
		}
		switch {
		case v.hasSt && (v.st.State == client.ReplicaStopped || v.st.State == client.ReplicaFailed):
			if v.a.Desired == store.DesiredRun && v.st.State == client.ReplicaFailed {
				p.countFailure(v)
			}
			c.dropAssignment(p.ctx, p.st, v)
			p.load[v.a.Node]--
			continue
		case !nodeUp && v.a.Desired == store.DesiredRun && p.st.answering(v.a.Replica, c.cfg.NodeTimeout):
			// The node agent is gone but the replica answers: it keeps
			// serving, counted as it is, until its agent returns or it stops answering.
		case !nodeUp:
			c.m.restarted(spec.Name, "node_lost")
			c.log.Warn("node lost; replacing its replica", "deployment", spec.Name, "replica", v.a.Replica, "node", v.a.Node)
			c.publishExit(v.a.Replica, spec.Name, v.a.Node, "node lost")
			c.dropAssignment(p.ctx, p.st, v)
			if v.a.Desired == store.DesiredRun {
				p.load[v.a.Node]--
			}
			continue
		case v.a.Desired != store.DesiredRun:
			if !v.hasSt {
				c.dropAssignment(p.ctx, p.st, v)
			}
			continue
		}
		if nodeUp {
			p.st.clearOrphan(v.a.Replica)
		}
		v.ready = v.hasSt && v.st.State == client.ReplicaRunning && p.st.healthy(v.a.Replica)
		if v.a.CodeHash == p.code {
			cur = append(cur, v)
		} else {
			old = append(old, v)
		}
	}
	return cur, old
}

// countFailure records a replica that failed while it should run.
func (p *depPass) countFailure(v view) {
	if (v.st.ExitCode == wire.ExitConstructor || v.st.EarlyExit) && v.a.CodeHash == p.code {
		// Whatever ends a replica before it serves (constructor,
		// exec failure, bad spec, crash, no answer) counts: retrying
		// the same spec backs off and ends in DEPLOY_FAILED.
		p.ds.failures++
		p.ds.lastErr = v.st.Error
		p.ds.nextStart = p.now.Add(min(time.Duration(p.ds.failures)*250*time.Millisecond, 5*time.Second))
		p.c.log.Warn("replica failed before serving", "deployment", p.spec.Name, "replica", v.a.Replica, "failures", p.ds.failures, "exit_code", v.st.ExitCode, "err", v.st.Error)
		return
	}
	p.ds.lastCrash = v.st.Error
	p.c.m.restarted(p.spec.Name, "crashed")
	p.c.log.Warn("replica died; replacing it", "deployment", p.spec.Name, "replica", v.a.Replica, "pid", v.st.PID, "err", v.st.Error)
}

// target is the replica count wanted (the autoscaler's when on) and how
// many current replicas are ready.
func (p *depPass) target(cur []view) (target, readyCur int) {
	target = p.spec.NumReplicas
	if p.spec.Autoscaled() {
		running := map[string]bool{}
		for _, v := range cur {
			if v.ready {
				running[v.a.Replica] = true
			}
		}
		target = p.c.autoscaleTarget(p.st, p.spec, &p.ds, running)
	}
	for _, v := range cur {
		if v.ready {
			readyCur++
		}
	}
	return target, readyCur
}

// scaleDown stops the current replicas beyond target and returns those
// that stay.
func (p *depPass) scaleDown(cur []view, target int) []view {
	if len(cur) <= target {
		return cur
	}
	sortForStop(cur, p.load)
	for _, v := range cur[:len(cur)-target] {
		p.c.setDesired(p.ctx, p.st, v, store.DesiredStop)
		p.load[v.a.Node]--
	}
	return cur[len(cur)-target:]
}

// scaleUp starts the current replicas missing, a rollout step at a time
// while old ones serve, once the constructor backoff allows; it returns
// why some could not be placed ("" if none).
func (p *depPass) scaleUp(cur, old []view, target, readyCur int) string {
	if len(cur) >= target || p.now.Before(p.ds.nextStart) {
		return ""
	}
	spec := p.spec
	n := target - len(cur)
	if len(old) > 0 {
		starting := len(cur) - readyCur
		n = min(n, max(rolloutSize(target)-starting, 0))
	}
	for i := 0; i < n; i++ {
		node, full := place(spec.Class, spec.Name, p.alive, p.load, p.st)
		if node == "" {
			if full > 0 {
				return fmt.Sprintf("%d replicas pending: every live node that provides class %s is at its replica cap (%d nodes full; raise -max-replicas-per-node or add nodes)", n-i, spec.Class, full)
			}
			return fmt.Sprintf("waiting for a live node that provides class %s", spec.Class)
		}
		p.c.createAssignment(p.ctx, p.st, spec, node, p.code, p.cfg)
		p.load[node]++
	}
	return ""
}

// retireOld keeps only as many old-version replicas as the ready current
// ones leave missing (all of them when the new version failed).
func (p *depPass) retireOld(old []view, target, readyCur int, failed bool) {
	keepOld := max(0, target-readyCur)
	if failed {
		keepOld = len(old)
	}
	if len(old) <= keepOld {
		return
	}
	sortForStop(old, p.load)
	for _, v := range old[:len(old)-keepOld] {
		p.c.setDesired(p.ctx, p.st, v, store.DesiredStop)
		p.load[v.a.Node]--
	}
}

// reconfigure sends a changed user_config to the ready current replicas
// in place; it reports whether every current replica has it.
func (p *depPass) reconfigure(cur []view) (cfgCurrent bool) {
	cfgCurrent = true
	for _, v := range cur {
		if v.a.ConfigHash != p.cfg {
			cfgCurrent = false
			if v.ready {
				p.c.reconfigure(p.ctx, p.st, v, p.spec, p.cfg)
			}
		}
	}
	return cfgCurrent
}

// setStatus sets the deployment's status and message from the pass.
func (p *depPass) setStatus(specRev uint64, limit int, failed bool, target, readyCur, nCur, nOld int, cfgCurrent bool, placeMsg string) {
	ds := &p.ds
	ds.ready = readyCur
	switch {
	case failed:
		ds.status = client.StatusDeployFailed
		ds.message = fmt.Sprintf("replica constructor failed %d times (limit %d); last error: %s", ds.failures, limit, ds.lastErr)
	case readyCur == target && nCur == target && nOld == 0 && cfgCurrent:
		ds.status, ds.message, ds.healthyRev = client.StatusHealthy, "", specRev
	case ds.healthyRev == specRev && ds.healthyRev != 0:
		ds.status = client.StatusUnhealthy
		ds.message = fmt.Sprintf("%d of %d replicas ready", readyCur, target)
		if ds.lastCrash != "" {
			ds.message += "; last replica failure: " + ds.lastCrash
		}
	default:
		ds.status = client.StatusUpdating
		ds.message = fmt.Sprintf("%d of %d replicas ready", readyCur, target)
		if nOld > 0 {
			ds.message += fmt.Sprintf(", %d of the previous version still serving", nOld)
		}
		if ds.lastErr != "" {
			ds.message += fmt.Sprintf("; constructor failed %d times: %s", ds.failures, ds.lastErr)
		}
	}
	if placeMsg != "" {
		ds.message += "; " + placeMsg
	}
}

// sortForStop orders replicas so that the best to stop come first: not
// ready, then on the busiest node, then the newest.
func sortForStop(vs []view, load map[string]int) {
	sort.SliceStable(vs, func(i, j int) bool {
		a, b := vs[i], vs[j]
		if a.ready != b.ready {
			return !a.ready
		}
		if load[a.a.Node] != load[b.a.Node] {
			return load[a.a.Node] > load[b.a.Node]
		}
		return a.a.Created.After(b.a.Created)
	})
}

// place picks the live node that provides class, is below its replica cap
// and runs the fewest replicas of the deployment, then the fewest in all.
// With no such node it returns "" and how many providing nodes are full.
func place(class, deployment string, alive map[string]store.Node, load map[string]int, st *state) (best string, full int) {
	perDep := map[string]int{}
	for _, k := range st.ch.assigned(deployment) {
		if a, _, ok := st.asgs.get(k); ok && a.Desired == store.DesiredRun {
			perDep[a.Node]++
		}
	}
	st.creates.count(deployment, perDep)
	for name, n := range alive {
		if !slices.Contains(n.Classes, class) {
			continue
		}
		if !hasRoom(st, name, n) {
			full++
			continue
		}
		if best == "" || perDep[name] < perDep[best] ||
			perDep[name] == perDep[best] && (load[name] < load[best] || load[name] == load[best] && name < best) {
			best = name
		}
	}
	if best != "" {
		full = 0
	}
	return best, full
}

// hasRoom reports whether node name (n) is below its replica cap: every
// assignment is a process until dropped, the ones being written included.
func hasRoom(st *state, name string, n store.Node) bool {
	return n.MaxReplicas <= 0 || st.ch.nodeProcs(name)+st.creates.onNode(name) < n.MaxReplicas
}

// createAssignment writes a new assignment of spec on node (in the
// background: the pass waits for it before it ends) and returns its
// replica's name, "" if none could be made.
func (c *Controller) createAssignment(ctx context.Context, st *state, spec *client.DeploymentSpec, node, code, cfg string) string {
	a := store.Assignment{
		Replica: strings.ToLower(nuid.Next()), Node: node, Deployment: spec.Name, Class: spec.Class,
		InitArgs: spec.InitArgs, UserConfig: spec.UserConfig, Batching: spec.Batching, Version: spec.Version, CodeHash: code, ConfigHash: cfg,
		MaxOngoingRequests: spec.MaxOngoingRequests, GracefulShutdownTimeoutS: spec.GracefulShutdownTimeoutS,
		IdempotentMethods: spec.IdempotentMethods,
		Desired:           store.DesiredRun, Created: time.Now(),
	}
	if c.cfg.Signer != nil {
		var err error
		if a.Creds, err = c.cfg.Signer.Replica(spec.Name); err != nil {
			c.log.Error("minting the replica identity failed", "deployment", spec.Name, "err", err)
			return ""
		}
	}
	// The write is one broker round trip: a pass that starts a thousand
	// deployments writes createParallel at a time instead of one by one
	// (reconcile waits for them before the pass ends).
	c.createSlots <- struct{}{}
	c.creating.Add(1)
	st.creates.add(a.Deployment, node, 1)
	go func() {
		defer c.creating.Done()
		defer func() { <-c.createSlots }()
		rev, err := store.Update(ctx, c.kv.Assignments, a.Key(), a, 0)
		defer st.creates.add(a.Deployment, node, -1) // after the put: counted twice for a moment, never missed
		if err != nil {
			c.log.Warn("creating an assignment failed", "deployment", a.Deployment, "node", node, "err", err)
			return
		}
		st.asgs.put(a.Key(), rev, a)
		c.m.started(a.Deployment)
		c.log.Info("replica assigned", "deployment", a.Deployment, "replica", a.Replica, "node", node)
	}()
	return a.Replica
}

func (c *Controller) setDesired(ctx context.Context, st *state, v view, desired string) {
	if v.a.Desired == desired {
		return
	}
	a := v.a
	a.Desired = desired
	rev, err := store.Update(ctx, c.kv.Assignments, a.Key(), a, v.rev)
	if err != nil {
		c.log.Warn("updating an assignment failed", "replica", a.Replica, "desired", desired, "err", err)
		return
	}
	st.asgs.put(a.Key(), rev, a)
	c.log.Info("replica "+desired, "deployment", a.Deployment, "replica", a.Replica, "node", a.Node)
}

func (c *Controller) dropAssignment(ctx context.Context, st *state, v view) {
	c.deleteKey(ctx, st.asgs, c.kv.Assignments, v.a.Key(), v.rev)
	if _, rev, ok := st.reps.get(wire.ReplicaKey(v.a.Node, v.a.Replica)); ok {
		c.deleteKey(ctx, st.reps, c.kv.Replicas, wire.ReplicaKey(v.a.Node, v.a.Replica), rev)
	}
	st.forgetHealth(v.a.Replica)
}

func (c *Controller) deleteKey(ctx context.Context, t interface{ del(string, uint64) }, kv jetstream.KeyValue, key string, rev uint64) {
	if err := kv.Delete(ctx, key, jetstream.LastRevision(rev)); err != nil {
		c.log.Debug("deleting a key failed", "bucket", kv.Bucket(), "key", key, "err", err)
		return
	}
	t.del(key, rev)
}

// inflight counts the assignments a pass is still writing, per node and per
// deployment and node, so that placement (node caps, spreading) sees them
// before they are in the assignments table.
type inflight struct {
	mu    sync.Mutex
	node  map[string]int
	byDep map[string]map[string]int // deployment → node → writes
}

func (f *inflight) add(dep, node string, d int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.node == nil {
		f.node, f.byDep = map[string]int{}, map[string]map[string]int{}
	}
	f.node[node] += d
	if f.node[node] == 0 {
		delete(f.node, node)
	}
	m := f.byDep[dep]
	if m == nil {
		m = map[string]int{}
		f.byDep[dep] = m
	}
	m[node] += d
	if m[node] == 0 {
		delete(m, node)
	}
	if len(m) == 0 {
		delete(f.byDep, dep)
	}
}

func (f *inflight) onNode(node string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.node[node]
}

// count adds a deployment's writes in flight to perDep (node → count).
func (f *inflight) count(dep string, perDep map[string]int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for n, k := range f.byDep[dep] {
		perDep[n] += k
	}
}
