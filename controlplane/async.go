package controlplane

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/natserve/natserve/client"
	"github.com/natserve/natserve/internal/durable"
	"github.com/natserve/natserve/internal/store"
	"github.com/natserve/natserve/internal/wire"
)

// Stored (asynchronous) requests, the controller's part: it creates the
// requests bucket, the results stream and object store; a deployment's
// request stream with its consumer is made on its first stored request
// (the requests service's open operation, from any controller process),
// so that the many deployments that never get one cost the broker no
// stream, consumer, files or timers. The leader keeps the streams that
// exist in step with their specs (max_stored_requests, max_attempts),
// deletes a deleted deployment's stream (failing its queued requests), and
// reports each deployment's backlog to the autoscaler, which wakes a
// deployment scaled to zero for stored work. It folds the replicas' events
// from the results stream into the records.

// DefaultAsyncRetention is how long records and results are kept.
const DefaultAsyncRetention = 24 * time.Hour

// storedAckWait is the request consumer's acknowledgment deadline; a
// replica sends in-progress acknowledgments more often while it runs a
// request, so this is how soon a dead replica's request runs again.
const storedAckWait = 10 * time.Second

// asyncLoop runs the controller's part of stored requests until ctx ends.
func (c *Controller) asyncLoop(ctx context.Context, st *state) {
	var kv jetstream.KeyValue
	var obj jetstream.ObjectStore
	for ctx.Err() == nil {
		var err error
		if kv, obj, err = c.ensureAsync(ctx); err == nil {
			break
		}
		c.log.Warn("creating the stored-request streams failed; retrying", "err", err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Second):
		}
	}
	if ctx.Err() != nil {
		return
	}
	st.spawn(func() { c.fold(ctx, st, kv, obj) })
	ss := &streamSync{made: map[string]madeStream{}, found: make(chan string, 1024)}
	// Request streams made on demand, by this or another controller
	// process: the broker announces each creation.
	sub, err := c.nc.Subscribe(wire.AsyncStreamCreatedSubjects, func(m *nats.Msg) {
		dep := wire.AsyncStreamDeployment(m.Subject[strings.LastIndexByte(m.Subject, '.')+1:])
		if dep == "" {
			return
		}
		select {
		case ss.found <- dep:
		default: // a burst: the next listing finds them
			ss.relist.Store(true)
		}
	})
	if err != nil {
		c.log.Warn("subscribing to stream creations failed; new request streams are found by listing, every minute", "err", err)
	} else {
		defer func() { _ = sub.Unsubscribe() }()
	}
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		c.syncStreams(ctx, st, kv, ss)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case dep := <-ss.found:
			ss.add(dep)
		}
	}
}

// openStream makes deployment's request stream and consumer from its spec
// as stored (the requests service's open operation: a caller's first
// stored request to it). Any controller process may: the leader learns of
// the new stream from the broker's advisory and keeps it in step.
func (c *Controller) openStream(ctx context.Context, deployment string) error {
	// Made already (another caller's first request, or a replica's view
	// lagging): nothing to do, and no update racing the creator's consumer
	// creation (nats-server updates a stream's store config unlocked
	// against a concurrent consumer creation: a data race under -race).
	if _, err := c.js.Consumer(ctx, wire.AsyncStream(deployment), wire.AsyncConsumer); err == nil {
		return nil
	}
	c.opening.Lock() // one creation at a time in this process
	defer c.opening.Unlock()
	if _, err := c.js.Consumer(ctx, wire.AsyncStream(deployment), wire.AsyncConsumer); err == nil {
		return nil
	}
	var spec client.DeploymentSpec
	if _, err := store.Get(ctx, c.kv.Deployments, deployment, &spec); err != nil {
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			return fmt.Errorf("%s: %w", deployment, durable.ErrNoDeployment)
		}
		return err
	}
	if err := spec.Normalize(); err != nil {
		return fmt.Errorf("%s: %w: its spec is invalid: %v", deployment, durable.ErrNoDeployment, err)
	}
	return c.ensureRequestStream(ctx, &spec)
}

