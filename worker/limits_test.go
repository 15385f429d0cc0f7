package worker_test

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/natserve/natserve/client"
	"github.com/natserve/natserve/internal/store"
	"github.com/natserve/natserve/internal/testutil"
	"github.com/natserve/natserve/internal/wire"
	"github.com/vmihailenco/msgpack/v5"
)

// peakRSS is VmHWM of pid in bytes.
func peakRSS(t *testing.T, pid int) int64 {
	t.Helper()
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "VmHWM:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			return kb << 10
		}
	}
	t.Fatal("no VmHWM in /proc/pid/status")
	return 0
}

// TestMapBombRefused: an 8 MB argument of empty maps (640 MB decoded) is
// refused with bad_request before it is decoded; the replica's peak RSS
// stays under 200 MB and it serves on.
func TestMapBombRefused(t *testing.T) {
	s := newStack(t)
	r := s.replica(t, "bomb", "Probe", `["b"]`, 5)
	const n = 8<<20 - 64<<10 // room for the headers in the broker's 8 MiB payload
	bomb := binary.BigEndian.AppendUint32([]byte{0xdd}, n)
	for range n {
		bomb = append(bomb, 0x80)
	}
	h := s.cl.Handle("bomb") // Probe.Call takes any arguments
	start := time.Now()
	var out string
	err := h.Call(testCtx(t, 30*time.Second), &out, msgpack.RawMessage(bomb))
	if !errors.Is(err, client.ErrBadRequest) || !strings.Contains(err.Error(), "too costly") {
		t.Fatalf("bomb: got %v, want bad_request (too costly to decode)", err)
	}
	hwm := peakRSS(t, r.PID())
	t.Logf("8 MB map bomb refused in %v: %v; replica peak RSS %.1f MB", time.Since(start).Round(time.Millisecond), err, float64(hwm)/(1<<20))
	if hwm > 200<<20 {
		t.Errorf("replica peak RSS %d MB, want under 200 MB", hwm>>20)
	}
	if err := h.Call(testCtx(t, 10*time.Second), &out, "after"); err != nil || !strings.Contains(out, "after") {
		t.Fatalf("call after the bomb: %q %v", out, err)
	}
}

// TestJSONBombRefused: an HTTP body of 8 MB of {"":0} objects (~420 MB
// decoded into interface values) for a typed handler is refused with
// bad_request before it is decoded; the replica serves on.
func TestJSONBombRefused(t *testing.T) {
	s := newStack(t)
	r := s.replica(t, "double", "double", ``, 5)
	call := func(body []byte) ([]byte, error) {
		env := wire.AppendHTTPRequest(nil, &wire.HTTPRequest{Method: "POST", Path: "/double", Prefix: "/double", Body: body})
		msg := &nats.Msg{Subject: wire.DeploymentSubject("double"), Header: nats.Header{wire.HeaderKind: {wire.KindHTTP}}, Data: env}
		reply, err := s.cl.RequestMsg(testCtx(t, 30*time.Second), time.Time{}, "double", "", msg)
		if err != nil {
			return nil, err
		}
		rep, err := wire.DecodeHTTPReply(reply.Data)
		if err != nil {
			return nil, err
		}
		return rep.Body, nil
	}
	const n = (8<<20 - 64<<10) / 7
	bomb := []byte("[" + strings.Repeat(`{"":0},`, n) + "0]")
	start := time.Now()
	_, err := call(bomb)
	if !errors.Is(err, client.ErrBadRequest) || !strings.Contains(err.Error(), "too costly") || strings.Contains(err.Error(), "\n") {
		t.Fatalf("JSON bomb: got %v, want one line of bad_request (too costly to decode)", err)
	}
	hwm := peakRSS(t, r.PID())
	t.Logf("%d B JSON bomb refused in %v: %v; replica peak RSS %.1f MB", len(bomb), time.Since(start).Round(time.Millisecond), err, float64(hwm)/(1<<20))
	if hwm > 200<<20 {
		t.Errorf("replica peak RSS %d MB, want under 200 MB", hwm>>20)
	}
	if out, err := call([]byte("21")); err != nil || string(out) != "42" {
		t.Fatalf("call after the bomb: %q %v", out, err)
	}
}

