package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
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
	return wire.UnmarshalJSON(s.Result, out)
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
// first use: it publishes submissions to their deployment's request
// stream; everything else goes through the requests service
// (wire.AsyncServiceSubject), which the controller processes answer.
type async struct {
	once sync.Once
	js   jetstream.JetStream
	err  error
}

func (c *Client) jetStream() (jetstream.JetStream, error) {
	c.async.once.Do(func() { c.async.js, c.async.err = jetstream.New(c.nc) })
	return c.async.js, c.async.err
}

// errServiceRetry marks a requests service answer worth asking again
// (no controller answers now, or it cannot reach the bucket yet).
var errServiceRetry = errors.New("the requests service cannot answer now")

// service asks the requests service once.
func (c *Client) service(ctx context.Context, req *wire.AsyncServiceRequest) (*wire.AsyncServiceReply, error) {
	b, err := json.Marshal(req)
	if err != nil {
		return nil, err
	}
	m, err := c.nc.RequestWithContext(ctx, wire.AsyncServiceSubject, b)
	switch {
	case errors.Is(err, nats.ErrNoResponders):
		return nil, fmt.Errorf("%w: no controller answers %s", errServiceRetry, wire.AsyncServiceSubject)
	case err != nil:
		return nil, err
	}
	var rep wire.AsyncServiceReply
	if err := json.Unmarshal(m.Data, &rep); err != nil {
		return nil, fmt.Errorf("requests service: bad reply: %w", err)
	}
	switch rep.Code {
	case "":
		return &rep, nil
	case wire.AsyncCodeNotFound:
		return nil, fmt.Errorf("%s: %w", firstLine(rep.Error), ErrRequestNotFound)
	case wire.AsyncCodeNotReady, wire.AsyncCodeBusy:
		return nil, fmt.Errorf("%w: %s", errServiceRetry, firstLine(rep.Error))
	}
	return nil, fmt.Errorf("requests service: %s", firstLine(rep.Error))
}

// ask asks the requests service, again while it cannot answer (a
// controller restarting), until ctx ends.
func (c *Client) ask(ctx context.Context, req *wire.AsyncServiceRequest) (*wire.AsyncServiceReply, error) {
	retry := 20 * time.Millisecond
	for {
		rep, err := c.service(ctx, req)
		if err == nil || !(errors.Is(err, errServiceRetry) || (errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil) || errors.Is(err, nats.ErrTimeout)) {
			return rep, err
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("%w (%v)", ctx.Err(), err)
		case <-time.After(retry):
		}
		retry = min(retry*2, time.Second)
	}
}

// status is a reply's record as a status, with a result too large for
// one reply fetched in chunks.
func (c *Client) status(ctx context.Context, rep *wire.AsyncServiceReply) (*RequestStatus, error) {
	if rep.Record == nil {
		return nil, fmt.Errorf("request %s: %w", rep.ID, ErrRequestNotFound)
	}
	if rep.ResultSize > 0 && len(rep.Record.Result) == 0 {
		res := make([]byte, 0, rep.ResultSize)
		for len(res) < rep.ResultSize {
			part, err := c.ask(ctx, &wire.AsyncServiceRequest{Op: wire.AsyncOpChunk, ID: rep.ID, Offset: len(res)})
			if err != nil {
				return nil, fmt.Errorf("request %s: reading its result: %w", rep.ID, err)
			}
			if len(part.Chunk) == 0 {
				return nil, fmt.Errorf("request %s: its result changed while read", rep.ID)
			}
			res = append(res, part.Chunk...)
		}
		rep.Record.Result = res
	}
	return statusOf(rep.Record), nil
}

