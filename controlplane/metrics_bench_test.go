package controlplane

import (
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/natserve/natserve/internal/wire"
)

// BenchmarkMetricPath is the controller's side of autoscaling with 1,000
// replicas (10 deployments of 100): each replica reports once a second (idle
// ones every 5 s), and each control-loop pass aggregates every deployment
// over a 30 s look-back window. One op is one simulated second: 1,000
// reports plus 10 passes (the loop runs every 100 ms). It reports the CPU
// that second costs and the messages per second at the controller.
func BenchmarkMetricPath(b *testing.B) {
	m := newMetrics()
	const deployments, perDep = 10, 100
	msgs := make([]*nats.Msg, 0, deployments*perDep)
	live := make([]map[string]bool, deployments)
	for d := 0; d < deployments; d++ {
		live[d] = map[string]bool{}
		for r := 0; r < perDep; r++ {
			id := fmt.Sprintf("r%d_%d", d, r)
			live[d][id] = true
			data, _ := json.Marshal(wire.LoadReport{Replica: id, Deployment: fmt.Sprintf("d%d", d), Ongoing: float64(r % 7), WindowMS: 1000})
			msgs = append(msgs, &nats.Msg{Data: data})
		}
	}
	// A full window of history first.
	for s := 0; s < 30; s++ {
		for _, msg := range msgs {
			m.onLoad(msg)
		}
	}
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	for i := 0; i < b.N; i++ {
		for _, msg := range msgs {
			m.onLoad(msg)
		}
		for pass := 0; pass < 10; pass++ {
			for d := 0; d < deployments; d++ {
				_ = m.total(fmt.Sprintf("d%d", d), live[d], 30*time.Second)
			}
		}
	}
	perSecond := time.Since(start) / time.Duration(b.N)
	b.ReportMetric(float64(len(msgs)), "msgs/s")
	b.ReportMetric(100*perSecond.Seconds(), "cpu-%")
}
