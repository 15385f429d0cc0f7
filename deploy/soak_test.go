package deploy_test

import (
	"os"
	"testing"
	"time"

	"github.com/natserve/natserve/internal/e2e"
	"github.com/natserve/natserve/internal/soak"
)

// TestChaosSoak is `make soak` in short: on the shared compose stack, an
// open-loop load at 200 req/s while each kind of fault happens once. It
// asserts what must hold on any machine (no request unanswered, none run
// twice, every fault injected and the stack converged after it, a
// partitioned node's replicas replaced) and prints the timing targets.
func TestChaosSoak(t *testing.T) {
	s := sharedStack(t)
	d := 50 * time.Second
	if v := os.Getenv("NATSERVE_SOAK_DURATION"); v != "" {
		var err error
		if d, err = time.ParseDuration(v); err != nil {
			t.Fatalf("NATSERVE_SOAK_DURATION: %v", err)
		}
	}
	rep, err := soak.Run(e2e.Ctx(d+5*time.Minute), soak.Config{Stack: s, Rate: 200, Duration: d, Seed: 1, PerKind: 1, Warmup: 5 * time.Second, Logf: t.Logf})
	if rep == nil {
		t.Fatal(err)
	}
	t.Logf("\n%s", rep.Markdown())
	if err != nil {
		t.Fatal(err)
	}
	checkSoak(t, rep)
	for _, k := range soak.Kinds {
		if rep.Count(k) == 0 {
			t.Errorf("no %s happened", k)
		}
	}
}

// TestNetworkPartition cuts a node off the network under load: its
// replicas are replaced on the other node within the node timeout; when it
// returns, the replica counts converge to the spec with no stray replica,
// no request lost and none run twice.
func TestNetworkPartition(t *testing.T) {
	s := sharedStack(t)
	rep, err := soak.Run(e2e.Ctx(5*time.Minute), soak.Config{Stack: s, Deployment: "partition", Rate: 200, Duration: 20 * time.Second, Seed: 2, Kinds: []soak.Kind{soak.Partition}, PerKind: 1, Warmup: 3 * time.Second, Logf: t.Logf})
	if rep == nil {
		t.Fatal(err)
	}
	t.Logf("\n%s", rep.Markdown())
	if err != nil {
		t.Fatal(err)
	}
	checkSoak(t, rep)
	if rep.Count(soak.Partition) != 1 {
		t.Fatalf("%d partitions", rep.Count(soak.Partition))
	}
	if f := rep.Faults[0]; f.Moved == 0 {
		t.Errorf("the partitioned node %s ran no replica of the deployment", f.Target)
	}
}

// checkSoak asserts a soak's correctness and its loose timing bounds.
func checkSoak(t *testing.T, rep *soak.Report) {
	t.Helper()
	if rep.Sent < rep.Rate*int(rep.Duration/time.Second)*8/10 {
		t.Errorf("%d requests sent in %v at %d req/s", rep.Sent, rep.Duration, rep.Rate)
	}
	if rep.Unanswered != 0 {
		t.Errorf("%d requests never answered", rep.Unanswered)
	}
	if rep.Duplicates != 0 {
		t.Errorf("%d requests executed twice", rep.Duplicates)
	}
	const nodeTimeout = 5 * time.Second
	// Issue 16's targets are printed in the report (a failed request is
	// answered within 1 s; p99 within 1.5× the baseline's); asserted here is
	// only a bound a loaded machine meets: no failed request waited more than
	// 3 s (the deadline is 10 s: nobody waited for it).
	const failBound = 3 * time.Second
	for i, f := range rep.Faults {
		if f.Err != "" {
			t.Errorf("fault %d (%s %s): %s", i+1, f.Kind, f.Target, f.Err)
		}
		if w := rep.Windows[i]; w.MaxFailLatency > failBound {
			t.Errorf("fault %d (%s %s): a failed request waited %v, want ≤ %v (target %v); failures %v", i+1, f.Kind, f.Target, w.MaxFailLatency, failBound, soak.TargetRecovery, w.Codes)
		}
		if f.Kind == soak.Partition && (f.Replaced == 0 || f.Replaced > 3*nodeTimeout) {
			t.Errorf("partition of %s: replicas replaced after %v, want within 3× the node timeout (%v)", f.Target, f.Replaced, nodeTimeout)
		}
	}
}
