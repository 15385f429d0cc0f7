package worker_test

import (
	"context"
	"encoding/json"
	"fmt"
	"sync/atomic"
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

// TestAgentBatchedHealth: the node agent answers a batched health check of
// its replicas in one message, with each replica's CheckHealth result,
// over its agent link: no ping crosses the broker.
func TestAgentBatchedHealth(t *testing.T) {
	bin := testutil.Build(t, "./internal/testprog")
	b := testutil.Broker(t)
	var reg worker.Registry
	reg.Class("Probe", func(tag string) *healthy { return &healthy{} })
	a, err := worker.NewAgent(worker.AgentConfig{
		Name: "hb", NATSURL: b.ClientURL(), NATSOptions: testutil.CredsOptions(t, b.ClientURL(), "node-hb"), Registry: &reg, Program: bin, StopReplicasOnExit: true,
		HeartbeatInterval: 100 * time.Millisecond, Logger: quiet, ReplicaOutput: testWriter{t},
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	defer func() {
		cancel()
		<-done
	}()

	nc := testutil.Conn(t, b.ClientURL())
	defer nc.Close()
	cl := client.New(nc)
	defer cl.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	bk, err := store.Open(context.Background(), js, store.Config{})
	if err != nil {
		t.Fatal(err)
	}
	replicas := []string{"rhb1", "rhb2"}
	for _, r := range replicas {
		asg := store.Assignment{Replica: r, Node: "hb", Deployment: "hbdep", Class: "Probe", InitArgs: []byte(`["h"]`),
			MaxOngoingRequests: 5, GracefulShutdownTimeoutS: 5, Desired: store.DesiredRun, Created: time.Now(),
			Creds: testutil.ReplicaCreds(t, b.ClientURL(), "hbdep")}
		if _, err := store.Update(context.Background(), bk.Assignments, asg.Key(), asg, 0); err != nil {
			t.Fatal(err)
		}
	}
	// Running: the agent saw each ready (on its link).
	testutil.Eventually(t, 60*time.Second, func() error {
		for _, r := range replicas {
			var st store.ReplicaState
			if _, err := store.Get(context.Background(), bk.Replicas, wire.ReplicaKey("hb", r), &st); err != nil {
				return err
			}
			if st.State != client.ReplicaRunning {
				return fmt.Errorf("%s is %s", r, st.State)
			}
		}
		return nil
	})

	// Count the pings that cross the broker from here on.
	var pings atomic.Int32
	sub, err := nc.Subscribe(wire.ReplicaSubject("*", "*", wire.VerbPing), func(*nats.Msg) { pings.Add(1) })
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}

	batch := func(timeout time.Duration, names ...string) map[string]wire.HealthResult {
		t.Helper()
		hb := wire.HealthBatch{TimeoutUS: timeout.Microseconds()}
		for _, r := range names {
			hb.Checks = append(hb.Checks, wire.HealthCheck{Deployment: "hbdep", Replica: r})
		}
		body, _ := json.Marshal(hb)
		m, err := nc.Request(wire.AgentSubject("hb", wire.AgentVerbHealth), body, timeout+5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		var res wire.HealthResults
		if err := json.Unmarshal(m.Data, &res); err != nil {
			t.Fatal(err)
		}
		got := map[string]wire.HealthResult{}
		for _, r := range res.Results {
			got[r.Replica] = r
		}
		return got
	}

	got := batch(2*time.Second, append(replicas, "rnone")...)
	for _, r := range replicas {
		if g := got[r]; !g.Answered || !g.Healthy {
			t.Errorf("%s: %+v, want healthy", r, g)
		}
	}
	if g := got["rnone"]; g.Answered || g.Error == "" {
		t.Errorf("a replica the node does not run: %+v, want an error", g)
	}
	// rnone was pinged over NATS (it has no link): that one only.
	if n := pings.Load(); n != 1 {
		t.Errorf("%d pings crossed the broker, want 1 (rnone's)", n)
	}

	// A replica whose CheckHealth fails is reported unhealthy with its error.
	// "hbdep" runs the test's class "Probe" of internal/testprog, whose
	// SetSick makes CheckHealth fail.
	if _, err := client.Call[int](context.Background(), cl.Handle("hbdep").Method("SetSick"), "sick of it"); err != nil {
		t.Fatal(err)
	}
	got = batch(2*time.Second, replicas...)
	sick := 0
	for _, r := range replicas {
		g := got[r]
		if !g.Answered {
			t.Fatalf("%s: %+v", r, g)
		}
		if !g.Healthy {
			sick++
			if g.Error != "sick of it" {
				t.Errorf("%s: error %q, want CheckHealth's", r, g.Error)
			}
		}
	}
	if sick != 1 {
		t.Errorf("%d replicas unhealthy, want the 1 made sick: %+v", sick, got)
	}
	// A CheckHealth that hangs is cut at the batch's timeout.
	if _, err := client.Call[int](context.Background(), cl.Handle("hbdep").Method("SetSick"), "hang"); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	got = batch(300*time.Millisecond, replicas...)
	hung := 0
	for _, r := range replicas {
		if g := got[r]; !g.Healthy {
			hung++
		}
	}
	if hung == 0 {
		t.Errorf("no replica unhealthy with CheckHealth hung: %+v (after %v)", got, time.Since(start))
	}
	if n := pings.Load(); n != 1 {
		t.Errorf("%d pings crossed the broker, want still 1", n)
	}
}
