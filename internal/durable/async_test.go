package durable_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/natserve/natserve/client"
	"github.com/natserve/natserve/internal/e2e"
	"github.com/natserve/natserve/internal/testutil"
	"github.com/natserve/natserve/internal/wire"
)

func TestMain(m *testing.M) { testutil.Main(m) }

// publicKeys are the keys of GET /-/requests/<id>, all always present.
var publicKeys = []string{"id", "deployment", "status", "attempts", "submitted_at", "started_at", "finished_at", "error", "result"}

func decodeStatus(t *testing.T, body string) (*client.RequestStatus, map[string]json.RawMessage) {
	t.Helper()
	var raw map[string]json.RawMessage
	if err := json.Unmarshal([]byte(body), &raw); err != nil {
		t.Fatalf("status is not JSON: %v: %s", err, body)
	}
	if len(raw) != len(publicKeys) {
		t.Errorf("status has keys %v, want exactly %v", keys(raw), publicKeys)
	}
	for _, k := range publicKeys {
		if _, ok := raw[k]; !ok {
			t.Errorf("status lacks %q: %s", k, body)
		}
	}
	var st client.RequestStatus
	if err := json.Unmarshal([]byte(body), &st); err != nil {
		t.Fatal(err)
	}
	return &st, raw
}

func keys(m map[string]json.RawMessage) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

// pollHTTP polls GET /-/requests/<id> until the status is want.
func pollHTTP(t *testing.T, base, id, want string) *client.RequestStatus {
	t.Helper()
	var st *client.RequestStatus
	testutil.Eventually(t, 30*time.Second, func() error {
		code, body, _ := e2e.HTTP(t, "GET", base+"/-/requests/"+id, "")
		if code != 200 {
			return fmt.Errorf("GET: %d %s", code, body)
		}
		st, _ = decodeStatus(t, body)
		if st.Status != want {
			return fmt.Errorf("status %s, want %s", st.Status, want)
		}
		return nil
	})
	return st
}

func submitHTTP(t *testing.T, method, url, body string, hdr ...string) (string, int, http.Header, string) {
	t.Helper()
	code, resp, h := e2e.HTTP(t, method, url, body, append([]string{"Prefer", "respond-async"}, hdr...)...)
	if code != 202 {
		return "", code, h, resp
	}
	st, _ := decodeStatus(t, resp)
	if loc := h.Get("Location"); loc != "/-/requests/"+st.ID {
		t.Errorf("Location %q, want /-/requests/%s", loc, st.ID)
	}
	if st.Status != wire.AsyncQueued && st.Status != wire.AsyncRunning && st.Status != wire.AsyncSucceeded {
		t.Errorf("202 body status %q", st.Status)
	}
	return st.ID, code, h, resp
}

