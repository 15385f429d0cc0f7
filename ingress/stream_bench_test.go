package ingress

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"iter"
	"log/slog"
	"net/http"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/natserve/natserve/client"
	"github.com/natserve/natserve/examples/stream"
	"github.com/natserve/natserve/internal/testutil"
	"github.com/natserve/natserve/internal/wire"
	"github.com/natserve/natserve/worker"
)

var quietLog = slog.New(slog.NewTextHandler(io.Discard, nil))

// streamItems is the length of each benchmark stream (Ray's published
// streaming numbers use 50 chunks a request).
const streamItems = 50

// startStreamReplica runs a replica of class in this process.
func startStreamReplica(b *testing.B, url string, reg *worker.Registry, deployment, class string, maxOngoing int) {
	r, err := worker.NewReplica(reg, worker.ReplicaSpec{Deployment: deployment, Class: class, Replica: "r" + deployment, NATSURL: url,
		MaxOngoingRequests: maxOngoing, InitArgs: json.RawMessage(`[]`), Creds: testutil.ReplicaCreds(b, url, deployment)}, quietLog)
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = r.Run(ctx); close(done) }()
	b.Cleanup(func() { cancel(); <-done })
	nc := testutil.Conn(b, url)
	testutil.Eventually(b, 10*time.Second, func() error {
		_, err := nc.Request(wire.ReplicaSubject(deployment, "r"+deployment, wire.VerbPing), nil, time.Second)
		return err
	})
}

