package worker_test

import (
	"context"
	"errors"
	"io"
	"net"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/natserve/natserve/client"
	"github.com/natserve/natserve/internal/testutil"
	"github.com/natserve/natserve/internal/wire"
)

// TestStreamOrderAndCompleteness: 10,000 items arrive in order, once each,
// then the stream ends.
func TestStreamOrderAndCompleteness(t *testing.T) {
	s := newStack(t)
	s.replica(t, "st", "Stream", `[]`, 4)
	ctx := context.Background()
	want := 0
	start := time.Now()
	for v, err := range client.Stream[int](ctx, s.cl.Handle("st"), 10_000, 0) {
		if err != nil {
			t.Fatalf("after %d items: %v", want, err)
		}
		if v != want {
			t.Fatalf("item %d is %d", want, v)
		}
		want++
	}
	if want != 10_000 {
		t.Fatalf("got %d items, want 10000", want)
	}
	t.Logf("10,000 items through a handle in %v", time.Since(start))

	// A streaming method called as a unary call says to stream it.
	_, err := client.Call[int](ctx, s.cl.Handle("st"), 3, 0)
	var ce *client.Error
	if !errors.As(err, &ce) || ce.Code != string(wire.CodeStreaming) {
		t.Fatalf("unary call of a stream: %v, want code %s", err, wire.CodeStreaming)
	}
	// A unary method called as a stream is a stream of one item.
	var got []any
	for v, err := range s.cl.Handle("st").Method("NoSuch").Stream(ctx) {
		got = append(got, v, err)
	}
	if len(got) != 2 || got[1] == nil || !strings.Contains(got[1].(error).Error(), "unknown method") {
		t.Fatalf("stream of an unknown method: %v", got)
	}
}

// TestStreamErrorMidway: an error after some items ends the stream with it,
// never as a success.
func TestStreamErrorMidway(t *testing.T) {
	s := newStack(t)
	s.replica(t, "st", "Stream", `[]`, 4)
	n := 0
	var last error
	for v, err := range client.Stream[int](context.Background(), s.cl.Handle("st"), 10, 0, 3) {
		if err != nil {
			last = err
			break
		}
		if v != n {
			t.Fatalf("item %d is %d", n, v)
		}
		n++
	}
	var ce *client.Error
	if n != 3 || !errors.As(last, &ce) || ce.Code != string(wire.CodeUser) || !strings.Contains(ce.Message, "failed at item 3") {
		t.Fatalf("got %d items then %v; want 3 then a user error", n, last)
	}
}

