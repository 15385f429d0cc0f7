package worker_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nuid"
	"github.com/natserve/natserve/client"
	"github.com/natserve/natserve/internal/testutil"
	"github.com/natserve/natserve/internal/wire"
	"github.com/natserve/natserve/worker"
)

func TestMain(m *testing.M) { testutil.Main(m) }

type stack struct {
	url string
	bin string
	cl  *client.Client
}

func newStack(t *testing.T) *stack {
	t.Helper()
	b := testutil.Broker(t)
	cl := client.New(testutil.Conn(t, b.ClientURL()))
	return &stack{url: b.ClientURL(), bin: testutil.Build(t, "./internal/testprog"), cl: cl}
}

type replicaProc struct {
	*testutil.Proc
	id string
}

// replica starts a replica process and waits until it answers pings.
func (s *stack) replica(t *testing.T, deployment, class, initArgs string, maxOngoing int) *replicaProc {
	t.Helper()
	return s.replicaAt(t, s.url, deployment, class, initArgs, maxOngoing)
}

// replicaAt is replica connecting to the broker through url (a proxy).
func (s *stack) replicaAt(t *testing.T, url, deployment, class, initArgs string, maxOngoing int) *replicaProc {
	t.Helper()
	n := nuid.Next()
	id := "r" + strings.ToLower(n[len(n)-12:]) // the sequence part: the first 12 characters are the same in one process
	spec := worker.ReplicaSpec{
		Deployment: deployment, Class: class, Replica: id, NATSURL: url,
		InitArgs: json.RawMessage(initArgs), MaxOngoingRequests: maxOngoing, GracefulShutdownTimeoutS: 10,
		Creds: testutil.ReplicaCreds(t, s.url, deployment),
	}
	b, _ := json.Marshal(spec)
	p := testutil.StartWith(t, "", b, nil, s.bin, "replica")
	testutil.Eventually(t, 20*time.Second, func() error {
		if p.Exited() {
			t.Fatalf("replica exited early:\n%s", p.Output())
		}
		m, err := s.cl.Conn().Request(wire.ReplicaSubject(deployment, id, wire.VerbPing), nil, 200*time.Millisecond)
		if err != nil {
			return err
		}
		var st worker.ReplicaStatus
		if err := json.Unmarshal(m.Data, &st); err != nil || st.PID != p.PID() {
			return fmt.Errorf("ping: %s %v", m.Data, err)
		}
		return nil
	})
	return &replicaProc{Proc: p, id: id}
}

func TestTwoReplicasShareLoad(t *testing.T) {
	s := newStack(t)
	r1 := s.replica(t, "rep-1", "Probe", `["a"]`, 5)
	r2 := s.replica(t, "rep-1", "Probe", `["a"]`, 5)
	h := s.cl.Handle("rep-1").Method("PID")
	var mu sync.Mutex
	counts := map[int]int{}
	var wg sync.WaitGroup
	errs := make(chan error, 1000)
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 125; i++ {
				pid, err := client.Call[int](context.Background(), h)
				if err != nil {
					errs <- err
					continue
				}
				mu.Lock()
				counts[pid]++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("call failed: %v", err)
	}
	t.Logf("replies per pid: %v", counts)
	if len(counts) != 2 {
		t.Fatalf("want replies from 2 pids, got %v", counts)
	}
	for _, pid := range []int{r1.PID(), r2.PID()} {
		if n := counts[pid]; n < 300 {
			t.Errorf("replica pid %d served %d of 1000 calls, want at least 30%%", pid, n)
		}
	}
}

