package worker

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/natserve/natserve/client"
	"github.com/natserve/natserve/internal/wire"
)

// Stored (durable) requests. A replica pulls them from its deployment's
// request stream (wire.AsyncStream) through the one durable consumer the
// replicas share, and runs them through the same serve path as requests
// that arrive on the queue group: serve sees a message without a reply
// subject, runs under the request's own (cancellable) context and hands
// its reply to storedReply instead of publishing it.
//
// Share: stored requests never take more than half of the slots
// (max_ongoing_requests/2, at least one), and only free ones, so that
// synchronous traffic always keeps the other half. A replica fetches a
// stored request only while fewer than that share run, then waits for a
// free slot like any request.
//
// Each attempt publishes "started" (core NATS; the results stream keeps
// it), runs, then publishes its outcome with a JetStream acknowledgment
// before the request message is acknowledged: a result is stored before
// the request leaves the stream. A replica that dies mid-attempt never
// acknowledges; the message comes back after the consumer's AckWait (the
// controller's storedAckWait), to any replica of the deployment. A delivery
// whose result is already stored (the replica died between the two
// acknowledgments, or a broker killed -9 lost the acknowledgment and the
// delivery count with it) is acknowledged without running again.
const (
	// storedProgress is the interval of in-progress acknowledgments.
	storedProgress = 3 * time.Second
	// storedFetchMax is how long an idle replica's pull request waits at
	// the server, and storedFetchBeat the server's idle heartbeat on it
	// (under half of storedFetchMax, as nats.go requires). An idle replica
	// sends nothing but this pull: after one that expired with nothing it
	// pulls again without a consumer lookup or a no-wait pull first. So it
	// costs the broker, per storedFetchMax, the pull, its expiry status and
	// one heartbeat per storedFetchBeat: 6 messages per 10 min, at 1,000
	// idle replicas ~10 a second (bench/cmd/pullcost; 2 min pulls with a
	// lookup and a no-wait pull each time, heartbeat 50 s: 83; 5 s pulls
	// before those: 200+).
	//
	// What ends a waiting pull at once, so that a stored request does not
	// wait for the heartbeat: a reconnect (the pull was lost with the old
	// connection: Run's reconnect handler calls repull); a deleted consumer;
	// a replicated consumer's leader change (the new leader answers the
	// pulls whose registration reached it with a 409); and that consumer's
	// leader-elected advisory (wire.AsyncLeaderSubject), for a pull whose
	// registration had not been replicated when the leader went. The
	// heartbeat is left to find what none of these says, within
	// 2 × storedFetchBeat: an R1 consumer in a cluster whose server is
	// killed and comes back (no status, and the broker sends no advisory
	// for an R1 consumer; clusters run -kv-replicas 3). The durable tests
	// (internal/durable/idle_test.go) time each case.
	storedFetchMax  = 10 * time.Minute
	storedFetchBeat = 2 * time.Minute
	// storedRefresh is how often a replica that keeps pulling looks its
	// consumer up again (max_attempts may change); an idle one reads it
	// when a long pull that waited longer brings a request.
	storedRefresh = time.Minute
	// storedAbsentRecheck is how often a replica whose deployment has no
	// request stream yet looks for it again, should it miss the consumer's
	// creation advisory and no reconnect follow (in a cluster, a
	// subscription still spreading when the consumer is made elsewhere).
	storedAbsentRecheck = storedFetchMax
	// storedPublishFor bounds the retries of storing a result while the
	// broker is unreachable; the request is redelivered after that.
	storedPublishFor = 2 * time.Minute
	// storedCheckFor bounds the retries of looking for a stored result.
	storedCheckFor = 30 * time.Second
)

// stored is a replica's bookkeeping of stored requests.
type stored struct {
	mu        sync.Mutex                // guards calls, byID, cancelled, results
	calls     map[*nats.Msg]*storedCall // running, by their synthetic message
	byID      map[string]*storedCall    // running, by request id
	cancelled map[string]time.Time      // ids cancelled recently, when
	running   chan struct{}             // one token per stored request held (the share)
	results   jetstream.Stream          // the results stream, once looked up

	genMu     sync.Mutex // guards gen, genCancel, genParent (fetchCtx)
	gen       context.Context
	genCancel context.CancelFunc
	genParent context.Context
}

