package worker_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nuid"
	"github.com/natserve/natserve/client"
	"github.com/natserve/natserve/internal/testutil"
	"github.com/natserve/natserve/internal/wire"
	"github.com/natserve/natserve/worker"
)

// sendRaw sends a Counter call (sleeping ms) with ack-by, and returns the
// channel the inbox and the executions (fault.exec) arrive on, in order.
func sendRaw(t *testing.T, nc *nats.Conn, deployment string, ms int, ackBy time.Time) (<-chan *nats.Msg, string) {
	t.Helper()
	ch := make(chan *nats.Msg, 64)
	inbox := nats.NewInbox()
	for _, subj := range []string{inbox, execSubject} {
		sub, err := nc.ChanSubscribe(subj, ch)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = sub.Unsubscribe() })
	}
	args, _ := wire.MarshalValue([]any{ms})
	id := nuid.Next()
	msg := &nats.Msg{Subject: wire.DeploymentSubject(deployment), Reply: inbox, Data: args, Header: nats.Header{
		wire.HeaderProto: {wire.ProtoVersion}, wire.HeaderKind: {wire.KindCall}, wire.HeaderRequestID: {id},
		wire.HeaderTimeout: {wire.FormatTimeout(10 * time.Second)}, wire.HeaderAckBy: {wire.FormatAckBy(ackBy)},
	}}
	if err := nc.PublishMsg(msg); err != nil {
		t.Fatal(err)
	}
	return ch, id
}

func TestAcknowledgedBeforeTheCallRunsAndHeartbeats(t *testing.T) {
	s := newStack(t)
	r := s.replica(t, "ack-1", "Counter", ``, 2)
	ch, id := sendRaw(t, s.cl.Conn(), "ack-1", 700, time.Now().Add(5*time.Second))
	var seq []string
	timeout := time.After(10 * time.Second)
	for done := false; !done; {
		select {
		case m := <-ch:
			switch {
			case m.Subject == execSubject:
				if string(m.Data) == id {
					seq = append(seq, "exec")
				}
			case m.Header == nil && wire.IsAck(m.Data):
				rid, _, _ := wire.ParseAck(m.Data)
				if rid != r.id {
					t.Fatalf("acknowledged by %q, want %q", rid, r.id)
				}
				seq = append(seq, "ack")
			default:
				seq = append(seq, "reply")
				done = true
			}
		case <-timeout:
			t.Fatalf("no reply; saw %v", seq)
		}
	}
	t.Logf("inbox and executions in order: %v", seq)
	// The acknowledgment comes before the call runs; a 700 ms call gets
	// heartbeats (every 250 ms) before its reply.
	if len(seq) < 4 || seq[0] != "ack" || seq[1] != "exec" || seq[len(seq)-1] != "reply" || seq[2] != "ack" {
		t.Fatalf("got %v, want ack, exec, heartbeats (ack), reply", seq)
	}
}

func TestRequestPastItsAckByNeverRuns(t *testing.T) {
	s := newStack(t)
	s.replica(t, "ack-2", "Counter", ``, 2)
	ch, id := sendRaw(t, s.cl.Conn(), "ack-2", 0, time.Now().Add(-time.Millisecond))
	// A request sent after it proves the replica has read the first one.
	ch2, _ := sendRaw(t, s.cl.Conn(), "ack-2", 0, time.Now().Add(5*time.Second))
	got := false
	for !got {
		select {
		case m := <-ch2:
			got = m.Subject != execSubject && !wire.IsAck(m.Data)
		case <-time.After(10 * time.Second):
			t.Fatal("second request not answered")
		}
	}
	for {
		select {
		case m := <-ch:
			if m.Subject == execSubject && string(m.Data) == id {
				t.Fatal("a request past its ack-by time ran")
			}
			if m.Subject != execSubject {
				t.Fatalf("a request past its ack-by time was answered: %q %v", m.Data, m.Header)
			}
		default:
			return
		}
	}
}