// BenchmarkStream measures streams of 50 items through a handle
// (client.Stream) and over HTTP (SSE through the ingress) beside raw NATS
// (a responder publishing 50 messages to the request's reply subject, no
// sequence numbers, credit or end frame), at 1 and 64 concurrent streams,
// in the same run: the time to the first item and the time per later item
// (the rest of the stream divided by 49), each stream's mean, and their
// ratios to raw NATS. The replica and the ingress run in this process.
func BenchmarkStream(b *testing.B) {
	br := testutil.Broker(b)
	url := br.ClientURL()
	var reg worker.Registry
	stream.Register(&reg)
	startStreamReplica(b, url, &reg, "stream", "Stream", 1000)
	nc := testutil.Conn(b, url)
	sub, err := nc.QueueSubscribe("bench.rawstream", "q", func(m *nats.Msg) {
		go func() { // streams run side by side, as on the replica
			for i := 0; i < streamItems; i++ {
				_ = nc.Publish(m.Reply, []byte{byte(i)})
			}
		}()
	})
	if err != nil {
		b.Fatal(err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	g, err := New(Config{Addr: "127.0.0.1:0", NATSOptions: testutil.CredsOptions(b, url, "ingress"), NATSURL: url, Logger: quietLog})
	if err != nil {
		b.Fatal(err)
	}
	if err := g.Start(context.Background()); err != nil {
		b.Fatal(err)
	}
	defer g.Shutdown(context.Background())
	g.setRoutes(map[string]client.DeploymentSpec{"stream": {Name: "stream"}})
	cnc := testutil.Conn(b, url, testutil.CredsOptions(b, url, "client")...)
	cl := client.New(cnc)
	h := cl.Handle("stream")
	hc := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 128, DisableCompression: true}}
	target := "http://" + g.Addr() + "/stream?n=" + fmt.Sprint(streamItems) + "&interval_ms=0"

	rawc := testutil.Conn(b, url) // admin: the bench subject is in no role's allow-list
	raw := func() (time.Duration, time.Duration, error) {
		inbox := rawc.NewInbox()
		ch := make(chan *nats.Msg, streamItems)
		s, err := rawc.ChanSubscribe(inbox, ch)
		if err != nil {
			return 0, 0, err
		}
		defer func() { _ = s.Unsubscribe() }()
		start := time.Now()
		if err := rawc.PublishRequest("bench.rawstream", inbox, nil); err != nil {
			return 0, 0, err
		}
		var first time.Duration
		for i := 0; i < streamItems; i++ {
			select {
			case <-ch:
			case <-time.After(10 * time.Second):
				return 0, 0, fmt.Errorf("raw stream: item %d not received", i)
			}
			if i == 0 {
				first = time.Since(start)
			}
		}
		return first, time.Since(start), nil
	}
	handle := func() (time.Duration, time.Duration, error) {
		start := time.Now()
		var first time.Duration
		n := 0
		for v, err := range client.Stream[int](context.Background(), h, streamItems, 0) {
			if err != nil {
				return 0, 0, err
			}
			if v != n {
				return 0, 0, fmt.Errorf("handle stream: item %d is %d", n, v)
			}
			if n == 0 {
				first = time.Since(start)
			}
			n++
		}
		if n != streamItems {
			return 0, 0, fmt.Errorf("handle stream: %d items", n)
		}
		return first, time.Since(start), nil
	}
	overHTTP := func() (time.Duration, time.Duration, error) {
		req, _ := http.NewRequest("GET", target, nil)
		req.Header.Set("Accept", "text/event-stream")
		start := time.Now()
		resp, err := hc.Do(req)
		if err != nil {
			return 0, 0, err
		}
		defer resp.Body.Close()
		r := bufio.NewReader(resp.Body)
		var first time.Duration
		n := 0
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				return 0, 0, fmt.Errorf("SSE after %d items: %v", n, err)
			}
			if strings.HasPrefix(line, "data: ") && line != "data: \n" {
				if n == 0 {
					first = time.Since(start)
				}
				n++
			}
			if line == "event: end\n" {
				break
			}
		}
		if n != streamItems {
			return 0, 0, fmt.Errorf("SSE stream: %d items", n)
		}
		return first, time.Since(start), nil
	}
	for _, conc := range []int{1, 64} {
		b.Run(fmt.Sprintf("c%d", conc), func(b *testing.B) {
			measure := func(name string, f func() (time.Duration, time.Duration, error)) (ttfi, perItem float64) {
				var mu sync.Mutex
				var sumFirst, sumRest time.Duration
				var wg sync.WaitGroup
				var failed error
				next := make(chan struct{}, b.N)
				for i := 0; i < b.N; i++ {
					next <- struct{}{}
				}
				close(next)
				for w := 0; w < conc; w++ {
					wg.Add(1)
					go func() {
						defer wg.Done()
						for range next {
							first, total, err := f()
							mu.Lock()
							if err != nil && failed == nil {
								failed = fmt.Errorf("%s: %w", name, err)
							}
							sumFirst += first
							sumRest += total - first
							mu.Unlock()
						}
					}()
				}
				wg.Wait()
				if failed != nil {
					b.Fatal(failed)
				}
				ttfi = float64(sumFirst.Microseconds()) / float64(b.N)
				perItem = float64(sumRest.Nanoseconds()) / float64(b.N) / float64(streamItems-1) / 1000
				return ttfi, perItem
			}
			b.ResetTimer()
			rawFirst, rawItem := measure("raw", raw)
			hFirst, hItem := measure("handle", handle)
			httpFirst, httpItem := measure("http", overHTTP)
			b.ReportMetric(rawFirst, "raw-ttfi-µs")
			b.ReportMetric(hFirst, "handle-ttfi-µs")
			b.ReportMetric(httpFirst, "http-ttfi-µs")
			b.ReportMetric(rawItem, "raw-µs/item")
			b.ReportMetric(hItem, "handle-µs/item")
			b.ReportMetric(httpItem, "http-µs/item")
			b.ReportMetric(hFirst/rawFirst, "handle/raw-ttfi")
			b.ReportMetric(httpFirst/rawFirst, "http/raw-ttfi")
			b.ReportMetric(hItem/rawItem, "handle/raw-item")
			b.ReportMetric(httpItem/rawItem, "http/raw-item")
		})
	}
}

