package client

import (
	"context"
	"errors"
	"fmt"
	"io"
	"iter"
	"strconv"

	"time"

	"github.com/nats-io/nats.go"
	"github.com/natserve/natserve/internal/wire"
)

// codeReplicaDied: the replica holding the stream went silent.
const codeReplicaDied wire.Code = "replica_died"

// ErrStreamEnd is what Stream.Next returns after the last item.
var ErrStreamEnd = io.EOF

// ItemStream reads the items of a streaming method as they come (see
// wire.HeaderStream for the frames). It checks their sequence numbers
// (loss, reordering and duplicates), grants the replica credit as items
// are read (so a slow reader makes the replica wait and holds at most the
// window), takes the replica for dead after wire.StreamDeadAfter without a
// frame, and fails when an item takes longer than the gap budget. Close
// cancels the stream at the replica. An ItemStream is used by one goroutine.
type ItemStream struct {
	c          *Client
	deployment string
	method     string
	ctx        context.Context
	gap        time.Duration
	window     int

	sub     *nats.Subscription
	ch      chan *nats.Msg
	first   *nats.Msg // the frame that opened the stream, not read yet
	single  bool      // the method does not stream: its reply is the one item
	next    uint64
	credit  string // where credit and cancel go
	used    int    // items read since the last grant
	last    time.Time
	item    time.Time
	replica string
	done    bool
	err     error

	idle    time.Duration // WithKeepAlive
	lastOut time.Time     // when Next last returned
	grace   int           // silences forgiven in a row because this side was starved (starved)

	// Dups counts duplicate frames dropped.
	Dups int
}

// ErrIdle is what Next returns, when WithKeepAlive asks for it, after the
// keep-alive interval without an item; the stream goes on.
var ErrIdle = errors.New("no item for the keep-alive interval")

// WithKeepAlive makes Next return ErrIdle after d without an item (an SSE
// writer then sends a comment line, so that proxies keep the connection).
func WithKeepAlive(d time.Duration) StreamOption {
	return func(s *ItemStream) { s.idle = d }
}

// StreamOption tunes OpenStream.
type StreamOption func(*ItemStream)

// WithStreamWindow sets how many items the replica may send ahead of the
// reader (default wire.DefaultStreamWindow).
func WithStreamWindow(n int) StreamOption {
	return func(s *ItemStream) { s.window = min(max(n, 1), wire.MaxStreamWindow) }
}

// WithItemTimeout sets the budget for the first item and for each gap
// between items (default Options.Timeout).
func WithItemTimeout(d time.Duration) StreamOption {
	return func(s *ItemStream) { s.gap = d }
}

// OpenStream sends msg (subject, headers and payload set) to the deployment
// as a stream request and waits for the stream to start. Busy replicas are
// retried as RequestMsg does. The caller must Close the stream. As with
// RequestMsg, msg's Natserve-* headers travel inside the payload's envelope
// (wire.RequestMeta); msg's reply subject is set.
func (c *Client) OpenStream(ctx context.Context, deployment, method string, msg *nats.Msg, opts ...StreamOption) (*ItemStream, error) {
	s := &ItemStream{c: c, deployment: deployment, method: method, ctx: ctx, gap: c.opts.Timeout, window: wire.DefaultStreamWindow}
	for _, o := range opts {
		o(s)
	}
	s.ch = make(chan *nats.Msg, s.window+64) // items within credit, beats, the end
	inbox := c.nc.NewInbox()
	var err error
	if s.sub, err = c.nc.ChanSubscribe(inbox, s.ch); err != nil {
		return nil, s.fail(wire.CodeInternal, "subscribing: "+err.Error())
	}
	var md wire.RequestMeta
	extra, err := metaFromHeader(msg.Header, &md)
	if err != nil {
		s.Close()
		return nil, s.fail(wire.CodeBadRequest, err.Error())
	}
	md.Stream, md.Timeout = s.window, max(s.gap, time.Microsecond)
	md.AckBy = time.Time{} // a stream's caller takes no acknowledgments
	msg.Reply = inbox
	send := &nats.Msg{Subject: msg.Subject, Reply: inbox, Header: extra,
		Data: append(wire.AppendRequestMeta(make([]byte, 0, md.RequestMetaSize()+len(msg.Data)), &md), msg.Data...)}
	deadline := time.Now().Add(s.gap)
	k := call{c: c, ctx: ctx, deployment: deployment, method: method, deadline: deadline, backoff: time.Millisecond, wq: c.queue.get(deployment)}
	defer k.leave()
	for attempt := 0; ; attempt++ {
		if err := c.nc.PublishMsg(send); err != nil {
			s.Close()
			if errors.Is(err, nats.ErrConnectionClosed) {
				return nil, fmt.Errorf("%s: %w", deployment, ErrClosed)
			}
			return nil, s.fail(wire.CodeInternal, err.Error())
		}
		m, err := s.wait(deadline)
		for err == nil && isAck(m) { // the replica's admission acknowledgment: the frames follow
			m, err = s.wait(deadline)
		}
		if err != nil {
			s.abandon()
			return nil, err
		}
		switch {
		case m.Header.Get("Status") == "503": // no responders
			if err := k.wakeFromZero(); err != nil {
				s.Close()
				return nil, err
			}
			continue
		case m.Header != nil && m.Header.Get(wire.HeaderFrame) == "" && m.Header.Get(wire.HeaderSeq) == "":
			// An error reply before the stream started.
			if final, err := k.outcome(m); final {
				if err == nil { // a plain reply with headers: the one item
					s.single = true
					s.first = m
					return s, nil
				}
				s.Close()
				return nil, err
			}
			if err := k.admit(); err != nil {
				s.Close()
				return nil, err
			}
			if err := k.backoffBusy(ctx, attempt); err != nil {
				s.Close()
				return nil, err
			}
			continue
		case m.Header == nil:
			s.single = true
		}
		s.first = m
		s.last, s.item = time.Now(), time.Now()
		return s, nil
	}
}

