package worker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"runtime/debug"
	"sort"
	"strings"
	"sync"

	"github.com/natserve/natserve/internal/wire"
)

// Registry holds the deployment classes a program provides. The zero value
// is ready to use. Registration errors are collected and reported by Err and
// by Main before anything starts, so a bad class fails the program at start,
// not at its first request.
type Registry struct {
	mu      sync.Mutex // guards classes and errs
	classes map[string]*class
	errs    []error
}

// DefaultMethod is the method HTTP requests and handle calls without a
// method name go to: the seed's __call__.
const DefaultMethod = "Call"

// Lifecycle hooks a class may define; they are not callable through handles.
const (
	ReconfigureMethod = "Reconfigure" // Reconfigure(ctx, cfg T) error: user_config updates, Ray's reconfigure
	HealthMethod      = "CheckHealth" // CheckHealth(ctx) error: Ray's check_health
	CloseMethod       = "Close"       // Close() error: runs when the replica stops
)

// Class registers a deployment class. constructor is a function that takes
// the init args (optionally preceded by a context.Context) and returns the
// instance, optionally with an error:
//
//	func NewModel(path string) (*Model, error)
//
// Every exported method of the instance is callable through handles. A
// method takes an optional context.Context and then any arguments msgpack can
// carry, and returns nothing, a result, an error, or a result and an error.
// The method Call is the default entry point for HTTP and handles; when it
// takes a single *Request it receives HTTP requests as such.
//
// Options make methods batched (Batched) or the class multiplexed
// (Multiplexed).
func (r *Registry) Class(name string, constructor any, opts ...ClassOption) {
	c, err := newClass(name, constructor, opts)
	r.add(name, c, err)
}

// Func registers a plain function as a deployment (the seed's "function for
// simple use cases"): its only method is Call, and it takes no init args.
// Batched(DefaultMethod, …) makes it a batched function.
func (r *Registry) Func(name string, fn any, opts ...ClassOption) {
	c, err := newFuncClass(name, fn, opts)
	r.add(name, c, err)
}

func (r *Registry) add(name string, c *class, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if err == nil {
		if _, dup := r.classes[name]; dup {
			err = fmt.Errorf("%w: class %q is registered twice", ErrRegistration, name)
		}
	}
	if err != nil {
		r.errs = append(r.errs, err)
		return
	}
	if r.classes == nil {
		r.classes = map[string]*class{}
	}
	r.classes[name] = c
}

// Err returns every registration error, joined, or nil.
func (r *Registry) Err() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return errors.Join(r.errs...)
}

// Classes returns the names of the registered classes, sorted.
func (r *Registry) Classes() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	names := make([]string, 0, len(r.classes))
	for n := range r.classes {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// Methods returns the handle-callable methods of a class, sorted, with
// their snake_case aliases.
func (r *Registry) Methods(className string) ([]string, error) {
	c, err := r.lookup(className)
	if err != nil {
		return nil, err
	}
	var names []string
	for n := range c.methods {
		if !hook(n) {
			names = append(names, n)
		}
	}
	sort.Strings(names)
	return names, nil
}

func (r *Registry) lookup(name string) (*class, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	c, ok := r.classes[name]
	if !ok {
		known := make([]string, 0, len(r.classes))
		for n := range r.classes {
			known = append(known, n)
		}
		sort.Strings(known)
		return nil, fmt.Errorf("%w %q (this program provides: %s)", ErrUnknownClass, name, strings.Join(known, ", "))
	}
	return c, nil
}

// snakeCase turns OtherMethod into other_method and HTTPGet into http_get.
func snakeCase(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 'A' && c <= 'Z' {
			prevLower := i > 0 && (s[i-1] >= 'a' && s[i-1] <= 'z' || s[i-1] >= '0' && s[i-1] <= '9')
			nextLower := i+1 < len(s) && s[i+1] >= 'a' && s[i+1] <= 'z'
			if i > 0 && (prevLower || nextLower && s[i-1] >= 'A' && s[i-1] <= 'Z') {
				b.WriteByte('_')
			}
			c += 'a' - 'A'
		}
		b.WriteByte(c)
	}
	return b.String()
}

func hook(name string) bool {
	return name == ReconfigureMethod || name == HealthMethod || name == CloseMethod
}

var (
	ctxType     = reflect.TypeFor[context.Context]()
	errType     = reflect.TypeFor[error]()
	requestType = reflect.TypeFor[*Request]()
)

type class struct {
	name     string
	ctor     reflect.Value // invalid for a function deployment
	ctorCtx  bool
	ctorIn   []reflect.Type
	function reflect.Value // the function of a function deployment
	methods  map[string]*method
	mux      *muxSpec // model multiplexing; nil for none
}

type method struct {
	name       string
	fn         reflect.Value // method expression (receiver first) or plain function
	receiver   bool
	takesCtx   bool
	in         []reflect.Type
	takesReq   bool // sole argument is *Request
	hasResult  bool
	hasErr     bool
	resultType reflect.Type
	batch      *batchSpec   // set for a batched method
	stream     reflect.Type // the item type of a streaming method (iter.Seq or iter.Seq2 result); nil for others
	stream2    bool         // the result is iter.Seq2[T, error]
}