func TestAcknowledgedThenKilledFailsWithReplicaDied(t *testing.T) {
	s := newStack(t)
	execs := make(chan string, 16)
	sub, err := s.cl.Conn().Subscribe(execSubject, func(m *nats.Msg) { execs <- string(m.Data) })
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	for _, tc := range []struct {
		name string
		// exitEvent: an exit event (as a node agent publishes) rather than
		// missing heartbeats tells the caller; its heartbeat timeout is
		// then longer than the test.
		exitEvent bool
	}{{"heartbeats stop", false}, {"exit event", true}} {
		t.Run(tc.name, func(t *testing.T) {
			r := s.replica(t, "ack-3", "Counter", ``, 2)
			hb := time.Second
			if tc.exitEvent {
				hb = time.Hour
			}
			cl := client.New(s.cl.Conn(), client.WithHeartbeatTimeout(hb))
			defer cl.Close()
			errc := make(chan error, 1)
			go func() {
				_, err := client.Call[int](testCtx(t, 30*time.Second), cl.Handle("ack-3"), 20000)
				errc <- err
			}()
			<-execs // it runs: acknowledged
			_ = r.Signal(syscall.SIGSTOP)
			defer r.Signal(syscall.SIGKILL)
			start := time.Now()
			if tc.exitEvent {
				b, _ := json.Marshal(wire.ReplicaExit{Replica: r.id, Deployment: "ack-3", Reason: "killed by signal 9"})
				if err := s.cl.Conn().Publish(wire.ReplicaExitSubject("n1"), b); err != nil {
					t.Fatal(err)
				}
			}
			select {
			case err := <-errc:
				t.Logf("failed %v after the stop: %v", time.Since(start).Round(time.Millisecond), err)
				if !errors.Is(err, client.ErrReplicaDied) {
					t.Fatalf("got %v, want ErrReplicaDied", err)
				}
				var ce *client.Error
				if !errors.As(err, &ce) || ce.HTTPStatus() != 502 || ce.Replica != r.id || !strings.Contains(ce.Message, r.id) {
					t.Fatalf("error %#v: want 502 naming replica %s", ce, r.id)
				}
			case <-time.After(20 * time.Second):
				t.Fatal("the call waited for its deadline")
			}
		})
	}
}

