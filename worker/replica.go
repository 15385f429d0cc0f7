package worker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/natserve/natserve/client"
	"github.com/natserve/natserve/internal/discovery"
	"github.com/natserve/natserve/internal/metrics"
	"github.com/natserve/natserve/internal/natsconn"
	"github.com/natserve/natserve/internal/tracing"
	"github.com/natserve/natserve/internal/wire"
	"github.com/vmihailenco/msgpack/v5"
	"go.opentelemetry.io/otel/trace"
)

// Replica serves one deployment in this process: it joins the deployment's
// queue group and runs calls on one instance of the class, at most
// max_ongoing_requests at once.
type Replica struct {
	spec ReplicaSpec
	reg  *Registry
	log  *slog.Logger
	pid  int
	id   []byte // spec.Replica, for reply envelopes

	cls  *class
	inst *instance
	nc   *nats.Conn
	cl   *client.Client

	tracer trace.Tracer      // nil: tracing off (the spec names no OTLP endpoint)
	traces *tracing.Provider // exports tracer's spans

	sem chan struct{} // one token per running call
	// wakeLoad and wakeBeat (cap 1) wake the load reporter and the
	// heartbeats from their idle sleep when a call is admitted into an
	// empty sem (admitted): an idle replica has no timer ticking.
	wakeLoad, wakeBeat chan struct{}
	inflight           sync.WaitGroup // running calls
	inbox              chan *nats.Msg // the subscription delivers here; receivers take from it
	receivers          sync.WaitGroup // the goroutines taking from inbox
	draining           atomic.Bool

	// Admission acknowledgments (wire.AppendAck): the payloads for a
	// method declared idempotent and for the others, built once.
	ackPlain, ackIdem []byte
	idempotent        map[string]bool // method names; "*" for all
	acks              *ackRounds      // confirms acknowledgments with the broker (confirm.go); set by Run
	// calls holds the reply subject of each running call, one slot per
	// receiver (more calls run on goroutines of their own and are kept in
	// extra), so that heartbeats reach the callers of long calls.
	calls   []callSlot
	extraMu sync.Mutex             // guards extra
	extra   map[*callSlot]struct{} // calls above maxReceivers

	mu         sync.Mutex // guards sub, direct, ctlSub, life, cancelLife
	sub        *nats.Subscription
	direct     *nats.Subscription // requests for this replica alone (wire.VerbRequest)
	ctlSub     *nats.Subscription
	life       context.Context // Run's: ends on its ctx or Stop
	cancelLife context.CancelFunc

	health  healthChecks // CheckHealth runs, one at a time
	link    *replicaLink // to the node agent that started it (link.go); nil without one
	serving atomic.Bool  // subscribed and flushed: pings on the link run CheckHealth
	// linkGone: the agent link ended (its agent exited); wakeWatch wakes
	// the orphan watchdog (link gone, NATS disconnected).
	linkGone  atomic.Bool
	wakeWatch chan struct{}
	stored    stored // stored requests (durable.go)

	agentMu      sync.Mutex         // guards agent, orphanSince
	agent        agentRef           // the node agent this replica answers to
	orphanSince  time.Time          // when the agent was found gone; zero while it runs
	disconnected atomic.Int64       // unix nanoseconds since NATS is unreachable; 0 while connected
	metrics      *replicaMetrics    // nil unless spec.Metrics
	svc          *discovery.Service // the replica in `nats micro ls`

	batchers   map[*method]*batcher // the batched methods'; set before serving
	models     *models              // the multiplexed models; nil unless the class is multiplexed
	userConfig []byte               // the user_config Reconfigure last took; guarded by reconfMu
	reconfMu   sync.Mutex           // one reconfigure at a time

	stop     chan struct{} // closed by Stop
	stopOnce sync.Once
}

// NewReplica returns a replica for spec; it does no I/O.
func NewReplica(reg *Registry, spec ReplicaSpec, log *slog.Logger) (*Replica, error) {
	if err := spec.Normalize(); err != nil {
		return nil, err
	}
	cls, err := reg.lookup(spec.Class)
	if err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.Default()
	}
	log = log.With("deployment", spec.Deployment, "replica", spec.Replica)
	idem := map[string]bool{}
	for _, m := range spec.IdempotentMethods {
		idem[m] = true
	}
	return &Replica{
		spec: spec, reg: reg, log: log, pid: os.Getpid(), id: []byte(spec.Replica), cls: cls,
		sem: make(chan struct{}, spec.MaxOngoingRequests), wakeLoad: make(chan struct{}, 1), wakeBeat: make(chan struct{}, 1), wakeWatch: make(chan struct{}, 1), inbox: make(chan *nats.Msg, inboxSize), stop: make(chan struct{}),
		ackPlain: wire.AppendAck(nil, spec.Replica, 0), ackIdem: wire.AppendAck(nil, spec.Replica, wire.AckIdempotent),
		idempotent: idem, calls: make([]callSlot, min(spec.MaxOngoingRequests, maxReceivers)+1), extra: map[*callSlot]struct{}{},
	}, nil
}

// Stop asks Run to drain and return. Safe to call more than once.
func (r *Replica) Stop() {
	r.stopOnce.Do(func() {
		close(r.stop)
		r.mu.Lock()
		cancel := r.cancelLife
		r.mu.Unlock()
		if cancel != nil {
			cancel()
		}
	})
}

