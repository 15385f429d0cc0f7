package ingress

import (
	"encoding/json"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/micro"
	"github.com/natserve/natserve/client"
	"github.com/natserve/natserve/internal/discovery"
	"github.com/natserve/natserve/internal/metrics"
	"github.com/natserve/natserve/internal/wire"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/valyala/fasthttp"
)

// metricSet is the ingress's Prometheus metrics. Each route's label
// children are resolved once, when the route appears (routeMetrics), so
// that a request costs a few atomic adds and no map lookup of labels.
type metricSet struct {
	requests *prometheus.CounterVec   // deployment, route, method, status
	latency  *prometheus.HistogramVec // deployment, route
	errs     *prometheus.CounterVec   // deployment, route, code
	ongoing  *prometheus.GaugeVec     // deployment, route

	mu       sync.Mutex               // guards byRoute
	byRoute  map[string]*routeMetrics // route prefix + "\x00" + deployment → its children
	notFound *routeMetrics            // requests no route matched
	queued   *prometheus.Desc         // natserve_http_queued_requests, read at scrape time
	g        *Ingress
}

func newMetricSet(g *Ingress) *metricSet {
	ns := metrics.Namespace
	m := &metricSet{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: "http", Name: "requests_total",
			Help: "HTTP requests answered by the ingress, by deployment, route prefix, method and status."}, []string{"deployment", "route", "method", "status"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: ns, Subsystem: "http", Name: "request_duration_seconds",
			Help: "Time from the ingress reading a request to writing its response, by deployment and route prefix.", Buckets: metrics.LatencyBuckets}, []string{"deployment", "route"}),
		errs: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: "http", Name: "request_errors_total",
			Help: "HTTP requests that failed, by deployment, route prefix and error code (no_replicas, busy, backpressure, deadline, user, …)."}, []string{"deployment", "route", "code"}),
		ongoing: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Subsystem: "http", Name: "requests_ongoing",
			Help: "HTTP requests the ingress is handling now, by deployment and route prefix."}, []string{"deployment", "route"}),
		queued:  prometheus.NewDesc(ns+"_http_queued_requests", "Requests this ingress holds waiting for a free replica (every replica busy), by deployment.", []string{"deployment"}, nil),
		byRoute: map[string]*routeMetrics{},
		g:       g,
	}
	m.notFound = m.route("", "")
	return m
}

func (m *metricSet) collectors() []prometheus.Collector {
	return []prometheus.Collector{m.requests, m.latency, m.errs, m.ongoing, queuedCollector{m}}
}

type queuedCollector struct{ m *metricSet }

func (q queuedCollector) Describe(ch chan<- *prometheus.Desc) { ch <- q.m.queued }
func (q queuedCollector) Collect(ch chan<- prometheus.Metric) {
	if q.m.g.cl == nil {
		return
	}
	seen := map[string]bool{}
	for _, rt := range q.m.g.routes.Load().byPrefix {
		if rt.graph != nil || seen[rt.deployment] {
			continue
		}
		seen[rt.deployment] = true
		ch <- prometheus.MustNewConstMetric(q.m.queued, prometheus.GaugeValue, float64(q.m.g.cl.Queued(rt.deployment)), rt.deployment)
	}
}

// route returns the children of one route, creating them on first use;
// a rebuilt route table reuses them, so counts and cached status children
// survive route changes.
func (m *metricSet) route(prefix, deployment string) *routeMetrics {
	key := prefix + "\x00" + deployment
	m.mu.Lock()
	defer m.mu.Unlock()
	if r, ok := m.byRoute[key]; ok {
		return r
	}
	r := &routeMetrics{set: m, deployment: deployment, route: prefix,
		latency: m.latency.WithLabelValues(deployment, prefix),
		ongoing: m.ongoing.WithLabelValues(deployment, prefix),
	}
	m.byRoute[key] = r
	return r
}

// retain drops the series of routes the table no longer has.
func (m *metricSet) retain(live map[string]bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for key, r := range m.byRoute {
		if r == m.notFound || live[key] {
			continue
		}
		delete(m.byRoute, key)
		l := prometheus.Labels{"deployment": r.deployment, "route": r.route}
		m.requests.DeletePartialMatch(l)
		m.errs.DeletePartialMatch(l)
		m.latency.Delete(l)
		m.ongoing.Delete(l)
	}
}

// routeMetrics holds one route's resolved children. Status children are
// resolved on first use and cached per method in a 500-slot array (one for
// each status 100–599), allocated only for the methods the route sees.
type routeMetrics struct {
	set               *metricSet
	deployment, route string
	latency           prometheus.Observer
	ongoing           prometheus.Gauge
	byMethod          [metrics.NumMethods]atomic.Pointer[statusCounters]
	errors            atomic.Uint64
	lastErr           atomic.Pointer[string]
}

