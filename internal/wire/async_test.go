package wire_test

import (
	"testing"
	"time"

	"github.com/natserve/natserve/internal/wire"
)

func TestAsyncID(t *testing.T) {
	seen := map[string]bool{}
	for i := 0; i < 1000; i++ {
		id := wire.NewAsyncID()
		if !wire.ValidAsyncID(id) || seen[id] {
			t.Fatalf("id %q: valid %v, seen %v", id, wire.ValidAsyncID(id), seen[id])
		}
		seen[id] = true
	}
	for _, bad := range []string{"", "abc", "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", "abcdefghijklmnopqrstuvwxyz23456.", "abcdefghijklmnopqrstuvwxyz2345678"} {
		if wire.ValidAsyncID(bad) {
			t.Errorf("ValidAsyncID(%q) = true", bad)
		}
	}
}

func FuzzAsyncResultDeployment(f *testing.F) {
	f.Add("d-1", wire.NewAsyncID())
	f.Add("x", "y")
	f.Fuzz(func(t *testing.T, dep, id string) {
		d, i, ok := wire.AsyncResultDeployment(wire.AsyncResultSubject(dep, id))
		valid := wire.ValidateName("deployment", dep) == nil && wire.ValidAsyncID(id)
		if ok != valid || (ok && (d != dep || i != id)) {
			t.Fatalf("AsyncResultDeployment(AsyncResultSubject(%q, %q)) = %q, %q, %v", dep, id, d, i, ok)
		}
	})
}

func FuzzDecodeAsyncEvent(f *testing.F) {
	f.Add([]byte(`{"kind":"done","attempt":1,"result":3}`))
	f.Add([]byte(`{"kind":"x"}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		ev, err := wire.DecodeAsyncEvent(b)
		if err != nil {
			return
		}
		var r wire.AsyncRecord
		r.Status = wire.AsyncQueued
		r.Fold(ev) // never panics
	})
}

func TestFold(t *testing.T) {
	at := time.Unix(100, 0)
	ev := func(kind string, attempt int) *wire.AsyncEvent {
		return &wire.AsyncEvent{Kind: kind, Attempt: attempt, At: at, Error: kind + " error", Result: []byte(`1`)}
	}
	for _, tc := range []struct {
		name    string
		events  []*wire.AsyncEvent
		status  string
		tries   int
		changed bool // by the last event
	}{
		{"runs", []*wire.AsyncEvent{ev("started", 1)}, wire.AsyncRunning, 1, true},
		{"succeeds", []*wire.AsyncEvent{ev("started", 1), ev("done", 1)}, wire.AsyncSucceeded, 1, true},
		{"retried", []*wire.AsyncEvent{ev("started", 1), ev("retry", 1), ev("started", 2)}, wire.AsyncRunning, 2, true},
		{"an old attempt is ignored", []*wire.AsyncEvent{ev("started", 2), ev("retry", 1)}, wire.AsyncRunning, 2, false},
		{"final stays final", []*wire.AsyncEvent{ev("done", 1), ev("started", 2)}, wire.AsyncSucceeded, 1, false},
		{"done folded twice", []*wire.AsyncEvent{ev("done", 1), ev("done", 1)}, wire.AsyncSucceeded, 1, false},
		{"deployment deleted while running", []*wire.AsyncEvent{ev("started", 2), ev("failed", 0)}, wire.AsyncFailed, 2, true},
		{"fails after attempts", []*wire.AsyncEvent{ev("started", 3), ev("failed", 3)}, wire.AsyncFailed, 3, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := wire.AsyncRecord{Status: wire.AsyncQueued}
			var changed bool
			for _, e := range tc.events {
				changed = r.Fold(e)
			}
			if r.Status != tc.status || r.Attempts != tc.tries || changed != tc.changed {
				t.Fatalf("status %s attempts %d changed %v, want %s %d %v", r.Status, r.Attempts, changed, tc.status, tc.tries, tc.changed)
			}
		})
	}
}