type storedCall struct {
	ctx    context.Context
	cancel context.CancelFunc
	h      nats.Header // the reply: set by storedReply
	data   []byte
	done   bool
}

// storedReply keeps the reply of a stored request.
func (r *Replica) storedReply(m *nats.Msg, h nats.Header, data []byte) {
	r.stored.mu.Lock()
	defer r.stored.mu.Unlock()
	if c := r.stored.calls[m]; c != nil {
		c.h, c.data, c.done = h, data, true
	}
}

func (r *Replica) onCancel(m *nats.Msg) {
	id := string(m.Data)
	if !wire.ValidAsyncID(id) {
		return
	}
	r.stored.mu.Lock()
	defer r.stored.mu.Unlock()
	now := time.Now()
	for k, t := range r.stored.cancelled {
		if now.Sub(t) > 10*time.Minute {
			delete(r.stored.cancelled, k)
		}
	}
	r.stored.cancelled[id] = now
	if c := r.stored.byID[id]; c != nil {
		c.cancel()
	}
}

func (r *Replica) wasCancelled(id string) bool {
	r.stored.mu.Lock()
	defer r.stored.mu.Unlock()
	_, ok := r.stored.cancelled[id]
	return ok
}

// fetchCtx returns the context of the next fetch round: ctx, ended by the
// next reconnect or leader-elected advisory as well (repull).
func (s *stored) fetchCtx(ctx context.Context) context.Context {
	s.genMu.Lock()
	defer s.genMu.Unlock()
	if s.gen == nil || s.gen.Err() != nil || s.genParent != ctx {
		s.gen, s.genCancel = context.WithCancel(ctx)
		s.genParent = ctx
	}
	return s.gen
}

// repull ends the fetch round under way (see fetchCtx): its pull request
// may be gone at the server, so the replica looks the consumer up again
// and pulls anew.
func (s *stored) repull() {
	s.genMu.Lock()
	defer s.genMu.Unlock()
	if s.genCancel != nil {
		s.genCancel()
	}
}

// reconnected: a pull request waiting at the old server is gone.
func (s *stored) reconnected() { s.repull() }

// errRepull ends pullStored when a reconnect or the consumer's
// leader-elected advisory ended its round (see repull).
var errRepull = errors.New("pulling again: reconnected, or the consumer elected a leader")