func firstLine(s string) string {
	s, _, _ = strings.Cut(s, "\n")
	return s
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
	js, err := c.jetStream()
	if err != nil {
		return nil, err
	}
	if IsCallbackURL(s.Callback) {
		if err := c.callbackAllowed(ctx, js, s.Deployment, s.Callback); err != nil {
			return nil, err
		}
	}
	id := wire.NewAsyncID()
	var idem *wire.AsyncServiceRequest
	if s.IdempotencyKey != "" {
		idem = &wire.AsyncServiceRequest{Op: wire.AsyncOpClaim, Deployment: s.Deployment, IdemHash: wire.AsyncIdemHash(s.IdempotencyKey), ID: id}
		rep, err := c.ask(ctx, idem)
		if err != nil {
			return nil, fmt.Errorf("%s: storing the idempotency key: %w", s.Deployment, err)
		}
		if rep.Record != nil {
			return c.status(ctx, rep)
		}
		// Ours, or the first submitter's whose record is not stored (yet,
		// or it died): store the request under that id; JetStream's
		// duplicate window drops a second copy of the message.
		id = rep.ID
		if !wire.ValidAsyncID(id) {
			return nil, fmt.Errorf("%s: the idempotency key maps to a bad id", s.Deployment)
		}
		idem.ID = id
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
	// No retries on "no responders" (nats.go waits 250 ms twice): it most
	// likely means the deployment's first stored request, whose stream is
	// made now; the second publish retries as usual, riding out a stream
	// leader's election.
	ack, err := js.PublishMsg(ctx, msg, jetstream.WithMsgID(id), jetstream.WithExpectStream(wire.AsyncStream(s.Deployment)), jetstream.WithRetryAttempts(0))
	if errors.Is(err, jetstream.ErrNoStreamResponse) || errors.Is(err, nats.ErrNoResponders) {
		if err = c.OpenRequestStream(ctx, s.Deployment); err == nil {
			ack, err = js.PublishMsg(ctx, msg, jetstream.WithMsgID(id), jetstream.WithExpectStream(wire.AsyncStream(s.Deployment)))
		}
	}
	if err != nil {
		if idem != nil { // let a retry with the key store it again
			idem.Op = wire.AsyncOpRelease
			_, _ = c.service(ctx, idem)
		}
		var apiErr *jetstream.APIError
		switch {
		case errors.Is(err, ErrNoAsync):
			return nil, err
		case errors.Is(err, jetstream.ErrNoStreamResponse), errors.Is(err, nats.ErrNoResponders):
			return nil, fmt.Errorf("%s: %w (its request stream did not answer)", s.Deployment, ErrNoAsync)
		case errors.As(err, &apiErr) && apiErr.ErrorCode == wire.JSStreamStoreFailed:
			return nil, fmt.Errorf("%s: %w: %s", s.Deployment, ErrBacklogFull, apiErr.Description)
		}
		return nil, fmt.Errorf("%s: storing the request: %w", s.Deployment, err)
	}
	rec := wire.AsyncRecord{ID: id, Deployment: s.Deployment, Status: wire.AsyncQueued, Submitted: now,
		Method: s.Method, Kind: s.Kind, Callback: s.Callback, Seq: ack.Sequence}
	// The request is stored and will run whatever happens next; without
	// its record (no controller answers now) the record appears when the
	// controller folds its first event.
	if rep, err := c.service(ctx, &wire.AsyncServiceRequest{Op: wire.AsyncOpRecord, Record: &rec}); err == nil && rep.Record != nil {
		return c.status(ctx, rep)
	}
	return statusOf(&rec), nil
}

// OpenRequestStream makes deployment's stored-request stream and consumer
// if they are not there. A deployment gets them on its first stored
// request (Submit calls this when the broker has no stream for it), so
// that deployments never sent one cost the broker nothing; call it ahead
// to take that step off the first submission. It fails with ErrNoAsync
// when there is no such deployment.
func (c *Client) OpenRequestStream(ctx context.Context, deployment string) error {
	if err := wire.ValidateName("deployment", deployment); err != nil {
		return err
	}
	ctx, cancel := c.opCtx(ctx)
	defer cancel()
	if _, err := c.ask(ctx, &wire.AsyncServiceRequest{Op: wire.AsyncOpOpen, Deployment: deployment}); err != nil {
		if errors.Is(err, ErrRequestNotFound) {
			return fmt.Errorf("%s: %w (no such deployment)", deployment, ErrNoAsync)
		}
		return fmt.Errorf("%s: making its request stream: %w", deployment, err)
	}
	return nil
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

// Request returns a stored request's status. Whoever knows the id may
// read it (ids are bearer capabilities).
func (c *Client) Request(ctx context.Context, id string) (*RequestStatus, error) {
	if !wire.ValidAsyncID(id) {
		return nil, fmt.Errorf("request %.40q: %w", id, ErrRequestNotFound)
	}
	ctx, cancel := c.opCtx(ctx)
	defer cancel()
	rep, err := c.ask(ctx, &wire.AsyncServiceRequest{Op: wire.AsyncOpGet, ID: id})
	if err != nil {
		return nil, err
	}
	return c.status(ctx, rep)
}

// Cancel cancels a stored request: a queued one never runs, a running one
// sees its context cancelled. A request that has ended is left as it is.
// It returns the status after the cancel.
func (c *Client) Cancel(ctx context.Context, id string) (*RequestStatus, error) {
	if !wire.ValidAsyncID(id) {
		return nil, fmt.Errorf("request %.40q: %w", id, ErrRequestNotFound)
	}
	ctx, cancel := c.opCtx(ctx)
	defer cancel()
	rep, err := c.ask(ctx, &wire.AsyncServiceRequest{Op: wire.AsyncOpCancel, ID: id})
	if err != nil {
		return nil, err
	}
	return c.status(ctx, rep)
}

// ErrListNeedsAdmin: listing stored requests takes the operator's (admin)
// credentials.
var ErrListNeedsAdmin = errors.New("listing stored requests takes the admin credentials (request ids are bearer capabilities)")

// ListRequests returns the stored requests of deployment ("" for all),
// at most limit (0: 1000), in no particular order. It reads the requests
// bucket itself, which only the admin credentials may: any other identity
// gets ErrListNeedsAdmin.
func (c *Client) ListRequests(ctx context.Context, deployment string, limit int) ([]*RequestStatus, error) {
	if limit <= 0 {
		limit = 1000
	}
	ctx, cancel := c.opCtx(ctx)
	defer cancel()
	js, err := c.jetStream()
	if err != nil {
		return nil, err
	}
	kv, err := c.requestsBucket(ctx, js)
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
		if wire.UnmarshalJSON(e.Value(), &r) != nil || (deployment != "" && r.Deployment != deployment) {
			continue
		}
		r.Result = nil // listing: statuses only
		r.ResultObject = false
		out = append(out, statusOf(&r))
	}
	return out, nil
}

// requestsBucket opens the requests bucket. A JetStream request the
// broker denies is never answered, but the broker reports the violation
// on the connection at once: that ends the wait with ErrListNeedsAdmin.
func (c *Client) requestsBucket(ctx context.Context, js jetstream.JetStream) (jetstream.KeyValue, error) {
	info := "$JS.API.STREAM.INFO.KV_" + wire.BucketRequests
	denied := func() error {
		if e := c.nc.LastError(); e != nil && errors.Is(e, nats.ErrPermissionViolation) && strings.Contains(e.Error(), info) {
			return fmt.Errorf("%w: %v", ErrListNeedsAdmin, e)
		}
		return nil
	}
	if err := denied(); err != nil {
		return nil, err
	}
	octx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	type opened struct {
		kv  jetstream.KeyValue
		err error
	}
	ch := make(chan opened, 1)
	go func() {
		kv, err := js.KeyValue(octx, wire.BucketRequests)
		ch <- opened{kv, err}
	}()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case o := <-ch:
			if o.err != nil {
				if err := denied(); err != nil {
					return nil, err
				}
				return nil, fmt.Errorf("stored requests: opening %s (is a controller running? listing takes the admin credentials): %w", wire.BucketRequests, o.err)
			}
			return o.kv, nil
		case <-tick.C:
			if err := denied(); err != nil {
				cancel()
				<-ch
				return nil, err
			}
		}
	}
}