// Run connects, constructs the instance, serves until ctx ends or Stop is
// called, then drains: it leaves the queue group, lets in-flight calls
// finish for up to graceful_shutdown_timeout_s, and returns.
func (r *Replica) Run(ctx context.Context) error {
	r.openLink()
	opts := append([]nats.Option{
		nats.Name("replica " + r.spec.Replica + " of " + r.spec.Deployment),
		// Reconnect for ever: the orphan timeout bounds a replica cut off from NATS.
		nats.MaxReconnects(-1), nats.ReconnectWait(time.Second),
		nats.DisconnectErrHandler(func(*nats.Conn, error) {
			r.disconnected.CompareAndSwap(0, time.Now().UnixNano())
			r.wakeWatchdog()
		}),
		nats.ReconnectHandler(func(*nats.Conn) {
			r.disconnected.Store(0)
			r.stored.reconnected() // a pull request waiting at the old server is gone: pull again
		}),
		nats.ClosedHandler(func(*nats.Conn) { r.Stop() }),
		// Replies of calls served together leave in one write.
		natsconn.Coalescing(nats.DefaultTimeout),
	}, r.spec.tls().Options()...)
	if r.spec.Creds != "" {
		jwt, seed, err := parseCreds(r.spec.Creds)
		if err != nil {
			return fmt.Errorf("%w: creds: %v", ErrSpec, err)
		}
		opts = append(opts, nats.UserJWTAndSeed(jwt, seed))
		if p := wire.CredsInboxPrefix([]byte(r.spec.Creds)); p != "" {
			opts = append(opts, nats.CustomInboxPrefix(p))
		}
	}
	nc, err := nats.Connect(r.spec.NATSURL, opts...)
	if err != nil {
		return fmt.Errorf("replica %s: connecting to %s: %w", r.spec.Replica, r.spec.NATSURL, err)
	}
	defer nc.Close()
	r.nc = nc
	r.acks = newAckRounds(nc, r.spec.Replica, func(n int, err error) {
		r.log.Warn("acknowledgments not confirmed by the broker before their ack-by time: requests not run", "requests", n, "err", err)
	})
	if err := r.startTracing(); err != nil {
		return fmt.Errorf("replica %s: %w", r.spec.Replica, err)
	}
	defer r.stopTracing()
	copts := []client.Option{client.WithSender(wire.QueueSender(r.spec.Deployment))}
	if r.tracer != nil {
		copts = append(copts, client.WithTracerProvider(r.traces.TracerProvider()))
	}
	if r.spec.Metrics {
		r.metrics = newReplicaMetrics(r)
		r.metrics.labelled.MustRegister(metrics.NATSCollector(nc, "replica"), newBatchMuxCollector(r))
		copts = append(copts, client.WithCallObserver(r.metrics.observeCall))
	}
	r.cl = client.New(nc, copts...)
	if r.metrics != nil {
		r.metrics.labelled.MustRegister(metrics.MultiplexCollector("handle", "callee", r.cl))
	}
	defer r.cl.Close()

	// life ends on ctx (SIGTERM) or Stop: the constructor, reconfigures
	// and health checks run under it. Calls do not: a drain lets them end.
	life, cancel := context.WithCancel(context.WithValue(ctx, replicaKey, r))
	r.mu.Lock()
	r.life, r.cancelLife = life, cancel
	r.mu.Unlock()
	select {
	case <-r.stop: // Stop came before Run
		cancel()
	default:
	}
	defer func() {
		cancel()
		r.health.wait(r.log, healthWaitOnExit)
	}()

	inst, err := r.cls.construct(life, r.spec.InitArgs)
	if err != nil {
		if life.Err() != nil { // stopped: not a constructor failure to count
			return fmt.Errorf("replica %s: stopped while constructing: %v", r.spec.Replica, err)
		}
		return err
	}
	r.inst = inst
	defer r.closeInstance()
	if err := r.startBatchers(); err != nil {
		return fmt.Errorf("%w: class %s: %w", ErrConstructor, r.spec.Class, err)
	}
	defer r.stopBatchers()
	if r.cls.mux != nil {
		r.models = newModels(r, r.cls.mux)
		defer r.models.closeAll()
	}
	if len(r.spec.UserConfig) > 0 {
		if err := r.reconfigure(life, r.spec.UserConfig); err != nil {
			return fmt.Errorf("%w: class %s: reconfigure with user_config: %w", ErrConstructor, r.spec.Class, err)
		}
	}

	r.mu.Lock()
	r.ctlSub, err = nc.Subscribe(wire.ReplicaSubject(r.spec.Deployment, r.spec.Replica, "*"), r.onControl)
	if err == nil {
		r.sub, err = nc.ChanQueueSubscribe(wire.DeploymentSubject(r.spec.Deployment), wire.QueueGroup(r.spec.Deployment), r.inbox)
	}
	if err == nil {
		r.direct, err = nc.ChanSubscribe(wire.ReplicaSubject(r.spec.Deployment, r.spec.Replica, wire.VerbRequest), r.inbox)
	}
	r.mu.Unlock()
	if err != nil {
		return fmt.Errorf("replica %s: subscribing: %w", r.spec.Replica, err)
	}
	if r.models != nil {
		r.models.resubscribe() // the free-slot subject: no model yet
	}
	for i := range r.calls {
		r.receivers.Add(1)
		go func() {
			defer r.receivers.Done()
			r.receive(&r.calls[i])
		}()
	}
	r.svc = r.service()
	if err := r.svc.Start(nc); err != nil {
		return fmt.Errorf("replica %s: %w", r.spec.Replica, err)
	}
	if err := nc.Flush(); err != nil {
		return fmt.Errorf("replica %s: %w", r.spec.Replica, err)
	}
	r.log.Info("replica serving", "class", r.spec.Class, "pid", r.pid, "max_ongoing_requests", r.spec.MaxOngoingRequests)
	r.serving.Store(true)
	r.link.ready()

	storedDone := make(chan struct{})
	go func() { defer close(storedDone); r.runStored(life) }()
	reportDone := make(chan struct{})
	var bg sync.WaitGroup
	bg.Add(2)
	go func() { defer bg.Done(); r.reportLoad(reportDone) }()
	go func() { defer bg.Done(); r.heartbeats(reportDone) }()
	r.startWatchdog(reportDone)
	select {
	case <-ctx.Done():
	case <-r.stop:
	}
	err = r.drain()
	close(reportDone)
	select { // the results of the stored requests that ran are stored
	case <-storedDone:
	case <-time.After(r.spec.gracefulTimeout() + storedPublishFor):
	}
	bg.Wait()
	return err
}

