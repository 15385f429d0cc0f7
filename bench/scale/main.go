// Command scale is the control plane's scale benchmark (make scale; not in
// CI): it starts `natserve up` with its defaults (plus, with -agents, extra
// node agents), deploys -deployments deployments of -replicas replicas of
// MyFirstDeployment, and measures the time to all HEALTHY, the idle CPU of
// natserve up, of the agents and of the replicas, memory as PSS, servectl
// latency, the time for a new route to reach the ingress, the time to
// replace a killed replica, and the JetStream storage used. It stops every
// process it started.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/natserve/natserve/client"
	"github.com/natserve/natserve/internal/store"
	"github.com/natserve/natserve/internal/wire"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "scale:", err)
		os.Exit(1)
	}
}

var (
	deployments  = flag.Int("deployments", 1000, "deployments to create")
	replicas     = flag.Int("replicas", 1, "replicas per deployment")
	agents       = flag.Int("agents", 0, "extra node agents (natserve agent) besides natserve up's own")
	idle         = flag.Duration("idle", 20*time.Second, "idle window over which CPU is measured")
	port         = flag.Int("nats-port", 14222, "NATS port of natserve up")
	httpAddr     = flag.String("addr", "127.0.0.1:18000", "ingress address of natserve up")
	pprofAddr    = flag.String("pprof", "", "serve natserve up's profiles here (NATSERVE_PPROF) and save CPU profiles of the deploy and idle phases in -profile-dir")
	subjects     = flag.Duration("subjects", 0, "after the idle window, count the messages the broker carries by subject (first three tokens) over this long")
	spawnRate    = flag.Float64("spawn-rate", 0, "natserve up's -spawn-rate (replica starts per second); 0: its default")
	healthPeriod = flag.Float64("health-period", 0, "the deployments' health_check_period_s (0: the default, 10); to price the health checks")
	settle       = flag.Duration("settle", 30*time.Second, "wait this long after all HEALTHY before the idle window")
	hold         = flag.Duration("hold", 0, "after the run, keep the cluster up this long (its address and credentials are printed) before stopping it")
	profileDir   = flag.String("profile-dir", ".", "where -pprof's profiles go (scale-deploy.pprof, scale-idle.pprof)")
)

// loadavg returns the 1-minute load average as text ("?" when unknown).
func loadavg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	return strings.Fields(string(b))[0]
}

// profileCPU saves a CPU profile of natserve up over d into file (in the
// background); wait for the returned channel.
func profileCPU(d time.Duration, file string) <-chan struct{} {
	done := make(chan struct{})
	if *pprofAddr == "" {
		close(done)
		return done
	}
	go func() {
		defer close(done)
		resp, err := http.Get(fmt.Sprintf("http://%s/debug/pprof/profile?seconds=%d", *pprofAddr, int(d.Seconds())))
		if err != nil {
			fmt.Fprintln(os.Stderr, "scale: profile:", err)
			return
		}
		defer resp.Body.Close()
		f, err := os.Create(filepath.Join(*profileDir, file))
		if err != nil {
			fmt.Fprintln(os.Stderr, "scale: profile:", err)
			return
		}
		defer f.Close()
		_, _ = io.Copy(f, resp.Body)
		fmt.Printf("saved %s (load average %s)\n", filepath.Join(*profileDir, file), loadavg())
	}()
	return done
}

