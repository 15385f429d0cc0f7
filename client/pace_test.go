package client

import (
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/natserve/natserve/internal/wire"
)

func busyReply(replica, slots string) *nats.Msg {
	h := nats.Header{wire.HeaderCode: {string(wire.CodeBusy)}, wire.HeaderReplica: {replica}}
	if slots != "" {
		h[wire.HeaderSlots] = []string{slots}
	}
	return &nats.Msg{Header: h}
}

// TestPacerSpreadsOverSlots: with near-constant service times, the next
// queued call starts a service time over the slots of the replicas seen
// after the last start; with varying ones, with replicas that do not say
// their slots (batching), or without a recent refusal, calls are not
// paced. Times are given, not measured.
func TestPacerSpreadsOverSlots(t *testing.T) {
	t0 := time.Unix(1_000_000, 0)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }

	var p pacer
	if _, ok := p.next(at(0), at(0)); ok {
		t.Fatal("paced with nothing known")
	}
	p.refusedBy(busyReply("a", "4"), at(0))
	for range 8 {
		p.observe(50 * time.Millisecond)
	}
	p.started("a", at(10))
	if next, ok := p.next(at(11), at(0)); !ok || !next.Equal(at(10).Add(12500*time.Microsecond)) {
		t.Fatalf("one replica of 4 slots, 50 ms calls: next %v (ok %v), want 12.5 ms after the last start", next.Sub(t0), ok)
	}
	// A second replica, seen only by its acknowledgment: counted with the
	// largest slots said.
	p.started("b", at(20))
	if next, ok := p.next(at(21), at(0)); !ok || !next.Equal(at(20).Add(6250*time.Microsecond)) {
		t.Fatalf("two replicas: next %v (ok %v), want 6.25 ms after the last start", next.Sub(t0), ok)
	}
	// No refusal for longer than the window: not paced.
	if _, ok := p.next(at(0).Add(paceWindow+time.Millisecond), at(0)); ok {
		t.Fatal("paced a second after the last refusal")
	}
	// Replicas not seen within the window stop counting.
	p.refusedBy(busyReply("a", "4"), at(1500))
	if next, ok := p.next(at(1501), at(1500)); !ok || !next.Equal(at(20).Add(12500*time.Microsecond)) {
		t.Fatalf("b unseen for over a second: next %v (ok %v), want 12.5 ms after the last start", next.Sub(t0), ok)
	}

	// Service times that vary: not paced.
	var v pacer
	v.refusedBy(busyReply("a", "4"), at(0))
	for i := range 16 {
		v.observe(time.Duration(20+60*(i%2)) * time.Millisecond)
	}
	v.started("a", at(10))
	if _, ok := v.next(at(11), at(0)); ok {
		t.Fatalf("paced calls of 20 and 80 ms (mean %v, deviation %v)", v.svc, v.dev)
	}

	// A stall: every call in flight (8 of them) takes 50 ms longer once.
	// Still paced, and the pace barely moves.
	var st pacer
	st.refusedBy(busyReply("a", "8"), at(0))
	for range 32 {
		st.observe(100 * time.Millisecond)
	}
	for range 8 {
		st.observe(150 * time.Millisecond)
	}
	st.started("a", at(10))
	if next, ok := st.next(at(11), at(0)); !ok || next.Sub(at(10)) > 14*time.Millisecond {
		t.Fatalf("after a 50 ms stall of 8 calls of 100 ms: next %v after the last start (ok %v; mean %v, deviation %v), want paced, ≤ 14 ms",
			next.Sub(at(10)), ok, st.svc, st.dev)
	}
	// Service times spread ±20% around 100 ms: not paced.
	var sp pacer
	sp.refusedBy(busyReply("a", "8"), at(0))
	for i := range 64 {
		sp.observe(time.Duration(80+40*(i%2)) * time.Millisecond)
	}
	sp.started("a", at(10))
	if _, ok := sp.next(at(11), at(0)); ok {
		t.Fatalf("paced calls of 80 and 120 ms (mean %v, deviation %v)", sp.svc, sp.dev)
	}

	// A replica that batches says no slots: not paced.
	var b pacer
	b.refusedBy(busyReply("a", ""), at(0))
	b.observe(50 * time.Millisecond)
	b.started("a", at(10))
	if _, ok := b.next(at(11), at(0)); ok {
		t.Fatal("paced a replica that did not say its slots")
	}
}
