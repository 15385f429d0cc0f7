// Package hello is the smallest deployment: it answers every call with a
// payload of a chosen size. natserve registers it as the class Hello; the
// benchmarks serve it.
package hello

import (
	"bytes"
	"strconv"

	"github.com/natserve/natserve/worker"
)

// Register adds Hello to reg.
func Register(reg *worker.Registry) { reg.Class("Hello", New) }

// Hello answers with a payload.
type Hello struct{ payloads map[int][]byte }

// New takes no arguments.
func New() *Hello { return &Hello{payloads: map[int][]byte{}} }

// Call answers HTTP requests with ?size=N bytes (default "hello"), and handle
// calls with a first argument N with N bytes.
func (h *Hello) Call(req *worker.Request) []byte {
	n := -1
	if req.IsHTTP() {
		if s := req.QueryParam("size"); s != "" {
			n, _ = strconv.Atoi(s)
		}
	} else if req.NumArgs() > 0 {
		_ = req.Arg(0, &n)
	}
	return Payload(n)
}

var (
	hello = []byte("hello")
	cache = map[int][]byte{20: bytes.Repeat([]byte("x"), 20), 10240: bytes.Repeat([]byte("x"), 10240)}
)

// Payload returns n bytes of 'x' ("hello" for n < 0); sizes above 1 MiB are cut.
func Payload(n int) []byte {
	if n < 0 {
		return hello
	}
	if b, ok := cache[n]; ok {
		return b
	}
	return bytes.Repeat([]byte("x"), min(n, 1<<20))
}
