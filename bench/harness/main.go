// Command harness runs natserve's benchmark suite in one go, interleaved so
// that machine drift cancels:
//
//	A  a bare fasthttp server: the ceiling with no hop
//	E  nginx (keep-alive reverse proxy) in front of N fasthttp replicas: what users pick instead
//	D  natserve up (in-process broker, controller, ingress) with a Hello deployment of N replicas
//	C  raw NATS request-reply to N responder processes, against natserve handle calls (H)
//
// HTTP load comes from wrk at concurrency 1 and 64, N = 1 and 2, payloads of
// 20 B and 10 KB; every measurement is repeated and reported as the median
// with its spread. It also measures replica and ingress memory and writes
// results.json, results.md and, with gnuplot, throughput.png under -out.
//
//	go run ./bench/harness -duration 5s -repeats 3 -out bench/results
//
// natserve runs with its access log on (as natserve up does by default) and
// tracing off; -access-log=false and -tracing (spans sent to an OTLP/HTTP
// receiver in the harness that drops them, or to -otlp-endpoint) measure
// what each costs on the request path.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/natserve/natserve/client"
)

type config struct {
	duration time.Duration
	repeats  int
	out      string
	conns    int
	metrics  bool

	accessLog bool
	tracing   bool
	otlp      string
	concs     []int  // concurrencies measured
	sizes     []int  // payload sizes measured
	replicas  []int  // replica counts measured
	nats      bool   // measure C and H too
	profile   string // directory for CPU profiles of up and a replica under c64 load ("": none)
	variants  []string
	baseline  string          // another natserve binary, measured as "D baseline" (e.g. built from main before a change)
	configs   map[string]bool // which of A, E, N, D (and C, H with -nats) are measured; the variants and baseline always are
}

func intList(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil {
			return nil, fmt.Errorf("%q: want a comma-separated list of integers", s)
		}
		out = append(out, n)
	}
	return out, nil
}

func main() {
	var cfg config
	flag.DurationVar(&cfg.duration, "duration", 5*time.Second, "length of each measurement")
	flag.IntVar(&cfg.repeats, "repeats", 3, "repetitions of every measurement")
	flag.StringVar(&cfg.out, "out", "bench/results", "directory for results.json, results.md, throughput.png")
	flag.IntVar(&cfg.conns, "idle-conns", 10000, "idle connections held open against the ingress")
	concs := flag.String("conc", "1,64", "concurrencies")
	sizes := flag.String("sizes", "20,10240", "payload sizes in bytes")
	reps := flag.String("replicas", "1,2", "replica counts")
	flag.BoolVar(&cfg.nats, "nats", true, "also measure C (raw NATS) and H (handle calls)")
	flag.StringVar(&cfg.profile, "profile", "", "write CPU profiles (top 25 as text) of natserve up and a replica under c64 20 B load to this directory")
	flag.BoolVar(&cfg.metrics, "metrics", true, "Prometheus metrics on in natserve up and the ingress (false: compare the hot path without them)")
	flag.BoolVar(&cfg.accessLog, "access-log", true, "natserve writes its access log (natserve up's default)")
	flag.BoolVar(&cfg.tracing, "tracing", false, "natserve traces every request, exporting to -otlp-endpoint or to a receiver in the harness that drops the spans")
	flag.StringVar(&cfg.otlp, "otlp-endpoint", "", "OTLP/HTTP endpoint for -tracing (default: the harness's own receiver)")
	flag.StringVar(&cfg.baseline, "baseline", "", "path of another natserve binary (e.g. built from the commit before a change) run as one more natserve up with its defaults, row \"D baseline\" of the same interleave")
	configs := flag.String("configs", "A,E,N,D", "configurations measured (A, E, N, D), comma-separated; -variants and -baseline rows are measured whatever this says, C and H with -nats and D")
	variants := flag.String("variants", "", "more natserve up processes (one replica) measured as rows of the same interleave: metrics-off, log-off, obs-off (both), auth-off (natserve up -no-auth), idempotent (Hello declared idempotent_methods: [*], so no confirmation round), comma-separated")
	replot := flag.Bool("replot", false, "measure nothing: draw -out's throughput.png again from its results.json (gnuplot)")
	flag.Parse()
	if *replot {
		var res Results
		b, err := os.ReadFile(filepath.Join(cfg.out, "results.json"))
		if err == nil {
			err = json.Unmarshal(b, &res)
		}
		if err == nil {
			err = plot(cfg.out, &res)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "harness -replot:", err)
			os.Exit(1)
		}
		return
	}
	cfg.configs = map[string]bool{}
	for _, c := range strings.Split(*configs, ",") {
		if c = strings.TrimSpace(c); c != "" {
			cfg.configs[c] = true
		}
	}
	for _, v := range strings.Split(*variants, ",") {
		if v = strings.TrimSpace(v); v != "" {
			cfg.variants = append(cfg.variants, v)
		}
	}
	var err error
	for _, x := range []struct {
		s   string
		dst *[]int
	}{{*concs, &cfg.concs}, {*sizes, &cfg.sizes}, {*reps, &cfg.replicas}} {
		if *x.dst, err = intList(x.s); err != nil {
			fmt.Fprintln(os.Stderr, "harness:", err)
			os.Exit(2)
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, cfg); err != nil {
		fmt.Fprintln(os.Stderr, "harness:", err)
		os.Exit(1)
	}
}

