package client

import (
	"encoding/json"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nuid"
	"github.com/natserve/natserve/internal/wire"
)

// queueStats counts, per deployment, the requests this caller holds waiting
// for a free replica (they got a busy reply and wait to try again). The
// counts bound max_queued_requests and feed the autoscaler.
type queueStats struct {
	counts sync.Map // deployment → *atomic.Int64
	once   sync.Once
	caller string
}

func (q *queueStats) counter(deployment string) *atomic.Int64 {
	if v, ok := q.counts.Load(deployment); ok {
		return v.(*atomic.Int64)
	}
	v, _ := q.counts.LoadOrStore(deployment, new(atomic.Int64))
	return v.(*atomic.Int64)
}

// Queued returns how many requests to deployment this client holds waiting
// for a free replica.
func (c *Client) Queued(deployment string) int64 { return c.queue.counter(deployment).Load() }

// enqueue admits a request into the caller-side queue unless limit (≥ 0)
// requests already wait; it returns the function that takes it out.
func (c *Client) enqueue(deployment string, limit int) (func(), bool) {
	ctr := c.queue.counter(deployment)
	for {
		n := ctr.Load()
		if limit >= 0 && n >= int64(limit) {
			return nil, false
		}
		if ctr.CompareAndSwap(n, n+1) {
			break
		}
	}
	c.queue.once.Do(func() {
		c.queue.caller = nuid.Next()
		c.goBackground(c.reportQueue)
	})
	return func() { ctr.Add(-1) }, true
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
		c.queue.counts.Range(func(k, v any) bool {
			sums[k.(string)] += float64(v.(*atomic.Int64).Load())
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
