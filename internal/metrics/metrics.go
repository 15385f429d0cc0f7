// Package metrics holds what natserve's Prometheus exposition shares: the
// names' namespace, the latency buckets, bounded label values (HTTP method
// and status), a collector of a NATS connection's state, and the /metrics
// HTTP endpoint with its bearer token. Each component (ingress, replica,
// node agent, controller) defines its own metrics beside its code and
// registers them on a prometheus.Registerer it is given; data leaves through
// the endpoint (Server) as Prometheus text or protobuf exposition.
package metrics

import (
	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
)

// Namespace prefixes every natserve metric name.
const Namespace = "natserve"

// LatencyBuckets are the upper bounds, in seconds, of every latency
// histogram natserve exports (ingress, replica processing, handle calls):
// 0.5 ms to 60 s, the default request deadline. The dashboard merges
// histograms of many instances by adding bucket counts, so they must share
// these bounds.
var LatencyBuckets = []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60}

// Methods are the values of the `method` label: the standard HTTP methods,
// then OTHER for anything else, so that a client cannot grow the label set.
var Methods = [...]string{"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH", "OTHER"}

// NumMethods is len(Methods).
const NumMethods = len(Methods)

// MethodIndex returns the index in Methods of an HTTP method (OTHER's for a
// non-standard one). It does not allocate.
func MethodIndex(m []byte) int {
	for i := 0; i < NumMethods-1; i++ {
		if string(m) == Methods[i] {
			return i
		}
	}
	return NumMethods - 1
}

// natsCollector reports one NATS connection's state at scrape time.
type natsCollector struct {
	nc                          *nats.Conn
	connected, reconnects, msgs *prometheus.Desc
	bytes                       *prometheus.Desc
}

// NATSCollector returns a collector of nc's state: natserve_nats_connected
// (1 or 0), natserve_nats_reconnects_total and the messages and bytes in
// and out, labelled conn=name (ingress, controller, agent, replica).
func NATSCollector(nc *nats.Conn, name string) prometheus.Collector {
	l := prometheus.Labels{"conn": name}
	return &natsCollector{
		nc:         nc,
		connected:  prometheus.NewDesc(Namespace+"_nats_connected", "Whether the NATS connection is up (1) or not (0).", nil, l),
		reconnects: prometheus.NewDesc(Namespace+"_nats_reconnects_total", "Reconnections of the NATS connection.", nil, l),
		msgs:       prometheus.NewDesc(Namespace+"_nats_messages_total", "Messages over the NATS connection, by direction.", []string{"direction"}, l),
		bytes:      prometheus.NewDesc(Namespace+"_nats_bytes_total", "Payload bytes over the NATS connection, by direction.", []string{"direction"}, l),
	}
}

func (c *natsCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.connected
	ch <- c.reconnects
	ch <- c.msgs
	ch <- c.bytes
}

func (c *natsCollector) Collect(ch chan<- prometheus.Metric) {
	up := 0.0
	if c.nc.IsConnected() {
		up = 1
	}
	s := c.nc.Stats()
	ch <- prometheus.MustNewConstMetric(c.connected, prometheus.GaugeValue, up)
	ch <- prometheus.MustNewConstMetric(c.reconnects, prometheus.CounterValue, float64(s.Reconnects))
	ch <- prometheus.MustNewConstMetric(c.msgs, prometheus.CounterValue, float64(s.InMsgs), "in")
	ch <- prometheus.MustNewConstMetric(c.msgs, prometheus.CounterValue, float64(s.OutMsgs), "out")
	ch <- prometheus.MustNewConstMetric(c.bytes, prometheus.CounterValue, float64(s.InBytes), "in")
	ch <- prometheus.MustNewConstMetric(c.bytes, prometheus.CounterValue, float64(s.OutBytes), "out")
}
