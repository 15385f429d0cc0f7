package worker_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/natserve/natserve/client"
	"github.com/natserve/natserve/internal/metrics"
	"github.com/natserve/natserve/internal/testutil"
	"github.com/natserve/natserve/internal/wire"
	"github.com/natserve/natserve/worker"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
)

// batchReply is what the batched test method answers each call with.
type batchReply struct {
	X     int
	Size  int
	Model string
	Mixed bool // the batch held calls for another model
}

type batchClass struct{}

// Echo is batched: x < 0 fails that call only, x == 666 panics.
func (batchClass) Echo(ctx context.Context, xs []int) ([]batchReply, []error) {
	out := make([]batchReply, len(xs))
	errs := make([]error, len(xs))
	for i, x := range xs {
		if x == 666 {
			panic("the devil's number")
		}
		if x < 0 {
			errs[i] = fmt.Errorf("negative input %d", x)
		}
		out[i] = batchReply{X: x, Size: len(xs), Model: worker.MultiplexedModelID(ctx)}
	}
	return out, errs
}

// Slow is Echo at 20 ms per batch, so that calls queue while a batch runs.
func (c batchClass) Slow(ctx context.Context, xs []int) ([]batchReply, error) {
	time.Sleep(20 * time.Millisecond)
	out, _ := c.Echo(ctx, xs)
	return out, nil
}

// Reconfigure takes {"max_batch_size": n} and applies it with the setter.
func (batchClass) Reconfigure(ctx context.Context, cfg struct {
	MaxBatchSize int `json:"max_batch_size"`
}) error {
	return worker.SetMaxBatchSize(ctx, "Echo", cfg.MaxBatchSize)
}

// muxModel is a loaded test model; Close counts unloads.
type muxModel struct {
	id     string
	closed *atomic.Int64
}

func (m *muxModel) Close() error { m.closed.Add(1); return nil }

type muxClass struct {
	loads  atomic.Int64
	closed atomic.Int64
}

func (c *muxClass) LoadModel(ctx context.Context, id string) (*muxModel, error) {
	if id == "broken" {
		return nil, errors.New("no such model")
	}
	c.loads.Add(1)
	return &muxModel{id: id, closed: &c.closed}, nil
}

// Echo is batched and multiplexed: it reports whether its batch mixed models.
func (c *muxClass) Echo(ctx context.Context, xs []int) []batchReply {
	m, err := worker.Model[*muxModel](ctx)
	if err != nil {
		panic(err)
	}
	out := make([]batchReply, len(xs))
	for i, x := range xs {
		out[i] = batchReply{X: x, Size: len(xs), Model: m.id, Mixed: m.id != worker.MultiplexedModelID(ctx)}
	}
	return out
}

// Which answers with the model id and the loads of this replica.
func (c *muxClass) Which(ctx context.Context) string {
	return fmt.Sprintf("%s %d", worker.MultiplexedModelID(ctx), c.loads.Load())
}

// inproc runs a replica of class in this process against url and stops it
// at the end of the test.
func inproc(t *testing.T, reg *worker.Registry, url, dep, class string, maxOngoing int, batching map[string]client.BatchConfig) string {
	t.Helper()
	id := fmt.Sprintf("r%s%d", dep, time.Now().UnixNano()%1e9)
	r, err := worker.NewReplica(reg, worker.ReplicaSpec{Deployment: dep, Class: class, Replica: id, NATSURL: url, MaxOngoingRequests: maxOngoing, Batching: batching, Metrics: true,
		Creds: testutil.ReplicaCreds(t, url, dep)}, quiet)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- r.Run(context.Background()) }()
	t.Cleanup(func() {
		r.Stop()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("replica %s: %v", id, err)
			}
		case <-time.After(30 * time.Second):
			t.Errorf("replica %s did not stop", id)
		}
	})
	nc := testutil.Conn(t, url)
	testutil.Eventually(t, 20*time.Second, func() error {
		select {
		case err := <-done:
			t.Fatalf("replica exited: %v", err)
		default:
		}
		_, err := nc.Request(wire.ReplicaSubject(dep, id, wire.VerbPing), nil, 200*time.Millisecond)
		return err
	})
	return id
}

// concurrently calls h with each x at once and returns the replies and
// errors by index.
func concurrently(h *client.Handle, xs []int) ([]batchReply, []error) {
	out := make([]batchReply, len(xs))
	errs := make([]error, len(xs))
	var wg sync.WaitGroup
	for i, x := range xs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = h.Call(context.Background(), &out[i], x)
		}()
	}
	wg.Wait()
	return out, errs
}

