package ingress

import (
	"bufio"
	"bytes"
	"context"
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/natserve/natserve/client"
	"github.com/natserve/natserve/internal/testutil"
	"github.com/natserve/natserve/internal/wire"
	"github.com/valyala/fasthttp"
)

// FuzzServe feeds raw bytes, parsed as an HTTP request, through the
// ingress's request path (route match, envelope, NATS request, reply) to a
// subscriber that decodes the envelope as a replica does.
func FuzzServe(f *testing.F) {
	for _, s := range []string{
		"GET /echo/x?a=1 HTTP/1.1\r\nHost: x\r\nX-Request-Id: abc\r\n\r\n",
		"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc",
		"GET /-/routes HTTP/1.1\r\nHost: x\r\n\r\n",
		"GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n",
		"GET /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
		"GET / HTTP/1.1\r\n\r\n",
	} {
		f.Add([]byte(s))
	}
	b := testutil.Broker(f)
	nc := testutil.Conn(f, b.ClientURL())
	sub, err := nc.QueueSubscribe(wire.DeploymentSubject("echo"), "echo", func(m *nats.Msg) {
		var md wire.RequestMeta // the ingress sends its metadata in front of the envelope
		data, err := wire.DecodeRequestMeta(m.Data, &md)
		var req *wire.HTTPRequest
		if err == nil {
			req, err = wire.DecodeHTTPRequest(data)
		}
		h := nats.Header{wire.HeaderProto: {wire.ProtoVersion}}
		if err != nil {
			h[wire.HeaderCode] = []string{string(wire.CodeBadRequest)}
			_ = m.RespondMsg(&nats.Msg{Header: h})
			return
		}
		_ = m.RespondMsg(&nats.Msg{Header: h, Data: wire.AppendHTTPReply(nil, &wire.HTTPReply{Status: 200, Headers: []string{"X", req.Path}, Body: req.Body})})
	})
	if err != nil {
		f.Fatal(err)
	}
	defer sub.Unsubscribe()
	g, err := New(Config{Addr: "127.0.0.1:0", NATSURL: b.ClientURL(), NATSOptions: testutil.CredsOptions(f, b.ClientURL(), "ingress")})
	if err != nil {
		f.Fatal(err)
	}
	if err := g.Start(context.Background()); err != nil {
		f.Fatal(err)
	}
	defer g.Shutdown(context.Background())
	g.setRoutes(map[string]client.DeploymentSpec{"echo": {Name: "echo"}})
	f.Fuzz(func(t *testing.T, data []byte) {
		var req fasthttp.Request
		req.Header.DisableNormalizing()
		if err := req.ReadLimitBody(bufio.NewReader(bytes.NewReader(data)), g.maxBody); err != nil {
			var ctx fasthttp.RequestCtx
			g.parseError(&ctx, err)
			if c := ctx.Response.StatusCode(); c < 400 || c > 499 {
				t.Fatalf("parse error %v answered %d", err, c)
			}
			return
		}
		var ctx fasthttp.RequestCtx
		ctx.Init(&req, nil, nil)
		g.serve(&ctx)
		if c := ctx.Response.StatusCode(); c < 200 || c > 599 {
			t.Fatalf("status %d", c)
		}
	})
}
