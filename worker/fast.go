package worker

import (
	"context"
	"reflect"
	"runtime/debug"
)

// reqFunc is a method that takes a *Request, called without reflection.
type reqFunc func(context.Context, *Request) (any, error)

// fastOf returns a reqFunc for the common shapes of a bound *Request
// method (reflect.Value.Call costs more than the rest of a small call), or
// nil for other shapes, which go through reflection.
func fastOf(f any) reqFunc {
	switch f := f.(type) {
	case func(*Request) string:
		return func(_ context.Context, r *Request) (any, error) { return f(r), nil }
	case func(*Request) []byte:
		return func(_ context.Context, r *Request) (any, error) { return f(r), nil }
	case func(*Request) *Response:
		return func(_ context.Context, r *Request) (any, error) { return f(r), nil }
	case func(*Request) any:
		return func(_ context.Context, r *Request) (any, error) { return f(r), nil }
	case func(*Request) (string, error):
		return func(_ context.Context, r *Request) (any, error) { return f(r) }
	case func(*Request) ([]byte, error):
		return func(_ context.Context, r *Request) (any, error) { return f(r) }
	case func(*Request) (*Response, error):
		return func(_ context.Context, r *Request) (any, error) { return f(r) }
	case func(*Request) (any, error):
		return func(_ context.Context, r *Request) (any, error) { return f(r) }
	case func(context.Context, *Request) string:
		return func(c context.Context, r *Request) (any, error) { return f(c, r), nil }
	case func(context.Context, *Request) []byte:
		return func(c context.Context, r *Request) (any, error) { return f(c, r), nil }
	case func(context.Context, *Request) *Response:
		return func(c context.Context, r *Request) (any, error) { return f(c, r), nil }
	case func(context.Context, *Request) (string, error):
		return func(c context.Context, r *Request) (any, error) { return f(c, r) }
	case func(context.Context, *Request) ([]byte, error):
		return func(c context.Context, r *Request) (any, error) { return f(c, r) }
	case func(context.Context, *Request) (*Response, error):
		return func(c context.Context, r *Request) (any, error) { return f(c, r) }
	case func(context.Context, *Request) (any, error):
		return f
	}
	return nil
}

// callOf returns a reqFunc for a receiver whose Call method (the default
// method, which HTTP requests reach) takes a *Request, bound by an
// interface assertion: a plain Go method value. A method value made by
// reflect (Value.MethodByName) goes through reflect's call machinery on
// every call (argument frames, an allocation: 6.5% of a replica's CPU in
// issue 18's profile).
func callOf(recv any) reqFunc {
	switch x := recv.(type) {
	case interface{ Call(*Request) string }:
		return func(_ context.Context, r *Request) (any, error) { return x.Call(r), nil }
	case interface{ Call(*Request) []byte }:
		return func(_ context.Context, r *Request) (any, error) { return x.Call(r), nil }
	case interface{ Call(*Request) *Response }:
		return func(_ context.Context, r *Request) (any, error) { return x.Call(r), nil }
	case interface{ Call(*Request) any }:
		return func(_ context.Context, r *Request) (any, error) { return x.Call(r), nil }
	case interface {
		Call(*Request) (string, error)
	}:
		return func(_ context.Context, r *Request) (any, error) { return x.Call(r) }
	case interface {
		Call(*Request) ([]byte, error)
	}:
		return func(_ context.Context, r *Request) (any, error) { return x.Call(r) }
	case interface {
		Call(*Request) (*Response, error)
	}:
		return func(_ context.Context, r *Request) (any, error) { return x.Call(r) }
	case interface{ Call(*Request) (any, error) }:
		return func(_ context.Context, r *Request) (any, error) { return x.Call(r) }
	case interface {
		Call(context.Context, *Request) string
	}:
		return func(c context.Context, r *Request) (any, error) { return x.Call(c, r), nil }
	case interface {
		Call(context.Context, *Request) []byte
	}:
		return func(c context.Context, r *Request) (any, error) { return x.Call(c, r), nil }
	case interface {
		Call(context.Context, *Request) *Response
	}:
		return func(c context.Context, r *Request) (any, error) { return x.Call(c, r), nil }
	case interface {
		Call(context.Context, *Request) (string, error)
	}:
		return func(c context.Context, r *Request) (any, error) { return x.Call(c, r) }
	case interface {
		Call(context.Context, *Request) ([]byte, error)
	}:
		return func(c context.Context, r *Request) (any, error) { return x.Call(c, r) }
	case interface {
		Call(context.Context, *Request) (*Response, error)
	}:
		return func(c context.Context, r *Request) (any, error) { return x.Call(c, r) }
	case interface {
		Call(context.Context, *Request) (any, error)
	}:
		return x.Call
	}
	return nil
}

// bindFast finds the fast form of each *Request method of inst.
func (inst *instance) bindFast() {
	inst.fast = map[*method]reqFunc{}
	for _, m := range inst.cls.methods {
		if !m.takesReq {
			continue
		}
		if m.receiver && m.name == DefaultMethod && inst.recv.CanInterface() {
			if rf := callOf(inst.recv.Interface()); rf != nil {
				inst.fast[m] = rf
				continue
			}
		}
		var f any
		if m.receiver {
			bound := inst.recv.MethodByName(m.name)
			if !bound.IsValid() {
				continue
			}
			f = bound.Interface()
		} else {
			f = m.fn.Interface()
		}
		if rf := fastOf(f); rf != nil {
			inst.fast[m] = rf
		}
	}
}

// invokeReq calls a *Request method; a panic becomes a *PanicError.
func (inst *instance) invokeReq(ctx context.Context, m *method, req *Request) (result any, err error) {
	f := inst.fast[m]
	if f == nil {
		return inst.invoke(ctx, m, []reflect.Value{reflect.ValueOf(req)})
	}
	defer func() {
		if p := recover(); p != nil {
			err = &PanicError{Value: p, Stack: debug.Stack()}
		}
	}()
	return f(ctx, req)
}