func TestBatchErrorsPerCallerAndPanic(t *testing.T) {
	b := testutil.Broker(t)
	var reg worker.Registry
	reg.Class("B", func() batchClass { return batchClass{} }, worker.Batched("Echo", worker.BatchOptions{MaxBatchSize: 8, BatchWaitTimeout: 2 * time.Second}))
	inproc(t, &reg, b.ClientURL(), "batch", "B", 16, nil)
	cl := client.New(testutil.Conn(t, b.ClientURL()))
	h := cl.Handle("batch").Method("Echo")

	// Eight calls fill a batch long before the 2 s wait; the negative
	// one fails alone.
	xs := []int{1, 2, 3, -4, 5, 6, 7, 8}
	start := time.Now()
	out, errs := concurrently(h, xs)
	t.Logf("8 calls answered in %v", time.Since(start).Round(time.Millisecond))
	for i, x := range xs {
		var ce *client.Error
		switch {
		case x < 0:
			if !errors.As(errs[i], &ce) || ce.Code != string(wire.CodeUser) {
				t.Errorf("call %d: err %v, want a user error", x, errs[i])
			}
		case errs[i] != nil:
			t.Errorf("call %d failed: %v", x, errs[i])
		case out[i].X != x || out[i].Size != 8:
			t.Errorf("call %d: reply %+v, want its own input in a batch of 8", x, out[i])
		}
	}

	// A panic fails every call of its batch; the replica keeps serving.
	_, errs = concurrently(h, []int{666, 1, 2, 3, 4, 5, 6, 7})
	for i, err := range errs {
		var ce *client.Error
		if !errors.As(err, &ce) || ce.Code != string(wire.CodePanic) {
			t.Errorf("call %d of the panicking batch: %v, want a panic error", i, err)
		}
	}
	out, errs = concurrently(h, []int{1, 2, 3, 4, 5, 6, 7, 8})
	for i, err := range errs {
		if err != nil || out[i].Size != 8 {
			t.Errorf("after the panic, call %d: %+v %v", i, out[i], err)
		}
	}
}