func TestIdempotentMethodResentWhenItsReplicaDies(t *testing.T) {
	s := newStack(t)
	spec := func(id string) []byte {
		b, _ := json.Marshal(worker.ReplicaSpec{Deployment: "ack-4", Class: "Counter", Replica: id, NATSURL: s.url,
			MaxOngoingRequests: 2, IdempotentMethods: []string{"Call"}, Creds: testutil.ReplicaCreds(t, s.url, "ack-4")})
		return b
	}
	execs := make(chan string, 16)
	sub, err := s.cl.Conn().Subscribe(execSubject, func(m *nats.Msg) { execs <- string(m.Data) })
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	victim := testutil.StartWith(t, "", spec("ra"), nil, s.bin, "replica")
	waitServing(t, s.cl.Conn(), "ra")
	errc := make(chan error, 1)
	go func() {
		_, err := client.Call[int](testCtx(t, 30*time.Second), s.cl.Handle("ack-4"), 1500)
		errc <- err
	}()
	<-execs
	testutil.StartWith(t, "", spec("rb"), nil, s.bin, "replica")
	waitServing(t, s.cl.Conn(), "rb")
	_ = victim.Signal(syscall.SIGKILL)
	select {
	case err := <-errc:
		if err != nil {
			t.Fatalf("idempotent call failed: %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("no answer")
	}
	if n := len(execs); n != 1 {
		t.Fatalf("%d more executions, want 1 (the resend)", n)
	}
}

func waitServing(t *testing.T, nc *nats.Conn, id string) {
	t.Helper()
	testutil.Eventually(t, 20*time.Second, func() error {
		_, err := nc.Request(wire.ReplicaSubject("ack-4", id, wire.VerbPing), nil, 200*time.Millisecond)
		return err
	})
}

// TestStoppedReplicaHoldsNothing: with one of two replicas SIGSTOPped,
// calls sent after the stop are not acknowledged by it and go to the other
// one: none waits for its deadline. The slowest is printed.
func TestStoppedReplicaHoldsNothing(t *testing.T) {
	s := newStack(t)
	a := s.replica(t, "ack-5", "Counter", ``, 5)
	s.replica(t, "ack-5", "Counter", ``, 5)
	h := s.cl.Handle("ack-5")
	for i := 0; i < 20; i++ { // both replicas have acknowledged calls
		if _, err := client.Call[int](testCtx(t, 5*time.Second), h, 0); err != nil {
			t.Fatal(err)
		}
	}
	_ = a.Signal(syscall.SIGSTOP)
	defer a.Signal(syscall.SIGKILL)
	testutil.Eventually(t, 5*time.Second, func() error { // the stop has taken effect
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", a.PID()))
		if err != nil {
			return err
		}
		if f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:])); len(f) == 0 || f[0] != "T" {
			return fmt.Errorf("replica state %v", f[:1])
		}
		return nil
	})
	type res struct {
		d   time.Duration
		err error
	}
	out := make(chan res, 200)
	for i := 0; i < 200; i++ {
		go func() {
			start := time.Now()
			_, err := client.Call[int](testCtx(t, 5*time.Second), h, 5)
			out <- res{time.Since(start), err}
		}()
		time.Sleep(2 * time.Millisecond)
	}
	var slowest time.Duration
	var lat []time.Duration
	for i := 0; i < 200; i++ {
		r := <-out
		if r.err != nil {
			t.Errorf("call after the stop failed: %v", r.err)
		}
		slowest = max(slowest, r.d)
		lat = append(lat, r.d)
	}
	slices.Sort(lat)
	t.Logf("200 calls after the stop: p50 %v p99 %v slowest %v (deadline 5s)", lat[100], lat[198], slowest)
	if slowest >= 5*time.Second {
		t.Fatalf("a call waited for its deadline")
	}
}

// TestUnconfirmedAcknowledgmentNeverRuns: a replica whose outbound frames
// reach the broker late (a TCP proxy holds everything the replica sends for
// longer than the ack timeout: its acknowledgment, its executions, its
// reply; as a starved replica, an unscheduled flusher or a reconnect buffer
// would) must not run a request it acknowledged, since the caller, seeing
// no acknowledgment in time, sends it to the other replica. Executions are
// counted at method entry: each request runs exactly once, every caller
// gets its answer, and the held replica counts the requests it did not run.
func TestUnconfirmedAcknowledgmentNeverRuns(t *testing.T) {
	s := newStack(t)
	p := newHoldProxy(t, strings.TrimPrefix(s.url, "nats://"))
	held := s.replicaAt(t, "nats://"+p.addr, "ack-6", "Counter", ``, 8)
	s.replica(t, "ack-6", "Counter", ``, 8)
	counts, st := heldCalls(t, s, p, "ack-6", held.id)
	for id, n := range counts {
		if n != 1 {
			t.Errorf("request %s ran %d times, want exactly once", id, n)
		}
	}
	if st.NotRun == 0 {
		t.Errorf("the held replica reports no request not run: none reached it (%+v)", st)
	}
}

