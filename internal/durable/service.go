package durable

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/natserve/natserve/internal/wire"
)

// The requests service: what callers may do with stored requests' records,
// one request at a time and only by its id (or by the idempotency key
// that maps to it). Request ids are bearer capabilities, and a NATS
// permission cannot tell one record's key from a wildcard over all of
// them (a "req.*" token in a consumer filter, a direct get or a
// subscription matches an allow-list entry "req.*" as well as a real
// id), so callers get no access to the requests bucket, the results
// stream or the result object store at all: the controller processes
// answer wire.AsyncServiceSubject with their own identity, and there is
// no list operation. Listing is an operator's (admin credentials) read of
// the bucket itself.
//
// Every controller process serves it (leader or not), in one queue group,
// so records stay readable while the lease moves.

// maxConcurrent bounds the requests the service handles at once per
// process (each is a few KV round trips), and maxWaiting the waits (each
// holds a KV watch until its record ends or its time is up) apart from
// them, so that many waiters never hold up submissions and reads.
const (
	maxConcurrent = 512
	maxWaiting    = 1024
)

// maxWait bounds one wait operation; callers ask again.
const maxWait = 30 * time.Second

// chunkSize is the part of a large result one chunk operation returns.
const chunkSize = 512 << 10

// Opener makes a deployment's request stream and consumer if they are not
// there (wire.AsyncOpOpen), from its spec as stored. It returns an error
// wrapping ErrNoDeployment when there is no such deployment.
type Opener func(ctx context.Context, deployment string) error

// ErrNoDeployment is what an Opener returns for a deployment that does not
// exist (or is a graph, which takes no stored requests).
var ErrNoDeployment = errors.New("no such deployment")

// Serve answers the requests service on nc until ctx ends. It opens the
// requests bucket and the result object store as they appear (the leading
// controller creates them), answering "not ready" meanwhile. open makes
// request streams on demand (wire.AsyncOpOpen).
func Serve(ctx context.Context, nc *nats.Conn, log *slog.Logger, open Opener) error {
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	s := &service{nc: nc, js: js, log: log, open: open}
	short, waits := make(chan struct{}, maxConcurrent), make(chan struct{}, maxWaiting)
	var wg sync.WaitGroup
	sub, err := nc.QueueSubscribe(wire.AsyncServiceSubject, wire.AsyncServiceQueue, func(m *nats.Msg) {
		if m.Reply == "" {
			return
		}
		sem := short
		if isWait(m.Data) {
			sem = waits
		}
		select {
		case sem <- struct{}{}:
		default:
			s.respond(m, &wire.AsyncServiceReply{Code: wire.AsyncCodeBusy, Error: "the requests service is busy; try again"})
			return
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			s.handle(ctx, m)
		}()
	})
	if err != nil {
		return fmt.Errorf("requests service: %w", err)
	}
	<-ctx.Done()
	_ = sub.Unsubscribe()
	wg.Wait()
	return nil
}

// isWait tells a wait operation from the others without decoding the
// request (a wrong guess only picks the other limit).
func isWait(b []byte) bool { return bytes.Contains(b, []byte(`"op":"`+wire.AsyncOpWait+`"`)) }

type service struct {
	nc   *nats.Conn
	js   jetstream.JetStream
	log  *slog.Logger
	open Opener

	mu  sync.Mutex // guards kv, obj
	kv  jetstream.KeyValue
	obj jetstream.ObjectStore
}

func (s *service) bucket(ctx context.Context) (jetstream.KeyValue, error) {
	s.mu.Lock()
	kv := s.kv
	s.mu.Unlock()
	if kv != nil {
		return kv, nil
	}
	kv, err := s.js.KeyValue(ctx, wire.BucketRequests)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	s.kv = kv
	s.mu.Unlock()
	return kv, nil
}

func (s *service) objects(ctx context.Context) (jetstream.ObjectStore, error) {
	s.mu.Lock()
	obj := s.obj
	s.mu.Unlock()
	if obj != nil {
		return obj, nil
	}
	obj, err := s.js.ObjectStore(ctx, wire.ObjectResults)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	s.obj = obj
	s.mu.Unlock()
	return obj, nil
}

func (s *service) respond(m *nats.Msg, rep *wire.AsyncServiceReply) {
	b, err := json.Marshal(rep)
	if err == nil && len(b) > int(s.nc.MaxPayload())-1024 && rep.Record != nil && len(rep.Record.Result) > 0 {
		// Too large for one reply: the caller fetches the result in chunks.
		rep.ResultSize, rep.Record.Result = len(rep.Record.Result), nil
		b, err = json.Marshal(rep)
	}
	if err != nil {
		b, _ = json.Marshal(&wire.AsyncServiceReply{Code: wire.AsyncCodeInternal, Error: err.Error()})
	}
	_ = m.Respond(b)
}

