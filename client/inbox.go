package client

import (
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/natserve/natserve/internal/wire"
)

// One inbox per request carries everything back: the replica's
// acknowledgment (who holds the request), heartbeats while a long call
// runs, then the one reply. The client subscribes once to a wildcard inbox
// and to the replica exit events; each request registers a call under a
// token of that inbox.
type inbox struct {
	once   sync.Once
	err    error
	prefix string // the connection's inbox prefix and a nuid, then "."
	seq    atomic.Uint64
	subs   []*nats.Subscription // Close unsubscribes them
	closed atomic.Bool          // set by Close

	// Connection changes (status listener): epoch counts disconnections
	// and reconnections seen, reconnects is the connection's reconnect
	// count when the listener last looked. A call whose acknowledgment may
	// have been lost with the connection is not sent again (lost).
	epoch      atomic.Uint64
	reconnects atomic.Uint64
	status     chan nats.Status

	mu       sync.Mutex          // guards calls, replicas
	calls    map[string]*pending // token → call waiting for messages
	replicas map[string]*string  // replica ids seen, interned
}

// pending is one attempt of a request, as its inbox sees it.
type pending struct {
	token   string
	subject string
	sig     chan struct{} // one pending wake-up for the waiting caller
	// wakeOnAck: the caller waits in the queue and must learn of its
	// admission at once (the next one may then try). Otherwise an
	// acknowledgment or heartbeat does not wake it: its timer reads them
	// (one goroutine wake-up per request saved on the hot path).
	wakeOnAck bool

	// Guarded by inbox.mu.
	replica *string   // who acknowledged it (interned); nil before
	flags   byte      // the acknowledgment's flags
	seen    time.Time // last acknowledgment or heartbeat
	reply   *nats.Msg // the reply, once it came
	died    string    // why the replica holding it is gone
}

func (c *pending) wake() {
	select {
	case c.sig <- struct{}{}:
	default:
	}
}

// drain waits up to max until the inbox's subscription has handled every
// message it has received, and reports whether it has.
func (x *inbox) drain(max time.Duration) bool {
	if len(x.subs) == 0 {
		return true
	}
	end := time.Now().Add(max)
	for {
		if n, _, err := x.subs[0].Pending(); err != nil || n == 0 {
			return true
		}
		if !time.Now().Before(end) {
			return false
		}
		time.Sleep(time.Millisecond)
	}
}

// start subscribes the inbox and the exit events, once.
func (c *Client) startInbox() error {
	x := &c.inbox
	x.once.Do(func() {
		x.prefix = c.nc.NewInbox() + "." // the connection's inbox prefix: its role may only read its own
		x.calls = map[string]*pending{}
		x.replicas = map[string]*string{}
		c.mu.Lock()
		defer c.mu.Unlock()
		if c.closed {
			x.err = nats.ErrConnectionClosed
			return
		}
		for _, s := range []struct {
			subject string
			cb      nats.MsgHandler
		}{{x.prefix + "*", x.onMsg}, {wire.ReplicaExitSubjects, x.onExit}} {
			sub, err := c.nc.Subscribe(s.subject, s.cb)
			if err != nil {
				x.err = err
				return
			}
			x.subs = append(x.subs, sub)
		}
		x.reconnects.Store(c.nc.Stats().Reconnects)
		x.status = c.nc.StatusChanged(nats.DISCONNECTED, nats.RECONNECTING, nats.CONNECTED, nats.CLOSED)
		nc, ch := c.nc, x.status
		c.wg.Add(1) // c.mu is held: Close waits for it (RemoveStatusListener closes ch)
		go func() {
			defer c.wg.Done()
			for range ch {
				x.epoch.Add(1)
				x.reconnects.Store(nc.Stats().Reconnects)
			}
		}()
	})
	if x.closed.Load() {
		return nats.ErrConnectionClosed
	}
	return x.err
}

// lost reports whether the connection may have dropped messages since
// epoch was read (a disconnection, a reconnection the listener has not
// seen yet, or no connection now).
func (x *inbox) lost(nc *nats.Conn, epoch uint64) bool {
	return x.epoch.Load() != epoch || !nc.IsConnected() || nc.Stats().Reconnects != x.reconnects.Load()
}

// stop unsubscribes the inbox; Close calls it once no call starts.
func (x *inbox) stop(nc *nats.Conn) {
	x.closed.Store(true)
	if x.status != nil {
		nc.RemoveStatusListener(x.status)
	}
	for _, s := range x.subs {
		_ = s.Unsubscribe()
	}
}

