package controlplane_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/natserve/natserve/client"
	"github.com/natserve/natserve/internal/e2e"
	"github.com/natserve/natserve/internal/testutil"
)

// spread counts a deployment's replicas: running and healthy per node, all
// of them listed (stopping and starting ones too), and the ready ones.
func spread(t *testing.T, s *e2e.Stack, name string) (perNode map[string]int, listed, ready int, status string) {
	t.Helper()
	d, err := s.Client.Get(e2e.Ctx(5*time.Second), name)
	if err != nil {
		t.Fatal(err)
	}
	perNode = map[string]int{}
	for _, r := range d.Replicas {
		if r.State == client.ReplicaRunning && r.Healthy && r.Current {
			perNode[r.Node]++
			ready++
		}
	}
	return perNode, len(d.Replicas), ready, d.Status
}

// TestRebalanceAfterNodeReturns: 4 replicas over two nodes; one node is
// killed (agent and replicas), its replicas move to the other, and when
// its agent starts again the controller moves them back, one at a time,
// each replacement ready before a replica stops: never fewer than 4 ready
// and no failed call under load while it does.
func TestRebalanceAfterNodeReturns(t *testing.T) {
	s := e2e.New(t)
	settle := 3 * time.Second
	s.Controller("c1", "-rebalance-settle", settle.String(), "-rebalance-cooldown", "1s")
	s.Agent("n1")
	s.Agent("n2")
	s.WaitNodes(2)
	s.Deploy(probe("spread", "s", 4))
	if perNode, _, _, _ := spread(t, s, "spread"); perNode["n1"] != 2 || perNode["n2"] != 2 {
		t.Fatalf("placed %v, want 2 on each node", perNode)
	}

	killed := time.Now()
	s.KillNode("n1")
	testutil.Eventually(t, 30*time.Second, func() error {
		if perNode, listed, ready, _ := spread(t, s, "spread"); perNode["n2"] != 4 || listed != 4 || ready != 4 {
			return fmt.Errorf("%v (%d listed, %d ready)", perNode, listed, ready)
		}
		return nil
	})
	t.Logf("n1 killed; 4 replicas ready on n2 after %v", time.Since(killed).Round(time.Millisecond))

	load := e2e.StartLoad(s.Client.Handle("spread").Method("Work"), 8, 5)
	load.WaitOK(t, 100)
	s.Agent("n1")
	back := time.Now()
	minReady, moves := 4, 0
	var lastN1 int
	var converged time.Duration
	testutil.Eventually(t, 90*time.Second, func() error {
		perNode, listed, ready, status := spread(t, s, "spread")
		minReady = min(minReady, ready)
		if perNode["n1"] != lastN1 {
			moves += max(perNode["n1"]-lastN1, 0)
			t.Logf("%v after n1's agent started: %v, %d listed, %d ready, %s", time.Since(back).Round(time.Millisecond), perNode, listed, ready, status)
			lastN1 = perNode["n1"]
		}
		if perNode["n1"] != 2 || perNode["n2"] != 2 || listed != 4 || status != client.StatusHealthy {
			return fmt.Errorf("%v (%d listed, %d ready, %s)", perNode, listed, ready, status)
		}
		converged = time.Since(back)
		return nil
	})
	load.WaitOK(t, 100)
	if err := load.Stop(); err != nil || load.Failed.Load() != 0 {
		t.Fatalf("%d of %d calls failed while replicas moved back: %v", load.Failed.Load(), load.OK.Load()+load.Failed.Load(), err)
	}
	if minReady < 4 {
		t.Errorf("ready replicas dropped to %d while rebalancing, want never below 4", minReady)
	}
	t.Logf("n1's agent back: 2/2 again after %v (settle %v, cooldown 1s), %d replicas moved, never fewer than %d ready; %d calls under load, 0 failed",
		converged.Round(time.Millisecond), settle, moves, minReady, load.OK.Load())
	// Balanced now: nothing moves any more.
	before := s.PIDs("spread")
	time.Sleep(3 * time.Second)
	if after := s.PIDs("spread"); fmt.Sprint(after) != fmt.Sprint(before) {
		t.Fatalf("replicas changed on a balanced deployment: %v → %v", before, after)
	}
}