func run() error {
	flag.Parse()
	dir, err := os.MkdirTemp("", "natserve-scale-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	bin := filepath.Join(dir, "bin")
	fmt.Println("building natserve and servectl")
	if out, err := exec.Command("go", "build", "-o", bin+"/", "./cmd/natserve", "./cmd/servectl").CombinedOutput(); err != nil {
		return fmt.Errorf("go build: %v\n%s", err, out)
	}
	url := fmt.Sprintf("nats://127.0.0.1:%d", *port)
	up := exec.Command(bin+"/natserve", "up", "-data", filepath.Join(dir, "data"), "-nats-port", strconv.Itoa(*port), "-addr", *httpAddr, "-metrics-addr", "127.0.0.1:0")
	if *spawnRate > 0 {
		up.Args = append(up.Args, "-spawn-rate", strconv.FormatFloat(*spawnRate, 'f', -1, 64))
	}
	up.Stderr, up.Stdout = os.Stderr, nil
	up.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if *pprofAddr != "" {
		up.Env = append(os.Environ(), "NATSERVE_PPROF="+*pprofAddr)
	}
	fmt.Printf("load average at start: %s\n", loadavg())
	if err := up.Start(); err != nil {
		return err
	}
	var procs []*exec.Cmd
	defer func() { // stop everything we started: agents, then natserve up
		for _, p := range append(procs, up) {
			_ = p.Process.Signal(syscall.SIGTERM)
		}
		done := make(chan struct{})
		go func() {
			for _, p := range append(procs, up) {
				_ = p.Wait()
			}
			close(done)
		}()
		select {
		case <-done:
		case <-time.After(60 * time.Second):
			for _, p := range append(procs, up) {
				_ = syscall.Kill(-p.Process.Pid, syscall.SIGKILL)
			}
		}
	}()
	// natserve up turns authentication on and writes the admin credentials
	// into its data directory: this process, servectl and the extra agents
	// use them (through $NATSERVE_CREDS).
	os.Setenv(client.CredsEnv, filepath.Join(dir, "data", "auth", "admin.creds"))
	ctx := context.Background()
	var c *client.Client
	for i := 0; ; i++ {
		if c, err = client.Connect(ctx, url, client.WithTimeout(30*time.Second)); err == nil {
			if _, err = c.Status(ctx); err == nil {
				break
			}
		}
		if i > 300 {
			return fmt.Errorf("natserve up did not answer: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	for i := 0; i < *agents; i++ {
		a := exec.Command(bin+"/natserve", "agent", "-nats", url, "-name", fmt.Sprintf("a%d", i), "-stop-replicas-on-exit", "-metrics-addr", "127.0.0.1:0")
		a.Stderr = os.Stderr
		a.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		if err := a.Start(); err != nil {
			return err
		}
		procs = append(procs, a)
	}
	if err := waitNodes(ctx, c, 1+*agents); err != nil {
		return err
	}

	// Deploy: one apply of every deployment, then wait for all HEALTHY.
	n, r := *deployments, *replicas
	fmt.Printf("deploying %d deployments × %d replicas (%d replicas, %d node agents)\n", n, r, n*r, 1+*agents)
	cfg := &client.Config{}
	for i := 0; i < n; i++ {
		cfg.Deployments = append(cfg.Deployments, client.ConfigDeployment{Spec: client.DeploymentSpec{Name: fmt.Sprintf("d%04d", i), Class: "MyFirstDeployment",
			InitArgs: json.RawMessage(fmt.Sprintf(`["d%04d"]`, i)), NumReplicas: r, HealthCheckPeriodS: *healthPeriod}})
	}
	deployProf := profileCPU(20*time.Second, "scale-deploy.pprof")
	start := time.Now()
	if _, err := c.Apply(ctx, cfg, client.ApplyOptions{}); err != nil {
		return fmt.Errorf("apply: %w", err)
	}
	applied := time.Since(start)
	seen := map[string]time.Duration{} // deployment → when a poll first saw it HEALTHY
	for {
		ds, err := c.List(ctx)
		for _, d := range ds {
			if _, ok := seen[d.Spec.Name]; !ok && d.Status == client.StatusHealthy {
				seen[d.Spec.Name] = time.Since(start)
			}
		}
		if err == nil && healthy(ds) == n {
			break
		}
		if time.Since(start) > 10*time.Minute {
			return fmt.Errorf("not all HEALTHY after 10 min: %d of %d", healthy(ds), n)
		}
		time.Sleep(200 * time.Millisecond)
	}
	allHealthy := time.Since(start)
	fmt.Printf("apply: %v; all %d HEALTHY after %v (load average %s)\n", applied.Round(time.Millisecond), n, allHealthy.Round(time.Millisecond), loadavg())
	<-deployProf
	if err := traceBringUp(ctx, c.Conn(), start, seen); err != nil {
		fmt.Println("bring-up trace:", err)
	}

	// Idle: once the control plane's own work is done — every request
	// stream made (the controller makes them one after another, and they
	// trail all HEALTHY by up to a minute at 1,000) with its consumer —
	// and the starts have settled.
	accountStreams(ctx, c.Conn())
	// Replicas that started last are still settling (their first health
	// checks, GC of the start-up's garbage): idle is what follows.
	fmt.Printf("settling for %v (load average %s)\n", *settle, loadavg())
	time.Sleep(*settle)
	reps := descendants(up.Process.Pid)
	for _, a := range procs {
		reps = append(reps, descendants(a.Process.Pid)...)
	}
	fmt.Printf("measuring idle CPU over %v (%d replica processes)\n", *idle, len(reps))
	upT0, repT0, agT0 := cpu(up.Process.Pid), sumCPU(reps), 0.0
	fmt.Printf("CPU since start: natserve up %.1f s; replicas %.1f ms each (mostly their start-up)\n", upT0, repT0*1000/float64(max(len(reps), 1)))
	for _, a := range procs {
		agT0 += cpu(a.Process.Pid)
	}
	t0 := time.Now()
	la0 := loadavg()
	idleProf := profileCPU(*idle, "scale-idle.pprof")
	time.Sleep(*idle)
	<-idleProf
	wall := time.Since(t0).Seconds()
	upCPU, repCPU, agCPU := (cpu(up.Process.Pid)-upT0)/wall*100, (sumCPU(reps)-repT0)/wall*100, 0.0
	for _, a := range procs {
		agCPU += cpu(a.Process.Pid)
	}
	agCPU = (agCPU - agT0) / wall * 100
	fmt.Printf("idle CPU over %.0f s (load average %s → %s): natserve up %.2f%% of a core; extra agents %.2f%% in all; replicas %.2f%% in all, %.4f%% each\n",
		wall, la0, loadavg(), upCPU, agCPU, repCPU, repCPU/float64(max(len(reps), 1)))
	fmt.Printf("memory (PSS): natserve up %.1f MB; replicas %.1f MB in all, %.2f MB each\n",
		pss(up.Process.Pid)/1024, sumPSS(reps)/1024, sumPSS(reps)/1024/float64(max(len(reps), 1)))
	if *subjects > 0 { // what the broker carries at idle (this subscription adds one delivery each)
		if err := countSubjects(c.Conn(), *subjects); err != nil {
			return err
		}
	}

	if *pprofAddr != "" { // what natserve up's memory holds
		if resp, err := http.Get("http://" + *pprofAddr + "/debug/pprof/heap"); err == nil {
			if f, err := os.Create(filepath.Join(*profileDir, "scale-heap.pprof")); err == nil {
				_, _ = io.Copy(f, resp.Body)
				f.Close()
			}
			resp.Body.Close()
		}
	}

	// The control API's list in process (the controller's part of
	// servectl list-deployments, without a process start and a connect).
	var lts []time.Duration
	for i := 0; i < 5; i++ {
		s := time.Now()
		if _, err := c.List(ctx); err != nil {
			return fmt.Errorf("list: %w", err)
		}
		lts = append(lts, time.Since(s))
	}
	sort.Slice(lts, func(i, j int) bool { return lts[i] < lts[j] })
	fmt.Printf("client List (control API, in process): median %v, min %v, max %v (5 runs; load average %s)\n", lts[2].Round(time.Millisecond), lts[0].Round(time.Millisecond), lts[4].Round(time.Millisecond), loadavg())

	// servectl.
	env := append(os.Environ(), "NATSERVE_URL="+url)
	for _, args := range [][]string{{"list-deployments"}, {"get-deployment", fmt.Sprintf("d%04d", n/2)}} {
		var ts []time.Duration
		for i := 0; i < 5; i++ {
			cmd := exec.Command(bin+"/servectl", args...)
			cmd.Env = env
			s := time.Now()
			if out, err := cmd.CombinedOutput(); err != nil {
				return fmt.Errorf("servectl %v: %v\n%s", args, err, out)
			}
			ts = append(ts, time.Since(s))
		}
		sort.Slice(ts, func(i, j int) bool { return ts[i] < ts[j] })
		fmt.Printf("servectl %s: median %v, min %v, max %v (wall, 5 runs; load average %s)\n", args[0], ts[2].Round(time.Millisecond), ts[0].Round(time.Millisecond), ts[4].Round(time.Millisecond), loadavg())
	}

	// A new route reaches the ingress.
	for i := 0; i < 3; i++ {
		name := fmt.Sprintf("route%d", i)
		s := time.Now()
		if _, err := c.Deploy(ctx, client.DeploymentSpec{Name: name, Class: "MyFirstDeployment", InitArgs: json.RawMessage(`["hi"]`), NumReplicas: 1}); err != nil {
			return err
		}
		for {
			resp, err := http.Get("http://" + *httpAddr + "/" + name)
			if err == nil {
				resp.Body.Close()
				if resp.StatusCode == 200 {
					break
				}
			}
			if time.Since(s) > 30*time.Second {
				return fmt.Errorf("route /%s not served after 30s", name)
			}
			time.Sleep(5 * time.Millisecond)
		}
		fmt.Printf("deploy → first 200 at /%s: %v (load average %s)\n", name, time.Since(s).Round(time.Millisecond), loadavg())
	}

	// A killed replica is replaced.
	for i := 0; i < 3; i++ {
		name := fmt.Sprintf("d%04d", (n/10+i)%n) // d0100… at 1,000
		d, err := c.Get(ctx, name)
		if err != nil || len(d.Replicas) == 0 {
			return fmt.Errorf("get %s: %v", name, err)
		}
		old := d.Replicas[0]
		s := time.Now()
		_ = syscall.Kill(old.PID, syscall.SIGKILL)
		for {
			d, err := c.Get(ctx, name)
			if err == nil && d.Status == client.StatusHealthy && len(d.Replicas) == r && !hasReplica(d, old.ID) {
				break
			}
			if time.Since(s) > 60*time.Second {
				return fmt.Errorf("%s: killed replica not replaced after 60s", name)
			}
			time.Sleep(5 * time.Millisecond)
		}
		fmt.Printf("kill -9 a replica of %s → HEALTHY again with a new one: %v (load average %s)\n", name, time.Since(s).Round(time.Millisecond), loadavg())
	}

	// Stored requests: the first to a deployment makes its stream and
	// consumer (and its idle replica starts pulling on the broker's
	// announcement); the second finds them.
	for i := 0; i < 2; i++ {
		name := fmt.Sprintf("d%04d", (n/5)%n) // d0200 at 1,000
		s := time.Now()
		id, err := c.Handle(name).Method("OtherMethod").Submit(ctx, "x")
		if err != nil {
			return fmt.Errorf("submit to %s: %w", name, err)
		}
		stored := time.Since(s)
		st, err := c.Wait(ctx, id)
		if err != nil || st.Status != "succeeded" {
			return fmt.Errorf("stored request %s to %s: %v %+v", id, name, err, st)
		}
		fmt.Printf("stored request %d to %s: stored in %v, succeeded %v after the submit (load average %s)\n", i+1, name,
			stored.Round(time.Millisecond), time.Since(s).Round(time.Millisecond), loadavg())
	}

	out, _ := exec.Command("du", "-sh", filepath.Join(dir, "data")).Output()
	fmt.Printf("JetStream storage (du -sh of the data directory): %s", out)
	if *hold > 0 {
		fmt.Printf("holding the cluster for %v: NATSERVE_URL=%s NATSERVE_CREDS=%s, binaries in %s\n", *hold, url, os.Getenv(client.CredsEnv), bin)
		time.Sleep(*hold)
	}
	return nil
}

func waitNodes(ctx context.Context, c *client.Client, n int) error {
	for i := 0; i < 300; i++ {
		st, err := c.Status(ctx)
		alive := 0
		if err == nil {
			for _, nd := range st.Nodes {
				if nd.Alive {
					alive++
				}
			}
		}
		if alive == n {
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("fewer than %d live nodes after 30s", n)
}

func healthy(ds []client.Deployment) int {
	n := 0
	for _, d := range ds {
		if d.Status == client.StatusHealthy {
			n++
		}
	}
	return n
}

func hasReplica(d *client.Deployment, id string) bool {
	for _, r := range d.Replicas {
		if r.ID == id {
			return true
		}
	}
	return false
}

// descendants returns the pids of the processes below pid.
func descendants(pid int) []int {
	children := map[int][]int{}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if pp := ppid(p); pp > 0 {
			children[pp] = append(children[pp], p)
		}
	}
	var out []int
	var walk func(int)
	walk = func(p int) {
		for _, c := range children[p] {
			out = append(out, c)
			walk(c)
		}
	}
	walk(pid)
	return out
}

func stat(pid int) []string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return nil
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return nil
	}
	return strings.Fields(s[i+1:]) // field 3 (state) is [0]
}

func ppid(pid int) int {
	f := stat(pid)
	if len(f) < 2 {
		return 0
	}
	p, _ := strconv.Atoi(f[1])
	return p
}

// cpu returns the CPU seconds (user+system) a process used.
func cpu(pid int) float64 {
	f := stat(pid)
	if len(f) < 13 {
		return 0
	}
	u, _ := strconv.ParseFloat(f[11], 64)
	s, _ := strconv.ParseFloat(f[12], 64)
	return (u + s) / 100 // USER_HZ
}

func sumCPU(pids []int) float64 {
	t := 0.0
	for _, p := range pids {
		t += cpu(p)
	}
	return t
}

// pss returns a process's proportional set size in kB.
func pss(pid int) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps_rollup", pid))
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "Pss:") {
			f := strings.Fields(l)
			v, _ := strconv.ParseFloat(f[1], 64)
			return v
		}
	}
	return 0
}

