// Command testprog is a user program as natserve's tests need one: it
// registers classes that report their pid, sleep, fail, panic, count their
// concurrency and call other deployments, and hands control to natserve.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"iter"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/natserve/natserve/examples/quickstart"
	"github.com/natserve/natserve/internal/wire"
	"github.com/natserve/natserve/worker"
	"github.com/prometheus/client_golang/prometheus"
)

// Probe is the test class.
type Probe struct {
	tag string

	mu      sync.Mutex // guards running, maxSeen, calls, config, healthy
	running int
	maxSeen int
	calls   int
	config  map[string]any
	sick    string
}

// Reconfigure takes user_config in place.
func (p *Probe) Reconfigure(ctx context.Context, cfg map[string]any) error {
	if v, ok := cfg["fail"].(string); ok {
		return errors.New(v)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.config = cfg
	return nil
}

// Config returns the user_config and the pid.
func (p *Probe) Config() map[string]any {
	p.mu.Lock()
	defer p.mu.Unlock()
	return map[string]any{"pid": os.Getpid(), "config": p.config}
}

// SetSick makes CheckHealth fail with msg ("" heals).
func (p *Probe) SetSick(msg string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.sick = msg
	return os.Getpid()
}

// CheckHealth fails while the probe is sick; sick "hang" makes it block
// until its context ends.
func (p *Probe) CheckHealth(ctx context.Context) error {
	p.mu.Lock()
	sick := p.sick
	p.mu.Unlock()
	switch sick {
	case "":
		return nil
	case "hang":
		<-ctx.Done()
		return fmt.Errorf("hung: %w", ctx.Err())
	}
	return errors.New(sick)
}

// NewProbe is Probe's constructor; a tag starting with "fail:" fails it,
// "exit:N" exits the process with code N (a crash before serving) and
// "sleep:D" makes it take the duration D.
func NewProbe(tag string) (*Probe, error) {
	if len(tag) > 5 && tag[:5] == "fail:" {
		return nil, errors.New(tag[5:])
	}
	if code, ok := strings.CutPrefix(tag, "exit:"); ok {
		n, _ := strconv.Atoi(code)
		fmt.Fprintf(os.Stderr, "testprog: exiting with code %d before serving\n", n)
		os.Exit(n)
	}
	if d, ok := strings.CutPrefix(tag, "sleep:"); ok {
		dur, _ := time.ParseDuration(d)
		time.Sleep(dur)
	}
	return &Probe{tag: tag}, nil
}

// Call answers handle calls and HTTP requests with the tag and pid.
func (p *Probe) Call(ctx context.Context, req *worker.Request) (string, error) {
	if req.IsHTTP() {
		return fmt.Sprintf("tag=%s pid=%d path=%s rel=%s query=%s body=%s", p.tag, os.Getpid(), req.Path, req.RelPath(), req.RawQuery, req.Body), nil
	}
	var s string
	if req.NumArgs() > 0 {
		if err := req.Arg(0, &s); err != nil {
			return "", err
		}
	}
	return fmt.Sprintf("tag=%s pid=%d arg=%s", p.tag, os.Getpid(), s), nil
}

// PID returns the process id.
func (p *Probe) PID() int { return os.Getpid() }

// Work sleeps ms milliseconds, counting calls running at once; returns the pid.
func (p *Probe) Work(ctx context.Context, ms int) (int, error) {
	p.mu.Lock()
	p.running++
	p.calls++
	if p.running > p.maxSeen {
		p.maxSeen = p.running
	}
	p.mu.Unlock()
	defer func() {
		p.mu.Lock()
		p.running--
		p.mu.Unlock()
	}()
	select {
	case <-time.After(time.Duration(ms) * time.Millisecond):
		return os.Getpid(), nil
	case <-ctx.Done():
		return 0, ctx.Err()
	}
}

// Stats is what MaxSeen reports.
type Stats struct {
	PID     int `json:"pid"`
	MaxSeen int `json:"max_seen"`
	Calls   int `json:"calls"`
}

// MaxSeen reports the most Work calls that ran at once.
func (p *Probe) MaxSeen() Stats {
	p.mu.Lock()
	defer p.mu.Unlock()
	return Stats{PID: os.Getpid(), MaxSeen: p.maxSeen, Calls: p.calls}
}

// Sleep ignores its context and sleeps ms milliseconds.
func (p *Probe) Sleep(ms int) int {
	time.Sleep(time.Duration(ms) * time.Millisecond)
	return ms
}

// Fail returns an error with msg.
func (p *Probe) Fail(msg string) error { return errors.New(msg) }

// Panic panics with msg.
func (p *Probe) Panic(msg string) int { panic(msg) }

// Add adds.
func (p *Probe) Add(a, b float64) float64 { return a + b }

// Relay calls deployment target's Add through a handle: composition.
func (p *Probe) Relay(ctx context.Context, target string, a, b float64) (string, error) {
	var sum float64
	if err := worker.Handle(ctx, target).Method("Add").Call(ctx, &sum, a, b); err != nil {
		return "", err
	}
	return fmt.Sprintf("%s via pid %d: %v", target, os.Getpid(), sum), nil
}

// NewRouter is a net/http mux with path parameters and a JSON endpoint.
func NewRouter(greeting string) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /items/{id}", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "%s item %s (pid %d, prefix %s)", greeting, r.PathValue("id"), os.Getpid(), r.Header.Get("X-Forwarded-Prefix"))
	})
	mux.HandleFunc("GET /sleep", func(w http.ResponseWriter, r *http.Request) {
		ms, _ := strconv.Atoi(r.URL.Query().Get("ms"))
		time.Sleep(time.Duration(ms) * time.Millisecond)
		fmt.Fprintf(w, "slept %d ms", ms)
	})
	mux.HandleFunc("GET /wait", func(w http.ResponseWriter, r *http.Request) {
		// Like /sleep, but cut short when the request's context ends.
		ms, _ := strconv.Atoi(r.URL.Query().Get("ms"))
		select {
		case <-time.After(time.Duration(ms) * time.Millisecond):
			fmt.Fprintf(w, "waited %d ms", ms)
		case <-r.Context().Done():
			http.Error(w, r.Context().Err().Error(), http.StatusServiceUnavailable)
		}
	})
	mux.HandleFunc("GET /health", func(w http.ResponseWriter, r *http.Request) { _, _ = w.Write([]byte("ok")) })
	mux.HandleFunc("POST /echo", func(w http.ResponseWriter, r *http.Request) {
		var in map[string]any
		if err := json.NewDecoder(r.Body).Decode(&in); err != nil {
			http.Error(w, "bad json: "+err.Error(), http.StatusBadRequest)
			return
		}
		in["echoed"] = true
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusCreated)
		_ = json.NewEncoder(w).Encode(in)
	})
	return mux
}

