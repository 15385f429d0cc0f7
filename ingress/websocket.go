package ingress

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gobwas/ws"
	"github.com/nats-io/nats.go"
	"github.com/natserve/natserve/client"
	"github.com/natserve/natserve/internal/wire"
	"github.com/valyala/fasthttp"
)

// WebSockets (see wire.HeaderWebSocket). An upgrade request goes to the
// deployment as a stream; when its handler accepts (hijacks the
// connection), the ingress hijacks the client's connection and relays
// bytes both ways, frame by frame: the frames (and so messages, their
// order and close codes) pass unchanged; the ingress reads only their
// headers, so that it can close a connection cleanly (code 1001) after
// WebSocketIdleTimeout without a frame or WebSocketMaxLifetime, or 1011
// when the replica is lost. A client that goes away cancels the stream:
// the replica's handler sees its connection closed and its slot frees.

var strWebSocket = []byte("websocket")

// isWebSocket reports whether req asks for a WebSocket upgrade.
func isWebSocket(req *fasthttp.Request) bool {
	return req.Header.ConnectionUpgrade() && bytes.EqualFold(req.Header.Peek(fasthttp.HeaderUpgrade), strWebSocket)
}

// wsRelay is one relayed WebSocket connection.
type wsRelay struct {
	g      *Ingress
	nc     *nats.Conn
	ctrl   string // the replica's subject for our chunks
	cancel context.CancelFunc

	credit atomic.Int64 // chunks we may send
	wake   chan struct{}

	last     atomic.Int64 // unix ns of the last frame either way
	lastSent atomic.Int64 // unix ns of the last message to the replica
	start    time.Time

	wmu       sync.Mutex // writes to the client
	conn      net.Conn
	closeSent bool // a close frame went to the client (under wmu)
}

