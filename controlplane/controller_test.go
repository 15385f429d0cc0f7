package controlplane_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/natserve/natserve/client"
	"github.com/natserve/natserve/internal/e2e"
	"github.com/natserve/natserve/internal/testutil"
)

func TestMain(m *testing.M) { testutil.Main(m) }

func probe(name, tag string, replicas int) client.DeploymentSpec {
	return client.DeploymentSpec{Name: name, Class: "Probe", InitArgs: json.RawMessage(fmt.Sprintf("[%q]", tag)), NumReplicas: replicas}
}

func TestDeployListGet(t *testing.T) {
	s := e2e.Standard(t)
	s.Deploy(probe("rep-1", "a", 2))
	api := probe("rep-2", "b", 2)
	api.RoutePrefix = e2e.Ptr("/api/v2")
	s.Deploy(api)

	ds, err := s.Client.List(e2e.Ctx(5 * time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if len(ds) != 2 {
		t.Fatalf("listed %d deployments, want 2", len(ds))
	}
	for i, want := range []struct{ name, route string }{{"rep-1", "/rep-1"}, {"rep-2", "/api/v2"}} {
		d := ds[i]
		if p, _ := d.Spec.Route(); d.Spec.Name != want.name || p != want.route || d.Spec.NumReplicas != 2 || d.Ready != 2 || d.Status != client.StatusHealthy {
			t.Errorf("deployment %d: %s at %s, %d/%d %s; want %s at %s, 2/2 HEALTHY", i, d.Spec.Name, p, d.Ready, d.Spec.NumReplicas, d.Status, want.name, want.route)
		}
	}
	d, err := s.Client.Get(e2e.Ctx(5*time.Second), "rep-1")
	if err != nil || len(d.Replicas) != 2 {
		t.Fatalf("get: %v %+v", err, d)
	}
	nodes := map[string]bool{}
	for _, r := range d.Replicas {
		nodes[r.Node] = true
		if r.PID == 0 || !e2e.ProcessAlive(r.PID) {
			t.Errorf("replica %s reports pid %d, which is not running", r.ID, r.PID)
		}
	}
	if len(nodes) != 2 {
		t.Errorf("rep-1's replicas are on %v, want spread over n1 and n2", nodes)
	}
	if _, err := s.Client.Get(e2e.Ctx(5*time.Second), "nope"); !errors.Is(err, client.ErrNotFound) {
		t.Errorf("get unknown: %v", err)
	}
	// Re-applying the same spec restarts nothing.
	before := s.PIDs("rep-1")
	if _, err := s.Client.Deploy(e2e.Ctx(5*time.Second), probe("rep-1", "a", 2)); err != nil {
		t.Fatal(err)
	}
	s.WaitHealthy("rep-1")
	if after := s.PIDs("rep-1"); fmt.Sprint(after) != fmt.Sprint(before) {
		t.Errorf("re-applying the same spec changed the pids: %v → %v", before, after)
	}
}

func TestInvalidSpecsRefused(t *testing.T) {
	s := e2e.Standard(t)
	s.Deploy(probe("taken", "t", 1))
	for _, tc := range []struct {
		spec client.DeploymentSpec
		want error
		text string
	}{
		{client.DeploymentSpec{Name: "x", Class: "NoSuchClass"}, client.ErrUnknownClass, "unknown class NoSuchClass (the nodes provide: AddModel, "},
		{client.DeploymentSpec{Name: "bad.name", Class: "Probe"}, client.ErrInvalidSpec, "name"},
		{client.DeploymentSpec{Name: "neg", Class: "Probe", NumReplicas: -1}, client.ErrInvalidSpec, "num_replicas: -1 is negative"},
		{client.DeploymentSpec{Name: "noslash", Class: "Probe", RoutePrefix: e2e.Ptr("api")}, client.ErrInvalidSpec, "route_prefix: \"api\" must start with '/'"},
		{client.DeploymentSpec{Name: "dup", Class: "Probe", RoutePrefix: e2e.Ptr("/taken")}, client.ErrConflict, "route_prefix: /taken is already the route of deployment taken"},
		{client.DeploymentSpec{Name: "args", Class: "Probe", InitArgs: json.RawMessage(`{"a":1}`)}, client.ErrInvalidSpec, "init_args: must be a JSON array"},
	} {
		_, err := s.Client.Deploy(e2e.Ctx(5*time.Second), tc.spec)
		if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.text) || strings.Contains(err.Error(), "\n") {
			t.Errorf("deploy %s: got %v, want %v containing %q on one line", tc.spec.Name, err, tc.want, tc.text)
		}
	}
	ds, _ := s.Client.List(e2e.Ctx(5 * time.Second))
	if len(ds) != 1 {
		t.Errorf("refused specs left %d deployments, want 1", len(ds))
	}
}

func TestKilledReplicaReplaced(t *testing.T) {
	s := e2e.Standard(t)
	s.Deploy(probe("victim", "v", 2))
	before := s.PIDs("victim")
	var pid int
	for p := range before {
		pid = p
		break
	}
	start := time.Now()
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 5*time.Second, func() error {
		after := s.PIDs("victim")
		if _, still := after[pid]; still || len(after) != 2 {
			return fmt.Errorf("pids %v", after)
		}
		// The replacement serves.
		for p := range after {
			if _, old := before[p]; !old && !servesPID(s, "victim", p) {
				return fmt.Errorf("new pid %d does not serve yet", p)
			}
		}
		return nil
	})
	t.Logf("replica pid %d killed; replacement serving after %v", pid, time.Since(start))
}

