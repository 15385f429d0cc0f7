package controlplane

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"
	"github.com/natserve/natserve/client"
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
	h := sha256.Sum256([]byte(fmt.Sprintf("%s\x00%s\x00%s\x00%d\x00%g", spec.Class, compact(spec.InitArgs), spec.Version, spec.MaxOngoingRequests, spec.GracefulShutdownTimeoutS)))
	c := sha256.Sum256([]byte(compact(spec.UserConfig)))
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

// reconcile runs one pass of the control loop.
func (c *Controller) reconcile(ctx context.Context, st *state) {
	alive := st.alive(c.cfg.NodeTimeout)
	specs := map[string]client.DeploymentSpec{}
	specRevs := map[string]uint64{}
	for _, d := range st.deps.all() {
		specs[d.key], specRevs[d.key] = d.val, d.rev
	}
	byDep := map[string][]view{}
	for _, a := range st.asgs.all() {
		rs, _, ok := st.reps.get(a.val.Replica)
		byDep[a.val.Deployment] = append(byDep[a.val.Deployment], view{a: a.val, rev: a.rev, st: rs, hasSt: ok})
	}
	// Load per node, for placement.
	load := map[string]int{}
	for _, vs := range byDep {
		for _, v := range vs {
			if v.a.Desired == store.DesiredRun {
				load[v.a.Node]++
			}
		}
	}
	for name, vs := range byDep {
		if _, ok := specs[name]; !ok { // deleted deployment: drain what is left
			for _, v := range vs {
				c.retire(ctx, st, v, alive)
			}
		}
	}
	names := make([]string, 0, len(specs))
	for n := range specs {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, name := range names {
		spec := specs[name]
		c.reconcileOne(ctx, st, &spec, specRevs[name], byDep[name], alive, load)
	}
	// Forget what is gone.
	live := map[string]bool{}
	for _, a := range st.asgs.all() {
		live[a.val.Replica] = true
	}
	st.metrics.forget(live)
	for _, r := range st.reps.all() {
		if _, _, ok := st.asgs.get(wire.AssignmentKey(r.val.Node, r.key)); !ok && (r.val.State == client.ReplicaStopped || r.val.State == client.ReplicaFailed) {
			c.deleteKey(ctx, st.reps, c.kv.Replicas, r.key, r.rev)
		}
	}
	st.mu.Lock()
	for name := range st.dep {
		if _, ok := specs[name]; !ok {
			delete(st.dep, name)
		}
	}
	st.mu.Unlock()
}

// retire moves an assignment of a deleted deployment towards its end.
func (c *Controller) retire(ctx context.Context, st *state, v view, alive map[string]store.Node) {
	_, nodeUp := alive[v.a.Node]
	switch {
	case !nodeUp, v.hasSt && (v.st.State == client.ReplicaStopped || v.st.State == client.ReplicaFailed):
		c.dropAssignment(ctx, st, v)
	case v.a.Desired == store.DesiredRun:
		c.setDesired(ctx, st, v, store.DesiredStop)
	case !v.hasSt:
		c.dropAssignment(ctx, st, v)
	}
}

func (c *Controller) reconcileOne(ctx context.Context, st *state, spec *client.DeploymentSpec, specRev uint64, vs []view, alive map[string]store.Node, load map[string]int) {
	now := time.Now()
	code, cfg := hashes(spec)
	ds := st.snapshot(spec.Name)
	ds.specRev = specRev
	if ds.failHash != code {
		ds.failHash, ds.failures, ds.lastErr = code, 0, ""
	}
	var cur, old []view
	for _, v := range vs {
		_, nodeUp := alive[v.a.Node]
		switch {
		case v.hasSt && (v.st.State == client.ReplicaStopped || v.st.State == client.ReplicaFailed):
			if v.a.Desired == store.DesiredRun && v.st.State == client.ReplicaFailed {
				if (v.st.ExitCode == wire.ExitConstructor || v.st.EarlyExit) && v.a.CodeHash == code {
					// Whatever ends a replica before it serves (constructor,
					// exec failure, bad spec, crash, no answer) counts: retrying
					// the same spec backs off and ends in DEPLOY_FAILED.
					ds.failures++
					ds.lastErr = v.st.Error
					ds.nextStart = now.Add(min(time.Duration(ds.failures)*250*time.Millisecond, 5*time.Second))
					c.log.Warn("replica failed before serving", "deployment", spec.Name, "replica", v.a.Replica, "failures", ds.failures, "exit_code", v.st.ExitCode, "err", v.st.Error)
				} else {
					ds.lastCrash = v.st.Error
					c.log.Warn("replica died; replacing it", "deployment", spec.Name, "replica", v.a.Replica, "pid", v.st.PID, "err", v.st.Error)
				}
			}
			c.dropAssignment(ctx, st, v)
			load[v.a.Node]--
			continue
		case !nodeUp && v.a.Desired == store.DesiredRun && st.answering(v.a.Replica, c.cfg.NodeTimeout):
			// The node agent is gone but the replica answers: it keeps
			// serving, counted as it is, until its agent returns or it stops answering.
		case !nodeUp:
			c.log.Warn("node lost; replacing its replica", "deployment", spec.Name, "replica", v.a.Replica, "node", v.a.Node)
			c.dropAssignment(ctx, st, v)
			if v.a.Desired == store.DesiredRun {
				load[v.a.Node]--
			}
			continue
		case v.a.Desired != store.DesiredRun:
			if !v.hasSt {
				c.dropAssignment(ctx, st, v)
			}
			continue
		}
		if nodeUp {
			st.clearOrphan(v.a.Replica)
		}
		v.ready = v.hasSt && v.st.State == client.ReplicaRunning && st.healthy(v.a.Replica)
		if v.a.CodeHash == code {
			cur = append(cur, v)
		} else {
			old = append(old, v)
		}
	}

	target := spec.NumReplicas
	if spec.Autoscaled() {
		running := map[string]bool{}
		for _, v := range cur {
			if v.ready {
				running[v.a.Replica] = true
			}
		}
		target = c.autoscaleTarget(st, spec, &ds, running)
	}
	readyCur := 0
	for _, v := range cur {
		if v.ready {
			readyCur++
		}
	}
	limit := min(max(target, 1)*3, spec.MaxConstructorRetryCount)
	failed := ds.failures >= limit && readyCur == 0
	placeMsg := ""

	// Too many current replicas (scale down): stop the extras.
	if len(cur) > target {
		sortForStop(cur, load)
		for _, v := range cur[:len(cur)-target] {
			c.setDesired(ctx, st, v, store.DesiredStop)
			load[v.a.Node]--
		}
		cur = cur[len(cur)-target:]
	}
	// Too few: start new ones, a rollout step at a time while old ones serve.
	if !failed && len(cur) < target && !now.Before(ds.nextStart) {
		n := target - len(cur)
		if len(old) > 0 {
			starting := len(cur) - readyCur
			n = min(n, max(rolloutSize(target)-starting, 0))
		}
		for i := 0; i < n; i++ {
			node, full := place(spec.Class, spec.Name, alive, load, st)
			if node == "" {
				placeMsg = fmt.Sprintf("waiting for a live node that provides class %s", spec.Class)
				if full > 0 {
					placeMsg = fmt.Sprintf("%d replicas pending: every live node that provides class %s is at its replica cap (%d nodes full; raise -max-replicas-per-node or add nodes)", n-i, spec.Class, full)
				}
				break
			}
			c.createAssignment(ctx, st, spec, node, code, cfg)
			load[node]++
		}
	}
	// Old versions: keep only as many as the ready current ones leave missing.
	keepOld := max(0, target-readyCur)
	if failed {
		keepOld = len(old)
	}
	if len(old) > keepOld {
		sortForStop(old, load)
		for _, v := range old[:len(old)-keepOld] {
			c.setDesired(ctx, st, v, store.DesiredStop)
			load[v.a.Node]--
		}
	}
	// user_config changes: reconfigure in place.
	cfgCurrent := true
	for _, v := range cur {
		if v.a.ConfigHash != cfg {
			cfgCurrent = false
			if v.ready {
				c.reconfigure(ctx, st, v, spec, cfg)
			}
		}
	}

	ds.ready = readyCur
	switch {
	case failed:
		ds.status = client.StatusDeployFailed
		ds.message = fmt.Sprintf("replica constructor failed %d times (limit %d); last error: %s", ds.failures, limit, ds.lastErr)
	case readyCur == target && len(cur) == target && len(old) == 0 && cfgCurrent:
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
		if len(old) > 0 {
			ds.message += fmt.Sprintf(", %d of the previous version still serving", len(old))
		}
		if ds.lastErr != "" {
			ds.message += fmt.Sprintf("; constructor failed %d times: %s", ds.failures, ds.lastErr)
		}
	}
	if placeMsg != "" {
		ds.message += "; " + placeMsg
	}
	st.storeDep(spec.Name, ds)
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
	procs := map[string]int{} // every assignment is a process until dropped
	for _, a := range st.asgs.all() {
		procs[a.val.Node]++
		if a.val.Deployment == deployment && a.val.Desired == store.DesiredRun {
			perDep[a.val.Node]++
		}
	}
	for name, n := range alive {
		provides := false
		for _, c := range n.Classes {
			if c == class {
				provides = true
				break
			}
		}
		if !provides {
			continue
		}
		if n.MaxReplicas > 0 && procs[name] >= n.MaxReplicas {
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

func (c *Controller) createAssignment(ctx context.Context, st *state, spec *client.DeploymentSpec, node, code, cfg string) {
	a := store.Assignment{
		Replica: strings.ToLower(nuid.Next()), Node: node, Deployment: spec.Name, Class: spec.Class,
		InitArgs: spec.InitArgs, UserConfig: spec.UserConfig, Version: spec.Version, CodeHash: code, ConfigHash: cfg,
		MaxOngoingRequests: spec.MaxOngoingRequests, GracefulShutdownTimeoutS: spec.GracefulShutdownTimeoutS,
		Desired: store.DesiredRun, Created: time.Now(),
	}
	rev, err := store.Update(ctx, c.kv.Assignments, a.Key(), a, 0)
	if err != nil {
		c.log.Warn("creating an assignment failed", "deployment", spec.Name, "node", node, "err", err)
		return
	}
	st.asgs.put(a.Key(), rev, a)
	c.log.Info("replica assigned", "deployment", spec.Name, "replica", a.Replica, "node", node)
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
	if _, rev, ok := st.reps.get(v.a.Replica); ok {
		c.deleteKey(ctx, st.reps, c.kv.Replicas, v.a.Replica, rev)
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
