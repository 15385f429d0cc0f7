package controlplane

import (
	"container/heap"
	"context"
	"encoding/json"
	"errors"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/natserve/natserve/client"
	"github.com/natserve/natserve/internal/store"
	"github.com/natserve/natserve/internal/wire"
)

// UnhealthyThreshold is how many health checks in a row a replica may fail
// before it is killed and replaced (Ray Serve's
// REPLICA_HEALTH_CHECK_UNHEALTHY_THRESHOLD).
const UnhealthyThreshold = 3

type healthState struct {
	key      string // the replica's assignment
	fails    int
	next     time.Time
	inflight bool
	lastPong time.Time     // last successful ping
	orphan   time.Time     // when its node was first seen not heartbeating: pinged often since
	period   time.Duration // its deployment's health_check_period_s when last scheduled
}

// earlyBy is how much sooner than due a check may run, so that its node's
// batch (wire.HealthBatch) carries it along with one due now: a tenth of
// the period, at most a second. Checks of one node fall into step and a
// node gets about one batch a second instead of one per tick.
func earlyBy(period time.Duration) time.Duration { return min(period/10, time.Second) }

// healthItem is one replica in a batch.
type healthItem struct {
	key, deployment, replica string
	period                   time.Duration
}

// batchKey groups the checks that go to one node agent in one message.
type batchKey struct {
	node    string
	timeout time.Duration
}

// batchSlack is how long past the checks' timeout the controller waits for
// a node agent's answer before it pings those replicas itself.
const batchSlack = 2 * time.Second

// noBatchFor is how long the controller pings a node's replicas itself
// after a batch of that node went unanswered.
const noBatchFor = time.Minute

// maxBatch bounds the checks in one message: a ReplicaStatus answer is a
// few hundred bytes, well under the broker's 1 MB payload limit at 256.
const maxBatch = 256

// answering reports whether a replica answered a ping within d: a replica
// whose node agent died but that still answers keeps serving and is adopted
// when the agent returns, instead of being replaced.
func (s *state) answering(replica string, d time.Duration) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	h, ok := s.health[replica]
	if !ok {
		return false
	}
	if h.orphan.IsZero() {
		h.orphan = time.Now()
		h.next = time.Now() // ping now
		s.queueCheck(h, replica)
	}
	// Probing for a second decides; a recent answer keeps it.
	return time.Since(h.lastPong) < d || time.Since(h.orphan) < time.Second
}

// healthy reports whether a replica passed its last health check (or has
// not been checked yet).
func (s *state) healthy(replica string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	h, ok := s.health[replica]
	return !ok || h.fails == 0
}

func (s *state) forgetHealth(replica string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.health, replica)
}

