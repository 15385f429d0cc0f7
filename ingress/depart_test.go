package ingress

import (
	"context"
	"net"
	"testing"
	"time"
)

func tcpPair(t testing.TB) (server, client net.Conn) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	client, err = net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	server, err = ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	return server, client
}

// A client that closes its connection while its request runs is noticed
// at once (after watchAfter); a pipelined request ends the watch without
// a departure; a fast request never starts a watcher.
func TestDeparture(t *testing.T) {
	srv, cli := tcpPair(t)
	defer srv.Close()
	d := watchClient(context.Background(), srv)
	time.Sleep(2 * watchAfter)
	start := time.Now()
	_ = cli.Close()
	select {
	case <-d.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("the departure was not noticed")
	}
	t.Logf("client close → request context done after %v", time.Since(start))
	if !d.departed() || d.Err() != context.Canceled {
		t.Fatalf("departed %v, err %v", d.departed(), d.Err())
	}
	d.release()

	srv2, cli2 := tcpPair(t)
	defer srv2.Close()
	defer cli2.Close()
	d = watchClient(context.Background(), srv2)
	time.Sleep(2 * watchAfter)
	if _, err := cli2.Write([]byte("GET / HTTP/1.1\r\n")); err != nil { // pipelined: still there
		t.Fatal(err)
	}
	time.Sleep(2 * watchAfter)
	if d.departed() || d.Err() != nil {
		t.Fatal("a pipelined request taken for a departure")
	}
	d.release()
	// The bytes are still there for the server to read (peeked, not consumed).
	_ = srv2.SetReadDeadline(time.Now().Add(time.Second))
	buf := make([]byte, 16)
	if n, err := srv2.Read(buf); err != nil || string(buf[:n]) != "GET / HTTP/1.1\r\n" {
		t.Fatalf("after the watch: %q %v", buf[:n], err)
	}

	// Released while watching: the watcher ends.
	srv3, cli3 := tcpPair(t)
	defer srv3.Close()
	defer cli3.Close()
	d = watchClient(context.Background(), srv3)
	time.Sleep(2 * watchAfter)
	d.release()
	if d.departed() {
		t.Fatal("departed after a plain release")
	}
}

// BenchmarkWatchClient is what every unary request pays for departure
// detection when it is answered within watchAfter: a pooled context, a
// timer armed and stopped.
func BenchmarkWatchClient(b *testing.B) {
	srv, cli := tcpPair(b)
	defer srv.Close()
	defer cli.Close()
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		watchClient(ctx, srv).release()
	}
}
