// Command callload measures calls from one process against a running
// natserve: natserve handle calls (H) or raw NATS request-reply (C) from
// -c goroutines over one connection, for -d, and prints requests/s. C uses
// a stock nats.go connection, H natserve's (client.Connect's connection,
// coalescing writes), unless -coalesce says otherwise for either:
//
//	natserve up -f serve.yaml &                 # a Hello deployment, hello
//	natsreplica -subject bench.raw1 &           # C's responder ($NATSERVE_CREDS)
//	callload -which H -deployment hello
//	callload -which C -coalesce=true            # C with H's connection
//
// The harness (bench/harness) measures C and H in its interleave; this is
// for profiling one of them (-cpuprofile) or trying a connection option.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"os"
	"runtime/pprof"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/natserve/natserve/client"
	"github.com/natserve/natserve/internal/natsconn"
)

func main() {
	url := flag.String("nats", "nats://127.0.0.1:4222", "NATS URL")
	creds := flag.String("creds", os.Getenv(client.CredsEnv), "credentials file (default $"+client.CredsEnv+")")
	which := flag.String("which", "H", "H (handle calls) or C (raw NATS request-reply)")
	deployment := flag.String("deployment", "hello", "H's deployment (a Hello class: the argument is the reply's size)")
	subject := flag.String("subject", "bench.raw1", "C's subject")
	conc := flag.Int("c", 64, "calls in flight")
	size := flag.Int("size", 20, "reply size in bytes")
	d := flag.Duration("d", 10*time.Second, "duration")
	coalesce := flag.String("coalesce", "", "true or false: coalescing writes on the connection (default: true for H, false for C)")
	cpuprofile := flag.String("cpuprofile", "", "write this process's CPU profile here")
	flag.Parse()
	co := *which == "H"
	if *coalesce != "" {
		v, err := strconv.ParseBool(*coalesce)
		if err != nil {
			log.Fatalf("-coalesce %q: true or false", *coalesce)
		}
		co = v
	}
	opts := []nats.Option{}
	if *creds != "" {
		opts = append(opts, nats.UserCredentials(*creds))
	}
	if co {
		opts = append(opts, natsconn.Coalescing(nats.DefaultTimeout))
	}
	nc, err := nats.Connect(*url, opts...)
	if err != nil {
		log.Fatal(err)
	}
	defer nc.Close()
	h := client.New(nc).Handle(*deployment)
	payload := []byte(strconv.Itoa(*size))
	if *cpuprofile != "" {
		f, err := os.Create(*cpuprofile)
		if err != nil {
			log.Fatal(err)
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			log.Fatal(err)
		}
		defer pprof.StopCPUProfile()
	}
	var count, errs atomic.Int64
	ctx, cancel := context.WithTimeout(context.Background(), *d)
	defer cancel()
	var wg sync.WaitGroup
	start := time.Now()
	for g := 0; g < *conc; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				var err error
				if *which == "C" {
					_, err = nc.Request(*subject, payload, 10*time.Second)
				} else {
					var out []byte
					err = h.Call(context.Background(), &out, *size)
				}
				if err != nil {
					errs.Add(1)
					continue
				}
				count.Add(1)
			}
		}()
	}
	wg.Wait()
	fmt.Printf("%s (coalescing %v): %.0f calls/s, %d errors\n", *which, co, float64(count.Load())/time.Since(start).Seconds(), errs.Load())
}
