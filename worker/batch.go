package worker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"reflect"
	"runtime/debug"
	"sync"
	"time"

	"github.com/natserve/natserve/client"
	"github.com/natserve/natserve/internal/wire"
)

// ErrBatch is returned (wrapped) for batching parameters that cannot be
// applied: an unknown or unbatched method, or a value out of range.
var ErrBatch = errors.New("batching")

var errsType = reflect.TypeFor[[]error]()

// batchSpec is what a batched method adds to its method.
type batchSpec struct {
	item    *method      // the per-call shape, for decoding a call's argument
	slice   reflect.Type // []T, the method's parameter
	perErrs bool         // returns ([]R, []error)
	opts    batchParams  // as registered
}

// batchParams are the effective batching parameters of a method.
type batchParams struct {
	maxSize    int
	wait       time.Duration
	concurrent int
	adaptive   bool // wait for no more calls than the recent peak (BatchOptions.AdaptiveWait)
}

func (o BatchOptions) params() batchParams {
	p := batchParams{maxSize: o.MaxBatchSize, wait: o.BatchWaitTimeout, concurrent: o.MaxConcurrentBatches, adaptive: o.AdaptiveWait}
	if p.maxSize == 0 {
		p.maxSize = client.DefaultMaxBatchSize
	}
	switch {
	case p.wait == 0:
		p.wait = time.Duration(client.DefaultBatchWaitTimeoutS * float64(time.Second))
	case p.wait < 0:
		p.wait = 0
	}
	if p.concurrent == 0 {
		p.concurrent = client.DefaultMaxConcurrentBatches
	}
	return p
}

// merge applies a spec's batching block over p.
func (p batchParams) merge(c client.BatchConfig) batchParams {
	if c.MaxBatchSize > 0 {
		p.maxSize = c.MaxBatchSize
	}
	if c.BatchWaitTimeoutS != nil {
		p.wait = time.Duration(*c.BatchWaitTimeoutS * float64(time.Second))
	}
	if c.MaxConcurrentBatches > 0 {
		p.concurrent = c.MaxConcurrentBatches
	}
	if c.AdaptiveWait != nil {
		p.adaptive = *c.AdaptiveWait
	}
	return p
}

// newBatchMethod checks the shape of a batched method: (ctx?, []T) returning
// []R, ([]R, error) or ([]R, []error).
func newBatchMethod(name string, fn reflect.Value, receiver bool, opts BatchOptions) (*method, error) {
	t := fn.Type()
	first := 0
	if receiver {
		first = 1
	}
	m := &method{name: name, fn: fn, receiver: receiver}
	var params []reflect.Type
	for i := first; i < t.NumIn(); i++ {
		if i == first && t.In(i) == ctxType {
			m.takesCtx = true
			continue
		}
		params = append(params, t.In(i))
	}
	shape := fmt.Errorf("batched method %s must take (ctx, []T) and return []R, ([]R, error) or ([]R, []error), not %v", name, t)
	if t.IsVariadic() || len(params) != 1 || params[0].Kind() != reflect.Slice {
		return nil, shape
	}
	elem := params[0].Elem()
	item := &method{name: name, in: []reflect.Type{elem}, takesReq: elem == requestType}
	if !item.takesReq {
		if err := wireable(elem); err != nil {
			return nil, fmt.Errorf("batched method %s: element: %v", name, err)
		}
	}
	m.in = params
	bs := &batchSpec{item: item, slice: params[0], opts: opts.params()}
	switch {
	case t.NumOut() == 1 && t.Out(0).Kind() == reflect.Slice && t.Out(0) != errsType:
	case t.NumOut() == 2 && t.Out(0).Kind() == reflect.Slice && t.Out(1) == errType:
		m.hasErr = true
	case t.NumOut() == 2 && t.Out(0).Kind() == reflect.Slice && t.Out(1) == errsType:
		bs.perErrs = true
	default:
		return nil, shape
	}
	m.hasResult, m.resultType = true, t.Out(0).Elem()
	if err := wireable(m.resultType); err != nil {
		return nil, fmt.Errorf("batched method %s: result element: %v", name, err)
	}
	m.batch = bs
	return m, nil
}

