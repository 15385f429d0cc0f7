package bench_test

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/natserve/natserve/client"
	"github.com/natserve/natserve/internal/testutil"
	"github.com/natserve/natserve/internal/wire"
	"github.com/natserve/natserve/worker"
)

// device stands for one accelerator: a forward pass costs 2 ms plus 0.1 ms
// per input, and one pass runs at a time.
type device struct{ mu sync.Mutex }

func (d *device) pass(n int) {
	d.mu.Lock()
	time.Sleep(2*time.Millisecond + time.Duration(n)*100*time.Microsecond)
	d.mu.Unlock()
}

type costModel struct{ dev *device }

// One runs a pass per call.
func (m costModel) One(x int) int { m.dev.pass(1); return x }

// Many runs one pass per batch (registered batched).
func (m costModel) Many(xs []int) []int { m.dev.pass(len(xs)); return xs }

// Adaptive is Many with BatchOptions.AdaptiveWait.
func (m costModel) Adaptive(xs []int) []int { m.dev.pass(len(xs)); return xs }

// BenchmarkBatching: calls/s and latency of a method costing 2 ms + 0.1 ms
// per item on one device, one call per pass (One) against batched (Many,
// max_batch_size 16, wait 10 ms; Adaptive: the same with AdaptiveWait),
// from 1, 16 and 64 concurrent callers.
//
//	go test ./bench -run '^$' -bench Batching -benchtime 2s
func BenchmarkBatching(b *testing.B) {
	br := testutil.Broker(b)
	url := br.ClientURL()
	var reg worker.Registry
	reg.Class("Cost", func() costModel { return costModel{dev: &device{}} },
		worker.Batched("Many", worker.BatchOptions{MaxBatchSize: 16, BatchWaitTimeout: 10 * time.Millisecond}),
		worker.Batched("Adaptive", worker.BatchOptions{MaxBatchSize: 16, BatchWaitTimeout: 10 * time.Millisecond, AdaptiveWait: true}))
	replica(b, url, &reg, "cost", "Cost", "", 64)
	cl := client.New(testutil.Conn(b, url))
	for _, method := range []string{"One", "Many", "Adaptive"} {
		for _, c := range []int{1, 16, 64} {
			b.Run(fmt.Sprintf("%s/c%d", method, c), func(b *testing.B) {
				h := cl.Handle("cost").Method(method)
				lat := make([]time.Duration, b.N)
				var next sync.Mutex
				i := 0
				start := time.Now()
				var wg sync.WaitGroup
				for w := 0; w < c; w++ {
					wg.Add(1)
					go func() {
						defer wg.Done()
						for {
							next.Lock()
							k := i
							i++
							next.Unlock()
							if k >= b.N {
								return
							}
							t0 := time.Now()
							if _, err := client.Call[int](context.Background(), h, k); err != nil {
								b.Error(err)
								return
							}
							lat[k] = time.Since(t0)
						}
					}()
				}
				wg.Wait()
				el := time.Since(start)
				sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
				b.ReportMetric(float64(b.N)/el.Seconds(), "calls/s")
				b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50_ms")
				b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99_ms")
			})
		}
	}
}

type benchMux struct{}

type benchModel struct{}

func (benchMux) LoadModel(id string) (benchModel, error) {
	time.Sleep(time.Millisecond)
	return benchModel{}, nil
}

func (benchMux) Call(x int) int { return x }

// BenchmarkMultiplexRouting: 2 replicas holding at most 2 models each, 4
// models, uniform and skewed traffic (c4); the hit rate and the model loads
// per 1,000 requests with natserve's routing (model subject, then a free
// slot, then any) against random routing (the deployment's queue group).
//
//	go test ./bench -run '^$' -bench MultiplexRouting -benchtime 2000x
func BenchmarkMultiplexRouting(b *testing.B) {
	models := []string{"m1", "m2", "m3", "m4"}
	uniform := func(r *rand.Rand) string { return models[r.IntN(4)] }
	skewed := func(r *rand.Rand) string { // 70%, 20%, 7%, 3%
		switch p := r.IntN(100); {
		case p < 70:
			return models[0]
		case p < 90:
			return models[1]
		case p < 97:
			return models[2]
		}
		return models[3]
	}
	for _, traffic := range []struct {
		name string
		pick func(*rand.Rand) string
	}{{"uniform", uniform}, {"skewed", skewed}} {
		for _, routing := range []string{"natserve", "random"} {
			b.Run(traffic.name+"/"+routing, func(b *testing.B) {
				br := testutil.Broker(b)
				url := br.ClientURL()
				var reg worker.Registry
				reg.Class("Mux", func() benchMux { return benchMux{} }, worker.Multiplexed("LoadModel", 2))
				ids := []string{replica(b, url, &reg, "mux", "Mux", "", 16), replica(b, url, &reg, "mux", "Mux", "", 16)}
				nc := testutil.Conn(b, url)
				cl := client.New(nc)
				var wg sync.WaitGroup
				per := b.N / 4
				b.ResetTimer()
				for w := 0; w < 4; w++ {
					wg.Add(1)
					go func() {
						defer wg.Done()
						r := rand.New(rand.NewPCG(uint64(w), 7))
						for i := 0; i < per; i++ {
							m := traffic.pick(r)
							var err error
							if routing == "natserve" {
								err = cl.Handle("mux").Options(client.MultiplexedModelID(m)).Call(context.Background(), nil, i)
							} else {
								msg := &nats.Msg{Subject: wire.DeploymentSubject("mux"), Header: nats.Header{wire.HeaderKind: {wire.KindCall}, wire.HeaderModelID: {m}}, Data: []byte{0x91, 0x01}}
								_, err = cl.RequestMsg(context.Background(), time.Time{}, "mux", "", msg)
							}
							if err != nil {
								b.Error(err)
								return
							}
						}
					}()
				}
				wg.Wait()
				b.StopTimer()
				loads := int64(0)
				for _, st := range statuses(b, nc, ids) {
					loads += st.Models.Loads
				}
				n := float64(per * 4)
				b.ReportMetric(float64(loads)*1000/n, "loads/1k")
				b.ReportMetric(1-float64(loads)/n, "cache_hit")
				if routing == "natserve" {
					b.ReportMetric(cl.Multiplex("mux").HitRate(), "route_hit")
				}
			})
		}
	}
}

// statuses pings the replicas and returns their statuses.
func statuses(b testing.TB, nc *nats.Conn, ids []string) []worker.ReplicaStatus {
	var out []worker.ReplicaStatus
	for _, id := range ids {
		m, err := nc.Request(wire.ReplicaSubject("mux", id, wire.VerbPing), nil, 2*time.Second)
		if err != nil {
			b.Fatal(err)
		}
		var st worker.ReplicaStatus
		if err := json.Unmarshal(m.Data, &st); err != nil || st.Models == nil {
			b.Fatalf("replica %s status %s: %v", id, m.Data, err)
		}
		out = append(out, st)
	}
	return out
}