// ensureAsync creates (or updates to the retention) the requests bucket,
// the results stream with its folder consumer, and the object store.
func (c *Controller) ensureAsync(ctx context.Context) (jetstream.KeyValue, jetstream.ObjectStore, error) {
	ret := c.cfg.AsyncRetention
	kv, err := c.js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket: wire.BucketRequests, History: 1, TTL: ret, Replicas: c.cfg.KVReplicas, Storage: jetstream.FileStorage,
	})
	if err != nil {
		return nil, nil, fmt.Errorf("bucket %s: %w", wire.BucketRequests, err)
	}
	if _, err := c.js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name: wire.AsyncResultsStream, Subjects: []string{wire.AsyncResultsSubjects}, Storage: jetstream.FileStorage,
		Retention: jetstream.LimitsPolicy, MaxAge: ret, Replicas: c.cfg.KVReplicas, Duplicates: 2 * time.Minute,
		AllowDirect: true, // replicas look up a request's last event on every delivery
	}); err != nil {
		return nil, nil, fmt.Errorf("stream %s: %w", wire.AsyncResultsStream, err)
	}
	if _, err := c.js.CreateOrUpdateConsumer(ctx, wire.AsyncResultsStream, jetstream.ConsumerConfig{
		Durable: wire.AsyncFolder, AckPolicy: jetstream.AckExplicitPolicy, AckWait: 30 * time.Second, MaxAckPending: 4096,
	}); err != nil {
		return nil, nil, fmt.Errorf("consumer %s: %w", wire.AsyncFolder, err)
	}
	obj, err := c.js.CreateOrUpdateObjectStore(ctx, jetstream.ObjectStoreConfig{
		Bucket: wire.ObjectResults, TTL: ret, Replicas: c.cfg.KVReplicas, Storage: jetstream.FileStorage,
	})
	if err != nil {
		return nil, nil, fmt.Errorf("object store %s: %w", wire.ObjectResults, err)
	}
	return kv, obj, nil
}

// streamSync is what syncStreams remembers between its passes, so that an
// idle pass over 1,000 deployments costs nothing: no spec normalized, no
// stream listed.
type streamSync struct {
	made    map[string]madeStream // deployment → its stream, as last made or updated
	listed  time.Time             // last listing of the request streams
	seen    uint64                // the deployments table's version last walked
	walked  bool                  // seen is set
	retries bool                  // a failed update waits for its retry
	live    map[string]bool       // the deployments at the last walk
	found   chan string           // deployments whose stream the broker announced
	relist  atomic.Bool           // announcements were dropped: list now
}

// madeStream is a deployment's request stream, known to exist, as made (or
// last tried) for one spec revision; rev 0: found, not yet made by us.
type madeStream struct {
	rev        uint64
	ok         bool      // made; false: retry at retry
	retry      time.Time // when a failed attempt is tried again
	autoscaled bool
}

// add records that deployment's request stream exists (announced or
// listed): a pass after streamSettle brings it in step with the spec (its
// creator is making its consumer meanwhile, and an update of the stream
// then races that creation inside nats-server).
func (ss *streamSync) add(deployment string) {
	if _, ok := ss.made[deployment]; !ok {
		ss.made[deployment] = madeStream{retry: time.Now().Add(streamSettle)}
		ss.walked = false
	}
}

// streamSettle is how long after a request stream appears the leader
// leaves it to its creator before updating it to the spec.
const streamSettle = 2 * time.Second

// streamListEvery is how often syncStreams lists the request streams, to
// find those it was not told of (made while no controller led, or an
// announcement lost) and those of deployments deleted while no controller
// led; creations and deletions it sees are handled at once.
const streamListEvery = time.Minute

// streamRetry is how long a failed stream update waits for its retry.
const streamRetry = 10 * time.Second

