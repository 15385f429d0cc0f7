package client

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nuid"
	"github.com/natserve/natserve/internal/natsconn"
	"github.com/natserve/natserve/internal/tracectx"
	"github.com/natserve/natserve/internal/wire"
	"go.opentelemetry.io/otel/trace"
)

// DefaultURL is the server a Client connects to when neither the URL argument
// nor NATSERVE_URL names one.
const DefaultURL = "nats://127.0.0.1:4222"

// Options configure a Client.
type Options struct {
	// Name identifies the connection in the broker's monitoring. Default: "natserve-client".
	Name string
	// Timeout is the deadline of a call whose context has none. Default: 60s.
	Timeout time.Duration
	// MaxBusyRetries bounds how often a call that found every replica busy is
	// sent again; 0 retries until the deadline (a caller-side queue, as Ray
	// Serve's handles have). Default: 0.
	MaxBusyRetries int
	// QueueLimit returns a deployment's max_queued_requests (-1: no limit).
	// Default: read from the control plane's KV.
	QueueLimit func(deployment string) int
	// ConnectTimeout bounds Connect. Default: 5s.
	ConnectTimeout time.Duration
	// NATSOptions are passed to nats.Connect.
	NATSOptions []nats.Option
	// TLSCAFile, TLSCertFile and TLSKeyFile make Connect use TLS: the CA
	// that signed the broker's certificate, and this client's certificate
	// and key for a broker that verifies clients. Default: $NATSERVE_TLS_CA,
	// $NATSERVE_TLS_CERT and $NATSERVE_TLS_KEY when all three are unset here.
	TLSCAFile, TLSCertFile, TLSKeyFile string
	// CallObserver, when set, is told of every handle call when it ends:
	// the deployment, the method ("" for the default), the error code (""
	// on success) and how long it took. Replicas use it for their handle
	// call metrics. Default: nil.
	CallObserver func(deployment, method, code string, elapsed time.Duration)
	// AckTimeout is how long a replica has to acknowledge a request before
	// it is sent to another replica (the replica drops it unrun after
	// that). Default: 250ms (wire.DefaultAckTimeout).
	AckTimeout time.Duration
	// HeartbeatTimeout is how long a replica holding a request may stay
	// silent (replicas repeat the acknowledgment every 200 ms while a call
	// runs) before the request fails with ErrReplicaDied. Default: 800ms
	// (wire.DefaultHeartbeatTimeout).
	HeartbeatTimeout time.Duration
	// TracerProvider traces calls (see WithTracerProvider). Default: nil, off.
	TracerProvider trace.TracerProvider
	// Sender names this caller in the subject of its queue reports: its
	// identity lets it publish under this name only. Default: "client".
	Sender string
	// Creds is the NATS credentials file. Default: $NATSERVE_CREDS, then
	// DefaultCredsPath if it exists (see FindCreds).
	Creds string
}

// Environment variables Connect reads for TLS when no WithTLS is given.
const (
	EnvTLSCA   = "NATSERVE_TLS_CA"
	EnvTLSCert = "NATSERVE_TLS_CERT"
	EnvTLSKey  = "NATSERVE_TLS_KEY"
)

// An Option changes Options.
type Option func(*Options)

// WithTimeout sets Options.Timeout.
func WithTimeout(d time.Duration) Option { return func(o *Options) { o.Timeout = d } }

// WithMaxBusyRetries sets Options.MaxBusyRetries.
func WithMaxBusyRetries(n int) Option { return func(o *Options) { o.MaxBusyRetries = n } }

// WithQueueLimit sets Options.QueueLimit.
func WithQueueLimit(f func(deployment string) int) Option {
	return func(o *Options) { o.QueueLimit = f }
}

// WithCallObserver sets Options.CallObserver.
func WithCallObserver(f func(deployment, method, code string, elapsed time.Duration)) Option {
	return func(o *Options) { o.CallObserver = f }
}

// WithAckTimeout sets Options.AckTimeout.
func WithAckTimeout(d time.Duration) Option { return func(o *Options) { o.AckTimeout = d } }

// WithHeartbeatTimeout sets Options.HeartbeatTimeout.
func WithHeartbeatTimeout(d time.Duration) Option {
	return func(o *Options) { o.HeartbeatTimeout = d }
}

// WithName sets Options.Name.
func WithName(name string) Option { return func(o *Options) { o.Name = name } }

// WithSender sets Options.Sender.
func WithSender(name string) Option { return func(o *Options) { o.Sender = name } }

