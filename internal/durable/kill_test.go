package durable_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/natserve/natserve/client"
	"github.com/natserve/natserve/internal/e2e"
	"github.com/natserve/natserve/internal/testutil"
	"github.com/natserve/natserve/internal/wire"
)

// upProc starts natserve up on port with data dir and waits for its HTTP port.
func upProc(t *testing.T, bin, data string, natsPort int) *testutil.Proc {
	t.Helper()
	addr := fmt.Sprintf("127.0.0.1:%d", e2e.FreePort(t))
	p := testutil.Start(t, nil, bin, "up", "-data", data, "-nats-port", strconv.Itoa(natsPort), "-addr", addr, "-metrics=false", "-log-level", "warn")
	testutil.Eventually(t, 30*time.Second, func() error {
		if p.Exited() {
			t.Fatalf("natserve up exited:\n%s", p.Output())
		}
		r, err := http.Get("http://" + addr + "/-/healthz")
		if err != nil {
			return err
		}
		r.Body.Close()
		return nil
	})
	return p
}

// TestNothingLost submits 1,000 stored requests over HTTP while it kills
// -9 the ingress, a replica, the node agent, the controller and natserve
// up itself (the broker), restarting each; afterwards every request has
// succeeded, none ran again after its result was stored, and those that
// ran more than once were redelivered. Executions are counted from outside
// (the Tally class appends to a file).
func TestNothingLost(t *testing.T) {
	const total = 1000
	t0 := time.Now()
	natserve := testutil.Build(t, "./cmd/natserve")
	data := t.TempDir()
	port := e2e.FreePort(t)
	up := upProc(t, natserve, data, port)
	url := fmt.Sprintf("nats://127.0.0.1:%d", port)
	testutil.UseAuth(t, url, filepath.Join(data, "auth")) // natserve up's credentials
	s := e2e.NewOn(t, url, nil, nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond))
	ctl := s.Controller("c2")
	s.Agent("n1")
	s.WaitNodes(2)
	base, ing := s.Ingress()
	var cur atomic.Pointer[string]
	cur.Store(&base)
	tally := filepath.Join(t.TempDir(), "tally")
	s.Deploy(client.DeploymentSpec{Name: "tally", Class: "Tally", InitArgs: json.RawMessage(fmt.Sprintf("[%q]", tally)),
		NumReplicas: 2, MaxOngoingRequests: 8, GracefulShutdownTimeoutS: 2,
		// Five kills can each end a delivery of the same request (its
		// replica, the agent, natserve up…): with the default of 3 attempts
		// such a request rightly ends failed. Nothing-lost is about
		// redelivery, so allow more attempts than there are kills.
		MaxAttempts: 10})
	js, err := jetstream.New(s.Client.Conn())
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Client.OpenRequestStream(e2e.Ctx(time.Minute), "tally"); err != nil { // made on the first stored request otherwise
		t.Fatal(err)
	}
	testutil.Eventually(t, 20*time.Second, func() error {
		_, err := js.Consumer(e2e.Ctx(2*time.Second), wire.AsyncStream("tally"), wire.AsyncConsumer)
		return err
	})

	t.Logf("stack up in %v", time.Since(t0).Round(time.Millisecond))
	// Submitters: each request has its own Idempotency-Key, so that a
	// submission cut off by a kill is sent again without storing it twice.
	ids := make([]string, total)
	var submitted atomic.Int64
	next := make(chan int)
	var wg sync.WaitGroup
	hc := &http.Client{Timeout: 5 * time.Second}
	deadline := time.Now().Add(90 * time.Second)
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				for time.Now().Before(deadline) {
					req, _ := http.NewRequest("POST", *cur.Load()+"/tally?ms=50", nil)
					req.Header.Set("Prefer", "respond-async")
					req.Header.Set("Idempotency-Key", "key-"+strconv.Itoa(i))
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
					time.Sleep(50 * time.Millisecond)
				}
			}
		}()
	}
	kills := []struct {
		at   int64
		what string
		do   func()
	}{
		{100, "ingress", func() {
			_ = ing.Signal(syscall.SIGKILL)
			_, _ = ing.Wait(10 * time.Second)
			b, p := s.Ingress()
			cur.Store(&b)
			ing = p
		}},
		{250, "a replica", func() {
			for pid := range s.PIDs("tally") {
				_ = syscall.Kill(pid, syscall.SIGKILL)
				break
			}
		}},
		{400, "the node agent", func() {
			s.KillAgentOnly("n1")
			s.Agent("n1")
		}},
		{550, "the controller", func() {
			_ = ctl.Signal(syscall.SIGKILL)
			_, _ = ctl.Wait(10 * time.Second)
			ctl = s.Controller("c2")
		}},
		{700, "natserve up", func() {
			_ = up.Signal(syscall.SIGKILL)
			_, _ = up.Wait(10 * time.Second)
			up = upProc(t, natserve, data, port)
		}},
	}
	go func() {
		for i := 0; i < total; i++ {
			next <- i
			for len(kills) > 0 && int64(i) >= kills[0].at {
				k := kills[0]
				kills = kills[1:]
				start := time.Now()
				k.do()
				t.Logf("kill -9 %s after %d submissions (back in %v)", k.what, submitted.Load(), time.Since(start).Round(time.Millisecond))
			}
		}
		close(next)
	}()
	wg.Wait()
	t.Logf("%d submitted %v after the start", submitted.Load(), time.Since(t0).Round(time.Millisecond))
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
	testutil.Eventually(t, 60*time.Second, func() error {
		var left []string
		for _, id := range pending {
			st, err := s.Client.Request(e2e.Ctx(5*time.Second), id)
			if err != nil || st.Status != wire.AsyncSucceeded {
				if err == nil && wire.AsyncTerminal(st.Status) {
					t.Fatalf("request %s ended %s: %v", id, st.Status, deref(st.Error))
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

	t.Logf("all succeeded %v after the start", time.Since(t0).Round(time.Millisecond))

	// When each result was stored: the results stream's first "done" event.
	stored := map[string]time.Time{}
	cons, err := js.OrderedConsumer(e2e.Ctx(10*time.Second), wire.AsyncResultsStream, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{wire.AsyncResultSubject("tally", "*")}})
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

	// Executions, from the tally file.
	execs := map[string][]time.Time{}
	f, err := os.Open(tally)
	if err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		id, ns, ok := strings.Cut(sc.Text(), " ")
		n, err := strconv.ParseInt(ns, 10, 64)
		if !ok || err != nil {
			t.Fatalf("tally line %q", sc.Text())
		}
		execs[id] = append(execs[id], time.Unix(0, n))
	}
	f.Close()
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
	t.Logf("%d requests, %d executions: %d ran once, %d were redelivered after a kill and ran again; none lost, none ran after its result was stored",
		total, runs, total-redelivered, redelivered)
	_ = context.Background
}
