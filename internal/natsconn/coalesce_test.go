package natsconn_test

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/natserve/natserve/internal/natsconn"
	"github.com/natserve/natserve/internal/testutil"
)

// pair returns a coalescing connection and the other end of a real TCP
// connection.
func pair(t *testing.T, timeout time.Duration) (net.Conn, net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			close(accepted)
			return
		}
		accepted <- c
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	peer, ok := <-accepted
	if !ok {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { peer.Close() })
	return natsconn.NewCoalescingConn(c, timeout), peer
}

// Everything written arrives once and in order, small writes and large
// ones (which bypass the buffer) mixed, and Close sends what is still
// buffered.
func TestCoalescingConnOrderAndClose(t *testing.T) {
	c, peer := pair(t, time.Minute)
	var want bytes.Buffer
	got := make(chan []byte, 1)
	go func() {
		b, _ := io.ReadAll(peer)
		got <- b
	}()
	for i := range 2000 {
		p := []byte(fmt.Sprintf("msg %d;", i))
		if i%250 == 0 { // a large write goes straight to the socket, behind the buffer
			p = bytes.Repeat([]byte{byte('a' + i%26)}, 100<<10)
		}
		want.Write(p)
		if n, err := c.Write(p); err != nil || n != len(p) {
			t.Fatalf("write %d: n=%d err=%v", i, n, err)
		}
	}
	if err := c.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	select {
	case b := <-got:
		if !bytes.Equal(b, want.Bytes()) {
			t.Fatalf("the peer read %d bytes, want %d in the order written", len(b), want.Len())
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the peer did not see the connection close")
	}
	if _, err := c.Write([]byte("late")); err == nil {
		t.Fatal("a write after Close succeeded")
	}
	if err := c.Close(); err == nil {
		t.Fatal("a second Close reported no error")
	}
}

// A peer that stops reading makes writes wait, not grow the buffer
// without end; the write timeout then fails them and closes the socket,
// which the reader of the connection sees.
func TestCoalescingConnPeerNotReading(t *testing.T) {
	c, peer := pair(t, 300*time.Millisecond)
	_ = peer // never read
	p := make([]byte, 16<<10)
	var err error
	var total int
	deadline := time.Now().Add(20 * time.Second)
	for err == nil && time.Now().Before(deadline) {
		var n int
		n, err = c.Write(p)
		total += n
	}
	if err == nil {
		t.Fatalf("writes to a peer that does not read still succeed after %d bytes", total)
	}
	t.Logf("wrote %d KiB before: %v", total>>10, err)
	if total > 32<<20 { // the kernel's socket buffers hold a few MiB; the connection 256 KiB
		t.Fatalf("%d MiB were taken before a write waited", total>>20)
	}
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("want a timeout, got %v", err)
	}
	if err := c.SetReadDeadline(time.Now().Add(5 * time.Second)); err != nil && !errors.Is(err, net.ErrClosed) {
		t.Fatal(err)
	}
	if _, err := c.Read(make([]byte, 1)); err == nil {
		t.Fatal("the connection was not closed after the failed write")
	}
}

// Concurrent writers (the client's goroutines through nats.go, which
// serialises them) and a real nats-server: request-reply through
// coalescing connections on both sides, and again after both reconnect
// (through the same dialer).
func TestCoalescingNATS(t *testing.T) {
	url := testutil.Broker(t).ClientURL()
	opts := append(testutil.CredsOptions(t, url, "admin"), natsconn.Coalescing(2*time.Second), nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
	srv, err := nats.Connect(url, opts...)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	cli, err := nats.Connect(url, opts...)
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	if _, err := srv.QueueSubscribe("echo", "q", func(m *nats.Msg) { _ = m.Respond(m.Data) }); err != nil {
		t.Fatal(err)
	}
	if err := srv.Flush(); err != nil {
		t.Fatal(err)
	}
	call := func(round int) {
		var wg sync.WaitGroup
		errs := make(chan error, 64)
		for g := range 64 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range 50 {
					want := fmt.Sprintf("r%d g%d i%d", round, g, i)
					m, err := cli.Request("echo", []byte(want), 10*time.Second)
					if err != nil {
						errs <- err
						return
					}
					if string(m.Data) != want {
						errs <- fmt.Errorf("reply %q to %q", m.Data, want)
						return
					}
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatalf("round %d: %v", round, err)
		}
	}
	call(1)
	reconnected := make(chan struct{}, 2)
	for _, nc := range []*nats.Conn{srv, cli} {
		nc.SetReconnectHandler(func(*nats.Conn) { reconnected <- struct{}{} })
		if err := nc.ForceReconnect(); err != nil {
			t.Fatal(err)
		}
	}
	for range 2 {
		select {
		case <-reconnected:
		case <-time.After(20 * time.Second):
			t.Fatal("no reconnect within 20 s")
		}
	}
	deadline := time.Now().Add(20 * time.Second)
	for !(srv.IsConnected() && cli.IsConnected()) && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if err := srv.Flush(); err != nil {
		t.Fatalf("after the restart: %v", err)
	}
	call(2)
}

// Close does not wait for a write stuck on a peer that does not read (the
// write timeout is ten minutes here): it cuts it off, as closing a plain
// connection would, and the writes waiting behind it fail. nats.go closes
// the connection so when it finds it stale, to reconnect.
func TestCoalescingConnCloseCutsOffStuckWrite(t *testing.T) {
	c, _ := pair(t, 10*time.Minute)
	errs := make(chan error, 1)
	go func() {
		p := make([]byte, 16<<10)
		for {
			if _, err := c.Write(p); err != nil {
				errs <- err
				return
			}
		}
	}()
	// Let the kernel's buffers and the connection's fill up.
	time.Sleep(500 * time.Millisecond)
	select {
	case err := <-errs:
		t.Fatalf("a write failed before Close: %v", err)
	default:
	}
	closed := make(chan error, 1)
	go func() { closed <- c.Close() }()
	select {
	case <-closed:
	case <-time.After(30 * time.Second):
		t.Fatal("Close waited for a write to a peer that does not read")
	}
	select {
	case err := <-errs:
		t.Logf("the waiting writer got: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("a write waiting for room did not fail after Close")
	}
}
