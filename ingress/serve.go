package ingress

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/natserve/natserve/client"
	"github.com/natserve/natserve/internal/wire"
	"github.com/valyala/fasthttp"
)

const headerRequestID = "X-Request-Id"

var (
	pathRoutes  = []byte("/-/routes")
	pathHealthz = []byte("/-/healthz")
)

// kindHTTP is the kind header's value of every HTTP request, shared (read
// only; its capacity is its length, so an append copies it).
var kindHTTP = []string{wire.KindHTTP}[0:1:1]

// hopHeaders are not forwarded (RFC 9110 §7.6.1).
var hopHeaders = map[string]bool{
	"Connection": true, "Keep-Alive": true, "Proxy-Connection": true, "Te": true, "Trailer": true,
	"Transfer-Encoding": true, "Upgrade": true, "Proxy-Authorization": true, "Proxy-Authenticate": true,
}

// serve handles one HTTP request.
func (g *Ingress) serve(ctx *fasthttp.RequestCtx) {
	defer func() {
		if p := recover(); p != nil {
			g.log.Error("ingress handler panicked", "panic", fmt.Sprint(p), "path", string(ctx.Path()))
			ctx.ResetBody()
			ctx.Error("internal error", fasthttp.StatusInternalServerError)
		}
	}()
	path := ctx.Path()
	if len(path) > 2 && path[1] == '-' && path[2] == '/' {
		g.serveInternal(ctx, path)
		return
	}
	if g.tracer != nil || g.alog != nil {
		g.serveObserved(ctx, path)
		return
	}
	g.serveRoute(ctx, path, nil)
}

