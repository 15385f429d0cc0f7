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
// not per request; an idle replica sends nothing and runs nothing. There is
// no flusher goroutine: the admission that finds no round out leads its
// round (sends the PING and waits for the PONG itself, one wake-up), and
// when its round ends it hands the next round, if admissions joined it, to
// one of them.
type ackRounds struct {
	nc *nats.Conn

	mu   sync.Mutex
	out  bool      // a round's PING is out (its leader flushes)
	next *ackRound // the round admissions join now; nil until one does

	notRun atomic.Uint64 // requests not run: the confirmation came too late
	rounds atomic.Uint64 // PING/PONG round trips made
	failed func(n int, err error)
}

// ackRound is one PING/PONG round trip and the admissions it confirms.
type ackRound struct {
	done   chan struct{} // closed when the round ended; ok and at are set
	lead   chan struct{} // cap 1: the admission that takes it leads the round
	latest time.Time     // the latest ack-by of its admissions
	n      int           // admissions that joined it
	ok     bool          // the broker answered the PING
	at     time.Time     // when its PONG was seen (the replica's clock)
}

// newAckRounds confirms acknowledgments published on nc; failed is told of
// each round whose confirmation did not come by its latest ack-by.
func newAckRounds(nc *nats.Conn, failed func(n int, err error)) *ackRounds {
	return &ackRounds{nc: nc, failed: failed}
}

// confirm reports whether the broker had an acknowledgment published (on
// nc, before this call) by its ack-by time by.
func (a *ackRounds) confirm(by time.Time) bool {
	a.mu.Lock()
	rd := a.next
	if rd == nil {
		rd = &ackRound{done: make(chan struct{}), lead: make(chan struct{}, 1)}
		a.next = rd
	}
	rd.n++
	if by.After(rd.latest) {
		rd.latest = by
	}
	if !a.out { // no round out: lead this one
		a.out, a.next = true, nil
		a.mu.Unlock()
		a.flush(rd)
	} else {
		a.mu.Unlock()
		select {
		case <-rd.done:
		case <-rd.lead: // handed over: the round before it ended
			a.flush(rd)
		}
	}
	if rd.ok && !rd.at.After(by) {
		return true
	}
	a.notRun.Add(1)
	return false
}

// flush runs round rd (taken from next) and hands the next one on.
func (a *ackRounds) flush(rd *ackRound) {
	// The PING follows every acknowledgment of the round in the
	// connection's buffer; nobody waits past the latest ack-by.
	err := nats.ErrTimeout
	if wait := time.Until(rd.latest); wait > 0 {
		a.rounds.Add(1)
		err = a.nc.FlushTimeout(wait)
	}
	rd.ok, rd.at = err == nil, time.Now()
	close(rd.done)
	a.mu.Lock()
	next := a.next
	if next != nil {
		a.next = nil // out stays true: its leader flushes it
		next.lead <- struct{}{}
	} else {
		a.out = false
	}
	a.mu.Unlock()
	if (err != nil || rd.at.After(rd.latest)) && a.failed != nil {
		a.failed(rd.n, err)
	}
}
