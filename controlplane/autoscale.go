package controlplane

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/natserve/natserve/client"
	"github.com/natserve/natserve/internal/wire"
)

// metrics aggregates the load reports of replicas and callers.
type metrics struct {
	mu       sync.Mutex                   // guards replicas, callers
	replicas map[string]*series           // replica → its reports
	callers  map[string]map[string]sample // caller → deployment → last report
	depOf    map[string]string            // replica → deployment
	msgs     int64                        // reports received
	backlog  map[string]float64           // deployment → stored requests queued or running
}

// setBacklog records the deployments' stored requests (async.go).
func (m *metrics) setBacklog(b map[string]float64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.backlog = b
}

type sample struct {
	at    time.Time
	value float64
}

type series struct{ samples []sample }

func newMetrics() *metrics {
	return &metrics{replicas: map[string]*series{}, callers: map[string]map[string]sample{}, depOf: map[string]string{}}
}

func (m *metrics) onLoad(msg *nats.Msg) {
	var r wire.LoadReport
	if wire.UnmarshalJSON(msg.Data, &r) != nil || r.Replica == "" {
		return
	}
	// The broker lets a replica publish load under its own deployment
	// only: a report about another deployment is forged.
	if msg.Subject != wire.EventSubject(wire.EventLoad, r.Deployment) {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.msgs++
	s := m.replicas[r.Replica]
	if s == nil {
		s = &series{}
		m.replicas[r.Replica] = s
	}
	m.depOf[r.Replica] = r.Deployment
	s.samples = append(s.samples, sample{at: time.Now(), value: r.Ongoing})
}

func (m *metrics) onQueue(msg *nats.Msg) {
	var r wire.QueueReport
	if wire.UnmarshalJSON(msg.Data, &r) != nil || r.Caller == "" {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.msgs++
	byDep := map[string]sample{}
	for d, q := range r.Queued {
		byDep[d] = sample{at: time.Now(), value: q}
	}
	m.callers[r.Caller] = byDep
}

// total returns a deployment's ongoing requests over the look-back window:
// the mean of each running replica's reports plus what callers queue.
// Reports older than the window are dropped.
func (m *metrics) total(deployment string, replicas map[string]bool, window time.Duration) float64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	cutoff := time.Now().Add(-window)
	total := 0.0
	for id := range replicas {
		s := m.replicas[id]
		if s == nil {
			continue
		}
		i := 0
		for i < len(s.samples) && s.samples[i].at.Before(cutoff) {
			i++
		}
		s.samples = s.samples[i:]
		if len(s.samples) == 0 {
			continue
		}
		sum := 0.0
		for _, x := range s.samples {
			sum += x.value
		}
		total += sum / float64(len(s.samples))
	}
	// Stored requests count once: those running are in the replicas'
	// reports already, so only the queued rest is added.
	if b := m.backlog[deployment] - total; b > 0 {
		total += b
	}
	fresh := time.Now().Add(-3 * time.Second) // a caller reports every second while it queues
	for _, byDep := range m.callers {
		if x, ok := byDep[deployment]; ok && x.at.After(fresh) {
			total += x.value
		}
	}
	return total
}

// forget drops replicas that are gone.
func (m *metrics) forget(live func(replica string) bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for id := range m.replicas {
		if !live(id) {
			delete(m.replicas, id)
			delete(m.depOf, id)
		}
	}
	stale := time.Now().Add(-10 * time.Second)
	for c, byDep := range m.callers {
		old := true
		for _, x := range byDep {
			if x.at.After(stale) {
				old = false
			}
		}
		if old {
			delete(m.callers, c)
		}
	}
}

// autoscaleTarget decides an autoscaled deployment's replica count for this
// control loop pass and records the decision and its reason in ds.
func (c *Controller) autoscaleTarget(st *state, spec *client.DeploymentSpec, ds *depState, running map[string]bool) int {
	a := spec.AutoscalingConfig
	if ds.autoTarget < 0 { // first sight: adopt what runs, or start at initial_replicas
		ds.autoTarget = *a.InitialReplicas
		if len(running) > 0 {
			ds.autoTarget = min(max(len(running), *a.MinReplicas), a.MaxReplicas)
		}
	}
	if st.takeWake(spec.Name) && ds.autoTarget == 0 {
		ds.autoTarget = client.DesiredReplicas(a, 0, 1)
		ds.decision = client.Decision{}
		ds.scaleReason = fmt.Sprintf("%s: 0 → %d replicas: a request arrived while scaled to zero", time.Now().UTC().Format(time.RFC3339), ds.autoTarget)
		c.m.coldStart(spec.Name)
		c.log.Info("waking a deployment scaled to zero", "deployment", spec.Name, "to", ds.autoTarget)
	}
	window := time.Duration(a.LookBackPeriodS * float64(time.Second))
	total := st.metrics.total(spec.Name, running, window)
	n := len(running)
	var desired int
	switch {
	case n == 0 && ds.autoTarget > 0: // replicas starting: hold the target, or grow it with load
		desired = max(ds.autoTarget, client.DesiredReplicas(a, ds.autoTarget, total))
	default:
		desired = client.DesiredReplicas(a, n, total)
	}
	now := float64(time.Now().UnixNano()) / 1e9
	next := ds.decision.Hold(a, ds.autoTarget, desired, now)
	if next != ds.autoTarget {
		ds.scaleReason = fmt.Sprintf("%s: %d → %d replicas: %.1f ongoing requests over %d replicas (target %.1f each) for the delay",
			time.Now().UTC().Format(time.RFC3339), ds.autoTarget, next, total, n, a.TargetOngoingRequests)
		c.m.decided(spec.Name, ds.autoTarget, next)
		c.log.Info("autoscaling", "deployment", spec.Name, "from", ds.autoTarget, "to", next, "ongoing", total, "running", n)
		ds.autoTarget = next
	}
	ds.ongoing = total
	return ds.autoTarget
}

// wake starts a replica of a deployment scaled to zero, at once.
func (c *Controller) wake(st *state, name string) wire.APIWakeReply {
	spec, _, ok := st.deps.get(name)
	if !ok || !spec.Autoscaled() {
		return wire.APIWakeReply{}
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.wakes == nil {
		st.wakes = map[string]bool{}
	}
	st.wakes[name] = true // the control loop acts on it at its next pass
	st.ch.mark(name)
	return wire.APIWakeReply{Waking: client.DesiredReplicas(spec.AutoscalingConfig, 0, 1) > 0}
}

// takeWake reports (once) whether a caller asked to wake the deployment.
func (s *state) takeWake(name string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	w := s.wakes[name]
	delete(s.wakes, name)
	return w
}

func (c *Controller) subscribeMetrics(ctx context.Context, st *state) ([]*nats.Subscription, error) {
	a, err := c.nc.Subscribe(wire.EventSubjects(wire.EventLoad), st.metrics.onLoad)
	if err != nil {
		return nil, err
	}
	b, err := c.nc.Subscribe(wire.EventSubjects(wire.EventQueue), st.metrics.onQueue)
	if err != nil {
		_ = a.Unsubscribe()
		return nil, err
	}
	for _, s := range []*nats.Subscription{a, b} {
		_ = s.SetPendingLimits(-1, 64<<20)
	}
	return []*nats.Subscription{a, b}, nil
}