func testCtx(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// TestAgentHoldsItsCap: a node agent started with -max-replicas-per-node 2
// runs at most two replica processes whatever it is assigned (here written
// straight into the store, as a controller that ignored the cap would);
// the others wait and start as slots free; deleted assignments stop at once.
func TestAgentHoldsItsCap(t *testing.T) {
	b := testutil.Broker(t)
	nc := testutil.Conn(t, b.ClientURL())
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	kv, err := store.Open(testCtx(t, 10*time.Second), js, store.Config{})
	if err != nil {
		t.Fatal(err)
	}
	agent := testutil.Start(t, nil, testutil.Build(t, "./internal/testprog"), "agent", "-nats", b.ClientURL(), "-creds", testutil.Creds(t, b.ClientURL(), "node-n1"), "-name", "n1", "-max-replicas-per-node", "2")
	testutil.Eventually(t, 20*time.Second, func() error {
		var n store.Node
		if _, err := store.Get(testCtx(t, 2*time.Second), kv.Nodes, "n1", &n); err != nil {
			return err
		}
		if n.MaxReplicas != 2 {
			return fmt.Errorf("node record publishes max_replicas %d, want 2", n.MaxReplicas)
		}
		return nil
	})
	var asgs []store.Assignment
	for i := range 4 {
		a := store.Assignment{
			Replica: fmt.Sprintf("r%d", i), Node: "n1", Deployment: "capped", Class: "Probe", InitArgs: []byte(`["c"]`),
			MaxOngoingRequests: 1, GracefulShutdownTimeoutS: 1, Desired: store.DesiredRun, Created: time.Now(),
			Creds: testutil.ReplicaCreds(t, b.ClientURL(), "capped"),
		}
		if _, err := store.Put(testCtx(t, 5*time.Second), kv.Assignments, a.Key(), a); err != nil {
			t.Fatal(err)
		}
		asgs = append(asgs, a)
	}
	children := func(want int) {
		t.Helper()
		testutil.Eventually(t, 20*time.Second, func() error {
			if n := len(testutil.ChildPIDs(agent.PID())); n != want {
				return fmt.Errorf("%d replica processes, want %d", n, want)
			}
			return nil
		})
	}
	children(2)
	// It stays at two: observe for a while (no condition to wait for).
	for range 10 {
		if n := len(testutil.ChildPIDs(agent.PID())); n > 2 {
			t.Fatalf("%d replica processes on a node capped at 2", n)
		}
		time.Sleep(100 * time.Millisecond)
	}
	running := func() map[string]bool {
		out := map[string]bool{}
		for _, a := range asgs {
			var st store.ReplicaState
			if _, err := store.Get(testCtx(t, 2*time.Second), kv.Replicas, wire.ReplicaKey("n1", a.Replica), &st); err == nil && st.State == client.ReplicaRunning {
				out[a.Replica] = true
			}
		}
		return out
	}
	first := running()
	// Deleting the running ones frees their slots: the waiting two start.
	for _, a := range asgs {
		if first[a.Replica] {
			if err := kv.Assignments.Delete(testCtx(t, 5*time.Second), a.Key()); err != nil {
				t.Fatal(err)
			}
		}
	}
	testutil.Eventually(t, 20*time.Second, func() error {
		now := running()
		for id := range now {
			if first[id] {
				return fmt.Errorf("deleted replica %s still running", id)
			}
		}
		if len(now) != 2 {
			return fmt.Errorf("running %v, want the two that waited", now)
		}
		return nil
	})
	children(2)
	for _, a := range asgs {
		_ = kv.Assignments.Delete(testCtx(t, 5*time.Second), a.Key())
	}
	children(0)
}
