package worker_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/natserve/natserve/client"
	"github.com/natserve/natserve/internal/store"
	"github.com/natserve/natserve/internal/testutil"
	"github.com/natserve/natserve/internal/wire"
	"github.com/natserve/natserve/worker"
)

// TestAgentStopsItsGoroutines runs a node agent in this process, has it
// start a replica process from an assignment, calls the replica, stops the
// agent and checks that nothing it started still runs.
func TestAgentStopsItsGoroutines(t *testing.T) {
	bin := testutil.Build(t, "./internal/testprog")
	verify := testutil.LeakCheck(t)
	b := testutil.Broker(t)
	var reg worker.Registry
	reg.Class("Probe", func(tag string) *healthy { return &healthy{} })
	a, err := worker.NewAgent(worker.AgentConfig{
		Name: "leak", NATSURL: b.ClientURL(), NATSOptions: testutil.CredsOptions(t, b.ClientURL(), "node-leak"), Registry: &reg, Program: bin, StopReplicasOnExit: true,
		HeartbeatInterval: 100 * time.Millisecond, Logger: quiet, ReplicaOutput: testWriter{t},
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()

	nc := testutil.Conn(t, b.ClientURL())
	cl := client.New(nc)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	// The controller creates the buckets; here the test does.
	bk, err := store.Open(context.Background(), js, store.Config{})
	if err != nil {
		t.Fatal(err)
	}
	kv := bk.Assignments
	asg := store.Assignment{Replica: "rleak", Node: "leak", Deployment: "leaky", Class: "Probe", InitArgs: []byte(`["l"]`),
		MaxOngoingRequests: 5, GracefulShutdownTimeoutS: 5, Desired: store.DesiredRun, Created: time.Now(),
		Creds: testutil.ReplicaCreds(t, b.ClientURL(), "leaky")}
	if _, err := store.Update(context.Background(), kv, asg.Key(), asg, 0); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 30*time.Second, func() error {
		_, err := nc.Request(wire.ReplicaSubject("leaky", "rleak", wire.VerbPing), nil, 200*time.Millisecond)
		return err
	})
	if _, err := client.Call[int](context.Background(), cl.Handle("leaky").Method("PID")); err != nil {
		t.Fatal(err)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("agent did not stop")
	}
	if _, err := nc.Request(wire.ReplicaSubject("leaky", "rleak", wire.VerbPing), nil, 200*time.Millisecond); err == nil {
		t.Error("the replica still answers after its agent stopped with StopReplicasOnExit")
	} else if !errors.Is(err, nats.ErrNoResponders) && !errors.Is(err, nats.ErrTimeout) {
		t.Error(err)
	}
	cl.Close()
	nc.Close()
	verify(b)
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Logf("%s", p)
	return len(p), nil
}
