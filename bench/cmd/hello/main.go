// Command hello is the benchmarks' bare fasthttp server: the ceiling with no
// hop (A) and the replicas nginx proxies to (E). It answers ?size=N with N
// bytes, like the Hello deployment.
package main

import (
	"flag"
	"log"
	"strconv"

	"github.com/natserve/natserve/examples/hello"
	"github.com/valyala/fasthttp"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:9000", "listen address")
	flag.Parse()
	h := func(ctx *fasthttp.RequestCtx) {
		n := -1
		if s := ctx.QueryArgs().Peek("size"); s != nil {
			n, _ = strconv.Atoi(string(s))
		}
		ctx.SetContentType("application/octet-stream")
		ctx.SetBody(hello.Payload(n))
	}
	log.Fatal((&fasthttp.Server{Handler: h, Name: "hello"}).ListenAndServe(*addr))
}
