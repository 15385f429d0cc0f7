// Command naive is the benchmarks' naive chain (N): what one would write in a
// few dozen lines to put NATS behind HTTP. "naive ingress" is a fasthttp
// server that sends each request's query (msgpack) with nc.RequestMsg to a
// queue group; "naive responder" is a QueueSubscribe callback that decodes it
// and m.Respond()s the payload the Hello deployment sends. Both talk to a
// stock nats-server over loopback TCP, no auth.
//
//	naive ingress -nats nats://127.0.0.1:4222 -addr 127.0.0.1:8100
//	naive responder -nats nats://127.0.0.1:4222
package main

import (
	"context"
	"flag"
	"log"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/natserve/natserve/examples/hello"
	"github.com/natserve/natserve/internal/profile"
	"github.com/valyala/fasthttp"
	"github.com/vmihailenco/msgpack/v5"
)

const subject = "bench.naive"

func main() {
	if len(os.Args) < 2 {
		log.Fatal("usage: naive ingress|responder [flags]")
	}
	fs := flag.NewFlagSet(os.Args[1], flag.ExitOnError)
	url := fs.String("nats", nats.DefaultURL, "NATS URL")
	addr := fs.String("addr", "127.0.0.1:8100", "HTTP listen address (ingress)")
	pprofAddr := fs.String("pprof", "", "serve CPU profiles on this address (for the harness's -profile)")
	_ = fs.Parse(os.Args[2:])
	if *pprofAddr != "" {
		go profile.Serve(context.Background(), *pprofAddr, slog.Default())
	}
	// The server may still be starting (a loaded machine): retry for 30 s.
	nc, err := nats.Connect(*url)
	for deadline := time.Now().Add(30 * time.Second); err != nil && time.Now().Before(deadline); {
		time.Sleep(100 * time.Millisecond)
		nc, err = nats.Connect(*url)
	}
	if err != nil {
		log.Fatal(err)
	}
	defer nc.Close()
	switch os.Args[1] {
	case "ingress":
		go func() {
			log.Fatal(fasthttp.ListenAndServe(*addr, func(ctx *fasthttp.RequestCtx) {
				body, _ := msgpack.Marshal(map[string]string{"path": string(ctx.Path()), "query": string(ctx.QueryArgs().QueryString())})
				reply, err := nc.RequestMsg(&nats.Msg{Subject: subject, Data: body}, 10*time.Second)
				if err != nil {
					ctx.Error(err.Error(), fasthttp.StatusBadGateway)
					return
				}
				ctx.SetContentType("text/plain; charset=utf-8")
				ctx.SetBody(reply.Data)
			}))
		}()
	case "responder":
		_, err = nc.QueueSubscribe(subject, "naive", func(m *nats.Msg) {
			var req map[string]string
			if msgpack.Unmarshal(m.Data, &req) != nil {
				return
			}
			args := fasthttp.Args{}
			args.Parse(req["query"])
			_ = m.Respond(hello.Payload(args.GetUintOrZero("size")))
		})
		if err != nil {
			log.Fatal(err)
		}
	default:
		log.Fatalf("naive: unknown mode %q", os.Args[1])
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, os.Interrupt)
	<-sig
}
