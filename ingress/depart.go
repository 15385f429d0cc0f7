package ingress

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"reflect"
	"sync"
	"syscall"
	"time"
)

// Departed clients. fasthttp notices a client that closed its connection
// only when writing the answer fails, so a unary request (or one waiting
// at the ingress for a free replica) would run on for nobody. A request
// still unanswered after watchAfter gets a watcher: it waits (in the
// runtime's network poller, no polling) until the connection is readable
// and peeks at it without consuming (MSG_PEEK). End of file or an error
// means the client left: the request's context is cancelled, which drops a
// request waiting at the ingress and makes the replica holding it cancel
// the call's context (wire.VerbCancel), freeing its slot. Bytes waiting
// (a pipelined request) end the watch: the client is there.
//
// A fast request only arms and stops a reused timer: the watcher and its
// goroutine exist only for requests slower than watchAfter.

// watchAfter is how long a request runs before its client's connection is
// watched.
const watchAfter = 20 * time.Millisecond

// departure is a request's context while it waits for its reply: done
// when the client went away.
type departure struct {
	parent context.Context
	conn   net.Conn
	timer  *time.Timer
	onGone func() // called by the watcher when the client left, before release returns (may be nil)

	mu       sync.Mutex // guards the fields below
	state    int        // departArmed, departWatching, departReleased
	gone     bool
	done     chan struct{}
	watching chan struct{} // closed when the watcher returned
}

const (
	departArmed = iota
	departWatching
	departReleased
)

var departPool = sync.Pool{New: func() any {
	d := &departure{done: make(chan struct{})}
	d.timer = time.AfterFunc(time.Hour, d.watch)
	d.timer.Stop()
	return d
}}

// watchClient returns the context of a request from conn under parent.
// The caller must call release when the request is answered.
func watchClient(parent context.Context, conn net.Conn) *departure {
	return watchConn(parent, conn, nil)
}

// watchConn is watchClient that also calls gone (from the watcher's
// goroutine, at most once) when the client leaves before release. A
// stream uses it for the wait for its first item: its own context
// outlives the watch, so the departure cannot be its parent.
func watchConn(parent context.Context, conn net.Conn, gone func()) *departure {
	d := departPool.Get().(*departure)
	d.parent, d.conn, d.onGone, d.state = parent, conn, gone, departArmed
	d.timer.Reset(watchAfter)
	return d
}

// release ends the watch. A departure whose timer never fired goes back
// to the pool.
func (d *departure) release() {
	if d.timer.Stop() {
		d.parent, d.conn, d.onGone = nil, nil, nil
		departPool.Put(d)
		return
	}
	d.mu.Lock()
	state := d.state
	d.state = departReleased
	w := d.watching
	d.mu.Unlock()
	if state == departWatching {
		// Wake the watcher from the poller; fasthttp sets the deadline
		// again before it reads the next request.
		_ = d.conn.SetReadDeadline(time.Now())
		<-w
	}
	// Not reused: a late timer goroutine may still look at it.
}

// departed reports whether the client went away.
func (d *departure) departed() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.gone
}

func (d *departure) watch() {
	d.mu.Lock()
	if d.state != departArmed {
		d.mu.Unlock()
		return
	}
	rc := rawConn(d.conn)
	if rc == nil {
		d.mu.Unlock()
		return
	}
	d.state = departWatching
	d.watching = make(chan struct{})
	w := d.watching
	d.mu.Unlock()
	defer close(w)
	var buf [1]byte
	gone := false
	_ = rc.Read(func(fd uintptr) bool {
		n, _, err := syscall.Recvfrom(int(fd), buf[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		switch {
		case errors.Is(err, syscall.EAGAIN) || errors.Is(err, syscall.EINTR):
			return false // nothing yet: wait in the poller
		case err != nil || n == 0:
			gone = true // reset, or end of file
		}
		return true
	})
	if gone {
		d.mu.Lock()
		first := d.state == departWatching && !d.gone
		if first {
			d.gone = true
			close(d.done)
		}
		d.mu.Unlock()
		// release waits for this goroutine (w): onGone is never called
		// after release returned.
		if first && d.onGone != nil {
			d.onGone()
		}
	}
}

// rawConn is the socket under c, if it has one: through TLS, and through
// wrappers that embed the connection as their field Conn (fasthttp's
// per-IP counter: an unexported type, so reflection; only watched requests
// get here).
func rawConn(c net.Conn) syscall.RawConn {
	for range 4 {
		switch x := c.(type) {
		case *tls.Conn:
			c = x.NetConn()
			continue
		case syscall.Conn:
			rc, err := x.SyscallConn()
			if err != nil {
				return nil
			}
			return rc
		}
		v := reflect.ValueOf(c)
		if v.Kind() != reflect.Pointer || v.Elem().Kind() != reflect.Struct {
			return nil
		}
		f := v.Elem().FieldByName("Conn")
		if !f.IsValid() || !f.CanInterface() {
			return nil
		}
		switch inner := f.Interface().(type) {
		case *tls.Conn:
			c = inner
		case net.Conn:
			c = inner
		default:
			return nil
		}
	}
	return nil
}

func (d *departure) Deadline() (time.Time, bool) { return d.parent.Deadline() }
func (d *departure) Done() <-chan struct{}       { return d.done }
func (d *departure) Value(key any) any           { return d.parent.Value(key) }
func (d *departure) Err() error {
	select {
	case <-d.done:
		return context.Canceled
	default:
		return nil
	}
}