// Load reporting: while calls run, ongoing requests are sampled every
// loadSample and their mean is published every loadReport. When the load
// falls to zero the replica reports zero once, then (nothing in flight,
// last report zero) sleeps until a call is admitted (admitted wakes it) and
// publishes nothing: a thousand idle replicas cost the broker nothing. The
// autoscaler counts a replica without reports in its look-back window as
// idle, which is what its last report (zero) said; a replica that dies is
// removed by its exit, its node's heartbeat and health checks, not by load.
const (
	loadSample = 100 * time.Millisecond
	loadReport = time.Second
)

// admitted is called after a call took a token of sem: the first call into
// an idle replica wakes the load reporter and the heartbeats. One length
// read per call; a (non-blocking) send only when sem was empty.
func (r *Replica) admitted() {
	if len(r.sem) == 1 {
		select {
		case r.wakeLoad <- struct{}{}:
		default:
		}
		select {
		case r.wakeBeat <- struct{}{}:
		default:
		}
	}
}

func (r *Replica) reportLoad(done <-chan struct{}) {
	t := time.NewTimer(loadSample)
	defer t.Stop()
	var sum float64
	var n int
	start, lastValue := time.Now(), -1.0
	for {
		select {
		case <-done:
			return
		case <-t.C:
		}
		ongoing := len(r.sem)
		if n == 0 && ongoing == 0 && lastValue == 0 { // idle: sleep until a call
			select {
			case <-done:
				return
			case <-r.wakeLoad:
			}
			start = time.Now()
			t.Reset(loadSample)
			continue
		}
		sum += float64(ongoing)
		n++
		t.Reset(loadSample)
		if time.Since(start) < loadReport {
			continue
		}
		avg := sum / float64(n)
		if avg != 0 || lastValue != 0 {
			r.publishLoad(avg, time.Since(start))
			lastValue = avg
		}
		sum, n, start = 0, 0, time.Now()
	}
}

func (r *Replica) publishLoad(ongoing float64, window time.Duration) {
	b, _ := json.Marshal(wire.LoadReport{Replica: r.spec.Replica, Deployment: r.spec.Deployment, Ongoing: ongoing, WindowMS: window.Milliseconds()})
	_ = r.nc.Publish(wire.EventSubject(wire.EventLoad, r.spec.Deployment), b)
}

func (r *Replica) drain() error {
	r.draining.Store(true)
	if r.svc != nil {
		r.svc.Stop() // no longer an instance of the service
	}
	timeout := r.spec.gracefulTimeout()
	deadline := time.Now().Add(timeout)
	r.log.Info("replica draining", "graceful_shutdown_timeout", timeout)
	r.mu.Lock()
	subs := []*nats.Subscription{r.sub, r.direct}
	r.mu.Unlock()
	// Drain sends UNSUB, then delivers what the server had already routed
	// here; those calls run normally. Cut off from NATS, nothing more
	// arrives: the subscriptions just end.
	for _, sub := range subs {
		if !r.nc.IsConnected() {
			_ = sub.Unsubscribe()
		} else if err := sub.Drain(); err != nil && !errors.Is(err, nats.ErrConnectionClosed) {
			r.log.Warn("drain subscription", "err", err)
		}
	}
	if r.models != nil {
		subs = append(subs, r.models.drain()...)
	}
	valid := func() bool {
		for _, s := range subs {
			if s.IsValid() {
				return true
			}
		}
		return false
	}
	for valid() && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	// The subscriptions are closed: nothing more arrives in inbox. The
	// receivers run what it still holds, then stop.
	if !valid() {
		close(r.inbox)
	}
	done := make(chan struct{})
	go func() { r.receivers.Wait(); r.inflight.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(time.Until(deadline)):
		n := len(r.sem)
		r.log.Warn("graceful shutdown timed out", "in_flight", n)
		return fmt.Errorf("replica %s: graceful shutdown timed out after %v with %d calls in flight", r.spec.Replica, timeout, n)
	}
	r.log.Info("replica drained")
	return nil
}

func (r *Replica) closeInstance() {
	m := r.cls.methods[CloseMethod]
	if r.inst == nil || m == nil {
		return
	}
	if _, err := r.inst.invoke(context.Background(), m, nil); err != nil {
		r.log.Warn("close hook failed", "err", err)
	}
}