// healthLoop pings every running replica each health_check_period_s; a
// replica that fails UnhealthyThreshold checks in a row (no answer within
// health_check_timeout_s, or its CheckHealth failed) is killed, and the
// control loop replaces it.
//
// It looks for replicas that started running when an assignment or a
// replica state changed (and every few seconds, as a safety net); in
// between, each tick only picks the checks that are due, so that its cost
// is the checks themselves.
//
// It sleeps until the earliest check due (queueCheck wakes it for an
// earlier one) or a change, at most once per tick: at 1,000 replicas
// checked every 10 s it wakes about twice a second per node (a batch out,
// its answer back) instead of 20 times.
func (c *Controller) healthLoop(ctx context.Context, st *state) {
	const tick = 50 * time.Millisecond
	t := time.NewTimer(tick)
	defer t.Stop()
	rescan := time.NewTicker(5 * time.Second)
	defer rescan.Stop()
	last := time.Now()
	type due struct{ key, replica string }
	var dues []due
	var back []dueEntry
	for {
		scan := false
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-st.healthWake:
		case <-st.ch.healthKick:
			scan = true
		case <-rescan.C:
			scan = true
		}
		if wait := tick - time.Since(last); wait > 0 { // a burst of changes: one pass per tick
			pause := time.NewTimer(wait)
			select {
			case <-ctx.Done():
				pause.Stop()
				return
			case <-pause.C:
			}
		}
		select {
		case <-st.ch.healthKick:
			scan = true
		default:
		}
		now := time.Now()
		last = now
		if scan {
			c.watchRunning(st, now)
		}
		var batches map[batchKey][]healthItem
		dues = dues[:0]
		st.mu.Lock()
		// The checks due now, from each node's queue: no walk over every
		// replica (1,000 replicas checked every 10 s were 20 walks a
		// second), one look at the head of each node's queue when none is
		// due. A node with a check due takes along those due within their
		// earlyBy; the others go back in its queue.
		for node, q := range st.healthQ {
			if len(*q) == 0 {
				delete(st.healthQ, node)
				continue
			}
			if (*q)[0].at.After(now) {
				continue
			}
			back = back[:0]
			for {
				replica, at, ok := q.pop(now.Add(time.Second))
				if !ok {
					break
				}
				h, ok := st.health[replica]
				if !ok || h.inflight || h.key == "" || !h.next.Equal(at) {
					continue // gone, running, or due at another time (queued again then)
				}
				if at.After(now) && (!h.orphan.IsZero() || at.Sub(now) > earlyBy(h.period)) {
					back = append(back, dueEntry{at, replica}) // not yet
					continue
				}
				dues = append(dues, due{h.key, replica})
			}
			for _, e := range back {
				q.due(e.replica, e.at)
			}
		}
		next := time.Duration(-1) // until the earliest check due: none
		for _, q := range st.healthQ {
			if len(*q) > 0 {
				if d := (*q)[0].at.Sub(now); next < 0 || d < next {
					next = d
				}
			}
		}
		st.mu.Unlock()
		if next >= 0 {
			t.Reset(max(next, tick))
		} else {
			t.Stop()
		}
		later := func(replica string) { // not checkable now: look again at the next tick
			st.mu.Lock()
			if h, ok := st.health[replica]; ok && !h.inflight {
				h.next = now.Add(tick)
				st.queueCheck(h, replica)
			}
			st.mu.Unlock()
		}
		for _, d := range dues {
			a, _, ok := st.asgs.get(d.key)
			if !ok || a.Desired != store.DesiredRun {
				later(d.replica)
				continue
			}
			rs, _, ok := st.reps.get(wire.ReplicaKey(a.Node, d.replica))
			if !ok || rs.State != client.ReplicaRunning {
				later(d.replica)
				continue
			}
			spec, _, ok := st.deps.get(a.Deployment)
			if !ok {
				later(d.replica)
				continue
			}
			period := time.Duration(spec.HealthCheckPeriodS * float64(time.Second))
			timeout := time.Duration(spec.HealthCheckTimeoutS * float64(time.Second))
			st.mu.Lock()
			h, ok := st.health[d.replica]
			if ok && !h.orphan.IsZero() {
				period, timeout = min(period, 300*time.Millisecond), min(timeout, 300*time.Millisecond)
			}
			start := ok && !h.inflight && !now.Add(earlyBy(period)).Before(h.next)
			// Its node agent is gone, or did not answer a batch lately: ask the replica.
			direct := ok && (!h.orphan.IsZero() || now.Before(st.noBatch[a.Node]))
			if start {
				h.inflight = true
			}
			st.mu.Unlock()
			if !start {
				continue
			}
			if direct {
				st.spawn(func() { c.check(ctx, st, d.key, a.Deployment, d.replica, period, timeout) })
				continue
			}
			if batches == nil {
				batches = map[batchKey][]healthItem{}
			}
			k := batchKey{a.Node, timeout}
			batches[k] = append(batches[k], healthItem{d.key, a.Deployment, d.replica, period})
		}
		for k, items := range batches {
			for len(items) > 0 { // at most maxBatch a message (the answer's size)
				n := min(len(items), maxBatch)
				part := items[:n:n]
				items = items[n:]
				st.spawn(func() { c.checkBatch(ctx, st, k.node, k.timeout, part) })
			}
			delete(batches, k)
		}
	}
}

// checkBatch asks a node agent to check items in one message. Without an
// answer (no agent, credentials from before batching, or none within the
// timeout and batchSlack) it pings each replica itself.
func (c *Controller) checkBatch(ctx context.Context, st *state, node string, timeout time.Duration, items []healthItem) {
	start := time.Now()
	b := wire.HealthBatch{TimeoutUS: timeout.Microseconds(), Checks: make([]wire.HealthCheck, len(items))}
	for i, it := range items {
		b.Checks[i] = wire.HealthCheck{Deployment: it.deployment, Replica: it.replica}
	}
	body, _ := json.Marshal(b)
	rctx, cancel := context.WithTimeout(ctx, timeout+batchSlack)
	m, err := c.nc.RequestWithContext(rctx, wire.AgentSubject(node, wire.AgentVerbHealth), body)
	cancel()
	var res wire.HealthResults
	if err == nil {
		err = wire.UnmarshalJSON(m.Data, &res)
	}
	if ctx.Err() != nil {
		return
	}
	if err != nil {
		if !errors.Is(err, nats.ErrNoResponders) {
			c.log.Warn("node agent did not answer a health check; pinging its replicas", "node", node, "replicas", len(items), "err", err)
		}
		// Ping this node's replicas directly for a while: a check that
		// waited for a silent agent (or was refused by credentials from
		// before batching) is not delayed again each period.
		st.mu.Lock()
		st.noBatch[node] = time.Now().Add(noBatchFor)
		st.mu.Unlock()
		for _, it := range items {
			st.spawn(func() { c.check(ctx, st, it.key, it.deployment, it.replica, it.period, timeout) })
		}
		return
	}
	got := make(map[string]*wire.HealthResult, len(res.Results))
	for i := range res.Results {
		got[res.Results[i].Replica] = &res.Results[i]
	}
	for _, it := range items {
		reason := ""
		switch r := got[it.replica]; {
		case r == nil:
			reason = "health check: its node agent did not check it"
		case !r.Answered:
			reason = "health check: " + r.Error
		case !r.Healthy:
			reason = "check_health failed: " + r.Error
		}
		c.checked(ctx, st, it.key, it.replica, start, it.period, reason)
	}
}

