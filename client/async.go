package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/natserve/natserve/internal/wire"
)

// Durable (asynchronous) requests: a submission is stored in JetStream
// before Submit returns; the deployment's replicas run it when they have a
// free slot (again after a replica dies, up to max_attempts), and its
// status and result stay readable by id for the retention time.

// Errors of stored requests; match with errors.Is.
var (
	// ErrRequestNotFound: no stored request has this id (never submitted,
	// or past the retention).
	ErrRequestNotFound = errors.New("no such request")
	// ErrBacklogFull: the deployment holds max_stored_requests already.
	ErrBacklogFull = errors.New("backlog full")
	// ErrNoAsync: the deployment takes no stored requests (it does not
	// exist, or is a graph).
	ErrNoAsync = errors.New("takes no stored requests")
)

// RequestStatus is a stored request's status, the JSON of
// GET /-/requests/<id>: every field is always present, null when unset.
type RequestStatus struct {
	ID         string `json:"id"`
	Deployment string `json:"deployment"`
	// Status is queued, running, succeeded, failed or cancelled.
	Status      string     `json:"status"`
	Attempts    int        `json:"attempts"`
	SubmittedAt *time.Time `json:"submitted_at"`
	StartedAt   *time.Time `json:"started_at"`
	FinishedAt  *time.Time `json:"finished_at"`
	Error       *string    `json:"error"`
	// Result is the method's result as JSON for a handle call, and
	// {"status", "headers", "body", "base64"} for an HTTP request.
	Result json.RawMessage `json:"result"`
}

// Done reports whether the request has ended.
func (s *RequestStatus) Done() bool { return wire.AsyncTerminal(s.Status) }

// Decode decodes the result into out.
func (s *RequestStatus) Decode(out any) error {
	if s.Status != wire.AsyncSucceeded {
		return fmt.Errorf("request %s is %s, not succeeded", s.ID, s.Status)
	}
	return json.Unmarshal(s.Result, out)
}

// StatusOf is the public status of a stored request's record.
func StatusOf(r *wire.AsyncRecord) *RequestStatus { return statusOf(r) }

func statusOf(r *wire.AsyncRecord) *RequestStatus {
	s := &RequestStatus{ID: r.ID, Deployment: r.Deployment, Status: r.Status, Attempts: r.Attempts, Result: r.Result}
	t := func(v time.Time) *time.Time {
		if v.IsZero() {
			return nil
		}
		v = v.UTC()
		return &v
	}
	s.SubmittedAt, s.StartedAt, s.FinishedAt = t(r.Submitted), t(r.Started), t(r.Finished)
	if r.Error != "" {
		e := r.Error
		s.Error = &e
	}
	return s
}

type asyncKey int

const (
	idemKey asyncKey = iota
	callbackKey
)

// WithIdempotencyKey returns a context whose Submit is idempotent under
// key: a second submission to the same deployment with the same key
// within the retention returns the first one's id and runs nothing.
func WithIdempotencyKey(ctx context.Context, key string) context.Context {
	return context.WithValue(ctx, idemKey, key)
}

// WithCallback returns a context whose Submit asks for the request's final
// status (JSON) to be published on the NATS subject when it ends.
func WithCallback(ctx context.Context, subject string) context.Context {
	return context.WithValue(ctx, callbackKey, subject)
}

// Submit stores a call of the method with args and returns its id at once;
// Client.Wait awaits it. ctx may carry WithIdempotencyKey and WithCallback.
func (h *Handle) Submit(ctx context.Context, args ...any) (string, error) {
	payload, err := wire.MarshalArgs(args)
	if err != nil {
		return "", &Error{Deployment: h.deployment, Method: h.method, Code: string(wire.CodeBadRequest), Message: "encoding the arguments: " + err.Error()}
	}
	key, _ := ctx.Value(idemKey).(string)
	cb, _ := ctx.Value(callbackKey).(string)
	st, err := h.c.Submit(ctx, Submission{Deployment: h.deployment, Method: h.method, Kind: wire.KindCall, Data: payload, IdempotencyKey: key, Callback: cb})
	if err != nil {
		return "", err
	}
	return st.ID, nil
}

// Submission is one request to store.
type Submission struct {
	Deployment string
	Method     string // "" for the default method
	Kind       string // wire.KindCall (msgpack arguments) or wire.KindHTTP (an envelope)
	Data       []byte
	// IdempotencyKey, if set, makes a resubmission return the same id.
	IdempotencyKey string
	// Callback is a NATS subject told the final status.
	Callback string
}