func servesPID(s *e2e.Stack, name string, pid int) bool {
	for i := 0; i < 40; i++ {
		got, err := client.Call[int](e2e.Ctx(2*time.Second), s.Client.Handle(name).Method("PID"))
		if err == nil && got == pid {
			return true
		}
	}
	return false
}

func TestNodeLossMovesReplicas(t *testing.T) {
	s := e2e.Standard(t)
	s.Deploy(probe("movable", "m", 2))
	start := time.Now()
	s.KillNode("n1")
	testutil.Eventually(t, 20*time.Second, func() error {
		pids := s.PIDs("movable")
		if len(pids) != 2 {
			return fmt.Errorf("%d running replicas", len(pids))
		}
		for pid, node := range pids {
			if node != "n2" || !e2e.ProcessAlive(pid) {
				return fmt.Errorf("replica pid %d on %s", pid, node)
			}
		}
		return nil
	})
	t.Logf("node n1 killed; both replicas on n2 after %v", time.Since(start))
	if _, err := client.Call[int](e2e.Ctx(5*time.Second), s.Client.Handle("movable").Method("PID")); err != nil {
		t.Fatal(err)
	}
}

func TestScaleUnderLoad(t *testing.T) {
	s := e2e.Standard(t)
	s.Deploy(probe("elastic", "e", 2))
	load := e2e.StartLoad(s.Client.Handle("elastic").Method("Work"), 8, 5)
	load.WaitOK(t, 100)
	for _, n := range []int{4, 1} {
		if err := s.Client.Scale(e2e.Ctx(5*time.Second), "elastic", n); err != nil {
			t.Fatal(err)
		}
		d := s.WaitHealthy("elastic")
		if len(d.Replicas) != n {
			t.Fatalf("after scaling to %d: %d replicas", n, len(d.Replicas))
		}
		load.WaitOK(t, 200)
	}
	if err := load.Stop(); err != nil || load.Failed.Load() != 0 {
		t.Fatalf("%d of %d calls failed while scaling 2 → 4 → 1: %v", load.Failed.Load(), load.OK.Load()+load.Failed.Load(), err)
	}
	t.Logf("scaled 2 → 4 → 1 under load: %d calls, 0 failed", load.OK.Load())
}

