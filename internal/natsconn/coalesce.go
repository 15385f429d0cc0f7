package natsconn

import (
	"errors"
	"net"
	"runtime"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
)

// Coalescing returns a connect option whose connections write what the
// client publishes from a goroutine of their own, one system call for
// everything published until then, instead of nats.go's flusher's one
// system call per wake-up.
//
// Why: nats.go's flusher wakes on every publish and, woken by the
// publishing goroutine, runs next on its processor. A process that
// answers requests on many goroutines (a replica: one per call in
// flight) therefore writes each reply on its own as soon as the goroutine
// that sent it blocks, even when the next replies are a few microseconds
// away: one write per request at 64 in flight where nats.go's own
// callback dispatch, which answers in one goroutine, writes once per
// batch. The writer here first lets every goroutine already runnable
// have its turn (runtime.Gosched), so the replies of the calls served in
// the meantime leave together.
//
// Nothing is acknowledged earlier than before: a Write that returns has
// put its bytes in a buffer, as nats.go's own buffer and the kernel's
// socket buffer do; a PING sent through it is answered only once its
// bytes, and everything before them, reached the server. A write that
// fails closes the connection, so nats.go sees it in its reader and
// reconnects. Close writes what is buffered first.
func Coalescing(timeout time.Duration) nats.Option {
	return nats.SetCustomDialer(&coalescingDialer{d: net.Dialer{Timeout: timeout}})
}

type coalescingDialer struct{ d net.Dialer }

func (cd *coalescingDialer) Dial(network, address string) (net.Conn, error) {
	c, err := cd.d.Dial(network, address)
	if err != nil {
		return nil, err
	}
	return NewCoalescingConn(c, WriteTimeout), nil
}

// WriteTimeout bounds a coalescing connection's write to a peer that
// does not read: then the write fails and the connection closes
// (nats.go's FlusherTimeout default).
const WriteTimeout = time.Minute

const (
	// maxPending is how much a coalescing connection buffers before a
	// Write waits for the socket.
	maxPending = 256 << 10
	// directWrite is the size from which a Write goes to the socket from
	// the writing goroutine, behind what is buffered, without a copy.
	directWrite = 64 << 10
)

// errConnClosed is what a Write after Close returns.
var errConnClosed = errors.New("natsconn: connection closed")

// NewCoalescingConn wraps c so that writes are coalesced (see
// Coalescing); timeout bounds each write to the socket.
func NewCoalescingConn(c net.Conn, timeout time.Duration) net.Conn {
	cc := &coalescingConn{Conn: c, timeout: timeout, kick: make(chan struct{}, 1), done: make(chan struct{})}
	cc.drained = sync.NewCond(&cc.mu)
	go cc.writer()
	return cc
}

type coalescingConn struct {
	net.Conn
	timeout time.Duration
	kick    chan struct{} // something was buffered
	done    chan struct{} // closed by Close: the writer returns
	once    sync.Once

	wmu      sync.Mutex  // held around writes to the socket
	deadline time.Time   // the socket's write deadline (under wmu)
	bufs     net.Buffers // what write sends (under wmu), in two: no allocation
	two      [2][]byte

	mu      sync.Mutex
	drained *sync.Cond // len(buf) fell below maxPending, or err was set
	buf     []byte     // written by the client, not yet to the socket
	spare   []byte     // the writer's other buffer
	err     error      // the first write error, or errConnClosed
}

