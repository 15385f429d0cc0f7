package worker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"runtime/debug"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/natserve/natserve/internal/wire"
)

// Streaming methods return a Go iterator, iter.Seq[T] or
// iter.Seq2[T, error]; each item travels to the caller as it is produced
// (see wire.HeaderStream for the frames). A Seq2 that yields an error ends
// the stream with it.

// streamShape reports whether t is iter.Seq[T] or iter.Seq2[T, error] (or
// a named type of that shape) and returns T.
func streamShape(t reflect.Type) (elem reflect.Type, two, ok bool) {
	if t == nil || t.Kind() != reflect.Func || t.NumIn() != 1 || t.NumOut() != 0 || t.IsVariadic() {
		return nil, false, false
	}
	y := t.In(0)
	if y.Kind() != reflect.Func || y.NumOut() != 1 || y.Out(0).Kind() != reflect.Bool {
		return nil, false, false
	}
	switch {
	case y.NumIn() == 1:
		return y.In(0), false, true
	case y.NumIn() == 2 && y.In(1) == errType:
		return y.In(0), true, true
	}
	return nil, false, false
}

// errNoCredit ends a stream whose caller granted no credit for too long.
var errNoCredit = errors.New("the caller granted no credit")

// noCreditWait bounds the wait for credit of a request without a budget.
const noCreditWait = time.Minute

// replicaStream is one stream being sent.
type replicaStream struct {
	r      *Replica
	reply  string
	isHTTP bool
	cancel context.CancelFunc
	gap    time.Duration // the longest wait for credit

	credit atomic.Int64
	wake   chan struct{}

	mu         sync.Mutex // guards seq, creditSubj (sent with the first frame), lastSent
	seq        uint64
	creditSubj string
	lastSent   time.Time
}

func (s *replicaStream) onCredit(m *nats.Msg) {
	if string(m.Data) == wire.StreamCancel {
		s.cancel()
		return
	}
	n, err := strconv.Atoi(string(m.Data))
	if err != nil || n <= 0 || n > wire.MaxStreamWindow {
		return
	}
	s.credit.Add(int64(n))
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// send publishes a frame; seq tells whether it takes a sequence number.
func (s *replicaStream) send(h nats.Header, data []byte, seq bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if seq {
		h[wire.HeaderSeq] = []string{strconv.FormatUint(s.seq, 10)}
		s.seq++
	}
	if s.creditSubj != "" {
		h[wire.HeaderCredit] = []string{s.creditSubj}
		s.creditSubj = ""
	}
	s.lastSent = time.Now()
	if err := s.r.nc.PublishMsg(&nats.Msg{Subject: s.reply, Header: h, Data: data}); err != nil {
		s.r.log.Warn("stream frame not sent", "err", err)
	}
}

// firstBeatAfter: a stream whose first item is not sent by then sends a
// beat, so that its caller learns early where a cancel goes (the credit
// subject travels with the first frame): a client that leaves while the
// first item is awaited frees the slot at once. Not for WebSockets: their
// handler may still answer with a plain reply, which must come first.
const firstBeatAfter = 20 * time.Millisecond

func (s *replicaStream) beats(done <-chan struct{}, early bool) {
	if early {
		first := time.NewTimer(firstBeatAfter)
		select {
		case <-done:
			first.Stop()
			return
		case <-first.C:
		}
		s.mu.Lock()
		none := s.creditSubj != "" // not sent yet: no frame went out
		s.mu.Unlock()
		if none {
			s.send(nats.Header{wire.HeaderFrame: {wire.FrameBeat}}, nil, false)
		}
	}
	t := time.NewTicker(wire.StreamBeatInterval / 2)
	defer t.Stop()
	for {
		select {
		case <-done:
			return
		case <-t.C:
			s.mu.Lock()
			idle := time.Since(s.lastSent) >= wire.StreamBeatInterval
			s.mu.Unlock()
			if idle {
				s.send(nats.Header{wire.HeaderFrame: {wire.FrameBeat}}, nil, false)
			}
		}
	}
}

// item waits for credit and sends v.
func (s *replicaStream) item(ctx context.Context, v any) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if s.credit.Load() <= 0 {
		t := time.NewTimer(s.gap)
		for s.credit.Load() <= 0 {
			select {
			case <-ctx.Done():
				t.Stop()
				return ctx.Err()
			case <-t.C:
				return errNoCredit
			case <-s.wake:
			}
		}
		t.Stop()
	}
	s.credit.Add(-1)
	var data []byte
	var err error
	if s.isHTTP {
		data, err = json.Marshal(v)
	} else {
		data, err = wire.MarshalValue(v)
	}
	if err != nil {
		return &encodeError{err}
	}
	s.send(nats.Header{}, data, true)
	return nil
}