func (w *wsRelay) onCredit(m *nats.Msg) {
	n, err := strconv.Atoi(string(m.Data))
	if err != nil || n <= 0 || n > wire.WSWindow {
		return
	}
	w.credit.Add(int64(n))
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

func (w *wsRelay) touch() { w.last.Store(time.Now().UnixNano()) }

func (g *Ingress) serveWebSocket(ctx *fasthttp.RequestCtx, rt *route, msg *nats.Msg, rctx context.Context) {
	w := &wsRelay{g: g, nc: g.nc, wake: make(chan struct{}, 1)}
	w.credit.Store(wire.WSWindow)
	inbox := g.nc.NewInbox()
	sub, err := g.nc.Subscribe(inbox, w.onCredit)
	if err != nil {
		ctx.Error("websocket: "+err.Error()+"\n", fasthttp.StatusInternalServerError)
		return
	}
	msg.Header[wire.HeaderWebSocket] = []string{inbox}
	sctx, cancel := context.WithCancel(rctx)
	w.cancel = cancel
	st, err := g.cl.OpenStream(sctx, rt.deployment, "", msg, client.WithItemTimeout(g.cfg.RequestTimeout), client.WithStreamWindow(wire.WSWindow))
	if err != nil {
		_ = sub.Unsubscribe()
		cancel()
		rt.metrics.failed(err)
		g.writeError(ctx, rt.deployment, err)
		return
	}
	first, err := st.Next()
	if err != nil || st.Single() {
		st.Close()
		_ = sub.Unsubscribe()
		cancel()
		switch {
		case err == io.EOF:
			ctx.Error("deployment "+rt.deployment+" closed the WebSocket without answering\n", fasthttp.StatusBadGateway)
		case err != nil:
			rt.metrics.failed(err)
			g.writeError(ctx, rt.deployment, err)
		default: // the handler answered without upgrading
			g.writeReply(ctx, rt.deployment, first)
		}
		return
	}
	w.ctrl = st.Control()
	// From here the relay enforces the idle timeout and the lifetime.
	st.SetItemTimeout(g.cfg.WebSocketMaxLifetime + time.Minute)
	g.wsMu.Lock()
	if g.draining.Load() {
		g.wsMu.Unlock()
		st.Close()
		_ = sub.Unsubscribe()
		cancel()
		ctx.Error("This node is being drained.\n", fasthttp.StatusServiceUnavailable)
		return
	}
	if g.ws == nil {
		g.ws = map[*wsRelay]struct{}{}
	}
	g.ws[w] = struct{}{}
	g.wsWG.Add(1)
	g.wsMu.Unlock()
	ctx.HijackSetNoResponse(true)
	ctx.Hijack(func(c net.Conn) {
		defer g.wsWG.Done()
		defer func() {
			g.wsMu.Lock()
			delete(g.ws, w)
			g.wsMu.Unlock()
		}()
		defer func() { _ = sub.Unsubscribe() }()
		w.run(c, st, first)
	})
}

// writeReply answers with an HTTP reply envelope.
func (g *Ingress) writeReply(ctx *fasthttp.RequestCtx, deployment string, data []byte) {
	rep, err := wire.DecodeHTTPReply(data)
	if err != nil {
		ctx.Error("bad reply from deployment "+deployment+"\n", fasthttp.StatusBadGateway)
		return
	}
	ctx.SetStatusCode(rep.Status)
	for i := 0; i+1 < len(rep.Headers); i += 2 {
		if !hopHeaders[rep.Headers[i]] && rep.Headers[i] != "Content-Length" {
			ctx.Response.Header.Add(rep.Headers[i], rep.Headers[i+1])
		}
	}
	ctx.SetBody(rep.Body)
}

// closeWebSockets closes every relayed connection (code 1001) and waits
// for the relays to end, or for ctx.
func (g *Ingress) closeWebSockets(ctx context.Context) {
	g.wsMu.Lock()
	for w := range g.ws {
		w.closeClient(ws.StatusGoingAway, "the ingress is shutting down")
		w.cancel()
	}
	g.wsMu.Unlock()
	done := make(chan struct{})
	go func() {
		g.wsWG.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-ctx.Done():
	}
}

// closeClient sends the client a close frame, unless a frame is being
// written (then the connection is cut without one).
func (w *wsRelay) closeClient(code ws.StatusCode, reason string) {
	if !w.wmu.TryLock() {
		return
	}
	defer w.wmu.Unlock()
	if w.closeSent || w.conn == nil {
		return
	}
	w.closeSent = true
	_ = w.conn.SetWriteDeadline(time.Now().Add(time.Second))
	_ = ws.WriteFrame(w.conn, ws.NewCloseFrame(ws.NewCloseFrameBody(code, reason)))
}

// run relays until either side ends.
func (w *wsRelay) run(c net.Conn, st *client.ItemStream, first []byte) {
	_ = c.SetDeadline(time.Time{})
	w.wmu.Lock()
	w.conn = c
	w.wmu.Unlock()
	w.start = time.Now()
	w.touch()
	w.lastSent.Store(time.Now().UnixNano())
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		defer w.cancel() // the client left or sent garbage: cancel at the replica
		w.fromClient(c, done)
	}()
	go func() {
		defer wg.Done()
		w.watch(done)
	}()
	w.toClient(c, st, first)
	close(done)
	st.Close()
	w.cancel()
	_ = c.Close()
	wg.Wait()
}

// itemReader reads a stream's items as bytes.
type itemReader struct {
	st  *client.ItemStream
	buf []byte
	err error
}

func (r *itemReader) Read(p []byte) (int, error) {
	for len(r.buf) == 0 {
		if r.err != nil {
			return 0, r.err
		}
		r.buf, r.err = r.st.Next()
	}
	n := copy(p, r.buf)
	r.buf = r.buf[n:]
	return n, nil
}

// toClient writes the replica's bytes to the client: the 101 answer, then
// frame by frame.
func (w *wsRelay) toClient(c net.Conn, st *client.ItemStream, first []byte) {
	ir := &itemReader{st: st, buf: first}
	br := bufio.NewReaderSize(ir, 4096)
	wt := w.g.cfg.WriteTimeout
	var head []byte
	for {
		line, err := br.ReadSlice('\n')
		head = append(head, line...)
		if err != nil {
			if err == bufio.ErrBufferFull && len(head) < 64<<10 {
				continue
			}
			_, _ = c.Write(head)
			return
		}
		if len(line) <= 2 { // the empty line ends the head
			break
		}
	}
	_ = c.SetWriteDeadline(time.Now().Add(wt))
	if _, err := c.Write(head); err != nil {
		return
	}
	if !bytes.HasPrefix(head, []byte("HTTP/1.1 101")) {
		_, _ = io.Copy(c, br) // whatever the handler wrote after hijacking
		return
	}
	for {
		h, err := ws.ReadHeader(br)
		if err != nil {
			w.ended(ir.err)
			return
		}
		w.touch()
		w.wmu.Lock()
		_ = c.SetWriteDeadline(time.Now().Add(wt))
		err = ws.WriteHeader(c, h)
		if err == nil {
			_, err = io.CopyN(c, br, h.Length)
		}
		if h.OpCode == ws.OpClose {
			w.closeSent = true
		}
		w.wmu.Unlock()
		if err != nil {
			if ir.err != nil && ir.err != io.EOF { // the stream failed mid-frame: no clean close
				w.g.log.Warn("websocket relay ended mid-frame", "err", ir.err)
			}
			return
		}
	}
}

