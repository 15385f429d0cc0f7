package worker

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/natserve/natserve/client"
	"github.com/natserve/natserve/internal/wire"
)

// WebSockets (see wire.HeaderWebSocket). A deployment that wraps a
// net/http handler (Registry.HTTPHandler) accepts WebSocket upgrades: its
// handler hijacks the ResponseWriter as with net/http (gorilla/websocket's
// Upgrader, coder/websocket's Accept, …) and gets a net.Conn whose bytes
// travel over NATS to and from the ingress, with credit both ways. The
// connection holds its max_ongoing_requests slot until it closes.

// serveWebSocket serves an upgrade request m for the handler of an HTTP
// deployment.
func (r *Replica) serveWebSocket(m *nats.Msg, md *wire.RequestMeta, oc *outcome, req *Request, id string) {
	app, _ := r.recvApp()
	ingressCredit, window := md.WebSocket, md.Stream
	switch {
	case app == nil:
		r.fail(oc, m, wire.CodeBadRequest, fmt.Sprintf("deployment %s does not accept WebSocket upgrades: only a net/http handler (reg.HTTPHandler) does", r.spec.Deployment))
		return
	case window == 0:
		r.fail(oc, m, wire.CodeBadRequest, "a WebSocket upgrade must be sent as a stream")
		return
	case !strings.HasPrefix(ingressCredit, "_INBOX.") || strings.ContainsAny(ingressCredit, " \t*>") || len(ingressCredit) > 256:
		r.fail(oc, m, wire.CodeBadRequest, fmt.Sprintf("%s %.40q: want an inbox", wire.HeaderWebSocket, ingressCredit))
		return
	}
	ctx, cancel := context.WithCancel(client.WithRequestID(context.WithValue(context.Background(), replicaKey, r), id))
	defer cancel()
	s := &replicaStream{r: r, reply: m.Reply, isHTTP: true, cancel: cancel, wake: make(chan struct{}, 1)}
	s.credit.Store(int64(window))
	s.creditSubj = r.nc.NewInbox()
	c := &wsConn{s: s, ctx: ctx, nc: r.nc, ingressCredit: ingressCredit, in: make(chan []byte, wire.WSWindow),
		closed: make(chan struct{}), gone: make(chan struct{}), rkick: make(chan struct{}, 1), wkick: make(chan struct{}, 1)}
	c.heard.Store(time.Now().UnixNano())
	sub, err := r.nc.Subscribe(s.creditSubj, c.onMsg)
	if err != nil {
		r.fail(oc, m, wire.CodeInternal, "websocket: subscribing: "+err.Error())
		return
	}
	defer func() { _ = sub.Unsubscribe() }()
	done := make(chan struct{})
	defer close(done)
	s.mu.Lock()
	s.lastSent = time.Now()
	s.mu.Unlock()
	go s.beats(done, false)
	go c.watch(done)

	hr, err := app.request(ctx, req)
	if err != nil {
		r.fail(oc, m, wire.CodeBadRequest, err.Error())
		return
	}
	// The ingress drops hop-by-hop headers; the handler checks these.
	hr.Header.Set("Connection", "Upgrade")
	hr.Header.Set("Upgrade", "websocket")
	w := &wsWriter{recorder: recorder{header: http.Header{}}, conn: c}
	var pe *PanicError
	func() {
		defer func() {
			if p := recover(); p != nil {
				pe = &PanicError{Value: p, Stack: debug.Stack()}
			}
		}()
		app.h.ServeHTTP(w, hr)
	}()
	if pe != nil {
		r.log.Error("WebSocket handler panicked", "request_id", id, "panic", fmt.Sprint(pe.Value), "stack", string(pe.Stack))
	}
	if !w.hijacked.Load() { // an ordinary answer (the handler refused the upgrade)
		if pe != nil {
			r.fail(oc, m, wire.CodePanic, pe.Error())
			return
		}
		if w.status == 0 {
			w.status = http.StatusOK
		}
		rep := httpReply(&Response{Status: w.status, Header: w.header, Body: w.body.Bytes()})
		rep.Replica = r.id
		r.reply(m, nil, wire.AppendHTTPReply(make([]byte, 0, rep.MaxSize()), &rep))
		return
	}
	if pe != nil {
		_ = c.Close()
	}
	// The connection counts until the handler closed it or the ingress let
	// it go.
	select {
	case <-c.closed:
	case <-c.gone:
	}
	cancel()
	s.send(nats.Header{wire.HeaderFrame: {wire.FrameEnd}}, nil, true)
}

// recvApp returns the replica's wrapped net/http handler, if it is one.
func (r *Replica) recvApp() (*httpApp, bool) {
	if r.inst == nil || !r.inst.recv.IsValid() || !r.inst.recv.CanInterface() {
		return nil, false
	}
	a, ok := r.inst.recv.Interface().(*httpApp)
	return a, ok
}

// wsWriter is the ResponseWriter of an upgrade request: a recorder that
// can be hijacked.
type wsWriter struct {
	recorder
	conn     *wsConn
	hijacked atomic.Bool
}

var errHijacked = errors.New("the connection is already hijacked")

// Hijack hands the handler the connection to the client.
func (w *wsWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	if w.hijacked.Swap(true) {
		return nil, nil, errHijacked
	}
	return w.conn, bufio.NewReadWriter(bufio.NewReader(w.conn), bufio.NewWriter(w.conn)), nil
}

var _ http.Hijacker = (*wsWriter)(nil)