// Slow readers: the Big class streams 1 KiB items as fast as credit
// allows.
type bigStream struct{}

func (bigStream) Call(ctx context.Context, n int) iter.Seq[[]byte] {
	item := make([]byte, 1024)
	return func(yield func([]byte) bool) {
		for i := 0; i < n && ctx.Err() == nil; i++ {
			if !yield(item) {
				return
			}
		}
	}
}

// slowStreams, slowWindow: 1,000 streams, each granting 16 items.
const (
	slowStreams = 1000
	slowWindow  = 16
	slowItem    = 1024
	slowItems   = 64 // items a stream would send
	// slowBoundPerStream is the memory a stream may hold (caller, broker
	// and replica are all in this process): its window of items on the
	// two hops that buffer them (the broker's outbound buffer and the
	// caller's channel), 1 KiB of message overhead each, and 64 KiB for
	// the two goroutines' stacks and the subscriptions.
	slowBoundPerStream = 2*slowWindow*(slowItem+1024) + 64<<10
)

// BenchmarkSlowReaders opens 1,000 streams of 1 KiB items whose reader
// takes one item and then stops reading, while the replica would send
// slowItems items each; after a second it reports the memory the process
// (broker, replica and callers) grew by with every stream stalled, per
// stream, fails above slowBoundPerStream, and closes the streams. Run it
// once: -benchtime 1x. (Completeness and order of slow streams are tested
// in worker's TestStream*.)
func BenchmarkSlowReaders(b *testing.B) {
	br := testutil.Broker(b)
	url := br.ClientURL()
	var reg worker.Registry
	reg.Class("Big", func() bigStream { return bigStream{} })
	startStreamReplica(b, url, &reg, "big", "Big", slowStreams)
	cl := client.New(testutil.Conn(b, url, testutil.CredsOptions(b, url, "client")...))
	args, err := wire.MarshalArgs([]any{slowItems})
	if err != nil {
		b.Fatal(err)
	}
	for i := 0; i < b.N; i++ {
		runtime.GC()
		var before runtime.MemStats
		runtime.ReadMemStats(&before)
		var opened, drained sync.WaitGroup
		release := make(chan struct{})
		errs := make(chan error, slowStreams)
		for s := 0; s < slowStreams; s++ {
			opened.Add(1)
			drained.Add(1)
			go func() {
				defer drained.Done()
				st, err := cl.OpenStream(context.Background(), "big", "", &nats.Msg{Subject: wire.DeploymentSubject("big"), Data: args,
					Header: nats.Header{wire.HeaderKind: {wire.KindCall}}}, client.WithStreamWindow(slowWindow), client.WithItemTimeout(time.Minute))
				if err != nil {
					errs <- err
					opened.Done()
					return
				}
				defer st.Close()
				_, err = st.Next()
				opened.Done()
				if err != nil {
					errs <- err
					return
				}
				<-release // a slow reader, then gone (st.Close cancels the stream)
			}()
		}
		opened.Wait()
		time.Sleep(time.Second) // every replica fills its window and waits
		runtime.GC()
		var stalled runtime.MemStats
		runtime.ReadMemStats(&stalled)
		close(release)
		drained.Wait()
		close(errs)
		for err := range errs {
			b.Fatal(err)
		}
		grew := int64(stalled.HeapInuse+stalled.StackInuse) - int64(before.HeapInuse+before.StackInuse)
		per := float64(grew) / slowStreams
		b.ReportMetric(per/1024, "KiB/stream")
		b.ReportMetric(float64(slowBoundPerStream)/1024, "bound-KiB/stream")
		b.ReportMetric(float64(grew)/(1<<20), "MiB-total")
		if per > slowBoundPerStream {
			b.Fatalf("%d stalled streams hold %.0f B each, above the bound of %d", slowStreams, per, slowBoundPerStream)
		}
	}
}