func fail(code, format string, args ...any) *wire.AsyncServiceReply {
	return &wire.AsyncServiceReply{Code: code, Error: fmt.Sprintf(format, args...)}
}

func (s *service) handle(ctx context.Context, m *nats.Msg) {
	req, rep := decodeRequest(m.Data)
	if rep != nil {
		s.respond(m, rep)
		return
	}
	limit := 10 * time.Second
	if req.Op == wire.AsyncOpWait {
		limit = maxWait + 5*time.Second
	}
	rctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	kv, err := s.bucket(rctx)
	if err != nil {
		s.respond(m, fail(wire.AsyncCodeNotReady, "the requests bucket is not ready: %v", err))
		return
	}
	switch req.Op {
	case wire.AsyncOpRecord:
		rep = s.record(rctx, kv, req.Record)
	case wire.AsyncOpClaim:
		rep = s.claim(rctx, kv, req)
	case wire.AsyncOpRelease:
		rep = s.release(rctx, kv, req)
	case wire.AsyncOpGet:
		rep = s.get(rctx, kv, req.ID)
	case wire.AsyncOpWait:
		rep = s.wait(rctx, kv, req.ID, time.Duration(req.WaitMS)*time.Millisecond)
	case wire.AsyncOpCancel:
		rep = s.cancel(rctx, kv, req.ID)
	case wire.AsyncOpChunk:
		rep = s.chunk(rctx, req.ID, req.Offset)
	case wire.AsyncOpOpen:
		rep = s.openStream(rctx, req.Deployment)
	}
	s.respond(m, rep)
}

// openStream makes deployment's request stream and consumer (the first
// stored request to a deployment asks for them; see controlplane/async.go).
func (s *service) openStream(ctx context.Context, deployment string) *wire.AsyncServiceReply {
	if s.open == nil {
		return fail(wire.AsyncCodeNotReady, "this controller does not make request streams")
	}
	if err := s.open(ctx, deployment); err != nil {
		if errors.Is(err, ErrNoDeployment) {
			return fail(wire.AsyncCodeNotFound, "deployment %q not found", deployment)
		}
		return fail(wire.AsyncCodeNotReady, "making the request stream of %q: %.200s", deployment, oneLine(err.Error()))
	}
	return &wire.AsyncServiceReply{}
}

// decodeRequest decodes and checks a request from outside: a request it
// returns has a known operation and the fields that operation needs in
// their shapes; anything else is a one-line error reply.
func decodeRequest(b []byte) (*wire.AsyncServiceRequest, *wire.AsyncServiceReply) {
	if len(b) > wire.MaxAsyncServiceRequest {
		return nil, fail(wire.AsyncCodeInvalid, "request of %d bytes is over the %d byte limit", len(b), wire.MaxAsyncServiceRequest)
	}
	var req wire.AsyncServiceRequest
	if err := wire.UnmarshalJSON(b, &req); err != nil {
		return nil, fail(wire.AsyncCodeInvalid, "request: %.200s", oneLine(err.Error()))
	}
	switch req.Op {
	case wire.AsyncOpRecord:
		if !newRecord(req.Record) {
			return nil, fail(wire.AsyncCodeInvalid, "record: not a new queued request")
		}
	case wire.AsyncOpClaim, wire.AsyncOpRelease:
		if _, rep := idemKey(&req); rep != nil {
			return nil, rep
		}
	case wire.AsyncOpOpen:
		if err := wire.ValidateName("deployment", req.Deployment); err != nil {
			return nil, fail(wire.AsyncCodeInvalid, "%.200s", oneLine(err.Error()))
		}
	case wire.AsyncOpGet, wire.AsyncOpWait, wire.AsyncOpCancel, wire.AsyncOpChunk:
		if !wire.ValidAsyncID(req.ID) {
			return nil, fail(wire.AsyncCodeNotFound, "request %.40q: no such request", oneLine(req.ID))
		}
		if req.Offset < 0 || req.WaitMS < 0 {
			return nil, fail(wire.AsyncCodeInvalid, "negative offset or wait")
		}
	default:
		return nil, fail(wire.AsyncCodeInvalid, "unknown operation %.20q (want record, claim, release, get, wait, cancel, chunk or open)", oneLine(req.Op))
	}
	return &req, nil
}

func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }

