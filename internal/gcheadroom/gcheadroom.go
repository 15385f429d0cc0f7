// Package gcheadroom keeps a floor under how much a process allocates
// between two garbage collections.
//
// Go's collector starts a cycle when the heap has grown by GOGC% of the
// live heap (100%: doubled), and never below a 4 MB goal. natserve up's
// live heap is small (3–4 MB with a few deployments) while every request
// allocates (a 10 KB reply is copied out of NATS into a message of its
// own): at one request at a time with 10 KB bodies it collected 25 times a
// second, each cycle taking the process's one P for part of ~2–3 ms, which
// was its p99 (issue 18: 1.4–1.5 ms against nginx's 0.48). With at least
// 16 MB between collections (GOGC 400 there): p99 0.65–0.7 ms, RSS under
// that load 41 → 57 MB.
//
// Start raises GOGC after each collection so that the next one comes
// after at least headroom bytes of allocation; as the live heap grows
// past headroom / (GOGC/100) the process's own GOGC (100 by default)
// applies again, so a large control plane (1,000 deployments) keeps the
// heap it would have had.
package gcheadroom

import (
	"os"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"sync"
)

// maxPercent bounds the GOGC Start sets (a live heap of a few hundred KB
// right after start would otherwise ask for ~10,000).
const maxPercent = 2000

// Percent is the GOGC that leaves at least headroom bytes between
// collections with live bytes live, never below base (nor above
// maxPercent, unless base is).
func Percent(base int, live, headroom uint64) int {
	if live == 0 {
		return max(base, maxPercent)
	}
	p := int(min(headroom*100/live, maxPercent))
	return max(base, p)
}

// base is the GOGC Start raises from, and Stop restores: Go's default
// (Start does nothing when $GOGC says otherwise).
const base = 100

// Headroom is a running Start.
type Headroom struct {
	mu       sync.Mutex // orders the finalizer's adjustments against Stop
	headroom uint64
	set      int // the GOGC last set
	stopped  bool
	sample   []metrics.Sample
}

// sentinel is garbage at once; its finalizer runs after the next
// collection (a pointer field: the tiny allocator's objects may never be
// finalized).
type sentinel struct{ r *Headroom }

// Start keeps at least headroom bytes of allocation between collections,
// until Stop. It does nothing (nil) when $GOGC is set: the user's choice,
// including off.
func Start(headroom uint64) *Headroom {
	if os.Getenv("GOGC") != "" || headroom == 0 {
		return nil
	}
	r := &Headroom{headroom: headroom, set: base, sample: []metrics.Sample{{Name: "/gc/heap/live:bytes"}}}
	r.adjust()
	r.arm()
	return r
}

// Stop ends it and restores GOGC 100. A nil Headroom does nothing.
func (r *Headroom) Stop() {
	if r == nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.stopped = true
	debug.SetGCPercent(base)
}

// Percent is the GOGC it last set (100 for a nil Headroom).
func (r *Headroom) Percent() int {
	if r == nil {
		return base
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.set
}

// arm has adjust run after the next collection, and again after each
// one until Stop.
func (r *Headroom) arm() {
	runtime.SetFinalizer(&sentinel{r: r}, func(s *sentinel) {
		if s.r.adjust() {
			s.r.arm()
		}
	})
}

// adjust sets GOGC for the live heap now, when it differs by more than a
// tenth from what is set; false once stopped.
func (r *Headroom) adjust() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.stopped {
		return false
	}
	metrics.Read(r.sample)
	var live uint64
	if r.sample[0].Value.Kind() == metrics.KindUint64 {
		live = r.sample[0].Value.Uint64()
	}
	if p := Percent(base, live, r.headroom); p*10 < r.set*9 || p*10 > r.set*11 {
		r.set = p
		debug.SetGCPercent(p)
	}
	return true
}
