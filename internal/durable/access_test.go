package durable_test

import (
	"encoding/json"
	"errors"
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

// violations collects the permissions violations the broker reports to a
// connection, by the subject they name.
type violations struct {
	mu   sync.Mutex
	subj map[string]bool
}

func (v *violations) handler(_ *nats.Conn, _ *nats.Subscription, err error) {
	if !errors.Is(err, nats.ErrPermissionViolation) {
		return
	}
	msg := err.Error()
	if i := strings.Index(msg, `"`); i >= 0 {
		if j := strings.LastIndex(msg, `"`); j > i {
			v.mu.Lock()
			v.subj[msg[i+1:j]] = true
			v.mu.Unlock()
		}
	}
}

func (v *violations) has(s string) bool {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.subj[s]
}

// TestRequestIDsAreCapabilities plays an attacker holding the client
// role's credentials (what every application has) against stored
// requests it did not submit: it must not list the records, nor read one
// without its id — not through the requests bucket (key listing, a
// consumer over its keys, direct gets with a wildcard, a subscription to
// its subjects), the request and results streams (info, listing, message
// gets, consumers, the replicas' consumer), the result object store, the
// requests service (no list operation; wildcards are not ids), the
// ingress (no listing over HTTP) or servectl (listing takes the admin
// credentials). With an id, the same identity reads, awaits and cancels
// the request.
func TestRequestIDsAreCapabilities(t *testing.T) {
	s := e2e.New(t)
	s.Controller("c1")
	s.Agent("n1")
	s.WaitNodes(1)
	base, _ := s.Ingress()
	s.Deploy(client.DeploymentSpec{Name: "p", Class: "Probe", InitArgs: json.RawMessage(`["t"]`), MaxOngoingRequests: 2})
	// A victim's request, done, and one that stays queued behind a long one.
	victim := s.Client.Handle("p").Method("Add")
	var id string
	testutil.Eventually(t, 20*time.Second, func() (err error) { // the controller makes the stream
		id, err = victim.Submit(e2e.Ctx(10*time.Second), 20, 22)
		return err
	})
	if _, err := s.Client.Wait(e2e.Ctx(30*time.Second), id); err != nil {
		t.Fatal(err)
	}
	running, err := s.Client.Handle("p").Method("Work").Submit(e2e.Ctx(10*time.Second), 20000)
	if err != nil {
		t.Fatal(err)
	}
	queued, err := s.Client.Handle("p").Method("Work").Submit(e2e.Ctx(10*time.Second), 20000)
	if err != nil {
		t.Fatal(err)
	}

	v := &violations{subj: map[string]bool{}}
	nc := testutil.Conn(t, s.URL, append(testutil.CredsOptions(t, s.URL, wire.RoleClient), nats.ErrorHandler(v.handler))...)
	inbox := nc.NewRespInbox()
	replies, err := nc.SubscribeSync(inbox)
	if err != nil {
		t.Fatal(err)
	}
	kvs := "$KV." + wire.BucketRequests + "."
	reqStream, resStream, objStream := wire.AsyncStream("p"), wire.AsyncResultsStream, "OBJ_"+wire.ObjectResults
	consumer := func(stream, filter string) []byte {
		b, _ := json.Marshal(map[string]any{"stream_name": stream, "config": map[string]any{"filter_subject": filter, "deliver_policy": "all", "ack_policy": "none", "deliver_subject": inbox}})
		return b
	}
	pubProbes := []struct {
		subject string
		body    []byte
	}{
		{"$JS.API.STREAM.NAMES", nil},
		{"$JS.API.STREAM.LIST", nil},
		{"$JS.API.STREAM.INFO.KV_" + wire.BucketRequests, []byte(`{"subjects_filter":">"}`)},
		{"$JS.API.CONSUMER.CREATE.KV_" + wire.BucketRequests + ".x." + kvs + "req.*", consumer("KV_"+wire.BucketRequests, kvs+"req.*")},
		{"$JS.API.CONSUMER.CREATE.KV_" + wire.BucketRequests + ".x." + kvs + ">", consumer("KV_"+wire.BucketRequests, kvs+">")},
		{"$JS.API.CONSUMER.CREATE.KV_" + wire.BucketRequests, consumer("KV_"+wire.BucketRequests, "")},
		{"$JS.API.DIRECT.GET.KV_" + wire.BucketRequests + "." + kvs + "req.*", nil},
		{"$JS.API.DIRECT.GET.KV_" + wire.BucketRequests + "." + kvs + "idem.>", nil},
		{"$JS.API.DIRECT.GET.KV_" + wire.BucketRequests + "." + kvs + wire.AsyncRecordKey(id), nil}, // even with the id: only the service reads
		{"$JS.API.DIRECT.GET.KV_" + wire.BucketRequests, []byte(`{"seq":1}`)},
		{"$JS.API.STREAM.MSG.GET.KV_" + wire.BucketRequests, []byte(`{"seq":1}`)},
		{"$JS.API.STREAM.INFO." + reqStream, []byte(`{"subjects_filter":">"}`)},
		{"$JS.API.STREAM.MSG.GET." + reqStream, []byte(`{"seq":1}`)},
		{"$JS.API.STREAM.MSG.DELETE." + reqStream, []byte(`{"seq":3}`)},
		{"$JS.API.CONSUMER.NAMES." + reqStream, nil},
		{"$JS.API.CONSUMER.LIST." + reqStream, nil},
		{"$JS.API.CONSUMER.INFO." + reqStream + "." + wire.AsyncConsumer, nil},
		{"$JS.API.CONSUMER.MSG.NEXT." + reqStream + "." + wire.AsyncConsumer, []byte(`{"batch":10}`)},
		{"$JS.API.CONSUMER.CREATE." + reqStream, consumer(reqStream, "")},
		{"$JS.API.STREAM.INFO." + resStream, []byte(`{"subjects_filter":">"}`)},
		{"$JS.API.STREAM.MSG.GET." + resStream, []byte(`{"seq":1}`)},
		{"$JS.API.DIRECT.GET." + resStream + "." + wire.AsyncResultSubject("p", "*"), nil},
		{"$JS.API.CONSUMER.CREATE." + resStream, consumer(resStream, "")},
		{"$JS.API.STREAM.INFO." + objStream, nil},
		{"$JS.API.CONSUMER.CREATE." + objStream + ".x.$O." + wire.ObjectResults + ".M.>", consumer(objStream, "$O."+wire.ObjectResults+".M.>")},
		{kvs + "req.*", nil}, // a write (a rollup over the records, a forged record)
		{kvs + wire.AsyncRecordKey(id), []byte(`{"status":"failed"}`)},
		{wire.AsyncCancelSubject("p"), []byte(queued)},
	}
	for _, p := range pubProbes {
		if err := nc.PublishRequest(p.subject, inbox, p.body); err != nil {
			t.Fatal(err)
		}
	}
	subProbes := []string{kvs + ">", "$O.>", "natserve.ares.>", wire.AsyncResultSubject("p", "*"), "natserve.async.>", wire.AsyncCancelSubject("p"), "$JS.>", ">", "natserve.areq"}
	for _, subj := range subProbes {
		sub, err := nc.SubscribeSync(subj)
		if err == nil {
			defer func() { _ = sub.Unsubscribe() }()
		}
	}
	_ = nc.Flush()
	var missing []string
	testutil.Eventually(t, 5*time.Second, func() error {
		missing = missing[:0]
		for _, p := range pubProbes {
			if !v.has(p.subject) {
				missing = append(missing, "publish "+p.subject)
			}
		}
		for _, subj := range subProbes {
			if !v.has(subj) {
				missing = append(missing, "subscribe "+subj)
			}
		}
		if len(missing) > 0 {
			return errors.New(strings.Join(missing, "; "))
		}
		return nil
	})
	if m, err := replies.NextMsg(300 * time.Millisecond); err == nil {
		t.Fatalf("a denied probe was answered on %s: %s", m.Subject, m.Data)
	}

	// Only identities allowed to call deployments submit or ask the
	// service: a node agent's credentials may not.
	nv := &violations{subj: map[string]bool{}}
	node := testutil.Conn(t, s.URL, append(testutil.CredsOptions(t, s.URL, "node-n1"), nats.ErrorHandler(nv.handler))...)
	for _, subj := range []string{wire.AsyncSubject("p"), wire.AsyncServiceSubject} {
		_ = node.PublishRequest(subj, node.NewRespInbox(), []byte(`{"op":"get","id":"`+id+`"}`))
	}
	_ = node.Flush()
	testutil.Eventually(t, 5*time.Second, func() error {
		for _, subj := range []string{wire.AsyncSubject("p"), wire.AsyncServiceSubject} {
			if !nv.has(subj) {
				return errors.New("node credentials not refused on " + subj)
			}
		}
		return nil
	})

	// The requests service answers by id only.
	for _, body := range []string{`{"op":"list"}`, `{"op":"get","id":"*"}`, `{"op":"get","id":">"}`, `{"op":"wait","id":"*","wait_ms":1}`,
		`{"op":"chunk","id":"*"}`, `{"op":"get","id":"` + strings.Repeat("a", 32) + `"}`, `{"op":"cancel","id":"req.*"}`,
		`{"op":"claim","deployment":"p","idem_hash":"*","id":"` + strings.Repeat("b", 32) + `"}`, `not json`} {
		m, err := nc.Request(wire.AsyncServiceSubject, []byte(body), 5*time.Second)
		if err != nil {
			t.Fatalf("service %s: %v", body, err)
		}
		var rep wire.AsyncServiceReply
		if err := json.Unmarshal(m.Data, &rep); err != nil || rep.Code == "" || rep.Record != nil || strings.Contains(string(m.Data), id) {
			t.Errorf("service %s answered %s, want an error and no record", body, m.Data)
		}
	}

	// A forged record pointing at others' stream sequences, cancelled, takes
	// nothing out of the stream.
	for seq := uint64(1); seq <= 4; seq++ {
		forged := wire.AsyncRecord{ID: wire.NewAsyncID(), Deployment: "p", Status: wire.AsyncQueued, Kind: wire.KindCall, Seq: seq, Submitted: time.Now()}
		b, _ := json.Marshal(&wire.AsyncServiceRequest{Op: wire.AsyncOpRecord, Record: &forged})
		if _, err := nc.Request(wire.AsyncServiceSubject, b, 5*time.Second); err != nil {
			t.Fatal(err)
		}
		b, _ = json.Marshal(&wire.AsyncServiceRequest{Op: wire.AsyncOpCancel, ID: forged.ID})
		if _, err := nc.Request(wire.AsyncServiceSubject, b, 5*time.Second); err != nil {
			t.Fatal(err)
		}
	}
	// A work queue: the running and the queued request are its messages.
	if n := streamMsgs(t, s, reqStream); n != 2 {
		t.Fatalf("after forged cancels the request stream holds %d messages, want 2 (the running and the queued request)", n)
	}

	// With the id, the client role reads, awaits and cancels; it cannot list.
	cl := client.New(nc, client.WithTimeout(20*time.Second))
	st, err := cl.Request(e2e.Ctx(10*time.Second), id)
	if err != nil || st.Status != wire.AsyncSucceeded || string(st.Result) != "42" {
		t.Fatalf("client role reading its id: %+v %v", st, err)
	}
	if st, err := cl.Wait(e2e.Ctx(10*time.Second), id); err != nil || st.Status != wire.AsyncSucceeded {
		t.Fatalf("client role waiting: %+v %v", st, err)
	}
	for _, id := range []string{queued, running} {
		if st, err := cl.Cancel(e2e.Ctx(10*time.Second), id); err != nil || st.Status != wire.AsyncCancelled {
			t.Fatalf("client role cancelling: %+v %v", st, err)
		}
	}
	if mine, err := cl.Handle("p").Method("Add").Submit(e2e.Ctx(10*time.Second), 1, 2); err != nil {
		t.Fatalf("client role submitting: %v", err)
	} else if st, err := cl.Wait(e2e.Ctx(30*time.Second), mine); err != nil || string(st.Result) != "3" {
		t.Fatalf("client role awaiting its own: %+v %v", st, err)
	}
	if _, err := cl.ListRequests(e2e.Ctx(10*time.Second), "", 10); !errors.Is(err, client.ErrListNeedsAdmin) {
		t.Fatalf("client role listing: %v, want ErrListNeedsAdmin", err)
	}
	if rs, err := s.Client.ListRequests(e2e.Ctx(10*time.Second), "p", 10); err != nil || len(rs) < 3 {
		t.Fatalf("admin listing: %d, %v", len(rs), err)
	}

	// No listing over HTTP.
	for _, path := range []string{"/-/requests", "/-/requests/"} {
		code, body, _ := e2e.HTTP(t, "GET", base+path, "")
		if code != 404 || strings.Contains(body, id) || !strings.Contains(body, "not listed") {
			t.Errorf("GET %s: %d %s, want 404 and no list", path, code, body)
		}
	}

	// servectl: listing takes the admin credentials, in one line.
	ctl := testutil.Build(t, "./cmd/servectl")
	out, err := exec.Command(ctl, "requests", "list", "--server", s.URL, "--creds", testutil.Creds(t, s.URL, wire.RoleClient)).CombinedOutput()
	if err == nil || strings.Contains(string(out), id) || !strings.Contains(string(out), "admin credentials") || strings.Count(strings.TrimSpace(string(out)), "\n") != 0 {
		t.Errorf("servectl requests list as a client: %v: %q, want one line asking for the admin credentials", err, out)
	}
	out, err = exec.Command(ctl, "requests", "get", id, "--server", s.URL, "--creds", testutil.Creds(t, s.URL, wire.RoleClient)).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "succeeded") {
		t.Errorf("servectl requests get ID as a client: %v: %s", err, out)
	}

	// The stock nats CLI, where installed, as the same attacker.
	natsCLI, err := exec.LookPath("nats")
	if err != nil {
		t.Log("the nats CLI is not installed: its probes are skipped")
		return
	}
	creds := testutil.Creds(t, s.URL, wire.RoleClient)
	var cli sync.WaitGroup
	defer cli.Wait()
	for _, args := range [][]string{
		{"kv", "ls", wire.BucketRequests},
		{"kv", "get", wire.BucketRequests, wire.AsyncRecordKey(id)},
		{"kv", "history", wire.BucketRequests, wire.AsyncRecordKey(id)},
		{"stream", "ls"},
		{"stream", "info", reqStream},
		{"stream", "get", reqStream, "1"},
		{"consumer", "ls", reqStream},
		{"object", "ls", wire.ObjectResults},
		{"sub", kvs + ">", "--count", "1"},
		{"sub", "natserve.ares.>", "--count", "1"},
	} {
		cli.Add(1)
		go func() {
			defer cli.Done()
			out, _ := exec.Command(natsCLI, append([]string{"--server", s.URL, "--creds", creds, "--inbox-prefix", wire.InboxPrefix(wire.RoleClient), "--timeout", "2s"}, args...)...).CombinedOutput()
			if strings.Contains(string(out), id) || strings.Contains(string(out), queued) || !strings.Contains(strings.ToLower(string(out)), "permission") && !strings.Contains(string(out), "timeout") && !strings.Contains(string(out), "deadline") {
				t.Errorf("nats %s as a client: %s, want a refusal and no id", strings.Join(args, " "), out)
			}
		}()
	}
	out, _ = exec.Command(natsCLI, "--server", s.URL, "--creds", creds, "--inbox-prefix", wire.InboxPrefix(wire.RoleClient), "--timeout", "2s", "req", wire.AsyncServiceSubject, `{"op":"list"}`).CombinedOutput()
	if !strings.Contains(string(out), "unknown operation") || strings.Contains(string(out), id) {
		t.Errorf("nats req %s list: %s", wire.AsyncServiceSubject, out)
	}
}

// streamMsgs is the number of messages in stream (as the admin sees it).
func streamMsgs(t *testing.T, s *e2e.Stack, stream string) uint64 {
	t.Helper()
	js, err := jetstream.New(s.Client.Conn())
	if err != nil {
		t.Fatal(err)
	}
	st, err := js.Stream(e2e.Ctx(5*time.Second), stream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(e2e.Ctx(5 * time.Second))
	if err != nil {
		t.Fatal(err)
	}
	return info.State.Msgs
}
