package worker

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/natserve/natserve/internal/wire"
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
	nc      *nats.Conn
	replica string // the replica's id, for coalesced acknowledgments
	plain   []byte // its plain acknowledgment (wire.AppendAck, no flags)

	mu   sync.Mutex
	out  bool      // a round's PING is out (its leader flushes)
	next *ackRound // the round admissions join now; nil until one does

	notRun atomic.Uint64 // requests not run: the confirmation came too late
	rounds atomic.Uint64 // PING/PONG round trips made
	failed func(n int, err error)
}

// ackRound is one PING/PONG round trip and the admissions it confirms.
type ackRound struct {
	// done (cap 1) is closed when the round ended (ok and at are set);
	// before that, one value in it hands the round to the admission that
	// receives it, which leads it (a plain receive, no select: the one
	// value is taken before the close, which only its taker does).
	done   chan struct{}
	latest time.Time // the latest ack-by of its admissions
	n      int       // admissions that joined it
	ok     bool      // the broker answered the PING
	at     time.Time // when its PONG was seen (the replica's clock)
	// groups are the acknowledgments its leader publishes before the PING,
	// one message per caller (wire.SplitAckReply); byPrefix indexes them
	// once there are many callers.
	groups   []ackGroup
	byPrefix map[string]int
	group0   [1]ackGroup // groups' first backing array (one caller: no allocation)
}

// ackGroup is one caller's acknowledgments in a round.
type ackGroup struct {
	prefix string // the caller's inbox prefix, ending with "."
	first  string // the first call's reply subject (prefix + token)
	b      []byte // the coalesced acknowledgment, once a second call joins
}

// groupIndexAbove: a round looks its callers up in a map beyond this many.
const groupIndexAbove = 8

// newAckRounds confirms acknowledgments of replica published on nc; failed
// is told of each round whose confirmation did not come by its latest
// ack-by.
func newAckRounds(nc *nats.Conn, replica string, failed func(n int, err error)) *ackRounds {
	return &ackRounds{nc: nc, replica: replica, plain: wire.AppendAck(nil, replica, 0), failed: failed}
}

// confirm reports whether the broker had an admission's acknowledgment by
// its ack-by time by. With prefix empty the acknowledgment was published
// (on nc, before this call); otherwise the round's leader publishes it, one
// message for all the round's calls of the caller whose inbox prefix is
// prefix (reply: the call's reply subject, prefix and token).
func (a *ackRounds) confirm(by time.Time, prefix, reply string) bool {
	a.mu.Lock()
	rd := a.next
	if rd == nil {
		rd = &ackRound{done: make(chan struct{}, 1)}
		rd.groups = rd.group0[:0]
		a.next = rd
	}
	rd.n++
	if by.After(rd.latest) {
		rd.latest = by
	}
	if prefix != "" {
		rd.add(a.replica, prefix, reply)
	}
	if !a.out { // no round out: lead this one
		a.out, a.next = true, nil
		a.mu.Unlock()
		a.flush(rd)
	} else {
		a.mu.Unlock()
		if _, lead := <-rd.done; lead { // handed over: the round before it ended
			a.flush(rd)
		}
	}
	if rd.ok && !rd.at.After(by) {
		return true
	}
	a.notRun.Add(1)
	return false
}

// add puts a call's token (reply minus prefix) in its caller's group.
func (rd *ackRound) add(replica, prefix, reply string) {
	i := -1
	if rd.byPrefix != nil {
		if j, ok := rd.byPrefix[prefix]; ok {
			i = j
		}
	} else {
		for j := range rd.groups {
			if rd.groups[j].prefix == prefix {
				i = j
				break
			}
		}
	}
	if i < 0 {
		rd.groups = append(rd.groups, ackGroup{prefix: prefix, first: reply})
		switch n := len(rd.groups); {
		case n == groupIndexAbove+1:
			rd.byPrefix = make(map[string]int, 2*n)
			for j, g := range rd.groups {
				rd.byPrefix[g.prefix] = j
			}
		case n > groupIndexAbove+1:
			rd.byPrefix[prefix] = n - 1
		}
		return
	}
	g := &rd.groups[i]
	if g.b == nil {
		g.b = wire.AppendAckToken(wire.AppendAcksHeader(make([]byte, 0, 64), replica, 0), g.first[len(prefix):])
	}
	g.b = wire.AppendAckToken(g.b, reply[len(prefix):])
}

// publish sends the round's coalesced acknowledgments: a caller with one
// call in the round gets the plain acknowledgment on its reply subject.
func (rd *ackRound) publish(nc *nats.Conn, plain []byte) {
	for _, g := range rd.groups {
		if g.b == nil {
			_ = nc.Publish(g.first, plain)
		} else {
			_ = nc.Publish(g.prefix+wire.AckBatchToken, g.b)
		}
	}
}

// flush runs round rd (taken from next) and hands the next one on.
func (a *ackRounds) flush(rd *ackRound) {
	// The PING follows every acknowledgment of the round in the
	// connection's buffer; nobody waits past the latest ack-by.
	if len(rd.groups) > 0 {
		rd.publish(a.nc, a.plain)
	}
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
		next.done <- struct{}{}
	} else {
		a.out = false
	}
	a.mu.Unlock()
	if (err != nil || rd.at.After(rd.latest)) && a.failed != nil {
		a.failed(rd.n, err)
	}
}
