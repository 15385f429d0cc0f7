package ingress

import (
	"errors"
	"log/slog"
	"net"
	"sync"
	"syscall"
	"time"
)

// Accept backoff: a failing accept is retried after acceptBackoffMin,
// doubling up to acceptBackoffMax; the failures are logged at most once per
// acceptLogEvery.
const (
	acceptBackoffMin = 5 * time.Millisecond
	acceptBackoffMax = time.Second
	acceptLogEvery   = time.Second
)

// retryListener is the listener fasthttp serves. fasthttp stops serving for
// good on the first accept error that is not a timeout, and running out of
// file descriptors (EMFILE, ENFILE) is such an error: retryListener retries
// the errors that pass with backoff instead, so that the ingress serves
// again once connections close.
type retryListener struct {
	net.Listener
	log *slog.Logger

	closeOnce sync.Once
	closed    chan struct{} // closed by Close: a backoff ends at once

	// Only the accepting goroutine (fasthttp's Serve loop) uses these.
	lastLog time.Time
	failed  int // failures since the last log line
}

func newRetryListener(ln net.Listener, log *slog.Logger) *retryListener {
	return &retryListener{Listener: ln, log: log, closed: make(chan struct{})}
}

// Accept waits for the next connection, retrying temporary failures.
func (l *retryListener) Accept() (net.Conn, error) {
	var delay time.Duration
	for {
		c, err := l.Listener.Accept()
		if err == nil {
			if l.failed > 0 || !l.lastLog.IsZero() {
				l.log.Info("accepting connections again", "failures", l.failed)
				l.failed, l.lastLog = 0, time.Time{}
			}
			return c, nil
		}
		if !temporaryAcceptError(err) {
			return nil, err
		}
		delay = min(max(2*delay, acceptBackoffMin), acceptBackoffMax)
		l.failed++
		if now := time.Now(); now.Sub(l.lastLog) >= acceptLogEvery {
			l.log.Warn("accept failed; retrying", "err", err, "failures", l.failed, "retry_in", delay)
			l.failed, l.lastLog = 0, now
		}
		t := time.NewTimer(delay)
		select {
		case <-l.closed:
			t.Stop()
			return nil, net.ErrClosed // fasthttp's Serve returns nil for it
		case <-t.C:
		}
	}
}

// Close closes the listener and ends a backoff in progress.
func (l *retryListener) Close() error {
	l.closeOnce.Do(func() { close(l.closed) })
	return l.Listener.Close()
}

// temporaryAcceptError reports whether accept may succeed later: the
// process or the system is out of descriptors or buffers, or a client gave
// up before its connection was taken.
func temporaryAcceptError(err error) bool {
	for _, e := range []syscall.Errno{syscall.EMFILE, syscall.ENFILE, syscall.ECONNABORTED, syscall.ENOBUFS, syscall.ENOMEM} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// fdReserve is how many descriptors the default connection cap leaves for
// NATS, the listener, logs and files.
const fdReserve = 64

// defaultMaxConnections is the open-file soft limit less fdReserve (half
// the limit when it is small), so that connections alone never exhaust
// descriptors. (The Go runtime raises the soft limit to the hard limit when
// the process starts.)
func defaultMaxConnections() int {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil || lim.Cur == 0 || lim.Cur > 1<<24 {
		return 100000
	}
	n := int(lim.Cur)
	if n <= 2*fdReserve {
		return max(n/2, 1)
	}
	return n - fdReserve
}

// fdLimit is the open-file soft limit, or 0 if unknown.
func fdLimit() int {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil || lim.Cur > 1<<30 {
		return 0
	}
	return int(lim.Cur)
}