// invokeBatch calls a batched method on the arguments of n calls and
// returns one result and one error per call; err (a *PanicError, or the
// method's single error) fails them all.
func (inst *instance) invokeBatch(ctx context.Context, m *method, args []reflect.Value) (results []any, errs []error, err error) {
	n := len(args)
	slice := reflect.MakeSlice(m.batch.slice, n, n)
	for i, a := range args {
		slice.Index(i).Set(a)
	}
	in := make([]reflect.Value, 0, 3)
	if m.receiver {
		in = append(in, inst.recv)
	}
	if m.takesCtx {
		in = append(in, reflect.ValueOf(ctx))
	}
	in = append(in, slice)
	defer func() {
		if p := recover(); p != nil {
			results, errs, err = nil, nil, &PanicError{Value: p, Stack: debug.Stack()}
		}
	}()
	out := m.fn.Call(in)
	if m.hasErr && !out[1].IsNil() {
		return nil, nil, out[1].Interface().(error)
	}
	res := out[0]
	if res.Len() != n {
		return nil, nil, fmt.Errorf("%w: batched method %s returned %d results for %d calls", errBatchShape, m.name, res.Len(), n)
	}
	results = make([]any, n)
	for i := range results {
		results[i] = res.Index(i).Interface()
	}
	errs = make([]error, n)
	if m.batch.perErrs {
		ev := out[1]
		if !ev.IsNil() && ev.Len() != n {
			return nil, nil, fmt.Errorf("%w: batched method %s returned %d errors for %d calls", errBatchShape, m.name, ev.Len(), n)
		}
		for i := 0; i < ev.Len(); i++ {
			if e := ev.Index(i); !e.IsNil() {
				errs[i] = e.Interface().(error)
			}
		}
	}
	return results, errs, nil
}

var errBatchShape = errors.New("batch result")

// batchItem is one call waiting in a batcher.
type batchItem struct {
	arg      reflect.Value
	model    *modelEntry // nil without multiplexing
	key      string      // the model id: batches never mix them
	deadline time.Time   // zero: none
	enq      time.Time
	done     chan struct{} // closed when res and err are set
	res      any
	err      error
}

// batcher gathers the calls of one batched method of a replica and runs
// them in batches. Its loop goroutine is owned by the replica (started by
// start, stopped by stop); batches run on goroutines of their own, at most
// the method's max_concurrent_batches at once.
type batcher struct {
	r    *Replica
	m    *method
	log  *slog.Logger
	in   chan *batchItem
	kick chan struct{} // the parameters changed
	quit chan struct{}
	wg   sync.WaitGroup // the loop and the running batches

	mu     sync.Mutex // guards params
	params batchParams

	stats batchStats
}

func newBatcher(r *Replica, m *method, p batchParams) *batcher {
	return &batcher{r: r, m: m, log: r.log.With("method", m.name), in: make(chan *batchItem, 64), kick: make(chan struct{}, 1), quit: make(chan struct{}), params: p}
}

func (b *batcher) start() {
	b.wg.Add(1)
	go func() {
		defer b.wg.Done()
		b.loop()
	}()
}

func (b *batcher) stop() {
	close(b.quit)
	b.wg.Wait()
}

func (b *batcher) get() batchParams {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.params
}

// set changes the parameters in place; waiting calls are batched with the
// new ones at once.
func (b *batcher) set(f func(*batchParams)) {
	b.mu.Lock()
	f(&b.params)
	p := b.params
	b.mu.Unlock()
	if max := b.r.spec.MaxOngoingRequests; p.maxSize > max {
		b.log.Warn("max_batch_size is more than max_ongoing_requests: batches cannot fill; raise max_ongoing_requests", "max_batch_size", p.maxSize, "max_ongoing_requests", max)
	}
	select {
	case b.kick <- struct{}{}:
	default:
	}
}

// submit queues one call and waits for its result.
func (b *batcher) submit(it *batchItem) (any, error) {
	it.enq = time.Now()
	it.done = make(chan struct{})
	select {
	case b.in <- it:
	case <-b.quit:
		return nil, fmt.Errorf("replica %s is stopping", b.r.spec.Replica)
	}
	<-it.done
	return it.res, it.err
}