// wsConn is a WebSocket client's connection as the replica's handler sees
// it: reads take the chunks the ingress sends, writes become stream items.
type wsConn struct {
	s             *replicaStream
	ctx           context.Context
	nc            *nats.Conn
	ingressCredit string

	in      chan []byte // chunks within the credit granted to the ingress
	next    uint64      // the next chunk's sequence number (onMsg only)
	heard   atomic.Int64
	rmu     sync.Mutex // Read; guards pending, consumed
	pending []byte
	used    int
	wmu     sync.Mutex // Write

	closeOnce, goneOnce sync.Once
	closed              chan struct{} // the handler closed the connection
	gone                chan struct{} // the ingress let it go (client left, lost, protocol error)
	rdl, wdl            atomic.Int64  // deadlines (unix ns; 0 none)
	rkick, wkick        chan struct{}
}

func (c *wsConn) lose() {
	c.goneOnce.Do(func() {
		close(c.gone)
		c.s.cancel()
	})
}

// onMsg takes what the ingress sends on the stream's credit subject.
func (c *wsConn) onMsg(m *nats.Msg) {
	c.heard.Store(time.Now().UnixNano())
	switch m.Header.Get(wire.HeaderFrame) {
	case wire.FrameData:
		seq, err := wire.ParseSeq(m.Header.Get(wire.HeaderSeq))
		if err != nil || seq != c.next {
			c.s.r.log.Warn("websocket: chunk out of order; closing", "got", m.Header.Get(wire.HeaderSeq), "want", c.next)
			c.lose()
			return
		}
		c.next++
		select {
		case c.in <- m.Data:
		default: // beyond the credit granted
			c.s.r.log.Warn("websocket: the ingress sent beyond its credit; closing")
			c.lose()
		}
	case wire.FrameBeat:
	default:
		if string(m.Data) == wire.StreamCancel {
			c.lose()
			return
		}
		c.s.onCredit(m)
	}
}

// watch lets the connection go when the ingress falls silent.
func (c *wsConn) watch(done <-chan struct{}) {
	t := time.NewTicker(wire.StreamBeatInterval)
	defer t.Stop()
	for {
		select {
		case <-done:
			return
		case <-t.C:
			if time.Since(time.Unix(0, c.heard.Load())) > wire.WSDeadAfter {
				c.s.r.log.Warn("websocket: the ingress sent nothing; closing", "for", wire.WSDeadAfter)
				c.lose()
				return
			}
		}
	}
}

// timer returns a channel that fires at deadline dl (unix ns; 0: never).
func deadlineTimer(dl int64) (<-chan time.Time, func() bool) {
	if dl == 0 {
		return nil, func() bool { return false }
	}
	t := time.NewTimer(time.Until(time.Unix(0, dl)))
	return t.C, t.Stop
}

func (c *wsConn) Read(p []byte) (int, error) {
	c.rmu.Lock()
	defer c.rmu.Unlock()
	for len(c.pending) == 0 {
		select {
		case b := <-c.in:
			c.take(b)
			continue
		default:
		}
		select {
		case <-c.closed:
			return 0, net.ErrClosed
		case <-c.gone:
			return 0, io.EOF
		default:
		}
		if dl := c.rdl.Load(); dl != 0 && time.Now().UnixNano() >= dl {
			return 0, os.ErrDeadlineExceeded
		}
		tc, stop := deadlineTimer(c.rdl.Load())
		select {
		case b := <-c.in:
			c.take(b)
		case <-c.closed:
		case <-c.gone:
		case <-c.rkick:
		case <-tc:
		}
		stop()
	}
	n := copy(p, c.pending)
	c.pending = c.pending[n:]
	return n, nil
}

// take makes b the pending chunk and grants the ingress credit for it.
func (c *wsConn) take(b []byte) {
	c.pending = b
	if c.used++; c.used >= wire.WSWindow/2 {
		_ = c.nc.Publish(c.ingressCredit, []byte(strconv.Itoa(c.used)))
		c.used = 0
	}
}

func (c *wsConn) Write(p []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	n := 0
	for len(p) > 0 {
		if err := c.waitCredit(); err != nil {
			return n, err
		}
		k := min(len(p), wire.WSChunk)
		c.s.credit.Add(-1)
		c.s.send(nats.Header{}, p[:k], true)
		n += k
		p = p[k:]
	}
	return n, nil
}

func (c *wsConn) waitCredit() error {
	for {
		select {
		case <-c.closed:
			return net.ErrClosed
		case <-c.gone:
			return io.ErrClosedPipe
		default:
		}
		if c.s.credit.Load() > 0 {
			return nil
		}
		if dl := c.wdl.Load(); dl != 0 && time.Now().UnixNano() >= dl {
			return os.ErrDeadlineExceeded
		}
		tc, stop := deadlineTimer(c.wdl.Load())
		select {
		case <-c.s.wake:
		case <-c.closed:
		case <-c.gone:
		case <-c.wkick:
		case <-tc:
		}
		stop()
	}
}

// Close ends the connection: the ingress closes the client's.
func (c *wsConn) Close() error {
	c.closeOnce.Do(func() { close(c.closed) })
	return nil
}

type wsAddr struct{}

func (wsAddr) Network() string { return "natserve" }
func (wsAddr) String() string  { return "natserve-ingress" }

func (c *wsConn) LocalAddr() net.Addr  { return wsAddr{} }
func (c *wsConn) RemoteAddr() net.Addr { return wsAddr{} }

func unixNano(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

func kick(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

func (c *wsConn) SetDeadline(t time.Time) error {
	_ = c.SetReadDeadline(t)
	return c.SetWriteDeadline(t)
}

func (c *wsConn) SetReadDeadline(t time.Time) error {
	c.rdl.Store(unixNano(t))
	kick(c.rkick)
	return nil
}

func (c *wsConn) SetWriteDeadline(t time.Time) error {
	c.wdl.Store(unixNano(t))
	kick(c.wkick)
	return nil
}

var _ net.Conn = (*wsConn)(nil)
