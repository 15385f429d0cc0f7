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
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/natserve/natserve/client"
	"github.com/natserve/natserve/internal/wire"
)

// Stored (asynchronous) requests, the controller's part: it creates the
// requests bucket, the results stream and object store, and one request
// stream with its consumer per deployment (deleting a deployment fails its
// queued requests and removes the stream); it folds the replicas' events
// from the results stream into the records; and it reports each
// deployment's backlog to the autoscaler, which wakes a deployment scaled
// to zero for stored work.

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
	ss := &streamSync{made: map[string]madeStream{}}
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		c.syncStreams(ctx, st, kv, ss)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
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
// idle pass over 1,000 deployments costs a map lookup each: no spec
// normalized, no stream listed.
type streamSync struct {
	made    map[string]madeStream // deployment → its stream, as made
	listed  time.Time             // last listing of the request streams
	seen    uint64                // the deployments table's version last walked
	walked  bool                  // seen is set
	retries bool                  // a failed creation waits for its retry
	live    map[string]bool       // the deployments at the last walk
}

// madeStream is a deployment's request stream as made (or last tried) for
// one spec revision.
type madeStream struct {
	rev        uint64
	ok         bool      // made; false: retry at retry
	retry      time.Time // when a failed attempt is tried again
	autoscaled bool
}

// streamListEvery is how often syncStreams lists the request streams to
// find those of deployments it never saw (deleted while no controller
// led); deletions it sees are handled at once.
const streamListEvery = time.Minute

// streamRetry is how long a failed stream creation waits for its retry.
const streamRetry = 10 * time.Second

// syncStreams keeps one request stream per deployment (made once per spec
// revision), removes the streams of deleted deployments (failing their
// queued requests), and reports the backlogs of autoscaled deployments
// (one consumer info each per second; the others need none).
func (c *Controller) syncStreams(ctx context.Context, st *state, kv jetstream.KeyValue, ss *streamSync) {
	backlog := map[string]float64{}
	now := time.Now()
	var todo []keyed[client.DeploymentSpec] // changed since made: no I/O under the table's lock
	if !ss.walked || ss.retries || st.deps.version() != ss.seen {
		// Walk the deployments only when one changed (or a retry waits):
		// an idle second costs no walk over 1,000 specs.
		live := map[string]bool{}
		ss.seen = st.deps.each(func(name string, spec client.DeploymentSpec, rev uint64) {
			live[name] = true
			if m, seen := ss.made[name]; !seen || m.rev != rev || (!m.ok && now.After(m.retry)) {
				todo = append(todo, keyed[client.DeploymentSpec]{name, spec, rev})
			}
		})
		ss.walked, ss.live = true, live
	}
	live := ss.live
	for _, d := range todo {
		name, spec, rev := d.key, d.val, d.rev
		if m, seen := ss.made[name]; !seen || m.rev != rev || (!m.ok && now.After(m.retry)) {
			m := madeStream{rev: rev}
			if spec.Normalize() != nil {
				m.ok = true // never valid: nothing to make
				ss.made[name] = m
				continue
			}
			m.autoscaled = spec.Autoscaled()
			if err := c.ensureRequestStream(ctx, &spec); err != nil {
				c.log.Warn("creating a request stream failed", "deployment", name, "err", err)
				m.retry = now.Add(streamRetry)
			} else {
				m.ok = true
			}
			ss.made[name] = m
		}
	}
	ss.retries = false
	for _, m := range ss.made {
		if !m.ok {
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
			delete(ss.made, name) // gone behind our back: make it again
			ss.walked = false
		}
		cancel()
	}
	st.metrics.setBacklog(backlog)
	for name, n := range backlog {
		if n > 0 {
			c.wake(st, name) // a no-op unless it is autoscaled and at zero
		}
	}
	// Streams of deployments that are gone: those this controller made,
	// at once; others (deleted while no controller led) from a listing
	// now and then.
	lctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	var gone []string
	for dep := range ss.made {
		if !live[dep] {
			gone = append(gone, dep)
		}
	}
	if now.Sub(ss.listed) >= streamListEvery {
		ss.listed = now
		names := c.js.StreamNames(lctx, jetstream.WithStreamListSubject(wire.AsyncSubject("*")))
		for n := range names.Name() {
			dep := wire.AsyncStreamDeployment(n)
			if dep == "" || live[dep] {
				continue
			}
			if _, ok := ss.made[dep]; !ok {
				gone = append(gone, dep)
			}
		}
	}
	for _, dep := range gone {
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