// WithCreds sets Options.Creds.
func WithCreds(path string) Option { return func(o *Options) { o.Creds = path } }

// WithNATSOptions adds options for nats.Connect.
func WithNATSOptions(opts ...nats.Option) Option {
	return func(o *Options) { o.NATSOptions = append(o.NATSOptions, opts...) }
}

// WithTLS sets the TLS files (see Options.TLSCAFile); empty strings are
// left out: WithTLS(ca, "", "") trusts ca for the broker's certificate and
// presents no client certificate.
func WithTLS(caFile, certFile, keyFile string) Option {
	return func(o *Options) { o.TLSCAFile, o.TLSCertFile, o.TLSKeyFile = caFile, certFile, keyFile }
}

func buildOptions(opts []Option) Options {
	o := Options{Name: "natserve-client", Sender: wire.RoleClient, Timeout: 60 * time.Second, ConnectTimeout: 5 * time.Second,
		AckTimeout: wire.DefaultAckTimeout, HeartbeatTimeout: wire.DefaultHeartbeatTimeout}
	for _, f := range opts {
		f(&o)
	}
	return o
}

// Client calls deployments and the control plane over one NATS connection.
// It is safe for concurrent use.
type Client struct {
	nc     *nats.Conn
	own    bool
	opts   Options
	graphs graphCache
	queue  queueStats
	mux    sync.Map     // deployment → *MultiplexStats
	tracer trace.Tracer // nil: tracing off
	async  async        // stored requests (async.go)
	inbox  inbox        // acknowledgments, heartbeats and replies (inbox.go)

	// ctx ends when Close is called; the client's goroutines (the queue
	// reports) stop on it, and wg counts them so that Close waits for
	// them. The KV watches are graphs's; Close stops them too.
	ctx       context.Context
	cancel    context.CancelFunc
	wg        sync.WaitGroup
	closeOnce sync.Once
	mu        sync.Mutex // guards closed
	closed    bool       // no goroutine starts once set
}

func newClient(nc *nats.Conn, own bool, o Options) *Client {
	ctx, cancel := context.WithCancel(context.Background())
	c := &Client{nc: nc, own: own, opts: o, ctx: ctx, cancel: cancel}
	c.initTracer()
	return c
}

// goBackground runs f on a goroutine that Close stops (f must return when
// c.ctx ends) and waits for; after Close it runs nothing and returns false.
func (c *Client) goBackground(f func()) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return false
	}
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		f()
	}()
	return true
}

// Connect connects to the natserve broker at url; an empty url means
// $NATSERVE_URL, then DefaultURL. url may list several servers separated by
// commas (a cluster).
//
// The connection's writes are coalesced (natsconn.Coalescing): what the
// caller's goroutines publish while one system call is under way leaves in
// the next one, not one write each as nats.go's flusher does when many
// goroutines call at once (issue 18: handle calls at 64 in flight +23%,
// the calling process's writes per call ~1 → ~0.1). A dialer among
// WithNATSOptions replaces it.
func Connect(ctx context.Context, url string, opts ...Option) (*Client, error) {
	o := buildOptions(opts)
	if url == "" {
		url = os.Getenv("NATSERVE_URL")
	}
	if url == "" {
		url = DefaultURL
	}
	timeout := o.ConnectTimeout
	if dl, ok := ctx.Deadline(); ok && time.Until(dl) < timeout {
		timeout = time.Until(dl)
	}
	files := natsconn.TLS{CAFile: o.TLSCAFile, CertFile: o.TLSCertFile, KeyFile: o.TLSKeyFile}
	if !files.Enabled() {
		files = natsconn.TLS{CAFile: os.Getenv(EnvTLSCA), CertFile: os.Getenv(EnvTLSCert), KeyFile: os.Getenv(EnvTLSKey)}
	}
	if err := files.Validate(); err != nil {
		return nil, err
	}
	extra := append(append([]nats.Option{nats.Timeout(timeout), natsconn.Coalescing(timeout)}, files.Options()...), o.NATSOptions...)
	nopts := natsconn.Options(o.Name, extra...)
	creds := FindCreds(o.Creds)
	if creds != "" {
		copts, err := CredsOptions(creds)
		if err != nil {
			return nil, err
		}
		nopts = append(nopts, copts...)
	}
	nc, err := nats.Connect(url, nopts...)
	if errors.Is(err, nats.ErrAuthorization) || errors.Is(err, nats.ErrAuthExpired) || errors.Is(err, nats.ErrAuthRevoked) {
		if creds == "" {
			return nil, fmt.Errorf("natserve at %s: %w: no credentials; pass --creds FILE or set $%s (natserve up writes <data>/auth/admin.creds)", url, ErrNoCreds, CredsEnv)
		}
		return nil, fmt.Errorf("natserve at %s: %w with credentials %s; pass the right file with --creds FILE or $%s", url, ErrNoCreds, creds, CredsEnv)
	}
	if err != nil {
		return nil, fmt.Errorf("cannot reach natserve at %s: %w", url, err)
	}
	return newClient(nc, true, o), nil
}