func TestUserErrorAndPanic(t *testing.T) {
	s := newStack(t)
	s.replica(t, "faulty", "Probe", `["x"]`, 5)
	ctx := context.Background()
	h := s.cl.Handle("faulty")

	err := h.Method("Fail").Call(ctx, nil, "model exploded")
	var ce *client.Error
	if !errors.Is(err, client.ErrUser) || !errors.As(err, &ce) || ce.Message != "model exploded" {
		t.Fatalf("user error: got %v", err)
	}
	err = h.Method("Panic").Call(ctx, nil, "nil map write")
	if !errors.Is(err, client.ErrPanic) || !strings.Contains(err.Error(), "nil map write") {
		t.Fatalf("panic: got %v", err)
	}
	if got, err := client.Call[float64](ctx, h.Method("Add"), 1, 2.5); err != nil || got != 3.5 {
		t.Fatalf("call after panic: %v %v", got, err)
	}
	for _, tc := range []struct {
		method string
		args   []any
		want   error
	}{
		{"NoSuchMethod", nil, client.ErrUnknownMethod},
		{"Close", nil, client.ErrUnknownMethod},
		{"Add", []any{1}, client.ErrBadRequest},
		{"Add", []any{"x", "y"}, client.ErrBadRequest},
		{"bad.name", nil, client.ErrUnknownMethod},
	} {
		if err := h.Method(tc.method).Call(ctx, nil, tc.args...); !errors.Is(err, tc.want) {
			t.Errorf("%s%v: got %v, want %v", tc.method, tc.args, err, tc.want)
		}
	}
}

func TestMaxOngoingRequestsUnderFourTimesLoad(t *testing.T) {
	s := newStack(t)
	const maxOngoing = 5
	s.replica(t, "bounded", "Probe", `["m"]`, maxOngoing)
	h := s.cl.Handle("bounded")
	var failed atomic.Int64
	var wg sync.WaitGroup
	for w := 0; w < 4*maxOngoing; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 10; i++ {
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				if _, err := client.Call[int](ctx, h.Method("Work"), 20); err != nil {
					failed.Add(1)
					t.Errorf("call lost: %v", err)
				}
				cancel()
			}
		}()
	}
	wg.Wait()
	st, err := client.Call[struct {
		MaxSeen int `json:"max_seen"`
		Calls   int `json:"calls"`
	}](context.Background(), h.Method("MaxSeen"))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("max running at once: %d, calls: %d, failed: %d", st.MaxSeen, st.Calls, failed.Load())
	if st.MaxSeen > maxOngoing {
		t.Errorf("%d calls ran at once, max_ongoing_requests is %d", st.MaxSeen, maxOngoing)
	}
	if st.MaxSeen < 2 {
		t.Errorf("max running at once %d: the load did not overlap", st.MaxSeen)
	}
	if st.Calls != 200 {
		t.Errorf("replica ran %d Work calls, want exactly 200 (none lost, none twice)", st.Calls)
	}
}

func TestNoReplicasFailsAtOnce(t *testing.T) {
	s := newStack(t)
	h := s.cl.Handle("nobody")
	var took []time.Duration
	for i := 0; i < 21; i++ {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		start := time.Now()
		err := h.Call(ctx, nil)
		took = append(took, time.Since(start))
		cancel()
		if !errors.Is(err, client.ErrNoReplicas) {
			t.Fatalf("got %v, want ErrNoReplicas", err)
		}
	}
	sort.Slice(took, func(i, j int) bool { return took[i] < took[j] })
	t.Logf("no-replicas error after: median %v, max %v", took[10], took[20])
	if took[10] > 50*time.Millisecond {
		t.Errorf("median time to the no-replicas error is %v, want under 50ms", took[10])
	}
}

func TestDeadline(t *testing.T) {
	s := newStack(t)
	s.replica(t, "slow", "Probe", `["s"]`, 5)
	const deadline = 300 * time.Millisecond
	ctx, cancel := context.WithTimeout(context.Background(), deadline)
	defer cancel()
	start := time.Now()
	err := s.cl.Handle("slow").Method("Sleep").Call(ctx, nil, 5000)
	took := time.Since(start)
	if !errors.Is(err, client.ErrDeadline) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("got %v, want ErrDeadline", err)
	}
	t.Logf("deadline %v, failed after %v (overshoot %v)", deadline, took, took-deadline)
	// The method sleeps 5 s; the call must end at its deadline, not the method's.
	if took > deadline+time.Second {
		t.Errorf("call failed after %v, want about %v", took, deadline)
	}
}

