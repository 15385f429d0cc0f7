package client

import (
	"sync/atomic"
	"time"
)

// Steering around a silent replica. The broker's queue group keeps giving
// a share of the deployment's requests to a replica that stopped answering
// (a SIGSTOPped or starved process, a node cut off from the network) until
// its subscription goes: a health check replaces it, or the broker finds
// its connection dead, seconds later. Each of those requests waits for its
// acknowledgment timeout and grace (500 ms by default) before it goes to
// another replica. So once a request of the deployment went unacknowledged
// here, or a replica holding one went silent, this caller sends its
// requests for steerFor straight to the replicas that acknowledged its
// requests within the last steerFresh, in turn, instead of to the queue
// group: the silent one stopped acknowledging before the request it left
// unacknowledged was sent, so it is already out of that set, and the rest
// never wait for it. Without one such
// replica (none acknowledged lately) requests go to the queue group as
// before. When steerFor passes with no new silence, the queue group takes
// over again and new replicas get their share.

const (
	// steerFor is how long after the last unacknowledged request requests
	// bypass the queue group, at first; a silence again within steerFor
	// after steering ended doubles it, up to steerMax (a node cut off for
	// longer than one round: each return to the queue group costs the
	// requests it sends the silent replicas before the next round starts).
	steerFor, steerMax = 5 * time.Second, 40 * time.Second
	// steerFresh is how recent a replica's acknowledgment must be for it to
	// be sent requests directly: under the default acknowledgment timeout
	// plus grace (500 ms), so that by the time a request is known to be
	// unacknowledged, the silent replica's last acknowledgments are too old
	// to count (a caller with fewer requests than that per replica is not
	// steered; its requests rarely meet the silent one).
	steerFresh = 400 * time.Millisecond
	// steerRing is how many recent acknowledgments are remembered.
	steerRing = 64
	// steerPick bounds the distinct replicas requests are steered to.
	steerPick = 16
)

// steering is a deployment's recent acknowledgments at this caller and
// whether requests bypass the queue group. Recording an acknowledgment is
// three atomic operations and no allocation (replica ids are interned by
// the inbox).
type steering struct {
	until atomic.Int64 // Unix nanoseconds: until then requests bypass the queue group
	span  atomic.Int64 // the current round's length (0: steerFor)
	next  atomic.Uint64
	pick  atomic.Uint64
	ring  [steerRing]ackSeen
}

type ackSeen struct {
	replica atomic.Pointer[string]
	at      atomic.Int64 // Unix nanoseconds
}

// acked records an acknowledgment by replica at now.
func (s *steering) acked(replica *string, now time.Time) {
	e := &s.ring[s.next.Add(1)%steerRing]
	e.replica.Store(replica)
	e.at.Store(now.UnixNano())
}

// silent records a request no replica acknowledged in time, or one whose
// replica went silent holding it (gone: forgotten from the recent ones).
func (s *steering) silent(gone *string, now time.Time) {
	n := now.UnixNano()
	until := s.until.Load()
	span := s.span.Load()
	switch {
	case span == 0 || n-until >= int64(steerFor):
		span = int64(steerFor) // a new silence
	case n > until:
		span = min(2*span, int64(steerMax)) // again, soon after the last round
	}
	s.span.Store(span)
	s.until.Store(n + span)
	s.forget(gone)
}

// forget drops replica (nil: none) from the recent acknowledgments: it is
// silent, or gone (no responders on its own subject).
func (s *steering) forget(replica *string) {
	if replica == nil {
		return
	}
	for i := range s.ring {
		s.ring[i].replica.CompareAndSwap(replica, nil)
	}
}

// target returns the replica the next request should go to directly, or
// nil for the queue group: while steering, the distinct replicas among the
// recent acknowledgments (not older than steerFresh, not avoid) in turn —
// in turn by replica, not by acknowledgment, so that none drifts out of the
// set for want of requests.
func (s *steering) target(now time.Time, avoid *string) *string {
	n := now.UnixNano()
	if n >= s.until.Load() {
		return nil
	}
	var set [steerPick]*string
	k := 0
scan:
	for i := range s.ring {
		e := &s.ring[i]
		r := e.replica.Load()
		if r == nil || r == avoid || n-e.at.Load() >= int64(steerFresh) {
			continue
		}
		for _, x := range set[:k] {
			if x == r {
				continue scan
			}
		}
		set[k] = r
		if k++; k == steerPick {
			break
		}
	}
	if k == 0 {
		return nil
	}
	// The set's order is the ring's, which moves with every acknowledgment:
	// sort it by id so that the turn goes round the same replicas.
	for i := 1; i < k; i++ {
		for j := i; j > 0 && *set[j] < *set[j-1]; j-- {
			set[j], set[j-1] = set[j-1], set[j]
		}
	}
	return set[s.pick.Add(1)%uint64(k)]
}
