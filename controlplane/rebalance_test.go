package controlplane

import (
	"testing"
	"time"

	"github.com/natserve/natserve/internal/store"
)

// TestDecideMove: when a deployment moves a replica, and when it does
// not (the decision alone; TestRebalanceAfterNodeReturns runs it for real).
func TestDecideMove(t *testing.T) {
	now := time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)
	old := now.Add(-time.Hour) // a node alive long before
	base := func(nodes ...moveNode) moveIn {
		return moveIn{now: now, ready: true, cooldown: 10 * time.Second, settle: 10 * time.Second, maxMoves: 8, nodes: nodes}
	}
	n := func(name string, replicas int, since time.Time) moveNode {
		return moveNode{name: name, replicas: replicas, upSince: since, room: true}
	}
	for _, tc := range []struct {
		name     string
		in       moveIn
		from, to string
		why      string
		retry    time.Time
	}{
		{name: "4/0 after the node returned and settled", in: base(n("n1", 0, now.Add(-11*time.Second)), n("n2", 4, old)), from: "n2", to: "n1"},
		{name: "3/1 moves once more", in: base(n("n1", 1, old), n("n2", 3, old)), from: "n2", to: "n1"},
		{name: "2/2 is balanced", in: base(n("n1", 2, old), n("n2", 2, old)), why: "balanced"},
		{name: "3/2 is balanced (a move would only swap)", in: base(n("n1", 3, old), n("n2", 2, old)), why: "balanced"},
		{name: "one node", in: base(n("n1", 4, old)), why: "balanced"},
		{name: "a new third node", in: base(n("n1", 3, old), n("n2", 3, old), n("n3", 0, now.Add(-time.Minute))), from: "n1", to: "n3"},
		{name: "node back for less than the settle time", in: base(n("n1", 0, now.Add(-3*time.Second)), n("n2", 4, old)),
			why: "settling", retry: now.Add(7 * time.Second)},
		{name: "rolling update", in: func() moveIn { in := base(n("n1", 0, old), n("n2", 4, old)); in.rolling = true; return in }(), why: "rolling update"},
		{name: "a replica unhealthy or starting", in: func() moveIn { in := base(n("n1", 0, old), n("n2", 4, old)); in.ready = false; return in }(), why: "not healthy"},
		{name: "autoscaling change pending", in: func() moveIn { in := base(n("n1", 0, old), n("n2", 4, old)); in.autoscaling = true; return in }(), why: "autoscaling"},
		{name: "within the cooldown", in: func() moveIn {
			in := base(n("n1", 1, old), n("n2", 3, old))
			in.lastMove = now.Add(-4 * time.Second)
			return in
		}(), why: "cooldown", retry: now.Add(6 * time.Second)},
		{name: "after the cooldown", in: func() moveIn {
			in := base(n("n1", 1, old), n("n2", 3, old))
			in.lastMove = now.Add(-10 * time.Second)
			return in
		}(), from: "n2", to: "n1"},
		{name: "every move slot taken", in: func() moveIn {
			in := base(n("n1", 0, old), n("n2", 4, old))
			in.inFlight = 8
			return in
		}(), why: "moves limit", retry: now.Add(moveQueueRetry)},
		{name: "the emptiest node is at its cap: the next emptiest takes", in: func() moveIn {
			in := base(n("n1", 0, old), n("n2", 4, old), n("n3", 1, old))
			in.nodes[0].room = false
			return in
		}(), from: "n2", to: "n3"},
		{name: "every other node at its cap", in: func() moveIn {
			in := base(n("n1", 0, old), n("n2", 4, old))
			in.nodes[0].room = false
			return in
		}(), why: "balanced"},
		{name: "a settled node with room beats an unsettled emptier one", in: base(n("n1", 0, now), n("n2", 4, old), n("n3", 1, old)), from: "n2", to: "n3"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out := decideMove(tc.in)
			if out.from != tc.from || out.to != tc.to || out.why != tc.why || !out.retry.Equal(tc.retry) {
				t.Fatalf("decideMove = %+v, want from %q to %q why %q retry %v", out, tc.from, tc.to, tc.why, tc.retry)
			}
		})
	}
}

// TestWakeAt: a deployment waiting for a settle time or a cooldown gets
// its pass when the time comes, not before, and only the earliest
// wake-up is looked at until then.
func TestWakeAt(t *testing.T) {
	ch := newChanges()
	now := time.Now()
	ch.wakeAt("a", now.Add(time.Hour))
	ch.wakeAt("b", now.Add(-time.Millisecond))
	ch.wakeAt("a", now.Add(2*time.Hour)) // later than the one asked: ignored
	deps, _, _ := ch.take()
	if len(deps) != 1 || deps[0] != "b" {
		t.Fatalf("first take: %v, want [b]", deps)
	}
	if deps, _, _ := ch.take(); len(deps) != 0 {
		t.Fatalf("second take: %v, want none", deps)
	}
	if !ch.nextDue.Equal(now.Add(time.Hour)) {
		t.Fatalf("next wake-up %v, want %v", ch.nextDue, now.Add(time.Hour))
	}
	ch.forget("a")
	ch.wakeAt("c", now.Add(-time.Second))
	if deps, _, _ := ch.take(); len(deps) != 1 || deps[0] != "c" {
		t.Fatalf("third take: %v, want [c]", deps)
	}
}

// TestMovesNodesChanged: a node's settle time counts from when it
// (re)joined the live nodes, not from its first sight.
func TestMovesNodesChanged(t *testing.T) {
	m := newMoves()
	t0 := time.Now()
	m.nodesChanged(map[string]store.Node{"n1": {}, "n2": {}}, t0)
	m.nodesChanged(map[string]store.Node{"n2": {}}, t0.Add(time.Second))
	m.nodesChanged(map[string]store.Node{"n1": {}, "n2": {}}, t0.Add(2*time.Second))
	if got := m.since("n1"); !got.Equal(t0.Add(2 * time.Second)) {
		t.Errorf("n1 up since %v, want its return", got)
	}
	if got := m.since("n2"); !got.Equal(t0) {
		t.Errorf("n2 up since %v, want its first sight", got)
	}
}
