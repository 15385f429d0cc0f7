package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/natserve/natserve/internal/kvwatch"
	"github.com/natserve/natserve/internal/tracectx"
	"github.com/natserve/natserve/internal/wire"
	"go.opentelemetry.io/otel/trace"
)

// graphCache follows the graphs and the deployments' max_queued_requests
// in the control plane's KV, so that a handle to a graph's name runs the
// graph. Its watches start on first use and stop in Client.Close.
type graphCache struct {
	once  sync.Once
	ready chan struct{} // closed after the first sync attempt of the graphs

	mu        sync.Mutex // guards graphs, maxQueued, watchers, closed
	graphs    map[string]*GraphSpec
	maxQueued map[string]int
	watchers  []*kvwatch.Watcher
	closed    bool
}

func (c *Client) graphWatch() *graphCache {
	g := &c.graphs
	g.once.Do(func() {
		g.ready = make(chan struct{})
		readyOnce := sync.OnceFunc(func() { close(g.ready) })
		js, err := jetstream.New(c.nc)
		g.mu.Lock()
		defer g.mu.Unlock()
		if err != nil || g.closed {
			readyOnce()
			return
		}
		// The routes bucket is what a caller may read: graphs without
		// their arguments, and the deployments' max_queued_requests.
		g.watchers = []*kvwatch.Watcher{
			kvwatch.Start(context.Background(), kvwatch.Config{JetStream: js, Bucket: wire.BucketRoutes}, kvwatch.Handler{
				Restart: func() { g.mu.Lock(); clear(g.graphs); clear(g.maxQueued); g.mu.Unlock() },
				Entry:   g.apply,
				Synced:  readyOnce,
				Failed:  func(error) { readyOnce() },
			}),
		}
	})
	return g
}

// stop stops the watches and waits for them.
func (g *graphCache) stop() {
	g.mu.Lock()
	ws := g.watchers
	g.watchers, g.closed = nil, true
	g.mu.Unlock()
	for _, w := range ws {
		w.Stop()
	}
}

// apply records a change of the routes bucket: a graph (without its
// arguments), or a deployment's max_queued_requests.
func (g *graphCache) apply(e jetstream.KeyValueEntry) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.graphs == nil {
		g.graphs = map[string]*GraphSpec{}
	}
	if g.maxQueued == nil {
		g.maxQueued = map[string]int{}
	}
	put := e.Operation() == jetstream.KeyValuePut
	if name, ok := strings.CutPrefix(e.Key(), wire.RouteGraphPrefix); ok {
		var spec GraphSpec
		if put && json.Unmarshal(e.Value(), &spec) == nil {
			g.graphs[name] = &spec
		} else {
			delete(g.graphs, name)
		}
		return
	}
	name, _ := strings.CutPrefix(e.Key(), wire.RouteDeploymentPrefix)
	var r wire.RouteRecord
	if put && json.Unmarshal(e.Value(), &r) == nil && r.MaxQueuedRequests != 0 {
		g.maxQueued[name] = r.MaxQueuedRequests
	} else {
		delete(g.maxQueued, name)
	}
}

// queueLimit is a deployment's max_queued_requests (-1: no limit, also
// while unknown).
func (c *Client) queueLimit(deployment string) int {
	if c.opts.QueueLimit != nil {
		return c.opts.QueueLimit(deployment)
	}
	g := c.graphWatch()
	g.mu.Lock()
	defer g.mu.Unlock()
	if n, ok := g.maxQueued[deployment]; ok {
		return n
	}
	return -1
}

