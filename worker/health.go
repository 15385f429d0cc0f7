package worker

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/natserve/natserve/internal/wire"
)

const (
	// defaultHealthCheckTimeout bounds a CheckHealth when the ping does not
	// carry a budget; the controller sends its health_check_timeout_s in
	// wire.HeaderTimeout.
	defaultHealthCheckTimeout = 30 * time.Second
	// healthWaitOnExit bounds how long Run waits, after cancelling it, for
	// a CheckHealth that ignores its context.
	healthWaitOnExit = 5 * time.Second
)

// healthChecks runs the class's CheckHealth on a goroutine of its own, one
// at a time, so that a slow or hung check never holds the control
// subscription (reconfigure, stop) or the agent link. Pings that arrive
// while a check runs wait for its result; once it has run past its timeout
// they are answered at once as unhealthy.
type healthChecks struct {
	mu      sync.Mutex // guards running, started, timeout, waiters, closed
	running bool
	started time.Time
	timeout time.Duration
	waiters []func(ReplicaStatus) // pings the running check answers
	closed  bool                  // Run is returning: no check starts
	wg      sync.WaitGroup
}

// ping answers a ping over NATS (the controller's fallback, the agent's
// readiness probe of a replica without a link) with the replica's status
// and, when the class has one, the result of CheckHealth.
func (r *Replica) ping(m *nats.Msg) {
	timeout := defaultHealthCheckTimeout
	if d, err := wire.ParseTimeout(m.Header.Get(wire.HeaderTimeout)); err == nil && d > 0 {
		timeout = d
	}
	r.checkPing(timeout, func(st ReplicaStatus) { respondStatus(m, st) })
}

// checkPing answers one ping, from NATS or the agent link, through respond
// (called once, perhaps from another goroutine).
func (r *Replica) checkPing(timeout time.Duration, respond func(ReplicaStatus)) {
	st := r.Status()
	hm := r.cls.methods[HealthMethod]
	if hm == nil || st.Draining {
		respond(st)
		return
	}
	h := &r.health
	h.mu.Lock()
	switch {
	case h.closed:
		h.mu.Unlock()
		respond(st)
		return
	case h.running:
		if since := time.Since(h.started); since > h.timeout {
			h.mu.Unlock()
			st.Healthy, st.Error = false, fmt.Sprintf("%s has not returned after %v", HealthMethod, since.Round(time.Millisecond))
			respond(st)
			return
		}
		h.waiters = append(h.waiters, respond)
		h.mu.Unlock()
		return
	}
	h.running, h.started, h.timeout, h.waiters = true, time.Now(), timeout, []func(ReplicaStatus){respond}
	h.wg.Add(1)
	h.mu.Unlock()
	go func() {
		defer h.wg.Done()
		r.checkHealth(hm, timeout)
	}()
}

// checkHealth runs CheckHealth once and answers the pings waiting for it.
func (r *Replica) checkHealth(hm *method, timeout time.Duration) {
	ctx, cancel := context.WithTimeout(r.lifeContext(), timeout)
	_, err := r.inst.invoke(ctx, hm, nil)
	cancel()
	h := &r.health
	h.mu.Lock()
	waiters := h.waiters
	h.running, h.waiters = false, nil
	h.mu.Unlock()
	st := r.Status()
	if err != nil {
		st.Healthy, st.Error = false, err.Error()
	}
	for _, respond := range waiters {
		respond(st)
	}
}

// wait stops new checks and waits for the running one, at most d (a
// CheckHealth that ignores its context cannot be stopped).
func (h *healthChecks) wait(log *slog.Logger, d time.Duration) {
	h.mu.Lock()
	h.closed = true
	h.mu.Unlock()
	done := make(chan struct{})
	go func() {
		h.wg.Wait()
		close(done)
	}()
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
		log.Warn("CheckHealth still running after the replica stopped", "waited", d)
	}
}

func respondStatus(m *nats.Msg, st ReplicaStatus) {
	b, _ := json.Marshal(st)
	_ = m.Respond(b)
}
