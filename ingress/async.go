package ingress

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"strings"
	"time"

	"github.com/natserve/natserve/client"
	"github.com/natserve/natserve/internal/wire"
	"github.com/valyala/fasthttp"
)

// Stored (asynchronous) requests over HTTP: a request with
// "Prefer: respond-async" (RFC 7240) is stored in JetStream and answered
// 202 Accepted with Location: /-/requests/<id> and the request's status as
// JSON; GET /-/requests/<id> reads it, DELETE cancels it.

// Header names of stored requests.
const (
	headerPrefer         = "Prefer"
	headerIdempotencyKey = "Idempotency-Key"
	headerCallback       = "Natserve-Callback"
)

var pathRequests = []byte("/-/requests/")

// prefersAsync reports whether a Prefer header value asks for
// respond-async (a list of preferences, each maybe with parameters).
func prefersAsync(v []byte) bool {
	if len(v) == 0 {
		return false
	}
	for _, p := range bytes.Split(v, []byte(",")) {
		tok, _, _ := bytes.Cut(p, []byte(";"))
		if bytes.EqualFold(bytes.TrimSpace(tok), []byte("respond-async")) {
			return true
		}
	}
	return false
}

// serveAsync stores an HTTP request (its envelope built) and answers 202.
func (g *Ingress) serveAsync(ctx *fasthttp.RequestCtx, deployment string, envelope []byte) {
	sctx, cancel := context.WithTimeout(context.Background(), g.cfg.RequestTimeout)
	defer cancel()
	st, err := g.cl.Submit(sctx, client.Submission{
		Deployment: deployment, Kind: wire.KindHTTP, Data: envelope,
		IdempotencyKey: string(ctx.Request.Header.Peek(headerIdempotencyKey)),
		Callback:       string(ctx.Request.Header.Peek(headerCallback)),
	})
	if err != nil {
		switch {
		case errors.Is(err, client.ErrBacklogFull):
			retryAfter(ctx, "deployment "+deployment+": too many stored requests: "+err.Error()+"\n", fasthttp.StatusTooManyRequests)
		case errors.Is(err, client.ErrCallbackNotAllowed):
			ctx.Error(firstLine(err.Error())+"\n", fasthttp.StatusBadRequest)
		case errors.Is(err, client.ErrNoAsync):
			retryAfter(ctx, "deployment "+deployment+": stored requests are not ready: "+err.Error()+"\n", fasthttp.StatusServiceUnavailable)
		case errors.Is(err, context.DeadlineExceeded):
			ctx.Error("deployment "+deployment+": storing the request timed out\n", fasthttp.StatusGatewayTimeout)
		default:
			g.log.Warn("storing a request failed", "deployment", deployment, "err", err)
			retryAfter(ctx, "deployment "+deployment+": storing the request failed: "+firstLine(err.Error())+"\n", fasthttp.StatusServiceUnavailable)
		}
		return
	}
	ctx.Response.Header.Set("Location", string(pathRequests)+st.ID)
	ctx.Response.Header.Set("Preference-Applied", "respond-async")
	writeStatus(ctx, fasthttp.StatusAccepted, st)
}

// retryAfter answers code with msg and Retry-After: 1 (set after
// ctx.Error, which resets the headers).
func retryAfter(ctx *fasthttp.RequestCtx, msg string, code int) {
	ctx.Error(msg, code)
	ctx.Response.Header.Set("Retry-After", "1")
}

func writeStatus(ctx *fasthttp.RequestCtx, code int, st *client.RequestStatus) {
	b, err := json.Marshal(st)
	if err != nil {
		ctx.Error("encoding the status: "+err.Error()+"\n", fasthttp.StatusInternalServerError)
		return
	}
	ctx.SetStatusCode(code)
	ctx.SetContentType("application/json")
	ctx.SetBody(append(b, '\n'))
}

// serveRequest answers GET and DELETE /-/requests/<id>. There is no
// listing over HTTP: a request id is a bearer capability, so the ingress
// answers only for the id it is given (a list is `servectl requests list`
// with the admin credentials).
func (g *Ingress) serveRequest(ctx *fasthttp.RequestCtx, id string) {
	if id == "" {
		ctx.Error("stored requests are not listed over HTTP (request ids are bearer capabilities): GET /-/requests/<id>; an operator lists them with servectl requests list and the admin credentials\n", fasthttp.StatusNotFound)
		return
	}
	rctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var st *client.RequestStatus
	var err error
	switch {
	case ctx.IsGet() || ctx.IsHead():
		st, err = g.cl.Request(rctx, id)
	case ctx.IsDelete():
		st, err = g.cl.Cancel(rctx, id)
	default:
		ctx.Response.Header.Set("Allow", "GET, HEAD, DELETE")
		ctx.Error("method not allowed\n", fasthttp.StatusMethodNotAllowed)
		return
	}
	switch {
	case errors.Is(err, client.ErrRequestNotFound):
		ctx.Error("no request "+truncate(id, 40)+" (unknown, or past its retention)\n", fasthttp.StatusNotFound)
	case err != nil:
		retryAfter(ctx, "reading the request: "+firstLine(err.Error())+"\n", fasthttp.StatusServiceUnavailable)
	default:
		writeStatus(ctx, fasthttp.StatusOK, st)
	}
}

func firstLine(s string) string {
	s, _, _ = strings.Cut(s, "\n")
	return truncate(s, 512)
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] + "…"
	}
	return s
}