// Graph returns the graph called name if the control plane has one,
// waiting briefly for the first sync.
func (c *Client) Graph(ctx context.Context, name string) (*GraphSpec, bool) {
	g := c.graphWatch()
	select {
	case <-g.ready:
	case <-ctx.Done():
		return nil, false
	case <-time.After(2 * time.Second):
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	spec, ok := g.graphs[name]
	return spec, ok
}

func (c *Client) cachedGraph(name string) *GraphSpec {
	g := c.graphWatch() // started by the first call: graphs and queue limits
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.graphs[name]
}

// RunGraph runs graph g on input (one msgpack value) and returns the
// output node's value (msgpack). Nodes run as soon as their inputs are in,
// in parallel; each node's value comes back here and goes straight to the
// nodes that use it. An error names the node that failed.
func (c *Client) RunGraph(ctx context.Context, g *GraphSpec, input []byte) ([]byte, error) {
	v, _, err := c.runGraph(ctx, g, input, nil)
	return v, err
}

// RunGraphStream runs graph g on input like RunGraph, but takes the output
// node's items as they come: a streaming method's items, or the one value
// of a method that does not stream (ItemStream.Single). The budget
// (Options.Timeout, or ctx's deadline) covers the nodes before the output;
// the stream's items have WithItemTimeout's. The caller must Close the
// stream.
func (c *Client) RunGraphStream(ctx context.Context, g *GraphSpec, input []byte, opts ...StreamOption) (*ItemStream, error) {
	_, st, err := c.runGraph(ctx, g, input, &graphStream{ctx: ctx, opts: opts})
	return st, err
}

// graphStream is how runGraph calls the output node as a stream.
type graphStream struct {
	ctx  context.Context // the caller's: the stream outlives the graph's budget
	opts []StreamOption
}

// outputStreams remembers the graph output nodes ("deployment.method")
// whose method streams.
var outputStreams sync.Map

// callOutput calls a graph's output node for a stream: as a stream when
// its method is known to stream, else as a call, sent again as a stream
// when the replica says the method streams (it says so before running it).
func (c *Client) callOutput(ctx context.Context, gs *graphStream, deployment, method string, payload []byte) (*ItemStream, error) {
	key := deployment + "." + method
	if _, ok := outputStreams.Load(key); !ok {
		v, err := c.callRaw(ctx, deployment, method, "", payload)
		var ce *Error
		if !errors.As(err, &ce) || ce.Code != string(wire.CodeStreaming) {
			if err != nil {
				return nil, err
			}
			return &ItemStream{c: c, deployment: deployment, method: method, ctx: gs.ctx, single: true, first: &nats.Msg{Data: v}}, nil
		}
		outputStreams.Store(key, true)
	}
	hdr := nats.Header{wire.HeaderKind: {wire.KindCall}}
	if id := RequestID(ctx); id != "" {
		hdr[wire.HeaderRequestID] = []string{id}
	}
	if method != "" {
		hdr[wire.HeaderMethod] = []string{method}
	}
	return c.OpenStream(gs.ctx, deployment, method, &nats.Msg{Subject: wire.DeploymentSubject(deployment), Header: hdr, Data: payload}, gs.opts...)
}

func (c *Client) runGraph(ctx context.Context, g *GraphSpec, input []byte, gs *graphStream) (_ []byte, st *ItemStream, err error) {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.opts.Timeout)
		defer cancel()
	}
	if c.tracer != nil {
		var span trace.Span
		ctx, span = c.tracer.Start(ctx, tracectx.GraphSpan(g.Name), trace.WithAttributes(tracectx.AttrGraph.String(g.Name)))
		defer func() { endSpan(span, err) }()
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	classNodes := map[string]bool{}
	for _, n := range g.Nodes {
		if n.Class != "" {
			classNodes[n.Name] = true
		}
	}
	type result struct {
		done chan struct{}
		val  []byte
		err  error
	}
	results := map[string]*result{}
	for _, n := range g.Nodes {
		if n.Call != "" {
			results[n.Name] = &result{done: make(chan struct{})}
		}
	}
	var firstErr error
	var errOnce sync.Once
	fail := func(err error) {
		errOnce.Do(func() { firstErr = err; cancel() })
	}
	for _, n := range g.Nodes {
		if n.Call == "" {
			continue
		}
		r := results[n.Name]
		deployment, method := NodeDeployment(g.Name, n.Name), ""
		target, m, _ := strings.Cut(n.Call, ".")
		if classNodes[target] {
			deployment, method = NodeDeployment(g.Name, target), m
		}
		go func() {
			defer close(r.done)
			args := make([][]byte, len(n.Args))
			for i, a := range n.Args {
				switch name, isRef := ref(a); {
				case name == InputRef:
					args[i] = input
				case isRef:
					dep := results[name]
					select {
					case <-dep.done:
					case <-ctx.Done():
						r.err = ctx.Err()
						return
					}
					if dep.err != nil {
						r.err = dep.err
						return
					}
					args[i] = dep.val
				default:
					v, err := literal(a)
					if err != nil {
						r.err = err
						fail(err)
						return
					}
					args[i] = v
				}
			}
			if gs != nil && n.Name == g.Output {
				st, r.err = c.callOutput(ctx, gs, deployment, method, appendArray(args))
			} else {
				r.val, r.err = c.callRaw(ctx, deployment, method, "", appendArray(args))
			}
			if r.err != nil {
				var ce *Error
				if errors.As(r.err, &ce) {
					where := deployment
					if method != "" {
						where += "." + method
					}
					r.err = &Error{Deployment: g.Name, Code: ce.Code, Replica: ce.Replica,
						Message: fmt.Sprintf("node %s (%s): %s", n.Name, where, ce.Message)}
				}
				fail(r.err)
			}
		}()
	}
	out := results[g.Output]
	select {
	case <-out.done:
	case <-ctx.Done():
	}
	<-out.done
	if firstErr != nil {
		if st != nil {
			st.Close()
		}
		return nil, nil, firstErr
	}
	return out.val, st, out.err
}