func (b *batcher) loop() {
	queues := map[string][]*batchItem{}
	running, runningCalls, queued := 0, 0, 0
	done := make(chan int) // a batch of that many calls finished
	// The longest the queue has been in this and the previous second, for
	// the adaptive wait.
	peakCur, peakPrev, peakSince := 0, 0, time.Now()
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		// Run every batch that is due (full, or its first call waited
		// long enough) while a slot is free, oldest first.
		p := b.get()
		now := time.Now()
		if now.Sub(peakSince) > time.Second {
			peakPrev, peakCur, peakSince = peakCur, 0, now
		}
		// Adaptive: the queue is as long as it has been lately (before
		// this event); more calls are unlikely to come.
		enough := p.adaptive && queued >= min(p.maxSize, max(peakCur, peakPrev))
		peakCur = max(peakCur, queued)
		for running < p.concurrent {
			key, oldest := "", time.Time{}
			for k, q := range queues {
				if (len(q) >= p.maxSize || enough || now.Sub(q[0].enq) >= p.wait) && (oldest.IsZero() || q[0].enq.Before(oldest)) {
					key, oldest = k, q[0].enq
				}
			}
			if oldest.IsZero() {
				break
			}
			q := queues[key]
			n := min(len(q), p.maxSize)
			batch := q[:n:n]
			if n == len(q) {
				delete(queues, key)
			} else {
				queues[key] = q[n:]
			}
			running++
			runningCalls += n
			queued -= n
			b.wg.Add(1)
			go func() {
				defer b.wg.Done()
				b.run(batch)
				select {
				case done <- len(batch):
				case <-b.quit:
				}
			}()
		}
		var next time.Time
		for _, q := range queues {
			if due := q[0].enq.Add(p.wait); len(q) < p.maxSize && (next.IsZero() || due.Before(next)) {
				next = due
			}
		}
		if !next.IsZero() {
			timer.Reset(max(time.Until(next), 0))
		}
		select {
		case it := <-b.in:
			queues[it.key] = append(queues[it.key], it)
			queued++
		case n := <-done:
			running--
			runningCalls -= n
		case <-timer.C:
		case <-b.kick:
		case <-b.quit:
			for _, q := range queues {
				for _, it := range q {
					it.err = fmt.Errorf("replica %s is stopping", b.r.spec.Replica)
					close(it.done)
				}
			}
			return
		}
	}
}

// run calls the method on one batch and hands each caller its result.
func (b *batcher) run(batch []*batchItem) {
	now := time.Now()
	live := batch[:0:0]
	var latest time.Time // the batch's deadline: the latest of its calls'
	unbounded := false
	for _, it := range batch {
		if !it.deadline.IsZero() && now.After(it.deadline) {
			it.err = fmt.Errorf("waited %v for a batch, past the deadline: %w", now.Sub(it.enq).Round(time.Millisecond), context.DeadlineExceeded)
			close(it.done)
			continue
		}
		if it.deadline.IsZero() {
			unbounded = true
		} else if it.deadline.After(latest) {
			latest = it.deadline
		}
		live = append(live, it)
	}
	if unbounded {
		latest = time.Time{}
	}
	if len(live) == 0 {
		return
	}
	b.stats.record(live, now)
	ctx := context.WithValue(context.Background(), replicaKey, b.r)
	if e := live[0].model; e != nil {
		ctx = context.WithValue(ctx, modelKey, e)
	}
	if !latest.IsZero() {
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(ctx, latest)
		defer cancel()
	}
	args := make([]reflect.Value, len(live))
	for i, it := range live {
		args[i] = it.arg
	}
	results, errs, err := b.r.inst.invokeBatch(ctx, b.m, args)
	for i, it := range live {
		if err != nil {
			it.err = err
		} else {
			it.res, it.err = results[i], errs[i]
		}
		close(it.done)
	}
}

// The setters of Ray Serve's batch wrapper, for a class's Reconfigure (or
// any method) to tune its batched methods at run time; ctx is the one the
// replica passed in.