func TestStoredRequests(t *testing.T) {
	s := e2e.New(t)
	s.Controller("c1", "-async-retention", "90m")
	s.Agent("n1")
	s.WaitNodes(1)
	base, _ := s.Ingress()
	s.Deploy(client.DeploymentSpec{Name: "p", Class: "Probe", InitArgs: json.RawMessage(`["t1"]`), MaxAttempts: 2, MaxOngoingRequests: 2})
	hooks := make(chan []byte, 4)
	hook := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		hooks <- b
	}))
	t.Cleanup(hook.Close)
	s.Deploy(client.DeploymentSpec{Name: "cnt", Class: "Counter", NumReplicas: 1, CallbackURLs: []string{hook.URL + "/hooks/"}})
	s.Deploy(client.DeploymentSpec{Name: "capped", Class: "Probe", InitArgs: json.RawMessage(`["c"]`), MaxOngoingRequests: 2, MaxStoredRequests: 2, GracefulShutdownTimeoutS: 1})
	s.Deploy(client.DeploymentSpec{Name: "st", Class: "Stream"})
	nc := s.Client.Conn()
	execs := map[string]int{}
	var mu sync.Mutex
	if _, err := nc.Subscribe(wire.DeploymentSubject("fault-exec"), func(m *nats.Msg) { mu.Lock(); execs[string(m.Data)]++; mu.Unlock() }); err != nil {
		t.Fatal(err)
	}
	// A deployment has no request stream until its first stored request
	// (each subtest's first submission makes its deployment's; the
	// replicas, up since before, start pulling on the consumer's creation
	// advisory, well within the subtests' 30 s waits: their fallback
	// lookup is every 10 minutes).
	js, _ := jetstream.New(nc)
	for _, d := range []string{"p", "cnt", "capped", "st"} {
		if _, err := js.Stream(e2e.Ctx(5*time.Second), wire.AsyncStream(d)); !errorsIs(err, jetstream.ErrStreamNotFound) {
			t.Fatalf("%s has a request stream before its first stored request (%v)", d, err)
		}
	}
	if _, err := s.Client.Handle("nosuch").Submit(e2e.Ctx(10 * time.Second)); !errorsIs(err, client.ErrNoAsync) || !strings.Contains(err.Error(), "no such deployment") {
		t.Errorf("submit to a deployment that does not exist: %v, want ErrNoAsync (no such deployment)", err)
	}
	if _, code, _, body := submitHTTP(t, "POST", base+"/nosuch", "x"); code != 404 {
		t.Errorf("HTTP submit to no route: %d %s, want 404", code, body)
	}
	if _, err := js.Stream(e2e.Ctx(5*time.Second), wire.AsyncStream("nosuch")); !errorsIs(err, jetstream.ErrStreamNotFound) {
		t.Errorf("a submission to no deployment made a stream (%v)", err)
	}

	t.Run("http", func(t *testing.T) {
		id, code, _, body := submitHTTP(t, "POST", base+"/p/x?q=1", "hello")
		if code != 202 {
			t.Fatalf("submit: %d %s", code, body)
		}
		if len(id) < 26 {
			t.Fatalf("id %q is shorter than 128 bits in base32", id)
		}
		st := pollHTTP(t, base, id, wire.AsyncSucceeded)
		var res wire.HTTPResult
		if err := json.Unmarshal(st.Result, &res); err != nil {
			t.Fatalf("result %s: %v", st.Result, err)
		}
		if res.Status != 200 || res.Base64 || !strings.Contains(res.Body, "tag=t1") || !strings.Contains(res.Body, "body=hello") || res.Headers["Content-Type"] == "" {
			t.Errorf("result %+v", res)
		}
		if st.Attempts != 1 || st.SubmittedAt == nil || st.StartedAt == nil || st.FinishedAt == nil || st.Error != nil || st.Deployment != "p" {
			t.Errorf("status %+v", st)
		}
		if code, _, _ := e2e.HTTP(t, "GET", base+"/-/requests/"+strings.Repeat("a", 32), ""); code != 404 {
			t.Errorf("unknown id: %d, want 404", code)
		}
		if code, _, _ := e2e.HTTP(t, "GET", base+"/-/requests/../../x", ""); code != 404 {
			t.Errorf("malformed id: %d, want 404", code)
		}
	})

	t.Run("handle", func(t *testing.T) {
		h := s.Client.Handle("p").Method("Add")
		id, err := h.Submit(e2e.Ctx(10*time.Second), 2, 3)
		if err != nil {
			t.Fatal(err)
		}
		st, err := s.Client.Wait(e2e.Ctx(30*time.Second), id)
		if err != nil {
			t.Fatal(err)
		}
		var sum float64
		if err := st.Decode(&sum); err != nil || sum != 5 {
			t.Fatalf("result %s (%v), want 5", st.Result, err)
		}
	})

	t.Run("max_attempts", func(t *testing.T) {
		id, err := s.Client.Handle("p").Method("Fail").Submit(e2e.Ctx(10*time.Second), "boom")
		if err != nil {
			t.Fatal(err)
		}
		st, err := s.Client.Wait(e2e.Ctx(30*time.Second), id)
		if err != nil {
			t.Fatal(err)
		}
		if st.Status != wire.AsyncFailed || st.Attempts != 2 || st.Error == nil || !strings.Contains(*st.Error, "boom") {
			t.Fatalf("status %+v (error %v), want failed after 2 attempts with boom", st, deref(st.Error))
		}
	})

	t.Run("idempotency", func(t *testing.T) {
		id1, code, _, body := submitHTTP(t, "GET", base+"/cnt?ms=1", "", "Idempotency-Key", "k-1")
		if code != 202 {
			t.Fatalf("%d %s", code, body)
		}
		pollHTTP(t, base, id1, wire.AsyncSucceeded)
		id2, _, _, _ := submitHTTP(t, "GET", base+"/cnt?ms=1", "", "Idempotency-Key", "k-1")
		id3, err := s.Client.Handle("cnt").Submit(client.WithIdempotencyKey(e2e.Ctx(10*time.Second), "k-1"), 1)
		if err != nil {
			t.Fatal(err)
		}
		if id2 != id1 || id3 != id1 {
			t.Fatalf("ids %s %s %s: want the same", id1, id2, id3)
		}
		id4, _, _, _ := submitHTTP(t, "GET", base+"/cnt?ms=1", "", "Idempotency-Key", "k-2")
		pollHTTP(t, base, id4, wire.AsyncSucceeded)
		_ = nc.Flush()
		mu.Lock()
		defer mu.Unlock()
		if execs[id1] != 1 || execs[id4] != 1 {
			t.Fatalf("executions %d and %d, want 1 each", execs[id1], execs[id4])
		}
	})

	t.Run("callback", func(t *testing.T) {
		sub, err := nc.SubscribeSync("natserve.cb.test")
		if err != nil {
			t.Fatal(err)
		}
		_ = nc.Flush()
		id, code, _, body := submitHTTP(t, "GET", base+"/cnt?ms=1", "", "Natserve-Callback", "natserve.cb.test")
		if code != 202 {
			t.Fatalf("%d %s", code, body)
		}
		m, err := sub.NextMsg(30 * time.Second)
		if err != nil {
			t.Fatal(err)
		}
		st, _ := decodeStatus(t, string(m.Data))
		if st.ID != id || st.Status != wire.AsyncSucceeded {
			t.Fatalf("callback %s", m.Data)
		}
		// A URL on the deployment's callback_urls gets a POST.
		id, code, _, body = submitHTTP(t, "GET", base+"/cnt?ms=1", "", "Natserve-Callback", hook.URL+"/hooks/1")
		if code != 202 {
			t.Fatalf("%d %s", code, body)
		}
		select {
		case b := <-hooks:
			if st, _ := decodeStatus(t, string(b)); st.ID != id || st.Status != wire.AsyncSucceeded {
				t.Fatalf("URL callback %s", b)
			}
		case <-time.After(30 * time.Second):
			t.Fatal("no POST to the callback URL")
		}
		// One that is not on it is refused.
		if _, code, _, body := submitHTTP(t, "GET", base+"/cnt?ms=1", "", "Natserve-Callback", hook.URL+"/elsewhere"); code != 400 {
			t.Fatalf("callback URL off the allow-list: %d %s, want 400", code, body)
		}
	})

	t.Run("cancel", func(t *testing.T) {
		h := s.Client.Handle("p").Method("Work")
		// max_ongoing_requests 2: one stored request runs at a time.
		running, err := h.Submit(e2e.Ctx(10*time.Second), 20000)
		if err != nil {
			t.Fatal(err)
		}
		queued, err := h.Submit(e2e.Ctx(10*time.Second), 20000)
		if err != nil {
			t.Fatal(err)
		}
		pollHTTP(t, base, running, wire.AsyncRunning)
		code, body, _ := e2e.HTTP(t, "DELETE", base+"/-/requests/"+queued, "")
		if st, _ := decodeStatus(t, body); code != 200 || st.Status != wire.AsyncCancelled {
			t.Fatalf("cancel queued: %d %s", code, body)
		}
		start := time.Now()
		code, body, _ = e2e.HTTP(t, "DELETE", base+"/-/requests/"+running, "")
		if st, _ := decodeStatus(t, body); code != 200 || st.Status != wire.AsyncCancelled {
			t.Fatalf("cancel running: %d %s", code, body)
		}
		// The running call's context ends: the slot frees long before 20 s.
		id, err := s.Client.Handle("p").Method("Add").Submit(e2e.Ctx(10*time.Second), 1, 1)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.Client.Wait(e2e.Ctx(15*time.Second), id); err != nil {
			t.Fatalf("after cancelling, the next stored request did not run: %v", err)
		}
		t.Logf("next stored request ran %v after the cancel", time.Since(start).Round(time.Millisecond))
		for _, id := range []string{queued, running} {
			if st, err := s.Client.Request(e2e.Ctx(5*time.Second), id); err != nil || st.Status != wire.AsyncCancelled {
				t.Fatalf("%s: %+v %v, want cancelled to stay", id, st, err)
			}
		}
	})

	t.Run("share", func(t *testing.T) {
		// max_ongoing_requests 4: stored requests take at most 2 slots at
		// once (batched pulls fill both), synchronous calls keep the others.
		s.Deploy(client.DeploymentSpec{Name: "share", Class: "Probe", InitArgs: json.RawMessage(`["s"]`), MaxOngoingRequests: 4})
		h := s.Client.Handle("share").Method("Work")
		var ids []string
		for i := 0; i < 10; i++ {
			id, err := h.Submit(e2e.Ctx(10*time.Second), 300)
			if err != nil {
				t.Fatal(err)
			}
			ids = append(ids, id)
		}
		pollHTTP(t, base, ids[0], wire.AsyncRunning)
		for i := 0; i < 5; i++ { // two slots stay free for calls
			if _, err := client.Call[int](e2e.Ctx(5*time.Second), s.Client.Handle("share").Method("PID")); err != nil {
				t.Fatalf("a synchronous call while stored requests run: %v", err)
			}
		}
		for _, id := range ids {
			if st, err := s.Client.Wait(e2e.Ctx(60*time.Second), id); err != nil || st.Status != wire.AsyncSucceeded || st.Attempts != 1 {
				t.Fatalf("%s: %+v %v", id, st, err)
			}
		}
		var stats struct {
			MaxSeen int `json:"max_seen"`
			Calls   int `json:"calls"`
		}
		if err := s.Client.Handle("share").Method("MaxSeen").Call(e2e.Ctx(5*time.Second), &stats); err != nil {
			t.Fatal(err)
		}
		if stats.MaxSeen != 2 || stats.Calls != 10 {
			t.Fatalf("stored requests ran %d at once (want the share, 2) and %d times (want 10)", stats.MaxSeen, stats.Calls)
		}
	})

	t.Run("graph refuses", func(t *testing.T) {
		if _, err := s.Client.DeployGraph(e2e.Ctx(10*time.Second), client.GraphSpec{Name: "g1", Output: "a", Nodes: []client.GraphNode{
			{Name: "a", Call: "double", Args: []json.RawMessage{json.RawMessage(`"$input"`)}},
		}}); err != nil {
			t.Fatalf("deploying a graph: %v", err)
		}
		testutil.Eventually(t, 10*time.Second, func() error {
			code, body, _ := e2e.HTTP(t, "POST", base+"/g1", "1", "Prefer", "respond-async")
			if code != 400 || !strings.Contains(body, "respond-async") {
				return fmt.Errorf("%d %s", code, body)
			}
			return nil
		})
	})

	t.Run("streaming refuses", func(t *testing.T) {
		id, err := s.Client.Handle("st").Submit(e2e.Ctx(10*time.Second), 3)
		if err != nil {
			t.Fatal(err)
		}
		st, err := s.Client.Wait(e2e.Ctx(30*time.Second), id)
		if err != nil || st.Status != wire.AsyncFailed || st.Attempts != 1 || !strings.Contains(deref(st.Error), "cannot take a stream") {
			t.Fatalf("%+v (error %s) %v, want failed at once: a stream cannot be stored", st, deref(st.Error), err)
		}
	})

	t.Run("backlog cap and delete", func(t *testing.T) {
		// One runs (the replica's stored share is 1), one waits: the
		// backlog is full at 2.
		var ids []string
		for i := 0; i < 2; i++ {
			id, err := s.Client.Handle("capped").Method("Work").Submit(e2e.Ctx(10*time.Second), 60000)
			if err != nil {
				t.Fatalf("submission %d: %v", i, err)
			}
			ids = append(ids, id)
		}
		_, code, h, body := submitHTTP(t, "GET", base+"/capped", "")
		if code != 429 || h.Get("Retry-After") == "" {
			t.Fatalf("over the cap: %d %q %s, want 429 with Retry-After", code, h.Get("Retry-After"), body)
		}
		if _, err := s.Client.Handle("capped").Submit(e2e.Ctx(10 * time.Second)); !errorsIs(err, client.ErrBacklogFull) {
			t.Fatalf("handle over the cap: %v, want ErrBacklogFull", err)
		}
		if err := s.Client.Delete(e2e.Ctx(10*time.Second), "capped"); err != nil {
			t.Fatal(err)
		}
		for _, id := range ids {
			st := pollHTTP(t, base, id, wire.AsyncFailed)
			if st.Error == nil || !strings.Contains(*st.Error, "deleted") {
				t.Errorf("%s: error %v, want deleted", id, deref(st.Error))
			}
		}
	})

	t.Run("wake from zero", func(t *testing.T) {
		// Scaled to zero: the spec applies (not HEALTHY with no replica to
		// wait for); the first stored request makes its stream and wakes it.
		spec := client.DeploymentSpec{Name: "zero", Class: "Counter", AutoscalingConfig: &client.AutoscalingConfig{
			MinReplicas: e2e.Ptr(0), InitialReplicas: e2e.Ptr(0), MaxReplicas: 1, DownscaleToZeroDelayS: e2e.Ptr(600.0)}}
		if _, err := s.Client.Deploy(e2e.Ctx(10*time.Second), spec); err != nil {
			t.Fatal(err)
		}
		id, err := s.Client.Handle("zero").Submit(e2e.Ctx(10*time.Second), 1)
		if err != nil {
			t.Fatal(err)
		}
		st, err := s.Client.Wait(e2e.Ctx(40*time.Second), id)
		if err != nil || st.Status != wire.AsyncSucceeded {
			t.Fatalf("%+v %v, want succeeded after waking", st, err)
		}
	})

	t.Run("servectl", func(t *testing.T) {
		bin := testutil.Build(t, "./cmd/servectl")
		ctl := func(args ...string) (string, error) {
			out, err := exec.Command(bin, append(args, "--server", s.URL, "--creds", testutil.Creds(t, s.URL, "admin"))...).CombinedOutput()
			return string(out), err
		}
		id, err := s.Client.Handle("p").Method("Add").Submit(e2e.Ctx(10*time.Second), 40, 2)
		if err != nil {
			t.Fatal(err)
		}
		out, err := ctl("requests", "get", id, "-wait", "-o", "json")
		if err != nil {
			t.Fatalf("get: %v: %s", err, out)
		}
		if st, _ := decodeStatus(t, out); st.Status != wire.AsyncSucceeded || string(st.Result) != "42" {
			t.Fatalf("get: %s", out)
		}
		out, err = ctl("requests", "list", "-deployment", "p")
		if err != nil || !strings.Contains(out, id) || !strings.Contains(out, "succeeded") {
			t.Fatalf("list: %v: %s", err, out)
		}
		queued, err := s.Client.Handle("p").Method("Work").Submit(e2e.Ctx(10*time.Second), 20000)
		if err != nil {
			t.Fatal(err)
		}
		out, err = ctl("requests", "cancel", queued)
		if err != nil || !strings.Contains(out, "cancelled") {
			t.Fatalf("cancel: %v: %s", err, out)
		}
		if out, err := ctl("requests", "get", "nonsense"); err == nil || strings.Count(strings.TrimSpace(out), "\n") != 0 {
			t.Fatalf("get of a bad id: %v: %q, want one line and a failure", err, out)
		}
	})

	t.Run("retention", func(t *testing.T) {
		js, _ := jetstream.New(nc)
		kv, err := js.KeyValue(e2e.Ctx(5*time.Second), wire.BucketRequests)
		if err != nil {
			t.Fatal(err)
		}
		st, err := kv.Status(e2e.Ctx(5 * time.Second))
		if err != nil {
			t.Fatal(err)
		}
		if st.TTL() != 90*time.Minute {
			t.Fatalf("records kept %v, want the -async-retention 90m", st.TTL())
		}
	})
}

func deref(s *string) string {
	if s == nil {
		return "<nil>"
	}
	return *s
}

func errorsIs(err, target error) bool {
	for err != nil {
		if err == target {
			return true
		}
		u, ok := err.(interface{ Unwrap() error })
		if !ok {
			return false
		}
		err = u.Unwrap()
	}
	return false
}

var _ = context.Background
