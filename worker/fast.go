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

// bindFast finds the fast form of each *Request method of inst.
func (inst *instance) bindFast() {
	inst.fast = map[*method]reqFunc{}
	for _, m := range inst.cls.methods {
		if !m.takesReq {
			continue
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
