package worker_test

import (
	"errors"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/natserve/natserve/client"
	"github.com/natserve/natserve/internal/testutil"
	"github.com/natserve/natserve/internal/wire"
)

// TestConnectionLostWhileUnacknowledged: a caller whose connection to NATS
// drops while its request waits for an acknowledgment cannot tell whether
// the acknowledgment went down with the connection (its NATS server died
// after the replica's server had it): it fails the call with
// ErrConnectionLost (HTTP 502 connection_lost) instead of sending it again.
// The replica here is stopped (SIGSTOP) so no acknowledgment ever comes;
// the same call without the drop keeps resending until its deadline, so
// the error is the drop's doing.
func TestConnectionLostWhileUnacknowledged(t *testing.T) {
	s := newStack(t)
	r := s.replica(t, "cl-1", "Counter", ``, 8)
	p := newHoldProxy(t, strings.TrimPrefix(s.url, "nats://"))
	nc := testutil.Conn(t, "nats://"+p.addr, append(testutil.CredsOptions(t, s.url, wire.RoleIngress), nats.ReconnectWait(20*time.Millisecond))...)
	cl := client.New(nc)
	defer cl.Close()
	if err := r.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = r.Signal(syscall.SIGCONT) }()

	// Control: no drop. Not acknowledged, sent again and again, until the
	// deadline.
	start := time.Now()
	_, err := client.Call[int](testCtx(t, 1500*time.Millisecond), cl.Handle("cl-1"), 0)
	if !errors.Is(err, client.ErrDeadline) {
		t.Fatalf("without a drop: got %v after %v, want ErrDeadline", err, time.Since(start))
	}

	// The connection drops while the request is out.
	errc := make(chan error, 1)
	start = time.Now()
	go func() {
		_, err := client.Call[int](testCtx(t, 20*time.Second), cl.Handle("cl-1"), 0)
		errc <- err
	}()
	time.Sleep(50 * time.Millisecond)
	p.drop()
	err = <-errc
	elapsed := time.Since(start)
	var ce *client.Error
	if !errors.Is(err, client.ErrConnectionLost) || !errors.As(err, &ce) || ce.HTTPStatus() != 502 {
		t.Fatalf("with a drop: got %v after %v, want ErrConnectionLost (502)", err, elapsed)
	}
	if elapsed >= 20*time.Second {
		t.Fatalf("the call waited for its deadline (%v)", elapsed)
	}
	t.Logf("connection dropped 50 ms after sending: failed after %v with %v", elapsed.Round(time.Millisecond), err)
}