// newRecord reports whether r is a submission's new queued record.
func newRecord(r *wire.AsyncRecord) bool {
	return r != nil && wire.ValidAsyncID(r.ID) && wire.ValidateName("deployment", r.Deployment) == nil && r.Status == wire.AsyncQueued &&
		r.Attempts == 0 && len(r.Result) == 0 && !r.ResultObject && r.Error == "" && (r.Kind == wire.KindHTTP || r.Kind == wire.KindCall)
}

// read returns request id's record and revision (nil when there is none).
func read(ctx context.Context, kv jetstream.KeyValue, id string) (*wire.AsyncRecord, uint64, *wire.AsyncServiceReply) {
	if !wire.ValidAsyncID(id) {
		return nil, 0, fail(wire.AsyncCodeNotFound, "request %.40q: no such request", id)
	}
	e, err := kv.Get(ctx, wire.AsyncRecordKey(id))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, 0, fail(wire.AsyncCodeNotFound, "request %s: no such request", id)
	}
	if err != nil {
		return nil, 0, fail(wire.AsyncCodeNotReady, "request %s: %v", id, err)
	}
	var r wire.AsyncRecord
	if err := wire.UnmarshalJSON(e.Value(), &r); err != nil {
		return nil, 0, fail(wire.AsyncCodeInternal, "request %s: bad record: %v", id, err)
	}
	return &r, e.Revision(), nil
}

// public is a record as callers see it: no callback, no stream sequence.
func public(r *wire.AsyncRecord) *wire.AsyncServiceReply {
	c := *r
	c.Callback, c.Seq = "", 0
	return &wire.AsyncServiceReply{ID: c.ID, Record: &c}
}

// record creates a submission's queued record (a record that exists
// already — the controller folded an event first — is returned as it is).
func (s *service) record(ctx context.Context, kv jetstream.KeyValue, r *wire.AsyncRecord) *wire.AsyncServiceReply {
	if !newRecord(r) {
		return fail(wire.AsyncCodeInvalid, "record: not a new queued request")
	}
	r.Started, r.Finished = time.Time{}, time.Time{}
	b, _ := json.Marshal(r)
	if _, err := kv.Create(ctx, wire.AsyncRecordKey(r.ID), b); err != nil {
		if errors.Is(err, jetstream.ErrKeyExists) {
			return s.get(ctx, kv, r.ID)
		}
		return fail(wire.AsyncCodeNotReady, "request %s: storing its record: %v", r.ID, err)
	}
	return public(r)
}

func idemKey(req *wire.AsyncServiceRequest) (string, *wire.AsyncServiceReply) {
	if wire.ValidateName("deployment", req.Deployment) != nil || !wire.ValidIdemHash(req.IdemHash) || !wire.ValidAsyncID(req.ID) {
		return "", fail(wire.AsyncCodeInvalid, "idempotency key: want a deployment, a key hash and an id")
	}
	return wire.AsyncIdemKeyOfHash(req.Deployment, req.IdemHash), nil
}

// claim maps an idempotency key to req.ID, or returns the id (and, if
// recorded, the status) it maps to already.
func (s *service) claim(ctx context.Context, kv jetstream.KeyValue, req *wire.AsyncServiceRequest) *wire.AsyncServiceReply {
	key, rep := idemKey(req)
	if rep != nil {
		return rep
	}
	if _, err := kv.Create(ctx, key, []byte(req.ID)); err == nil {
		return &wire.AsyncServiceReply{ID: req.ID, Claimed: true}
	} else if !errors.Is(err, jetstream.ErrKeyExists) {
		return fail(wire.AsyncCodeNotReady, "storing the idempotency key: %v", err)
	}
	e, err := kv.Get(ctx, key)
	if err != nil {
		return fail(wire.AsyncCodeNotReady, "reading the idempotency key: %v", err)
	}
	id := string(e.Value())
	if r, _, _ := read(ctx, kv, id); r != nil {
		return public(r)
	}
	// The first submitter has not stored its record (yet, or it died):
	// the caller stores the request under this id; JetStream's duplicate
	// window drops a second copy of the message.
	return &wire.AsyncServiceReply{ID: id}
}

// release undoes a claim whose request could not be stored.
func (s *service) release(ctx context.Context, kv jetstream.KeyValue, req *wire.AsyncServiceRequest) *wire.AsyncServiceReply {
	key, rep := idemKey(req)
	if rep != nil {
		return rep
	}
	e, err := kv.Get(ctx, key)
	if err != nil || string(e.Value()) != req.ID {
		return &wire.AsyncServiceReply{ID: req.ID}
	}
	_ = kv.Delete(ctx, key, jetstream.LastRevision(e.Revision()))
	return &wire.AsyncServiceReply{ID: req.ID}
}