// async is the client's JetStream access for stored requests, opened on
// first use.
type async struct {
	once sync.Once
	js   jetstream.JetStream
	err  error

	mu  sync.Mutex // guards kv, obj
	kv  jetstream.KeyValue
	obj jetstream.ObjectStore
}

func (c *Client) requests(ctx context.Context) (jetstream.JetStream, jetstream.KeyValue, error) {
	c.async.once.Do(func() { c.async.js, c.async.err = jetstream.New(c.nc) })
	if c.async.err != nil {
		return nil, nil, c.async.err
	}
	c.async.mu.Lock()
	defer c.async.mu.Unlock()
	if c.async.kv == nil {
		kv, err := c.async.js.KeyValue(ctx, wire.BucketRequests)
		if err != nil {
			return nil, nil, fmt.Errorf("stored requests: opening %s (is a controller running?): %w", wire.BucketRequests, err)
		}
		c.async.kv = kv
	}
	return c.async.js, c.async.kv, nil
}

// Submit stores s and returns its status (queued, or what an earlier
// submission with the same idempotency key has come to).
func (c *Client) Submit(ctx context.Context, s Submission) (*RequestStatus, error) {
	if err := wire.ValidateName("deployment", s.Deployment); err != nil {
		return nil, err
	}
	if len(s.IdempotencyKey) > wire.MaxIdempotencyKey {
		return nil, fmt.Errorf("%s: idempotency key of %d bytes: the limit is %d", s.Deployment, len(s.IdempotencyKey), wire.MaxIdempotencyKey)
	}
	if s.Callback != "" && !IsCallbackURL(s.Callback) && !validSubject(s.Callback) {
		return nil, fmt.Errorf("%s: callback %.40q is neither a NATS subject nor an http(s) URL", s.Deployment, s.Callback)
	}
	if c.cachedGraph(s.Deployment) != nil {
		return nil, fmt.Errorf("%s: %w: it is a graph", s.Deployment, ErrNoAsync)
	}
	ctx, cancel := c.opCtx(ctx)
	defer cancel()
	js, kv, err := c.requests(ctx)
	if err != nil {
		return nil, err
	}
	if IsCallbackURL(s.Callback) {
		if err := c.callbackAllowed(ctx, js, s.Deployment, s.Callback); err != nil {
			return nil, err
		}
	}
	id := wire.NewAsyncID()
	var ikey string
	if s.IdempotencyKey != "" {
		ikey = wire.AsyncIdemKey(s.Deployment, s.IdempotencyKey)
		if _, err := kv.Create(ctx, ikey, []byte(id)); err != nil {
			if !errors.Is(err, jetstream.ErrKeyExists) {
				return nil, fmt.Errorf("%s: storing the idempotency key: %w", s.Deployment, err)
			}
			e, gerr := kv.Get(ctx, ikey)
			if gerr != nil {
				return nil, fmt.Errorf("%s: reading the idempotency key: %w", s.Deployment, gerr)
			}
			id = string(e.Value())
			if st, err := c.Request(ctx, id); err == nil {
				return st, nil
			}
			// The first submitter has not stored its record (yet, or it
			// died): store the request under its id; JetStream's
			// duplicate window drops a second copy of the message.
		}
	}
	now := time.Now().UTC()
	msg := &nats.Msg{Subject: wire.AsyncSubject(s.Deployment), Data: s.Data, Header: nats.Header{
		wire.HeaderProto:     {wire.ProtoVersion},
		wire.HeaderKind:      {s.Kind},
		wire.HeaderRequestID: {id},
		wire.HeaderSubmitted: {now.Format(time.RFC3339Nano)},
	}}
	if s.Method != "" {
		msg.Header[wire.HeaderMethod] = []string{s.Method}
	}
	if s.Callback != "" {
		msg.Header[wire.HeaderCallback] = []string{s.Callback}
	}
	ack, err := js.PublishMsg(ctx, msg, jetstream.WithMsgID(id), jetstream.WithExpectStream(wire.AsyncStream(s.Deployment)))
	if err != nil {
		if ikey != "" { // let a retry with the key store it again
			_ = kv.Delete(ctx, ikey)
		}
		var apiErr *jetstream.APIError
		switch {
		case errors.Is(err, jetstream.ErrNoStreamResponse), errors.Is(err, nats.ErrNoResponders):
			return nil, fmt.Errorf("%s: %w (no such deployment?)", s.Deployment, ErrNoAsync)
		case errors.As(err, &apiErr) && apiErr.ErrorCode == wire.JSStreamStoreFailed:
			return nil, fmt.Errorf("%s: %w: %s", s.Deployment, ErrBacklogFull, apiErr.Description)
		}
		return nil, fmt.Errorf("%s: storing the request: %w", s.Deployment, err)
	}
	rec := wire.AsyncRecord{ID: id, Deployment: s.Deployment, Status: wire.AsyncQueued, Submitted: now,
		Method: s.Method, Kind: s.Kind, Callback: s.Callback, Seq: ack.Sequence}
	b, _ := json.Marshal(&rec)
	if _, err := kv.Create(ctx, wire.AsyncRecordKey(id), b); err != nil {
		if errors.Is(err, jetstream.ErrKeyExists) { // the controller saw it run already
			return c.Request(ctx, id)
		}
		// The request is stored and will run; its record appears when
		// the controller folds its first event.
		return statusOf(&rec), nil
	}
	return statusOf(&rec), nil
}

