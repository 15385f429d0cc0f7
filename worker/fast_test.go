package worker

import (
	"context"
	"reflect"
	"testing"
)

type fastHello struct{ payload []byte }

func (h *fastHello) Call(*Request) []byte { return h.payload }

// A class's Call(*Request) is bound by an interface assertion (callOf), and
// gives what the reflect-bound method value gives.
func TestCallOfBindsCall(t *testing.T) {
	h := &fastHello{payload: []byte("hello")}
	viaReflect := fastOf(reflect.ValueOf(h).MethodByName("Call").Interface())
	viaIface := callOf(h)
	if viaReflect == nil || viaIface == nil {
		t.Fatalf("fastOf %v, callOf %v: want both", viaReflect != nil, viaIface != nil)
	}
	a, _ := viaReflect(context.Background(), &Request{})
	b, _ := viaIface(context.Background(), &Request{})
	if string(a.([]byte)) != "hello" || string(b.([]byte)) != "hello" {
		t.Fatalf("got %q and %q", a, b)
	}
	if callOf(struct{}{}) != nil {
		t.Fatal("callOf bound a receiver without Call")
	}
}

// BenchmarkInvokeCall: calling the default method through a method value
// made by reflect (the baseline: what bindFast did before issue 18) and
// through callOf's interface-bound method value.
func BenchmarkInvokeCall(b *testing.B) {
	h := &fastHello{payload: []byte("hello")}
	req := &Request{}
	ctx := context.Background()
	for _, bc := range []struct {
		name string
		f    reqFunc
	}{
		{"reflect-method-value", fastOf(reflect.ValueOf(h).MethodByName("Call").Interface())},
		{"interface", callOf(h)},
	} {
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			for i := 0; i < b.N; i++ {
				_, _ = bc.f(ctx, req)
			}
		})
	}
}
