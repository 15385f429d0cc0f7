package worker

import (
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/natserve/natserve/internal/testutil"
)

// BenchmarkAckConfirm prices the confirmation of an admission: publish an
// acknowledgment, then wait until the broker confirmed it (group-committed
// PING/PONG rounds), serially (c1) and with 64 admissions at once (c64),
// beside its baseline, the acknowledgment alone; "coalesced": the round's
// leader publishes the acknowledgments, one message per caller (here one
// caller). pings/op is the PING/PONG round trips per admission (1 at c1;
// well under 1 under load), msgs/op the acknowledgment messages.
func BenchmarkAckConfirm(b *testing.B) {
	br := testutil.Broker(b)
	nc := testutil.Conn(b, br.ClientURL())
	ack := []byte{0xc1, 0, 'r'}
	for _, conc := range []int{1, 64} {
		for _, mode := range []string{"ack-only", "confirmed", "coalesced"} {
			b.Run(map[int]string{1: "c1", 64: "c64"}[conc]+"/"+mode, func(b *testing.B) {
				a := newAckRounds(nc, "r", nil)
				b.ReportAllocs()
				var wg sync.WaitGroup
				per := (b.N + conc - 1) / conc
				out0 := nc.Stats().OutMsgs
				b.ResetTimer()
				for g := 0; g < conc; g++ {
					wg.Add(1)
					go func() {
						defer wg.Done()
						reply := "bench.inbox.-" + strconv.Itoa(g)
						for i := 0; i < per; i++ {
							ok := true
							switch mode {
							case "ack-only":
								_ = nc.Publish("bench.ack", ack)
							case "confirmed":
								_ = nc.Publish("bench.ack", ack)
								ok = a.confirm(time.Now().Add(time.Second), "", "")
							case "coalesced":
								ok = a.confirm(time.Now().Add(time.Second), "bench.inbox.", reply)
							}
							if !ok {
								b.Error("not confirmed")
								return
							}
						}
					}()
				}
				wg.Wait()
				b.StopTimer()
				if mode == "ack-only" {
					_ = nc.Flush()
				}
				n := float64(per * conc)
				b.ReportMetric(float64(a.rounds.Load())/n, "pings/op")
				b.ReportMetric(float64(nc.Stats().OutMsgs-out0)/n, "msgs/op")
			})
		}
	}
}

// TestAckConfirmUnanswered: an acknowledgment whose PING the broker does not
// answer by the ack-by time (here: a closed connection, and an ack-by
// already passed) is not confirmed, and counted.
func TestAckConfirmUnanswered(t *testing.T) {
	br := testutil.Broker(t)
	nc, err := nats.Connect(br.ClientURL(), testutil.CredsOptions(t, br.ClientURL(), "admin")...)
	if err != nil {
		t.Fatal(err)
	}
	a := newAckRounds(nc, "r", nil)
	if !a.confirm(time.Now().Add(5*time.Second), "", "") {
		t.Fatal("a live broker did not confirm")
	}
	if a.confirm(time.Now().Add(-time.Millisecond), "", "") {
		t.Fatal("confirmed after its ack-by time")
	}
	nc.Close()
	if a.confirm(time.Now().Add(5*time.Second), "", "") {
		t.Fatal("confirmed on a closed connection")
	}
	if n := a.notRun.Load(); n != 2 {
		t.Fatalf("not run %d, want 2", n)
	}
}

// TestAckConfirmConcurrent: admissions confirming at once share rounds
// (each leader hands the next round on; none is left waiting) and each is
// confirmed once the broker answered.
func TestAckConfirmConcurrent(t *testing.T) {
	br := testutil.Broker(t)
	nc := testutil.Conn(t, br.ClientURL())
	a := newAckRounds(nc, "r", nil)
	const goroutines, each = 64, 200
	var wg sync.WaitGroup
	for g := 0; g < goroutines; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < each; i++ {
				_ = nc.Publish("test.ack", []byte{0xc1, 0, 'r'})
				if !a.confirm(time.Now().Add(10*time.Second), "", "") {
					t.Error("not confirmed")
					return
				}
			}
		}()
	}
	wg.Wait()
	t.Logf("%d admissions, %d PING/PONG rounds", goroutines*each, a.rounds.Load())
	if a.notRun.Load() != 0 || a.rounds.Load() == 0 || a.rounds.Load() > goroutines*each {
		t.Fatalf("not run %d, rounds %d", a.notRun.Load(), a.rounds.Load())
	}
}
