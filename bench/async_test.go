package bench_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/natserve/natserve/client"
	"github.com/natserve/natserve/controlplane"
	"github.com/natserve/natserve/internal/store"
	"github.com/natserve/natserve/internal/testutil"
	"github.com/natserve/natserve/internal/wire"
	"github.com/natserve/natserve/worker"
)

type trivial struct{}

// Add is the trivial request.
func (trivial) Add(a, b int) int { return a + b }

// TestStoredRequestsBench measures stored (asynchronous) requests on one
// machine: submissions per second at c64 (accepted and durable: stored in
// JetStream and recorded before Submit returns), the end-to-end latency of
// a trivial request submitted and awaited against a synchronous call (the
// baseline), and how fast 1, 2 and 4 replicas drain a backlog. An
// in-process controller and replicas on an embedded broker (file storage).
//
//	NATSERVE_BENCH_ASYNC=1 go test ./bench -run StoredRequestsBench -v
func TestStoredRequestsBench(t *testing.T) {
	if os.Getenv("NATSERVE_BENCH_ASYNC") == "" {
		t.Skip("set NATSERVE_BENCH_ASYNC=1 to run")
	}
	br := testutil.Broker(t)
	url := br.ClientURL()
	ctl, err := controlplane.New(controlplane.Config{NATSURL: url, Logger: quiet, NATSOptions: testutil.CredsOptions(t, url, "controller")})
	if err != nil {
		t.Fatal(err)
	}
	cctx, stop := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = ctl.Run(cctx); close(done) }()
	t.Cleanup(func() { stop(); <-done })
	nc := testutil.Conn(t, url)
	js, _ := jetstream.New(nc)
	kv, err := store.OpenRetry(context.Background(), js, store.Config{}, quiet)
	if err != nil {
		t.Fatal(err)
	}
	// Specs go straight into the store: no node agent runs here, the
	// replicas are this process's.
	deploy := func(name string) {
		spec := client.DeploymentSpec{Name: name, Class: "Trivial", MaxOngoingRequests: 8}
		if err := spec.Normalize(); err != nil {
			t.Fatal(err)
		}
		if _, err := store.Put(context.Background(), kv.Deployments, name, &spec); err != nil {
			t.Fatal(err)
		}
		// Made on the first stored request otherwise (a client-role
		// identity may ask, as Submit does).
		if err := client.New(nc, client.WithTimeout(30*time.Second)).OpenRequestStream(context.Background(), name); err != nil {
			t.Fatal(err)
		}
		testutil.Eventually(t, 20*time.Second, func() error {
			_, err := js.Consumer(context.Background(), wire.AsyncStream(name), wire.AsyncConsumer)
			return err
		})
	}
	var reg worker.Registry
	reg.Class("Trivial", func() trivial { return trivial{} })
	// The caller is a client-role identity, as an application's would be.
	cl := client.New(testutil.Conn(t, url, testutil.CredsOptions(t, url, wire.RoleClient)...), client.WithTimeout(30*time.Second))

	// NATSERVE_BENCH_ASYNC=drain measures the drain alone, with the
	// replica counts of NATSERVE_BENCH_ASYNC_REPLICAS (default 1,2,4).
	drainOnly := os.Getenv("NATSERVE_BENCH_ASYNC") == "drain"
	counts := []int{1, 2, 4}
	if v := os.Getenv("NATSERVE_BENCH_ASYNC_REPLICAS"); v != "" {
		counts = nil
		for _, f := range strings.Split(v, ",") {
			n, err := strconv.Atoi(strings.TrimSpace(f))
			if err != nil || n < 1 {
				t.Fatalf("NATSERVE_BENCH_ASYNC_REPLICAS=%q: want counts like 1,2,4", v)
			}
			counts = append(counts, n)
		}
	}

	// Submissions per second at c64, nothing consuming.
	if !drainOnly {
		submissionsAndLatency(t, cl, js, deploy, url, &reg)
	}
	drain(t, cl, js, deploy, url, &reg, counts)
}