// Requests reach the replica through a channel subscription: NATS's
// reader puts each message in inbox, and max_ongoing_requests+1 receiver
// goroutines take them (one hand-off, the receivers' stacks stay grown).
// A receiver that finds every slot taken answers "busy" at once, so there
// is always one receiver free to refuse. Above maxReceivers slots, calls
// run on goroutines of their own.
const (
	inboxSize    = 8192
	maxReceivers = 1024
)

func (r *Replica) receive(slot *callSlot) {
	for m := range r.inbox {
		select {
		case r.sem <- struct{}{}:
			r.admitted()
		default:
			if r.metrics != nil {
				r.metrics.busy.Inc()
			}
			r.replyBusy(m)
			continue
		}
		r.inflight.Add(1)
		if r.spec.MaxOngoingRequests > maxReceivers {
			go func() {
				s := new(callSlot)
				r.extraMu.Lock()
				r.extra[s] = struct{}{}
				r.extraMu.Unlock()
				r.serveAndRelease(m, s)
				r.extraMu.Lock()
				delete(r.extra, s)
				r.extraMu.Unlock()
			}()
			continue
		}
		r.serveAndRelease(m, slot)
	}
}

func (r *Replica) serveAndRelease(m *nats.Msg, slot *callSlot) {
	var md wire.RequestMeta
	merr := readMeta(m, &md)
	if r.metrics == nil && r.tracer == nil {
		r.serve(context.Background(), m, &md, merr, nil, slot)
	} else {
		r.serveObserved(m, &md, merr, slot)
	}
	r.free(slot)
	slot.freed = false
	r.inflight.Done()
}

// serveObserved serves m with metrics, tracing or both: the outcome
// feeds the metrics and ends the server span.
func (r *Replica) serveObserved(m *nats.Msg, md *wire.RequestMeta, merr error, slot *callSlot) {
	var oc outcome
	start := time.Now()
	ctx := context.Background()
	var span trace.Span
	if r.tracer != nil {
		ctx, span = r.startServe(m, md)
	}
	r.serve(ctx, m, md, merr, &oc, slot)
	if span != nil {
		endServe(span, &oc)
	}
	if r.metrics != nil {
		r.metrics.observe(&oc, time.Since(start))
	}
}

// free gives the call's max_ongoing_requests slot back, once. A
// successful call frees it just before its reply goes out, so that a
// caller the reply releases from its queue finds the slot free.
func (r *Replica) free(slot *callSlot) {
	if slot == nil || slot.freed {
		return
	}
	slot.freed = true
	slot.reply.Store(nil)
	<-r.sem
}

// callSlot is the running call of one receiver: its reply subject and
// acknowledgment (nil when idle) and when it started (Unix nanoseconds).
type callSlot struct {
	reply  atomic.Pointer[ackTarget]
	mu     sync.Mutex         // guards cancel
	cancel context.CancelFunc // the running call's context (VerbCancel), if it takes one
	freed  bool               // the slot was given back (owned by the goroutine serving the call)
}

type ackTarget struct {
	id      string // the request id (VerbCancel)
	subject string
	ack     []byte
	since   time.Time
	// prefix and token: the caller takes coalesced acknowledgments
	// (wire.SplitAckReply), so heartbeats are too; empty otherwise.
	prefix, token string
}

// acknowledge tells m's caller that this replica holds the request, unless
// the caller's ack-by time has passed: then the caller has (or will have)
// sent it elsewhere, and the request is dropped without running. It
// reports whether to run the request. Callers that set no ack-by (they do
// not speak acknowledgments) get none.
//
// The request runs only once the broker has the acknowledgment, confirmed
// before ack-by (confirm.go); otherwise it is answered wire.CodeNotRun
// (the caller, if it still waits, sends it elsewhere at once). A method
// declared idempotent skips the confirmation: running it twice is allowed,
// and its caller sends it again anyway when its replica dies.
func (r *Replica) acknowledge(m *nats.Msg, md *wire.RequestMeta, oc *outcome, method string, slot *callSlot) bool {
	by := md.AckBy
	if by.IsZero() || m.Reply == "" {
		return true
	}
	now := time.Now()
	if now.After(by) {
		if oc != nil { // counted as a deadline; nobody waits for a reply
			oc.code, oc.text = wire.CodeDeadline, "ack-by time passed"
		}
		r.log.Debug("request dropped: its ack-by time passed", "late", now.Sub(by), "request_id", md.RequestID)
		return false
	}
	idem := r.idempotent[method] || r.idempotent["*"]
	ack := r.ackPlain
	if idem {
		ack = r.ackIdem
	}
	// A caller that takes coalesced acknowledgments gets this one with the
	// others of its confirmation round, from the round's leader.
	prefix, token, coalesced := wire.SplitAckReply(m.Reply)
	if !coalesced || idem || !wire.CoalescesAcks(r.spec.Replica) {
		prefix, token = "", ""
		if err := r.nc.Publish(m.Reply, ack); err != nil {
			r.log.Warn("acknowledgment failed", "err", err)
			return false
		}
	}
	if !idem && !r.acks.confirm(by, prefix, m.Reply) {
		r.fail(oc, m, wire.CodeNotRun, "not run: the broker did not confirm the acknowledgment before its ack-by time")
		return false
	}
	if slot != nil {
		slot.reply.Store(&ackTarget{id: md.RequestID, subject: m.Reply, ack: ack, since: now, prefix: prefix, token: token})
	}
	return true
}