// Measurement is one wrk or Go-client run.
type Measurement struct {
	Config  string  `json:"config"` // A, E, D, C, H
	Conc    int     `json:"concurrency"`
	Size    int     `json:"size"`
	N       int     `json:"replicas"`
	Repeat  int     `json:"repeat"`
	RPS     float64 `json:"rps"`
	P50us   float64 `json:"p50_us"`
	P99us   float64 `json:"p99_us"`
	Errors  int     `json:"errors"`
	Samples int     `json:"requests"`
	CPUus   float64 `json:"cpu_us_per_req,omitempty"` // server CPU (user+system) per request, every process on the path
	// Read and write system calls per request, every process on the path
	// (/proc/<pid>/io syscr, syscw): machine noise does not change them.
	Reads float64 `json:"reads_per_req,omitempty"`
	// CPUParts is CPUus per process, in the order of the path's pids (D:
	// natserve up, then its replicas; N: nats-server, responder, ingress;
	// E: nginx's master and workers, then the replicas).
	CPUParts []float64 `json:"cpu_us_per_req_by_process,omitempty"`
	Writes   float64   `json:"writes_per_req,omitempty"`
}

// Results is what the harness writes.
type Results struct {
	Commit       string             `json:"commit"`
	Machine      string             `json:"machine"`
	Date         string             `json:"date"`
	Duration     string             `json:"duration"`
	AccessLog    bool               `json:"access_log"`
	Tracing      bool               `json:"tracing"`
	Load         string             `json:"load_average"` // /proc/loadavg at start and end of the run
	Measurements []Measurement      `json:"measurements"`
	Memory       map[string]float64 `json:"memory_mb"`
}

type procs struct {
	mu   sync.Mutex
	list []*exec.Cmd
}

func (p *procs) start(name string, args ...string) (*exec.Cmd, error) {
	cmd := exec.Command(name, args...)
	cmd.Stdout, cmd.Stderr = io.Discard, os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p.mu.Lock()
	p.list = append(p.list, cmd)
	p.mu.Unlock()
	return cmd, nil
}

func (p *procs) stopAll() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.list {
		_ = syscall.Kill(-c.Process.Pid, syscall.SIGTERM)
	}
	for _, c := range p.list {
		done := make(chan struct{})
		go func() { _ = c.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = syscall.Kill(-c.Process.Pid, syscall.SIGKILL)
		}
	}
}

