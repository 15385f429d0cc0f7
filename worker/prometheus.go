package worker

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"
	"github.com/natserve/natserve/internal/discovery"
	"github.com/natserve/natserve/internal/metrics"
	"github.com/natserve/natserve/internal/wire"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
)

// Metrics returns the Prometheus registerer of the replica the code runs
// in: what user code registers on it is exported by the replica's node
// agent with the labels deployment and replica added. Register in the
// constructor (once); outside a replica, or with metrics off, it returns a
// registry nobody reads, so that code registering on it still works.
func Metrics(ctx context.Context) prometheus.Registerer {
	if r, ok := ctx.Value(replicaKey).(*Replica); ok && r.metrics != nil {
		return r.metrics.labelled
	}
	return prometheus.NewRegistry()
}

// replicaMetrics is a replica's Prometheus registry. The node agent asks
// for it over NATS (wire.VerbMetrics) at each scrape and merges it into
// the node's /metrics, so a machine is one scrape target whatever its
// replicas; a replica that exited is simply no longer asked.
type replicaMetrics struct {
	reg      *prometheus.Registry
	labelled prometheus.Registerer    // reg, adding deployment and replica labels
	requests *prometheus.CounterVec   // method, code
	latency  *prometheus.HistogramVec // method
	busy     prometheus.Counter
	calls    *prometheus.CounterVec   // callee, method, code
	callLat  *prometheus.HistogramVec // callee, method
	byMethod map[*method]*methodMetrics
	unknown  *methodMetrics // calls of methods the class does not have
}

// methodMetrics are one method's resolved children.
type methodMetrics struct {
	name    string
	ok      prometheus.Counter
	latency prometheus.Observer
	errors  atomic.Uint64
	lastErr atomic.Pointer[string]
}

// Label value of a successful call's code.
const codeOK = "ok"

func newReplicaMetrics(r *Replica) *replicaMetrics {
	ns := metrics.Namespace
	reg := prometheus.NewRegistry()
	m := &replicaMetrics{
		reg:      reg,
		labelled: prometheus.WrapRegistererWith(prometheus.Labels{"deployment": r.spec.Deployment, "replica": r.spec.Replica}, reg),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: "replica", Name: "requests_total",
			Help: "Requests a replica processed (HTTP and handle calls), by method and code (ok or the error code)."}, []string{"method", "code"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: ns, Subsystem: "replica", Name: "processing_seconds",
			Help: "Time a replica spent on a request, from taking it to replying, by method.", Buckets: metrics.LatencyBuckets}, []string{"method"}),
		busy: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: "replica", Name: "busy_refusals_total",
			Help: "Requests a replica refused at once because it was at max_ongoing_requests (the caller retries elsewhere)."}),
		calls: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: "handle", Name: "calls_total",
			Help: "Handle calls made from inside a replica to other deployments, by callee, method and code."}, []string{"callee", "method", "code"}),
		callLat: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: ns, Subsystem: "handle", Name: "call_duration_seconds",
			Help: "Duration of handle calls made from inside a replica, by callee and method.", Buckets: metrics.LatencyBuckets}, []string{"callee", "method"}),
		byMethod: map[*method]*methodMetrics{},
	}
	gauge := func(name, help string, f func() float64) prometheus.Collector {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: ns, Subsystem: "replica", Name: name, Help: help}, f)
	}
	started := float64(time.Now().UnixNano()) / 1e9
	m.labelled.MustRegister(m.requests, m.latency, m.busy, m.calls, m.callLat,
		gauge("ongoing_requests", "Requests a replica is processing now.", func() float64 { return float64(len(r.sem)) }),
		gauge("queued_requests", "Requests delivered to a replica and waiting for a receiver.", func() float64 { return float64(len(r.inbox)) }),
		gauge("max_ongoing_requests", "A replica's max_ongoing_requests.", func() float64 { return float64(cap(r.sem)) }),
		gauge("start_time_seconds", "When the replica process started, in Unix seconds.", func() float64 { return started }),
	)
	for _, meth := range r.cls.methods {
		if hook(meth.name) {
			continue
		}
		m.byMethod[meth] = m.method(meth.name)
	}
	m.unknown = m.method("UNKNOWN")
	return m
}

func (m *replicaMetrics) method(name string) *methodMetrics {
	return &methodMetrics{name: name, ok: m.requests.WithLabelValues(name, codeOK), latency: m.latency.WithLabelValues(name)}
}

// outcome is what one call did, for the metrics: the method (nil if none
// was found) and the error code and text ("" on success).
type outcome struct {
	meth *method
	code wire.Code
	text string
}

// fail replies with an error and records it in oc (nil-safe).
func (r *Replica) fail(oc *outcome, m *nats.Msg, code wire.Code, text string) {
	if oc != nil {
		oc.code, oc.text = code, text
	}
	r.replyError(m, code, text)
}

