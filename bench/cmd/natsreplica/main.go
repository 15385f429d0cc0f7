// Command natsreplica is the benchmarks' raw NATS request-reply responder
// (C): a queue subscriber that answers with the payload a request asks for,
// the same work as the Hello deployment without natserve.
package main

import (
	"flag"
	"log"
	"os"
	"os/signal"
	"strconv"
	"syscall"

	"github.com/nats-io/nats.go"
	"github.com/natserve/natserve/examples/hello"
)

func main() {
	url := flag.String("nats", nats.DefaultURL, "NATS URL")
	subject := flag.String("subject", "bench.raw", "subject (queue group bench)")
	creds := flag.String("creds", os.Getenv("NATSERVE_CREDS"), "NATS credentials file (natserve up's admin.creds; default $NATSERVE_CREDS)")
	flag.Parse()
	var opts []nats.Option
	if *creds != "" {
		opts = append(opts, nats.UserCredentials(*creds))
	}
	nc, err := nats.Connect(*url, opts...)
	if err != nil {
		log.Fatal(err)
	}
	_, err = nc.QueueSubscribe(*subject, "bench", func(m *nats.Msg) {
		n, _ := strconv.Atoi(string(m.Data))
		_ = m.Respond(hello.Payload(n))
	})
	if err != nil {
		log.Fatal(err)
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, os.Interrupt)
	<-sig
	nc.Close()
}