// runStored pulls and runs stored requests until ctx ends (Stop or the
// end of Run); the requests it started finish (they are in r.inflight).
func (r *Replica) runStored(ctx context.Context) {
	share := max(1, cap(r.sem)/2)
	r.stored.calls, r.stored.byID, r.stored.cancelled = map[*nats.Msg]*storedCall{}, map[string]*storedCall{}, map[string]time.Time{}
	r.stored.running = make(chan struct{}, share)
	sub, err := r.nc.Subscribe(wire.AsyncCancelSubject(r.spec.Deployment), r.onCancel)
	if err != nil {
		r.log.Warn("subscribing to cancels failed; stored requests are not taken", "err", err)
		return
	}
	defer func() { _ = sub.Unsubscribe() }()
	// A clustered broker announces each leader a replicated consumer
	// elects; the long pull waiting at the former leader may be gone without
	// a status (the 409 the new leader sends to the pulls it knows of misses
	// one whose registration had not been replicated yet). Costs nothing at
	// idle: the broker publishes it only on an election.
	lsub, err := r.nc.Subscribe(wire.AsyncLeaderSubject(r.spec.Deployment), func(*nats.Msg) {
		r.log.Debug("stored requests' consumer elected a leader; pulling again")
		r.stored.repull()
	})
	if err != nil {
		r.log.Warn("subscribing to the stored requests' leader advisories failed; a lost pull is found by its heartbeat", "err", err)
	} else {
		defer func() { _ = lsub.Unsubscribe() }()
	}
	// The stream and consumer are made on the deployment's first stored
	// request; a replica that finds none waits for the broker's
	// announcement of the consumer instead of looking again and again.
	created := make(chan struct{}, 1)
	csub, err := r.nc.Subscribe(wire.AsyncConsumerCreatedSubject(r.spec.Deployment), func(*nats.Msg) {
		select {
		case created <- struct{}{}:
		default:
		}
	})
	if err != nil {
		r.log.Warn("subscribing to the stored requests' consumer creation failed; looking for it every "+storedAbsentRecheck.String(), "err", err)
	} else {
		defer func() { _ = csub.Unsubscribe() }()
	}
	js, err := jetstream.New(r.nc)
	if err != nil {
		return
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	for ctx.Err() == nil {
		round := r.stored.fetchCtx(ctx) // ended by a reconnect
		cons, err := js.Consumer(ctx, wire.AsyncStream(r.spec.Deployment), wire.AsyncConsumer)
		if errors.Is(err, jetstream.ErrConsumerNotFound) || errors.Is(err, jetstream.ErrStreamNotFound) {
			// None yet: wait for its creation (or a reconnect, which may
			// have lost the announcement; or, should both be missed, the
			// slow recheck).
			t := time.NewTimer(storedAbsentRecheck)
			select {
			case <-ctx.Done():
			case <-created:
			case <-round.Done():
			case <-t.C:
			}
			t.Stop()
			continue
		}
		if err != nil {
			// The broker is away or busy.
			select {
			case <-ctx.Done():
			case <-time.After(time.Second):
			}
			continue
		}
		if err := r.pullStored(ctx, js, cons, &wg); err != nil && ctx.Err() == nil {
			// After a reconnect or an election, the pause also lets the new
			// leader take its pull subject before the next pull reaches it.
			r.log.Debug("pulling stored requests", "err", err)
			select {
			case <-ctx.Done():
			case <-time.After(time.Second):
			}
		}
	}
}

// consumerMaxAttempts reads the deployment's max_attempts from the consumer's
// metadata (the controller keeps it there).
func consumerMaxAttempts(info *jetstream.ConsumerInfo) int {
	if info != nil {
		if n, err := strconv.Atoi(info.Config.Metadata[wire.AsyncMetaMaxAttempts]); err == nil && n > 0 {
			return n
		}
	}
	return client.DefaultMaxAttempts
}

// pullStored fetches while the share has room; it returns on a fetch
// error (the consumer is looked up again) or when ctx ends.
//
// One pull asks for what is stored now (no wait), up to as many messages
// as there are free tokens in the share and free slots in the replica (at
// least one: a replica whose slots synchronous traffic holds still takes
// one stored request, which waits for a slot with in-progress
// acknowledgments, as before), so a backlog drains at a batch per round
// trip instead of one message per slot per round trip. Only when nothing
// is stored does the replica wait, in one long pull for one message: a
// long pull sized to the slots free when it started could hand a replica
// that has since become busy several requests it cannot run while
// another replica idles. The tokens a pull reserved and got no message
// for are given back when the pull ends. A request gives its token back when its method returns (its
// slot is free), not after its result is stored and acknowledged, so the
// next pull overlaps with those round trips.
//
// An idle replica sends only its long pulls: a long pull that ended with
// nothing means nothing was stored meanwhile, so the next round skips the
// no-wait pull and the consumer lookup (max_attempts is read again when a
// long pull that waited more than storedRefresh brings a request).
func (r *Replica) pullStored(ctx context.Context, js jetstream.JetStream, cons jetstream.Consumer, wg *sync.WaitGroup) error {
	attempts := consumerMaxAttempts(cons.CachedInfo())
	refresh := time.Now().Add(storedRefresh) // max_attempts may change
	idle := false                            // the last long pull ended with nothing
	for ctx.Err() == nil && time.Now().Before(refresh) {
		select {
		case r.stored.running <- struct{}{}:
		case <-ctx.Done():
			return nil
		}
		round := r.stored.fetchCtx(ctx) // ended by a reconnect or an election from now on
		n := 1
		for free := cap(r.sem) - len(r.sem); !idle && n < free; n++ {
			select {
			case r.stored.running <- struct{}{}:
				continue
			default:
			}
			break
		}
		run := func(batch jetstream.MessageBatch, since time.Time) int {
			got := 0
			for msg := range batch.Messages() {
				if got == 0 && time.Since(since) > storedRefresh {
					// The first request after a long wait: max_attempts as it is now.
					ictx, cancel := context.WithTimeout(ctx, 2*time.Second)
					if info, err := cons.Info(ictx); err == nil {
						attempts = consumerMaxAttempts(info)
					}
					cancel()
				}
				got++
				wg.Add(1)
				go func() {
					defer wg.Done()
					var once sync.Once
					release := func() { once.Do(func() { <-r.stored.running }) }
					defer release()
					r.runStoredMsg(ctx, js, msg, attempts, release)
				}()
			}
			return got
		}
		// What is stored now, up to n, without waiting: the slots counted
		// are free now. Skipped after a long pull that found nothing.
		got := 0
		var err error
		if !idle {
			var batch jetstream.MessageBatch
			batch, err = cons.FetchNoWait(n)
			if err == nil {
				got = run(batch, time.Now())
				err = batch.Error()
			}
		}
		idle = false
		if got == 0 && ctx.Err() == nil && round.Err() == nil {
			// Nothing waiting: one long pull for one request (the free
			// slots may be taken by the time one arrives; the request then
			// waits for a slot, kept alive by in-progress acknowledgments).
			for ; n > 1; n-- {
				<-r.stored.running
			}
			start := time.Now()
			fctx, cancel := context.WithTimeout(round, storedFetchMax)
			batch, ferr := cons.Fetch(1, jetstream.FetchContext(fctx), jetstream.FetchHeartbeat(storedFetchBeat))
			if ferr == nil {
				got = run(batch, start)
				ferr = batch.Error()
			}
			cancel()
			err = ferr
			if got == 0 && (err == nil || errors.Is(err, context.DeadlineExceeded) || errors.Is(err, nats.ErrTimeout)) && round.Err() == nil {
				// Expired with nothing: the consumer is as it was.
				idle, err = true, nil
				refresh = time.Now().Add(storedRefresh)
			}
		}
		for i := got; i < n; i++ {
			<-r.stored.running
		}
		if ctx.Err() != nil {
			return nil
		}
		if round.Err() != nil && got == 0 {
			return errRepull
		}
		if got == 0 && err != nil && !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, nats.ErrTimeout) {
			return err
		}
	}
	return nil
}