func (c *Client) opCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return ctx, func() {}
	}
	return context.WithTimeout(ctx, c.opts.Timeout)
}

func validSubject(s string) bool {
	if len(s) == 0 || len(s) > 256 || s[0] == '.' || s[len(s)-1] == '.' {
		return false
	}
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c <= ' ' || c > '~' || c == '*' || c == '>':
			return false
		case c == '.' && s[i-1] == '.':
			return false
		}
	}
	return true
}

func (c *Client) record(ctx context.Context, kv jetstream.KeyValue, id string) (*wire.AsyncRecord, uint64, error) {
	if !wire.ValidAsyncID(id) {
		return nil, 0, fmt.Errorf("request %.40q: %w", id, ErrRequestNotFound)
	}
	e, err := kv.Get(ctx, wire.AsyncRecordKey(id))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, 0, fmt.Errorf("request %s: %w", id, ErrRequestNotFound)
	}
	if err != nil {
		return nil, 0, fmt.Errorf("request %s: %w", id, err)
	}
	var r wire.AsyncRecord
	if err := json.Unmarshal(e.Value(), &r); err != nil {
		return nil, 0, fmt.Errorf("request %s: bad record: %w", id, err)
	}
	return &r, e.Revision(), nil
}

// Request returns a stored request's status.
func (c *Client) Request(ctx context.Context, id string) (*RequestStatus, error) {
	ctx, cancel := c.opCtx(ctx)
	defer cancel()
	_, kv, err := c.requests(ctx)
	if err != nil {
		return nil, err
	}
	r, _, err := c.record(ctx, kv, id)
	if err != nil {
		return nil, err
	}
	return c.withResult(ctx, r)
}

// withResult fetches a result kept in the object store.
func (c *Client) withResult(ctx context.Context, r *wire.AsyncRecord) (*RequestStatus, error) {
	if !r.ResultObject {
		return statusOf(r), nil
	}
	c.async.mu.Lock()
	obj := c.async.obj
	c.async.mu.Unlock()
	if obj == nil {
		var err error
		if obj, err = c.async.js.ObjectStore(ctx, wire.ObjectResults); err != nil {
			return nil, fmt.Errorf("request %s: opening the result store: %w", r.ID, err)
		}
		c.async.mu.Lock()
		c.async.obj = obj
		c.async.mu.Unlock()
	}
	b, err := obj.GetBytes(ctx, r.ID)
	if err != nil {
		return nil, fmt.Errorf("request %s: reading its result: %w", r.ID, err)
	}
	r.Result = b
	return statusOf(r), nil
}

// Cancel cancels a stored request: a queued one never runs, a running one
// sees its context cancelled. A request that has ended is left as it is.
// It returns the status after the cancel.
func (c *Client) Cancel(ctx context.Context, id string) (*RequestStatus, error) {
	ctx, cancel := c.opCtx(ctx)
	defer cancel()
	js, kv, err := c.requests(ctx)
	if err != nil {
		return nil, err
	}
	for {
		r, rev, err := c.record(ctx, kv, id)
		if err != nil {
			return nil, err
		}
		if wire.AsyncTerminal(r.Status) {
			return c.withResult(ctx, r)
		}
		r.Status, r.Finished, r.Error = wire.AsyncCancelled, time.Now().UTC(), "cancelled"
		b, _ := json.Marshal(r)
		if _, err := kv.Update(ctx, wire.AsyncRecordKey(id), b, rev); err != nil {
			if errors.Is(err, jetstream.ErrKeyExists) {
				continue // changed meanwhile: look again
			}
			return nil, fmt.Errorf("request %s: %w", id, err)
		}
		// A replica running it cancels its context; a queued one is
		// taken out of the stream (a replica that has fetched it already
		// drops it on the cancel notice).
		_ = c.nc.Publish(wire.AsyncCancelSubject(r.Deployment), []byte(id))
		if r.Seq > 0 {
			if st, err := js.Stream(ctx, wire.AsyncStream(r.Deployment)); err == nil {
				_ = st.DeleteMsg(ctx, r.Seq)
			}
		}
		return statusOf(r), nil
	}
}