func freePort() int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func waitHTTP(url string) error {
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		if r, err := http.Get(url); err == nil {
			_, _ = io.Copy(io.Discard, r.Body)
			r.Body.Close()
			if r.StatusCode == 200 {
				return nil
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("%s did not answer 200", url)
}

func run(ctx context.Context, cfg config) error {
	// Without wrk, HTTP load comes from bench/cmd/httpload (one fasthttp
	// client thread, like wrk -t1); without nginx, E is left out.
	_, errWrk := exec.LookPath("wrk")
	_, errNginx := exec.LookPath("nginx")
	if errWrk != nil {
		fmt.Fprintln(os.Stderr, "wrk is not installed (apt-get install wrk): HTTP load from bench/cmd/httpload")
	}
	if errNginx != nil {
		fmt.Fprintln(os.Stderr, "nginx is not installed (apt-get install nginx-light): E is left out")
	}
	raiseNoFile()
	tmp, err := os.MkdirTemp("", "natserve-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	bins := map[string]string{}
	// nats-server: the stock server of go.mod's version, for N.
	for _, pkg := range []string{"./cmd/natserve", "./bench/cmd/hello", "./bench/cmd/natsreplica", "./bench/cmd/naive", "./bench/cmd/httpload", "github.com/nats-io/nats-server/v2"} {
		out := filepath.Join(tmp, filepath.Base(pkg))
		if b, err := exec.Command("go", "build", "-o", out, pkg).CombinedOutput(); err != nil {
			return fmt.Errorf("go build %s: %v\n%s", pkg, err, b)
		}
		bins[filepath.Base(pkg)] = out
	}
	bins["nats-server"] = bins["v2"]
	load := func(ctx context.Context, url string, conc int, d time.Duration) (Measurement, error) {
		if errWrk == nil {
			return wrk(ctx, url, conc, d)
		}
		return httpload(ctx, bins["httpload"], url, conc, d)
	}
	var ps procs
	defer ps.stopAll()

	// A: the bare server. E: nginx in front of two replicas.
	portA := freePort()
	hello0, err := ps.start(bins["hello"], "-addr", fmt.Sprintf("127.0.0.1:%d", portA))
	if err != nil {
		return err
	}
	rep := []int{freePort(), freePort()}
	var repPIDs []int // E's replicas
	for _, p := range rep {
		c, err := ps.start(bins["hello"], "-addr", fmt.Sprintf("127.0.0.1:%d", p))
		if err != nil {
			return err
		}
		repPIDs = append(repPIDs, c.Process.Pid)
	}
	portE := freePort()
	var nginx *exec.Cmd
	if errNginx == nil {
		nginxConf := filepath.Join(tmp, "nginx.conf")
		if err := os.WriteFile(nginxConf, []byte(fmt.Sprintf(nginxTemplate, tmp, tmp, tmp, rep[0], rep[0], rep[1], portE, tmp, tmp, tmp, tmp, tmp)), 0o644); err != nil {
			return err
		}
		if nginx, err = ps.start("nginx", "-c", nginxConf, "-p", tmp); err != nil {
			return err
		}
	}

	// N: the naive chain, a stock nats-server, the naive ingress and one
	// naive responder.
	natsPortN, portN := freePort(), freePort()
	pprofN := map[string]string{}
	var profArgs func(name string) []string = func(string) []string { return nil }
	if cfg.profile != "" {
		profArgs = func(name string) []string {
			port := freePort()
			pprofN[name] = fmt.Sprintf("127.0.0.1:%d", port)
			if name == "nats-server" {
				return []string{"--profile", strconv.Itoa(port)}
			}
			return []string{"-pprof", pprofN[name]}
		}
	}
	natsURLN := fmt.Sprintf("nats://127.0.0.1:%d", natsPortN)
	srvN, err := ps.start(bins["nats-server"], append([]string{"-a", "127.0.0.1", "-p", strconv.Itoa(natsPortN)}, profArgs("nats-server")...)...)
	if err != nil {
		return err
	}
	if err := waitTCP(fmt.Sprintf("127.0.0.1:%d", natsPortN)); err != nil {
		return err
	}
	respN, err := ps.start(bins["naive"], append([]string{"responder", "-nats", natsURLN}, profArgs("responder")...)...)
	if err != nil {
		return err
	}
	ingN, err := ps.start(bins["naive"], append([]string{"ingress", "-nats", natsURLN, "-addr", fmt.Sprintf("127.0.0.1:%d", portN)}, profArgs("ingress")...)...)
	if err != nil {
		return err
	}
	pidsN := []int{srvN.Process.Pid, respN.Process.Pid, ingN.Process.Pid}

	// D: natserve up with Hello deployments of 1 and 2 replicas.
	pprofUp, pprofReplica := fmt.Sprintf("127.0.0.1:%d", freePort()), fmt.Sprintf("127.0.0.1:%d", freePort())
	if cfg.profile != "" { // opt-in profiling of up and (the first replica to bind it) a replica
		os.Setenv("NATSERVE_PPROF", pprofUp)
		os.Setenv("NATSERVE_REPLICA_PPROF", pprofReplica)
	}
	mainD, err := startUp(ctx, &ps, bins["natserve"], filepath.Join(tmp, "data"), cfg, cfg.metrics, cfg.accessLog, false, false, 2)
	if err != nil {
		return err
	}
	os.Unsetenv("NATSERVE_PPROF")
	os.Unsetenv("NATSERVE_REPLICA_PPROF")
	defer mainD.cl.Close()
	up, natsURL, portD := mainD.proc, mainD.natsURL, mainD.port
	// D variants: more natserve up processes (one replica each) measured in
	// the same interleave, to price each feature on and off.
	var variants []*upRun
	variantPprof := map[string][2]string{} // variant → its up's and replica's pprof addresses (with -profile)
	for _, v := range cfg.variants {
		metrics, accessLog, noAuth, idem := cfg.metrics, cfg.accessLog, false, false
		switch v {
		case "idempotent":
			idem = true
		case "auth-off":
			noAuth = true
		case "metrics-off":
			metrics = false
		case "log-off":
			accessLog = false
		case "obs-off":
			metrics, accessLog = false, false
		default:
			return fmt.Errorf("-variants: unknown variant %q (metrics-off, log-off, obs-off, auth-off, idempotent)", v)
		}
		if cfg.profile != "" { // each variant's up and replica, profiled into a directory of its own
			variantPprof[v] = [2]string{fmt.Sprintf("127.0.0.1:%d", freePort()), fmt.Sprintf("127.0.0.1:%d", freePort())}
			os.Setenv("NATSERVE_PPROF", variantPprof[v][0])
			os.Setenv("NATSERVE_REPLICA_PPROF", variantPprof[v][1])
		}
		u, err := startUp(ctx, &ps, bins["natserve"], filepath.Join(tmp, "data-"+v), cfg, metrics, accessLog, noAuth, idem, 1)
		os.Unsetenv("NATSERVE_PPROF")
		os.Unsetenv("NATSERVE_REPLICA_PPROF")
		if err != nil {
			return fmt.Errorf("variant %s: %w", v, err)
		}
		defer u.cl.Close()
		u.name = "D " + v
		variants = append(variants, u)
	}
	if cfg.baseline != "" {
		if cfg.profile != "" { // profiled like a variant, into DIR/baseline
			variantPprof["baseline"] = [2]string{fmt.Sprintf("127.0.0.1:%d", freePort()), fmt.Sprintf("127.0.0.1:%d", freePort())}
			os.Setenv("NATSERVE_PPROF", variantPprof["baseline"][0])
			os.Setenv("NATSERVE_REPLICA_PPROF", variantPprof["baseline"][1])
		}
		u, err := startUp(ctx, &ps, cfg.baseline, filepath.Join(tmp, "data-baseline"), cfg, cfg.metrics, cfg.accessLog, false, false, 1)
		os.Unsetenv("NATSERVE_PPROF")
		os.Unsetenv("NATSERVE_REPLICA_PPROF")
		if err != nil {
			return fmt.Errorf("baseline %s: %w", cfg.baseline, err)
		}
		defer u.cl.Close()
		u.name = "D baseline"
		variants = append(variants, u)
	}
	os.Setenv("NATSERVE_CREDS", filepath.Join(tmp, "data", "auth", "admin.creds")) // C, H and the idle-connection ingress use the main D
	// C: raw NATS responders, as many processes as H's deployment has
	// replicas (bench.raw<N>, N processes).
	if cfg.nats {
		for _, n := range cfg.replicas {
			for i := 0; i < n; i++ {
				if _, err := ps.start(bins["natsreplica"], "-nats", natsURL, "-subject", fmt.Sprintf("bench.raw%d", n)); err != nil {
					return err
				}
			}
		}
	}
	urlA := fmt.Sprintf("http://127.0.0.1:%d/", portA)
	urlE := func(n int) string { return fmt.Sprintf("http://127.0.0.1:%d/n%d", portE, n) }
	urlD := func(n int) string { return fmt.Sprintf("http://127.0.0.1:%d/hello%d", portD, n) }
	urlN := fmt.Sprintf("http://127.0.0.1:%d/", portN)
	urls := []string{urlA, urlD(1), urlD(2), urlN}
	for _, v := range variants {
		urls = append(urls, v.url())
	}
	if errNginx == nil {
		urls = append(urls, urlE(1), urlE(2))
	}
	for _, u := range urls {
		if err := waitHTTP(u); err != nil {
			return err
		}
	}
	res := Results{Commit: gitCommit(), Machine: machine(), Date: time.Now().UTC().Format(time.RFC3339), Duration: cfg.duration.String(), Memory: map[string]float64{},
		AccessLog: cfg.accessLog, Tracing: cfg.tracing, Load: loadAvg()}
	replicaPIDs := childPIDs(up.Process.Pid)
	res.Memory["replica_idle_max"] = maxRSS(replicaPIDs)
	fmt.Fprintf(os.Stderr, "replica processes %v, idle RSS max %.1f MB\n", replicaPIDs, res.Memory["replica_idle_max"])

	// Interleaved measurements.
	for r := 1; r <= cfg.repeats; r++ {
		for _, conc := range cfg.concs {
			for _, size := range cfg.sizes {
				for _, n := range cfg.replicas {
					type target struct {
						name, url string
						pids      []int // every process on the path, for CPU per request
					}
					var runs []target
					if n == 1 { // A has no replicas, N one responder: measured once per size
						if cfg.configs["A"] {
							runs = append(runs, target{"A", urlA, []int{hello0.Process.Pid}})
						}
						if cfg.configs["N"] {
							runs = append(runs, target{"N", urlN, pidsN})
						}
					}
					if errNginx == nil && cfg.configs["E"] {
						runs = append(runs, target{"E", urlE(n), append(append([]int{nginx.Process.Pid}, childPIDs(nginx.Process.Pid)...), repPIDs[:n]...)})
					}
					if cfg.configs["D"] {
						runs = append(runs, target{"D", urlD(n), append([]int{up.Process.Pid}, childPIDs(up.Process.Pid)...)})
					}
					if n == 1 {
						for _, v := range variants {
							runs = append(runs, target{v.name, v.url(), append([]int{v.proc.Process.Pid}, childPIDs(v.proc.Process.Pid)...)})
						}
					}
					// Interleaved: the order rotates with the repeat, so that
					// no configuration always runs first.
					for i := range runs {
						x := runs[(i+r)%len(runs)]
						if ctx.Err() != nil {
							return ctx.Err()
						}
						cpu0 := cpuTicks(x.pids)
						parts0 := make([]int64, len(x.pids))
						sys0 := make([][2]int64, len(x.pids))
						for i, pid := range x.pids {
							parts0[i] = cpuTicks([]int{pid})
							sys0[i][0], sys0[i][1] = syscalls([]int{pid})
						}
						r0, w0 := syscalls(x.pids)
						m, err := load(ctx, fmt.Sprintf("%s?size=%d", x.url, size), conc, cfg.duration)
						if err != nil {
							return fmt.Errorf("load %s: %w", x.name, err)
						}
						if m.Samples > 0 && x.pids != nil {
							m.CPUus = float64(cpuTicks(x.pids)-cpu0) * 1e6 / float64(clockTicks) / float64(m.Samples)
							for i, pid := range x.pids {
								m.CPUParts = append(m.CPUParts, float64(cpuTicks([]int{pid})-parts0[i])*1e6/float64(clockTicks)/float64(m.Samples))
							}
							r1, w1 := syscalls(x.pids)
							m.Reads, m.Writes = float64(r1-r0)/float64(m.Samples), float64(w1-w0)/float64(m.Samples)
						}
						m.Config, m.Conc, m.Size, m.N, m.Repeat = x.name, conc, size, n, r
						if x.name == "A" {
							m.N = 0
						}
						res.Measurements = append(res.Measurements, m)
						fmt.Fprintf(os.Stderr, "r%d %s c=%d size=%d N=%d: %.0f req/s p50 %.0fµs p99 %.0fµs cpu %.1fµs/req syscalls/req %.2f read %.2f write errors %d\n", r, x.name, conc, size, m.N, m.RPS, m.P50us, m.P99us, m.CPUus, m.Reads, m.Writes, m.Errors)
						if len(m.CPUParts) > 1 {
							fmt.Fprintf(os.Stderr, "    cpu µs/req by process: %.1f\n", m.CPUParts)
							var rw []string
							for i, pid := range x.pids {
								r1, w1 := syscalls([]int{pid})
								rw = append(rw, fmt.Sprintf("%.2f+%.2f", float64(r1-sys0[i][0])/float64(m.Samples), float64(w1-sys0[i][1])/float64(m.Samples)))
							}
							fmt.Fprintf(os.Stderr, "    reads+writes /req by process: %s\n", strings.Join(rw, " "))
						}
						if x.name == "D" && conc == 64 && size == 20 && n == 1 {
							res.Memory["replica_loaded_max"] = max(res.Memory["replica_loaded_max"], maxRSS(replicaPIDs))
						}
						if strings.HasPrefix(x.name, "D") && conc == 64 && n == 1 { // natserve up's RSS after c64 load (its heap grows with GOGC)
							key := "up_loaded_max"
							if x.name != "D" {
								key = strings.ReplaceAll(strings.TrimPrefix(x.name, "D "), "-", "_") + "_up_loaded_max"
							}
							res.Memory[key] = max(res.Memory[key], rss(x.pids[0]))
						}
					}
					// C and H: raw NATS against handle calls, from this process.
					for _, which := range []string{"C", "H"} {
						if !cfg.nats || !cfg.configs["D"] {
							break
						}
						m := natsLoad(ctx, which, natsURL, fmt.Sprintf("hello%d", n), n, conc, size, cfg.duration)
						m.Repeat = r
						res.Measurements = append(res.Measurements, m)
						fmt.Fprintf(os.Stderr, "r%d %s c=%d size=%d N=%d: %.0f req/s p50 %.0fµs p99 %.0fµs errors %d\n", r, which, conc, size, n, m.RPS, m.P50us, m.P99us, m.Errors)
					}
				}
			}
		}
	}
	if cfg.profile != "" {
		if err := profileUnderLoad(ctx, cfg.profile, load, urlD(1)+"?size=20", map[string]string{"up": pprofUp, "replica": pprofReplica}); err != nil {
			return err
		}
		for _, v := range variants {
			name := strings.TrimPrefix(v.name, "D ")
			addrs, ok := variantPprof[name]
			if !ok {
				continue
			}
			if err := profileUnderLoad(ctx, filepath.Join(cfg.profile, name), load, v.url()+"?size=20", map[string]string{"up": addrs[0], "replica": addrs[1]}); err != nil {
				return err
			}
		}
		if cfg.configs["N"] {
			if err := profileUnderLoad(ctx, cfg.profile, load, urlN+"?size=20", map[string]string{"naive-ingress": pprofN["ingress"], "naive-responder": pprofN["responder"], "naive-nats-server": pprofN["nats-server"]}); err != nil {
				return err
			}
		}
	}
	res.Load += " → " + loadAvg()
	if cfg.conns == 0 {
		return write(cfg.out, &res)
	}
	// Ingress memory under idle connections: a standalone ingress.
	observe, stopSink, err := observeFlags(cfg)
	if err != nil {
		return err
	}
	defer stopSink()
	portI := freePort()
	ing, err := ps.start(bins["natserve"], append([]string{"ingress", "-nats", natsURL, "-addr", fmt.Sprintf("127.0.0.1:%d", portI), "-max-connections", "200000",
		"-metrics=" + strconv.FormatBool(cfg.metrics), "-metrics-addr", fmt.Sprintf("127.0.0.1:%d", freePort())}, observe...)...)
	if err != nil {
		return err
	}
	if err := waitHTTP(fmt.Sprintf("http://127.0.0.1:%d/hello1", portI)); err != nil {
		return err
	}
	res.Memory["ingress_before_conns"] = rss(ing.Process.Pid)
	conns, err := idleConns(fmt.Sprintf("127.0.0.1:%d", portI), cfg.conns)
	res.Memory["ingress_idle_conns"] = float64(len(conns))
	time.Sleep(2 * time.Second)
	res.Memory["ingress_with_idle_conns"] = rss(ing.Process.Pid)
	for _, c := range conns {
		c.Close()
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "idle connections: %v\n", err)
	}
	fmt.Fprintf(os.Stderr, "ingress RSS %.1f MB → %.1f MB with %d idle connections\n", res.Memory["ingress_before_conns"], res.Memory["ingress_with_idle_conns"], len(conns))
	return write(cfg.out, &res)
}

// observeFlags returns natserve's flags for the access log and tracing
// settings, starting an OTLP/HTTP receiver that drops spans when tracing
// has no endpoint of its own; stop stops it.
func observeFlags(cfg config) (flags []string, stop func(), err error) {
	flags = []string{"-access-log=" + strconv.FormatBool(cfg.accessLog)}
	if !cfg.tracing {
		return append(flags, "-otlp-endpoint="), func() {}, nil
	}
	if cfg.otlp != "" {
		return append(flags, "-otlp-endpoint="+cfg.otlp), func() {}, nil
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, nil, err
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/x-protobuf")
	})}
	go func() { _ = srv.Serve(ln) }()
	return append(flags, "-otlp-endpoint=http://"+ln.Addr().String()), func() { _ = srv.Close() }, nil
}