// watchRunning starts health checking the running replicas not checked
// yet: their first check is one period after they are first seen.
func (c *Controller) watchRunning(st *state, now time.Time) {
	for _, key := range st.asgs.keys() {
		a, _, ok := st.asgs.get(key)
		if !ok || a.Desired != store.DesiredRun {
			continue
		}
		st.mu.Lock()
		_, known := st.health[a.Replica]
		st.mu.Unlock()
		if known {
			continue
		}
		rs, _, ok := st.reps.get(wire.ReplicaKey(a.Node, a.Replica))
		if !ok || rs.State != client.ReplicaRunning {
			continue
		}
		spec, _, ok := st.deps.get(a.Deployment)
		if !ok {
			continue
		}
		period := time.Duration(spec.HealthCheckPeriodS * float64(time.Second))
		st.mu.Lock()
		if _, ok := st.health[a.Replica]; !ok {
			h := &healthState{key: key, next: now.Add(period), period: period}
			st.health[a.Replica] = h
			st.queueCheck(h, a.Replica)
		}
		st.mu.Unlock()
	}
}

func (c *Controller) check(ctx context.Context, st *state, key, deployment, replica string, period, timeout time.Duration) {
	start := time.Now()
	pctx, cancel := context.WithTimeout(ctx, timeout)
	// The replica bounds its CheckHealth by the same budget.
	ping := &nats.Msg{Subject: wire.ReplicaSubject(deployment, replica, wire.VerbPing), Header: nats.Header{wire.HeaderTimeout: {wire.FormatTimeout(timeout)}}}
	m, err := c.nc.RequestMsgWithContext(pctx, ping)
	cancel()
	reason := ""
	if err != nil {
		reason = "health check: " + err.Error()
	} else {
		var rs wire.ReplicaStatus
		if jerr := wire.UnmarshalJSON(m.Data, &rs); jerr != nil {
			reason = "health check: bad reply: " + jerr.Error()
		} else if !rs.Healthy {
			reason = "check_health failed: " + rs.Error
		}
	}
	if ctx.Err() != nil {
		return
	}
	c.checked(ctx, st, key, replica, start, period, reason)
}

// checked records one check's result (reason is "" when it passed): the
// next check one period after this one started; a replica that failed
// UnhealthyThreshold in a row is killed.
func (c *Controller) checked(ctx context.Context, st *state, key, replica string, start time.Time, period time.Duration, reason string) {
	st.mu.Lock()
	h, ok := st.health[replica]
	if !ok {
		st.mu.Unlock()
		return
	}
	h.inflight = false
	h.next, h.period = start.Add(period), period
	st.queueCheck(h, replica)
	wasHealthy := h.fails == 0
	if reason == "" {
		h.fails = 0
		h.lastPong = time.Now()
	} else {
		h.fails++
	}
	fails := h.fails
	st.mu.Unlock()
	if wasHealthy != (fails == 0) { // its readiness changed: its deployment's pass
		st.ch.markReplica(replica)
	}
	if reason == "" {
		return
	}
	if a, _, ok := st.asgs.get(key); ok {
		c.m.healthFailed(a.Deployment)
	}
	c.log.Warn("replica failed a health check", "replica", replica, "fails", fails, "reason", reason)
	if fails < UnhealthyThreshold {
		return
	}
	a, rev, ok := st.asgs.get(key)
	if !ok || a.Desired != store.DesiredRun {
		return
	}
	c.m.restarted(a.Deployment, "unhealthy")
	c.log.Warn("replica unhealthy; killing it", "deployment", a.Deployment, "replica", replica)
	c.publishExit(a.Replica, a.Deployment, a.Node, "failed health checks")
	c.setDesired(ctx, st, view{a: a, rev: rev}, store.DesiredKill)
}