func TestSIGTERMDrainsUnderLoad(t *testing.T) {
	s := newStack(t)
	r1 := s.replica(t, "drainme", "Probe", `["d"]`, 5)
	r2 := s.replica(t, "drainme", "Probe", `["d"]`, 5)
	h := s.cl.Handle("drainme").Method("Work")
	var ok, failed atomic.Int64
	var after2 atomic.Int64 // calls answered by r2 after the SIGTERM
	stop := make(chan struct{})
	sent := make(chan struct{}, 1)
	var wg sync.WaitGroup
	var sigterm atomic.Bool
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				pid, err := client.Call[int](context.Background(), h, 10)
				if err != nil {
					failed.Add(1)
					t.Errorf("call failed: %v", err)
					continue
				}
				ok.Add(1)
				if sigterm.Load() && pid == r2.PID() {
					after2.Add(1)
					select {
					case sent <- struct{}{}:
					default:
					}
				}
			}
		}()
	}
	testutil.Eventually(t, 10*time.Second, func() error {
		if ok.Load() < 200 {
			return fmt.Errorf("%d calls so far", ok.Load())
		}
		return nil
	})
	sigterm.Store(true)
	if err := r1.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	exited, err := r1.Wait(15 * time.Second)
	if !exited || err != nil {
		t.Errorf("drained replica: exited=%v err=%v\n%s", exited, err, r1.Output())
	}
	testutil.Eventually(t, 10*time.Second, func() error {
		if after2.Load() < 200 {
			return fmt.Errorf("%d calls served by the other replica since SIGTERM", after2.Load())
		}
		return nil
	})
	close(stop)
	wg.Wait()
	t.Logf("calls: %d ok, %d failed; %d served by the remaining replica after SIGTERM", ok.Load(), failed.Load(), after2.Load())
	if failed.Load() != 0 {
		t.Errorf("%d calls failed during the drain", failed.Load())
	}
	if !strings.Contains(r1.Output(), "replica drained") {
		t.Errorf("replica did not log a completed drain:\n%s", r1.Output())
	}
}

func TestComposition(t *testing.T) {
	s := newStack(t)
	a := s.replica(t, "front", "Probe", `["a"]`, 5)
	s.replica(t, "back", "Probe", `["b"]`, 5)
	got, err := client.Call[string](context.Background(), s.cl.Handle("front").Method("Relay"), "back", 1, 2)
	if err != nil {
		t.Fatal(err)
	}
	if want := fmt.Sprintf("back via pid %d: 3", a.PID()); got != want {
		t.Fatalf("got %q, want %q", got, want)
	}
	// An error in the callee reaches the caller of the caller.
	_, err = client.Call[string](context.Background(), s.cl.Handle("front").Method("Relay"), "nowhere", 1, 2)
	if !errors.Is(err, client.ErrUser) || !strings.Contains(err.Error(), "no replica is serving nowhere") {
		t.Fatalf("relay to a missing deployment: %v", err)
	}
}

func TestDefaultMethodAndAsync(t *testing.T) {
	s := newStack(t)
	p := s.replica(t, "seed", "Probe", `["hello"]`, 5)
	h := s.cl.Handle("seed")
	resps := make([]*client.Response, 10)
	for i := range resps {
		resps[i] = h.Remote(context.Background(), fmt.Sprint(i))
	}
	for i, r := range resps {
		got, err := client.Await[string](r)
		if want := fmt.Sprintf("tag=hello pid=%d arg=%d", p.PID(), i); err != nil || got != want {
			t.Errorf("response %d: %q %v, want %q", i, got, err, want)
		}
	}
	s.replica(t, "double", "double", ``, 5)
	if got, err := client.Call[int](context.Background(), s.cl.Handle("double"), 21); err != nil || got != 42 {
		t.Fatalf("function deployment: %v %v", got, err)
	}
}