// New returns a Client over an existing connection, which the caller keeps
// owning (Close does not close it).
func New(nc *nats.Conn, opts ...Option) *Client {
	return newClient(nc, false, buildOptions(opts))
}

// Conn returns the underlying NATS connection.
func (c *Client) Conn() *nats.Conn { return c.nc }

// Close stops the client's background work and waits for it, and closes
// the connection if Connect opened it. Idempotent.
func (c *Client) Close() {
	c.closeOnce.Do(func() {
		c.mu.Lock()
		c.closed = true
		c.mu.Unlock()
		c.cancel()
		c.graphs.stop()
		c.inbox.once.Do(func() {}) // no inbox starts after this
		c.inbox.stop(c.nc)
		if c.own {
			c.nc.Close()
		}
		c.wg.Wait()
	})
}

// Handle returns a handle to the deployment called name. It does no I/O: a
// deployment that does not exist answers calls with ErrNoReplicas.
func (c *Client) Handle(name string) *Handle {
	return &Handle{c: c, deployment: name, subject: wire.DeploymentSubject(name)}
}

type ctxKey int

const requestIDKey ctxKey = 0

// WithRequestID returns a context whose calls carry request id id.
func WithRequestID(ctx context.Context, id string) context.Context {
	return context.WithValue(ctx, requestIDKey, id)
}

// RequestID returns the request id ctx carries, or "".
func RequestID(ctx context.Context) string {
	id, _ := ctx.Value(requestIDKey).(string)
	return id
}

// NewRequestID returns a fresh request id.
func NewRequestID() string {
	n := requestIDs.Get().(*nuid.NUID)
	id := n.Next()
	requestIDs.Put(n)
	return id
}

// requestIDs are NUID generators, each with its own random prefix: the
// package's global one takes a lock that every request of the ingress
// contended for (issue 18's profile of natserve up).
var requestIDs = sync.Pool{New: func() any { return nuid.New() }}

// RequestMsg sends msg (subject, headers and payload already set) to the
// deployment and returns the successful reply, by the earlier of deadline
// (zero: none) and ctx's deadline, or Options.Timeout without either. It sets the timeout and
// protocol headers and turns failures into *Error. The ingress and handles
// share it.
//
// Admission: the replica that takes the request acknowledges it before the
// call runs. A request not acknowledged within Options.AckTimeout never
// ran (the replica drops it past its ack-by time) and is sent again; so is
// one a replica refused as busy, after waiting its turn in this caller's
// first-in first-out queue. A request acknowledged by a replica that then
// dies (an exit event, or no heartbeat for Options.HeartbeatTimeout) fails
// at once with ErrReplicaDied, or is sent again when the replica said the
// method is idempotent.
//
// The Natserve-* headers of msg (wire.IsRequestHeader) travel inside the
// payload's envelope (wire.RequestMeta), not as NATS headers; other
// headers stay headers. msg is not changed.
func (c *Client) RequestMsg(ctx context.Context, deadline time.Time, deployment, method string, msg *nats.Msg) (*nats.Msg, error) {
	var md wire.RequestMeta
	extra, err := metaFromHeader(msg.Header, &md)
	if err != nil {
		return nil, &Error{Deployment: deployment, Method: method, Code: string(wire.CodeBadRequest), Message: err.Error()}
	}
	return c.request(ctx, deadline, deployment, method, &md, msg, extra)
}