// heldCalls makes heldCallsN calls with distinct request ids to deployment
// while p holds everything the replica held sends for longer than the ack
// timeout, asserts that every call is answered, and returns how many times
// each id ran (counted at method entry; every id is a key) and held's
// status afterwards.
func heldCalls(t *testing.T, s *stack, p *holdProxy, deployment, held string) (map[string]int, worker.ReplicaStatus) {
	t.Helper()
	execs := make(chan string, 256)
	sub, err := s.cl.Conn().Subscribe(execSubject, func(m *nats.Msg) { execs <- string(m.Data) })
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	if err := s.cl.Conn().Flush(); err != nil {
		t.Fatal(err)
	}
	hold := 4 * (wire.DefaultAckTimeout + wire.AckGrace)
	p.holdClient(hold)
	errs := make(chan error, heldCallsN)
	counts := map[string]int{}
	for i := 0; i < heldCallsN; i++ {
		id := nuid.Next()
		counts[id] = 0
		go func() {
			_, err := client.Call[int](client.WithRequestID(testCtx(t, 30*time.Second), id), s.cl.Handle(deployment), 0)
			errs <- err
		}()
	}
	for i := 0; i < heldCallsN; i++ {
		if err := <-errs; err != nil {
			t.Errorf("call failed: %v", err)
		}
	}
	// Everything the held replica sent reaches the broker before its answer
	// to a ping (one connection keeps its order); then the executions it
	// reported are here after a flush of ours.
	var st worker.ReplicaStatus
	testutil.Eventually(t, 20*time.Second, func() error {
		m, err := s.cl.Conn().Request(wire.ReplicaSubject(deployment, held, wire.VerbPing), nil, time.Second)
		if err != nil {
			return err
		}
		return json.Unmarshal(m.Data, &st)
	})
	// Our own marker comes after them on the same subscription.
	if err := s.cl.Conn().Publish(execSubject, []byte("end")); err != nil {
		t.Fatal(err)
	}
	for id := range execs {
		if id == "end" {
			break
		}
		if _, ok := counts[id]; ok {
			counts[id]++
		}
	}
	ran, twice := 0, 0
	for _, n := range counts {
		if n > 0 {
			ran++
		}
		if n > 1 {
			twice++
		}
	}
	t.Logf("replica frames held %v: %d requests ran %d distinct ids, %d more than once; the held replica did not run %d", hold, heldCallsN, ran, twice, st.NotRun)
	return counts, st
}

const heldCallsN = 16

// TestIdempotentSkipsConfirmation: a method declared idempotent runs as
// soon as it is acknowledged, without waiting for the broker's
// confirmation (running twice is what the declaration allows): behind the
// same frame-holding proxy as TestUnconfirmedAcknowledgmentNeverRuns, the
// held replica runs what reaches it and counts nothing as not run, the
// callers, seeing no acknowledgment in time, send those calls to the other
// replica too, and every caller gets its answer.
func TestIdempotentSkipsConfirmation(t *testing.T) {
	s := newStack(t)
	p := newHoldProxy(t, strings.TrimPrefix(s.url, "nats://"))
	spec := worker.ReplicaSpec{Deployment: "ack-8", Class: "Counter", MaxOngoingRequests: 8, IdempotentMethods: []string{"Call"}}
	s.replicaWith(t, spec)
	spec.NATSURL = "nats://" + p.addr
	held := s.replicaWith(t, spec)
	counts, st := heldCalls(t, s, p, "ack-8", held.id)
	twice, ran := 0, 0
	for _, n := range counts {
		if n > 0 {
			ran++
		}
		if n >= 2 {
			twice++
		}
	}
	if st.NotRun != 0 || twice == 0 || ran != heldCallsN {
		t.Fatalf("idempotent calls behind a held replica: %d not run (want 0: no confirmation), %d ran twice (want some), %d of %d ran", st.NotRun, twice, ran, heldCallsN)
	}
}