// Write buffers p and wakes the writer; a large p goes out at once.
func (c *coalescingConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	for c.err == nil && len(c.buf) >= maxPending {
		c.drained.Wait()
	}
	if c.err != nil {
		err := c.err
		c.mu.Unlock()
		return 0, err
	}
	if len(p) >= directWrite {
		// Behind whatever is buffered, in the caller's goroutine (wmu
		// before mu, as the writer takes them; nats.go writes from one
		// goroutine at a time, so nothing is buffered meanwhile).
		c.mu.Unlock()
		c.wmu.Lock()
		c.mu.Lock()
		pending := c.buf
		c.buf = nil
		c.mu.Unlock()
		c.two = [2][]byte{pending, p}
		c.bufs = c.two[:]
		_, err := c.write(&c.bufs)
		c.two = [2][]byte{}
		c.wmu.Unlock()
		c.finish(err)
		if err != nil {
			return 0, err
		}
		return len(p), nil
	}
	c.buf = append(c.buf, p...)
	c.mu.Unlock()
	select {
	case c.kick <- struct{}{}:
	default:
	}
	return len(p), nil
}

// write sends bufs under wmu, renewing the deadline when it is half gone.
func (c *coalescingConn) write(bufs *net.Buffers) (int64, error) {
	if c.timeout > 0 {
		if now := time.Now(); c.deadline.Sub(now) < c.timeout/2 {
			c.deadline = now.Add(c.timeout)
			if err := c.Conn.SetWriteDeadline(c.deadline); err != nil {
				return 0, err
			}
		}
	}
	return bufs.WriteTo(c.Conn)
}

// finish records a write's error, closing the socket so that the
// reader sees it, and wakes writers waiting for room.
func (c *coalescingConn) finish(err error) {
	c.mu.Lock()
	if err != nil && c.err == nil {
		c.err = err
		_ = c.Conn.Close()
	}
	c.drained.Broadcast()
	c.mu.Unlock()
}

func (c *coalescingConn) writer() {
	for {
		select {
		case <-c.done:
			return
		case <-c.kick:
		}
		// Let the goroutines already runnable publish too.
		runtime.Gosched()
		if !c.flush() {
			return
		}
	}
}

// flush writes what is buffered; false once the connection failed.
func (c *coalescingConn) flush() bool {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.mu.Lock()
	b := c.buf
	c.buf, c.spare = c.spare[:0], nil
	failed := c.err != nil
	c.mu.Unlock()
	if failed {
		return false
	}
	if len(b) == 0 {
		c.spare = b
		return true
	}
	c.two = [2][]byte{b}
	c.bufs = c.two[:1]
	_, err := c.write(&c.bufs)
	c.two = [2][]byte{}
	c.mu.Lock()
	if c.spare == nil && cap(b) <= maxPending+directWrite {
		c.spare = b[:0]
	}
	c.mu.Unlock()
	c.finish(err)
	return err == nil
}

// SetWriteDeadline is ignored: writes to the socket carry their own
// (timeout); a Write only buffers.
func (c *coalescingConn) SetWriteDeadline(time.Time) error { return nil }

// SetDeadline sets the read deadline only (see SetWriteDeadline).
func (c *coalescingConn) SetDeadline(t time.Time) error { return c.Conn.SetReadDeadline(t) }

// closeWait bounds how long Close waits to write what is buffered: a
// write already under way that long (a peer that does not read) is cut
// off by closing the socket, as closing a plain connection would.
const closeWait = 2 * time.Second

// Close writes what is buffered (for up to closeWait), then closes the
// socket.
func (c *coalescingConn) Close() error {
	err := errConnClosed
	c.once.Do(func() {
		deadline := time.Now().Add(closeWait)
		locked := c.wmu.TryLock()
		for !locked && time.Now().Before(deadline) {
			time.Sleep(time.Millisecond)
			locked = c.wmu.TryLock()
		}
		if locked {
			c.mu.Lock()
			b := c.buf
			c.buf = nil
			failed := c.err != nil
			c.mu.Unlock()
			if !failed && len(b) > 0 {
				c.deadline = deadline
				if c.Conn.SetWriteDeadline(deadline) == nil {
					_, _ = c.Conn.Write(b)
				}
			}
			c.wmu.Unlock()
		}
		c.mu.Lock()
		if c.err == nil {
			c.err = errConnClosed
		}
		c.drained.Broadcast()
		c.mu.Unlock()
		close(c.done)
		err = c.Conn.Close()
	})
	return err
}