// ended closes the client's connection cleanly after the stream ended
// (err io.EOF: the handler closed it) or failed.
func (w *wsRelay) ended(err error) {
	if err == nil || err == io.EOF || errors.Is(err, context.Canceled) {
		return
	}
	w.g.log.Warn("websocket relay: the stream failed", "err", err)
	reason := err.Error()
	if len(reason) > 120 {
		reason = reason[:120]
	}
	w.closeClient(ws.StatusInternalServerError, reason)
}

// fromClient sends the client's frames to the replica in chunks, within
// the credit the replica grants.
func (w *wsRelay) fromClient(c net.Conn, done <-chan struct{}) {
	br := bufio.NewReaderSize(c, 4096)
	buf := make([]byte, 0, wire.WSChunk)
	var seq uint64
	var hb [ws.MaxHeaderSize]byte
	flush := func() bool {
		for w.credit.Load() <= 0 {
			select {
			case <-w.wake:
			case <-done:
				return false
			}
		}
		w.credit.Add(-1)
		m := &nats.Msg{Subject: w.ctrl, Data: buf, Header: nats.Header{
			wire.HeaderFrame: {wire.FrameData}, wire.HeaderSeq: {strconv.FormatUint(seq, 10)}}}
		if err := w.nc.PublishMsg(m); err != nil {
			return false
		}
		seq++
		buf = buf[:0]
		w.lastSent.Store(time.Now().UnixNano())
		return true
	}
	for {
		h, err := ws.ReadHeader(br)
		if err != nil {
			return
		}
		w.touch()
		hw := bytesWriter{b: hb[:0]}
		_ = ws.WriteHeader(&hw, h)
		if len(buf)+len(hw.b) > cap(buf) && !flush() {
			return
		}
		buf = append(buf, hw.b...)
		for left := h.Length; left > 0; {
			if len(buf) == cap(buf) && !flush() {
				return
			}
			n := min(left, int64(cap(buf)-len(buf)))
			if _, err := io.ReadFull(br, buf[len(buf):len(buf)+int(n)]); err != nil {
				return
			}
			buf = buf[:len(buf)+int(n)]
			left -= n
		}
		// Small frames already read travel together.
		if (br.Buffered() == 0 || len(buf) >= wire.WSChunk/2) && !flush() {
			return
		}
	}
}

type bytesWriter struct{ b []byte }

func (b *bytesWriter) Write(p []byte) (int, error) {
	b.b = append(b.b, p...)
	return len(p), nil
}

// watch sends the replica beats while the client is quiet and closes the
// connection at the idle timeout or the maximum lifetime.
func (w *wsRelay) watch(done <-chan struct{}) {
	t := time.NewTicker(wire.StreamBeatInterval)
	defer t.Stop()
	beat := &nats.Msg{Subject: w.ctrl, Header: nats.Header{wire.HeaderFrame: {wire.FrameBeat}}}
	for {
		select {
		case <-done:
			return
		case now := <-t.C:
			if now.Sub(time.Unix(0, w.lastSent.Load())) >= wire.StreamBeatInterval {
				_ = w.nc.PublishMsg(beat)
				w.lastSent.Store(now.UnixNano())
			}
			var why string
			switch {
			case now.Sub(time.Unix(0, w.last.Load())) >= w.g.cfg.WebSocketIdleTimeout:
				why = "idle timeout"
			case now.Sub(w.start) >= w.g.cfg.WebSocketMaxLifetime:
				why = "maximum lifetime reached"
			}
			if why != "" {
				w.closeClient(ws.StatusGoingAway, why)
				w.cancel()
				return
			}
		}
	}
}