// syncStreams keeps the request streams that exist in step with their
// deployments' specs (updated once per spec revision), removes the streams
// of deleted deployments (failing their queued requests), and reports the
// backlogs of autoscaled deployments (one consumer info each per second;
// the others need none). It makes no stream: the first stored request to
// a deployment does (openStream).
func (c *Controller) syncStreams(ctx context.Context, st *state, kv jetstream.KeyValue, ss *streamSync) {
	backlog := map[string]float64{}
	now := time.Now()
	lctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if now.Sub(ss.listed) >= streamListEvery || ss.relist.Swap(false) {
		ss.listed = now
		names := c.js.StreamNames(lctx, jetstream.WithStreamListSubject(wire.AsyncSubject("*")))
		var listed []string
		for n := range names.Name() {
			if dep := wire.AsyncStreamDeployment(n); dep != "" {
				listed = append(listed, dep)
			}
		}
		if names.Err() == nil {
			for _, dep := range listed {
				ss.add(dep)
			}
		} else {
			ss.listed = time.Time{} // try again on the next pass
		}
	}
	for {
		select {
		case dep := <-ss.found:
			ss.add(dep)
			continue
		default:
		}
		break
	}
	var todo []keyed[client.DeploymentSpec] // changed since made: no I/O under the table's lock
	if !ss.walked || ss.retries || st.deps.version() != ss.seen {
		// Walk the deployments only when one changed, a stream was found
		// or a retry waits: an idle second costs no walk over 1,000 specs.
		live := map[string]bool{}
		ss.seen = st.deps.each(func(name string, spec client.DeploymentSpec, rev uint64) {
			live[name] = true
			if m, exists := ss.made[name]; exists && now.After(m.retry) && (m.rev != rev || !m.ok) {
				todo = append(todo, keyed[client.DeploymentSpec]{name, spec, rev})
			}
		})
		ss.walked, ss.live = true, live
	}
	live := ss.live
	for _, d := range todo {
		name, spec, rev := d.key, d.val, d.rev
		m := madeStream{rev: rev}
		if spec.Normalize() != nil {
			m.ok = true // never valid: nothing to update
			ss.made[name] = m
			continue
		}
		m.autoscaled = spec.Autoscaled()
		if err := c.ensureRequestStream(ctx, &spec); err != nil {
			c.log.Warn("updating a request stream failed", "deployment", name, "err", err)
			m.retry = now.Add(streamRetry)
		} else {
			m.ok = true
		}
		ss.made[name] = m
	}
	ss.retries = false
	for _, m := range ss.made {
		if !m.ok { // a failed update, or a stream found and not yet updated
			ss.retries = true
		}
	}
	for name, m := range ss.made {
		if !m.ok || !m.autoscaled || !live[name] {
			continue // only the autoscaler reads the backlog
		}
		cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		cons, err := c.js.Consumer(cctx, wire.AsyncStream(name), wire.AsyncConsumer)
		if err == nil {
			if info, err := cons.Info(cctx); err == nil {
				backlog[name] = float64(info.NumPending) + float64(info.NumAckPending)
			}
		} else if errors.Is(err, jetstream.ErrStreamNotFound) || errors.Is(err, jetstream.ErrConsumerNotFound) {
			delete(ss.made, name) // gone behind our back: made again on the next stored request
		}
		cancel()
	}
	st.metrics.setBacklog(backlog)
	for name, n := range backlog {
		if n > 0 {
			c.wake(st, name) // a no-op unless it is autoscaled and at zero
		}
	}
	// Streams of deployments that are gone.
	var listedGone []string
	for dep := range ss.made {
		if !live[dep] {
			listedGone = append(listedGone, dep)
		}
	}
	for _, dep := range listedGone {
		if _, err := c.kv.Deployments.Get(lctx, dep); err == nil {
			continue // stored but not in the table yet (a first request raced its deploy)
		} else if !errors.Is(err, jetstream.ErrKeyNotFound) {
			continue // cannot tell now: the next pass asks again
		}
		c.failQueued(lctx, st, kv, dep)
		delete(ss.made, dep)
	}
}