func connect(ctx context.Context, url string) (*client.Client, error) {
	deadline := time.Now().Add(60 * time.Second)
	for {
		cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		cl, err := client.Connect(cctx, url)
		cancel()
		if err == nil {
			return cl, nil
		}
		if time.Now().After(deadline) {
			return nil, err
		}
		time.Sleep(200 * time.Millisecond)
	}
}

const nginxTemplate = `daemon off;
worker_processes auto;
pid %s/nginx.pid;
error_log %s/nginx-error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path %s/body;
  upstream up1 { server 127.0.0.1:%d; keepalive 128; }
  upstream up2 { server 127.0.0.1:%d; server 127.0.0.1:%d; keepalive 128; }
  server {
    listen 127.0.0.1:%d;
    location /n1 { proxy_pass http://up1; proxy_http_version 1.1; proxy_set_header Connection ""; }
    location /n2 { proxy_pass http://up2; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
  proxy_temp_path %s/proxy;
  fastcgi_temp_path %s/fastcgi;
  uwsgi_temp_path %s/uwsgi;
  scgi_temp_path %s/scgi;
}
# %s
`

var (
	reqsRe = regexp.MustCompile(`Requests/sec:\s+([\d.]+)`)
	latRe  = regexp.MustCompile(`(?m)^\s+(50|99)%\s+([\d.]+)(us|ms|s)$`)
	errRe  = regexp.MustCompile(`Non-2xx or 3xx responses: (\d+)|Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)`)
	totRe  = regexp.MustCompile(`(\d+) requests in`)
)