// SetMaxBatchSize sets the max_batch_size of a batched method of the
// replica ctx runs in.
func SetMaxBatchSize(ctx context.Context, method string, n int) error {
	if n < 1 || n > client.MaxBatchSizeLimit {
		return fmt.Errorf("%w: %s: max_batch_size %d is out of range (1 to %d)", ErrBatch, method, n, client.MaxBatchSizeLimit)
	}
	return setBatch(ctx, method, func(p *batchParams) { p.maxSize = n })
}

// SetBatchWaitTimeout sets the batch_wait_timeout_s of a batched method.
func SetBatchWaitTimeout(ctx context.Context, method string, d time.Duration) error {
	if d < 0 || d > time.Duration(client.MaxBatchWaitTimeoutS*float64(time.Second)) {
		return fmt.Errorf("%w: %s: batch wait timeout %v is out of range (0 to %vs)", ErrBatch, method, d, client.MaxBatchWaitTimeoutS)
	}
	return setBatch(ctx, method, func(p *batchParams) { p.wait = d })
}

// SetMaxConcurrentBatches sets the max_concurrent_batches of a batched method.
func SetMaxConcurrentBatches(ctx context.Context, method string, n int) error {
	if n < 1 || n > client.MaxConcurrentBatchesLimit {
		return fmt.Errorf("%w: %s: max_concurrent_batches %d is out of range (1 to %d)", ErrBatch, method, n, client.MaxConcurrentBatchesLimit)
	}
	return setBatch(ctx, method, func(p *batchParams) { p.concurrent = n })
}

func setBatch(ctx context.Context, method string, f func(*batchParams)) error {
	r, ok := ctx.Value(replicaKey).(*Replica)
	if !ok {
		return fmt.Errorf("%w: %s: not called in a natserve replica", ErrBatch, method)
	}
	b, err := r.batcherOf(method)
	if err != nil {
		return err
	}
	b.set(f)
	return nil
}

// batcherOf finds the batcher of a method by name or snake_case alias.
func (r *Replica) batcherOf(method string) (*batcher, error) {
	m := r.cls.methods[method]
	if m == nil || hook(method) {
		return nil, fmt.Errorf("%w: class %s has no method %s", ErrBatch, r.cls.name, method)
	}
	b := r.batchers[m]
	if b == nil {
		return nil, fmt.Errorf("%w: method %s of class %s is not batched (register it with worker.Batched)", ErrBatch, method, r.cls.name)
	}
	return b, nil
}

// applyBatching applies a spec's batching block over the parameters the
// class registered.
func (r *Replica) applyBatching(block map[string]client.BatchConfig) error {
	for name, c := range block {
		if err := c.Validate(); err != nil {
			return fmt.Errorf("%w: %s: %v", ErrBatch, name, err)
		}
		if _, err := r.batcherOf(name); err != nil {
			return err
		}
	}
	// The block is the whole desired state over the registered values: a
	// method it no longer names goes back to them.
	for m, b := range r.batchers {
		p := m.batch.opts
		for name, c := range block {
			if r.cls.methods[name] == m {
				p = p.merge(c)
			}
		}
		b.set(func(cur *batchParams) { *cur = p })
	}
	return nil
}

// batchStats are a batched method's histograms of batch size and of the
// time calls waited for their batch.
type batchStats struct {
	mu   sync.Mutex // guards size and wait
	size wire.Histogram
	wait wire.Histogram // milliseconds
}

var (
	batchSizeBounds = []float64{1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024}
	batchWaitBounds = []float64{0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000}
)

func (s *batchStats) record(batch []*batchItem, now time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.size.Bounds == nil {
		s.size, s.wait = wire.NewHistogram(batchSizeBounds), wire.NewHistogram(batchWaitBounds)
	}
	s.size.Observe(float64(len(batch)))
	for _, it := range batch {
		s.wait.Observe(float64(now.Sub(it.enq)) / float64(time.Millisecond))
	}
}

func (s *batchStats) snapshot(p batchParams) wire.BatchStats {
	s.mu.Lock()
	defer s.mu.Unlock()
	return wire.BatchStats{
		MaxBatchSize: p.maxSize, BatchWaitTimeoutS: p.wait.Seconds(), MaxConcurrentBatches: p.concurrent,
		Size: s.size.Clone(), WaitMS: s.wait.Clone(),
	}
}