func TestBatchParametersChangeInPlace(t *testing.T) {
	b := testutil.Broker(t)
	var reg worker.Registry
	reg.Class("B", func() batchClass { return batchClass{} }, worker.Batched("Echo", worker.BatchOptions{MaxBatchSize: 8, BatchWaitTimeout: 2 * time.Second}))
	id := inproc(t, &reg, b.ClientURL(), "batch", "B", 16, map[string]client.BatchConfig{"echo": {MaxBatchSize: 4}})
	nc := testutil.Conn(t, b.ClientURL())
	cl := client.New(nc)
	h := cl.Handle("batch").Method("Echo")
	sizes := func(n int) map[int]int {
		t.Helper()
		xs := make([]int, n)
		out, errs := concurrently(h, xs)
		got := map[int]int{}
		for i := range out {
			if errs[i] != nil {
				t.Fatalf("call: %v", errs[i])
			}
			got[out[i].Size]++
		}
		return got
	}
	// The spec's block (by snake_case name) set 4.
	if got := sizes(8); got[4] != 8 {
		t.Errorf("with max_batch_size 4 from the spec: batch sizes %v, want two batches of 4", got)
	}
	status := func() worker.ReplicaStatus {
		m, err := nc.Request(wire.ReplicaSubject("batch", id, wire.VerbPing), nil, 2*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		var st worker.ReplicaStatus
		_ = json.Unmarshal(m.Data, &st)
		return st
	}
	reconfigure := func(batching, userConfig string) {
		t.Helper()
		msg := nats.NewMsg(wire.ReplicaSubject("batch", id, wire.VerbReconfigure))
		msg.Header.Set(wire.HeaderBatching, batching)
		msg.Data = []byte(userConfig)
		m, err := nc.RequestMsg(msg, 5*time.Second)
		if err != nil || m.Header.Get(wire.HeaderCode) != "" {
			t.Fatalf("reconfigure %s %s: %v %s", batching, userConfig, err, m.Header.Get(wire.HeaderError))
		}
	}
	pid := status().PID
	// The controller's in-place change: a new batching block.
	reconfigure(`{"Echo":{"max_batch_size":2}}`, "")
	if got := sizes(8); got[2] != 8 {
		t.Errorf("after max_batch_size 2 in place: batch sizes %v, want four batches of 2", got)
	}
	// Reconfigure's setter.
	reconfigure(`{"Echo":{"max_batch_size":2}}`, `{"max_batch_size": 8}`)
	if got := sizes(8); got[8] != 8 {
		t.Errorf("after SetMaxBatchSize(8) in Reconfigure: batch sizes %v, want one batch of 8", got)
	}
	st := status()
	if st.PID != pid || st.Batching["Echo"].MaxBatchSize != 8 {
		t.Errorf("status %+v: want the same process with max_batch_size 8", st.Batching)
	}
	if h := st.Batching["Echo"].Size; h.Count < 7 || h.Mean() < 2 {
		t.Errorf("batch size histogram %+v: want the batches above", h)
	}
	// The Prometheus metrics say the same.
	f := scrapeReplica(t, nc, "batch", id)
	if n, ok := f.Value("natserve_replica_batch_size", map[string]string{"method": "Echo", "deployment": "batch"}); !ok || n != float64(st.Batching["Echo"].Size.Count) {
		t.Errorf("natserve_replica_batch_size count %v (found %v), want %d", n, ok, st.Batching["Echo"].Size.Count)
	}
	if n, ok := f.Value("natserve_replica_batch_wait_seconds", map[string]string{"method": "Echo"}); !ok || n < 24 {
		t.Errorf("natserve_replica_batch_wait_seconds count %v (found %v), want the 24 calls", n, ok)
	}
	// A bad block is refused with a one-line error, and nothing changes.
	msg := nats.NewMsg(wire.ReplicaSubject("batch", id, wire.VerbReconfigure))
	msg.Header.Set(wire.HeaderBatching, `{"Nope":{"max_batch_size":2}}`)
	m, err := nc.RequestMsg(msg, 5*time.Second)
	if err != nil || m.Header.Get(wire.HeaderCode) == "" {
		t.Fatalf("a block naming no method was taken: %v", err)
	}
	t.Logf("refused: %s", m.Header.Get(wire.HeaderError))
}

// TestBatchAdaptiveWait: with a 5 s wait, a lone caller is still served at
// once when adaptive_wait is on (set by the spec's block), and 8 callers at
// once are still batched.
func TestBatchAdaptiveWait(t *testing.T) {
	b := testutil.Broker(t)
	var reg worker.Registry
	reg.Class("B", func() batchClass { return batchClass{} }, worker.Batched("Echo", worker.BatchOptions{}),
		worker.Batched("Slow", worker.BatchOptions{MaxBatchSize: 8, BatchWaitTimeout: 5 * time.Second}))
	on := true
	inproc(t, &reg, b.ClientURL(), "adaptive", "B", 16, map[string]client.BatchConfig{"Slow": {AdaptiveWait: &on}})
	cl := client.New(testutil.Conn(t, b.ClientURL()))
	h := cl.Handle("adaptive").Method("Slow")
	start := time.Now()
	for i := 0; i < 3; i++ {
		var r batchReply
		if err := h.Call(context.Background(), &r, i); err != nil || r.Size != 1 {
			t.Fatalf("lone call %d: %+v %v", i, r, err)
		}
	}
	took := time.Since(start)
	t.Logf("3 lone calls with a 5 s wait took %v", took.Round(time.Millisecond))
	if took > 4*time.Second {
		t.Errorf("3 lone calls took %v: the adaptive wait waited", took)
	}
	// A burst is still batched (its stragglers may wait up to the wait,
	// as with a fixed wait).
	out, errs := concurrently(h, []int{1, 2, 3, 4, 5, 6, 7, 8})
	sizes := map[int]int{}
	for i := range out {
		if errs[i] != nil {
			t.Fatal(errs[i])
		}
		sizes[out[i].Size]++
	}
	t.Logf("8 calls at once: batch sizes %v", sizes)
	if sizes[1] == 8 {
		t.Error("8 calls at once ran one by one")
	}
}

func TestMultiplexedBatchesDoNotMixModels(t *testing.T) {
	b := testutil.Broker(t)
	var reg worker.Registry
	reg.Class("M", func() *muxClass { return &muxClass{} }, worker.Multiplexed("LoadModel", 2), worker.Batched("Echo", worker.BatchOptions{MaxBatchSize: 8, BatchWaitTimeout: 50 * time.Millisecond}))
	inproc(t, &reg, b.ClientURL(), "mux", "M", 32, nil)
	cl := client.New(testutil.Conn(t, b.ClientURL()))
	var wg sync.WaitGroup
	var mixed, calls atomic.Int64
	for _, model := range []string{"a", "b"} {
		h := cl.Handle("mux").Method("Echo").Options(client.MultiplexedModelID(model))
		for i := 0; i < 8; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				var r batchReply
				if err := h.Call(context.Background(), &r, i); err != nil {
					t.Errorf("call: %v", err)
					return
				}
				calls.Add(1)
				if r.Model != model || r.Mixed {
					mixed.Add(1)
				}
			}()
		}
	}
	wg.Wait()
	if mixed.Load() != 0 || calls.Load() != 16 {
		t.Errorf("%d of %d calls were served in a batch of another model", mixed.Load(), calls.Load())
	}
	// No model id: 400 (bad request), naming the header.
	err := cl.Handle("mux").Method("Echo").Call(context.Background(), nil, 1)
	var ce *client.Error
	if !errors.As(err, &ce) || ce.HTTPStatus() != 400 {
		t.Errorf("a call without a model id: %v, want a 400", err)
	} else {
		t.Logf("without a model id: %v", err)
	}
	// A loader error fails that call.
	err = cl.Handle("mux").Method("Which").Options(client.MultiplexedModelID("broken")).Call(context.Background(), nil)
	if !errors.As(err, &ce) || ce.Code != string(wire.CodeUser) {
		t.Errorf("a model that fails to load: %v, want a user error", err)
	}
}

