package metrics

import (
	"github.com/natserve/natserve/client"
	"github.com/prometheus/client_golang/prometheus"
)

// MultiplexCollector exports how a client routed calls for multiplexed
// models, per deployment: to a replica holding the model (route="model", a
// hit), to one with a free model slot (route="free_slot") or to any
// (route="any", which evicts a model), as
// natserve_<subsystem>_multiplexed_routes_total; label names the
// deployment's label ("callee" for handle calls from a replica, whose
// metrics carry their own deployment label).
func MultiplexCollector(subsystem, label string, cl *client.Client) prometheus.Collector {
	return &muxCollector{cl: cl, desc: prometheus.NewDesc(Namespace+"_"+subsystem+"_multiplexed_routes_total",
		"Calls for multiplexed models by deployment and route: model (a replica holding it: a hit), free_slot, any (a miss that evicts).",
		[]string{label, "route"}, nil)}
}

type muxCollector struct {
	cl   *client.Client
	desc *prometheus.Desc
}

func (c *muxCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c *muxCollector) Collect(ch chan<- prometheus.Metric) {
	c.cl.RangeMultiplex(func(dep string, s *client.MultiplexStats) {
		for _, r := range []struct {
			route string
			n     int64
		}{{"model", s.Hits.Load()}, {"free_slot", s.FreeSlot.Load()}, {"any", s.Fallback.Load()}} {
			ch <- prometheus.MustNewConstMetric(c.desc, prometheus.CounterValue, float64(r.n), dep, r.route)
		}
	})
}