// ListRequests returns the stored requests of deployment ("" for all),
// at most limit (0: 1000), in no particular order.
func (c *Client) ListRequests(ctx context.Context, deployment string, limit int) ([]*RequestStatus, error) {
	if limit <= 0 {
		limit = 1000
	}
	ctx, cancel := c.opCtx(ctx)
	defer cancel()
	_, kv, err := c.requests(ctx)
	if err != nil {
		return nil, err
	}
	lister, err := kv.ListKeysFiltered(ctx, wire.AsyncRecordKeys)
	if err != nil {
		if errors.Is(err, jetstream.ErrNoKeysFound) {
			return nil, nil
		}
		return nil, err
	}
	defer func() { _ = lister.Stop() }()
	var out []*RequestStatus
	for key := range lister.Keys() {
		if len(out) >= limit {
			break
		}
		e, err := kv.Get(ctx, key)
		if err != nil {
			continue
		}
		var r wire.AsyncRecord
		if json.Unmarshal(e.Value(), &r) != nil || (deployment != "" && r.Deployment != deployment) {
			continue
		}
		r.Result = nil // listing: statuses only
		r.ResultObject = false
		out = append(out, statusOf(&r))
	}
	return out, nil
}

// Wait waits until the stored request id has ended (or ctx ends) and
// returns its final status.
func (c *Client) Wait(ctx context.Context, id string) (*RequestStatus, error) {
	if !wire.ValidAsyncID(id) {
		return nil, fmt.Errorf("request %.40q: %w", id, ErrRequestNotFound)
	}
	_, kv, err := c.requests(ctx)
	if err != nil {
		return nil, err
	}
	w, err := kv.Watch(ctx, wire.AsyncRecordKey(id))
	if err != nil {
		return nil, fmt.Errorf("request %s: %w", id, err)
	}
	defer func() { _ = w.Stop() }()
	seen := false
	for {
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("request %s: %w", id, ctx.Err())
		case e, ok := <-w.Updates():
			if !ok {
				return nil, fmt.Errorf("request %s: the watch ended", id)
			}
			if e == nil { // the current value has been delivered
				if !seen {
					// Not stored yet (a submission in flight) or gone: keep
					// waiting; ctx bounds it.
					seen = true
				}
				continue
			}
			if e.Operation() != jetstream.KeyValuePut {
				continue
			}
			var r wire.AsyncRecord
			if json.Unmarshal(e.Value(), &r) != nil || !wire.AsyncTerminal(r.Status) {
				continue
			}
			return c.withResult(ctx, &r)
		}
	}
}

// ErrCallbackNotAllowed: a callback URL is not on the deployment's
// callback_urls.
var ErrCallbackNotAllowed = errors.New("callback URL not allowed")

// callbackAllowed checks a callback URL against the deployment's
// callback_urls (read from the control plane's KV).
func (c *Client) callbackAllowed(ctx context.Context, js jetstream.JetStream, deployment, url string) error {
	// The routes bucket (what callers may read) carries callback_urls.
	kv, err := js.KeyValue(ctx, wire.BucketRoutes)
	if err != nil {
		return fmt.Errorf("%s: reading its callback_urls: %w", deployment, err)
	}
	e, err := kv.Get(ctx, wire.RouteDeploymentPrefix+deployment)
	if err != nil {
		return fmt.Errorf("%s: reading its callback_urls: %w", deployment, err)
	}
	var r wire.RouteRecord
	if err := json.Unmarshal(e.Value(), &r); err != nil {
		return fmt.Errorf("%s: reading its callback_urls: %w", deployment, err)
	}
	spec := DeploymentSpec{CallbackURLs: r.CallbackURLs}
	if !spec.CallbackAllowed(url) {
		return fmt.Errorf("%s: %w: %.80s is not under the deployment's callback_urls", deployment, ErrCallbackNotAllowed, url)
	}
	return nil
}