func wrk(ctx context.Context, url string, conc int, d time.Duration) (Measurement, error) {
	threads := min(2, conc)
	out, err := exec.CommandContext(ctx, "wrk", "-t", strconv.Itoa(threads), "-c", strconv.Itoa(conc), "-d", fmt.Sprintf("%ds", int(d.Seconds())), "--latency", url).CombinedOutput()
	if err != nil {
		return Measurement{}, fmt.Errorf("%v: %s", err, out)
	}
	var m Measurement
	s := string(out)
	if x := reqsRe.FindStringSubmatch(s); x != nil {
		m.RPS, _ = strconv.ParseFloat(x[1], 64)
	}
	for _, x := range latRe.FindAllStringSubmatch(s, -1) {
		v, _ := strconv.ParseFloat(x[2], 64)
		switch x[3] {
		case "ms":
			v *= 1000
		case "s":
			v *= 1e6
		}
		if x[1] == "50" {
			m.P50us = v
		} else {
			m.P99us = v
		}
	}
	for _, x := range errRe.FindAllStringSubmatch(s, -1) {
		for _, g := range x[1:] {
			n, _ := strconv.Atoi(g)
			m.Errors += n
		}
	}
	if x := totRe.FindStringSubmatch(s); x != nil {
		m.Samples, _ = strconv.Atoi(x[1])
	}
	return m, nil
}