// Send is RequestMsg for natserve's own callers (the ingress, handles):
// md says what the request's Natserve-* headers would (its Timeout and
// AckBy are set per attempt; a ModelID routes the call as RequestModel
// does), msg gives the subject and the payload, and msg's headers, if any,
// travel as NATS headers (trace context). md is not changed; msg is not
// either, except its subject for a model (RequestModel's subjects).
func (c *Client) Send(ctx context.Context, deadline time.Time, deployment string, md *wire.RequestMeta, msg *nats.Msg) (*nats.Msg, error) {
	if md.ModelID != "" {
		return c.requestModel(ctx, deadline, deployment, md.Method, md, msg, msg.Header)
	}
	return c.request(ctx, deadline, deployment, md.Method, md, msg, msg.Header)
}

// metaFromHeader reads the request headers of h into md and returns the
// other headers (nil when none are left); h is not changed.
func metaFromHeader(h nats.Header, md *wire.RequestMeta) (nats.Header, error) {
	if err := wire.ParseRequestHeaders(h.Get, md); err != nil {
		return nil, err
	}
	var rest nats.Header
	for k, v := range h {
		if !wire.IsRequestHeader(k) {
			if rest == nil {
				rest = nats.Header{}
			}
			rest[k] = v
		}
	}
	return rest, nil
}

// request sends msg's payload with md in front of it (msg's own headers
// are ignored; extra, when not nil, travels as NATS headers).
func (c *Client) request(ctx context.Context, deadline time.Time, deployment, method string, md *wire.RequestMeta, msg *nats.Msg, extra nats.Header) (*nats.Msg, error) {
	if dl, ok := ctx.Deadline(); ok && (deadline.IsZero() || dl.Before(deadline)) {
		deadline = dl
	}
	if deadline.IsZero() {
		deadline = time.Now().Add(c.opts.Timeout)
	}
	if c.tracer != nil {
		if extra == nil {
			extra = nats.Header{}
		}
		tracectx.Inject(ctx, extra)
	}
	k := call{c: c, ctx: ctx, deployment: deployment, method: method, deadline: deadline, backoff: time.Millisecond, wq: c.queue.get(deployment), meta: *md, extra: extra}
	defer k.leave()
	if err := c.startInbox(); err != nil {
		if errors.Is(err, nats.ErrConnectionClosed) {
			return nil, fmt.Errorf("%s: %w", deployment, ErrClosed)
		}
		return nil, k.fail(wire.CodeInternal, err.Error(), "")
	}
	// While this caller holds requests waiting for a replica of the
	// deployment and replicas refuse calls as busy, a new one queues behind
	// them instead of racing them for the next free slot. Without recent
	// refusals the line is only draining: a new call does not join it (a
	// closed loop of callers would otherwise keep it, one admission at a
	// time, long after the replicas have room).
	if k.wq.n.Load() > 0 && k.wq.refusedWithin(queueJoinWindow) {
		if err := k.admit(); err != nil {
			return nil, err
		}
	}
	k.timer = getTimer()
	defer putTimer(k.timer)
	for {
		if err := k.waitTurn(ctx); err != nil {
			return nil, err
		}
		if time.Until(deadline) <= 0 {
			return nil, k.fail(wire.CodeDeadline, "deadline passed before a replica accepted the request", "")
		}
		out := k.attempt(ctx, msg)
		switch out.kind {
		case outReply:
		case outNotAcked:
			k.notAcknowledged()
			continue // it never ran: send it again
		case outNoResponders:
			if k.tried != nil {
				// The replica tried alone is gone (drained, exited): not a
				// sign that the deployment has none. Back to the queue group.
				k.wq.recent.CompareAndSwap(k.tried, nil)
				continue
			}
			if probeOf(ctx) != nil { // a multiplexing probe falls back to the next subject
				return nil, k.fail(wire.CodeNoReplicas, "no replica serves "+msg.Subject, "")
			}
			if err := k.wakeFromZero(); err != nil {
				return nil, err
			}
			continue
		case outLost:
			k.wq.releaseHead()
			return nil, k.fail(wire.CodeConnectionLost, "the connection to NATS was lost while the request waited for its acknowledgment; it may have run, so it is not sent again", "")
		case outDied:
			if out.flags&wire.AckIdempotent != 0 {
				continue // declared idempotent: running it again is allowed
			}
			k.wq.releaseHead()
			return nil, k.fail(wire.CodeReplicaDied, fmt.Sprintf("replica %s died holding the request (%s)", out.replicaID(), out.reason), out.replicaID())
		case outDeadline:
			if out.replica != nil {
				return nil, k.fail(wire.CodeDeadline, fmt.Sprintf("no reply within %v", out.waited.Round(time.Millisecond)), out.replicaID())
			}
			return nil, k.fail(wire.CodeDeadline, "deadline passed before a replica accepted the request", "")
		case outCanceled:
			return nil, out.err
		case outClosed:
			return nil, fmt.Errorf("%s: %w", deployment, ErrClosed)
		default:
			return nil, k.fail(wire.CodeInternal, out.err.Error(), "")
		}
		if final, err := k.outcome(out.reply); final {
			if now, ok := k.wq.paced(); ok && out.replica != nil {
				k.wq.paceWin.Store(int64(k.wq.pace.observe(now.Sub(out.sent))))
			}
			k.wq.releaseHead() // a slot of the deployment is free
			if err != nil {
				return nil, err
			}
			return out.reply, nil
		}
		// Busy: wait in the caller-side queue and try again.
		k.wq.refused()
		k.wq.pace.refusedBy(out.reply, time.Now())
		k.busy++
		if c.opts.MaxBusyRetries > 0 && k.busy > c.opts.MaxBusyRetries {
			return nil, k.fail(wire.CodeBusy, fmt.Sprintf("every replica was busy after %d attempts", k.busy), "")
		}
		if p := probeOf(ctx); p != nil {
			// A multiplexing probe targets the replicas holding a model:
			// it gives up at its own bound rather than queue behind calls
			// to the whole deployment, and backs off on its own.
			if time.Now().After(p.until) {
				return nil, k.fail(wire.CodeBusy, "the replicas holding the model stayed busy", probeGaveUp)
			}
			if err := k.sleep(ctx, k.backoff); err != nil {
				return nil, err
			}
			k.backoff = min(2*k.backoff, 16*time.Millisecond)
			continue
		}
		if err := k.admit(); err != nil {
			return nil, err
		}
	}
}

