package client

import (
	"encoding/json"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nuid"
	"github.com/natserve/natserve/internal/wire"
)

// queueStats holds, per deployment, the requests this caller holds waiting
// for a free replica (they found every replica busy, or others already
// wait), first in first out. Only the request at the head sends; it is
// released to try again by what frees a slot: a reply from the
// deployment, or the acknowledgment that admitted the request before it.
// The counts bound max_queued_requests and feed the autoscaler.
type queueStats struct {
	queues sync.Map // deployment → *waitQueue
	once   sync.Once
	caller string
}

type waitQueue struct {
	// recent is the replica that last acknowledged a request of the
	// deployment at this caller (interned by the inbox): where a request
	// another replica did not acknowledge goes next.
	recent atomic.Pointer[string]

	refusedAt atomic.Int64 // when a replica last refused a call as busy (Unix nanoseconds)

	pace    pacer        // spreads queued calls' starts (pace.go)
	paceWin atomic.Int64 // how recent a refusal keeps pacing on (nanoseconds; 0: paceWindow)

	n  atomic.Int64 // len(q), read without the lock
	mu sync.Mutex   // guards q
	q  []*waiter
}

// waiter is one queued request.
type waiter struct {
	ch chan struct{} // a pending release
}

func (q *queueStats) get(deployment string) *waitQueue {
	if v, ok := q.queues.Load(deployment); ok {
		return v.(*waitQueue)
	}
	v, _ := q.queues.LoadOrStore(deployment, new(waitQueue))
	return v.(*waitQueue)
}

// Queued returns how many requests to deployment this client holds waiting
// for a free replica.
func (c *Client) Queued(deployment string) int64 { return c.queue.get(deployment).n.Load() }

// enqueue puts a request at the tail of the deployment's queue unless limit
// (≥ 0) requests already wait.
func (c *Client) enqueue(wq *waitQueue, limit int) (*waiter, bool) {
	wq.mu.Lock()
	if limit >= 0 && len(wq.q) >= limit {
		wq.mu.Unlock()
		return nil, false
	}
	w := &waiter{ch: make(chan struct{}, 1)}
	wq.q = append(wq.q, w)
	wq.n.Store(int64(len(wq.q)))
	if len(wq.q) == 1 {
		w.ch <- struct{}{} // the head may go
	}
	wq.mu.Unlock()
	c.queue.once.Do(func() {
		c.queue.caller = nuid.Next()
		c.goBackground(c.reportQueue)
	})
	return w, true
}

// dequeue takes w out of the queue; if it was the head, the next one may go.
func (wq *waitQueue) dequeue(w *waiter) {
	wq.mu.Lock()
	defer wq.mu.Unlock()
	for i, x := range wq.q {
		if x == w {
			copy(wq.q[i:], wq.q[i+1:])
			wq.q[len(wq.q)-1] = nil
			wq.q = wq.q[:len(wq.q)-1]
			wq.n.Store(int64(len(wq.q)))
			if i == 0 && len(wq.q) > 0 {
				wq.q[0].release()
			}
			return
		}
	}
}

// refused records a busy reply.
func (wq *waitQueue) refused() { wq.refusedAt.Store(time.Now().UnixNano()) }

// refusedWithin reports whether a busy reply came within d.
func (wq *waitQueue) refusedWithin(d time.Duration) bool {
	return time.Now().UnixNano()-wq.refusedAt.Load() < int64(d)
}

// paced reports whether the deployment refused a call recently enough that
// admissions and service times feed the pacer (pace.go): nothing to do,
// beyond one atomic load, for a deployment that never refused a call.
func (wq *waitQueue) paced() (now time.Time, ok bool) {
	r := wq.refusedAt.Load()
	if r == 0 {
		return now, false
	}
	now = time.Now()
	return now, now.UnixNano()-r < max(int64(paceWindow), wq.paceWin.Load())
}

// head returns the request at the head of the queue, or nil.
func (wq *waitQueue) head() *waiter {
	wq.mu.Lock()
	defer wq.mu.Unlock()
	if len(wq.q) == 0 {
		return nil
	}
	return wq.q[0]
}

// releaseHead lets the head of the queue try again: a slot is free.
func (wq *waitQueue) releaseHead() {
	if wq.n.Load() == 0 {
		return
	}
	wq.mu.Lock()
	if len(wq.q) > 0 {
		wq.q[0].release()
	}
	wq.mu.Unlock()
}

func (w *waiter) release() {
	select {
	case w.ch <- struct{}{}:
	default:
	}
}

// reportQueue publishes the mean queue lengths every second while any is
// not zero (and once after they return to zero), until Close.
func (c *Client) reportQueue() {
	const sample, report = 100 * time.Millisecond, time.Second
	t := time.NewTicker(sample)
	defer t.Stop()
	sums := map[string]float64{}
	n := 0
	start := time.Now()
	wasBusy := false
	for {
		select {
		case <-c.ctx.Done():
			return
		case <-t.C:
		}
		c.queue.queues.Range(func(k, v any) bool {
			sums[k.(string)] += float64(v.(*waitQueue).n.Load())
			return true
		})
		n++
		if time.Since(start) < report {
			continue
		}
		rep := wire.QueueReport{Caller: c.queue.caller, Queued: map[string]float64{}, WindowMS: time.Since(start).Milliseconds()}
		busy := false
		for d, s := range sums {
			if avg := s / float64(n); avg > 0 {
				rep.Queued[d] = avg
				busy = true
			}
		}
		if busy || wasBusy {
			b, _ := json.Marshal(rep)
			_ = c.nc.Publish(wire.EventSubject(wire.EventQueue, c.opts.Sender), b)
		}
		wasBusy = busy
		clear(sums)
		n, start = 0, time.Now()
	}
}

// wake asks the controller to start a replica of a deployment scaled to
// zero; it reports whether one is coming.
func (c *Client) wake(deployment string, timeout time.Duration) bool {
	body, _ := json.Marshal(wire.APIName{Name: deployment})
	m, err := c.nc.Request(wire.APISubject(wire.APIWake), body, min(timeout, 500*time.Millisecond))
	if err != nil {
		return false
	}
	var rep wire.APIReply
	var w wire.APIWakeReply
	if json.Unmarshal(m.Data, &rep) != nil || rep.Code != "" || json.Unmarshal(rep.Data, &w) != nil {
		return false
	}
	return w.Waking
}