// abandonWait bounds how long an abandoned stream waits for its first
// frame (the replica sends one within wire.StreamBeatInterval of starting
// the stream, a beat if no item is ready; worker/stream.go).
const abandonWait = wire.StreamDeadAfter

// abandon ends a stream given up before its first frame came (the ctx
// ended or the wait timed out): the frame that says where a cancel goes
// may still come, so a background goroutine waits for it (at most
// abandonWait) and cancels the stream at the replica, freeing its slot.
func (s *ItemStream) abandon() {
	sub, ch, c := s.sub, s.ch, s.c
	s.sub, s.done, s.err = nil, true, io.EOF
	if sub == nil {
		return
	}
	ok := c.goBackground(func() {
		defer func() { _ = sub.Unsubscribe() }()
		t := time.NewTimer(abandonWait)
		defer t.Stop()
		for {
			select {
			case m := <-ch:
				if m.Header == nil {
					continue // an acknowledgment (or a plain reply: nothing runs)
				}
				if credit := m.Header.Get(wire.HeaderCredit); credit != "" {
					_ = c.nc.Publish(credit, []byte(wire.StreamCancel))
					return
				}
				if m.Header.Get(wire.HeaderFrame) == "" && m.Header.Get(wire.HeaderSeq) == "" {
					return // a reply (busy, an error): nothing runs
				}
			case <-t.C:
				return
			case <-c.ctx.Done():
				return
			}
		}
	})
	if !ok {
		_ = sub.Unsubscribe()
	}
}

// isAck reports whether m is an admission acknowledgment or heartbeat (a
// message without headers whose payload starts with 0xc1, which no reply
// does).
func isAck(m *nats.Msg) bool { return m.Header == nil && len(m.Data) >= 2 && m.Data[0] == 0xc1 }

// wait returns the next message before deadline.
func (s *ItemStream) wait(deadline time.Time) (*nats.Msg, error) {
	t := time.NewTimer(time.Until(deadline))
	defer t.Stop()
	select {
	case m := <-s.ch:
		return m, nil
	case <-s.ctx.Done():
		return nil, s.ctx.Err()
	case <-t.C:
		return nil, s.fail(wire.CodeDeadline, fmt.Sprintf("no item within %v", s.gap))
	}
}

func (s *ItemStream) fail(code wire.Code, text string) error {
	return &Error{Deployment: s.deployment, Method: s.method, Code: string(code), Message: text, Replica: s.replica}
}

