package deploy_test

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/natserve/natserve/client"
	"github.com/natserve/natserve/internal/composestack"
	"github.com/natserve/natserve/internal/e2e"
	"github.com/natserve/natserve/internal/testutil"
	"github.com/natserve/natserve/internal/wire"
)

// TestDurableNATSNodeStop is issue 21's "nothing lost" in docker compose:
// durable requests (Prefer: respond-async) submitted over HTTP while the
// NATS node leading the deployment's request stream is stopped and started
// again. Afterwards every id is succeeded, none was lost, and none ran
// again after its result was stored. Executions are counted from outside:
// the Tally class appends "<id> <unix ns>" to a file in its node's
// container before it runs, and the test copies both nodes' files out.
func TestDurableNATSNodeStop(t *testing.T) {
	const total = 300
	s := sharedStack(t)
	t0 := time.Now()
	cl, err := client.Connect(e2e.Ctx(10*time.Second), s.NATSURL(), client.WithTimeout(20*time.Second), client.WithCreds(s.Creds))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	const dep = "durable-tally"
	tally := fmt.Sprintf("/tmp/durable-tally-%d", time.Now().UnixNano())
	if _, err := cl.Deploy(e2e.Ctx(20*time.Second), client.DeploymentSpec{Name: dep, Class: "Tally", InitArgs: json.RawMessage(fmt.Sprintf("[%q]", tally)),
		NumReplicas: 2, MaxOngoingRequests: 8, GracefulShutdownTimeoutS: 2}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cl.Delete(e2e.Ctx(20*time.Second), dep) })
	if _, err := cl.WaitHealthy(e2e.Ctx(2*time.Minute), dep, nil); err != nil {
		t.Fatal(err)
	}
	js, err := jetstream.New(cl.Conn())
	if err != nil {
		t.Fatal(err)
	}
	// A deployment's request stream is made on its first stored request;
	// make it now, to know its leader before the stop.
	if err := cl.OpenRequestStream(e2e.Ctx(time.Minute), dep); err != nil {
		t.Fatal(err)
	}
	var leader string
	testutil.Eventually(t, time.Minute, func() error {
		if _, err := js.Consumer(e2e.Ctx(2*time.Second), wire.AsyncStream(dep), wire.AsyncConsumer); err != nil {
			return err
		}
		st, err := js.Stream(e2e.Ctx(2*time.Second), wire.AsyncStream(dep))
		if err != nil {
			return err
		}
		if st.CachedInfo().Cluster == nil || st.CachedInfo().Cluster.Leader == "" {
			return fmt.Errorf("stream %s has no leader", wire.AsyncStream(dep))
		}
		leader = st.CachedInfo().Cluster.Leader
		return nil
	})
	t.Logf("%s ready %v after the start; its stream's leader is %s", dep, time.Since(t0).Round(time.Millisecond), leader)

	// Submitters: each request has its own Idempotency-Key, so that a
	// submission cut off by the stop is sent again without storing it twice.
	ids := make([]string, total)
	var submitted, retried atomic.Int64
	next := make(chan int)
	var wg sync.WaitGroup
	hc := &http.Client{Timeout: 5 * time.Second}
	deadline := time.Now().Add(2 * time.Minute)
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				for time.Now().Before(deadline) {
					req, _ := http.NewRequest("POST", s.BaseURL()+"/"+dep+"?ms=20", nil)
					req.Header.Set("Prefer", "respond-async")
					req.Header.Set("Idempotency-Key", "compose-key-"+strconv.Itoa(i))
					resp, err := hc.Do(req)
					if err == nil {
						var st client.RequestStatus
						derr := json.NewDecoder(resp.Body).Decode(&st)
						resp.Body.Close()
						if resp.StatusCode == 202 && derr == nil {
							ids[i] = st.ID
							submitted.Add(1)
							break
						}
					}
					retried.Add(1)
					time.Sleep(100 * time.Millisecond)
				}
			}
		}()
	}
	var stopped, started time.Duration
	for i := 0; i < total; i++ {
		next <- i
		switch i {
		case total / 3:
			start := time.Now()
			if _, err := s.Compose(e2e.Ctx(time.Minute), "stop", "--timeout", "5", leader); err != nil {
				t.Fatal(err)
			}
			stopped = time.Since(t0)
			t.Logf("%s stopped after %d submissions (took %v)", leader, submitted.Load(), time.Since(start).Round(time.Millisecond))
		case 2 * total / 3:
			if _, err := s.Compose(e2e.Ctx(time.Minute), "start", leader); err != nil {
				t.Fatal(err)
			}
			started = time.Since(t0)
			t.Logf("%s started after %d submissions (%v down)", leader, submitted.Load(), (started - stopped).Round(time.Millisecond))
		}
	}
	close(next)
	wg.Wait()
	t.Logf("%d submitted %v after the start (%d submissions retried)", submitted.Load(), time.Since(t0).Round(time.Millisecond), retried.Load())
	if n := submitted.Load(); n != total {
		t.Fatalf("%d of %d requests were accepted", n, total)
	}
	seen := map[string]bool{}
	for _, id := range ids {
		if seen[id] {
			t.Fatalf("id %s given twice", id)
		}
		seen[id] = true
	}

	// Every request ends as succeeded.
	pending := append([]string(nil), ids...)
	testutil.Eventually(t, 2*time.Minute, func() error {
		var left []string
		for _, id := range pending {
			st, err := cl.Request(e2e.Ctx(5*time.Second), id)
			if err != nil || st.Status != wire.AsyncSucceeded {
				if err == nil && wire.AsyncTerminal(st.Status) {
					t.Fatalf("request %s ended %s", id, st.Status)
				}
				left = append(left, id)
			}
		}
		pending = left
		if len(left) > 0 {
			return fmt.Errorf("%d of %d requests not succeeded yet", len(left), total)
		}
		return nil
	})
	t.Logf("all %d succeeded %v after the start", total, time.Since(t0).Round(time.Millisecond))

	// When each result was stored: the results stream's first "done" event.
	stored := map[string]time.Time{}
	cons, err := js.OrderedConsumer(e2e.Ctx(10*time.Second), wire.AsyncResultsStream, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{wire.AsyncResultSubject(dep, "*")}})
	if err != nil {
		t.Fatal(err)
	}
	for {
		batch, err := cons.Fetch(1000, jetstream.FetchMaxWait(2*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		var last uint64
		for m := range batch.Messages() {
			n++
			md, _ := m.Metadata()
			last = md.NumPending
			_, id, _ := wire.AsyncResultDeployment(m.Subject())
			ev, err := wire.DecodeAsyncEvent(m.Data())
			if err == nil && ev.Kind == wire.AsyncEventDone {
				if _, ok := stored[id]; !ok {
					stored[id] = md.Timestamp
				}
			}
		}
		if n == 0 || last == 0 {
			break
		}
	}

	// Executions, from both nodes' tally files (the containers share the host's clock).
	execs := map[string][]time.Time{}
	for _, w := range []string{"worker1", "worker2"} {
		id, err := s.Container(e2e.Ctx(10*time.Second), w)
		if err != nil {
			t.Fatal(err)
		}
		local := filepath.Join(t.TempDir(), w)
		if out, err := composestack.Docker(e2e.Ctx(30*time.Second), "cp", id+":"+tally, local); err != nil {
			if strings.Contains(out, "No such") || strings.Contains(err.Error(), "No such") {
				continue // no replica of dep ran on this node
			}
			t.Fatal(err)
		}
		f, err := os.Open(local)
		if err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			id, ns, ok := strings.Cut(sc.Text(), " ")
			n, err := strconv.ParseInt(ns, 10, 64)
			if !ok || err != nil {
				t.Fatalf("%s: tally line %q", w, sc.Text())
			}
			execs[id] = append(execs[id], time.Unix(0, n))
		}
		f.Close()
	}
	redelivered, runs := 0, 0
	for _, id := range ids {
		ex := execs[id]
		runs += len(ex)
		if len(ex) == 0 {
			t.Errorf("request %s succeeded but never ran", id)
			continue
		}
		done, ok := stored[id]
		if !ok {
			t.Errorf("request %s: no stored result in the results stream", id)
			continue
		}
		for _, at := range ex {
			if at.After(done) {
				t.Errorf("request %s ran again at %v, after its result was stored at %v", id, at.Format(time.RFC3339Nano), done.Format(time.RFC3339Nano))
			}
		}
		if len(ex) > 1 {
			redelivered++
		}
	}
	t.Logf("%d requests, %d executions: %d ran once, %d were redelivered and ran again; none lost, none ran after its result was stored (%v in all)",
		total, runs, total-redelivered, redelivered, time.Since(t0).Round(time.Millisecond))
}