func (m *replicaMetrics) observe(oc *outcome, elapsed time.Duration) {
	mm := m.unknown
	if oc.meth != nil {
		if x := m.byMethod[oc.meth]; x != nil {
			mm = x
		}
	}
	mm.latency.Observe(elapsed.Seconds())
	if oc.code == "" {
		mm.ok.Inc()
		return
	}
	m.requests.WithLabelValues(mm.name, string(oc.code)).Inc()
	mm.errors.Add(1)
	text := oc.text
	mm.lastErr.Store(&text)
}

// observeCall records a handle call made from inside the replica.
func (m *replicaMetrics) observeCall(deployment, method, code string, elapsed time.Duration) {
	if code == "" {
		code = codeOK
	}
	if method == "" {
		method = DefaultMethod
	}
	m.calls.WithLabelValues(deployment, method, code).Inc()
	m.callLat.WithLabelValues(deployment, method).Observe(elapsed.Seconds())
}

// answerMetrics replies with the replica's metrics, protobuf-delimited.
func (r *Replica) answerMetrics(m *nats.Msg) {
	if r.metrics == nil {
		_ = m.Respond(nil)
		return
	}
	fams, err := r.metrics.reg.Gather()
	var buf bytes.Buffer
	enc := expfmt.NewEncoder(&buf, expfmt.NewFormat(expfmt.TypeProtoDelim))
	for _, f := range fams {
		if e := enc.Encode(f); e != nil && err == nil {
			err = e
		}
	}
	if err == nil && int64(buf.Len()) > r.nc.MaxPayload()-1024 {
		err = fmt.Errorf("%d bytes of metrics exceed the broker's max payload", buf.Len())
	}
	if err != nil {
		r.log.Warn("gathering metrics failed", "err", err)
		_ = m.RespondMsg(&nats.Msg{Header: nats.Header{wire.HeaderCode: {string(wire.CodeInternal)}, wire.HeaderError: {err.Error()}}})
		return
	}
	_ = m.Respond(buf.Bytes())
}

// The replica as an instance of its deployment's service in the NATS
// services protocol: one endpoint per method, stats read from the metrics.
func (r *Replica) service() *discovery.Service {
	return &discovery.Service{
		Name: r.spec.Deployment, ID: r.spec.Replica, Version: r.spec.Version,
		Description: "natserve deployment " + r.spec.Deployment + " (class " + r.spec.Class + ")",
		Metadata: map[string]string{
			"class": r.spec.Class, "node": r.spec.Node, "pid": strconv.Itoa(r.pid), "version": r.spec.Version,
			"max_ongoing_requests": strconv.Itoa(r.spec.MaxOngoingRequests),
		},
		Endpoints: r.serviceEndpoints, Stats: r.serviceStats,
	}
}

func (r *Replica) methodNames() []string {
	var names []string
	for name, m := range r.cls.methods {
		if !hook(name) && m.name == name { // one endpoint per method, not per alias
			names = append(names, name)
		}
	}
	sort.Strings(names)
	return names
}

func (r *Replica) serviceEndpoints() []micro.EndpointInfo {
	out := []micro.EndpointInfo{}
	for _, name := range r.methodNames() {
		out = append(out, micro.EndpointInfo{Name: name, Subject: wire.DeploymentSubject(r.spec.Deployment), QueueGroup: wire.QueueGroup(r.spec.Deployment),
			Metadata: map[string]string{"method": name}})
	}
	return out
}

func (r *Replica) serviceStats() []*micro.EndpointStats {
	out := []*micro.EndpointStats{}
	var codes map[string]map[string]uint64
	if r.metrics != nil {
		codes = r.metrics.errorCodes()
	}
	for _, name := range r.methodNames() {
		st := &micro.EndpointStats{Name: name, Subject: wire.DeploymentSubject(r.spec.Deployment), QueueGroup: wire.QueueGroup(r.spec.Deployment)}
		out = append(out, st)
		if r.metrics == nil {
			continue
		}
		mm := r.metrics.byMethod[r.cls.methods[name]]
		var d dto.Metric
		if mm == nil || mm.latency.(prometheus.Metric).Write(&d) != nil {
			continue
		}
		var lat discovery.Latency
		lat.FromHistogram(d.GetHistogram())
		lat.Errors = codes[name]
		st.NumRequests, st.NumErrors = int(lat.Count), int(mm.errors.Load())
		st.ProcessingTime = time.Duration(lat.Sum * float64(time.Second))
		if lat.Count > 0 {
			st.AverageProcessingTime = st.ProcessingTime / time.Duration(lat.Count)
		}
		if e := mm.lastErr.Load(); e != nil {
			st.LastError = *e
		}
		st.Data = mustJSON(lat)
	}
	return out
}

