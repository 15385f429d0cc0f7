package controlplane_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/natserve/natserve/client"
	"github.com/natserve/natserve/internal/e2e"
	"github.com/natserve/natserve/internal/testutil"
	"github.com/natserve/natserve/internal/wire"
)

// TestNoProcessStorm: a 10,000-replica spec is refused in one line; a
// 1,000-replica spec on a node capped at 32 runs 32 replica processes (the
// rest pending, and the status says why); delete answers at once and the
// processes, still in their constructors, are gone soon after.
func TestNoProcessStorm(t *testing.T) {
	s := e2e.New(t)
	s.Controller("c1")
	agent := testutil.Start(t, nil, s.Program, "agent", "-nats", s.URL, "-creds", testutil.Creds(t, s.URL, "node-n1"), "-name", "n1", "-max-replicas-per-node", "32")
	s.WaitNodes(1)

	for _, spec := range []client.DeploymentSpec{
		{Name: "storm", Class: "Probe", NumReplicas: 10000},
		{Name: "storm", Class: "Probe", AutoscalingConfig: &client.AutoscalingConfig{MaxReplicas: 10000}},
	} {
		_, err := s.Client.Deploy(e2e.Ctx(5*time.Second), spec)
		if !errors.Is(err, client.ErrInvalidSpec) || !strings.Contains(err.Error(), "10000 is more than 1000") || strings.Contains(err.Error(), "\n") {
			t.Fatalf("deploy of 10000 replicas: got %v, want one line naming the bound", err)
		}
	}

	// Constructors that take a minute: every replica is still starting when
	// the deployment is deleted.
	spec := probe("storm", "sleep:1m", 1000)
	if _, err := s.Client.Deploy(e2e.Ctx(10*time.Second), spec); err != nil {
		t.Fatal(err)
	}
	children := func() int { return len(testutil.ChildPIDs(agent.PID())) }
	testutil.Eventually(t, 30*time.Second, func() error {
		if n := children(); n != 32 {
			return fmt.Errorf("%d replica processes, want 32", n)
		}
		d, err := s.Client.Get(e2e.Ctx(2*time.Second), "storm")
		if err != nil {
			return err
		}
		if !strings.Contains(d.Message, "968 replicas pending") || !strings.Contains(d.Message, "replica cap") {
			return fmt.Errorf("status message %q does not say why replicas are pending", d.Message)
		}
		return nil
	})
	for range 10 { // it stays there: observe, no condition to wait for
		if n := children(); n > 32 {
			t.Fatalf("%d replica processes on a node capped at 32", n)
		}
		time.Sleep(100 * time.Millisecond)
	}
	st, err := s.Client.Status(e2e.Ctx(5 * time.Second))
	if err != nil || len(st.Nodes) != 1 || st.Nodes[0].MaxReplicas != 32 {
		t.Fatalf("status: %v %+v, want node n1 with max_replicas 32", err, st)
	}
	d, _ := s.Client.Get(e2e.Ctx(5*time.Second), "storm")
	t.Logf("1000 replicas on a node capped at 32: %d processes; %s: %s", children(), d.Status, d.Message)

	start := time.Now()
	if err := s.Client.Delete(e2e.Ctx(10*time.Second), "storm"); err != nil {
		t.Fatal(err)
	}
	answered := time.Since(start)
	testutil.Eventually(t, 30*time.Second, func() error {
		if n := children(); n != 0 {
			return fmt.Errorf("%d replica processes left after delete", n)
		}
		return nil
	})
	gone := time.Since(start)
	t.Logf("delete answered in %v; all 32 starting replicas gone in %v (target 2 s)", answered.Round(time.Millisecond), gone.Round(time.Millisecond))
	if gone > 10*time.Second {
		t.Errorf("replicas took %v to go after delete, want at most 10 s", gone)
	}
}

// TestEarlyExitsCountTowardRetries: a replica that dies before it serves,
// with any exit code, counts toward max_constructor_retry_count, so that
// the deployment ends DEPLOY_FAILED instead of restarting forever. Both a
// crash (exit 1 in the constructor) and a spec the replica refuses (written
// straight into the store, past the API's validation) are covered.
func TestEarlyExitsCountTowardRetries(t *testing.T) {
	s := e2e.New(t)
	s.Controller("c1")
	s.Agent("n1")
	s.WaitNodes(1)

	crash := probe("crash", "exit:1", 1)
	crash.MaxConstructorRetryCount = 3
	if _, err := s.Client.Deploy(e2e.Ctx(5*time.Second), crash); err != nil {
		t.Fatal(err)
	}

	// Through the API this spec is refused in one line …
	refused := probe("refused", "r", 1)
	refused.MaxOngoingRequests = 2 << 20
	if _, err := s.Client.Deploy(e2e.Ctx(5*time.Second), refused); !errors.Is(err, client.ErrInvalidSpec) || !strings.Contains(err.Error(), "max_ongoing_requests") {
		t.Fatalf("deploy with max_ongoing_requests %d: %v", refused.MaxOngoingRequests, err)
	}
	// … and written into the store past it, each replica exits with its
	// spec error: that counts too.
	refused.MaxConstructorRetryCount = 3
	if err := refused.Normalize(); err == nil {
		t.Fatal("Normalize accepted the spec")
	}
	refused.RoutePrefix = e2e.Ptr("/refused")
	refused.MaxQueuedRequests, refused.GracefulShutdownTimeoutS, refused.HealthCheckPeriodS, refused.HealthCheckTimeoutS = -1, 1, 10, 30
	js, err := jetstream.New(testutil.Conn(t, s.URL))
	if err != nil {
		t.Fatal(err)
	}
	kv, err := js.KeyValue(e2e.Ctx(5*time.Second), wire.BucketDeployments)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(refused)
	if _, err := kv.Put(e2e.Ctx(5*time.Second), "refused", b); err != nil {
		t.Fatal(err)
	}

	for name, want := range map[string]string{"crash": "exiting with code 1 before serving", "refused": "max_ongoing_requests 2097152 is out of range"} {
		start := time.Now()
		// The raw KV write reaches the controller through its watch: wait
		// until it knows the deployment before waiting on its status.
		testutil.Eventually(t, 30*time.Second, func() error {
			_, err := s.Client.Get(e2e.Ctx(5*time.Second), name)
			return err
		})
		d, err := s.Client.WaitHealthy(e2e.Ctx(60*time.Second), name, nil)
		if !errors.Is(err, client.ErrDeployFailed) || d.Status != client.StatusDeployFailed {
			t.Fatalf("%s: got %v (%+v), want DEPLOY_FAILED", name, err, d)
		}
		if !strings.Contains(d.Message, want) || !strings.Contains(d.Message, "3 times (limit 3)") {
			t.Errorf("%s: message %q lacks %q or the count", name, d.Message, want)
		}
		t.Logf("%s: DEPLOY_FAILED after %v: %s", name, time.Since(start).Round(time.Millisecond), d.Message)
	}
	// No restart loop: nothing more starts.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	d, _ := s.Client.Get(ctx, "crash")
	time.Sleep(time.Second) // observe quiet, not wait for a condition
	d2, _ := s.Client.Get(ctx, "crash")
	if len(d2.Replicas) != 0 || d2.Message != d.Message {
		t.Fatalf("after DEPLOY_FAILED: %d replicas, message %q (was %q)", len(d2.Replicas), d2.Message, d.Message)
	}
}