type statusCounters [500]atomic.Pointer[counterRef]

type counterRef struct{ c prometheus.Counter }

// start counts a request in and returns its start time.
func (r *routeMetrics) start() time.Time {
	r.ongoing.Inc()
	return time.Now()
}

// done counts a request out: its status, method and latency.
func (r *routeMetrics) done(ctx *fasthttp.RequestCtx, start time.Time) {
	r.latency.Observe(time.Since(start).Seconds())
	r.ongoing.Dec()
	r.counter(metrics.MethodIndex(ctx.Method()), ctx.Response.StatusCode()).Inc()
}

func (r *routeMetrics) counter(mi, status int) prometheus.Counter {
	if status < 100 || status > 599 {
		return r.set.requests.WithLabelValues(r.deployment, r.route, metrics.Methods[mi], "other")
	}
	sc := r.byMethod[mi].Load()
	if sc == nil {
		r.byMethod[mi].CompareAndSwap(nil, new(statusCounters))
		sc = r.byMethod[mi].Load()
	}
	slot := &sc[status-100]
	if c := slot.Load(); c != nil {
		return c.c
	}
	c := &counterRef{r.set.requests.WithLabelValues(r.deployment, r.route, metrics.Methods[mi], statusText(status))}
	slot.Store(c)
	return c.c
}

func statusText(s int) string {
	return string([]byte{byte('0' + s/100), byte('0' + s/10%10), byte('0' + s%10)})
}

// failed counts a request that failed with err (a *client.Error's code).
func (r *routeMetrics) failed(err error) {
	if r == nil {
		return
	}
	code := "internal"
	var ce *client.Error
	if errors.As(err, &ce) {
		code = ce.Code
	}
	r.failedCode(code, err.Error())
}

func (r *routeMetrics) failedCode(code, text string) {
	if r == nil {
		return
	}
	r.set.errs.WithLabelValues(r.deployment, r.route, code).Inc()
	r.errors.Add(1)
	r.lastErr.Store(&text)
}

// The ingress as a service of the NATS services protocol: one endpoint per
// route, its stats read from the route's metrics.
func (g *Ingress) serviceEndpoints() []micro.EndpointInfo {
	t := g.routes.Load()
	out := []micro.EndpointInfo{}
	for _, p := range discovery.SortedKeys(t.byPrefix) {
		rt := t.byPrefix[p]
		kind := "deployment"
		if rt.graph != nil {
			kind = "graph"
		}
		out = append(out, micro.EndpointInfo{Name: rt.deployment, Subject: wire.DeploymentSubject(rt.deployment), QueueGroup: wire.QueueGroup(rt.deployment),
			Metadata: map[string]string{"route": p, "kind": kind}})
	}
	return out
}

func (g *Ingress) serviceStats() []*micro.EndpointStats {
	t := g.routes.Load()
	out := []*micro.EndpointStats{}
	for _, p := range discovery.SortedKeys(t.byPrefix) {
		rt := t.byPrefix[p]
		st := &micro.EndpointStats{Name: rt.deployment, Subject: wire.DeploymentSubject(rt.deployment), QueueGroup: wire.QueueGroup(rt.deployment)}
		if rm := rt.metrics; rm != nil {
			var d dto.Metric
			if h, ok := rm.latency.(prometheus.Metric); ok && h.Write(&d) == nil {
				var lat discovery.Latency
				lat.FromHistogram(d.GetHistogram())
				lat.Errors = rm.errorCodes()
				st.NumRequests, st.NumErrors = int(lat.Count), int(rm.errors.Load())
				st.ProcessingTime = time.Duration(lat.Sum * float64(time.Second))
				if lat.Count > 0 {
					st.AverageProcessingTime = st.ProcessingTime / time.Duration(lat.Count)
				}
				if e := rm.lastErr.Load(); e != nil {
					st.LastError = *e
				}
				st.Data, _ = jsonMarshal(lat)
			}
		}
		out = append(out, st)
	}
	return out
}

// errorCodes reads the route's error counters by code.
func (r *routeMetrics) errorCodes() map[string]uint64 {
	ch := make(chan prometheus.Metric, 64)
	go func() { r.set.errs.Collect(ch); close(ch) }()
	out := map[string]uint64{}
	for mt := range ch {
		var d dto.Metric
		if mt.Write(&d) != nil {
			continue
		}
		var dep, route, code string
		for _, l := range d.GetLabel() {
			switch l.GetName() {
			case "deployment":
				dep = l.GetValue()
			case "route":
				route = l.GetValue()
			case "code":
				code = l.GetValue()
			}
		}
		if dep == r.deployment && route == r.route {
			out[code] += uint64(d.GetCounter().GetValue())
		}
	}
	if len(out) == 0 {
		return nil
	}
	return out
}

func jsonMarshal(v any) ([]byte, error) { return json.Marshal(v) }