// natsLoad measures raw NATS request-reply (C) or natserve handle calls
// (H) from conc goroutines over one connection: C on a stock nats.go
// connection (nats.Connect), H on natserve's own (client.Connect, as a
// user's program makes it), each new for the measurement.
func natsLoad(ctx context.Context, which, url string, deployment string, n, conc, size int, d time.Duration) Measurement {
	m := Measurement{Config: which, Conc: conc, Size: size, N: n}
	var count, errs atomic.Int64
	lat := make([][]time.Duration, conc)
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	var wg sync.WaitGroup
	nc, err := nats.Connect(url, nats.UserCredentials(os.Getenv("NATSERVE_CREDS")))
	if err != nil {
		m.Errors = 1
		return m
	}
	defer nc.Close()
	hc, err := connect(ctx, url) // $NATSERVE_CREDS
	if err != nil {
		m.Errors = 1
		return m
	}
	defer hc.Close()
	payload := []byte(strconv.Itoa(size))
	h := hc.Handle(deployment)
	raw := fmt.Sprintf("bench.raw%d", n) // n responder processes
	start := time.Now()
	for g := 0; g < conc; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				t := time.Now()
				var err error
				if which == "C" {
					_, err = nc.Request(raw, payload, 10*time.Second)
				} else {
					var out []byte
					err = h.Call(context.Background(), &out, size)
				}
				if err != nil {
					errs.Add(1)
					continue
				}
				count.Add(1)
				lat[g] = append(lat[g], time.Since(t))
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	var all []time.Duration
	for _, l := range lat {
		all = append(all, l...)
	}
	sort.Slice(all, func(i, j int) bool { return all[i] < all[j] })
	if len(all) > 0 {
		m.P50us = float64(all[len(all)/2].Microseconds())
		m.P99us = float64(all[len(all)*99/100].Microseconds())
	}
	m.RPS = float64(count.Load()) / elapsed.Seconds()
	m.Errors = int(errs.Load())
	m.Samples = int(count.Load())
	return m
}