func newClass(name string, ctor any, opts []ClassOption) (*class, error) {
	if err := wire.ValidateName("class name", name); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrRegistration, err)
	}
	v := reflect.ValueOf(ctor)
	if !v.IsValid() || v.Kind() != reflect.Func || v.IsNil() {
		return nil, fmt.Errorf("%w: class %q: constructor must be a function, got %T", ErrRegistration, name, ctor)
	}
	t := v.Type()
	c := &class{name: name, ctor: v, methods: map[string]*method{}}
	if t.IsVariadic() {
		return nil, fmt.Errorf("%w: class %q: variadic constructors are not supported", ErrRegistration, name)
	}
	for i := 0; i < t.NumIn(); i++ {
		p := t.In(i)
		if i == 0 && p == ctxType {
			c.ctorCtx = true
			continue
		}
		if err := wireable(p); err != nil {
			return nil, fmt.Errorf("%w: class %q: constructor parameter %d: %v", ErrRegistration, name, i, err)
		}
		c.ctorIn = append(c.ctorIn, p)
	}
	switch {
	case t.NumOut() == 1 && t.Out(0) != errType:
	case t.NumOut() == 2 && t.Out(1) == errType:
	default:
		return nil, fmt.Errorf("%w: class %q: constructor must return (T) or (T, error), not %v", ErrRegistration, name, t)
	}
	it := t.Out(0)
	if it.Kind() == reflect.Interface {
		return nil, fmt.Errorf("%w: class %q: constructor must return a concrete type, not the interface %v", ErrRegistration, name, it)
	}
	co, err := buildOptions(opts)
	if err != nil {
		return nil, fmt.Errorf("%w: class %q: %v", ErrRegistration, name, err)
	}
	for i := 0; i < it.NumMethod(); i++ {
		m := it.Method(i)
		var mm *method
		var err error
		if bo, ok := co.batched[m.Name]; ok {
			mm, err = newBatchMethod(m.Name, m.Func, true, bo)
			delete(co.batched, m.Name)
		} else {
			mm, err = newMethod(m.Name, m.Func, true)
		}
		if err != nil {
			return nil, fmt.Errorf("%w: class %q: %v (unexport it if handles need not call it)", ErrRegistration, name, err)
		}
		c.methods[m.Name] = mm
	}
	// Ray Serve users call methods by their Python names: other_method for
	// OtherMethod. Add each snake_case name that does not clash.
	for name, mm := range c.methods {
		if alias := snakeCase(name); alias != name && !hook(name) {
			if _, taken := c.methods[alias]; !taken {
				c.methods[alias] = mm
			}
		}
	}
	if err := co.check(c); err != nil {
		return nil, fmt.Errorf("%w: class %q: %v", ErrRegistration, name, err)
	}
	if len(c.methods) == 0 {
		return nil, fmt.Errorf("%w: class %q: %v has no exported methods to call", ErrRegistration, name, it)
	}
	return c, nil
}

func newFuncClass(name string, fn any, opts []ClassOption) (*class, error) {
	if err := wire.ValidateName("function name", name); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrRegistration, err)
	}
	v := reflect.ValueOf(fn)
	if !v.IsValid() || v.Kind() != reflect.Func || v.IsNil() {
		return nil, fmt.Errorf("%w: function %q: want a function, got %T", ErrRegistration, name, fn)
	}
	co, err := buildOptions(opts)
	if err != nil {
		return nil, fmt.Errorf("%w: function %q: %v", ErrRegistration, name, err)
	}
	if co.mux != nil {
		return nil, fmt.Errorf("%w: function %q: only a class can be multiplexed (its loader is a method)", ErrRegistration, name)
	}
	var m *method
	if bo, ok := co.batched[DefaultMethod]; ok {
		m, err = newBatchMethod(DefaultMethod, v, false, bo)
		delete(co.batched, DefaultMethod)
	} else {
		m, err = newMethod(DefaultMethod, v, false)
	}
	if err != nil {
		return nil, fmt.Errorf("%w: function %q: %v", ErrRegistration, name, err)
	}
	c := &class{name: name, function: v, methods: map[string]*method{DefaultMethod: m}}
	if err := co.check(c); err != nil {
		return nil, fmt.Errorf("%w: function %q: %v", ErrRegistration, name, err)
	}
	return c, nil
}