// runStoredMsg runs one delivery of a stored request.
//
// release gives the request's token in the share back: it is called once
// the method has returned (and by the caller in any case).
func (r *Replica) runStoredMsg(ctx context.Context, js jetstream.JetStream, msg jetstream.Msg, maxAttempts int, release func()) {
	md, err := msg.Metadata()
	if err != nil {
		_ = msg.Term()
		return
	}
	attempt := int(md.NumDelivered)
	id := msg.Headers().Get(wire.HeaderRequestID)
	if !wire.ValidAsyncID(id) {
		r.log.Warn("stored request without a valid id dropped", "seq", md.Sequence.Stream)
		_ = msg.Term()
		return
	}
	if r.wasCancelled(id) {
		_ = msg.Ack()
		return
	}
	base := wire.AsyncEvent{Attempt: attempt, Replica: r.spec.Replica, RequestKind: msg.Headers().Get(wire.HeaderKind), MethodName: msg.Headers().Get(wire.HeaderMethod), Callback: msg.Headers().Get(wire.HeaderCallback)}
	if t, err := time.Parse(time.RFC3339Nano, msg.Headers().Get(wire.HeaderSubmitted)); err == nil {
		base.Submitted = t
	}
	// Every delivery, not only redeliveries, looks for a stored result
	// first: a broker killed -9 may lose the latest acknowledgments and
	// the delivery counts with them, so a request that ran may come back
	// as a first delivery.
	switch done, err := r.resultStored(ctx, js, id); {
	case err != nil:
		r.log.Warn("cannot tell whether a stored request ran; it is left for later", "request_id", id, "err", err)
		return // not acknowledged: redelivered after the ack wait
	case done:
		_ = msg.Ack()
		return
	}
	if attempt > maxAttempts {
		ev := base
		ev.Kind, ev.At, ev.Code = wire.AsyncEventFailed, time.Now().UTC(), wire.CodeInternal
		ev.Error = fmt.Sprintf("gave up after %d attempts: the replica running it stopped each time", maxAttempts)
		if r.publishEvent(ctx, js, id, &ev) {
			_ = msg.Ack()
		}
		return
	}

	// Keep the delivery alive while it waits for a slot and runs.
	keep := make(chan struct{})
	var kwg sync.WaitGroup
	kwg.Add(1)
	go func() {
		defer kwg.Done()
		t := time.NewTicker(storedProgress)
		defer t.Stop()
		for {
			select {
			case <-keep:
				return
			case <-t.C:
				_ = msg.InProgress()
			}
		}
	}()
	defer func() { close(keep); kwg.Wait() }()

	select {
	case r.sem <- struct{}{}:
		r.admitted()
	case <-ctx.Done(): // stopping before it started: another replica takes it
		return
	}
	r.inflight.Add(1)
	cctx, cancel := context.WithCancel(context.Background())
	m := &nats.Msg{Subject: wire.DeploymentSubject(r.spec.Deployment), Header: nats.Header{}, Data: msg.Data()}
	for k, v := range msg.Headers() {
		if strings.HasPrefix(k, "Natserve-") {
			m.Header[k] = v
		}
	}
	call := &storedCall{ctx: cctx, cancel: cancel}
	r.stored.mu.Lock()
	r.stored.calls[m], r.stored.byID[id] = call, call
	_, cancelled := r.stored.cancelled[id]
	r.stored.mu.Unlock()
	if cancelled {
		cancel()
	}
	ev := base
	ev.Kind, ev.At = wire.AsyncEventStarted, time.Now().UTC()
	if b, err := json.Marshal(&ev); err == nil {
		_ = r.nc.Publish(wire.AsyncResultSubject(r.spec.Deployment, id), b)
	}

	var rm wire.RequestMeta // stored requests keep the header form (wire.RequestMeta)
	merr := readMeta(m, &rm)
	if r.metrics == nil {
		r.serve(cctx, m, &rm, merr, nil, nil)
	} else {
		var oc outcome
		start := time.Now()
		r.serve(cctx, m, &rm, merr, &oc, nil)
		r.metrics.observe(&oc, time.Since(start))
	}

	r.stored.mu.Lock()
	delete(r.stored.calls, m)
	delete(r.stored.byID, id)
	r.stored.mu.Unlock()
	cancelled = cctx.Err() != nil
	cancel()
	<-r.sem
	r.inflight.Done()
	release()

	out := r.storedOutcome(base, call, attempt, maxAttempts, cancelled)
	if !r.publishEvent(ctx, js, id, out) {
		return // not stored: redelivered, and run again
	}
	if out.Kind == wire.AsyncEventRetry {
		_ = msg.NakWithDelay(retryDelay(attempt))
		return
	}
	actx, acancel := context.WithTimeout(context.Background(), 5*time.Second)
	_ = msg.DoubleAck(actx)
	acancel()
}

