package bench_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/natserve/natserve/client"
	"github.com/natserve/natserve/examples/hello"
	"github.com/natserve/natserve/internal/testutil"
	"github.com/natserve/natserve/internal/wire"
	"github.com/natserve/natserve/worker"
)

func TestMain(m *testing.M) { testutil.Main(m) }

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// replica runs a replica of class in this process (the benchmark measures
// the protocol, not process isolation), waits until it serves and returns
// its id.
func replica(b testing.TB, url string, reg *worker.Registry, deployment, class string, initArgs string, maxOngoing int) string {
	b.Helper()
	replicaSeq++
	spec := worker.ReplicaSpec{Deployment: deployment, Class: class, Replica: "r" + strings.ReplaceAll(deployment, "_", "x") + fmt.Sprint(time.Now().UnixNano()%1e6) + "n" + fmt.Sprint(replicaSeq),
		NATSURL: url, MaxOngoingRequests: maxOngoing, InitArgs: json.RawMessage(initArgs), Creds: testutil.ReplicaCreds(b, url, deployment)}
	r, err := worker.NewReplica(reg, spec, quiet)
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = r.Run(ctx); close(done) }()
	b.Cleanup(func() { cancel(); <-done })
	nc := testutil.Conn(b, url)
	testutil.Eventually(b, 10*time.Second, func() error {
		_, err := nc.Request(wire.ReplicaSubject(deployment, spec.Replica, wire.VerbPing), nil, time.Second)
		return err
	})
	return spec.Replica
}

var replicaSeq int // benchmarks start replicas from one goroutine

// BenchmarkHandleVsRawNATS compares a handle call to the Hello deployment
// with a raw NATS request to a responder doing the same work: the cost
// natserve's protocol adds (headers, envelope, admission, dispatch).
func BenchmarkHandleVsRawNATS(b *testing.B) {
	br := testutil.Broker(b)
	url := br.ClientURL()
	var reg worker.Registry
	hello.Register(&reg)
	replica(b, url, &reg, "hello", "Hello", "", 1000)
	nc := testutil.Conn(b, url)
	sub, _ := nc.QueueSubscribe("bench.raw", "q", func(m *nats.Msg) { _ = m.Respond(hello.Payload(20)) })
	defer sub.Unsubscribe()
	cnc := testutil.Conn(b, url)
	cl := client.New(cnc)
	h := cl.Handle("hello")
	ctx := context.Background()
	run := func(name string, f func() error) time.Duration {
		start := time.Now()
		for i := 0; i < b.N; i++ {
			if err := f(); err != nil {
				b.Fatalf("%s: %v", name, err)
			}
		}
		return time.Since(start)
	}
	b.ReportAllocs()
	b.ResetTimer()
	raw := run("raw", func() error { _, err := cnc.Request("bench.raw", []byte("20"), 5*time.Second); return err })
	var out []byte
	handle := run("handle", func() error { return h.Call(ctx, &out, 20) })
	b.ReportMetric(float64(raw.Nanoseconds())/float64(b.N), "raw-ns/op")
	b.ReportMetric(float64(handle.Nanoseconds())/float64(b.N), "handle-ns/op")
	b.ReportMetric(float64(raw)/float64(handle), "handle/raw-throughput")
}

// BenchmarkGraphChain10 calls a graph of 10 chained function nodes and
// reports the latency each hop adds, next to one direct call.
func BenchmarkGraphChain10(b *testing.B) {
	br := testutil.Broker(b)
	url := br.ClientURL()
	var reg worker.Registry
	reg.Func("inc", func(x int) int { return x + 1 })
	g := client.NewGraph("chain")
	prev := g.Input()
	for i := 0; i < 10; i++ {
		prev = g.Call(fmt.Sprintf("n%d", i), "inc", prev)
	}
	spec, err := g.Driver(prev)
	if err != nil {
		b.Fatal(err)
	}
	for _, d := range spec.Deployments() {
		replica(b, url, &reg, d.Name, "inc", "", 100)
	}
	cl := client.New(testutil.Conn(b, url))
	ctx := context.Background()
	input := []byte{0x01}
	single := cl.Handle("chain_n0")
	b.ResetTimer()
	start := time.Now()
	for i := 0; i < b.N; i++ {
		if _, err := client.Call[int](ctx, single, 1); err != nil {
			b.Fatal(err)
		}
	}
	one := time.Since(start)
	start = time.Now()
	for i := 0; i < b.N; i++ {
		out, err := cl.RunGraph(ctx, &spec, input)
		if err != nil || len(out) != 1 || out[0] != 11 {
			b.Fatalf("chain: % x %v", out, err)
		}
	}
	chain := time.Since(start)
	b.ReportMetric(float64(one.Microseconds())/float64(b.N), "direct-µs/call")
	b.ReportMetric(float64(chain.Microseconds())/float64(b.N), "chain10-µs/call")
	b.ReportMetric(float64(chain.Microseconds())/float64(b.N)/10, "µs/hop")
}