func (c *Controller) ensureRequestStream(ctx context.Context, spec *client.DeploymentSpec) error {
	if _, err := c.js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name: wire.AsyncStream(spec.Name), Subjects: []string{wire.AsyncSubject(spec.Name)}, Storage: jetstream.FileStorage,
		Retention: jetstream.WorkQueuePolicy, MaxMsgs: int64(spec.MaxStoredRequests), Discard: jetstream.DiscardNew,
		MaxAge: c.cfg.AsyncRetention, Replicas: c.cfg.KVReplicas, Duplicates: 2 * time.Minute,
	}); err != nil {
		return err
	}
	_, err := c.js.CreateOrUpdateConsumer(ctx, wire.AsyncStream(spec.Name), jetstream.ConsumerConfig{
		Durable: wire.AsyncConsumer, AckPolicy: jetstream.AckExplicitPolicy, AckWait: storedAckWait,
		MaxDeliver: -1, MaxAckPending: 10000, MaxWaiting: 4096,
		Metadata: map[string]string{wire.AsyncMetaMaxAttempts: strconv.Itoa(spec.MaxAttempts)},
	})
	return err
}

// failQueued fails the requests left in a deleted deployment's stream and
// deletes the stream.
func (c *Controller) failQueued(ctx context.Context, st *state, kv jetstream.KeyValue, dep string) {
	s, err := c.js.Stream(ctx, wire.AsyncStream(dep))
	if err != nil {
		return
	}
	info, err := s.Info(ctx)
	if err != nil {
		return
	}
	n := 0
	for seq := info.State.FirstSeq; info.State.Msgs > 0 && seq <= info.State.LastSeq && ctx.Err() == nil; seq++ {
		m, err := s.GetMsg(ctx, seq)
		if err != nil {
			continue
		}
		id := m.Header.Get(wire.HeaderRequestID)
		if !wire.ValidAsyncID(id) {
			continue
		}
		c.foldEvent(ctx, st, kv, nil, dep, id, &wire.AsyncEvent{Kind: wire.AsyncEventFailed, Attempt: 0, At: time.Now().UTC(),
			Error: "deployment " + dep + " was deleted", Code: wire.CodeNoReplicas})
		n++
	}
	if err := c.js.DeleteStream(ctx, wire.AsyncStream(dep)); err != nil && !errors.Is(err, jetstream.ErrStreamNotFound) {
		c.log.Warn("deleting a request stream failed", "deployment", dep, "err", err)
		return
	}
	c.log.Info("deployment deleted: its stored requests failed", "deployment", dep, "failed", n)
}

// fold applies the results stream's events to the records until ctx ends.
func (c *Controller) fold(ctx context.Context, st *state, kv jetstream.KeyValue, obj jetstream.ObjectStore) {
	for ctx.Err() == nil {
		cons, err := c.js.Consumer(ctx, wire.AsyncResultsStream, wire.AsyncFolder)
		if err != nil {
			select {
			case <-ctx.Done():
				return
			case <-time.After(time.Second):
			}
			continue
		}
		for ctx.Err() == nil {
			fctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			batch, err := cons.Fetch(256, jetstream.FetchContext(fctx))
			if err != nil {
				cancel()
				break
			}
			for m := range batch.Messages() {
				dep, id, ok := wire.AsyncResultDeployment(m.Subject())
				ev, err := wire.DecodeAsyncEvent(m.Data())
				if !ok || err != nil {
					_ = m.Term()
					continue
				}
				if c.foldEvent(ctx, st, kv, obj, dep, id, ev) {
					_ = m.Ack()
				} else {
					_ = m.NakWithDelay(time.Second)
				}
			}
			err = batch.Error()
			cancel()
			if err != nil && !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, nats.ErrTimeout) && ctx.Err() == nil {
				c.log.Debug("folding results", "err", err)
				break
			}
		}
	}
}