// TestAcknowledgmentsCoalescePerCaller: a caller whose call tokens carry
// wire.AckTokenMark gets the acknowledgments (and heartbeats) of calls
// admitted together as one message per confirmation round on its inbox's
// wire.AckBatchToken; each call is acknowledged once before it runs, then
// beats while it runs, and is answered on the same repeating subject, its
// token in the reply's payload (wire.ParseReply).
func TestAcknowledgmentsCoalescePerCaller(t *testing.T) {
	s := newStack(t)
	r := s.replica(t, "ack-7", "Counter", ``, 64)
	nc := s.cl.Conn()
	prefix := nats.NewInbox() + "."
	ch := make(chan *nats.Msg, 1024)
	sub, err := nc.ChanSubscribe(prefix+">", ch)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	const calls = 32
	args, _ := wire.MarshalValue([]any{600}) // long enough for two heartbeats
	for i := 0; i < calls; i++ {
		if err := nc.PublishMsg(&nats.Msg{Subject: wire.DeploymentSubject("ack-7"), Reply: fmt.Sprintf("%s-%d", prefix, i), Data: args, Header: nats.Header{
			wire.HeaderProto: {wire.ProtoVersion}, wire.HeaderKind: {wire.KindCall}, wire.HeaderRequestID: {nuid.Next()},
			wire.HeaderTimeout: {wire.FormatTimeout(20 * time.Second)}, wire.HeaderAckBy: {wire.FormatAckBy(time.Now().Add(10 * time.Second))},
		}}); err != nil {
			t.Fatal(err)
		}
	}
	acks := map[string]int{}    // token → acknowledgments and heartbeats
	replied := map[string]int{} // token → replies
	var batches, singles int
	for len(replied) < calls {
		select {
		case m := <-ch:
			token := m.Subject[len(prefix):]
			switch {
			case token == wire.AckBatchToken:
				if tok, data, ok := wire.ParseReply(m.Data); ok { // replies come on the repeating subject too
					if acks[string(tok)] < 2 {
						t.Fatalf("%s answered after %d acknowledgments and heartbeats, want the acknowledgment and at least one heartbeat first", tok, acks[string(tok)])
					}
					if m.Header != nil || len(data) == 0 {
						t.Fatalf("%s: reply %v % x", tok, m.Header, data)
					}
					replied[string(tok)]++
					continue
				}
				rid, _, toks, ok := wire.ParseAcks(m.Data)
				if !ok || string(rid) != r.id {
					t.Fatalf("coalesced acknowledgment % x", m.Data)
				}
				batches++
				for tok, rest := wire.NextAckToken(toks); len(tok) > 0; tok, rest = wire.NextAckToken(rest) {
					if replied[string(tok)] > 0 {
						t.Fatalf("%s acknowledged after its reply", tok)
					}
					acks[string(tok)]++
				}
			case m.Header == nil && wire.IsAck(m.Data):
				singles++
				acks[token]++
			default:
				if acks[token] < 2 {
					t.Fatalf("%s answered after %d acknowledgments and heartbeats, want the acknowledgment and at least one heartbeat first", token, acks[token])
				}
				t.Fatalf("%s: a reply on the call's own subject (%v % x), want it on %s", token, m.Header, m.Data, prefix+wire.AckBatchToken)
			}
		case <-time.After(20 * time.Second):
			t.Fatalf("%d of %d calls answered", len(replied), calls)
		}
	}
	t.Logf("%d calls: %d coalesced and %d single acknowledgment or heartbeat messages", calls, batches, singles)
	if batches == 0 || batches+singles >= 2*calls {
		t.Fatalf("%d coalesced and %d single messages for %d calls' acknowledgments and heartbeats: not coalesced", batches, singles, calls)
	}
}

// execSubject is where the Counter class reports each execution at method
// entry (a deployment subject: a replica may publish there).
var execSubject = wire.DeploymentSubject("fault-exec")

