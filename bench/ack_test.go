package bench_test

import (
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/natserve/natserve/examples/hello"
	"github.com/natserve/natserve/internal/testutil"
	"github.com/natserve/natserve/internal/wire"
)

// BenchmarkAcknowledgment measures what the admission acknowledgment costs
// at the NATS level: a responder that sends an acknowledgment and then the
// reply on the request's inbox, against its baseline, the same responder
// sending the reply alone. Serial (c1) and with 64 requests in flight.
func BenchmarkAcknowledgment(b *testing.B) {
	br := testutil.Broker(b)
	url := br.ClientURL()
	rnc := testutil.Conn(b, url)
	ack := wire.AppendAck(nil, "rbench0000000000000000", 0)
	reply := hello.Payload(20)
	for _, subj := range []string{"bench.plain", "bench.acked"} {
		withAck := subj == "bench.acked"
		sub, err := rnc.QueueSubscribe(subj, "q", func(m *nats.Msg) {
			if withAck {
				_ = m.Respond(ack)
			}
			_ = m.Respond(reply)
		})
		if err != nil {
			b.Fatal(err)
		}
		defer sub.Unsubscribe()
	}
	_ = rnc.Flush()
	nc := testutil.Conn(b, url)
	for _, inFlight := range []int{1, 64} {
		run := func(b *testing.B, subj string, msgs int) time.Duration {
			inbox := nats.NewInbox()
			ch := make(chan *nats.Msg, 4096)
			sub, err := nc.ChanSubscribe(inbox, ch)
			if err != nil {
				b.Fatal(err)
			}
			defer sub.Unsubscribe()
			start := time.Now()
			sent, got := 0, 0
			for ; sent < min(inFlight, b.N); sent++ {
				_ = nc.PublishRequest(subj, inbox, []byte("20"))
			}
			for got < b.N*msgs {
				<-ch
				got++
				if got%msgs == 0 && sent < b.N {
					_ = nc.PublishRequest(subj, inbox, []byte("20"))
					sent++
				}
			}
			return time.Since(start)
		}
		b.Run(map[int]string{1: "c1", 64: "c64"}[inFlight], func(b *testing.B) {
			b.ReportAllocs()
			plain := run(b, "bench.plain", 1)
			acked := run(b, "bench.acked", 2)
			b.ReportMetric(float64(plain.Nanoseconds())/float64(b.N), "plain-ns/op")
			b.ReportMetric(float64(acked.Nanoseconds())/float64(b.N), "acked-ns/op")
			b.ReportMetric(float64(plain)/float64(acked), "acked/plain-throughput")
		})
	}
}