// Next returns the next item (msgpack, or JSON for an HTTP request), or
// io.EOF after the last one, or the stream's error.
func (s *ItemStream) Next() ([]byte, error) {
	for {
		if s.done {
			return nil, s.err
		}
		m := s.first
		s.first = nil
		if m == nil {
			// Frames already here first: a reader that paused longer than
			// the silence or gap limits is not a dead replica.
			select {
			case m = <-s.ch:
			default:
			}
		}
		if m == nil {
			now := time.Now()
			if s.idle > 0 {
				if s.lastOut.IsZero() {
					s.lastOut = now
				}
				if now.Sub(s.lastOut) >= s.idle {
					s.lastOut = now
					return nil, ErrIdle
				}
			}
			dead := s.last.Add(wire.StreamDeadAfter)
			gap := s.item.Add(s.gap)
			wait := min(dead.Sub(now), gap.Sub(now))
			if s.idle > 0 {
				wait = min(wait, s.lastOut.Add(s.idle).Sub(now))
			}
			t := time.NewTimer(wait)
			select {
			case m = <-s.ch:
			case <-s.ctx.Done():
				t.Stop()
				return nil, s.finish(s.ctx.Err())
			case <-t.C:
			}
			t.Stop()
			if m == nil {
				now = time.Now()
				if s.idle > 0 && now.Sub(s.lastOut) >= s.idle {
					s.lastOut = now
					return nil, ErrIdle
				}
				if now.After(gap) {
					return nil, s.finish(s.fail(wire.CodeDeadline, fmt.Sprintf("no item within %v", s.gap)))
				}
				if now.After(dead) {
					if s.starved(now.Sub(dead)) {
						continue // frames came, or this side cannot tell: wait on
					}
					if err := s.ctx.Err(); err != nil {
						return nil, s.finish(err)
					}
					return nil, s.finish(s.fail(codeReplicaDied, fmt.Sprintf("the replica sent nothing for %v", wire.StreamDeadAfter)))
				}
				continue
			}
		}
		s.last = time.Now()
		s.grace = 0
		if isAck(m) {
			continue
		}
		if s.single {
			s.done, s.err = true, io.EOF
			if m.Header != nil && m.Header.Get(wire.HeaderCode) != "" {
				s.err = s.fail(wire.Code(m.Header.Get(wire.HeaderCode)), m.Header.Get(wire.HeaderError))
				return nil, s.err
			}
			return m.Data, nil
		}
		if m.Header == nil { // not a frame
			continue
		}
		if c := m.Header.Get(wire.HeaderCredit); c != "" && s.credit == "" {
			s.credit = c
		}
		if r := m.Header.Get(wire.HeaderReplica); r != "" {
			s.replica = r
		}
		frame := m.Header.Get(wire.HeaderFrame)
		if frame == wire.FrameBeat {
			continue
		}
		seq, err := wire.ParseSeq(m.Header.Get(wire.HeaderSeq))
		if err != nil {
			return nil, s.finish(s.fail(wire.CodeProto, err.Error()))
		}
		switch {
		case seq < s.next:
			s.Dups++
			continue
		case seq > s.next:
			return nil, s.finish(s.fail(wire.CodeInternal, fmt.Sprintf("stream lost frames: got %d, want %d", seq, s.next)))
		}
		s.next++
		switch frame {
		case wire.FrameEnd:
			s.done, s.err = true, io.EOF
			s.close()
			return nil, io.EOF
		case wire.FrameError:
			s.done, s.err = true, s.fail(wire.Code(m.Header.Get(wire.HeaderCode)), m.Header.Get(wire.HeaderError))
			s.close()
			return nil, s.err
		}
		s.item = s.last
		s.lastOut = s.last
		if s.used++; s.used >= max(s.window/2, 1) && s.credit != "" {
			_ = s.c.nc.Publish(s.credit, strconv.AppendInt(nil, int64(s.used), 10))
			s.used = 0
		}
		return m.Data, nil
	}
}

// maxStarvedGrace bounds how many times in a row a silent stream is given
// another wire.StreamDeadAfter because this side looked starved.
const maxStarvedGrace = 4

// starvedAfter: a timer that fires this late, or a round trip to the
// server that takes this long, means this process (or its connection) is
// starved: silence seen from here proves nothing about the replica.
const starvedAfter = wire.StreamDeadAfter / 4

// starved is asked when the replica seemed silent for wire.StreamDeadAfter
// (the silence timer fired late by late). A starved caller (1,000 streams
// released at once in one busy process) may not have read frames the
// replica sent in time: they may wait in the connection, unread. A round
// trip to the server (PING/PONG) delivers every frame the server had sent
// before it. It reports whether to wait on: a frame came in the meantime
// (s.last moves on), or this side was starved (the timer fired late, or
// the round trip was slow or failed), a bounded number of times in a row.
// A dead replica whose caller is not starved is still noticed after
// wire.StreamDeadAfter.
func (s *ItemStream) starved(late time.Duration) bool {
	start := time.Now()
	ctx, cancel := context.WithTimeout(s.ctx, wire.StreamDeadAfter)
	err := s.c.nc.FlushWithContext(ctx)
	cancel()
	if len(s.ch) > 0 {
		s.grace = 0
		return true
	}
	if s.ctx.Err() != nil {
		return false
	}
	if (err != nil || late >= starvedAfter || time.Since(start) >= starvedAfter) && s.grace < maxStarvedGrace {
		s.grace++
		s.last = time.Now()
		return true
	}
	return false
}