// serveRoute serves a request to a deployment or a graph; o, when not nil,
// collects what the access log and the span report.
func (g *Ingress) serveRoute(ctx *fasthttp.RequestCtx, path []byte, o *observation) {
	id := string(ctx.Request.Header.Peek(headerRequestID))
	if !wire.ValidRequestID(id) {
		id = client.NewRequestID()
	}
	ctx.Response.Header.Set(headerRequestID, id)
	rctx := context.Background()
	if o != nil {
		o.id, rctx = id, o.ctx
	}

	rt := g.routes.Load().match(path)
	if g.metrics != nil {
		m := g.metrics.notFound
		if rt != nil {
			m = rt.metrics
		}
		if o != nil { // one clock read for the access log and the metrics
			m.ongoing.Inc()
			defer m.done(ctx, o.start)
		} else {
			defer m.done(ctx, m.start())
		}
	}
	if rt == nil {
		ctx.Error("no deployment serves "+string(path)+"\n", fasthttp.StatusNotFound)
		ctx.Response.Header.Set(headerRequestID, id)
		return
	}
	if o != nil {
		o.deployment, o.route = rt.deployment, rt.prefix
	}
	async := prefersAsync(ctx.Request.Header.Peek(headerPrefer))
	if rt.graph != nil {
		if async {
			ctx.Error("graph "+rt.graph.Name+" runs in the caller and cannot be stored: send it without Prefer: respond-async\n", fasthttp.StatusBadRequest)
			return
		}
		g.serveGraph(rctx, ctx, rt, id)
		return
	}

	// The envelope: method, path, prefix, query, headers, body.
	req := &ctx.Request
	n := 0
	for k := range req.Header.All() {
		if !hopHeaders[string(k)] {
			n++
		}
	}
	buf := make([]byte, 0, 64+len(path)+len(req.URI().QueryString())+req.Header.Len()*32+len(req.Body()))
	buf = wire.AppendHTTPRequestHead(buf, req.Header.Method(), path, []byte(rt.prefix), req.URI().QueryString(), n)
	for k, v := range req.Header.All() {
		if !hopHeaders[string(k)] {
			buf = wire.AppendHeader(buf, k, v)
		}
	}
	buf = wire.AppendBody(buf, req.Body())
	if req.Header.ConnectionUpgrade() && isWebSocket(req) {
		if async {
			ctx.Error("a WebSocket upgrade cannot be stored: send it without Prefer: respond-async\n", fasthttp.StatusBadRequest)
			return
		}
		g.serveWebSocket(ctx, rt, &nats.Msg{Subject: rt.subject, Data: buf, Header: nats.Header{
			wire.HeaderKind: {wire.KindHTTP}, wire.HeaderRequestID: {id}}}, rctx)
		return
	}
	if async { // a stored request (async.go)
		g.serveAsync(ctx, rt.deployment, buf)
		return
	}

	// The request's metadata travels in front of the envelope, not as
	// NATS headers (wire.RequestMeta); streams take it as headers, which
	// OpenStream moves there.
	msg := &nats.Msg{Subject: rt.subject, Data: buf}
	if g.wantsStream(rt.deployment, req) {
		msg.Header = nats.Header{wire.HeaderKind: kindHTTP, wire.HeaderRequestID: []string{id}}
		g.serveStream(ctx, rt, msg, rctx)
		return
	}
	md := wire.RequestMeta{Kind: wire.KindHTTP, RequestID: id}
	if model := req.Header.Peek(wire.HTTPHeaderModelID); len(model) > 0 {
		// A multiplexed model: routed to a replica that holds it.
		md.ModelID = string(model)
	}
	dctx := watchClient(rctx, ctx.Conn()) // a client that leaves cancels it (depart.go)
	reply, err := g.cl.Send(dctx, time.Now().Add(g.cfg.RequestTimeout), rt.deployment, &md, msg)
	gone := err != nil && dctx.departed()
	dctx.release() // dctx may be reused from here
	if gone {
		// Nobody to answer: the replica was told to cancel the call.
		rt.metrics.failedCode("client_gone", "the client closed the connection")
		ctx.SetConnectionClose()
		return
	}
	if err != nil && g.streamingMethod(rt.deployment, err) {
		// The replica said the method streams (before running it): send
		// the request again as a stream, and every later one at once.
		msg.Reply = ""
		msg.Subject = rt.subject
		msg.Header = nats.Header{wire.HeaderKind: kindHTTP, wire.HeaderRequestID: []string{id}}
		g.serveStream(ctx, rt, msg, rctx)
		return
	}
	if err != nil {
		if o != nil {
			o.failed(err)
		}
		rt.metrics.failed(err)
		g.writeError(ctx, rt.deployment, err)
		return
	}
	var rep wire.HTTPReply // on the stack: its parts are copied into the response below
	if err := rep.Decode(reply.Data); err != nil {
		g.log.Warn("bad reply from replica", "deployment", rt.deployment, "replica", reply.Header.Get(wire.HeaderReplica), "err", err)
		rt.metrics.failedCode("bad_reply", err.Error())
		ctx.Error("bad reply from deployment "+rt.deployment+"\n", fasthttp.StatusBadGateway)
		return
	}
	if o != nil {
		o.replicaRaw = rep.Replica // aliases reply.Data, which nothing reuses
	}
	ctx.SetStatusCode(rep.Status)
	for i := 0; i+1 < len(rep.Headers); i += 2 {
		if !hopHeaders[rep.Headers[i]] && rep.Headers[i] != "Content-Length" {
			ctx.Response.Header.Add(rep.Headers[i], rep.Headers[i+1])
		}
	}
	ctx.Response.Header.Set(headerRequestID, id)
	ctx.SetBody(rep.Body)
}

// writeError answers a failed request with the code's status and a
// one-line body.
func (g *Ingress) writeError(ctx *fasthttp.RequestCtx, deployment string, err error) {
	var ce *client.Error
	if !errors.As(err, &ce) {
		g.log.Warn("request failed", "deployment", deployment, "err", err)
		ctx.Error("deployment "+deployment+": "+err.Error()+"\n", fasthttp.StatusBadGateway)
		return
	}
	status := ce.HTTPStatus()
	msg := ce.Message
	if len(msg) > 2048 {
		msg = msg[:2048] + "…"
	}
	// Not ctx.Error: it drops the headers set so far (X-Request-Id).
	ctx.SetStatusCode(status)
	ctx.SetContentType("text/plain; charset=utf-8")
	ctx.SetBodyString(fmt.Sprintf("deployment %s: %s: %s\n", deployment, ce.Code, msg))
	if status == fasthttp.StatusServiceUnavailable {
		ctx.Response.Header.Set("Retry-After", "1")
	}
}