func TestRollingUpdateUnderLoad(t *testing.T) {
	s := e2e.Standard(t)
	s.Deploy(probe("rolling", "v1", 3))
	before := s.PIDs("rolling")
	load := e2e.StartLoad(s.Client.Handle("rolling"), 8, "x")
	load.WaitOK(t, 100)
	if _, err := s.Client.Deploy(e2e.Ctx(5*time.Second), probe("rolling", "v2", 3)); err != nil {
		t.Fatal(err)
	}
	s.WaitHealthy("rolling")
	load.WaitOK(t, 100)
	if err := load.Stop(); err != nil || load.Failed.Load() != 0 {
		t.Fatalf("%d calls failed during the rolling update: %v", load.Failed.Load(), err)
	}
	for pid := range s.PIDs("rolling") {
		if _, old := before[pid]; old {
			t.Errorf("pid %d of the old version still running", pid)
		}
	}
	for i := 0; i < 50; i++ {
		got, err := client.Call[string](e2e.Ctx(5*time.Second), s.Client.Handle("rolling"), "y")
		if err != nil || !strings.HasPrefix(got, "tag=v2 ") {
			t.Fatalf("after the update: %q %v", got, err)
		}
	}
	t.Logf("rolling update v1 → v2 under load: %d calls, 0 failed", load.OK.Load())
}

func TestUserConfigInPlace(t *testing.T) {
	s := e2e.Standard(t)
	spec := probe("tunable", "t", 2)
	spec.UserConfig = json.RawMessage(`{"threshold":0.5}`)
	s.Deploy(spec)
	before := s.PIDs("tunable")
	spec.UserConfig = json.RawMessage(`{"threshold":0.9}`)
	if _, err := s.Client.Deploy(e2e.Ctx(5*time.Second), spec); err != nil {
		t.Fatal(err)
	}
	s.WaitHealthy("tunable")
	if after := s.PIDs("tunable"); fmt.Sprint(after) != fmt.Sprint(before) {
		t.Fatalf("changing user_config restarted replicas: %v → %v", before, after)
	}
	seen := map[float64]bool{}
	for i := 0; i < 40; i++ {
		var out struct {
			PID    int            `json:"pid"`
			Config map[string]any `json:"config"`
		}
		if err := s.Client.Handle("tunable").Method("Config").Call(e2e.Ctx(5*time.Second), &out); err != nil {
			t.Fatal(err)
		}
		v, _ := out.Config["threshold"].(float64)
		seen[v] = true
	}
	if len(seen) != 1 || !seen[0.9] {
		t.Fatalf("replicas report thresholds %v, want only 0.9", seen)
	}
}

func TestConstructorFailureIsDeployFailed(t *testing.T) {
	s := e2e.Standard(t)
	spec := probe("broken", "fail:cannot open /model/rep-1.pkl", 2)
	if _, err := s.Client.Deploy(e2e.Ctx(5*time.Second), spec); err != nil {
		t.Fatal(err)
	}
	d, err := s.Client.WaitHealthy(e2e.Ctx(60*time.Second), "broken", nil)
	if !errors.Is(err, client.ErrDeployFailed) || d.Status != client.StatusDeployFailed {
		t.Fatalf("got %v (%+v), want DEPLOY_FAILED", err, d)
	}
	if !strings.Contains(d.Message, "cannot open /model/rep-1.pkl") || !strings.Contains(d.Message, "failed 6 times") {
		t.Fatalf("message %q lacks the constructor's error or the count", d.Message)
	}
	// No crash loop: nothing more is started.
	time.Sleep(2 * time.Second) // observe quiet, not wait for a condition
	d2, _ := s.Client.Get(e2e.Ctx(5*time.Second), "broken")
	if len(d2.Replicas) != 0 || d2.Message != d.Message {
		t.Fatalf("after DEPLOY_FAILED: %d replicas, message %q", len(d2.Replicas), d2.Message)
	}
	t.Logf("DEPLOY_FAILED: %s", d.Message)
}