// JSONToValue converts one JSON value to msgpack, keeping integers
// integers (for a graph's HTTP input and literal arguments).
func JSONToValue(b []byte) ([]byte, error) { return literal(b) }

// DecodeJSON decodes one JSON value, keeping integers int64 (json.Unmarshal
// would make every number a float64, which an int parameter refuses).
// b is vetted first (wire.CheckJSON): it came from outside.
func DecodeJSON(b []byte) (any, error) {
	dec, err := wire.NewJSONDecoder(b)
	if err != nil {
		return nil, err
	}
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, err
	}
	if dec.More() {
		return nil, errors.New("more than one JSON value")
	}
	return jsonNumbers(v), nil
}

// JSONable makes a value decoded from msgpack encodable as JSON: maps with
// string keys, byte strings as text when they are text.
func JSONable(v any) any { return jsonable(v) }

// ValueToJSON decodes one msgpack value into something encoding/json can
// write (maps with string keys, byte strings as text when they are text).
func ValueToJSON(b []byte) (any, error) {
	var v any
	if err := wire.UnmarshalValue(b, &v); err != nil {
		return nil, err
	}
	return jsonable(v), nil
}

func jsonable(v any) any {
	switch x := v.(type) {
	case []byte:
		if utf8.Valid(x) {
			return string(x)
		}
	case []any:
		for i := range x {
			x[i] = jsonable(x[i])
		}
	case map[string]any:
		for k := range x {
			x[k] = jsonable(x[k])
		}
	case map[any]any:
		m := make(map[string]any, len(x))
		for k, val := range x {
			m[fmt.Sprint(k)] = jsonable(val)
		}
		return m
	}
	return v
}

// literal converts a JSON literal argument to msgpack, keeping integers.
func literal(a json.RawMessage) ([]byte, error) {
	v, err := DecodeJSON(a)
	if err != nil {
		return nil, err
	}
	return wire.MarshalValue(v)
}

func jsonNumbers(v any) any {
	switch x := v.(type) {
	case json.Number:
		if i, err := x.Int64(); err == nil {
			return i
		}
		f, _ := x.Float64()
		return f
	case []any:
		for i := range x {
			x[i] = jsonNumbers(x[i])
		}
	case map[string]any:
		for k := range x {
			x[k] = jsonNumbers(x[k])
		}
	}
	return v
}

// appendArray frames msgpack values as one array.
func appendArray(vals [][]byte) []byte {
	n := 5
	for _, v := range vals {
		n += len(v)
	}
	b := make([]byte, 0, n)
	switch l := len(vals); {
	case l < 16:
		b = append(b, 0x90|byte(l))
	case l <= 0xffff:
		b = append(b, 0xdc, byte(l>>8), byte(l))
	default:
		b = append(b, 0xdd, byte(l>>24), byte(l>>16), byte(l>>8), byte(l))
	}
	for _, v := range vals {
		b = append(b, v...)
	}
	return b
}

// callRaw sends msgpack-encoded args to a deployment's method and returns
// the raw msgpack result; a call for a multiplexed model (model != "") goes
// through RequestModel.
func (c *Client) callRaw(ctx context.Context, deployment, method, model string, payload []byte) (_ []byte, err error) {
	if err := wire.ValidateMethod(method); err != nil {
		return nil, &Error{Deployment: deployment, Method: method, Code: string(wire.CodeUnknownMethod), Message: err.Error()}
	}
	if c.tracer != nil {
		var span trace.Span
		ctx, span = c.startCall(ctx, deployment, method)
		defer func() { endSpan(span, err) }()
	}
	id := RequestID(ctx)
	if id == "" {
		id = NewRequestID()
	}
	md := wire.RequestMeta{Kind: wire.KindCall, RequestID: id, Method: method, ModelID: model}
	if obs := c.opts.CallObserver; obs != nil {
		start := time.Now()
		defer func() {
			code := ""
			if err != nil {
				code = string(wire.CodeInternal)
				var ce *Error
				if errors.As(err, &ce) {
					code = ce.Code
				}
			}
			obs(deployment, method, code, time.Since(start))
		}()
	}
	msg := &nats.Msg{Subject: wire.DeploymentSubject(deployment), Data: payload}
	reply, err := c.Send(ctx, time.Time{}, deployment, &md, msg)
	if err != nil {
		return nil, err
	}
	return reply.Data, nil
}