func retryDelay(attempt int) time.Duration {
	return min(time.Duration(attempt)*200*time.Millisecond, 5*time.Second)
}

// storedOutcome turns a call's reply into its event.
func (r *Replica) storedOutcome(base wire.AsyncEvent, call *storedCall, attempt, maxAttempts int, cancelled bool) *wire.AsyncEvent {
	ev := base
	ev.At = time.Now().UTC()
	code := wire.Code(call.h.Get(wire.HeaderCode))
	if !call.done {
		code, call.h = wire.CodeInternal, nats.Header{wire.HeaderError: {"the method gave no reply"}}
	}
	if code == "" {
		res, err := storedResult(base.RequestKind, call.data)
		if err == nil && len(res) > int(r.nc.MaxPayload())-4096 {
			err = fmt.Errorf("the result is %d bytes, more than the broker's max payload allows", len(res))
		}
		if err == nil {
			ev.Kind, ev.Result = wire.AsyncEventDone, res
			return &ev
		}
		code, call.h = wire.CodeInternal, nats.Header{wire.HeaderError: {err.Error()}}
	}
	ev.Code, ev.Error = code, call.h.Get(wire.HeaderError)
	switch {
	case cancelled:
		ev.Kind, ev.Error = wire.AsyncEventFailed, "cancelled"
	case code == wire.CodeStreaming: // a streaming method: nobody reads its stream
		ev.Kind, ev.Error = wire.AsyncEventFailed, ev.Error+" (a stored request cannot take a stream)"
	case attempt < maxAttempts && code != wire.CodeBadRequest && code != wire.CodeUnknownMethod && code != wire.CodeProto:
		ev.Kind = wire.AsyncEventRetry
	default:
		ev.Kind = wire.AsyncEventFailed
	}
	return &ev
}