func (g *Ingress) serveInternal(ctx *fasthttp.RequestCtx, path []byte) {
	switch {
	case bytes.HasPrefix(path, pathRequests):
		g.serveRequest(ctx, string(path[len(pathRequests):]))
	case bytes.Equal(path, pathRequests[:len(pathRequests)-1]):
		g.serveRequest(ctx, "")
	case bytes.Equal(path, pathRoutes):
		ctx.SetContentType("application/json")
		ctx.SetBody(g.routes.Load().json)
	case bytes.Equal(path, pathHealthz):
		if g.draining.Load() {
			ctx.Error("This node is being drained.\n", fasthttp.StatusServiceUnavailable)
			return
		}
		if !g.loaded.Load() {
			ctx.Error("The route table is not loaded yet.\n", fasthttp.StatusServiceUnavailable)
			return
		}
		ctx.SetContentType("text/plain; charset=utf-8")
		ctx.SetBodyString("success")
	default:
		ctx.Error("not found\n", fasthttp.StatusNotFound)
	}
}

// parseError answers requests fasthttp could not parse.
func (g *Ingress) parseError(ctx *fasthttp.RequestCtx, err error) {
	var small *fasthttp.ErrSmallBuffer
	var netErr *net.OpError
	switch {
	case errors.Is(err, fasthttp.ErrBodyTooLarge):
		ctx.Error("request body is larger than "+strconv.Itoa(g.maxBody)+" bytes\n", fasthttp.StatusRequestEntityTooLarge)
	case errors.As(err, &small):
		ctx.Error("request headers are larger than "+strconv.Itoa(g.cfg.MaxHeaderBytes)+" bytes\n", fasthttp.StatusRequestHeaderFieldsTooLarge)
	case errors.As(err, &netErr) && netErr.Timeout():
		ctx.Error("request not read in time\n", fasthttp.StatusRequestTimeout)
	default:
		ctx.Error("malformed request\n", fasthttp.StatusBadRequest)
	}
}

// serveGraph runs a graph for an HTTP request: the input is the JSON body
// or a query parameter (the graph's http_input), the output is written as
// text (a string) or JSON.
func (g *Ingress) serveGraph(base context.Context, ctx *fasthttp.RequestCtx, rt *route, id string) {
	gr := rt.graph
	var raw []byte
	if param, ok := strings.CutPrefix(gr.HTTPInput, "query:"); ok {
		v := ctx.QueryArgs().Peek(param)
		if v == nil {
			ctx.Error("graph "+gr.Name+": query parameter "+param+" is required\n", fasthttp.StatusBadRequest)
			return
		}
		raw = v
		if !json.Valid(v) {
			raw, _ = json.Marshal(string(v))
		}
	} else {
		raw = ctx.PostBody()
		if len(bytes.TrimSpace(raw)) == 0 {
			raw = []byte("null")
		}
	}
	input, err := client.JSONToValue(raw)
	if err != nil {
		what := "the input is not JSON"
		if errors.Is(err, wire.ErrJSONTooCostly) {
			what = "the input is refused"
		}
		ctx.Error("graph "+gr.Name+": "+what+": "+err.Error()+"\n", fasthttp.StatusBadRequest)
		return
	}
	// The nodes before the output have the request timeout (the client's
	// Timeout); the output node may stream, its items each within it.
	rctx, cancel := context.WithCancel(client.WithRequestID(base, id))
	st, err := g.cl.RunGraphStream(rctx, gr, input, client.WithItemTimeout(g.cfg.RequestTimeout), client.WithKeepAlive(g.cfg.SSEKeepAlive))
	var out []byte
	if err == nil {
		out, err = itemStream{st}.nextItem()
	}
	if err != nil && err != io.EOF {
		if st != nil {
			st.Close()
		}
		cancel()
		rt.metrics.failed(err)
		g.writeError(ctx, gr.Name, err)
		return
	}
	if !st.Single() {
		g.writeItems(ctx, rt, st, out, err == io.EOF, cancel, func(b []byte) ([]byte, error) {
			v, err := client.ValueToJSON(b)
			if err != nil {
				return nil, err
			}
			return json.Marshal(v)
		})
		return
	}
	st.Close()
	cancel()
	v, err := client.ValueToJSON(out)
	if err != nil {
		ctx.Error("graph "+gr.Name+": bad output: "+err.Error()+"\n", fasthttp.StatusBadGateway)
		return
	}
	if s, ok := v.(string); ok {
		ctx.SetContentType("text/plain; charset=utf-8")
		ctx.SetBodyString(s)
		return
	}
	b, err := json.Marshal(v)
	if err != nil {
		ctx.Error("graph "+gr.Name+": output is not JSON: "+err.Error()+"\n", fasthttp.StatusInternalServerError)
		return
	}
	ctx.SetContentType("application/json")
	ctx.SetBody(b)
}