func TestHTTPEnvelope(t *testing.T) {
	s := newStack(t)
	p := s.replica(t, "web", "Probe", `["w"]`, 5)
	env := wire.AppendHTTPRequest(nil, &wire.HTTPRequest{Method: "POST", Path: "/web/x/y", Prefix: "/web", Query: "data=0.5", Headers: []string{"A", "b"}, Body: []byte("hi")})
	msg := &nats.Msg{Subject: wire.DeploymentSubject("web"), Header: nats.Header{wire.HeaderKind: {wire.KindHTTP}}, Data: env}
	reply, err := s.cl.RequestMsg(context.Background(), time.Time{}, "web", "", msg)
	if err != nil {
		t.Fatal(err)
	}
	rep, err := wire.DecodeHTTPReply(reply.Data)
	if err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprintf("tag=w pid=%d path=/web/x/y rel=/x/y query=data=0.5 body=hi", p.PID())
	if rep.Status != 200 || string(rep.Body) != want || rep.Headers[1] != "text/plain; charset=utf-8" {
		t.Fatalf("got %d %q %v, want %q", rep.Status, rep.Body, rep.Headers, want)
	}
	msg.Data = []byte{0xdd, 0xff, 0xff, 0xff, 0xff}
	if _, err := s.cl.RequestMsg(context.Background(), time.Time{}, "web", "", msg); !errors.Is(err, client.ErrBadRequest) {
		t.Fatalf("length bomb: %v", err)
	}
}

func TestConstructorFailureExits(t *testing.T) {
	s := newStack(t)
	spec := worker.ReplicaSpec{Deployment: "broken", Class: "Probe", Replica: "rbroken", NATSURL: s.url, InitArgs: json.RawMessage(`["fail:model file /m.pkl missing"]`),
		Creds: testutil.ReplicaCreds(t, s.url, "broken")}
	b, _ := json.Marshal(spec)
	p := testutil.StartWith(t, "", b, nil, s.bin, "replica")
	exited, err := p.Wait(20 * time.Second)
	var ee interface{ ExitCode() int }
	if !exited || !errors.As(err, &ee) || ee.ExitCode() != worker.ExitConstructor {
		t.Fatalf("exited=%v err=%v, want exit code %d", exited, err, worker.ExitConstructor)
	}
	if !strings.Contains(p.Output(), "constructor failed: class Probe: model file /m.pkl missing") {
		t.Fatalf("output lacks the constructor's message:\n%s", p.Output())
	}
}

// TestSDKLeavesDefaultMuxAlone serves http.DefaultServeMux from a replica
// of a user program: the SDK must not have registered anything on it (as
// importing net/http/pprof would, exposing /debug/pprof/ through the
// ingress).
func TestSDKLeavesDefaultMuxAlone(t *testing.T) {
	s := newStack(t)
	s.replica(t, "mux", "DefaultMux", ``, 5)
	for _, path := range []string{"/mux/debug/pprof/", "/mux/debug/pprof/heap", "/mux/debug/pprof/cmdline"} {
		env := wire.AppendHTTPRequest(nil, &wire.HTTPRequest{Method: "GET", Path: path, Prefix: "/mux"})
		msg := &nats.Msg{Subject: wire.DeploymentSubject("mux"), Header: nats.Header{wire.HeaderKind: {wire.KindHTTP}}, Data: env}
		reply, err := s.cl.RequestMsg(context.Background(), time.Time{}, "mux", "", msg)
		if err != nil {
			t.Fatal(err)
		}
		rep, err := wire.DecodeHTTPReply(reply.Data)
		if err != nil {
			t.Fatal(err)
		}
		if rep.Status != 404 {
			t.Errorf("GET %s through the default mux: %d %.60q, want 404", path, rep.Status, rep.Body)
		}
	}
}

