package controlplane

import (
	"time"

	"github.com/nats-io/nats.go/micro"
	"github.com/natserve/natserve/client"
	"github.com/natserve/natserve/internal/discovery"
	prom "github.com/natserve/natserve/internal/metrics"
	"github.com/natserve/natserve/internal/wire"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// apiVerbs are the control API verbs counted by name; others count as
// "unknown", so that a client cannot grow the label set.
var apiVerbs = []string{wire.APIApply, wire.APIDelete, wire.APIDeploy, wire.APIGet, wire.APIGraph, wire.APIList, wire.APIScale, wire.APIStatus, wire.APIWake}

// ctlMetrics are the controller's Prometheus metrics. Counters are bumped
// where the events happen; the deployment, replica and node gauges are
// read from the leader's state at scrape time (stateCollector).
type ctlMetrics struct {
	loop        prometheus.Histogram
	api         *prometheus.CounterVec   // verb, code
	apiLatency  *prometheus.HistogramVec // verb
	starts      *prometheus.CounterVec   // deployment
	restarts    *prometheus.CounterVec   // deployment, reason
	healthFails *prometheus.CounterVec   // deployment
	decisions   *prometheus.CounterVec   // deployment, direction
	coldStarts  *prometheus.CounterVec   // deployment
}

func newCtlMetrics() *ctlMetrics {
	ns := prom.Namespace
	return &ctlMetrics{
		loop: prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: ns, Subsystem: "controller", Name: "loop_duration_seconds",
			Help: "Duration of one pass of the control loop.", Buckets: prometheus.ExponentialBuckets(0.0001, 4, 10)}),
		api: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: "controller", Name: "api_requests_total",
			Help: "Control API requests, by verb and code (ok or the API error code)."}, []string{"verb", "code"}),
		apiLatency: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: ns, Subsystem: "controller", Name: "api_request_duration_seconds",
			Help: "Duration of control API requests, by verb.", Buckets: prom.LatencyBuckets}, []string{"verb"}),
		starts: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "replica_starts_total",
			Help: "Replicas the controller placed (started), by deployment."}, []string{"deployment"}),
		restarts: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "replica_restarts_total",
			Help: "Replicas replaced after a failure, by deployment and reason (crashed, unhealthy, node_lost)."}, []string{"deployment", "reason"}),
		healthFails: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "replica_health_check_failures_total",
			Help: "Failed replica health checks, by deployment."}, []string{"deployment"}),
		decisions: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: "autoscaling", Name: "decisions_total",
			Help: "Autoscaler decisions that changed a deployment's target, by direction (up, down)."}, []string{"deployment", "direction"}),
		coldStarts: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: "autoscaling", Name: "cold_starts_total",
			Help: "Deployments woken from zero replicas by a request."}, []string{"deployment"}),
	}
}

func (m *ctlMetrics) collectors() []prometheus.Collector {
	return []prometheus.Collector{m.loop, m.api, m.apiLatency, m.starts, m.restarts, m.healthFails, m.decisions, m.coldStarts}
}

// Nil-safe recorders: a controller without a registry has no metrics.
func (m *ctlMetrics) started(dep string) {
	if m != nil {
		m.starts.WithLabelValues(dep).Inc()
	}
}

func (m *ctlMetrics) restarted(dep, reason string) {
	if m != nil {
		m.restarts.WithLabelValues(dep, reason).Inc()
	}
}

func (m *ctlMetrics) healthFailed(dep string) {
	if m != nil {
		m.healthFails.WithLabelValues(dep).Inc()
	}
}

func (m *ctlMetrics) decided(dep string, from, to int) {
	if m == nil || from == to {
		return
	}
	dir := "up"
	if to < from {
		dir = "down"
	}
	m.decisions.WithLabelValues(dep, dir).Inc()
}

func (m *ctlMetrics) coldStart(dep string) {
	if m != nil {
		m.coldStarts.WithLabelValues(dep).Inc()
	}
}

func (m *ctlMetrics) loopTook(d time.Duration) {
	if m != nil {
		m.loop.Observe(d.Seconds())
	}
}

func apiVerb(v string) string {
	for _, k := range apiVerbs {
		if v == k {
			return v
		}
	}
	return "unknown"
}

func (m *ctlMetrics) served(verb string, code wire.APICode, d time.Duration) {
	if m == nil {
		return
	}
	verb = apiVerb(verb)
	c := string(code)
	if c == "" {
		c = "ok"
	}
	m.api.WithLabelValues(verb, c).Inc()
	m.apiLatency.WithLabelValues(verb).Observe(d.Seconds())
}

// stateCollector reads the leader's view at scrape time; a standby
// exports only natserve_controller_leader 0.
type stateCollector struct {
	c                                            *Controller
	leader, replicas, status, target, ready      *prometheus.Desc
	autoTarget, autoOngoing, nodes, nodeReplicas *prometheus.Desc
}

func newStateCollector(c *Controller) *stateCollector {
	ns := prom.Namespace
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc(ns+"_"+name, help, labels, nil)
	}
	return &stateCollector{
		c:            c,
		leader:       d("controller_leader", "Whether this controller holds the lease (1) or stands by (0).", "controller"),
		replicas:     d("deployment_replicas", "Replicas by deployment and state (PENDING: assigned, not yet reported; STARTING, RUNNING, STOPPING, STOPPED, FAILED).", "deployment", "state"),
		status:       d("deployment_status", "1 for a deployment's current status (UPDATING, HEALTHY, UNHEALTHY, DEPLOY_FAILED), 0 for the others.", "deployment", "status"),
		target:       d("deployment_target_replicas", "The replica count the controller drives a deployment towards.", "deployment"),
		ready:        d("deployment_ready_replicas", "Running, healthy replicas of a deployment's current version.", "deployment"),
		autoTarget:   d("autoscaling_target_replicas", "The autoscaler's current target for an autoscaled deployment.", "deployment"),
		autoOngoing:  d("autoscaling_ongoing_requests", "Ongoing plus queued requests the autoscaler last saw for a deployment (over its look-back window).", "deployment"),
		nodes:        d("nodes", "Node agents by state (alive: heartbeating within the node timeout; lost).", "state"),
		nodeReplicas: d("node_replicas", "Replicas assigned to each node.", "node"),
	}
}