func sumPSS(pids []int) float64 {
	t := 0.0
	for _, p := range pids {
		t += pss(p)
	}
	return t
}

// countSubjects prints the messages a second on each subject prefix (first
// three tokens) seen on ">" over d.
func countSubjects(nc *nats.Conn, d time.Duration) error {
	var mu sync.Mutex
	n := map[string]int{}
	sub, err := nc.Subscribe(">", func(m *nats.Msg) {
		t := strings.SplitN(m.Subject, ".", 4)
		k := strings.Join(t[:min(3, len(t))], ".")
		mu.Lock()
		n[k]++
		mu.Unlock()
	})
	if err != nil {
		return err
	}
	time.Sleep(d)
	_ = sub.Unsubscribe()
	mu.Lock()
	defer mu.Unlock()
	keys := make([]string, 0, len(n))
	total := 0
	for k, v := range n {
		keys = append(keys, k)
		total += v
	}
	sort.Slice(keys, func(i, j int) bool { return n[keys[i]] > n[keys[j]] })
	fmt.Printf("messages at idle over %v: %.1f/s in all\n", d, float64(total)/d.Seconds())
	for _, k := range keys {
		fmt.Printf("  %8.2f/s  %s\n", float64(n[k])/d.Seconds(), k)
	}
	return nil
}