// TestMultiplexRouting: two replicas holding at most two models each; four
// models cycled ten times cost four loads in all (each model is loaded
// once, on a replica with a free slot, then always found), and a fifth
// model evicts (and closes) the least recently used one.
func TestMultiplexRouting(t *testing.T) {
	b := testutil.Broker(t)
	var reg worker.Registry
	classes := []*muxClass{}
	var mu sync.Mutex
	reg.Class("M", func() *muxClass {
		c := &muxClass{}
		mu.Lock()
		classes = append(classes, c)
		mu.Unlock()
		return c
	}, worker.Multiplexed("LoadModel", 2), worker.Batched("Echo", worker.BatchOptions{}))
	r1 := inproc(t, &reg, b.ClientURL(), "mux", "M", 8, nil)
	r2 := inproc(t, &reg, b.ClientURL(), "mux", "M", 8, nil)
	nc := testutil.Conn(t, b.ClientURL())
	cl := client.New(nc)
	for round := 0; round < 10; round++ {
		for _, m := range []string{"m1", "m2", "m3", "m4"} {
			got, err := client.Call[string](context.Background(), cl.Handle("mux").Method("Which").Options(client.MultiplexedModelID(m)))
			if err != nil || got[:2] != m {
				t.Fatalf("model %s: %q %v", m, got, err)
			}
		}
	}
	st := cl.Multiplex("mux")
	t.Logf("routing: %d hits, %d free-slot, %d fallback (hit rate %.2f)", st.Hits.Load(), st.FreeSlot.Load(), st.Fallback.Load(), st.HitRate())
	total := int64(0)
	for _, c := range classes {
		total += c.loads.Load()
		if c.loads.Load() > 3 {
			t.Errorf("a replica loaded %d models, want at most 3", c.loads.Load())
		}
	}
	if total != 4 || st.Hits.Load() != 36 {
		t.Errorf("%d loads and %d hits for 40 calls over 4 models, want 4 and 36", total, st.Hits.Load())
	}
	// A fifth model: no holder, no free slot; some replica evicts its
	// least recently used model and closes it.
	if _, err := client.Call[string](context.Background(), cl.Handle("mux").Method("Which").Options(client.MultiplexedModelID("m5"))); err != nil {
		t.Fatal(err)
	}
	closed := int64(0)
	for _, c := range classes {
		closed += c.closed.Load()
	}
	if closed != 1 || st.Fallback.Load() != 1 {
		t.Errorf("after a fifth model: %d closed, %d fallbacks, want 1 and 1", closed, st.Fallback.Load())
	}
	loadsMetric := 0.0
	for _, id := range []string{r1, r2} {
		n, _ := scrapeReplica(t, nc, "mux", id).Value("natserve_replica_multiplexed_model_loads_total", nil)
		loadsMetric += n
	}
	if loadsMetric != 5 {
		t.Errorf("natserve_replica_multiplexed_model_loads_total sums to %v over the replicas, want 5", loadsMetric)
	}
	for _, id := range []string{r1, r2} {
		m, err := nc.Request(wire.ReplicaSubject("mux", id, wire.VerbPing), nil, 2*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		var s worker.ReplicaStatus
		_ = json.Unmarshal(m.Data, &s)
		if s.Models == nil || len(s.Models.Loaded) > 2 {
			t.Errorf("replica %s status models: %+v", id, s.Models)
		} else {
			t.Logf("replica %s: loaded %v, %d loads, %d unloads", id, s.Models.Loaded, s.Models.Loads, s.Models.Unloads)
		}
	}
}

// scrapeReplica asks a replica for its metrics as its node agent does.
func scrapeReplica(t *testing.T, nc *nats.Conn, deployment, id string) metrics.Families {
	t.Helper()
	m, err := nc.Request(wire.ReplicaSubject(deployment, id, wire.VerbMetrics), nil, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	dec := expfmt.NewDecoder(bytes.NewReader(m.Data), expfmt.NewFormat(expfmt.TypeProtoDelim))
	out := metrics.Families{}
	for {
		mf := &dto.MetricFamily{}
		if err := dec.Decode(mf); err != nil {
			if !errors.Is(err, io.EOF) {
				t.Fatal(err)
			}
			return out
		}
		out[mf.GetName()] = mf
	}
}

// TestMultiplexChurn: one model slot per replica and three models asked
// for at random from four callers: models are evicted and subjects
// (un)subscribed all the time, and no request is lost on the way (a lost
// one would run into its 20 s deadline).
func TestMultiplexChurn(t *testing.T) {
	b := testutil.Broker(t)
	var reg worker.Registry
	reg.Class("M", func() *muxClass { return &muxClass{} }, worker.Multiplexed("LoadModel", 1))
	r1 := inproc(t, &reg, b.ClientURL(), "churn", "M", 8, nil)
	r2 := inproc(t, &reg, b.ClientURL(), "churn", "M", 8, nil)
	nc := testutil.Conn(t, b.ClientURL())
	cl := client.New(nc)
	var wg sync.WaitGroup
	var failed atomic.Int64
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 60; i++ {
				m := []string{"a", "b", "c"}[(i*7+w)%3]
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
				got, err := client.Call[string](ctx, cl.Handle("churn").Method("Which").Options(client.MultiplexedModelID(m)))
				cancel()
				if err != nil || got[:1] != m {
					failed.Add(1)
					t.Errorf("call for %s: %q %v", m, got, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	for _, id := range []string{r1, r2} {
		m, err := nc.Request(wire.ReplicaSubject("churn", id, wire.VerbPing), nil, 2*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		var s worker.ReplicaStatus
		_ = json.Unmarshal(m.Data, &s)
		t.Logf("replica %s: loaded %v, %d loads, %d unloads", id, s.Models.Loaded, s.Models.Loads, s.Models.Unloads)
		if len(s.Models.Loaded) > 1 {
			t.Errorf("replica %s holds %v, more than its 1 slot", id, s.Models.Loaded)
		}
	}
	st := cl.Multiplex("churn")
	t.Logf("routing: %d hits, %d free-slot, %d fallback", st.Hits.Load(), st.FreeSlot.Load(), st.Fallback.Load())
}

func TestBatchRegistrationErrors(t *testing.T) {
	for name, opts := range map[string][]worker.ClassOption{
		"no such method":  {worker.Batched("Nope", worker.BatchOptions{})},
		"not a slice":     {worker.Batched("Which", worker.BatchOptions{})},
		"no loader":       {worker.Multiplexed("Nope", 2)},
		"zero models":     {worker.Multiplexed("LoadModel", 0)},
		"loader shape":    {worker.Multiplexed("Which", 2)},
		"batched twice":   {worker.Batched("Echo", worker.BatchOptions{}), worker.Batched("Echo", worker.BatchOptions{})},
		"negative size":   {worker.Batched("Echo", worker.BatchOptions{MaxBatchSize: -1})},
		"mux given twice": {worker.Multiplexed("LoadModel", 1), worker.Multiplexed("LoadModel", 1)},
	} {
		var reg worker.Registry
		reg.Class("M", func() *muxClass { return &muxClass{} }, opts...)
		if err := reg.Err(); err == nil {
			t.Errorf("%s: registered", name)
		} else {
			t.Logf("%s: %v", name, err)
		}
	}
	var reg worker.Registry
	reg.Class("M", func() *muxClass { return &muxClass{} }, worker.Multiplexed("LoadModel", 2))
	if ms, _ := reg.Methods("M"); len(ms) == 0 || fmt.Sprint(ms) != "[Echo Which echo which]" {
		t.Errorf("methods %v: the loader must not be callable", ms)
	}
}
