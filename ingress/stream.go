package ingress

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"strconv"

	"github.com/nats-io/nats.go"
	"github.com/natserve/natserve/client"
	"github.com/natserve/natserve/internal/wire"
	"github.com/valyala/fasthttp"
)

// Streams over HTTP. A request goes out as a stream when the client asks
// for server-sent events (Accept: text/event-stream) or its deployment's
// default method is known to stream (a replica answered CodeStreaming
// once). Items go out as they come, flushed one by one: as SSE events
// ("id: <seq>", "data: <JSON>"; then "event: end", or "event: error" with
// {"code","message"}), or else as chunked NDJSON (one JSON item per line;
// a failure writes {"error":{"code","message"}} and cuts the connection,
// so the body is truncated, never a clean end). The budget
// (request_timeout_s) covers the first item and each gap between items. A
// client that goes away is noticed by the connection watch (depart.go)
// while the first item is awaited, then at the next write; either cancels
// the stream at the replica.

var acceptSSE = []byte("text/event-stream")

func (g *Ingress) wantsStream(deployment string, req *fasthttp.Request) bool {
	if _, ok := g.streams.Load(deployment); ok {
		return true
	}
	return bytes.Contains(req.Header.Peek("Accept"), acceptSSE)
}

func (g *Ingress) streamingMethod(deployment string, err error) bool {
	var ce *client.Error
	if errors.As(err, &ce) && ce.Code == string(wire.CodeStreaming) {
		g.streams.Store(deployment, true)
		return true
	}
	return false
}

type streamError struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

func (g *Ingress) serveStream(ctx *fasthttp.RequestCtx, rt *route, msg *nats.Msg, rctx context.Context) {
	sctx, cancel := context.WithCancel(rctx)
	// Until the first item, the client's connection is watched as a unary
	// request's is (depart.go): a client that leaves cancels the stream
	// (the replica's context ends, its slot frees). Afterwards, a departed
	// client is noticed at the next write.
	d := watchConn(rctx, ctx.Conn(), cancel)
	st, err := g.cl.OpenStream(sctx, rt.deployment, "", msg, client.WithItemTimeout(g.cfg.RequestTimeout), client.WithKeepAlive(g.cfg.SSEKeepAlive))
	// The first item decides the answer: a failure before any item is an
	// ordinary HTTP error.
	var first []byte
	if err == nil {
		if first, err = (itemStream{st}).nextItem(); err != nil && err != io.EOF {
			st.Close()
		}
	}
	gone := err != nil && err != io.EOF && d.departed()
	d.release()
	if gone {
		cancel()
		rt.metrics.failedCode("client_gone", "the client closed the connection")
		ctx.SetConnectionClose()
		return
	}
	if err != nil && err != io.EOF {
		cancel()
		rt.metrics.failed(err)
		g.writeError(ctx, rt.deployment, err)
		return
	}
	if st.Single() { // the method does not stream: its reply as it is
		defer cancel()
		g.writeReply(ctx, rt.deployment, first)
		return
	}
	g.writeItems(ctx, rt, st, first, err == io.EOF, cancel, nil)
}

// itemStream is an ItemStream read past keep-alive notices until the first
// item.
type itemStream struct{ *client.ItemStream }

func (s itemStream) nextItem() ([]byte, error) {
	for {
		b, err := s.Next()
		if err != client.ErrIdle {
			return b, err
		}
	}
}

// writeItems writes a stream's items as SSE or NDJSON (see above), first
// (unless ended) the first; conv, when not nil, turns an item into JSON.
// The stream is closed and cancel called when the body is written.
func (g *Ingress) writeItems(ctx *fasthttp.RequestCtx, rt *route, st *client.ItemStream, first []byte, ended bool, cancel context.CancelFunc, conv func([]byte) ([]byte, error)) {
	sse := true
	if !bytes.Contains(ctx.Request.Header.Peek("Accept"), acceptSSE) && len(ctx.Request.Header.Peek("Accept")) > 0 &&
		bytes.Contains(ctx.Request.Header.Peek("Accept"), []byte("ndjson")) {
		sse = false
	}
	if sse {
		ctx.SetContentType("text/event-stream")
		ctx.Response.Header.Set("Cache-Control", "no-cache")
		ctx.Response.Header.Set("X-Accel-Buffering", "no")
	} else {
		ctx.SetContentType("application/x-ndjson")
	}
	conn := ctx.Conn()
	ctx.SetBodyStreamWriter(func(w *bufio.Writer) {
		defer cancel()
		defer st.Close()
		seq := 0
		item := first
		for {
			if ended {
				if sse {
					_, _ = w.WriteString("event: end\ndata: \n\n")
					_ = w.Flush()
				}
				return
			}
			var err error
			if conv != nil {
				item, err = conv(item)
			}
			if err == nil {
				if sse {
					w.WriteString("id: ")
					w.WriteString(strconv.Itoa(seq))
					w.WriteString("\ndata: ")
					w.Write(item)
					w.WriteString("\n\n")
				} else {
					w.Write(item)
					w.WriteByte('\n')
				}
				if w.Flush() != nil { // the client went away: cancel the stream
					return
				}
				seq++
				for {
					item, err = st.Next()
					if err != client.ErrIdle {
						break
					}
					// A comment line, so that proxies do not cut a quiet
					// stream (NDJSON has none: nothing is written).
					if sse {
						w.WriteString(": keep-alive\n\n")
						if w.Flush() != nil {
							return
						}
					}
				}
			}
			if err == io.EOF {
				ended = true
				continue
			}
			if err != nil {
				e := streamError{Code: string(wire.CodeInternal), Message: err.Error()}
				var ce *client.Error
				if errors.As(err, &ce) {
					e = streamError{Code: ce.Code, Message: ce.Message}
				}
				rt.metrics.failed(err)
				b, _ := json.Marshal(e)
				if sse {
					w.WriteString("event: error\ndata: ")
					w.Write(b)
					w.WriteString("\n\n")
					_ = w.Flush()
					return
				}
				w.WriteString(`{"error":`)
				w.Write(b)
				w.WriteString("}\n")
				_ = w.Flush()
				_ = conn.Close() // truncate the chunked body: no clean end
				return
			}
		}
	})
}
