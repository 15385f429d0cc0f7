package client

import (
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/natserve/natserve/internal/wire"
)

// Pacing of queued calls. While a deployment refuses this caller's calls
// as busy, the calls it queues start no closer together than a service
// time divided by the deployment's slots (max_ongoing_requests summed over
// the replicas seen): the slots' starts spread out.
//
// Why: a queued call waits for as many slots to free as there are calls
// ahead of it. With near-constant service times a slot's next call starts
// when its last one ends, so the phases the slots took at the start of an
// overload stay. A burst starts every slot within a few milliseconds, and
// then they free in a cluster once per service time: a call queued just
// after a cluster waits nearly a whole service time however short the
// queue (the fault suite's R12: max_ongoing 4, max_queued 2, 50 ms calls at
// 3× capacity measured admitted p99 1.7× unloaded, every slot's start
// within ~12 ms of the others'). Spread evenly, Q queued calls in front of C
// slots wait about Q/C of a service time. Holding a freed slot for part of
// a gap costs no throughput once the phases are spread (the gaps are then
// at least the pace), and the pace is the measured service time (less its
// deviation) over C, under the gap a full deployment frees slots at.
//
// Service times that vary spread the phases by themselves, and there a
// pace would only leave slots idle: pacing is off unless the service
// times' mean absolute deviation is under a tenth of their mean. Replicas
// that batch do not say their slots (their calls are meant to start
// together) and are not paced. Only queued calls wait for the pace, in
// their order; max_ongoing_requests and max_queued_requests mean what they
// did.
type pacer struct {
	mu       sync.Mutex
	svc, dev time.Duration // EWMAs of an admitted call's send → reply and of its absolute deviation (clamped: observe)
	samples  int
	last     time.Time              // the last admission while paced or refused
	replicas map[string]replicaSeen // replica id → its slots, when last seen
	slots    int                    // the largest slots a replica said
}

type replicaSeen struct {
	slots int // 0: not said yet (counted as the largest said)
	at    time.Time
}

const (
	// paceWindow: pacing is on while a replica refused a call this recently
	// (or twice the service time, if longer), and a replica counts toward
	// the slots while it acknowledged or refused a call this recently.
	paceWindow = time.Second
	// paceShift: the EWMAs move by 1/2^paceShift of each sample.
	paceShift = 3
	// paceClamp: a sample moves the mean service time as if it were at
	// most 1/paceClamp of it away, the deviation as if at most 2/paceClamp
	// (observe).
	paceClamp = 8
	// paceDevShift: after paceWarm samples, the deviation's EWMA moves by
	// 1/2^paceDevShift of each sample.
	paceWarm, paceDevShift = 16, 6
)

// window is how recent a refusal or a sighting must be to count.
func (p *pacer) window() time.Duration { return max(paceWindow, 2*p.svc) }

// refusedBy records a busy reply: the replica that sent it and its slots.
func (p *pacer) refusedBy(reply *nats.Msg, now time.Time) {
	id := reply.Header.Get(wire.HeaderReplica)
	n, _ := strconv.Atoi(reply.Header.Get(wire.HeaderSlots))
	if id == "" {
		return
	}
	p.mu.Lock()
	if p.replicas == nil {
		p.replicas = map[string]replicaSeen{}
	}
	p.replicas[id] = replicaSeen{slots: n, at: now}
	if n > p.slots {
		p.slots = n
	}
	p.mu.Unlock()
}

// started records an admission by replica of a call sent at now, while
// the deployment refuses calls (the caller checked).
func (p *pacer) started(replica string, now time.Time) {
	p.mu.Lock()
	if now.After(p.last) {
		p.last = now
	}
	if r, ok := p.replicas[replica]; ok {
		r.at = now
		p.replicas[replica] = r
	} else {
		if p.replicas == nil {
			p.replicas = map[string]replicaSeen{}
		}
		p.replicas[replica] = replicaSeen{at: now}
	}
	p.mu.Unlock()
}

// observe records an admitted call's send → reply time; it returns how
// recent a refusal keeps pacing on.
func (p *pacer) observe(d time.Duration) time.Duration {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.samples == 0 {
		p.svc = d
	} else {
		// A stall (a pause of the replica or of this process) lengthens
		// every call in flight at once: a few samples far off the mean.
		// Unclamped, with the deviation as quick as the mean, they lifted
		// it over a tenth of the mean and switched pacing off for a few
		// service times, long enough for the stall's cluster of slot
		// starts to stay (the fault suite's R12 saw queued calls wait
		// 55–75 ms for ~400 ms after a stall, ~25 ms otherwise). So a
		// sample moves the mean by at most an eighth of it and the
		// deviation by at most a quarter, and once warmed up the
		// deviation moves eight times slower than the mean: a stall of
		// every call in flight leaves pacing on, service times that
		// really vary still switch it off (within ~30 calls).
		diff := d - p.svc
		lim := p.svc / paceClamp
		p.svc += min(max(diff, -lim), lim) >> paceShift
		dev := min(max(diff, -diff), 2*lim)
		shift := paceShift
		if p.samples >= paceWarm {
			shift = paceDevShift
		}
		p.dev += (dev - p.dev) >> shift
	}
	p.samples++
	return p.window()
}

// next returns when the next queued call may start, given the last refusal
// at refused; ok is false when calls are not paced.
func (p *pacer) next(now, refused time.Time) (at time.Time, ok bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	w := p.window()
	if p.samples == 0 || p.slots == 0 || p.dev*10 > p.svc || now.Sub(refused) > w {
		return time.Time{}, false
	}
	slots := 0
	for id, r := range p.replicas {
		if now.Sub(r.at) > w {
			delete(p.replicas, id) // gone or idle: seen again when it refuses or acknowledges
			continue
		}
		if r.slots > 0 {
			slots += r.slots
		} else {
			slots += p.slots
		}
	}
	if slots == 0 {
		return time.Time{}, false
	}
	// The mean less its deviation: a pace a little shorter than the gaps a
	// full deployment frees slots at, so that it never holds a slot its
	// turn would have filled (a stall that lengthens a few samples must not
	// slow every call after it).
	return p.last.Add((p.svc - p.dev) / time.Duration(slots)), true
}
