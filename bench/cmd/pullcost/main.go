// Command pullcost measures what idle replicas' stored-request pulls cost
// the broker in messages (issue 22): N deployments, each with its request
// stream and consumer as the controller makes them, and one idle replica
// each pulling as worker/durable.go does, on an embedded broker. It counts
// every message the broker carries (a ">" subscriber, as bench/scale's
// -subjects does) over a window and reports the rate at the real pull
// length and heartbeat.
//
// Time is compressed by -scale (a 10 min pull runs as 30 s at -scale 20):
// the messages per pull cycle do not depend on its length, so the real
// rate is the measured one divided by the scale. Modes:
//
//	old: each cycle looks the consumer up, pulls what is stored without
//	     waiting, then waits in one long pull (worker/durable.go before
//	     branch pulls: 2 min, heartbeat 50 s)
//	new: after the first cycle, only the long pull (an expiry with nothing
//	     means nothing was stored)
//
//	go run ./bench/cmd/pullcost -n 1000 -mode old -pull 2m -beat 50s
//	go run ./bench/cmd/pullcost -n 1000 -mode new -pull 10m -beat 4m
package main

import (
	"context"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/natserve/natserve/broker"
)

var (
	n     = flag.Int("n", 1000, "deployments, one idle replica each")
	mode  = flag.String("mode", "new", "old or new (see the package comment)")
	pull  = flag.Duration("pull", 10*time.Minute, "the long pull's expiry (real time)")
	beat  = flag.Duration("beat", 4*time.Minute, "the server's idle heartbeat on it (real time; 0: none)")
	scale = flag.Float64("scale", 20, "time compression")
	conns = flag.Int("conns", 0, "connections (0: one per replica)")
)

func main() {
	flag.Parse()
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "pullcost:", err)
		os.Exit(1)
	}
}

func run() error {
	dir, err := os.MkdirTemp("", "pullcost-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	b, err := broker.New(broker.Config{Port: -1, DataDir: dir})
	if err != nil {
		return err
	}
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	if err := b.Start(ctx); err != nil {
		return err
	}
	defer b.Shutdown(context.Background())
	admin, err := nats.Connect(b.ClientURL())
	if err != nil {
		return err
	}
	defer admin.Close()
	js, _ := jetstream.New(admin)
	for i := 0; i < *n; i++ {
		dep := fmt.Sprintf("d%04d", i)
		if _, err := js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{Name: "natserve_req_" + dep, Subjects: []string{"natserve.async." + dep},
			Storage: jetstream.FileStorage, Retention: jetstream.WorkQueuePolicy, MaxMsgs: 100000, Discard: jetstream.DiscardNew,
			MaxAge: 24 * time.Hour, Duplicates: 2 * time.Minute}); err != nil {
			return err
		}
		if _, err := js.CreateOrUpdateConsumer(ctx, "natserve_req_"+dep, jetstream.ConsumerConfig{
			Durable: "replicas", AckPolicy: jetstream.AckExplicitPolicy, AckWait: 30 * time.Second,
			MaxDeliver: -1, MaxAckPending: 10000, MaxWaiting: 4096,
			Metadata: map[string]string{"natserve_max_attempts": "3"}}); err != nil {
			return err
		}
	}
	p, hb := time.Duration(float64(*pull) / *scale), time.Duration(float64(*beat) / *scale)
	nc := *conns
	if nc <= 0 || nc > *n {
		nc = *n
	}
	cs := make([]jetstream.JetStream, nc)
	for i := range cs {
		c, err := nats.Connect(b.ClientURL())
		if err != nil {
			return err
		}
		defer c.Close()
		cs[i], _ = jetstream.New(c)
	}
	var pulls, errs atomic.Int64
	var wg sync.WaitGroup
	defer wg.Wait()
	for i := 0; i < *n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Replicas start at different times: spread the first pulls.
			select {
			case <-ctx.Done():
				return
			case <-time.After(rand.N(p)):
			}
			replica(ctx, cs[i%nc], fmt.Sprintf("natserve_req_d%04d", i), p, hb, &pulls, &errs)
		}()
	}
	// Warm up for one cycle, then count for three.
	time.Sleep(p + time.Second)
	var mu sync.Mutex
	bySubject := map[string]int{}
	total := 0
	sub, err := admin.Subscribe(">", func(m *nats.Msg) {
		t := strings.SplitN(m.Subject, ".", 5)
		k := strings.Join(t[:min(4, len(t))], ".")
		if t[0] == "_INBOX" {
			k = "_INBOX (replies, statuses, heartbeats)"
		}
		mu.Lock()
		bySubject[k]++
		total++
		mu.Unlock()
	})
	if err != nil {
		return err
	}
	v0, _ := b.Server().Varz(nil)
	window := 3 * p
	time.Sleep(window)
	_ = sub.Unsubscribe()
	v1, _ := b.Server().Varz(nil)
	stop()
	mu.Lock()
	defer mu.Unlock()
	real := func(c int) float64 { return float64(c) / window.Seconds() / *scale }
	fmt.Printf("pullcost: %d idle replicas, mode %s, pull %v, heartbeat %v (run %v / %v, scale %g), window %v (real %v)\n",
		*n, *mode, *pull, *beat, p, hb, *scale, window, time.Duration(float64(window)**scale))
	fmt.Printf("  messages the broker carries: %.2f/s at real time (%.3f per replica per pull cycle); server in/out msgs: %.2f / %.2f per s real (in includes the counter's own)\n",
		real(total), float64(total)/float64(*n)/3, real(int(v1.InMsgs-v0.InMsgs)), real(int(v1.OutMsgs-v0.OutMsgs)))
	keys := make([]string, 0, len(bySubject))
	for k := range bySubject {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool { return bySubject[keys[i]] > bySubject[keys[j]] })
	for _, k := range keys {
		fmt.Printf("  %8.2f/s  %s\n", real(bySubject[k]), k)
	}
	fmt.Printf("  pull errors: %d\n", errs.Load())
	return nil
}

// replica pulls as an idle replica does in mode *mode.
func replica(ctx context.Context, js jetstream.JetStream, stream string, p, hb time.Duration, pulls, errs *atomic.Int64) {
	idle := false
	var cons jetstream.Consumer
	for ctx.Err() == nil {
		if cons == nil || *mode == "old" {
			c, err := js.Consumer(ctx, stream, "replicas")
			if err != nil {
				errs.Add(1)
				time.Sleep(time.Second)
				continue
			}
			cons = c
		}
		if !idle || *mode == "old" {
			if batch, err := cons.FetchNoWait(1); err == nil {
				for range batch.Messages() {
				}
			}
		}
		fctx, cancel := context.WithTimeout(ctx, p)
		opts := []jetstream.FetchOpt{jetstream.FetchContext(fctx), jetstream.FetchHeartbeat(hb)}
		batch, err := cons.Fetch(1, opts...)
		if err == nil {
			for range batch.Messages() {
			}
			err = batch.Error()
		}
		cancel()
		pulls.Add(1)
		idle = err == nil
		if err != nil && ctx.Err() == nil {
			errs.Add(1)
		}
	}
}