// heartbeats repeats the acknowledgment of every call running longer than
// wire.HeartbeatInterval, every interval, until done. An idle replica sends
// nothing.
func (r *Replica) heartbeats(done <-chan struct{}) {
	t := time.NewTimer(wire.HeartbeatInterval)
	defer t.Stop()
	// One heartbeat per caller (and flags) that takes them coalesced,
	// one per call for the others.
	type batchKey struct {
		prefix string
		flags  byte
	}
	var batch map[batchKey][]byte
	beat := func(s *callSlot, now time.Time) {
		a := s.reply.Load()
		if a == nil || now.Sub(a.since) < wire.HeartbeatInterval {
			return
		}
		if a.prefix == "" {
			_ = r.nc.Publish(a.subject, a.ack)
			return
		}
		k := batchKey{a.prefix, a.ack[1]}
		if batch == nil {
			batch = map[batchKey][]byte{}
		}
		b := batch[k]
		if b == nil {
			b = wire.AppendAcksHeader(nil, r.spec.Replica, k.flags)
		}
		batch[k] = wire.AppendAckToken(b, a.token)
	}
	for {
		if len(r.sem) == 0 { // idle: sleep until a call is admitted
			select {
			case <-done:
				return
			case <-r.wakeBeat:
			}
		}
		t.Reset(wire.HeartbeatInterval)
		select {
		case <-done:
			return
		case <-t.C:
		}
		if len(r.sem) == 0 {
			continue
		}
		now := time.Now()
		for i := range r.calls {
			beat(&r.calls[i], now)
		}
		r.extraMu.Lock()
		for s := range r.extra {
			beat(s, now)
		}
		r.extraMu.Unlock()
		for k, b := range batch {
			_ = r.nc.Publish(k.prefix+wire.AckBatchToken, b)
		}
		clear(batch)
	}
}

// onCallerGone cancels the running call whose reply subject and request id
// are in payload ("<subject> <id>").
func (r *Replica) onCallerGone(payload string) {
	subject, id, ok := strings.Cut(payload, " ")
	if !ok || subject == "" {
		return
	}
	try := func(s *callSlot) bool {
		if a := s.reply.Load(); a == nil || a.subject != subject || a.id != id {
			return false
		}
		s.mu.Lock()
		if s.cancel != nil {
			s.cancel()
		}
		s.mu.Unlock()
		return true
	}
	for i := range r.calls {
		if try(&r.calls[i]) {
			return
		}
	}
	r.extraMu.Lock()
	defer r.extraMu.Unlock()
	for s := range r.extra {
		if try(s) {
			return
		}
	}
}

// errProto: a request in the header form without this replica's
// protocol version.
type errProto string

func (e errProto) Error() string {
	return fmt.Sprintf("protocol version %q not spoken; this replica speaks %q", string(e), wire.ProtoVersion)
}

// readMeta reads what request m says besides its payload into md, from the
// envelope in front of its payload (leaving m.Data the payload alone) or,
// for a request in the header form (older callers, the nats CLI, stored
// requests), from its NATS headers; see wire.RequestMeta. An error is
// answered by serve.
func readMeta(m *nats.Msg, md *wire.RequestMeta) error {
	if wire.HasRequestMeta(m.Data) {
		payload, err := wire.DecodeRequestMeta(m.Data, md)
		if err != nil {
			return err
		}
		m.Data = payload
		return nil
	}
	if v := m.Header.Get(wire.HeaderProto); v != wire.ProtoVersion {
		*md = wire.RequestMeta{}
		return errProto(v)
	}
	return wire.ParseRequestHeaders(m.Header.Get, md)
}

// metaCode is the code a request whose metadata readMeta refused is
// answered with: CodeProto for a version this replica does not speak.
func metaCode(err error) wire.Code {
	var ve *wire.MetaVersionError
	var pe errProto
	if errors.As(err, &ve) || errors.As(err, &pe) {
		return wire.CodeProto
	}
	return wire.CodeBadRequest
}