// foldEvent applies one event to request id's record (creating the record
// if the submitter died before it wrote it) and reports whether it is
// done with the event.
func (c *Controller) foldEvent(ctx context.Context, st *state, kv jetstream.KeyValue, obj jetstream.ObjectStore, dep, id string, ev *wire.AsyncEvent) bool {
	key := wire.AsyncRecordKey(id)
	for attempt := 0; attempt < 10 && ctx.Err() == nil; attempt++ {
		var r wire.AsyncRecord
		var rev uint64
		e, err := kv.Get(ctx, key)
		switch {
		case errors.Is(err, jetstream.ErrKeyNotFound):
			r = wire.AsyncRecord{ID: id, Deployment: dep, Status: wire.AsyncQueued, Submitted: ev.Submitted, Kind: ev.RequestKind, Method: ev.MethodName}
		case err != nil:
			return false
		default:
			if wire.UnmarshalJSON(e.Value(), &r) != nil {
				return true // a record we cannot read: leave it
			}
			rev = e.Revision()
		}
		if !r.Fold(ev) {
			return true
		}
		if len(r.Result) > wire.AsyncInlineResult && obj != nil {
			if _, err := obj.PutBytes(ctx, id, r.Result); err != nil {
				c.log.Warn("storing a large result failed", "request", id, "err", err)
				return false
			}
			r.Result, r.ResultObject = nil, true
		}
		b, _ := json.Marshal(&r)
		if rev == 0 {
			_, err = kv.Create(ctx, key, b)
		} else {
			_, err = kv.Update(ctx, key, b, rev)
		}
		if errors.Is(err, jetstream.ErrKeyExists) {
			continue // changed meanwhile (a cancel): fold again
		}
		if err != nil {
			return false
		}
		if wire.AsyncTerminal(r.Status) && r.Callback != "" {
			c.notify(ctx, st, obj, &r)
		}
		return true
	}
	return false
}

// notify tells a finished request's callback its public status: a
// publish on a NATS subject, or a POST to a URL on the deployment's
// callback_urls (on a goroutine of the term, best effort, once).
func (c *Controller) notify(ctx context.Context, st *state, obj jetstream.ObjectStore, r *wire.AsyncRecord) {
	rec := *r
	if rec.ResultObject && obj != nil {
		if b, err := obj.GetBytes(ctx, rec.ID); err == nil {
			rec.Result = b
		}
	}
	b, err := json.Marshal(client.StatusOf(&rec))
	if err != nil {
		return
	}
	if !client.IsCallbackURL(rec.Callback) {
		if len(b) > int(c.nc.MaxPayload()) {
			rec.Result = nil
			b, _ = json.Marshal(client.StatusOf(&rec))
		}
		if !wire.NATSCallbackAllowed(rec.Callback) {
			c.log.Warn("callback subject refused (want _INBOX.… or natserve.cb.…)", "request", rec.ID, "subject", rec.Callback)
			return
		}
		if err := c.nc.Publish(rec.Callback, b); err != nil {
			c.log.Warn("callback failed", "request", rec.ID, "subject", rec.Callback, "err", err)
		}
		return
	}
	spec, _, ok := st.deps.get(rec.Deployment)
	if !ok || !spec.CallbackAllowed(rec.Callback) {
		c.log.Warn("callback URL not allowed (any more); not called", "request", rec.ID, "deployment", rec.Deployment)
		return
	}
	st.spawn(func() {
		pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		req, err := http.NewRequestWithContext(pctx, http.MethodPost, rec.Callback, bytes.NewReader(b))
		if err != nil {
			return
		}
		req.Header.Set("Content-Type", "application/json")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			c.log.Warn("callback failed", "request", rec.ID, "err", err)
			return
		}
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<16))
		resp.Body.Close()
		if resp.StatusCode >= 300 {
			c.log.Warn("callback answered an error", "request", rec.ID, "status", resp.StatusCode)
		}
	})
}