// traceBringUp prints, over every replica, how long each stage of the
// bring-up took: apply → assignment stored (controller), assignment →
// process started (agent: watch, spawn limiter, fork/exec), started → ready
// said and running state written (replica start-up, link, KV write), running
// stored → first poll that saw the deployment HEALTHY (controller's watch
// and pass, plus up to one 200 ms poll).
func traceBringUp(ctx context.Context, nc *nats.Conn, start time.Time, seen map[string]time.Duration) error {
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	asg, err := js.KeyValue(ctx, wire.BucketAssignments)
	if err != nil {
		return err
	}
	reps, err := js.KeyValue(ctx, wire.BucketReplicas)
	if err != nil {
		return err
	}
	keys, err := reps.Keys(ctx)
	if err != nil {
		return err
	}
	var assigned, spawned, ready, marked []time.Duration
	for _, k := range keys {
		e, err := reps.Get(ctx, k)
		if err != nil {
			continue
		}
		var st store.ReplicaState
		if json.Unmarshal(e.Value(), &st) != nil || st.State != client.ReplicaRunning {
			continue
		}
		a, err := asg.Get(ctx, k)
		if err != nil {
			continue
		}
		at := a.Created().Sub(start)
		if h, ok := seen[st.Deployment]; ok {
			assigned = append(assigned, at)
			spawned = append(spawned, st.Started.Sub(a.Created()))
			ready = append(ready, e.Created().Sub(st.Started))
			marked = append(marked, h-e.Created().Sub(start))
		}
	}
	q := func(name string, ds []time.Duration) {
		sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
		if len(ds) == 0 {
			return
		}
		p := func(f float64) time.Duration { return ds[int(f*float64(len(ds)-1))].Round(time.Millisecond) }
		fmt.Printf("  %-44s p50 %v  p90 %v  max %v\n", name, p(0.5), p(0.9), p(1))
	}
	fmt.Printf("bring-up per replica (%d replicas):\n", len(assigned))
	q("apply → assignment stored", assigned)
	q("assignment → process started", spawned)
	q("started → running state stored", ready)
	q("running stored → HEALTHY seen (poll 200 ms)", marked)
	return nil
}

// accountStreams prints the streams and consumers the account holds: the
// buckets' and the stored requests' own, not one per deployment (a
// deployment's request stream is made on its first stored request).
func accountStreams(ctx context.Context, nc *nats.Conn) {
	js, err := jetstream.New(nc)
	if err != nil {
		fmt.Println("streams:", err)
		return
	}
	ai, err := js.AccountInfo(ctx)
	if err != nil {
		fmt.Println("streams:", err)
		return
	}
	fmt.Printf("JetStream: %d streams, %d consumers (request streams are made on a deployment's first stored request)\n", ai.Streams, ai.Consumers)
}
