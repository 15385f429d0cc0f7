package worker

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/natserve/natserve/internal/wire"
)

// The agent link. A node agent starts each replica with one end of a Unix
// socket pair as file descriptor linkFD (ReplicaSpec.AgentLinkFD), and the
// two speak JSON lines over it, with no broker in between:
//
//	replica → agent  {"hello":true}           the replica reads the link (first thing it does)
//	replica → agent  {"ready":true}           it serves (its subscriptions are at the broker)
//	agent → replica  {"id":7,"timeout_us":N}  a health ping: status and CheckHealth within N µs
//	replica → agent  {"id":7,"answer":true,"healthy":false,"error":"…"}  its answer
//
// The agent answers the controller's batched health checks (one message
// per node, wire.HealthBatch) by pinging its replicas over their links, and
// sees a replica ready when it says so instead of pinging it over NATS
// every 25 ms while it starts. A replica that never says hello (a program
// built with an older SDK) is pinged over NATS as before; an adopted
// replica has no link (its agent that started it is gone) and is too.

// linkFD is the replica's end of the link: the first of cmd.ExtraFiles.
const linkFD = 3

// linkMsg is one line on the link.
type linkMsg struct {
	Hello     bool   `json:"hello,omitempty"`
	Ready     bool   `json:"ready,omitempty"`
	ID        uint64 `json:"id,omitempty"`
	TimeoutUS int64  `json:"timeout_us,omitempty"`
	Answer    bool   `json:"answer,omitempty"`
	Healthy   bool   `json:"healthy,omitempty"`
	Error     string `json:"error,omitempty"`
}

// answer is a ping's answer on the link: health only (the controller
// reads nothing else of a status).
func answer(id uint64, st ReplicaStatus) linkMsg {
	return linkMsg{ID: id, Answer: true, Healthy: st.Healthy, Error: st.Error}
}

// maxLinkLine bounds one line read from the link.
const maxLinkLine = 1 << 20

// errLinkClosed: the replica's end of the link closed (it exited).
var errLinkClosed = errors.New("the replica's agent link closed")

// replicaLink is the replica's end.
type replicaLink struct {
	mu sync.Mutex // serializes writes
	c  net.Conn
	w  *bufio.Writer
}

// openLink opens the link the agent passed, if any, says hello and
// answers health pings until the link closes.
func (r *Replica) openLink() {
	if r.spec.AgentLinkFD <= 0 {
		return
	}
	f := os.NewFile(uintptr(r.spec.AgentLinkFD), "agent-link")
	c, err := net.FileConn(f) // a duplicate, in the netpoller: no thread waits on it
	f.Close()
	if err != nil {
		r.log.Warn("no agent link", "fd", r.spec.AgentLinkFD, "err", err)
		return
	}
	l := &replicaLink{c: c, w: bufio.NewWriter(c)}
	r.link = l
	l.send(linkMsg{Hello: true})
	go func() {
		defer func() { // the agent exited: the watchdog looks
			c.Close()
			r.linkGone.Store(true)
			r.wakeWatchdog()
		}()
		sc := bufio.NewScanner(c)
		sc.Buffer(make([]byte, 0, 512), maxLinkLine)
		for sc.Scan() {
			var m linkMsg
			if err := wire.UnmarshalJSON(sc.Bytes(), &m); err != nil || m.ID == 0 {
				continue
			}
			timeout := defaultHealthCheckTimeout
			if m.TimeoutUS > 0 {
				timeout = time.Duration(m.TimeoutUS) * time.Microsecond
			}
			id := m.ID
			if !r.serving.Load() { // the agent pings only running replicas; this is a guard
				l.send(linkMsg{ID: id, Answer: true, Error: "not serving yet"})
				continue
			}
			r.checkPing(timeout, func(st ReplicaStatus) { l.send(answer(id, st)) })
		}
	}()
}

// ready tells the agent the replica serves.
func (l *replicaLink) ready() {
	if l != nil {
		l.send(linkMsg{Ready: true})
	}
}

