package worker

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
)

// Confirmed admission. A replica runs an acknowledged request only once the
// broker has its acknowledgment: after publishing it, a PING/PONG round trip
// on the replica's connection (nc.FlushTimeout) must end before the
// request's ack-by time. A replica starved after its ack-by check, a flusher
// goroutine not scheduled, an acknowledgment sitting in nats.go's reconnect
// buffer: each used to let the request run while its caller, seeing no
// acknowledgment in time, sent it elsewhere (the 30-minute chaos soak ran 64
// requests twice). Now such a request is answered wire.CodeNotRun and never
// runs.
//
// The round trips are a group commit: one round's PING covers every
// acknowledgment published before it (NATS keeps a connection's order, so
// the PONG means the broker read them all); admissions that come while a
// round is out join the next one. Under load that is one PING per round,
// not per request; an idle replica sends nothing and has no goroutine
// awake (the flusher sleeps on its channel).
type ackRounds struct {
	nc   *nats.Conn
	kick chan struct{} // cap 1: a round is waiting to be flushed
	quit chan struct{} // closed when the flusher stops: waiters give up

	mu   sync.Mutex
	next *ackRound // the round admissions join now; nil until one does

	notRun atomic.Uint64 // requests not run: the confirmation came too late
}

// ackRound is one PING/PONG round trip and the admissions it confirms.
type ackRound struct {
	done   chan struct{} // closed when the round ended; ok and at are set
	latest time.Time     // the latest ack-by of its admissions
	n      int           // admissions that joined it
	ok     bool          // the broker answered the PING
	at     time.Time     // when its PONG was seen (the replica's clock)
}

func newAckRounds(nc *nats.Conn) *ackRounds {
	return &ackRounds{nc: nc, kick: make(chan struct{}, 1), quit: make(chan struct{})}
}

// join adds an admission whose acknowledgment was published (before this
// call) to the next round; its ack-by is by.
func (a *ackRounds) join(by time.Time) *ackRound {
	a.mu.Lock()
	rd := a.next
	if rd == nil {
		rd = &ackRound{done: make(chan struct{})}
		a.next = rd
		select {
		case a.kick <- struct{}{}:
		default:
		}
	}
	rd.n++
	if by.After(rd.latest) {
		rd.latest = by
	}
	a.mu.Unlock()
	return rd
}

// confirmed waits for the round an admission joined and reports whether
// the broker had its acknowledgment by its ack-by time.
func (a *ackRounds) confirmed(rd *ackRound, by time.Time) bool {
	select {
	case <-rd.done:
	case <-a.quit:
		return false
	}
	if rd.ok && !rd.at.After(by) {
		return true
	}
	a.notRun.Add(1)
	return false
}

// run flushes rounds until done is closed; failed reports a round whose
// confirmation did not come by its latest ack-by.
func (a *ackRounds) run(done <-chan struct{}, failed func(n int, err error)) {
	defer close(a.quit)
	for {
		select {
		case <-done:
			return
		case <-a.kick:
		}
		for {
			a.mu.Lock()
			rd := a.next
			a.next = nil
			a.mu.Unlock()
			if rd == nil {
				break
			}
			// The PING follows every acknowledgment of the round in the
			// connection's buffer; nobody waits past the latest ack-by.
			err := nats.ErrTimeout
			if wait := time.Until(rd.latest); wait > 0 {
				err = a.nc.FlushTimeout(wait)
			}
			rd.ok, rd.at = err == nil, time.Now()
			close(rd.done)
			if err != nil || rd.at.After(rd.latest) {
				failed(rd.n, err)
			}
		}
	}
}