// TestStreamCancelFreesSlot: breaking out of the loop cancels the replica's
// context and frees its slot (max_ongoing_requests 1 counts the stream
// until it ends).
func TestStreamCancelFreesSlot(t *testing.T) {
	s := newStack(t)
	s.replica(t, "st", "Stream", `[]`, 1)
	ctx := context.Background()
	h := s.cl.Handle("st")
	for v, err := range client.Stream[int](ctx, h, 1000, 50) {
		if err != nil {
			t.Fatal(err)
		}
		if v == 1 {
			// The one slot is held: another stream is refused as busy.
			sctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
			for _, err := range client.Stream[int](sctx, h, 1, 0) {
				if err == nil || strings.Contains(err.Error(), "\"1\"") {
					t.Errorf("second stream while the slot is held: %v", err)
				}
				break
			}
			cancel()
			break
		}
	}
	start := time.Now()
	// The slot frees once the replica sees the cancel: a new stream starts.
	var took time.Duration
	for {
		n := 0
		var last error
		for _, err := range client.Stream[int](ctx, h, 2, 0) {
			if last = err; err != nil {
				break
			}
			n++
		}
		if n == 2 && last == nil {
			took = time.Since(start)
			break
		}
		if time.Since(start) > 5*time.Second {
			t.Fatalf("slot not freed after 5s: %v", last)
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Logf("stream cancelled → slot free again in %v", took)
	if took > time.Second {
		t.Errorf("slot freed after %v, want ≤ 1s", took)
	}
}

// TestStreamSlowReader: a reader that does not read holds at most the
// window; the replica waits for credit, then the stream completes.
func TestStreamSlowReader(t *testing.T) {
	s := newStack(t)
	s.replica(t, "st", "Stream", `[]`, 4)
	msg := streamMsg(t, 20_000)
	st, err := s.cl.OpenStream(context.Background(), "st", "", msg, client.WithStreamWindow(16))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if _, err := st.Next(); err != nil {
		t.Fatal(err)
	}
	// A reader that does not read, for longer than the silence that means
	// a dead replica (wire.StreamDeadAfter): the frames waiting for it
	// count, it must not take the replica for dead.
	time.Sleep(wire.StreamDeadAfter + 500*time.Millisecond)
	if q := st.Queued(); q > 16+4 {
		t.Fatalf("%d items queued at the reader, window is 16", q)
	}
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	before := ms.HeapInuse
	n := 1
	for {
		_, err := st.Next()
		if err != nil {
			if err.Error() != "EOF" {
				t.Fatalf("after %d: %v", n, err)
			}
			break
		}
		n++
		if n%5_000 == 0 {
			time.Sleep(time.Millisecond)
		}
	}
	runtime.ReadMemStats(&ms)
	t.Logf("slow reader: %d items, heap in use %d KiB before reading, %d KiB after", n, before>>10, ms.HeapInuse>>10)
	if n != 20_000 {
		t.Fatalf("got %d items", n)
	}
}

func streamMsg(t *testing.T, args ...any) *nats.Msg {
	t.Helper()
	data, err := wire.MarshalArgs(append(args, 0))
	if err != nil {
		t.Fatal(err)
	}
	return &nats.Msg{Subject: wire.DeploymentSubject("st"), Data: data, Header: nats.Header{wire.HeaderKind: {wire.KindCall}}}
}

// TestStreamReplicaKilled: a replica killed mid-stream is noticed within
// about a second (no frame, not even a beat), and said so.
func TestStreamReplicaKilled(t *testing.T) {
	s := newStack(t)
	r := s.replica(t, "st", "Stream", `[]`, 4)
	n := 0
	var killed time.Time
	var last error
	for _, err := range client.Stream[int](context.Background(), s.cl.Handle("st"), 100_000, 20) {
		if err != nil {
			last = err
			break
		}
		if n++; n == 3 {
			killed = time.Now()
			if err := r.Signal(syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
		}
	}
	took := time.Since(killed)
	t.Logf("replica killed after 3 items: the stream failed %v later: %v", took, last)
	var ce *client.Error
	if !errors.As(last, &ce) || ce.Code != "replica_died" {
		t.Fatalf("stream after the replica was killed: %v, want replica_died", last)
	}
	if took > 3*time.Second {
		t.Errorf("noticed after %v", took)
	}
}

// TestStreamStarvedReader: frames the replica sent that have not reached
// the reader yet (they wait in its connection, as in a caller too starved
// to read them) do not make a live replica look dead. A proxy between the
// caller and the broker holds everything the broker sends for longer than
// wire.StreamDeadAfter while the replica beats; the stream then goes on.
func TestStreamStarvedReader(t *testing.T) {
	s := newStack(t)
	s.replica(t, "st", "Stream", `[]`, 4)
	p := newHoldProxy(t, strings.TrimPrefix(s.url, "nats://"))
	cl := client.New(testutil.Conn(t, "nats://"+p.addr, testutil.CredsOptions(t, s.url, "admin")...))
	defer cl.Close()
	var err error
	// Three items, 3 s apart: beats every 250 ms in the gaps.
	msg := streamMsg(t, 3)
	if msg.Data, err = wire.MarshalArgs([]any{3, 3000}); err != nil {
		t.Fatal(err)
	}
	st, err := cl.OpenStream(context.Background(), "st", "", msg)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if _, err := st.Next(); err != nil {
		t.Fatal(err)
	}
	p.hold(wire.StreamDeadAfter * 5 / 2)
	start := time.Now()
	for want := 1; want < 3; want++ {
		b, err := st.Next()
		if err != nil {
			t.Fatalf("item %d after the broker's frames were held %v: %v", want, wire.StreamDeadAfter*5/2, err)
		}
		var v int
		if err := wire.UnmarshalValue(b, &v); err != nil || v != want {
			t.Fatalf("item %d: %v %v", want, v, err)
		}
	}
	if _, err := st.Next(); err != io.EOF {
		t.Fatalf("end: %v", err)
	}
	t.Logf("frames held %v: the stream went on (items 1, 2 after %v)", wire.StreamDeadAfter*5/2, time.Since(start))
}

// holdProxy forwards TCP connections to a NATS server; hold keeps what the
// server sends for a while, holdClient what the client sends.
type holdProxy struct {
	addr       string
	mu         sync.Mutex
	conns      []net.Conn   // open connections, both sides
	held       atomic.Int64 // server to client held until (Unix nanoseconds)
	heldClient atomic.Int64 // client to server held until (Unix nanoseconds)
}

func newHoldProxy(t *testing.T, target string) *holdProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &holdProxy{addr: ln.Addr().String()}
	var wg sync.WaitGroup
	t.Cleanup(func() {
		_ = ln.Close()
		p.drop()
		wg.Wait()
	})
	// pump copies from src to dst, each read waiting while until is ahead.
	pump := func(dst, src net.Conn, until *atomic.Int64) {
		defer wg.Done()
		defer dst.Close()
		buf := make([]byte, 32<<10)
		for {
			n, err := src.Read(buf)
			for time.Now().UnixNano() < until.Load() {
				time.Sleep(5 * time.Millisecond)
			}
			if n > 0 {
				if _, err := dst.Write(buf[:n]); err != nil {
					return
				}
			}
			if err != nil {
				return
			}
		}
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			u, err := net.Dial("tcp", target)
			if err != nil {
				_ = c.Close()
				continue
			}
			p.mu.Lock()
			p.conns = append(p.conns, c, u)
			p.mu.Unlock()
			wg.Add(2)
			go pump(u, c, &p.heldClient)
			go pump(c, u, &p.held)
		}
	}()
	return p
}

// drop closes every connection open through the proxy (new ones are
// still accepted): a client sees its server go away and reconnects.
func (p *holdProxy) drop() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.conns {
		_ = c.Close()
	}
	p.conns = nil
}

func (p *holdProxy) hold(d time.Duration) { p.held.Store(time.Now().Add(d).UnixNano()) }

func (p *holdProxy) holdClient(d time.Duration) { p.heldClient.Store(time.Now().Add(d).UnixNano()) }