func TestHungReplicaReplaced(t *testing.T) {
	s := e2e.Standard(t)
	spec := probe("hang", "h", 2)
	spec.HealthCheckPeriodS, spec.HealthCheckTimeoutS = 0.5, 0.5
	s.Deploy(spec)
	for _, how := range []string{"SIGSTOP", "check_health"} {
		before := s.PIDs("hang")
		var pid int
		if how == "SIGSTOP" {
			for p := range before {
				pid = p
				break
			}
			_ = syscall.Kill(pid, syscall.SIGSTOP)
		} else {
			var err error
			pid, err = client.Call[int](e2e.Ctx(5*time.Second), s.Client.Handle("hang").Method("SetSick"), "database unreachable")
			if err != nil {
				t.Fatal(err)
			}
		}
		start := time.Now()
		testutil.Eventually(t, 15*time.Second, func() error {
			if e2e.ProcessAlive(pid) {
				return fmt.Errorf("pid %d still alive", pid)
			}
			if n := len(s.PIDs("hang")); n != 2 {
				return fmt.Errorf("%d replicas running", n)
			}
			return nil
		})
		took := time.Since(start)
		t.Logf("%s replica pid %d killed and replaced after %v (health check period 0.5s, timeout 0.5s)", how, pid, took)
		if took > 3*500*time.Millisecond+5*time.Second {
			t.Errorf("%s: replaced after %v", how, took)
		}
		s.WaitHealthy("hang")
	}
}

func TestControllerDownTrafficFlows(t *testing.T) {
	s := e2e.New(t)
	c1 := s.Controller("c1")
	s.Agent("n1")
	s.Agent("n2")
	s.WaitNodes(2)
	s.Deploy(probe("steady", "s", 2))
	before := s.PIDs("steady")
	load := e2e.StartLoad(s.Client.Handle("steady").Method("Work"), 8, 5)
	load.WaitOK(t, 100)
	_ = c1.Signal(syscall.SIGKILL)
	_, _ = c1.Wait(5 * time.Second)
	down := time.Now()
	for time.Since(down) < 10*time.Second {
		load.WaitOK(t, 50)
	}
	s.Controller("c1-restarted")
	s.WaitHealthy("steady")
	load.WaitOK(t, 100)
	if err := load.Stop(); err != nil || load.Failed.Load() != 0 {
		t.Fatalf("%d calls failed with the controller down: %v", load.Failed.Load(), err)
	}
	if after := s.PIDs("steady"); fmt.Sprint(after) != fmt.Sprint(before) {
		t.Fatalf("the restarted controller changed the replicas: %v → %v", before, after)
	}
	t.Logf("controller down 10s: %d calls, 0 failed; pids unchanged after restart", load.OK.Load())
}

func TestStandbyControllerTakesOver(t *testing.T) {
	s := e2e.New(t)
	c1 := s.Controller("c1")
	s.Agent("n1")
	s.WaitNodes(1)
	s.Controller("c2")
	st, err := s.Client.Status(e2e.Ctx(5 * time.Second))
	if err != nil || st.Leader != "c1" {
		t.Fatalf("leader %q, want c1 (%v)", st.Leader, err)
	}
	// Only the leader answers: ask many times.
	for i := 0; i < 20; i++ {
		if st, err := s.Client.Status(e2e.Ctx(5 * time.Second)); err != nil || st.Leader != "c1" {
			t.Fatalf("answer %d from %q (%v): two controllers act", i, st.Leader, err)
		}
	}
	_ = c1.Signal(syscall.SIGKILL)
	start := time.Now()
	testutil.Eventually(t, 10*time.Second, func() error {
		st, err := s.Client.Status(e2e.Ctx(time.Second))
		if err != nil {
			return err
		}
		if st.Leader != "c2" {
			return fmt.Errorf("leader %q", st.Leader)
		}
		return nil
	})
	t.Logf("c1 killed; c2 leads after %v", time.Since(start))
	s.WaitNodes(1)
	s.Deploy(probe("after", "a", 1))
}
