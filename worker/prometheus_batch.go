package worker

import (
	"github.com/natserve/natserve/internal/metrics"
	"github.com/natserve/natserve/internal/wire"
	"github.com/prometheus/client_golang/prometheus"
)

// batchMuxCollector exports the batching and multiplexing statistics the
// replica keeps (batchStats, models) at each scrape: the same numbers its
// status reports, with no second count on the request path.
type batchMuxCollector struct {
	r                                    *Replica
	size, wait                           *prometheus.Desc // method
	maxSize                              *prometheus.Desc // method
	loaded, loads, unloads, fails, loadT *prometheus.Desc
}

func newBatchMuxCollector(r *Replica) *batchMuxCollector {
	ns := metrics.Namespace
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc(ns+"_replica_"+name, help, labels, nil)
	}
	return &batchMuxCollector{
		r:       r,
		size:    d("batch_size", "Calls per batch a batched method ran, by method.", "method"),
		wait:    d("batch_wait_seconds", "Time a call waited for its batch to run, by method.", "method"),
		maxSize: d("batch_max_size", "A batched method's max_batch_size now, by method.", "method"),
		loaded:  d("multiplexed_models", "Models a multiplexed replica holds now."),
		loads:   d("multiplexed_model_loads_total", "Models a multiplexed replica loaded."),
		unloads: d("multiplexed_model_unloads_total", "Models a multiplexed replica unloaded to make room (or on stop)."),
		fails:   d("multiplexed_model_load_failures_total", "Model loads that failed (the loader returned an error or panicked)."),
		loadT:   d("multiplexed_model_load_seconds", "Time a model load took."),
	}
}

func (c *batchMuxCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.size, c.wait, c.maxSize, c.loaded, c.loads, c.unloads, c.fails, c.loadT} {
		ch <- d
	}
}

func (c *batchMuxCollector) Collect(ch chan<- prometheus.Metric) {
	for m, b := range c.r.batchers {
		st := b.stats.snapshot(b.get())
		if h, ok := promHistogram(c.size, st.Size, 1, m.name); ok {
			ch <- h
		}
		if h, ok := promHistogram(c.wait, st.WaitMS, 1e-3, m.name); ok {
			ch <- h
		}
		ch <- prometheus.MustNewConstMetric(c.maxSize, prometheus.GaugeValue, float64(st.MaxBatchSize), m.name)
	}
	if c.r.models == nil {
		return
	}
	st := c.r.models.stats()
	ch <- prometheus.MustNewConstMetric(c.loaded, prometheus.GaugeValue, float64(len(st.Loaded)))
	ch <- prometheus.MustNewConstMetric(c.loads, prometheus.CounterValue, float64(st.Loads))
	ch <- prometheus.MustNewConstMetric(c.unloads, prometheus.CounterValue, float64(st.Unloads))
	ch <- prometheus.MustNewConstMetric(c.fails, prometheus.CounterValue, float64(st.LoadFailures))
	if h, ok := promHistogram(c.loadT, st.LoadLatencyMS, 1e-3); ok {
		ch <- h
	}
}

// promHistogram turns a wire.Histogram (values scaled by scale) into a
// constant Prometheus histogram; ok is false before the first observation.
func promHistogram(d *prometheus.Desc, h wire.Histogram, scale float64, labels ...string) (prometheus.Metric, bool) {
	if h.Bounds == nil {
		return nil, false
	}
	buckets := make(map[float64]uint64, len(h.Bounds))
	var cum uint64
	for i, b := range h.Bounds {
		cum += uint64(h.Counts[i])
		buckets[b*scale] = cum
	}
	m, err := prometheus.NewConstHistogram(d, uint64(h.Count), h.Sum*scale, buckets, labels...)
	return m, err == nil
}
