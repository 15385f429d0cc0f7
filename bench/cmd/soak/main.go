// Command soak runs natserve's chaos soak (internal/soak) on its own docker
// compose stack: it builds the images, brings the stack up, sends an
// open-loop load while a seeded schedule of faults runs, writes the report
// and the plot under -out, and takes the stack down. It exits 1 when a
// request was never answered or ran twice.
//
//	make soak                                     # 30 minutes at 200 req/s
//	go run ./bench/cmd/soak -duration 5m -rate 300 -seed 7
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/natserve/natserve/internal/composestack"
	"github.com/natserve/natserve/internal/soak"
)

func main() {
	duration := flag.Duration("duration", 30*time.Minute, "how long the load runs")
	rate := flag.Int("rate", 200, "requests per second (open loop)")
	seed := flag.Int64("seed", 1, "seed of the fault schedule")
	perKind := flag.Int("per-kind", 0, "faults of each kind (default: 3 per 30 minutes, at least 1)")
	out := flag.String("out", "bench/results/soak", "directory for report.md, report.json and soak.png")
	keep := flag.Bool("keep", false, "leave the stack running afterwards")
	kinds := flag.String("kinds", "", "comma-separated faults to inject (default all): "+kindNames())
	tag := flag.String("tag", "", "tag of the images (natserve:TAG, natserve-testnode:TAG; default soak-PID, removed at the end)")
	build := flag.Bool("build", true, "build the images (false: use the ones tagged -tag)")
	flag.Parse()
	for _, k := range strings.Split(*kinds, ",") {
		if k = strings.TrimSpace(k); k != "" && !slices.Contains(soak.Kinds, soak.Kind(k)) {
			fmt.Fprintf(os.Stderr, "soak: -kinds: unknown fault %q (known: %s)\n", k, kindNames())
			os.Exit(2)
		}
	}
	if *duration < 30*time.Second || *rate < 1 {
		fmt.Fprintln(os.Stderr, "soak: -duration must be at least 30s and -rate at least 1")
		os.Exit(2)
	}
	log.SetFlags(log.Ltime)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	removeImages := *tag == ""
	if *tag == "" {
		*tag = fmt.Sprintf("soak-%d", os.Getpid())
	}
	if !*build && removeImages {
		fmt.Fprintln(os.Stderr, "soak: -build=false needs -tag")
		os.Exit(2)
	}
	s, err := composestack.New(fmt.Sprintf("natserve-soak-%d", os.Getpid()), *tag)
	if err != nil {
		log.Fatalf("soak: %v", err)
	}
	if *build {
		start := time.Now()
		if err := s.Build(ctx); err != nil {
			log.Fatalf("soak: %v", err)
		}
		log.Printf("images built in %v", time.Since(start).Round(time.Second))
	}
	code := 0
	defer func() {
		if !*keep {
			dctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			if err := s.Down(dctx); err != nil {
				log.Printf("docker compose down: %v", err)
				code = 1
			}
			if removeImages {
				if err := s.RemoveImages(dctx); err != nil {
					log.Printf("soak: %v", err)
				}
			}
			cancel()
		} else {
			log.Printf("stack left running: docker-compose -p %s -f docker-compose.yml -f deploy/compose.testnode.yml down", s.Project)
		}
		os.Exit(code)
	}()
	if err := s.Up(ctx); err != nil {
		log.Printf("soak: %v\n%s", err, composestack.Tail(s.Logs(40), 10000))
		code = 1
		return
	}
	log.Printf("stack up (ingress on port %d); soak: %d req/s for %v, seed %d", s.HTTPPort, *rate, *duration, *seed)
	var ks []soak.Kind
	for _, k := range strings.Split(*kinds, ",") {
		if k = strings.TrimSpace(k); k != "" {
			ks = append(ks, soak.Kind(k))
		}
	}
	rep, err := soak.Run(ctx, soak.Config{Stack: s, Rate: *rate, Duration: *duration, Seed: *seed, Kinds: ks, PerKind: *perKind, Logf: log.Printf})
	if rep == nil {
		log.Printf("soak: %v\n%s", err, composestack.Tail(s.Logs(40), 10000))
		code = 1
		return
	}
	if err != nil {
		log.Printf("soak ended early: %v", err)
		code = 1
	}
	fmt.Println(rep.Markdown())
	if err := rep.Write(*out); err != nil {
		log.Printf("soak: %v", err)
	}
	log.Printf("report and plot in %s", *out)
	if rep.Unanswered != 0 || rep.Duplicates != 0 {
		log.Printf("FAIL: %d requests never answered, %d executed twice", rep.Unanswered, rep.Duplicates)
		code = 1
	}
}

func kindNames() string {
	var names []string
	for _, k := range soak.Kinds {
		names = append(names, string(k))
	}
	return strings.Join(names, ", ")
}