// waitSlice bounds one wait request to the requests service; Wait asks
// again until the request ends or ctx does.
const waitSlice = 20 * time.Second

// Wait waits until the stored request id has ended (or ctx ends) and
// returns its final status. A request not stored yet (a submission in
// flight) is waited for too; ctx bounds it.
func (c *Client) Wait(ctx context.Context, id string) (*RequestStatus, error) {
	if !wire.ValidAsyncID(id) {
		return nil, fmt.Errorf("request %.40q: %w", id, ErrRequestNotFound)
	}
	for {
		slice := waitSlice
		if dl, ok := ctx.Deadline(); ok {
			slice = min(slice, time.Until(dl))
		}
		wctx, cancel := context.WithTimeout(ctx, slice+5*time.Second)
		rep, err := c.ask(wctx, &wire.AsyncServiceRequest{Op: wire.AsyncOpWait, ID: id, WaitMS: int(slice / time.Millisecond)})
		var st *RequestStatus
		if err == nil {
			st, err = c.status(wctx, rep)
		}
		cancel()
		switch {
		case ctx.Err() != nil:
			return nil, fmt.Errorf("request %s: %w", id, ctx.Err())
		case err == nil && st.Done():
			return st, nil
		case err != nil && !errors.Is(err, ErrRequestNotFound) && !errors.Is(err, context.DeadlineExceeded):
			return nil, err
		case err != nil && errors.Is(err, ErrRequestNotFound):
			// Not recorded yet: look again shortly.
			select {
			case <-ctx.Done():
				return nil, fmt.Errorf("request %s: %w", id, ctx.Err())
			case <-time.After(50 * time.Millisecond):
			}
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
	if err := wire.UnmarshalJSON(e.Value(), &r); err != nil {
		return fmt.Errorf("%s: reading its callback_urls: %w", deployment, err)
	}
	spec := DeploymentSpec{CallbackURLs: r.CallbackURLs}
	if !spec.CallbackAllowed(url) {
		return fmt.Errorf("%s: %w: %.80s is not under the deployment's callback_urls", deployment, ErrCallbackNotAllowed, url)
	}
	return nil
}