func newMethod(name string, fn reflect.Value, receiver bool) (*method, error) {
	t := fn.Type()
	if t.IsVariadic() {
		return nil, fmt.Errorf("method %s: variadic methods are not supported", name)
	}
	m := &method{name: name, fn: fn, receiver: receiver}
	first := 0
	if receiver {
		first = 1
	}
	for i := first; i < t.NumIn(); i++ {
		p := t.In(i)
		if i == first && p == ctxType {
			m.takesCtx = true
			continue
		}
		if p == requestType {
			m.takesReq = true
		} else if err := wireable(p); err != nil {
			return nil, fmt.Errorf("method %s: parameter %d: %v", name, i-first, err)
		}
		m.in = append(m.in, p)
	}
	if m.takesReq && len(m.in) != 1 {
		return nil, fmt.Errorf("method %s: a *worker.Request must be the only argument (after the context)", name)
	}
	switch {
	case t.NumOut() == 0:
	case t.NumOut() == 1 && t.Out(0) == errType:
		m.hasErr = true
	case t.NumOut() == 1:
		m.hasResult, m.resultType = true, t.Out(0)
	case t.NumOut() == 2 && t.Out(1) == errType:
		m.hasResult, m.hasErr, m.resultType = true, true, t.Out(0)
	default:
		return nil, fmt.Errorf("method %s: must return nothing, (R), (error) or (R, error), not %v", name, t)
	}
	if elem, two, ok := streamShape(m.resultType); m.hasResult && ok {
		if err := wireable(elem); err != nil {
			return nil, fmt.Errorf("method %s: stream item: %v", name, err)
		}
		m.stream, m.stream2 = elem, two
	} else if m.hasResult {
		if err := wireable(m.resultType); err != nil {
			return nil, fmt.Errorf("method %s: result: %v", name, err)
		}
	}
	return m, nil
}

// wireable refuses types that cannot travel as msgpack or JSON.
func wireable(t reflect.Type) error {
	seen := map[reflect.Type]bool{}
	var walk func(reflect.Type) error
	walk = func(t reflect.Type) error {
		if seen[t] {
			return nil
		}
		seen[t] = true
		switch t.Kind() {
		case reflect.Chan, reflect.Func, reflect.UnsafePointer, reflect.Complex64, reflect.Complex128:
			return fmt.Errorf("type %v cannot travel over the wire", t)
		case reflect.Interface:
			if t.NumMethod() > 0 && t != errType {
				return fmt.Errorf("interface type %v cannot be decoded (use a concrete type or any)", t)
			}
		case reflect.Pointer, reflect.Slice, reflect.Array:
			if t == requestType {
				return nil
			}
			return walk(t.Elem())
		case reflect.Map:
			if err := walk(t.Key()); err != nil {
				return err
			}
			return walk(t.Elem())
		}
		return nil
	}
	return walk(t)
}

// construct builds an instance from JSON init args.
func (c *class) construct(ctx context.Context, initArgs json.RawMessage) (inst *instance, err error) {
	var raw []json.RawMessage
	if len(initArgs) > 0 && string(initArgs) != "null" {
		if err := json.Unmarshal(initArgs, &raw); err != nil {
			return nil, fmt.Errorf("%w: class %s: init args must be a JSON array: %v", ErrConstructor, c.name, err)
		}
	}
	if !c.ctor.IsValid() { // a function deployment
		if len(raw) > 0 {
			return nil, fmt.Errorf("%w: function %s takes no init args, got %d", ErrConstructor, c.name, len(raw))
		}
		inst := &instance{cls: c}
		inst.bindFast()
		return inst, nil
	}
	if len(raw) != len(c.ctorIn) {
		return nil, fmt.Errorf("%w: class %s: constructor takes %d init args, got %d", ErrConstructor, c.name, len(c.ctorIn), len(raw))
	}
	in := make([]reflect.Value, 0, len(raw)+1)
	if c.ctorCtx {
		in = append(in, reflect.ValueOf(ctx))
	}
	for i, r := range raw {
		p := reflect.New(c.ctorIn[i])
		if err := json.Unmarshal(r, p.Interface()); err != nil {
			return nil, fmt.Errorf("%w: class %s: init arg %d: %v", ErrConstructor, c.name, i, err)
		}
		in = append(in, p.Elem())
	}
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("%w: class %s: panic: %v", ErrConstructor, c.name, p)
		}
	}()
	out := c.ctor.Call(in)
	if len(out) == 2 && !out[1].IsNil() {
		return nil, fmt.Errorf("%w: class %s: %w", ErrConstructor, c.name, out[1].Interface().(error))
	}
	inst = &instance{cls: c, recv: out[0]}
	inst.bindFast()
	return inst, nil
}

// instance is a constructed class.
type instance struct {
	cls  *class
	recv reflect.Value // invalid for a function deployment
	fast map[*method]reqFunc
}

// PanicError is the error a method's panic becomes.
type PanicError struct {
	Value any
	Stack []byte
}

func (e *PanicError) Error() string { return fmt.Sprintf("panic: %v", e.Value) }

// invoke calls m with decoded args; a panic becomes a *PanicError.
func (inst *instance) invoke(ctx context.Context, m *method, args []reflect.Value) (result any, err error) {
	in := make([]reflect.Value, 0, len(args)+2)
	if m.receiver {
		in = append(in, inst.recv)
	}
	if m.takesCtx {
		in = append(in, reflect.ValueOf(ctx))
	}
	in = append(in, args...)
	defer func() {
		if p := recover(); p != nil {
			err = &PanicError{Value: p, Stack: debug.Stack()}
		}
	}()
	out := m.fn.Call(in)
	if m.hasErr {
		if e := out[len(out)-1]; !e.IsNil() {
			return nil, e.Interface().(error)
		}
	}
	if m.hasResult {
		return out[0].Interface(), nil
	}
	return nil, nil
}