// TestRepliesOnRepeatingSubject: the client's calls (tokens with
// wire.AckTokenMark) are answered on their inbox's repeating subject, the
// token in the payload, and each of many concurrent calls gets its own
// reply: results, error replies (with their code, text and replica) and busy
// replies (the calls outnumber max_ongoing_requests).
// Nothing is answered on a call's own subject.
func TestRepliesOnRepeatingSubject(t *testing.T) {
	s := newStack(t)
	r := s.replica(t, "rep-co", "Probe", `["c"]`, 64)
	spy := testutil.Conn(t, s.url)
	ch := make(chan *nats.Msg, 4096)
	sub, err := spy.ChanSubscribe("_INBOX.>", ch)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	if err := spy.Flush(); err != nil {
		t.Fatal(err)
	}
	const calls = 256
	var wg sync.WaitGroup
	errs := make(chan error, calls)
	for i := 0; i < calls; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx := testCtx(t, 30*time.Second)
			if i%4 == 0 { // an error reply: headers travel with it
				_, err := client.Call[int](ctx, s.cl.Handle("rep-co").Method("Fail"), fmt.Sprintf("no %d", i))
				var ce *client.Error
				if !errors.As(err, &ce) || ce.Code != string(wire.CodeUser) || ce.Message != fmt.Sprintf("no %d", i) || ce.Replica != r.id {
					errs <- fmt.Errorf("Fail(no %d): %#v (%v), want user error %q from %s", i, ce, err, fmt.Sprintf("no %d", i), r.id)
				}
				return
			}
			got, err := client.Call[float64](ctx, s.cl.Handle("rep-co").Method("Add"), i, 0.25)
			if err != nil || got != float64(i)+0.25 {
				errs <- fmt.Errorf("Add(%d, 0.25) = %v, %v", i, got, err)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if err := spy.Flush(); err != nil {
		t.Fatal(err)
	}
	var coalesced, direct int
	tokens := map[string]bool{}
	for done := false; !done; {
		select {
		case m := <-ch:
			i := strings.LastIndexByte(m.Subject, '.')
			token := m.Subject[i+1:]
			switch {
			case token == wire.AckBatchToken:
				if tok, _, ok := wire.ParseReply(m.Data); ok {
					coalesced++
					tokens[string(tok)] = true
				}
			case strings.HasPrefix(token, "-") && (m.Header != nil || !wire.IsAck(m.Data)):
				direct++
			}
		default: // the spy flushed after every reply was in: it has them all
			done = true
		}
	}
	// Busy replies (64 at a time) are replies too: a call sent again has a
	// new token.
	t.Logf("%d calls: %d replies on the repeating subject (%d tokens), %d on a call's own subject", calls, coalesced, len(tokens), direct)
	if coalesced < calls || len(tokens) != coalesced || direct != 0 {
		t.Fatalf("%d calls: %d replies on the repeating subject for %d tokens, %d on a call's own subject; want at least %d, one per token, and 0", calls, coalesced, len(tokens), direct, calls)
	}
}

// TestBusyReplySaysSlots: a replica at max_ongoing_requests refuses a call
// with a busy reply that says how many slots it has (Natserve-Slots), which
// a caller's pacing of queued calls counts (client/pace.go).
func TestBusyReplySaysSlots(t *testing.T) {
	s := newStack(t)
	r := s.replica(t, "slots-1", "Counter", ``, 2)
	var ids []string
	var ch <-chan *nats.Msg
	for range 2 {
		var id string
		ch, id = sendRaw(t, s.cl.Conn(), "slots-1", 3000, time.Now().Add(5*time.Second))
		ids = append(ids, id)
	}
	// Both slots taken: the last channel sees both executions.
	ran := map[string]bool{}
	timeout := time.After(10 * time.Second)
	for len(ran) < 2 {
		select {
		case m := <-ch:
			if m.Subject == execSubject {
				ran[string(m.Data)] = true
			}
		case <-timeout:
			t.Fatalf("calls %v did not both start: %v", ids, ran)
		}
	}
	busy, _ := sendRaw(t, s.cl.Conn(), "slots-1", 0, time.Now().Add(5*time.Second))
	for {
		select {
		case m := <-busy:
			if m.Subject == execSubject || m.Header == nil {
				continue
			}
			if c, n, id := m.Header.Get(wire.HeaderCode), m.Header.Get(wire.HeaderSlots), m.Header.Get(wire.HeaderReplica); c != string(wire.CodeBusy) || n != "2" || id != r.id {
				t.Fatalf("third call: code %q, slots %q, replica %q; want busy, 2, %s", c, n, id, r.id)
			}
			return
		case <-timeout:
			t.Fatal("no busy reply to the third call")
		}
	}
}
