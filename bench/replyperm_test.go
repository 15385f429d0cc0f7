package bench_test

import (
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/natserve/natserve/examples/hello"
)

// BenchmarkReplyPermission measures what a response permission on the
// responder's identity costs the broker (issue 18): a replica's identity
// had one (allow_responses) although its publish allow-list already held
// every inbox, so the broker checked and cached each request's unique reply
// subject against that allow-list as it delivered the request. Both
// responders publish to _INBOX.> by their allow-list; "resp" also has the
// response permission (wire.ReplicaPerms had it before issue 18). 64
// requests in flight, from one caller.
func BenchmarkReplyPermission(b *testing.B) {
	pub := &server.SubjectPermission{Allow: []string{"_INBOX.>"}}
	perms := map[string]*server.Permissions{
		"plain": {Publish: pub, Subscribe: &server.SubjectPermission{Allow: []string{"bench.>"}}},
		"resp": {Publish: pub, Subscribe: &server.SubjectPermission{Allow: []string{"bench.>"}},
			Response: &server.ResponsePermission{MaxMsgs: 1, Expires: time.Minute}},
	}
	opts := &server.Options{Host: "127.0.0.1", Port: -1, NoLog: true, NoSigs: true, Users: []*server.User{
		{Username: "plain", Password: "p", Permissions: perms["plain"]},
		{Username: "resp", Password: "p", Permissions: perms["resp"]},
		{Username: "caller", Password: "p"},
	}}
	s, err := server.NewServer(opts)
	if err != nil {
		b.Fatal(err)
	}
	go s.Start()
	defer s.Shutdown()
	if !s.ReadyForConnections(10 * time.Second) {
		b.Fatal("nats-server not ready")
	}
	reply := hello.Payload(20)
	for _, user := range []string{"plain", "resp"} {
		rnc, err := nats.Connect(s.ClientURL(), nats.UserInfo(user, "p"))
		if err != nil {
			b.Fatal(err)
		}
		defer rnc.Close()
		if _, err := rnc.QueueSubscribe("bench."+user, "q", func(m *nats.Msg) { _ = m.Respond(reply) }); err != nil {
			b.Fatal(err)
		}
		_ = rnc.Flush()
	}
	nc, err := nats.Connect(s.ClientURL(), nats.UserInfo("caller", "p"))
	if err != nil {
		b.Fatal(err)
	}
	defer nc.Close()
	run := func(b *testing.B, subj string) time.Duration {
		ch := make(chan *nats.Msg, 4096)
		sub, err := nc.ChanSubscribe("_INBOX.bench.>", ch)
		if err != nil {
			b.Fatal(err)
		}
		defer sub.Unsubscribe()
		seq := 0
		send := func() { // a unique reply subject per request, as natserve's callers use
			seq++
			_ = nc.PublishRequest(subj, "_INBOX.bench."+itoa(seq), []byte("20"))
		}
		start := time.Now()
		sent := 0
		for ; sent < min(64, b.N); sent++ {
			send()
		}
		for got := 0; got < b.N; got++ {
			<-ch
			if sent < b.N {
				send()
				sent++
			}
		}
		return time.Since(start)
	}
	b.ReportAllocs()
	plain := run(b, "bench.plain")
	resp := run(b, "bench.resp")
	b.ReportMetric(float64(plain.Nanoseconds())/float64(b.N), "plain-ns/op")
	b.ReportMetric(float64(resp.Nanoseconds())/float64(b.N), "resp-ns/op")
	b.ReportMetric(float64(plain)/float64(resp), "resp/plain-throughput")
}

func itoa(n int) string {
	var b [20]byte
	i := len(b)
	for {
		i--
		b[i] = byte('0' + n%10)
		n /= 10
		if n == 0 {
			return string(b[i:])
		}
	}
}