func submissionsAndLatency(t *testing.T, cl *client.Client, js jetstream.JetStream, deploy func(string), url string, reg *worker.Registry) {
	ctx := context.Background()
	deploy("sub")
	h := cl.Handle("sub").Method("Add")
	var n atomic.Int64
	var wg sync.WaitGroup
	end := time.Now().Add(3 * time.Second)
	start := time.Now()
	cpu0 := cpuTime()
	for w := 0; w < 64; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(end) {
				if _, err := h.Submit(ctx, 1, 2); err != nil {
					t.Error(err)
					return
				}
				n.Add(1)
			}
		}()
	}
	wg.Wait()
	t.Logf("submissions at c64: %d in %v: %.0f/s, %.0f µs CPU each (broker, controller and client: this process) (each stored in the request stream and recorded in KV)",
		n.Load(), time.Since(start).Round(time.Millisecond), float64(n.Load())/time.Since(start).Seconds(), float64((cpuTime()-cpu0).Microseconds())/float64(n.Load()))

	// Latency of one trivial request, one at a time: sync vs async.
	deploy("lat")
	replica(t, url, reg, "lat", "Trivial", "", 8)
	hl := cl.Handle("lat").Method("Add")
	const rounds = 200
	syncLat, asyncLat := make([]time.Duration, rounds), make([]time.Duration, rounds)
	for i := 0; i < rounds; i++ {
		t0 := time.Now()
		if _, err := client.Call[int](ctx, hl, 1, 2); err != nil {
			t.Fatal(err)
		}
		syncLat[i] = time.Since(t0)
		t0 = time.Now()
		id, err := hl.Submit(ctx, 1, 2)
		if err != nil {
			t.Fatal(err)
		}
		if st, err := cl.Wait(ctx, id); err != nil || st.Status != wire.AsyncSucceeded {
			t.Fatalf("%+v %v", st, err)
		}
		asyncLat[i] = time.Since(t0)
	}
	pct := func(d []time.Duration, p float64) time.Duration {
		s := append([]time.Duration(nil), d...)
		sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
		return s[int(p*float64(len(s)-1))].Round(10 * time.Microsecond)
	}
	t.Logf("trivial request end to end (%d, one at a time): sync p50 %v p99 %v; async (Submit + Wait) p50 %v p99 %v",
		rounds, pct(syncLat, .5), pct(syncLat, .99), pct(asyncLat, .5), pct(asyncLat, .99))

}

// drain: a backlog of 3,000 with no replica, then 1, 2 or 4 replicas
// (max_ongoing_requests 8: 4 stored requests at a time each).
func drain(t *testing.T, cl *client.Client, js jetstream.JetStream, deploy func(string), url string, reg *worker.Registry, counts []int) {
	ctx := context.Background()
	for i, reps := range counts {
		name := fmt.Sprintf("drain%d-%d", reps, i)
		deploy(name)
		hd := cl.Handle(name).Method("Add")
		const backlog = 3000
		var fill sync.WaitGroup
		for w := 0; w < 32; w++ {
			fill.Add(1)
			go func() {
				defer fill.Done()
				for i := 0; i < backlog/32; i++ {
					if _, err := hd.Submit(ctx, 1, 2); err != nil {
						t.Error(err)
						return
					}
				}
			}()
		}
		fill.Wait()
		cons, _ := js.Consumer(ctx, wire.AsyncStream(name), wire.AsyncConsumer)
		t0, cpu0 := time.Now(), cpuTime()
		for i := 0; i < reps; i++ {
			replica(t, url, reg, name, "Trivial", "", 8)
		}
		for {
			info, err := cons.Info(ctx)
			if err == nil && info.NumPending+uint64(info.NumAckPending) == 0 {
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
		el, cpu := time.Since(t0), cpuTime()-cpu0
		t.Logf("drain of %d stored requests by %d replica(s): %v, %.0f/s (replica start included), %.0f µs CPU per request (broker, controller's fold, replicas: this process)",
			backlog/32*32, reps, el.Round(time.Millisecond), float64(backlog/32*32)/el.Seconds(), float64(cpu.Microseconds())/float64(backlog/32*32))
	}
	_ = json.Marshal
}

// cpuTime is the CPU time (user + system) this process has used.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