// reconfigure sends a new user_config to a running replica and records it in
// the assignment when the replica took it.
func (c *Controller) reconfigure(ctx context.Context, st *state, v view, spec *client.DeploymentSpec, cfg string) {
	st.mu.Lock()
	if st.busy[v.a.Replica] {
		st.mu.Unlock()
		return
	}
	st.busy[v.a.Replica] = true
	st.mu.Unlock()
	userConfig, batching := spec.UserConfig, spec.Batching
	timeout := time.Duration(spec.HealthCheckTimeoutS * float64(time.Second))
	st.spawn(func() {
		defer func() {
			st.mu.Lock()
			delete(st.busy, v.a.Replica)
			st.mu.Unlock()
		}()
		rctx, cancel := context.WithTimeout(ctx, timeout)
		req := nats.NewMsg(wire.ReplicaSubject(v.a.Deployment, v.a.Replica, wire.VerbReconfigure))
		req.Data = userConfig
		b, _ := json.Marshal(batching)
		req.Header.Set(wire.HeaderBatching, string(b)) // "null" when none: the values the class registered
		m, err := c.nc.RequestMsgWithContext(rctx, req)
		cancel()
		if err == nil && m.Header.Get(wire.HeaderCode) != "" {
			err = &client.Error{Code: m.Header.Get(wire.HeaderCode), Message: m.Header.Get(wire.HeaderError), Deployment: v.a.Deployment, Method: "Reconfigure"}
		}
		if err != nil {
			c.log.Warn("reconfigure failed", "deployment", v.a.Deployment, "replica", v.a.Replica, "err", err)
			return
		}
		a := v.a
		a.UserConfig, a.Batching, a.ConfigHash = userConfig, batching, cfg
		// The term's context: a controller that stepped down writes nothing.
		wctx, wcancel := context.WithTimeout(ctx, 5*time.Second)
		defer wcancel()
		rev, err := store.Update(wctx, c.kv.Assignments, a.Key(), a, v.rev)
		if err != nil {
			c.log.Warn("recording a reconfigure failed", "replica", a.Replica, "err", err)
			return
		}
		st.asgs.put(a.Key(), rev, a)
		c.log.Info("replica reconfigured", "deployment", a.Deployment, "replica", a.Replica)
	})
}

// clearOrphan forgets that a replica's node was lost (its agent is back).
func (s *state) clearOrphan(replica string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if h, ok := s.health[replica]; ok {
		h.orphan = time.Time{}
	}
}

// publishExit tells callers that the controller gave replica up, so that
// those holding a request it acknowledged fail it (or resend an idempotent
// one) at once instead of waiting for their deadline.
func (c *Controller) publishExit(replica, deployment, node, reason string) {
	b, _ := json.Marshal(wire.ReplicaExit{Replica: replica, Deployment: deployment, Node: node, Reason: reason})
	if err := c.nc.Publish(wire.ReplicaExitSubject(wire.ReplicaExitSenderController), b); err != nil {
		c.log.Warn("publishing a replica exit failed", "replica", replica, "err", err)
	}
}

// dueQueue is a min-heap of health checks by due time. A replica may be
// queued more than once; an entry whose time is not the replica's
// healthState.next any more is stale and dropped when popped.
type dueQueue []dueEntry

type dueEntry struct {
	at      time.Time
	replica string
}

func (q dueQueue) Len() int           { return len(q) }
func (q dueQueue) Less(i, j int) bool { return q[i].at.Before(q[j].at) }
func (q dueQueue) Swap(i, j int)      { q[i], q[j] = q[j], q[i] }
func (q *dueQueue) Push(x any)        { *q = append(*q, x.(dueEntry)) }
func (q *dueQueue) Pop() any {
	old := *q
	e := old[len(old)-1]
	*q = old[:len(old)-1]
	return e
}

// queueCheck queues replica's check at h.next in its node's queue.
func (s *state) queueCheck(h *healthState, replica string) {
	node, _, _ := strings.Cut(h.key, ".")
	q := s.healthQ[node]
	if q == nil {
		q = &dueQueue{}
		s.healthQ[node] = q
	}
	q.due(replica, h.next)
	select { // the loop may sleep past it
	case s.healthWake <- struct{}{}:
	default:
	}
}

// due queues replica's check at at.
func (q *dueQueue) due(replica string, at time.Time) { heap.Push(q, dueEntry{at, replica}) }

// pop returns the earliest entry due by now.
func (q *dueQueue) pop(now time.Time) (string, time.Time, bool) {
	if len(*q) == 0 || now.Before((*q)[0].at) {
		return "", time.Time{}, false
	}
	e := heap.Pop(q).(dueEntry)
	return e.replica, e.at, true
}