// TestHungHealthCheckDoesNotBlockReconfigure hangs CheckHealth: the ping
// waits for it (bounded by the budget the ping carries), while a
// reconfigure on the same control subscription is answered at once, and a
// second ping joins the running check instead of starting another.
func TestHungHealthCheckDoesNotBlockReconfigure(t *testing.T) {
	s := newStack(t)
	r := s.replica(t, "hung", "Probe", `["h"]`, 5)
	if _, err := client.Call[int](context.Background(), s.cl.Handle("hung").Method("SetSick"), "hang"); err != nil {
		t.Fatal(err)
	}
	const budget = 6 * time.Second
	nc := s.cl.Conn()
	type result struct {
		st  worker.ReplicaStatus
		err error
	}
	pings := make(chan result, 2)
	ping := func() {
		m, err := nc.RequestMsg(&nats.Msg{Subject: wire.ReplicaSubject("hung", r.id, wire.VerbPing), Header: nats.Header{wire.HeaderTimeout: {wire.FormatTimeout(budget)}}}, 4*budget)
		var res result
		if res.err = err; err == nil {
			res.err = json.Unmarshal(m.Data, &res.st)
		}
		pings <- res
	}
	go ping()
	go ping()
	start := time.Now()
	// With the check run inline, this would wait for the whole budget.
	m, err := nc.Request(wire.ReplicaSubject("hung", r.id, wire.VerbReconfigure), []byte(`{"k":1}`), budget/2)
	if err != nil {
		t.Fatalf("reconfigure while CheckHealth hangs: %v", err)
	}
	if c := m.Header.Get(wire.HeaderCode); c != "" {
		t.Fatalf("reconfigure: %s %s", c, m.Header.Get(wire.HeaderError))
	}
	t.Logf("reconfigure answered in %v while CheckHealth hung", time.Since(start).Round(time.Millisecond))
	for i := 0; i < 2; i++ {
		res := <-pings
		if res.err != nil || res.st.Healthy || !strings.Contains(res.st.Error, "hung: context deadline exceeded") {
			t.Errorf("ping %d: %+v %v, want unhealthy with the hung check's error", i, res.st, res.err)
		}
	}
	t.Logf("pings answered %v after they were sent (budget %v)", time.Since(start).Round(time.Millisecond), budget)
}

// TestReplicaStopsItsGoroutines runs a replica in this process, calls it,
// pings it (CheckHealth), stops it and checks that nothing it started still
// runs.
func TestReplicaStopsItsGoroutines(t *testing.T) {
	verify := testutil.LeakCheck(t)
	b := testutil.Broker(t)
	var reg worker.Registry
	reg.Class("Healthy", func() *healthy { return &healthy{} })
	r, err := worker.NewReplica(&reg, worker.ReplicaSpec{Deployment: "inproc", Class: "Healthy", Replica: "rinproc", NATSURL: b.ClientURL(), Creds: testutil.ReplicaCreds(t, b.ClientURL(), "inproc")}, quiet)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- r.Run(context.Background()) }()
	nc := testutil.Conn(t, b.ClientURL())
	cl := client.New(nc)
	testutil.Eventually(t, 20*time.Second, func() error {
		_, err := nc.Request(wire.ReplicaSubject("inproc", "rinproc", wire.VerbPing), nil, 200*time.Millisecond)
		return err
	})
	if got, err := client.Call[int](context.Background(), cl.Handle("inproc").Method("Twice"), 21); err != nil || got != 42 {
		t.Fatalf("call: %v %v", got, err)
	}
	r.Stop()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("replica did not stop")
	}
	cl.Close()
	nc.Close()
	verify(b)
}

type healthy struct{}

func (*healthy) Twice(x int) int                       { return 2 * x }
func (*healthy) CheckHealth(ctx context.Context) error { return nil }

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))