func (s *service) get(ctx context.Context, kv jetstream.KeyValue, id string) *wire.AsyncServiceReply {
	r, _, rep := read(ctx, kv, id)
	if rep != nil {
		return rep
	}
	return s.withResult(ctx, r)
}

// withResult puts a result kept in the object store into the reply.
func (s *service) withResult(ctx context.Context, r *wire.AsyncRecord) *wire.AsyncServiceReply {
	if r.ResultObject {
		obj, err := s.objects(ctx)
		if err != nil {
			return fail(wire.AsyncCodeNotReady, "request %s: opening the result store: %v", r.ID, err)
		}
		b, err := obj.GetBytes(ctx, r.ID)
		if err != nil {
			return fail(wire.AsyncCodeNotReady, "request %s: reading its result: %v", r.ID, err)
		}
		r.Result, r.ResultObject = b, false
	}
	return public(r)
}

// wait answers once request id has ended, or after d (at most maxWait)
// with its status then.
func (s *service) wait(ctx context.Context, kv jetstream.KeyValue, id string, d time.Duration) *wire.AsyncServiceReply {
	if !wire.ValidAsyncID(id) {
		return fail(wire.AsyncCodeNotFound, "request %.40q: no such request", id)
	}
	d = min(max(d, 0), maxWait)
	wctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	w, err := kv.Watch(wctx, wire.AsyncRecordKey(id))
	if err != nil {
		return s.get(ctx, kv, id)
	}
	defer func() { _ = w.Stop() }()
	for {
		select {
		case <-wctx.Done():
			return s.get(ctx, kv, id)
		case e, ok := <-w.Updates():
			if !ok {
				return s.get(ctx, kv, id)
			}
			if e == nil || e.Operation() != jetstream.KeyValuePut {
				continue // not stored yet (a submission in flight), or gone
			}
			var r wire.AsyncRecord
			if wire.UnmarshalJSON(e.Value(), &r) != nil || !wire.AsyncTerminal(r.Status) {
				continue
			}
			return s.withResult(ctx, &r)
		}
	}
}

// cancel cancels a queued or running request; one that has ended is
// returned as it is.
func (s *service) cancel(ctx context.Context, kv jetstream.KeyValue, id string) *wire.AsyncServiceReply {
	for ctx.Err() == nil {
		r, rev, rep := read(ctx, kv, id)
		if rep != nil {
			return rep
		}
		if wire.AsyncTerminal(r.Status) {
			return s.withResult(ctx, r)
		}
		r.Status, r.Finished, r.Error = wire.AsyncCancelled, time.Now().UTC(), "cancelled"
		b, _ := json.Marshal(r)
		if _, err := kv.Update(ctx, wire.AsyncRecordKey(id), b, rev); err != nil {
			if errors.Is(err, jetstream.ErrKeyExists) {
				continue // changed meanwhile: look again
			}
			return fail(wire.AsyncCodeNotReady, "request %s: %v", id, err)
		}
		// A replica running it cancels its context; a queued one is
		// taken out of the stream (a replica that has fetched it already
		// drops it on the cancel notice).
		_ = s.nc.Publish(wire.AsyncCancelSubject(r.Deployment), []byte(id))
		if r.Seq > 0 {
			s.unqueue(ctx, r)
		}
		return public(r)
	}
	return fail(wire.AsyncCodeNotReady, "request %s: %v", id, ctx.Err())
}

// chunk returns part of a large result, from offset.
func (s *service) chunk(ctx context.Context, id string, offset int) *wire.AsyncServiceReply {
	kv, err := s.bucket(ctx)
	if err != nil {
		return fail(wire.AsyncCodeNotReady, "%v", err)
	}
	rep := s.get(ctx, kv, id)
	if rep.Record == nil {
		return rep
	}
	res := rep.Record.Result
	if offset < 0 || offset > len(res) {
		return fail(wire.AsyncCodeInvalid, "request %s: offset %d outside its result of %d bytes", id, offset, len(res))
	}
	end := min(len(res), offset+chunkSize)
	return &wire.AsyncServiceReply{ID: id, Chunk: res[offset:end], ResultSize: len(res)}
}

// unqueue takes a cancelled request's message out of its stream, only if
// the message at the record's sequence is that request's: a record is the
// submitter's word, and a forged one must not delete another's request.
func (s *service) unqueue(ctx context.Context, r *wire.AsyncRecord) {
	st, err := s.js.Stream(ctx, wire.AsyncStream(r.Deployment))
	if err != nil {
		return
	}
	m, err := st.GetMsg(ctx, r.Seq)
	if err != nil || m.Header.Get(wire.HeaderRequestID) != r.ID {
		return
	}
	_ = st.DeleteMsg(ctx, r.Seq)
}