// sendBufs hold a request's envelope and payload while it is published
// (nats.go copies a publish into its write buffer before PublishMsg
// returns).
var sendBufs = sync.Pool{New: func() any { b := make([]byte, 0, 1024); return &b }}

// maxPooledSend bounds the buffers sendBufs keeps.
const maxPooledSend = 64 << 10

// timers are the calls' wait timers, stopped, reused across calls (a
// stopped timer's channel holds no stale value since Go 1.23).
var timers sync.Pool

func getTimer() *time.Timer {
	if t, ok := timers.Get().(*time.Timer); ok {
		return t
	}
	t := time.NewTimer(time.Hour)
	t.Stop()
	return t
}

func putTimer(t *time.Timer) {
	t.Stop()
	timers.Put(t)
}

// call is one RequestMsg in progress: its place in the caller-side queue,
// whether it woke the deployment, where its next try goes.
type call struct {
	c          *Client
	ctx        context.Context // the caller's, for the queue span
	deployment string
	method     string
	deadline   time.Time
	timer      *time.Timer // reused by every wait of the call
	wq         *waitQueue  // the deployment's queue at this caller
	w          *waiter     // the call's place in wq; nil when not queued
	backoff    time.Duration
	busy       int        // busy replies so far
	woke       bool       // the controller was asked to wake the deployment
	waking     bool       // … and a replica is coming
	direct     *string    // send the next try to this replica alone
	tried      *string    // the replica the last try went to alone
	queued     trace.Span // the wait for a free replica, when traced
	meta       wire.RequestMeta
	extra      nats.Header // headers that travel as NATS headers (trace context); usually nil
}

func (k *call) fail(code wire.Code, text, replica string) error {
	return &Error{Deployment: k.deployment, Method: k.method, Code: string(code), Message: text, Replica: replica}
}

// admit puts the call at the tail of the caller-side queue (once), unless
// max_queued_requests calls already wait.
func (k *call) admit() error {
	if k.w != nil {
		return nil
	}
	var ok bool
	if k.w, ok = k.c.enqueue(k.wq, k.c.queueLimit(k.deployment)); !ok {
		return k.fail(wire.CodeBackpressure, fmt.Sprintf("max_queued_requests reached: %d requests already wait for a replica", k.wq.n.Load()), "")
	}
	k.startWait()
	return nil
}

// startWait starts the queue span when the call first waits, if traced.
func (k *call) startWait() {
	if k.c.tracer != nil && k.queued == nil {
		k.queued = k.c.startQueue(k.ctx, k.deployment)
	}
}

// leave takes the call out of the queue if it is in it; the next one may go.
func (k *call) leave() {
	if k.w != nil {
		k.wq.dequeue(k.w)
		k.w = nil
	}
	if k.queued != nil {
		k.queued.End()
		k.queued = nil
	}
}

