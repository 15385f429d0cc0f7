package client

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
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
	o := Options{Name: "natserve-client", Sender: wire.RoleClient, Timeout: 60 * time.Second, ConnectTimeout: 5 * time.Second}
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
	extra := append(append([]nats.Option{nats.Timeout(timeout)}, files.Options()...), o.NATSOptions...)
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
func NewRequestID() string { return nuid.Next() }

// RequestMsg sends msg (subject, headers and payload already set) to the
// deployment and returns the successful reply, by the earlier of deadline
// (zero: none) and ctx's deadline, or Options.Timeout without either. It sets the timeout and
// protocol headers, retries while replicas answer busy (they did not accept
// the request, so no call runs twice), and turns failures into *Error. The
// ingress and handles share it.
func (c *Client) RequestMsg(ctx context.Context, deadline time.Time, deployment, method string, msg *nats.Msg) (*nats.Msg, error) {
	if dl, ok := ctx.Deadline(); ok && (deadline.IsZero() || dl.Before(deadline)) {
		deadline = dl
	}
	if deadline.IsZero() {
		deadline = time.Now().Add(c.opts.Timeout)
	}
	if msg.Header == nil {
		msg.Header = nats.Header{}
	}
	msg.Header[wire.HeaderProto] = []string{wire.ProtoVersion}
	if c.tracer != nil {
		tracectx.Inject(ctx, msg.Header)
	}
	k := call{c: c, ctx: ctx, deployment: deployment, method: method, deadline: deadline, backoff: time.Millisecond}
	defer k.leave()
	// While this caller already holds requests waiting for a replica of
	// the deployment, a new one queues behind them instead of racing them
	// for the next free slot.
	if c.Queued(deployment) > 0 {
		if err := k.admit(); err != nil {
			return nil, err
		}
		time.Sleep(time.Millisecond)
	}
	for attempt := 0; ; attempt++ {
		left := time.Until(deadline)
		if left <= 0 {
			return nil, k.fail(wire.CodeDeadline, "deadline passed before a replica accepted the request", "")
		}
		reply, err := k.send(ctx, msg, left)
		switch {
		case err == nil:
		case errors.Is(err, nats.ErrNoResponders):
			if probeOf(ctx) != nil { // a multiplexing probe falls back to the next subject
				return nil, k.fail(wire.CodeNoReplicas, "no replica serves "+msg.Subject, "")
			}
			if err := k.wakeFromZero(); err != nil {
				return nil, err
			}
			continue
		case errors.Is(err, context.DeadlineExceeded), errors.Is(err, nats.ErrTimeout):
			return nil, k.fail(wire.CodeDeadline, fmt.Sprintf("no reply within %v", left.Round(time.Millisecond)), "")
		case errors.Is(err, context.Canceled):
			return nil, err
		case errors.Is(err, nats.ErrConnectionClosed):
			return nil, fmt.Errorf("%s: %w", deployment, ErrClosed)
		default:
			return nil, k.fail(wire.CodeInternal, err.Error(), "")
		}
		if final, err := k.outcome(reply); final {
			if err != nil {
				return nil, err
			}
			return reply, nil
		}
		// Busy: wait in the caller-side queue and try again.
		if err := k.admit(); err != nil {
			return nil, err
		}
		if p := probeOf(ctx); p != nil && time.Now().After(p.until) {
			return nil, k.fail(wire.CodeBusy, "the replicas holding the model stayed busy", probeGaveUp)
		}
		if err := k.backoffBusy(ctx, attempt); err != nil {
			return nil, err
		}
	}
}

// call is one RequestMsg in progress: its queue admission, whether it woke
// the deployment, and its busy backoff.
type call struct {
	c          *Client
	ctx        context.Context // the caller's, for the queue span
	deployment string
	method     string
	deadline   time.Time
	dequeue    func() // takes the call out of the caller-side queue; nil until admitted
	backoff    time.Duration
	woke       bool       // the controller was asked to wake the deployment
	waking     bool       // … and a replica is coming
	queued     trace.Span // the wait for a free replica, when traced
}

func (k *call) fail(code wire.Code, text, replica string) error {
	return &Error{Deployment: k.deployment, Method: k.method, Code: string(code), Message: text, Replica: replica}
}

// admit puts the call in the caller-side queue (once), unless
// max_queued_requests calls already wait.
func (k *call) admit() error {
	if k.dequeue != nil {
		return nil
	}
	var ok bool
	if k.dequeue, ok = k.c.enqueue(k.deployment, k.c.queueLimit(k.deployment)); !ok {
		return k.fail(wire.CodeBackpressure, fmt.Sprintf("max_queued_requests reached: %d requests already wait for a replica", k.c.Queued(k.deployment)), "")
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

// leave takes the call out of the queue if it was in it.
func (k *call) leave() {
	if k.dequeue != nil {
		k.dequeue()
	}
	if k.queued != nil {
		k.queued.End()
	}
}

// send sends msg once, with left as its budget.
func (k *call) send(ctx context.Context, msg *nats.Msg, left time.Duration) (*nats.Msg, error) {
	msg.Header[wire.HeaderTimeout] = []string{wire.FormatTimeout(left)}
	if ctx.Done() == nil {
		// No cancellation to watch: nats.go's pooled timer is cheaper
		// than a context per request (the ingress's hot path).
		return k.c.nc.RequestMsg(msg, left)
	}
	rctx, cancel := context.WithDeadline(ctx, k.deadline)
	defer cancel()
	return k.c.nc.RequestMsgWithContext(rctx, msg)
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

// backoffBusy waits before the next attempt after every replica answered
// busy, or says why there is none.
func (k *call) backoffBusy(ctx context.Context, attempt int) error {
	if k.c.opts.MaxBusyRetries > 0 && attempt >= k.c.opts.MaxBusyRetries {
		return k.fail(wire.CodeBusy, fmt.Sprintf("every replica was busy after %d attempts", attempt+1), "")
	}
	// Full jitter between backoff/2 and backoff, 1 ms doubling up to a
	// cap that grows with the queue (1 ms per waiting request, 2 to
	// 32 ms): a short queue retries often, so that the requests it
	// holds win the next free slot over newcomers and wait about in
	// order; a long one does not flood the replicas with retries.
	sleep := k.backoff/2 + rand.N(k.backoff/2+1)
	limit := min(max(time.Duration(k.c.Queued(k.deployment))*time.Millisecond, 2*time.Millisecond), 32*time.Millisecond)
	if k.backoff < limit {
		k.backoff *= 2
	}
	k.backoff = min(k.backoff, limit)
	if time.Until(k.deadline) < sleep {
		return k.fail(wire.CodeDeadline, fmt.Sprintf("every replica stayed busy until the deadline (%d attempts)", attempt+1), "")
	}
	t := time.NewTimer(sleep)
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		t.Stop()
		if time.Now().After(k.deadline) {
			return k.fail(wire.CodeDeadline, "deadline passed while every replica was busy", "")
		}
		return ctx.Err()
	}
}