// serve runs the call m carries (its metadata md, or readMeta's error merr)
// under base (Background, or the replica's span when traced) and replies;
// oc, when not nil, records the outcome.
func (r *Replica) serve(base context.Context, m *nats.Msg, md *wire.RequestMeta, merr error, oc *outcome, slot *callSlot) {
	if merr != nil {
		r.fail(oc, m, metaCode(merr), merr.Error())
		return
	}
	timeout := md.Timeout
	id := md.RequestID
	if !wire.ValidRequestID(id) {
		id = client.NewRequestID()
	}
	name := md.Method
	if err := wire.ValidateMethod(name); err != nil {
		r.fail(oc, m, wire.CodeUnknownMethod, err.Error())
		return
	}
	if name == "" {
		name = DefaultMethod
	}
	meth := r.cls.methods[name]
	if oc != nil && !hook(name) {
		oc.meth = meth
	}
	if meth == nil || hook(name) {
		r.fail(oc, m, wire.CodeUnknownMethod, fmt.Sprintf("class %s has no method %s", r.cls.name, name))
		return
	}

	isHTTP := md.Kind == wire.KindHTTP
	var err error
	var args []reflect.Value
	var req *Request
	dm := meth // the shape to decode: one call's element for a batched method
	if meth.batch != nil {
		dm = meth.batch.item
	}
	switch {
	case isHTTP && dm.takesReq:
		var env *wire.HTTPRequest
		if env, err = wire.DecodeHTTPRequest(m.Data); err == nil {
			req = newHTTPRequest(env, id)
		}
	case isHTTP:
		args, err = r.httpArgs(m.Data, id, dm)
	default:
		args, err = callArgs(m.Data, dm, id)
	}
	if err != nil {
		r.fail(oc, m, wire.CodeBadRequest, fmt.Sprintf("%s.%s: %v", r.cls.name, name, err))
		return
	}

	if !r.acknowledge(m, md, oc, name, slot) {
		return
	}

	var model *modelEntry
	if r.models != nil {
		if model, err = r.acquireModel(md.ModelID, timeout); err != nil {
			var pe *PanicError
			switch {
			case errors.As(err, &pe):
				r.log.Error("model loader panicked", "request_id", id, "panic", fmt.Sprint(pe.Value), "stack", string(pe.Stack))
				r.fail(oc, m, wire.CodePanic, pe.Error())
			case errors.Is(err, errNoModelID):
				r.fail(oc, m, wire.CodeBadRequest, err.Error())
			default:
				r.fail(oc, m, wire.CodeUser, err.Error())
			}
			return
		}
		defer r.models.release(model)
	}
	if md.WebSocket != "" {
		if req == nil || !isHTTP {
			r.fail(oc, m, wire.CodeBadRequest, fmt.Sprintf("deployment %s does not accept WebSocket upgrades: only a net/http handler (reg.HTTPHandler) does", r.spec.Deployment))
			return
		}
		r.serveWebSocket(m, md, oc, req, id)
		return
	}
	if meth.stream != nil {
		switch window := md.Stream; {
		case window == 0:
			r.fail(oc, m, wire.CodeStreaming, fmt.Sprintf("%s.%s streams: call it as a stream", r.cls.name, name))
		default:
			// A stream's budget is the wait for each item, not its length:
			// the caller enforces it; the context ends when the caller
			// cancels or goes away.
			ctx := client.WithRequestID(context.WithValue(context.Background(), replicaKey, r), id)
			if model != nil {
				ctx = context.WithValue(ctx, modelKey, model)
			}
			r.serveStream(m, oc, meth, window, timeout, ctx, func(ctx context.Context) (any, error) {
				if req != nil {
					return r.inst.invokeReq(ctx, meth, req)
				}
				return r.inst.invoke(ctx, meth, args)
			}, isHTTP, id)
		}
		return
	}
	if meth.batch != nil {
		r.serveBatched(m, oc, meth, model, args, req, timeout, isHTTP, id)
		return
	}

	// A context (the deadline, the request id, handles to other
	// deployments) only for methods that take one.
	ctx := base
	if meth.takesCtx {
		ctx = client.WithRequestID(context.WithValue(ctx, replicaKey, r), id)
		if model != nil {
			ctx = context.WithValue(ctx, modelKey, model)
		}
		var cancel context.CancelFunc
		if timeout > 0 {
			ctx, cancel = context.WithTimeout(ctx, timeout)
		} else {
			ctx, cancel = context.WithCancel(ctx)
		}
		defer cancel()
		if slot != nil { // a caller that goes away cancels it (VerbCancel)
			slot.mu.Lock()
			slot.cancel = cancel
			slot.mu.Unlock()
			defer func() {
				slot.mu.Lock()
				slot.cancel = nil
				slot.mu.Unlock()
			}()
		}
	}
	var result any
	if req != nil {
		result, err = r.inst.invokeReq(ctx, meth, req)
	} else {
		result, err = r.inst.invoke(ctx, meth, args)
	}
	r.replyResult(m, oc, meth, ctx, result, err, isHTTP, id, slot)
}

// replyResult answers m with a method's result or error; a successful call
// gives its slot back first (nil: none to give back here).
func (r *Replica) replyResult(m *nats.Msg, oc *outcome, meth *method, ctx context.Context, result any, err error, isHTTP bool, id string, slot *callSlot) {
	name := meth.name
	if err != nil {
		var pe *PanicError
		switch {
		case errors.As(err, &pe):
			r.log.Error("method panicked", "method", name, "request_id", id, "panic", fmt.Sprint(pe.Value), "stack", string(pe.Stack))
			r.fail(oc, m, wire.CodePanic, pe.Error())
		case errors.Is(err, context.DeadlineExceeded) && ctx.Err() != nil:
			r.fail(oc, m, wire.CodeDeadline, err.Error())
		default:
			r.fail(oc, m, wire.CodeUser, err.Error())
		}
		return
	}
	var rep wire.HTTPReply
	if isHTTP {
		rep = httpReply(result)
		rep.Replica = r.id // for the ingress's access log
	}
	if m.Reply != "" {
		// Published now: encoded straight into a pooled buffer, behind
		// what goes before the payload, and published from it.
		bp := replyBufs.Get().(*[]byte)
		subject, b := replyTo(m, (*bp)[:0])
		if isHTTP {
			b = wire.AppendHTTPReply(b, &rep)
		} else if b, err = wire.AppendValue(b, result); err != nil {
			replyBufs.Put(bp)
			r.fail(oc, m, wire.CodeInternal, fmt.Sprintf("encoding the result of %s.%s: %v", r.cls.name, name, err))
			return
		}
		r.free(slot)
		r.publishReply(subject, nil, b)
		if cap(b) <= maxPooledReply {
			*bp = b[:0]
			replyBufs.Put(bp)
		}
		return
	}
	var data []byte
	if isHTTP {
		data = wire.AppendHTTPReply(make([]byte, 0, rep.MaxSize()), &rep)
	} else if data, err = wire.MarshalValue(result); err != nil {
		r.fail(oc, m, wire.CodeInternal, fmt.Sprintf("encoding the result of %s.%s: %v", r.cls.name, name, err))
		return
	}
	r.free(slot)
	r.reply(m, nil, data)
}

