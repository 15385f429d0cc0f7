package worker

import (
	"context"
	"errors"
	"strings"
	"testing"
)

type okClass struct{}

func (okClass) Call(ctx context.Context, x int) (int, error) { return x, nil }

type chanClass struct{}

func (chanClass) Feed(c chan int) {}

type reqClass struct{}

func (reqClass) Call(r *Request, extra int) string { return "" }

type threeResults struct{}

func (threeResults) Call() (int, int, error) { return 0, 0, nil }

type noMethods struct{}

func TestRegistrationErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		reg  func(*Registry)
		want string
	}{
		{"duplicate", func(r *Registry) {
			r.Class("A", func() okClass { return okClass{} })
			r.Class("A", func() okClass { return okClass{} })
		}, `class "A" is registered twice`},
		{"bad name", func(r *Registry) { r.Class("a.b", func() okClass { return okClass{} }) }, "class name \"a.b\""},
		{"not a function", func(r *Registry) { r.Class("A", okClass{}) }, "constructor must be a function"},
		{"constructor without result", func(r *Registry) { r.Class("A", func() {}) }, "must return (T) or (T, error)"},
		{"constructor returns interface", func(r *Registry) { r.Class("A", func() any { return nil }) }, "concrete type"},
		{"chan parameter", func(r *Registry) { r.Class("A", func() chanClass { return chanClass{} }) }, "method Feed: parameter 0: type chan int cannot travel"},
		{"request plus more", func(r *Registry) { r.Class("A", func() reqClass { return reqClass{} }) }, "*worker.Request must be the only argument"},
		{"three results", func(r *Registry) { r.Class("A", func() threeResults { return threeResults{} }) }, "must return nothing, (R), (error) or (R, error)"},
		{"no methods", func(r *Registry) { r.Class("A", func() noMethods { return noMethods{} }) }, "has no exported methods"},
		{"variadic func", func(r *Registry) { r.Func("f", func(xs ...int) {}) }, "variadic"},
		{"func ctor param", func(r *Registry) { r.Class("A", func(f func()) okClass { return okClass{} }) }, "constructor parameter 0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var r Registry
			tc.reg(&r)
			err := r.Err()
			if !errors.Is(err, ErrRegistration) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want %q", err, tc.want)
			}
		})
	}
}

func TestRegistryListsClassesAndMethods(t *testing.T) {
	var r Registry
	r.Class("Ok", func() okClass { return okClass{} })
	r.Func("f", func(x int) int { return x })
	if err := r.Err(); err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(r.Classes(), ","); got != "Ok,f" {
		t.Fatalf("classes %q", got)
	}
	if m, err := r.Methods("f"); err != nil || strings.Join(m, ",") != "Call" {
		t.Fatalf("methods %v %v", m, err)
	}
	if _, err := r.Methods("Nope"); !errors.Is(err, ErrUnknownClass) || !strings.Contains(err.Error(), "Ok, f") {
		t.Fatalf("unknown class: %v", err)
	}
}

type initClass struct {
	path string
	n    int
}

func (c *initClass) Get() string { return c.path }

func TestConstruct(t *testing.T) {
	var r Registry
	r.Class("M", func(ctx context.Context, path string, n int) (*initClass, error) {
		if n < 0 {
			return nil, errors.New("n must not be negative")
		}
		if n == 99 {
			panic("boom")
		}
		return &initClass{path: path, n: n}, nil
	})
	c, err := r.lookup("M")
	if err != nil {
		t.Fatal(err)
	}
	inst, err := c.construct(context.Background(), []byte(`["/model/rep-1.pkl", 3]`))
	if err != nil || inst.recv.Interface().(*initClass).path != "/model/rep-1.pkl" {
		t.Fatalf("construct: %v", err)
	}
	for args, want := range map[string]string{
		`["/m", -1]`:  "n must not be negative",
		`["/m", 99]`:  "panic: boom",
		`["/m"]`:      "takes 2 init args, got 1",
		`{"a":1}`:     "must be a JSON array",
		`["/m", "x"]`: "init arg 1",
		`[1, 2]`:      "init arg 0",
	} {
		if _, err := c.construct(context.Background(), []byte(args)); !errors.Is(err, ErrConstructor) || !strings.Contains(err.Error(), want) {
			t.Errorf("construct(%s): %v, want %q", args, err, want)
		}
	}
}

func TestSnakeCase(t *testing.T) {
	for in, want := range map[string]string{"OtherMethod": "other_method", "Predict": "predict", "HTTPGet": "http_get", "PID": "pid", "Call": "call", "GetV2": "get_v2"} {
		if got := snakeCase(in); got != want {
			t.Errorf("snakeCase(%q) = %q, want %q", in, got, want)
		}
	}
}
