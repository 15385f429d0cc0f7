// Command streamcost measures what stored requests' JetStream layout costs
// the broker at N deployments (issue 22): one work-queue stream and
// consumer per deployment (the layout of issue 21) against one shared
// stream with a consumer per deployment filtered on its subject. It starts
// an embedded broker per layout in a child process (so the CPU and memory
// are that process's alone), creates the streams and consumers as the
// controller does, keeps -waiters pull requests waiting per consumer as
// idle replicas do, and reports: time to create, idle CPU over -idle, PSS,
// files and bytes on disk, and the time of one StreamNames listing (the
// controller's clean-up walk).
//
//	go run ./bench/cmd/streamcost -n 1000 -idle 30s
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/natserve/natserve/broker"
)

var (
	n       = flag.Int("n", 1000, "deployments")
	idle    = flag.Duration("idle", 30*time.Second, "idle window for CPU")
	layout  = flag.String("layout", "", "per-deployment or shared (internal: run one layout in this process)")
	waiters = flag.Bool("waiters", true, "keep one 30 s pull request waiting per consumer (an idle replica each)")
)

func main() {
	flag.Parse()
	if *layout != "" {
		if err := runLayout(*layout); err != nil {
			fmt.Fprintln(os.Stderr, "streamcost:", err)
			os.Exit(1)
		}
		return
	}
	fmt.Printf("load average %s\n", loadavg())
	for _, l := range []string{"per-deployment", "shared"} {
		args := append([]string{"-layout", l}, os.Args[1:]...)
		cmd := exec.Command(os.Args[0], args...)
		cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
		if err := cmd.Run(); err != nil {
			fmt.Fprintln(os.Stderr, "streamcost:", l, err)
			os.Exit(1)
		}
	}
}

func runLayout(l string) error {
	dir, err := os.MkdirTemp("", "streamcost-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	b, err := broker.New(broker.Config{Port: -1, DataDir: dir})
	if err != nil {
		return err
	}
	ctx := context.Background()
	if err := b.Start(ctx); err != nil {
		return err
	}
	defer b.Shutdown(context.Background())
	nc, err := nats.Connect("", b.InProcessOption())
	if err != nil {
		return err
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	pss0 := pss()
	start := time.Now()
	cons := make([]jetstream.Consumer, 0, *n)
	cc := func(name, stream, filter string) (jetstream.Consumer, error) {
		return js.CreateOrUpdateConsumer(ctx, stream, jetstream.ConsumerConfig{
			Durable: name, FilterSubject: filter, AckPolicy: jetstream.AckExplicitPolicy, AckWait: 10 * time.Second,
			MaxDeliver: -1, MaxAckPending: 10000, MaxWaiting: 4096,
		})
	}
	if l == "shared" {
		if _, err := js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{Name: "natserve_requests_all", Subjects: []string{"natserve.async.*"},
			Storage: jetstream.FileStorage, Retention: jetstream.WorkQueuePolicy, MaxAge: 24 * time.Hour, Duplicates: 2 * time.Minute}); err != nil {
			return err
		}
	}
	for i := 0; i < *n; i++ {
		dep := fmt.Sprintf("d%04d", i)
		var c jetstream.Consumer
		if l == "shared" {
			c, err = cc(dep, "natserve_requests_all", "natserve.async."+dep)
		} else {
			if _, err = js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{Name: "natserve_req_" + dep, Subjects: []string{"natserve.async." + dep},
				Storage: jetstream.FileStorage, Retention: jetstream.WorkQueuePolicy, MaxMsgs: 100000, Discard: jetstream.DiscardNew,
				MaxAge: 24 * time.Hour, Duplicates: 2 * time.Minute}); err != nil {
				return err
			}
			c, err = cc("replicas", "natserve_req_"+dep, "")
		}
		if err != nil {
			return fmt.Errorf("%s: %w", dep, err)
		}
		cons = append(cons, c)
	}
	created := time.Since(start)
	// One message through each deployment, as a light use would leave.
	for i := 0; i < *n; i++ {
		if _, err := js.Publish(ctx, fmt.Sprintf("natserve.async.d%04d", i), []byte("x")); err != nil {
			return err
		}
		batch, err := cons[i].Fetch(1, jetstream.FetchMaxWait(time.Second))
		if err != nil {
			return err
		}
		for m := range batch.Messages() {
			_ = m.Ack()
		}
	}
	if *waiters {
		for _, c := range cons {
			go func() {
				for {
					b, err := c.Fetch(1, jetstream.FetchMaxWait(30*time.Second))
					if err != nil {
						time.Sleep(time.Second)
						continue
					}
					for range b.Messages() {
					}
				}
			}()
		}
	}
	time.Sleep(3 * time.Second)
	lt := time.Now()
	names := 0
	for range js.StreamNames(ctx).Name() {
		names++
	}
	list := time.Since(lt)
	t0, la0 := cpu(), loadavg()
	time.Sleep(*idle)
	idleCPU := (cpu() - t0) / idle.Seconds() * 100
	files, bytes := 0, int64(0)
	_ = filepath.Walk(dir, func(_ string, fi os.FileInfo, err error) error {
		if err == nil && !fi.IsDir() {
			files++
			bytes += fi.Size()
		}
		return nil
	})
	fmt.Printf("%-15s n=%d: create %v; idle CPU %.2f%% of a core over %v (load average %s → %s); PSS +%.1f MB; %d files, %.1f MB on disk; StreamNames (%d) %v\n",
		l, *n, created.Round(time.Millisecond), idleCPU, *idle, la0, loadavg(), (pss()-pss0)/1024, files, float64(bytes)/1e6, names, list.Round(time.Microsecond))
	return nil
}

func loadavg() string {
	b, _ := os.ReadFile("/proc/loadavg")
	if f := strings.Fields(string(b)); len(f) > 0 {
		return f[0]
	}
	return "?"
}

func cpu() float64 {
	b, _ := os.ReadFile("/proc/self/stat")
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	u, _ := strconv.ParseFloat(f[11], 64)
	sy, _ := strconv.ParseFloat(f[12], 64)
	return (u + sy) / 100
}

func pss() float64 {
	b, _ := os.ReadFile("/proc/self/smaps_rollup")
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "Pss:") {
			v, _ := strconv.ParseFloat(strings.Fields(l)[1], 64)
			return v
		}
	}
	return 0
}