func idleConns(addr string, n int) ([]net.Conn, error) {
	conns := make([]net.Conn, 0, n)
	req := []byte("GET /-/healthz HTTP/1.1\r\nHost: x\r\n\r\n")
	buf := make([]byte, 512)
	for i := 0; i < n; i++ {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			return conns, err
		}
		if _, err := c.Write(req); err != nil {
			c.Close()
			return conns, err
		}
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Read(buf); err != nil {
			c.Close()
			return conns, err
		}
		conns = append(conns, c)
	}
	return conns, nil
}

func raiseNoFile() {
	var l syscall.Rlimit
	if syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l) == nil {
		l.Cur = l.Max
		_ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &l)
	}
}

func childPIDs(pid int) []int {
	out, _ := exec.Command("pgrep", "-P", strconv.Itoa(pid)).Output()
	var pids []int
	for _, f := range strings.Fields(string(out)) {
		if n, err := strconv.Atoi(f); err == nil {
			pids = append(pids, n)
		}
	}
	return pids
}

// rss returns a process's resident set in MB.
func rss(pid int) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "VmRSS:") {
			f := strings.Fields(line)
			kb, _ := strconv.ParseFloat(f[1], 64)
			return kb / 1024
		}
	}
	return 0
}

func maxRSS(pids []int) float64 {
	m := 0.0
	for _, p := range pids {
		m = max(m, rss(p))
	}
	return m
}

func gitCommit() string {
	out, err := exec.Command("git", "rev-parse", "--short", "HEAD").Output()
	if err != nil {
		return "unknown"
	}
	return strings.TrimSpace(string(out))
}

func machine() string {
	model := ""
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(l, "model name") {
				model = strings.TrimSpace(strings.SplitN(l, ":", 2)[1])
				break
			}
		}
	}
	return fmt.Sprintf("%d cores, %s, %s", runtime.NumCPU(), model, runtime.Version())
}

var _ = json.Marshal

// httpload runs bench/cmd/httpload (for machines without wrk).
func httpload(ctx context.Context, bin, url string, conc int, d time.Duration) (Measurement, error) {
	out, err := exec.CommandContext(ctx, bin, "-url", url, "-c", strconv.Itoa(conc), "-d", d.String()).Output()
	if err != nil {
		return Measurement{}, fmt.Errorf("httpload: %v", err)
	}
	var r struct {
		RPS      float64 `json:"rps"`
		P50      float64 `json:"p50_us"`
		P99      float64 `json:"p99_us"`
		Errors   float64 `json:"errors"`
		Requests float64 `json:"requests"`
	}
	if err := json.Unmarshal(out, &r); err != nil {
		return Measurement{}, fmt.Errorf("httpload output %q: %v", out, err)
	}
	return Measurement{RPS: r.RPS, P50us: r.P50, P99us: r.P99, Errors: int(r.Errors), Samples: int(r.Requests)}, nil
}

// clockTicks is USER_HZ, the unit of /proc/<pid>/stat's times.
const clockTicks = 100

// cpuTicks sums utime and stime of pids (fields 14 and 15 of /proc/<pid>/stat).
func cpuTicks(pids []int) int64 {
	var sum int64
	for _, pid := range pids {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			continue
		}
		s := string(b)
		i := strings.LastIndexByte(s, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(s[i+1:])
		if len(f) < 13 {
			continue
		}
		u, _ := strconv.ParseInt(f[11], 10, 64)
		st, _ := strconv.ParseInt(f[12], 10, 64)
		sum += u + st
	}
	return sum
}