// reply answers m. A successful reply carries no headers (the cheapest
// message NATS has); an error reply carries the code, the message, the
// protocol version and the replica. A caller that takes coalesced
// acknowledgments takes its replies on its repeating subject too, the call's
// token in the payload (wire.ReplySubject): a subject per request missed the
// broker's publish-permission cache once per request.
func (r *Replica) reply(m *nats.Msg, h nats.Header, data []byte) {
	if m.Reply == "" {
		r.storedReply(m, h, data) // a stored request (durable.go), else nothing
		return
	}
	if h != nil {
		h[wire.HeaderProto] = []string{wire.ProtoVersion}
		h[wire.HeaderReplica] = []string{r.spec.Replica}
	}
	bp := replyBufs.Get().(*[]byte)
	subject, b := replyTo(m, (*bp)[:0])
	if len(b) > 0 { // the caller's repeating subject, the token in the payload
		b = append(b, data...)
		data = b
	}
	r.publishReply(subject, h, data)
	if cap(b) <= maxPooledReply {
		*bp = b[:0]
		replyBufs.Put(bp)
	}
}

// replyTo returns the subject m is answered on and appends to b what
// goes before the reply's payload: for a caller that takes its replies on
// its repeating subject, the call's token (wire.ReplySubject); for others
// (their reply subject), nothing.
func replyTo(m *nats.Msg, b []byte) (string, []byte) {
	subject, token, coalesced := wire.ReplySubject(m.Reply)
	if !coalesced {
		return m.Reply, b
	}
	return subject, wire.AppendReplyHeader(b, token)
}

// publishReply publishes a reply (nats.go copies data before it returns).
func (r *Replica) publishReply(subject string, h nats.Header, data []byte) {
	if err := r.nc.PublishMsg(&nats.Msg{Subject: subject, Header: h, Data: data}); err != nil {
		r.log.Warn("reply failed", "err", err)
	}
}

// replyBusy refuses m: every max_ongoing_requests slot is taken. The reply
// says how many slots the replica has (not for a replica that batches: its
// calls are meant to start together), so that a caller whose calls queue
// can spread their starts over them (client/pace.go).
func (r *Replica) replyBusy(m *nats.Msg) {
	h := nats.Header{wire.HeaderCode: {string(wire.CodeBusy)}, wire.HeaderError: {"replica is at max_ongoing_requests"}}
	if len(r.batchers) == 0 {
		h[wire.HeaderSlots] = []string{strconv.Itoa(cap(r.sem))}
	}
	r.reply(m, h, nil)
}

func (r *Replica) replyError(m *nats.Msg, code wire.Code, text string) {
	if len(text) > 4096 {
		text = text[:4096] + "…"
	}
	r.reply(m, nats.Header{wire.HeaderCode: {string(code)}, wire.HeaderError: {text}}, nil)
}

// callArgs decodes a msgpack array of arguments for m.
func callArgs(data []byte, m *method, id string) ([]reflect.Value, error) {
	if err := wire.CheckMsgpack(data); err != nil {
		return nil, err
	}
	dec := wire.GetDecoder(data)
	defer dec.Release()
	n, err := dec.DecodeArrayLen()
	if err != nil {
		return nil, fmt.Errorf("arguments must be a msgpack array: %w", err)
	}
	if m.takesReq {
		req := &Request{ID: id, args: make([]msgpack.RawMessage, 0, max(n, 0))}
		for i := 0; i < n; i++ {
			raw, err := dec.DecodeRaw()
			if err != nil {
				return nil, fmt.Errorf("argument %d: %w", i, err)
			}
			req.args = append(req.args, raw)
		}
		return []reflect.Value{reflect.ValueOf(req)}, nil
	}
	if n != len(m.in) {
		return nil, fmt.Errorf("takes %d arguments, got %d", len(m.in), n)
	}
	args := make([]reflect.Value, n)
	for i, t := range m.in {
		p := reflect.New(t)
		if err := dec.Decode(p.Interface()); err != nil {
			return nil, fmt.Errorf("argument %d (%v): %w", i, t, err)
		}
		args[i] = p.Elem()
	}
	return args, nil
}

// httpArgs turns an HTTP envelope into arguments for m: the *Request itself,
// or the JSON body (a method of one argument takes the whole body; of
// several, a JSON array).
func (r *Replica) httpArgs(data []byte, id string, m *method) ([]reflect.Value, error) {
	env, err := wire.DecodeHTTPRequest(data)
	if err != nil {
		return nil, err
	}
	req := newHTTPRequest(env, id)
	if m.takesReq {
		return []reflect.Value{reflect.ValueOf(req)}, nil
	}
	switch len(m.in) {
	case 0:
		return nil, nil
	case 1:
		if len(req.Body) == 0 {
			return nil, errors.New("takes 1 argument: send it as the JSON body")
		}
		p := reflect.New(m.in[0])
		if err := wire.UnmarshalJSON(req.Body, p.Interface()); err != nil {
			return nil, fmt.Errorf("JSON body: %w", err)
		}
		return []reflect.Value{p.Elem()}, nil
	}
	// The body is vetted once; its elements are parts of it.
	if err := wire.CheckJSON(req.Body); err != nil {
		return nil, fmt.Errorf("JSON body: %w", err)
	}
	var raw []json.RawMessage
	if err := json.Unmarshal(req.Body, &raw); err != nil || len(raw) != len(m.in) {
		return nil, fmt.Errorf("takes %d arguments: send them as a JSON array", len(m.in))
	}
	args := make([]reflect.Value, len(raw))
	for i, t := range m.in {
		p := reflect.New(t)
		if err := json.Unmarshal(raw[i], p.Interface()); err != nil {
			return nil, fmt.Errorf("argument %d: %w", i, err)
		}
		args[i] = p.Elem()
	}
	return args, nil
}

