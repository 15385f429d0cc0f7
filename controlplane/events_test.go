package controlplane_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/natserve/natserve/client"
	"github.com/natserve/natserve/controlplane"
	"github.com/natserve/natserve/internal/e2e"
	"github.com/natserve/natserve/internal/testutil"
)

// TestIdleControllerPassesOnlyOnChange checks that the control loop is
// event-driven: with deployments HEALTHY and nothing changing, it wakes
// (ticks) but passes over no deployment, counted by the controller's own
// counters rather than by time; a change passes over the deployment it
// concerns.
func TestIdleControllerPassesOnlyOnChange(t *testing.T) {
	s := e2e.New(t)
	// No safety-net pass during the test: every pass must come from a change.
	c, stop := runController(t, controlplane.Config{NATSURL: s.URL, Logger: quiet, FullPassInterval: time.Hour})
	defer stop()
	s.Agent("n1")
	s.WaitNodes(1)
	const n = 6
	for i := range n {
		s.Deploy(probe(fmt.Sprintf("idle-%d", i), "x", 1))
	}

	// quiet waits for ticks wake-ups of the loop and returns how many
	// deployment and full passes ran meanwhile.
	quietFor := func(ticks uint64) (passes, full uint64) {
		before := c.Stats()
		testutil.Eventually(t, 30*time.Second, func() error {
			if got := c.Stats().Ticks; got < before.Ticks+ticks {
				return fmt.Errorf("%d ticks of %d", got-before.Ticks, ticks)
			}
			return nil
		})
		after := c.Stats()
		return after.Passes - before.Passes, after.FullPasses - before.FullPasses
	}
	// Let the last replica-state and assignment writes land.
	testutil.Eventually(t, 30*time.Second, func() error {
		if p, _ := quietFor(5); p != 0 {
			return fmt.Errorf("%d passes in 5 ticks", p)
		}
		return nil
	})
	const window = 30
	passes, full := quietFor(window)
	t.Logf("idle: %d deployment passes and %d full passes over %d ticks (a loop walking every deployment each tick: %d)", passes, full, window, window*n)
	if passes != 0 || full != 0 {
		t.Errorf("idle controller with %d HEALTHY deployments ran %d deployment passes and %d full passes over %d ticks; want none", n, passes, full, window)
	}

	// A change is acted on: scaling one deployment passes over it.
	before := c.Stats()
	if err := s.Client.Scale(e2e.Ctx(10*time.Second), "idle-0", 2); err != nil {
		t.Fatal(err)
	}
	d := s.WaitHealthy("idle-0")
	if d.Ready != 2 || d.Status != client.StatusHealthy {
		t.Fatalf("idle-0 after scaling: %d ready, %s", d.Ready, d.Status)
	}
	after := c.Stats()
	t.Logf("scaling idle-0 to 2: %d deployment passes, %d full", after.Passes-before.Passes, after.FullPasses-before.FullPasses)
	if after.Passes == before.Passes {
		t.Error("scaling a deployment ran no pass over it")
	}
	if after.FullPasses != before.FullPasses {
		t.Error("scaling a deployment ran a full pass")
	}
}
