package worker

import (
	"context"
	"errors"
	"fmt"
	"io"
	"reflect"
	"sort"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/natserve/natserve/internal/wire"
)

// ErrNoModel is returned (wrapped) by Model outside a multiplexed call or
// for a model of another type.
var ErrNoModel = errors.New("no multiplexed model")

type muxSpec struct {
	loader *method
	max    int
}

const modelKey ctxKey = 1

// MultiplexedModelID returns the model id of the call ctx belongs to (Ray
// Serve's serve.get_multiplexed_model_id), or "" outside a multiplexed call.
func MultiplexedModelID(ctx context.Context) string {
	if e, ok := ctx.Value(modelKey).(*modelEntry); ok {
		return e.id
	}
	return ""
}

// Model returns the loaded model of the call ctx belongs to, as the loader
// returned it.
func Model[M any](ctx context.Context) (M, error) {
	var zero M
	e, ok := ctx.Value(modelKey).(*modelEntry)
	if !ok {
		return zero, fmt.Errorf("%w: the call is not to a multiplexed class", ErrNoModel)
	}
	m, ok := e.val.(M)
	if !ok {
		return zero, fmt.Errorf("%w: model %q is a %T, not a %T", ErrNoModel, e.id, e.val, zero)
	}
	return m, nil
}

// modelEntry is one model a replica holds or is loading.
type modelEntry struct {
	id      string
	ready   chan struct{} // closed when val or err is set
	val     any
	err     error
	loaded  bool   // guarded by models.mu
	refs    int    // calls using it; guarded by models.mu
	used    uint64 // LRU clock; guarded by models.mu
	evicted bool   // guarded by models.mu
}

// models is a replica's LRU of loaded models, and the subscriptions that
// route requests for them here.
type models struct {
	r    *Replica
	spec *muxSpec

	mu      sync.Mutex // guards byID, clock and the counters
	byID    map[string]*modelEntry
	clock   uint64
	loads   int64
	unloads int64
	failed  int64
	latency wire.Histogram

	subMu sync.Mutex                    // guards subs and free; held across (un)subscribing
	subs  map[string]*nats.Subscription // model id → its subject's subscription
	free  *nats.Subscription            // the free-slot subject's; nil when full
	// retired are subscriptions draining after an eviction: they may still
	// deliver to the inbox, so the replica's drain waits for them too.
	retired []*nats.Subscription
}

var loadLatencyBounds = []float64{1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 60000}

func newModels(r *Replica, spec *muxSpec) *models {
	return &models{r: r, spec: spec, byID: map[string]*modelEntry{}, subs: map[string]*nats.Subscription{}, latency: wire.NewHistogram(loadLatencyBounds)}
}

// acquire returns model id loaded and holds it until release: it is not
// unloaded while a call uses it. A model not held is loaded, after the
// least recently used one is evicted if the replica holds max already.
func (ms *models) acquire(ctx context.Context, id string) (*modelEntry, error) {
	ms.mu.Lock()
	ms.clock++
	if e := ms.byID[id]; e != nil {
		e.refs++
		e.used = ms.clock
		ms.mu.Unlock()
		<-e.ready
		if e.err != nil {
			ms.release(e)
			return nil, e.err
		}
		return e, nil
	}
	victims := ms.evictLocked(ms.spec.max - 1)
	e := &modelEntry{id: id, ready: make(chan struct{}), refs: 1, used: ms.clock}
	ms.byID[id] = e
	ms.mu.Unlock()
	for _, v := range victims {
		ms.unload(v)
	}
	start := time.Now()
	val, err := ms.r.inst.invoke(ctx, ms.spec.loader, []reflect.Value{reflect.ValueOf(id)})
	took := time.Since(start)
	ms.mu.Lock()
	if err != nil {
		var pe *PanicError
		if !errors.As(err, &pe) {
			err = fmt.Errorf("loading model %q: %w", id, err)
		}
		e.err = err
		ms.failed++
		if ms.byID[id] == e {
			delete(ms.byID, id)
		}
	} else {
		e.val, e.loaded = val, true
		ms.loads++
		ms.latency.Observe(float64(took) / float64(time.Millisecond))
	}
	// Loads that ran at once may have left more models than slots: evict
	// down to max now that they are loaded.
	victims = ms.evictLocked(ms.spec.max)
	ms.mu.Unlock()
	for _, v := range victims {
		ms.unload(v)
	}
	close(e.ready)
	ms.r.log.Info("model loaded", "model", id, "took", took, "err", err)
	ms.resubscribe()
	if err != nil {
		ms.release(e)
		return nil, err
	}
	return e, nil
}

// evictLocked evicts least recently used loaded models until at most keep
// remain (models still loading are not evicted, so more may remain for a
// while) and returns those to unload now (the others are unloaded by their
// last user).
func (ms *models) evictLocked(keep int) []*modelEntry {
	var victims []*modelEntry
	for len(ms.byID) > keep {
		var lru *modelEntry
		for _, e := range ms.byID {
			if e.loaded && (lru == nil || e.used < lru.used) {
				lru = e
			}
		}
		if lru == nil {
			break // every slot is loading: hold more for a while
		}
		delete(ms.byID, lru.id)
		lru.evicted = true
		if lru.refs == 0 {
			victims = append(victims, lru)
		}
	}
	return victims
}