// errorCodes reads the failed requests by method and code.
func (m *replicaMetrics) errorCodes() map[string]map[string]uint64 {
	ch := make(chan prometheus.Metric, 64)
	go func() { m.requests.Collect(ch); close(ch) }()
	out := map[string]map[string]uint64{}
	for mt := range ch {
		var d dto.Metric
		if mt.Write(&d) != nil {
			continue
		}
		var meth, code string
		for _, l := range d.GetLabel() {
			switch l.GetName() {
			case "method":
				meth = l.GetValue()
			case "code":
				code = l.GetValue()
			}
		}
		if code == codeOK || code == "" {
			continue
		}
		if out[meth] == nil {
			out[meth] = map[string]uint64{}
		}
		out[meth][code] += uint64(d.GetCounter().GetValue())
	}
	return out
}

// agentMetrics are a node agent's own metrics.
type agentMetrics struct {
	starts         *prometheus.CounterVec // deployment
	exits          *prometheus.CounterVec // deployment, state
	scrapeFailures prometheus.Counter
}

func (a *Agent) registerMetrics(reg prometheus.Registerer) error {
	ns := metrics.Namespace
	m := &agentMetrics{
		starts: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: "agent", Name: "replica_starts_total",
			Help: "Replica processes this node agent started, by deployment."}, []string{"deployment"}),
		exits: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: "agent", Name: "replica_exits_total",
			Help: "Replica processes that exited on this node, by deployment and state (STOPPED: asked to; FAILED: crashed or killed)."}, []string{"deployment", "state"}),
		scrapeFailures: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: "agent", Name: "replica_scrape_failures_total",
			Help: "Replicas that did not hand over their metrics during a scrape."}),
	}
	count := func(waiting bool) func() float64 {
		return func() float64 {
			a.mu.Lock()
			defer a.mu.Unlock()
			if waiting {
				return float64(len(a.waiting))
			}
			return float64(len(a.running))
		}
	}
	l := prometheus.Labels{"node": a.cfg.Name}
	cs := []prometheus.Collector{m.starts, m.exits, m.scrapeFailures,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: ns, Subsystem: "agent", Name: "replicas", ConstLabels: l,
			Help: "Replica processes this node agent runs (started or adopted)."}, count(false)),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: ns, Subsystem: "agent", Name: "replicas_waiting", ConstLabels: l,
			Help: "Replicas assigned to this node waiting for a free slot under its replica cap."}, count(true)),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: ns, Subsystem: "agent", Name: "max_replicas", ConstLabels: l,
			Help: "This node's replica cap."}, func() float64 { return float64(a.cfg.MaxReplicas) }),
	}
	for _, c := range cs {
		if err := reg.Register(c); err != nil {
			return fmt.Errorf("agent %s: registering metrics: %w", a.cfg.Name, err)
		}
	}
	a.metrics = m
	return nil
}

// ReplicaGatherer gathers the metrics of this node's replicas at each
// call, asking each running replica over NATS (in parallel, 2 s at most);
// serve it beside the agent's own registry (prometheus.Gatherers). A
// replica that does not answer is left out of that scrape.
func (a *Agent) ReplicaGatherer() prometheus.Gatherer {
	return prometheus.GathererFunc(a.gatherReplicas)
}

func (a *Agent) gatherReplicas() ([]*dto.MetricFamily, error) {
	a.mu.Lock()
	nc := a.nc
	var ids [][2]string // deployment, replica
	for id, p := range a.running {
		p.mu.Lock()
		if p.ready || p.adopted {
			ids = append(ids, [2]string{p.asg.Deployment, id})
		}
		p.mu.Unlock()
	}
	a.mu.Unlock()
	if nc == nil || len(ids) == 0 {
		return nil, nil
	}
	var (
		mu   sync.Mutex
		fams []*dto.MetricFamily
		errs []error
		wg   sync.WaitGroup
		sem  = make(chan struct{}, 32)
	)
	for _, id := range ids {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			got, err := fetchReplicaMetrics(nc, id[0], id[1])
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs = append(errs, err)
				if a.metrics != nil {
					a.metrics.scrapeFailures.Inc()
				}
				return
			}
			fams = append(fams, got...)
		}()
	}
	wg.Wait()
	return fams, errors.Join(errs...)
}

func fetchReplicaMetrics(nc *nats.Conn, deployment, replica string) ([]*dto.MetricFamily, error) {
	m, err := nc.Request(wire.ReplicaSubject(deployment, replica, wire.VerbMetrics), nil, 2*time.Second)
	if err != nil {
		return nil, fmt.Errorf("replica %s: metrics: %w", replica, err)
	}
	if code := m.Header.Get(wire.HeaderCode); code != "" {
		return nil, fmt.Errorf("replica %s: metrics: %s", replica, m.Header.Get(wire.HeaderError))
	}
	dec := expfmt.NewDecoder(bytes.NewReader(m.Data), expfmt.NewFormat(expfmt.TypeProtoDelim))
	var out []*dto.MetricFamily
	for {
		mf := &dto.MetricFamily{}
		if err := dec.Decode(mf); err != nil {
			if errors.Is(err, io.EOF) {
				return out, nil
			}
			return out, fmt.Errorf("replica %s: metrics: %w", replica, err)
		}
		out = append(out, mf)
	}
}

func mustJSON(v any) []byte {
	b, _ := json.Marshal(v)
	return b
}
