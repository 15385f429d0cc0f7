package client

import (
	"context"
	"errors"
	"fmt"

	"github.com/natserve/natserve/internal/wire"
)

// Handle calls one method of one deployment. Handles are cheap values and
// safe for concurrent use.
type Handle struct {
	c          *Client
	deployment string
	method     string
	subject    string
	model      string // multiplexed model id; "" for none
}

// Deployment returns the name of the deployment the handle calls.
func (h *Handle) Deployment() string { return h.deployment }

// Method returns a handle to the named method of the same deployment (the
// seed's handle.other_method.remote); "" is the default method, Call.
func (h *Handle) Method(name string) *Handle {
	h2 := *h
	h2.method = name
	return &h2
}

// Call calls the method with args and decodes the result into out (a
// pointer, or nil to discard it).
func (h *Handle) Call(ctx context.Context, out any, args ...any) error {
	data, own, err := h.call(ctx, args)
	if err != nil {
		return err
	}
	// A []byte result of a deployment's reply is the reply message's own
	// bytes, which nothing else holds: out shares them, one copy (and one
	// allocation of the result's size) less.
	if p, ok := out.(*[]byte); ok && own {
		if v, ok := wire.BytesValue(data); ok {
			*p = v
			return nil
		}
	}
	return h.decode(data, out)
}

func (h *Handle) decode(data []byte, out any) error {
	if out == nil || len(data) == 0 {
		return nil
	}
	if err := wire.UnmarshalValue(data, out); err != nil {
		return &Error{Deployment: h.deployment, Method: h.method, Code: string(wire.CodeBadRequest), Message: fmt.Sprintf("decoding the result into %T: %v", out, err)}
	}
	return nil
}

// call makes the call; own says that the result is a deployment's reply
// payload, held by nothing else (a graph's output may be).
func (h *Handle) call(ctx context.Context, args []any) (_ []byte, own bool, _ error) {
	if g := h.c.cachedGraph(h.deployment); g != nil && h.method == "" {
		out, err := h.callGraph(ctx, g, args)
		return out, false, err
	}
	payload, err := wire.MarshalArgs(args)
	if err != nil {
		return nil, false, &Error{Deployment: h.deployment, Method: h.method, Code: string(wire.CodeBadRequest), Message: "encoding the arguments: " + err.Error()}
	}
	out, err := h.c.callRaw(ctx, h.deployment, h.method, h.model, payload)
	if errors.Is(err, ErrNoReplicas) && h.method == "" {
		// Perhaps a graph: its name has no replicas of its own.
		if g, ok := h.c.Graph(ctx, h.deployment); ok {
			out, err := h.callGraph(ctx, g, args)
			return out, false, err
		}
	}
	return out, true, err
}

// callGraph runs a graph with the call's arguments as its input: one
// argument is the input itself, several are an array.
func (h *Handle) callGraph(ctx context.Context, g *GraphSpec, args []any) ([]byte, error) {
	var in any = args
	if len(args) == 1 {
		in = args[0]
	}
	input, err := wire.MarshalValue(in)
	if err != nil {
		return nil, &Error{Deployment: h.deployment, Code: string(wire.CodeBadRequest), Message: "encoding the input: " + err.Error()}
	}
	return h.c.RunGraph(ctx, g, input)
}

// Remote starts the call and returns at once; the result is awaited with
// Response.Result (the seed's handle.remote(...) and ray.get).
func (h *Handle) Remote(ctx context.Context, args ...any) *Response {
	r := &Response{h: h, done: make(chan struct{})}
	go func() {
		defer close(r.done)
		r.data, _, r.err = h.call(ctx, args)
	}()
	return r
}

// Response is the pending result of Handle.Remote.
type Response struct {
	h    *Handle
	done chan struct{}
	data []byte // set before done is closed
	err  error  // set before done is closed
}

// Done is closed when the result is in.
func (r *Response) Done() <-chan struct{} { return r.done }

// Result waits for the call and decodes its result into out.
func (r *Response) Result(out any) error {
	<-r.done
	if r.err != nil {
		return r.err
	}
	return r.h.decode(r.data, out)
}

// Call calls h with args and returns the result as a T.
func Call[T any](ctx context.Context, h *Handle, args ...any) (T, error) {
	var out T
	err := h.Call(ctx, &out, args...)
	return out, err
}

// Await waits for r and returns its result as a T.
func Await[T any](r *Response) (T, error) {
	var out T
	err := r.Result(&out)
	return out, err
}