// release ends a call's use of e; an evicted model is unloaded by its last
// user.
func (ms *models) release(e *modelEntry) {
	ms.mu.Lock()
	e.refs--
	last := e.evicted && e.refs == 0 && e.loaded
	ms.mu.Unlock()
	if last {
		ms.unload(e)
	}
}

// unload calls the model's Close or Unload, if it has one.
func (ms *models) unload(e *modelEntry) {
	var err error
	func() {
		defer func() {
			if p := recover(); p != nil {
				err = fmt.Errorf("panic: %v", p)
			}
		}()
		switch m := e.val.(type) {
		case io.Closer:
			err = m.Close()
		case interface{ Close() }:
			m.Close()
		case interface{ Unload() error }:
			err = m.Unload()
		case interface{ Unload() }:
			m.Unload()
		}
	}()
	ms.mu.Lock()
	ms.unloads++
	ms.mu.Unlock()
	if err != nil {
		ms.r.log.Warn("unloading a model failed", "model", e.id, "err", err)
	} else {
		ms.r.log.Info("model unloaded", "model", e.id)
	}
}

// resubscribe makes the subscriptions match the models held: one per
// loaded model on its subject, and the free-slot subject while a slot is
// free. It flushes, so that the next request already finds the change.
func (ms *models) resubscribe() {
	ms.mu.Lock()
	want := map[string]bool{}
	for id, e := range ms.byID {
		if e.loaded {
			want[id] = true
		}
	}
	free := len(ms.byID) < ms.spec.max
	ms.mu.Unlock()

	r := ms.r
	ms.subMu.Lock()
	defer ms.subMu.Unlock()
	if r.draining.Load() {
		return
	}
	changed := false
	for id, sub := range ms.subs {
		if !want[id] {
			_ = sub.Drain() // not Unsubscribe: a request already on its way would be dropped
			ms.retire(sub)
			delete(ms.subs, id)
			changed = true
		}
	}
	for id := range want {
		if ms.subs[id] != nil {
			continue
		}
		sub, err := r.nc.ChanQueueSubscribe(wire.ModelSubject(r.spec.Deployment, id), wire.QueueGroup(r.spec.Deployment), r.inbox)
		if err != nil {
			r.log.Warn("subscribing to a model's subject failed", "model", id, "err", err)
			continue
		}
		ms.subs[id] = sub
		changed = true
	}
	switch {
	case free && ms.free == nil:
		sub, err := r.nc.ChanQueueSubscribe(wire.FreeSlotSubject(r.spec.Deployment), wire.QueueGroup(r.spec.Deployment), r.inbox)
		if err != nil {
			r.log.Warn("subscribing to the free-slot subject failed", "err", err)
		} else {
			ms.free = sub
			changed = true
		}
	case !free && ms.free != nil:
		_ = ms.free.Drain()
		ms.retire(ms.free)
		ms.free = nil
		changed = true
	}
	if changed {
		if err := r.nc.FlushTimeout(time.Second); err != nil {
			r.log.Warn("flushing subscriptions failed", "err", err)
		}
	}
}

// retire keeps a draining subscription until it is closed; subMu is held.
func (ms *models) retire(sub *nats.Subscription) {
	live := ms.retired[:0]
	for _, s := range ms.retired {
		if s.IsValid() {
			live = append(live, s)
		}
	}
	ms.retired = append(live, sub)
}

// drain stops routing by model: it drains every model and free-slot
// subscription (the replica is draining, so resubscribe adds none) and
// returns them, for the caller to wait on.
func (ms *models) drain() []*nats.Subscription {
	ms.subMu.Lock()
	defer ms.subMu.Unlock()
	var subs []*nats.Subscription
	for id, sub := range ms.subs {
		subs = append(subs, sub)
		delete(ms.subs, id)
	}
	if ms.free != nil {
		subs = append(subs, ms.free)
		ms.free = nil
	}
	for _, sub := range subs {
		_ = sub.Drain()
	}
	subs = append(subs, ms.retired...)
	ms.retired = nil
	return subs
}

// closeAll unloads every model (the replica stops).
func (ms *models) closeAll() {
	ms.mu.Lock()
	var all []*modelEntry
	for id, e := range ms.byID {
		if e.loaded {
			all = append(all, e)
		}
		delete(ms.byID, id)
	}
	ms.mu.Unlock()
	for _, e := range all {
		ms.unload(e)
	}
}

func (ms *models) stats() *wire.ModelStats {
	ms.mu.Lock()
	defer ms.mu.Unlock()
	var loaded []*modelEntry
	for _, e := range ms.byID {
		if e.loaded {
			loaded = append(loaded, e)
		}
	}
	sort.Slice(loaded, func(i, j int) bool { return loaded[i].used < loaded[j].used })
	st := &wire.ModelStats{Max: ms.spec.max, Loads: ms.loads, Unloads: ms.unloads, LoadFailures: ms.failed, LoadLatencyMS: ms.latency.Clone(), Loaded: []string{}}
	for _, e := range loaded {
		st.Loaded = append(st.Loaded, e.id)
	}
	return st
}
