// Command httpload is a closed-loop HTTP load generator (fasthttp client,
// one goroutine per connection) for machines without wrk: it prints one
// JSON line with requests per second, p50 and p99 in microseconds and
// errors. The harness uses it when wrk is not installed.
//
//	httpload -url http://127.0.0.1:8000/hello1 -c 64 -d 5s
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"runtime"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/valyala/fasthttp"
)

func main() {
	url := flag.String("url", "", "URL to GET")
	conc := flag.Int("c", 64, "connections (each with one request in flight)")
	d := flag.Duration("d", 5*time.Second, "duration")
	procs := flag.Int("procs", 1, "GOMAXPROCS of the load generator (wrk -t1 uses one thread)")
	flag.Parse()
	if *url == "" {
		fmt.Fprintln(os.Stderr, "httpload: -url is required")
		os.Exit(2)
	}
	runtime.GOMAXPROCS(*procs)
	hc := &fasthttp.Client{MaxConnsPerHost: *conc, ReadTimeout: 10 * time.Second, WriteTimeout: 10 * time.Second}
	var errs atomic.Int64
	lats := make([][]time.Duration, *conc)
	stop := time.Now().Add(*d)
	var wg sync.WaitGroup
	for i := 0; i < *conc; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
			req.SetRequestURI(*url)
			l := make([]time.Duration, 0, 1<<16)
			for {
				t := time.Now()
				if t.After(stop) {
					break
				}
				if err := hc.Do(req, resp); err != nil || resp.StatusCode() != 200 {
					errs.Add(1)
				}
				l = append(l, time.Since(t))
			}
			lats[i] = l
		}()
	}
	wg.Wait()
	var all []time.Duration
	for _, l := range lats {
		all = append(all, l...)
	}
	sort.Slice(all, func(i, j int) bool { return all[i] < all[j] })
	out := map[string]float64{"rps": float64(len(all)) / d.Seconds(), "errors": float64(errs.Load()), "requests": float64(len(all))}
	if len(all) > 0 {
		out["p50_us"] = float64(all[len(all)/2].Microseconds())
		out["p99_us"] = float64(all[len(all)*99/100].Microseconds())
	}
	_ = json.NewEncoder(os.Stdout).Encode(out)
}