func (l *replicaLink) send(m linkMsg) {
	b, _ := json.Marshal(m)
	l.mu.Lock()
	defer l.mu.Unlock()
	_, _ = l.w.Write(append(b, '\n'))
	_ = l.w.Flush()
}

// agentLink is the agent's end of one replica's link.
type agentLink struct {
	c       net.Conn
	hello   chan struct{} // closed when the replica said hello
	readyCh chan struct{} // closed when it said ready
	closed  chan struct{} // closed when the link ended

	mu      sync.Mutex // guards next, pending, writes
	next    uint64
	pending map[uint64]chan linkMsg
}

// newLinkPair makes a link: the agent's end, and the replica's as a file
// for cmd.ExtraFiles (the caller closes it once the process started).
func newLinkPair() (*agentLink, *os.File, error) {
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, err
	}
	mine, theirs := os.NewFile(uintptr(fds[0]), "replica-link"), os.NewFile(uintptr(fds[1]), "agent-link")
	c, err := net.FileConn(mine)
	mine.Close()
	if err != nil {
		theirs.Close()
		return nil, nil, err
	}
	l := &agentLink{c: c, hello: make(chan struct{}), readyCh: make(chan struct{}), closed: make(chan struct{}), pending: map[uint64]chan linkMsg{}}
	go l.read()
	return l, theirs, nil
}

func (l *agentLink) read() {
	defer func() {
		l.c.Close()
		l.mu.Lock()
		close(l.closed)
		l.mu.Unlock()
	}()
	sc := bufio.NewScanner(l.c)
	sc.Buffer(make([]byte, 0, 4096), maxLinkLine)
	var hello, ready bool
	for sc.Scan() {
		var m linkMsg
		if err := wire.UnmarshalJSON(sc.Bytes(), &m); err != nil {
			continue
		}
		switch {
		case m.Hello && !hello:
			hello = true
			close(l.hello)
		case m.Ready && !ready:
			ready = true
			close(l.readyCh)
		case m.ID != 0 && m.Answer:
			l.mu.Lock()
			ch := l.pending[m.ID]
			delete(l.pending, m.ID)
			l.mu.Unlock()
			if ch != nil {
				ch <- m // buffered
			}
		}
	}
}

// said reports whether the replica said hello (it answers pings on the link).
func (l *agentLink) said() bool {
	if l == nil {
		return false
	}
	select {
	case <-l.hello:
		return true
	default:
		return false
	}
}

// close ends the link (the process exited).
func (l *agentLink) close() {
	if l != nil {
		l.c.Close()
	}
}

// ask sends a health ping with timeout; the answer comes on the channel
// (wait reads it). A write does not block: the socket's buffer holds
// thousands of pings, and a replica that reads none fails its checks and
// is killed long before it fills.
func (l *agentLink) ask(timeout time.Duration) (uint64, chan linkMsg, error) {
	ch := make(chan linkMsg, 1)
	l.mu.Lock()
	defer l.mu.Unlock()
	select {
	case <-l.closed:
		return 0, nil, errLinkClosed
	default:
	}
	l.next++
	id := l.next
	b, _ := json.Marshal(linkMsg{ID: id, TimeoutUS: timeout.Microseconds()})
	if _, err := l.c.Write(append(b, '\n')); err != nil {
		return 0, nil, fmt.Errorf("writing to the replica's agent link: %w", err)
	}
	l.pending[id] = ch
	return id, ch, nil
}

// wait waits for the answer to ask's id until expired fires: an error when
// the replica did not answer.
func (l *agentLink) wait(id uint64, ch chan linkMsg, expired <-chan struct{}, timeout time.Duration) (healthy bool, why string, err error) {
	select {
	case m := <-ch:
		return m.Healthy, m.Error, nil
	case <-l.closed:
		err = errLinkClosed
	case <-expired:
		err = fmt.Errorf("no answer within %v", timeout)
	}
	l.mu.Lock()
	delete(l.pending, id)
	l.mu.Unlock()
	select { // answered as it expired
	case m := <-ch:
		return m.Healthy, m.Error, nil
	default:
	}
	return false, "", err
}
