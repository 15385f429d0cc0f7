package worker_test

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/natserve/natserve/client"
	"github.com/natserve/natserve/internal/e2e"
	"github.com/natserve/natserve/internal/testutil"
	"github.com/natserve/natserve/internal/wire"
	"github.com/natserve/natserve/worker"
)

const orphanTimeout = 2 * time.Second

// orphanStack runs a controller and node agent n1 (with a 2 s orphan
// timeout, replicas left running on exit) serving one Probe replica, and
// returns the replica's pid.
func orphanStack(t *testing.T) (*e2e.Stack, *testutil.Proc, int) {
	t.Helper()
	s := e2e.New(t)
	s.Controller("c1")
	agent := s.Agent("n1", "-orphan-timeout", orphanTimeout.String())
	s.WaitNodes(1)
	s.Deploy(client.DeploymentSpec{Name: "orphan", Class: "Probe", InitArgs: []byte(`["o"]`), NumReplicas: 1})
	var pid int
	for p := range s.PIDs("orphan") {
		pid = p
	}
	if pid == 0 {
		t.Fatal("no replica pid")
	}
	return s, agent, pid
}

// A replica whose agent is killed (-9) and that no agent adopts drains and
// exits after the orphan timeout.
func TestOrphanExitsWhenNoAgentAdopts(t *testing.T) {
	s, agent, pid := orphanStack(t)
	killed := time.Now()
	s.KillAgentOnly("n1")
	if !testutil.Alive(pid) {
		t.Fatal("the replica died with its agent; it should outlive it for the orphan timeout")
	}
	testutil.Eventually(t, 30*time.Second, func() error {
		if testutil.Alive(pid) {
			return fmt.Errorf("replica pid %d still runs %v after its agent was killed", pid, time.Since(killed).Round(time.Millisecond))
		}
		return nil
	})
	took := time.Since(killed)
	t.Logf("orphaned replica exited %v after its agent was killed (orphan timeout %v)", took.Round(time.Millisecond), orphanTimeout)
	if took < orphanTimeout {
		t.Errorf("exited after %v, before the orphan timeout %v", took, orphanTimeout)
	}
	if !agent.Exited() {
		t.Error("the agent survived kill -9")
	}
}

// A replica whose agent is killed and restarted within the orphan timeout
// is adopted and keeps serving past it.
func TestAdoptedReplicaKeepsRunning(t *testing.T) {
	s, _, pid := orphanStack(t)
	s.KillAgentOnly("n1")
	killed := time.Now()
	again := s.Agent("n1", "-orphan-timeout", orphanTimeout.String())
	testutil.Eventually(t, 20*time.Second, func() error {
		if !strings.Contains(again.Output(), "adopted replica") {
			return fmt.Errorf("the restarted agent has not adopted the replica")
		}
		return nil
	})
	t.Logf("adopted %v after the kill", time.Since(killed).Round(time.Millisecond))
	// Watch it well past the orphan timeout (a negative: it must not exit).
	until := killed.Add(3 * orphanTimeout)
	for time.Now().Before(until) {
		if !testutil.Alive(pid) {
			t.Fatalf("adopted replica pid %d exited %v after its first agent was killed", pid, time.Since(killed))
		}
		time.Sleep(100 * time.Millisecond)
	}
	got, err := client.Call[int](e2e.Ctx(10*time.Second), s.Client.Handle("orphan").Method("PID"))
	if err != nil || got != pid {
		t.Fatalf("call after adoption: pid %d, %v; want %d", got, err, pid)
	}
}

// A replica that cannot reach NATS for the orphan timeout drains and exits.
func TestReplicaCutOffFromNATSExits(t *testing.T) {
	b := testutil.Broker(t)
	bin := testutil.Build(t, "./internal/testprog")
	nc := testutil.Conn(t, b.ClientURL())
	spec := worker.ReplicaSpec{Deployment: "cut", Class: "Probe", Replica: "rcut1", NATSURL: b.ClientURL(), InitArgs: []byte(`["c"]`), OrphanTimeoutS: orphanTimeout.Seconds(),
		Creds: testutil.ReplicaCreds(t, b.ClientURL(), "cut")}
	raw, _ := json.Marshal(spec)
	p := testutil.StartWith(t, "", raw, nil, bin, "replica")
	testutil.Eventually(t, 20*time.Second, func() error {
		if p.Exited() {
			t.Fatalf("replica exited early:\n%s", p.Output())
		}
		_, err := nc.Request(wire.ReplicaSubject("cut", spec.Replica, wire.VerbPing), nil, 200*time.Millisecond)
		return err
	})
	cut := time.Now()
	if err := b.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	exited, err := p.Wait(30 * time.Second)
	took := time.Since(cut)
	if !exited {
		t.Fatalf("replica still runs %v after NATS went away:\n%s", took, p.Output())
	}
	t.Logf("replica cut off from NATS exited after %v (orphan timeout %v): %v", took.Round(time.Millisecond), orphanTimeout, err)
	if took < orphanTimeout || !strings.Contains(p.Output(), "NATS unreachable") {
		t.Errorf("exited after %v, want at least %v and the reason logged:\n%s", took, orphanTimeout, p.Output())
	}
}