// finish ends the stream with err and cancels it at the replica.
func (s *ItemStream) finish(err error) error {
	if !s.done {
		s.done, s.err = true, err
		s.cancel()
	}
	s.close()
	return err
}

func (s *ItemStream) cancel() {
	if s.credit != "" && !s.single {
		_ = s.c.nc.Publish(s.credit, []byte(wire.StreamCancel))
		_ = s.c.nc.Flush()
	}
}

func (s *ItemStream) close() {
	if s.sub != nil {
		_ = s.sub.Unsubscribe()
		s.sub = nil
	}
}

// Close stops the stream; if it has not ended, the replica's context is
// cancelled.
func (s *ItemStream) Close() {
	if !s.done {
		s.done, s.err = true, io.EOF
		s.cancel()
	}
	s.close()
}

// Control is the subject where the replica takes credit and cancel (and,
// for a WebSocket, the client's bytes), once the first item is read.
func (s *ItemStream) Control() string { return s.credit }

// SetItemTimeout changes the budget for each later gap between items.
func (s *ItemStream) SetItemTimeout(d time.Duration) { s.gap = d }

// Replica is the replica serving the stream, once known.
func (s *ItemStream) Replica() string { return s.replica }

// Stream calls the streaming method with args and yields its items as they
// come, decoded as any (Stream[T] decodes into T). Breaking out of the loop
// or cancelling ctx cancels the stream at the replica.
func (h *Handle) Stream(ctx context.Context, args ...any) iter.Seq2[any, error] {
	return Stream[any](ctx, h, args...)
}

// Stream calls h's streaming method with args and yields its items as Ts,
// typed like Call[T]:
//
//	for n, err := range client.Stream[int](ctx, h, 5) { … }
//
// The budget (Options.Timeout, or the ctx deadline for the whole stream)
// covers the first item and each gap between items. An error ends the
// sequence.
func Stream[T any](ctx context.Context, h *Handle, args ...any) iter.Seq2[T, error] {
	return func(yield func(T, error) bool) {
		var zero T
		payload, err := wire.MarshalArgs(args)
		if err != nil {
			yield(zero, &Error{Deployment: h.deployment, Method: h.method, Code: string(wire.CodeBadRequest), Message: "encoding the arguments: " + err.Error()})
			return
		}
		msg := &nats.Msg{Subject: h.subject, Data: payload, Header: nats.Header{wire.HeaderKind: {wire.KindCall}}}
		if h.method != "" {
			msg.Header[wire.HeaderMethod] = []string{h.method}
		}
		if id := RequestID(ctx); id != "" {
			msg.Header[wire.HeaderRequestID] = []string{id}
		}
		graph := func(g *GraphSpec) (*ItemStream, error) { // its output node's items (graphrun.go)
			var in any = args
			if len(args) == 1 {
				in = args[0]
			}
			input, err := wire.MarshalValue(in)
			if err != nil {
				return nil, &Error{Deployment: h.deployment, Code: string(wire.CodeBadRequest), Message: "encoding the input: " + err.Error()}
			}
			return h.c.RunGraphStream(ctx, g, input)
		}
		var s *ItemStream
		if g := h.c.cachedGraph(h.deployment); g != nil && h.method == "" {
			s, err = graph(g)
		} else {
			s, err = h.c.OpenStream(ctx, h.deployment, h.method, msg)
			if errors.Is(err, ErrNoReplicas) && h.method == "" {
				// Perhaps a graph: its name has no replicas of its own.
				if g, ok := h.c.Graph(ctx, h.deployment); ok {
					s, err = graph(g)
				}
			}
		}
		if err != nil {
			yield(zero, err)
			return
		}
		defer s.Close()
		for {
			data, err := s.Next()
			if err == io.EOF {
				return
			}
			if err != nil {
				yield(zero, err)
				return
			}
			var v T
			if len(data) > 0 {
				if err := wire.UnmarshalValue(data, &v); err != nil {
					yield(zero, &Error{Deployment: h.deployment, Method: h.method, Code: string(wire.CodeBadRequest), Message: fmt.Sprintf("decoding an item into %T: %v", v, err)})
					return
				}
			}
			if !yield(v, nil) {
				return
			}
		}
	}
}

// Queued is the number of frames received and not read yet (at most the
// window plus a few beats).
func (s *ItemStream) Queued() int { return len(s.ch) }

// Single reports whether the method did not stream: its ordinary reply is
// the one item.
func (s *ItemStream) Single() bool { return s.single }