// open registers a new call. Its token carries wire.AckTokenMark: this
// inbox takes a replica's acknowledgments of one confirmation round
// together, and its replies, on the token wire.AckBatchToken (onAcks,
// onReply).
func (x *inbox) open(wakeOnAck bool) *pending {
	var buf [16]byte
	token := string(strconv.AppendUint(append(buf[:0], wire.AckTokenMark), x.seq.Add(1), 36))
	cl := &pending{token: token, subject: x.prefix + token, sig: make(chan struct{}, 1), wakeOnAck: wakeOnAck}
	x.mu.Lock()
	x.calls[token] = cl
	x.mu.Unlock()
	return cl
}

// close forgets a call: later messages to its token are dropped.
func (x *inbox) close(cl *pending) {
	x.mu.Lock()
	delete(x.calls, cl.token)
	x.mu.Unlock()
}

// state returns what the inbox learned about cl.
func (x *inbox) state(cl *pending) (replica *string, flags byte, seen time.Time, reply *nats.Msg, died string) {
	x.mu.Lock()
	defer x.mu.Unlock()
	return cl.replica, cl.flags, cl.seen, cl.reply, cl.died
}

func (x *inbox) onMsg(m *nats.Msg) {
	token := m.Subject[len(x.prefix):]
	if token == wire.AckBatchToken {
		if tok, data, ok := wire.ParseReply(m.Data); ok {
			x.onReply(tok, data, m)
			return
		}
		x.onAcks(m)
		return
	}
	x.mu.Lock()
	cl := x.calls[token]
	if cl == nil {
		x.mu.Unlock()
		return
	}
	wake := true
	if m.Header == nil && wire.IsAck(m.Data) {
		wake = x.acked(cl, m.Data[2:], m.Data[1], time.Now())
	} else if cl.reply == nil {
		cl.reply = m
	}
	x.mu.Unlock()
	if wake {
		cl.wake()
	}
}

// onReply handles a reply that came on the repeating subject
// (wire.ParseReply): the caller sees it as if it came on its call's subject.
// A token whose call is gone is dropped.
func (x *inbox) onReply(token, data []byte, m *nats.Msg) {
	x.mu.Lock()
	cl := x.calls[string(token)]
	if cl == nil || cl.reply != nil {
		x.mu.Unlock()
		return
	}
	m.Subject, m.Data = cl.subject, data
	cl.reply = m
	x.mu.Unlock()
	cl.wake()
}

// acked records an acknowledgment or heartbeat of cl from replica (x.mu
// held) and reports whether to wake its caller.
func (x *inbox) acked(cl *pending, replica []byte, flags byte, now time.Time) (wake bool) {
	wake = cl.wakeOnAck && cl.replica == nil
	if cl.replica == nil {
		id, ok := x.replicas[string(replica)]
		if !ok {
			s := string(replica)
			id = &s
			if len(x.replicas) > 4096 {
				clear(x.replicas)
			}
			x.replicas[s] = id
		}
		cl.replica, cl.flags = id, flags
	}
	cl.seen = now
	return wake
}

// onAcks handles a replica's coalesced acknowledgments (or heartbeats) of
// several calls (wire.ParseAcks).
func (x *inbox) onAcks(m *nats.Msg) {
	replica, flags, tokens, ok := wire.ParseAcks(m.Data)
	if m.Header != nil || !ok {
		return
	}
	now := time.Now()
	x.mu.Lock()
	for tok, rest := wire.NextAckToken(tokens); len(tok) > 0; tok, rest = wire.NextAckToken(rest) {
		if cl := x.calls[string(tok)]; cl != nil && x.acked(cl, replica, flags, now) {
			cl.wake() // a non-blocking send
		}
	}
	x.mu.Unlock()
}

func (x *inbox) onExit(m *nats.Msg) {
	var ev wire.ReplicaExit
	if wire.UnmarshalJSON(m.Data, &ev) != nil || ev.Replica == "" {
		return
	}
	reason := ev.Reason
	if reason == "" {
		reason = "exited"
	}
	x.mu.Lock()
	var hit []*pending
	for _, cl := range x.calls {
		if cl.replica != nil && *cl.replica == ev.Replica && cl.reply == nil {
			cl.died = reason
			hit = append(hit, cl)
		}
	}
	x.mu.Unlock()
	for _, cl := range hit {
		cl.wake()
	}
}
