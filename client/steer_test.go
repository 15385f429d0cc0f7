package client

import (
	"testing"
	"time"
)

// TestSteering: requests bypass the queue group only after a silence, go
// in turn to the replicas that acknowledged within steerFresh, never to one
// forgotten or avoided, and return to the queue group after steerFor.
func TestSteering(t *testing.T) {
	t0 := time.Unix(1_000_000, 0)
	a, b, c := new(string), new(string), new(string)
	*a, *b, *c = "a", "b", "c"
	var s steering
	s.acked(a, t0)
	s.acked(b, t0)
	s.acked(c, t0.Add(-2*steerFresh)) // too old
	if r := s.target(t0, nil); r != nil {
		t.Fatalf("steered to %s with no silence", *r)
	}
	s.silent(nil, t0)
	seen := map[*string]int{}
	for range 100 {
		r := s.target(t0.Add(time.Millisecond), nil)
		if r == nil {
			t.Fatal("not steered after a silence")
		}
		seen[r]++
	}
	if seen[c] != 0 || seen[a] == 0 || seen[b] == 0 {
		t.Fatalf("steered a %d, b %d, c (acknowledged too long ago) %d times", seen[a], seen[b], seen[c])
	}
	for range 20 {
		if r := s.target(t0, a); r != b {
			t.Fatalf("avoiding a: steered to %v", r)
		}
	}
	s.silent(b, t0) // b went silent holding a request
	for range 20 {
		if r := s.target(t0, nil); r != a {
			t.Fatalf("b forgotten: steered to %v", r)
		}
	}
	if r := s.target(t0.Add(steerFresh), nil); r != nil {
		t.Fatalf("a's acknowledgment is %v old: steered to %s", steerFresh, *r)
	}
	s.acked(a, t0.Add(steerFor))
	if r := s.target(t0.Add(steerFor), nil); r != nil {
		t.Fatalf("steered %v after the silence", steerFor)
	}

	// In turn by replica, however many acknowledgments each has.
	var u steering
	for range 63 {
		u.acked(a, t0)
	}
	u.acked(b, t0)
	u.silent(nil, t0)
	seen = map[*string]int{}
	for range 100 {
		seen[u.target(t0, nil)]++
	}
	if seen[a] != 50 || seen[b] != 50 {
		t.Fatalf("63 acknowledgments by a, 1 by b: steered a %d, b %d times of 100", seen[a], seen[b])
	}

	// A silence again soon after a round ended doubles the next round, up
	// to steerMax; one long after starts again at steerFor.
	var v steering
	at := t0
	want := steerFor
	for range 6 {
		v.silent(nil, at)
		if got := time.Duration(v.until.Load() - at.UnixNano()); got != want {
			t.Fatalf("round of %v, want %v", got, want)
		}
		at = at.Add(want + time.Second) // one second after the round ended
		want = min(2*want, steerMax)
	}
	v.silent(nil, at.Add(steerFor))
	if got := time.Duration(v.until.Load() - at.Add(steerFor).UnixNano()); got != steerFor {
		t.Fatalf("a silence long after: round of %v, want %v", got, steerFor)
	}
}

func BenchmarkSteeringAcked(b *testing.B) {
	var s steering
	r := new(string)
	now := time.Now()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			s.acked(r, now)
		}
	})
}