// Counter publishes the id of every request it runs on the subject of a
// deployment called fault-exec (a replica may send to any deployment), so that
// a test counts executions (and duplicates) from outside, even across
// replica crashes. ?ms=N (or the second argument) sleeps N ms.
type Counter struct{}

// Call runs one counted request and returns the pid.
func (Counter) Call(ctx context.Context, req *worker.Request) (int, error) {
	ms := 0
	if req.IsHTTP() {
		ms, _ = strconv.Atoi(req.QueryParam("ms"))
	} else if req.NumArgs() > 0 {
		_ = req.Arg(0, &ms)
	}
	if c := worker.Client(ctx); c != nil {
		_ = c.Conn().Publish(wire.DeploymentSubject("fault-exec"), []byte(req.ID))
	}
	if ms > 0 {
		select {
		case <-time.After(time.Duration(ms) * time.Millisecond):
		case <-ctx.Done():
			return 0, ctx.Err()
		}
	}
	return os.Getpid(), nil
}

// Metered counts its calls in a metric of its own, registered through
// worker.Metrics in the constructor.
type Metered struct{ hits prometheus.Counter }

// NewMetered registers natserve_test_hits_total.
func NewMetered(ctx context.Context) (*Metered, error) {
	m := &Metered{hits: prometheus.NewCounter(prometheus.CounterOpts{Name: "natserve_test_hits_total", Help: "Hits of a test class."})}
	return m, worker.Metrics(ctx).Register(m.hits)
}

// Hit counts one hit.
func (m *Metered) Hit() int {
	m.hits.Inc()
	return 1
}

// Tally appends "<request id> <unix nanoseconds>" to a file (its init
// argument) for every request it runs, before running it: executions
// counted from outside across kills of every process, the broker's too.
// ?ms=N (or the first argument) sleeps N ms.
type Tally struct {
	mu sync.Mutex // guards f
	f  *os.File
}

// NewTally opens the tally file.
func NewTally(path string) (*Tally, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return nil, err
	}
	return &Tally{f: f}, nil
}

// Call runs one tallied request and returns the pid.
func (t *Tally) Call(ctx context.Context, req *worker.Request) (int, error) {
	ms := 0
	if req.IsHTTP() {
		ms, _ = strconv.Atoi(req.QueryParam("ms"))
	} else if req.NumArgs() > 0 {
		_ = req.Arg(0, &ms)
	}
	t.mu.Lock()
	_, err := fmt.Fprintf(t.f, "%s %d\n", req.ID, time.Now().UnixNano())
	t.mu.Unlock()
	if err != nil {
		return 0, err
	}
	if ms > 0 {
		select {
		case <-time.After(time.Duration(ms) * time.Millisecond):
		case <-ctx.Done():
			return 0, ctx.Err()
		}
	}
	return os.Getpid(), nil
}

// LateStream streams one item after first_ms (query, default 30000), or
// nothing if its context ends first: a stream whose first item comes late.
type LateStream struct{}

// Call yields 0 after first_ms.
func (LateStream) Call(ctx context.Context, req *worker.Request) (iter.Seq[int], error) {
	ms := 30_000
	if s := req.QueryParam("first_ms"); s != "" {
		var err error
		if ms, err = strconv.Atoi(s); err != nil || ms < 0 || ms > 60_000 {
			return nil, fmt.Errorf("first_ms=%.20q: want 0 to 60000", s)
		}
	}
	return func(yield func(int) bool) {
		t := time.NewTimer(time.Duration(ms) * time.Millisecond)
		defer t.Stop()
		select {
		case <-t.C:
			yield(0)
		case <-ctx.Done():
		}
	}, nil
}

func main() {
	var reg worker.Registry
	reg.Class("Metered", NewMetered)
	reg.Class("Probe", NewProbe)
	reg.Func("double", func(x int) int { return 2 * x })
	reg.HTTPHandler("Router", NewRouter)
	// A user handler that serves http.DefaultServeMux: natserve must have
	// registered nothing on it (no /debug/pprof/).
	reg.HTTPHandler("DefaultMux", func() http.Handler { return http.DefaultServeMux })
	reg.Class("Counter", func() Counter { return Counter{} })
	reg.Class("Tally", NewTally)
	reg.Class("LateStream", func() LateStream { return LateStream{} })
	reg.Func("combine", func(a, b int) int { return a + b })
	quickstart.Register(&reg) // the quick start's classes, Chat among them (docker compose's tests run this program)
	worker.Main(&reg)
}