// httpReply turns a method's result into an HTTP reply: a *Response as it
// is, a string as text/plain, bytes as application/octet-stream, nothing as
// 204, anything else as JSON.
func httpReply(v any) wire.HTTPReply {
	switch x := v.(type) {
	case nil:
		return wire.HTTPReply{Status: http.StatusNoContent}
	case *Response:
		if x == nil {
			return wire.HTTPReply{Status: http.StatusNoContent}
		}
		rep := wire.HTTPReply{Status: x.Status, Body: x.Body}
		for k, vs := range x.Header {
			for _, v := range vs {
				rep.Headers = append(rep.Headers, k, v)
			}
		}
		return rep
	case string:
		return wire.HTTPReply{Status: 200, Headers: textHeaders, Body: []byte(x)}
	case []byte:
		return wire.HTTPReply{Status: 200, Headers: octetHeaders, Body: x}
	}
	b, err := json.Marshal(v)
	if err != nil {
		return wire.HTTPReply{Status: 500, Headers: textHeaders, Body: []byte("encoding the result as JSON: " + err.Error())}
	}
	return wire.HTTPReply{Status: 200, Headers: jsonHeaders, Body: b}
}

// The headers of replies made from a method's result: shared and read
// only (wire.AppendHTTPReply reads them), so a reply allocates none.
var (
	textHeaders  = []string{"Content-Type", "text/plain; charset=utf-8"}[0:2:2]
	octetHeaders = []string{"Content-Type", "application/octet-stream"}[0:2:2]
	jsonHeaders  = []string{"Content-Type", "application/json"}[0:2:2]
)

// replyBufs holds the buffers replies (HTTP envelopes, values, the token
// of a repeating subject) are encoded into: a reply is
// published at once, and nats.go copies it into its write buffer before
// PublishMsg returns, so the buffer is free again right after.
var replyBufs = sync.Pool{New: func() any { return new([]byte) }}

// maxPooledReply is the largest reply buffer kept for reuse.
const maxPooledReply = 64 << 10

// onControl answers ping (status and the class's CheckHealth), reconfigure
// (user_config, in place) and stop.
func (r *Replica) onControl(m *nats.Msg) {
	verb := m.Subject[len(wire.ReplicaSubject(r.spec.Deployment, r.spec.Replica, "")):]
	switch verb {
	case wire.VerbPing:
		r.ping(m)
	case wire.VerbReconfigure:
		if err := r.reconfigureAll(r.lifeContext(), m.Header.Get(wire.HeaderBatching), m.Data); err != nil {
			_ = m.RespondMsg(&nats.Msg{Header: nats.Header{wire.HeaderCode: {string(wire.CodeUser)}, wire.HeaderError: {err.Error()}}})
			return
		}
		_ = m.Respond(nil)
	case wire.VerbStop:
		_ = m.Respond(nil)
		r.Stop()
	case wire.VerbAdopt:
		r.onAdopt(m)
	case wire.VerbMetrics:
		r.answerMetrics(m)
	case wire.VerbCancel:
		r.onCallerGone(string(m.Data))
	}
}

func (r *Replica) reconfigure(ctx context.Context, cfg json.RawMessage) error {
	hm := r.cls.methods[ReconfigureMethod]
	if hm == nil {
		return nil
	}
	var args []reflect.Value
	if len(hm.in) == 1 {
		p := reflect.New(hm.in[0])
		if err := json.Unmarshal(cfg, p.Interface()); err != nil {
			return fmt.Errorf("user_config does not fit %v: %w", hm.in[0], err)
		}
		args = append(args, p.Elem())
	} else if len(hm.in) > 1 {
		return fmt.Errorf("%s must take (ctx, config)", ReconfigureMethod)
	}
	_, err := r.inst.invoke(ctx, hm, args)
	if err == nil {
		r.userConfig = compactJSON(cfg)
	}
	return err
}

func (r *Replica) lifeContext() context.Context {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.life
}

// Status reports the replica's state.
func (r *Replica) Status() ReplicaStatus {
	return ReplicaStatus{
		Replica: r.spec.Replica, Deployment: r.spec.Deployment, Class: r.spec.Class, Version: r.spec.Version,
		Node: r.spec.Node, PID: r.pid, Ongoing: len(r.sem), MaxOngoing: cap(r.sem),
		Draining: r.draining.Load(), Healthy: true, NotRun: r.notRun(),
		Batching: r.batchStats(), Models: r.modelStats(),
	}
}

// notRun is how many acknowledged requests were not run because the broker
// did not confirm their acknowledgment in time.
func (r *Replica) notRun() uint64 {
	if r.acks == nil {
		return 0
	}
	return r.acks.notRun.Load()
}