// storedResult is a reply as the request's record keeps it: a handle
// call's value as JSON, an HTTP reply as wire.HTTPResult.
func storedResult(kind string, data []byte) (json.RawMessage, error) {
	if kind != wire.KindHTTP {
		if len(data) == 0 {
			return json.RawMessage("null"), nil
		}
		v, err := client.ValueToJSON(data)
		if err != nil {
			return nil, fmt.Errorf("decoding the result: %w", err)
		}
		return json.Marshal(v)
	}
	rep, err := wire.DecodeHTTPReply(data)
	if err != nil {
		return nil, err
	}
	hr := wire.HTTPResult{Status: rep.Status, Headers: map[string]string{}}
	for i := 0; i+1 < len(rep.Headers); i += 2 {
		k := rep.Headers[i]
		if v, ok := hr.Headers[k]; ok {
			hr.Headers[k] = v + ", " + rep.Headers[i+1]
		} else {
			hr.Headers[k] = rep.Headers[i+1]
		}
	}
	if utf8.Valid(rep.Body) {
		hr.Body = string(rep.Body)
	} else {
		hr.Body, hr.Base64 = base64.StdEncoding.EncodeToString(rep.Body), true
	}
	return json.Marshal(&hr)
}

// publishEvent stores an event in the results stream, retrying while the
// broker is away (bounded by storedPublishFor).
func (r *Replica) publishEvent(ctx context.Context, js jetstream.JetStream, id string, ev *wire.AsyncEvent) bool {
	b, err := json.Marshal(ev)
	if err != nil {
		return false
	}
	subject := wire.AsyncResultSubject(r.spec.Deployment, id)
	msgID := id + "." + ev.Kind + "." + strconv.Itoa(ev.Attempt)
	deadline := time.Now().Add(storedPublishFor)
	var retry time.Duration = 50 * time.Millisecond
	for {
		pctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, err := js.Publish(pctx, subject, b, jetstream.WithMsgID(msgID), jetstream.WithExpectStream(wire.AsyncResultsStream))
		cancel()
		if err == nil {
			return true
		}
		if time.Now().After(deadline) {
			r.log.Error("storing a stored request's result failed; it will run again", "request_id", id, "err", err)
			return false
		}
		time.Sleep(retry)
		retry = min(retry*2, 2*time.Second)
	}
}

// resultStored reports whether request id's outcome is in the results
// stream already; it retries while the stream cannot answer (a broker
// restarting), for up to storedCheckFor.
func (r *Replica) resultStored(ctx context.Context, js jetstream.JetStream, id string) (bool, error) {
	deadline := time.Now().Add(storedCheckFor)
	retry := 50 * time.Millisecond
	for {
		gctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		st, err := r.resultsStream(gctx, js)
		var m *jetstream.RawStreamMsg
		if err == nil {
			m, err = st.GetLastMsgForSubject(gctx, wire.AsyncResultSubject(r.spec.Deployment, id))
		}
		cancel()
		switch {
		case errors.Is(err, jetstream.ErrMsgNotFound):
			return false, nil
		case err == nil:
			ev, err := wire.DecodeAsyncEvent(m.Data)
			return err == nil && (ev.Kind == wire.AsyncEventDone || ev.Kind == wire.AsyncEventFailed), nil
		}
		if ctx.Err() != nil || time.Now().After(deadline) {
			return false, err
		}
		select {
		case <-ctx.Done():
		case <-time.After(retry):
		}
		retry = min(retry*2, time.Second)
	}
}

// resultsStream returns the results stream's handle, looked up once (its
// info says whether direct gets work).
func (r *Replica) resultsStream(ctx context.Context, js jetstream.JetStream) (jetstream.Stream, error) {
	r.stored.mu.Lock()
	st := r.stored.results
	r.stored.mu.Unlock()
	if st != nil {
		return st, nil
	}
	st, err := js.Stream(ctx, wire.AsyncResultsStream)
	if err != nil {
		return nil, err
	}
	r.stored.mu.Lock()
	r.stored.results = st
	r.stored.mu.Unlock()
	return st, nil
}