// profileUnderLoad takes 8 s CPU profiles of the given pprof servers while
// 10 s of c64 load run against url, and writes each profile and its top 25
// (flat) as text to dir.
func profileUnderLoad(ctx context.Context, dir string, load func(context.Context, string, int, time.Duration) (Measurement, error), url string, servers map[string]string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	done := make(chan error, 1)
	var loaded Measurement
	go func() {
		var err error
		loaded, err = load(ctx, url, 64, 10*time.Second)
		done <- err
	}()
	time.Sleep(time.Second)
	var wg sync.WaitGroup
	errs := make(chan error, len(servers))
	for name, addr := range servers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := http.Get("http://" + addr + "/debug/pprof/profile?seconds=8")
			if err != nil {
				errs <- fmt.Errorf("profile %s: %w", name, err)
				return
			}
			defer resp.Body.Close()
			file := filepath.Join(dir, name+".pprof")
			b, err := io.ReadAll(resp.Body)
			if err == nil {
				err = os.WriteFile(file, b, 0o644)
			}
			if err != nil {
				errs <- err
				return
			}
			top, err := exec.Command("go", "tool", "pprof", "-top", "-nodecount=25", file).CombinedOutput()
			if err != nil {
				errs <- fmt.Errorf("pprof %s: %v: %s", name, err, top)
				return
			}
			errs <- os.WriteFile(filepath.Join(dir, name+"-top25.txt"), top, 0o644)
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			return err
		}
	}
	if err := <-done; err != nil {
		return err
	}
	// The load's rate, to turn each profile's CPU seconds into µs per request.
	names := make([]string, 0, len(servers))
	for name := range servers {
		names = append(names, name)
	}
	sort.Strings(names)
	return os.WriteFile(filepath.Join(dir, strings.Join(names, "+")+"-load.txt"),
		[]byte(fmt.Sprintf("%s: wrk c64 10 s: %.0f req/s, %d requests, p50 %.0f µs, p99 %.0f µs; the profiles cover 8 s of it (about %.0f requests)\n",
			url, loaded.RPS, loaded.Samples, loaded.P50us, loaded.P99us, loaded.RPS*8)), 0o644)
}

// upRun is one natserve up process the harness started.
type upRun struct {
	name    string
	proc    *exec.Cmd
	natsURL string
	port    int
	cl      *client.Client
}

func (u *upRun) url() string { return fmt.Sprintf("http://127.0.0.1:%d/hello1", u.port) }

// startUp starts natserve up with the given observability settings and
// deploys Hello with 1..maxN replicas (hello1, hello2, ...).
func startUp(ctx context.Context, ps *procs, bin, data string, cfg config, metrics, accessLog, noAuth, idempotent bool, maxN int) (*upRun, error) {
	natsPort, port := freePort(), freePort()
	c := cfg
	c.accessLog = accessLog
	observe, stopSink, err := observeFlags(c)
	if err != nil {
		return nil, err
	}
	_ = stopSink // the sink lives as long as the harness
	up, err := ps.start(bin, append([]string{"up", "-data", data, "-nats-port", strconv.Itoa(natsPort),
		"-addr", fmt.Sprintf("127.0.0.1:%d", port), "-max-connections", "200000",
		"-metrics=" + strconv.FormatBool(metrics), "-metrics-addr", fmt.Sprintf("127.0.0.1:%d", freePort())}, append(observe, noAuthFlag(noAuth)...)...)...)
	if err != nil {
		return nil, err
	}
	u := &upRun{name: "D", proc: up, natsURL: fmt.Sprintf("nats://127.0.0.1:%d", natsPort), port: port}
	// natserve up is secure by default: the harness is its admin.
	os.Setenv("NATSERVE_CREDS", filepath.Join(data, "auth", "admin.creds"))
	if noAuth {
		os.Setenv("NATSERVE_CREDS", "")
	}
	if u.cl, err = connect(ctx, u.natsURL); err != nil {
		return nil, err
	}
	for n := 1; n <= maxN; n++ {
		for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(200 * time.Millisecond) {
			// The node agent may not have registered its classes yet.
			spec := client.DeploymentSpec{Name: fmt.Sprintf("hello%d", n), Class: "Hello", NumReplicas: n, MaxOngoingRequests: 100}
			if idempotent {
				spec.IdempotentMethods = []string{"*"}
			}
			_, err := u.cl.Deploy(ctx, spec)
			if err == nil {
				break
			}
			if !errors.Is(err, client.ErrUnknownClass) || time.Now().After(deadline) {
				return nil, err
			}
		}
		wctx, cancel := context.WithTimeout(ctx, time.Minute)
		_, err := u.cl.WaitHealthy(wctx, fmt.Sprintf("hello%d", n), nil)
		cancel()
		if err != nil {
			return nil, err
		}
	}
	return u, nil
}

func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	return strings.Join(f[:3], " ")
}

// waitTCP waits up to 60 s for addr to accept connections.
func waitTCP(addr string) error {
	for deadline := time.Now().Add(60 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			return nil
		}
	}
	return fmt.Errorf("%s did not accept connections", addr)
}

// syscalls sums the read and write system calls of pids (/proc/<pid>/io).
func syscalls(pids []int) (reads, writes int64) {
	for _, pid := range pids {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/io", pid))
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n") {
			k, v, ok := strings.Cut(line, ": ")
			if !ok {
				continue
			}
			n, _ := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
			switch k {
			case "syscr":
				reads += n
			case "syscw":
				writes += n
			}
		}
	}
	return reads, writes
}

// noAuthFlag is natserve up's -no-auth when on (a baseline binary may
// predate the flag).
func noAuthFlag(on bool) []string {
	if on {
		return []string{"-no-auth"}
	}
	return nil
}