func (s *stateCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{s.leader, s.replicas, s.status, s.target, s.ready, s.autoTarget, s.autoOngoing, s.nodes, s.nodeReplicas} {
		ch <- d
	}
}

func (s *stateCollector) Collect(ch chan<- prometheus.Metric) {
	s.c.mu.Lock()
	st, leading := s.c.st, s.c.leading
	s.c.mu.Unlock()
	lead := 0.0
	if leading {
		lead = 1
	}
	ch <- prometheus.MustNewConstMetric(s.leader, prometheus.GaugeValue, lead, s.c.cfg.ID)
	if st == nil {
		return
	}
	type key struct{ dep, state string }
	counts := map[key]int{}
	perNode := map[string]int{}
	for _, a := range st.asgs.all() {
		state := "PENDING"
		if rs, _, ok := st.reps.get(wire.ReplicaKey(a.val.Node, a.val.Replica)); ok {
			state = rs.State
		}
		counts[key{a.val.Deployment, state}]++
		perNode[a.val.Node]++
	}
	for _, d := range st.deps.all() {
		spec := d.val
		for _, state := range []string{"PENDING", client.ReplicaStarting, client.ReplicaRunning, client.ReplicaStopping, client.ReplicaStopped, client.ReplicaFailed} {
			ch <- prometheus.MustNewConstMetric(s.replicas, prometheus.GaugeValue, float64(counts[key{d.key, state}]), d.key, state)
		}
		ds := st.snapshot(d.key)
		for _, status := range []string{client.StatusUpdating, client.StatusHealthy, client.StatusUnhealthy, client.StatusDeployFailed} {
			v := 0.0
			if ds.status == status {
				v = 1
			}
			ch <- prometheus.MustNewConstMetric(s.status, prometheus.GaugeValue, v, d.key, status)
		}
		target := spec.NumReplicas
		if spec.Autoscaled() {
			target = max(ds.autoTarget, 0)
			ch <- prometheus.MustNewConstMetric(s.autoTarget, prometheus.GaugeValue, float64(target), d.key)
			ch <- prometheus.MustNewConstMetric(s.autoOngoing, prometheus.GaugeValue, ds.ongoing, d.key)
		}
		ch <- prometheus.MustNewConstMetric(s.target, prometheus.GaugeValue, float64(target), d.key)
		ch <- prometheus.MustNewConstMetric(s.ready, prometheus.GaugeValue, float64(ds.ready), d.key)
	}
	alive := st.alive(s.c.cfg.NodeTimeout)
	all := st.nodes.all()
	ch <- prometheus.MustNewConstMetric(s.nodes, prometheus.GaugeValue, float64(len(alive)), "alive")
	ch <- prometheus.MustNewConstMetric(s.nodes, prometheus.GaugeValue, float64(len(all)-len(alive)), "lost")
	for _, n := range all {
		ch <- prometheus.MustNewConstMetric(s.nodeReplicas, prometheus.GaugeValue, float64(perNode[n.key]), n.key)
	}
}

// The control API as a service of the NATS services protocol, answered
// by the leader: one endpoint per verb.
func (c *Controller) apiService() *discovery.Service {
	return &discovery.Service{
		Name: wire.ControllerService, ID: wire.SanitizeName(c.cfg.ID, "controller"), Description: "natserve control API (the leading controller)",
		Metadata: map[string]string{"controller": c.cfg.ID},
		Endpoints: func() []micro.EndpointInfo {
			out := make([]micro.EndpointInfo, 0, len(apiVerbs))
			for _, v := range apiVerbs {
				out = append(out, micro.EndpointInfo{Name: v, Subject: wire.APISubject(v), QueueGroup: apiQueueGroup})
			}
			return out
		},
		Stats: c.apiStats,
	}
}

func (c *Controller) apiStats() []*micro.EndpointStats {
	out := make([]*micro.EndpointStats, 0, len(apiVerbs))
	for _, v := range apiVerbs {
		st := &micro.EndpointStats{Name: v, Subject: wire.APISubject(v), QueueGroup: apiQueueGroup}
		out = append(out, st)
		if c.m == nil {
			continue
		}
		var d dto.Metric
		if h, ok := c.m.apiLatency.WithLabelValues(v).(prometheus.Metric); ok && h.Write(&d) == nil {
			var lat discovery.Latency
			lat.FromHistogram(d.GetHistogram())
			st.NumRequests = int(lat.Count)
			st.ProcessingTime = time.Duration(lat.Sum * float64(time.Second))
			if lat.Count > 0 {
				st.AverageProcessingTime = st.ProcessingTime / time.Duration(lat.Count)
			}
		}
		ch := make(chan prometheus.Metric, 16)
		go func() { c.m.api.Collect(ch); close(ch) }()
		for mt := range ch {
			var d dto.Metric
			if mt.Write(&d) != nil {
				continue
			}
			verb, code := "", ""
			for _, l := range d.GetLabel() {
				switch l.GetName() {
				case "verb":
					verb = l.GetValue()
				case "code":
					code = l.GetValue()
				}
			}
			if verb == v && code != "ok" {
				st.NumErrors += int(d.GetCounter().GetValue())
			}
		}
	}
	return out
}

const apiQueueGroup = "natserve-controller"