// waitTurn waits, while the call is queued, for its turn: it is released
// when it reaches the head, and then by each reply from the deployment (a
// slot freed); the head also tries again after a backoff (1 ms doubling to
// 16 ms), for slots that other callers free.
func (k *call) waitTurn(ctx context.Context) error {
	if k.w == nil {
		return nil
	}
	for {
		left := time.Until(k.deadline)
		if left <= 0 {
			return k.fail(wire.CodeDeadline, fmt.Sprintf("deadline passed while waiting for a free replica (%d busy replies)", k.busy), "")
		}
		if k.wq.head() == k.w {
			left = min(k.backoff, left)
		}
		k.timer.Reset(left)
		released := false
		select {
		case <-k.w.ch:
			released = true
		case <-k.timer.C:
		case <-ctx.Done():
			if time.Now().After(k.deadline) {
				return k.fail(wire.CodeDeadline, "deadline passed while every replica was busy", "")
			}
			return ctx.Err()
		}
		if released || k.wq.head() == k.w {
			k.backoff = min(2*k.backoff, 16*time.Millisecond)
			return k.pace(ctx)
		}
	}
}

// pace holds the call, at the head of the queue and about to try, until
// the pacer lets the next queued call start (pace.go). While it holds,
// the line counts as refused: new calls queue behind it rather than take
// the slot it leaves free for a moment.
func (k *call) pace(ctx context.Context) error {
	now, ok := k.wq.paced()
	if !ok {
		return nil
	}
	at, ok := k.wq.pace.next(now, time.Unix(0, k.wq.refusedAt.Load()))
	if !ok || !now.Before(at) {
		return nil
	}
	k.wq.refused()
	d := min(at.Sub(now), time.Until(k.deadline))
	if d <= 0 {
		return nil // the caller's loop fails it
	}
	k.timer.Reset(d)
	select {
	case <-k.timer.C:
		return nil
	case <-ctx.Done():
		if time.Now().After(k.deadline) {
			return k.fail(wire.CodeDeadline, "deadline passed while waiting for a free replica", "")
		}
		return ctx.Err()
	}
}

// backoffBusy waits before the next attempt of a call that does not go
// through the acknowledged path (a stream's opening) after a busy reply,
// or says why there is none: 1 ms doubling to 16 ms.
func (k *call) backoffBusy(ctx context.Context, attempt int) error {
	if k.c.opts.MaxBusyRetries > 0 && attempt >= k.c.opts.MaxBusyRetries {
		return k.fail(wire.CodeBusy, fmt.Sprintf("every replica was busy after %d attempts", attempt+1), "")
	}
	d := k.backoff
	k.backoff = min(2*k.backoff, 16*time.Millisecond)
	return k.sleep(ctx, d)
}