type encodeError struct{ err error }

func (e *encodeError) Error() string { return "encoding an item: " + e.err.Error() }

// serveStream runs a streaming method for a stream request and sends its
// items. The call holds its slot (max_ongoing_requests) until the stream
// ends.
func (r *Replica) serveStream(m *nats.Msg, oc *outcome, meth *method, window int, timeout time.Duration, ctx context.Context, invoke func(context.Context) (any, error), isHTTP bool, id string) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	s := &replicaStream{r: r, reply: m.Reply, isHTTP: isHTTP, cancel: cancel, gap: timeout, wake: make(chan struct{}, 1)}
	if s.gap <= 0 {
		s.gap = noCreditWait
	}
	s.credit.Store(int64(window))
	s.creditSubj = r.nc.NewInbox()
	sub, err := r.nc.Subscribe(s.creditSubj, s.onCredit)
	if err != nil {
		r.fail(oc, m, wire.CodeInternal, "stream: subscribing for credit: "+err.Error())
		return
	}
	defer func() { _ = sub.Unsubscribe() }()
	done := make(chan struct{})
	defer close(done)
	s.mu.Lock()
	s.lastSent = time.Now()
	s.mu.Unlock()
	go s.beats(done, true)

	fail := func(code wire.Code, text string) {
		if oc != nil {
			oc.code, oc.text = code, text
		}
		if len(text) > 4096 {
			text = text[:4096] + "…"
		}
		s.send(nats.Header{wire.HeaderFrame: {wire.FrameError}, wire.HeaderCode: {string(code)}, wire.HeaderError: {text},
			wire.HeaderProto: {wire.ProtoVersion}, wire.HeaderReplica: {r.spec.Replica}}, nil, true)
	}
	result, err := invoke(ctx)
	if err != nil {
		var pe *PanicError
		if errors.As(err, &pe) {
			r.log.Error("method panicked", "method", meth.name, "request_id", id, "panic", fmt.Sprint(pe.Value), "stack", string(pe.Stack))
			fail(wire.CodePanic, pe.Error())
			return
		}
		fail(wire.CodeUser, err.Error())
		return
	}
	seq := reflect.ValueOf(result)
	var stop error // why the stream stopped early
	if seq.IsValid() && !seq.IsNil() {
		yield := reflect.MakeFunc(seq.Type().In(0), func(args []reflect.Value) []reflect.Value {
			if stop == nil && meth.stream2 {
				if e := args[1]; !e.IsNil() {
					stop = e.Interface().(error)
				}
			}
			if stop == nil {
				stop = s.item(ctx, args[0].Interface())
			}
			return []reflect.Value{reflect.ValueOf(stop == nil)}
		})
		func() {
			defer func() {
				if p := recover(); p != nil {
					stop = &PanicError{Value: p, Stack: debug.Stack()}
				}
			}()
			seq.Call([]reflect.Value{yield})
		}()
	}
	var pe *PanicError
	var ee *encodeError
	switch {
	case stop == nil:
		s.send(nats.Header{wire.HeaderFrame: {wire.FrameEnd}}, nil, true)
	case errors.As(stop, &pe):
		r.log.Error("method panicked", "method", meth.name, "request_id", id, "panic", fmt.Sprint(pe.Value), "stack", string(pe.Stack))
		fail(wire.CodePanic, pe.Error())
	case errors.As(stop, &ee):
		fail(wire.CodeInternal, fmt.Sprintf("%s.%s: %v", r.cls.name, meth.name, ee))
	case errors.Is(stop, errNoCredit):
		fail(wire.CodeDeadline, fmt.Sprintf("%v for %v", stop, s.gap))
	case ctx.Err() != nil:
		fail(wire.CodeDeadline, "stream cancelled: "+ctx.Err().Error()) // the caller is gone or asked
	default:
		fail(wire.CodeUser, stop.Error())
	}
}