// sleep waits d, bounded by the deadline and ctx.
func (k *call) sleep(ctx context.Context, d time.Duration) error {
	if time.Until(k.deadline) < d {
		return k.fail(wire.CodeDeadline, fmt.Sprintf("every replica stayed busy until the deadline (%d busy replies)", k.busy), "")
	}
	if k.timer == nil {
		k.timer = time.NewTimer(d)
		defer func() { k.timer.Stop(); k.timer = nil }()
	} else {
		k.timer.Reset(d)
	}
	select {
	case <-k.timer.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// admitted runs when a replica acknowledges the call sent at sent: it
// leaves the queue (the next one may try: the replica may have more free
// slots), and the replica becomes where unacknowledged calls of the
// deployment go next. The pacer counts the start from the send, so that
// the round trip to the acknowledgment does not add to the pace.
func (k *call) admitted(replica *string, sent time.Time) {
	if _, ok := k.wq.paced(); ok {
		k.wq.pace.started(*replica, sent)
	}
	k.leave()
	if k.wq.recent.Load() != replica {
		k.wq.recent.Store(replica)
	}
}

// notAcknowledged picks where the next try goes. The queue group may pick
// the same silent replica (a stopped process) again, so it goes straight to
// the replica that last acknowledged a call of the deployment here, unless
// that was the one just tried.
func (k *call) notAcknowledged() {
	r := k.wq.recent.Load()
	switch {
	case r != nil && r != k.tried:
		k.direct = r
	case r != nil:
		k.wq.recent.CompareAndSwap(r, nil)
	}
}

// wakeFromZero handles "no replica": a deployment scaled to zero is woken
// and the request held until a replica serves it (bounded by the
// deadline); anything else fails at once. nil means try again.
func (k *call) wakeFromZero() error {
	if !k.woke {
		k.woke = true
		k.waking = k.c.wake(k.deployment, time.Until(k.deadline))
		if k.waking {
			k.startWait()
		}
	}
	if !k.waking {
		return k.fail(wire.CodeNoReplicas, "no replica is serving "+k.deployment, "")
	}
	if time.Until(k.deadline) < 20*time.Millisecond {
		return k.fail(wire.CodeDeadline, "deployment "+k.deployment+" was scaled to zero and no replica started before the deadline", "")
	}
	time.Sleep(20 * time.Millisecond)
	return nil
}

// outcome reads a reply: final is false for a busy one (try again), else
// err is the call's error or nil for a success.
func (k *call) outcome(reply *nats.Msg) (final bool, err error) {
	if reply.Header == nil { // success: a reply without headers
		return true, nil
	}
	code := wire.Code(reply.Header.Get(wire.HeaderCode))
	if code == "" {
		if v := reply.Header.Get(wire.HeaderProto); v != wire.ProtoVersion && v != "" {
			return true, k.fail(wire.CodeProto, fmt.Sprintf("reply of protocol version %q, want %q", v, wire.ProtoVersion), reply.Header.Get(wire.HeaderReplica))
		}
		return true, nil
	}
	if !code.Retryable() {
		return true, k.fail(code, reply.Header.Get(wire.HeaderError), reply.Header.Get(wire.HeaderReplica))
	}
	return false, nil
}

// queueJoinWindow: a new call joins the queue only if a replica refused a
// call of the deployment as busy this recently.
const queueJoinWindow = 50 * time.Millisecond

// exitGrace is how long after a replica's exit event a call it holds still
// waits for a reply that may be on its way.
const exitGrace = 100 * time.Millisecond

// holdLine is how long a queued call's attempt holds the queue waiting for
// the replica's answer (a busy reply or an acknowledgment comes back in well
// under a millisecond on a healthy replica).
const holdLine = 10 * time.Millisecond

// What one attempt of a call came to.
type outcome struct {
	kind    int
	reply   *nats.Msg
	replica *string // the replica that acknowledged it (interned), or nil
	flags   byte    // its acknowledgment's flags
	reason  string  // why the replica is taken for dead
	waited  time.Duration
	sent    time.Time // when the attempt was sent
	err     error
}

func (o *outcome) replicaID() string {
	if o.replica == nil {
		return ""
	}
	return *o.replica
}

const (
	outReply        = iota // reply holds the replica's answer (maybe an error reply)
	outNotAcked            // no acknowledgment in time: the request never ran
	outNoResponders        // nobody subscribed
	outDied                // acknowledged, then the replica died
	outLost                // not acknowledged, and the connection dropped messages meanwhile
	outDeadline            // the deadline passed
	outCanceled            // ctx ended
	outClosed              // the connection is closed
	outError               // anything else (err)
)

// attempt sends msg once, on a fresh inbox token, to the deployment's
// queue group (or to k.direct alone) and waits for its acknowledgment and
// its reply.
func (k *call) attempt(ctx context.Context, msg *nats.Msg) outcome {
	c := k.c
	x := &c.inbox
	p := x.open(k.w != nil)
	defer x.close(p)
	m := *msg // the caller's subject and reply stay as they were
	m.Reply = p.subject
	k.tried, k.direct = k.direct, nil
	if k.tried != nil {
		m.Subject = wire.ReplicaSubject(k.deployment, *k.tried, wire.VerbRequest)
	}
	now := time.Now()
	ackBy := now.Add(min(c.opts.AckTimeout, k.deadline.Sub(now)))
	k.meta.Timeout = max(k.deadline.Sub(now), time.Microsecond)
	k.meta.AckBy = ackBy
	bp := sendBufs.Get().(*[]byte)
	m.Data = append(wire.AppendRequestMeta((*bp)[:0], &k.meta), msg.Data...)
	m.Header = k.extra
	epoch := x.epoch.Load()
	err := c.nc.PublishMsg(&m)
	if cap(m.Data) <= maxPooledSend {
		*bp = m.Data[:0]
		sendBufs.Put(bp)
	}
	m.Data = nil
	if err != nil {
		if errors.Is(err, nats.ErrConnectionClosed) {
			return outcome{kind: outClosed}
		}
		return outcome{kind: outError, err: err}
	}
	acked := false
	lost := false // the connection dropped messages while it waited for its acknowledgment
	// A queued call holds the line while its attempt is out, so that calls
	// are admitted in order; one neither refused nor acknowledged within
	// holdLine went to a replica that does not answer (a stopped process):
	// it lets the next call go rather than hold the line for the ack
	// timeout.
	holdUntil := now.Add(holdLine)
	var diedSeen time.Time // when the exit event of the replica holding it came
	flushed := false       // the ack-by time passed and the connection was flushed once
	for {
		replica, flags, seen, reply, died := x.state(p)
		if reply != nil {
			if !acked && replica != nil {
				k.admitted(replica, now)
			}
			if reply.Header != nil {
				if len(reply.Data) == 0 && reply.Header.Get("Status") == "503" {
					return outcome{kind: outNoResponders}
				}
				if wire.Code(reply.Header.Get(wire.HeaderCode)) == wire.CodeNotRun {
					// The replica could not confirm its acknowledgment
					// with the broker in time and did not run it: as if
					// not acknowledged, and not back to that replica.
					if replica != nil {
						k.tried = replica
					}
					return outcome{kind: outNotAcked}
				}
			}
			return outcome{kind: outReply, reply: reply, replica: replica, sent: now}
		}
		if replica != nil && !acked {
			acked = true
			k.admitted(replica, now)
		}
		t := time.Now()
		if died != "" {
			// The exit event and the replica's last reply travel on
			// different connections: the reply may still be on its way.
			if diedSeen.IsZero() {
				diedSeen = t
			}
			if t.Sub(diedSeen) >= exitGrace {
				return outcome{kind: outDied, replica: replica, flags: flags, reason: died}
			}
		}
		if k.w != nil && !acked && !t.Before(holdUntil) {
			k.leave()
		}
		var until time.Time
		switch {
		case !t.Before(k.deadline):
			return outcome{kind: outDeadline, replica: replica, waited: t.Sub(now)}
		case !acked && !t.Before(ackBy.Add(wire.AckGrace)) && !flushed:
			// An acknowledgment the server already sent may wait unread in
			// this connection or undelivered in the inbox's queue (a
			// starved process): a round trip to the server reads what it
			// sent before, and the inbox handles what is queued, so that a
			// request that was acknowledged is not sent again (at most
			// once). Only on this slow path: nothing on the hot path.
			//
			// A connection that dropped in between may have lost the
			// acknowledgment (its NATS server died with it): the request
			// may have run, and is not sent again.
			flushed = true
			if err := c.nc.FlushTimeout(max(time.Until(k.deadline), time.Millisecond)); err != nil || x.lost(c.nc, epoch) {
				lost = true
			}
			continue
		case !acked && !t.Before(ackBy.Add(wire.AckGrace)):
			if !x.drain(100 * time.Millisecond) {
				continue // still handling what came in: decide once it is read
			}
			if lost || x.lost(c.nc, epoch) {
				return outcome{kind: outLost}
			}
			return outcome{kind: outNotAcked}
		case acked && t.Sub(seen) >= c.opts.HeartbeatTimeout:
			return outcome{kind: outDied, replica: replica, flags: flags, reason: fmt.Sprintf("no heartbeat for %v", t.Sub(seen).Round(time.Millisecond))}
		case acked:
			until = seen.Add(c.opts.HeartbeatTimeout)
		default:
			until = ackBy.Add(wire.AckGrace)
		}
		if !diedSeen.IsZero() && diedSeen.Add(exitGrace).Before(until) {
			until = diedSeen.Add(exitGrace)
		}
		if k.deadline.Before(until) {
			until = k.deadline
		}
		if k.w != nil && holdUntil.Before(until) {
			until = holdUntil
		}
		k.timer.Reset(until.Sub(t))
		select {
		case <-p.sig:
		case <-k.timer.C:
		case <-ctx.Done():
			if time.Now().After(k.deadline) {
				return outcome{kind: outDeadline, replica: replica, waited: time.Since(now)}
			}
			if replica != nil {
				// The replica holding it cancels the call's context (its
				// slot frees as soon as the method returns).
				_ = c.nc.Publish(wire.ReplicaSubject(k.deployment, *replica, wire.VerbCancel), []byte(m.Reply+" "+k.meta.RequestID))
			}
			return outcome{kind: outCanceled, err: ctx.Err()}
		}
	}
}
