// Package stream is an example streaming deployment: each call yields the
// integers 0 … n-1, one every interval. natserve registers it as the class
// Stream; the quick start serves it at /stream, where
//
//	GET /stream?n=N&interval_ms=M
//
// answers text/event-stream: N events "id: <seq>" / "data: <int>", then
// "event: end" (a failure mid-stream is "event: error" with {"code",
// "message"}). A handle call takes (n, interval_ms) and yields the same
// integers; client.Stream[int](ctx, h, 5, 100).
package stream

import (
	"context"
	"errors"
	"fmt"
	"iter"
	"strconv"
	"time"

	"github.com/natserve/natserve/worker"
)

// Defaults for n and interval_ms.
const (
	DefaultN          = 5
	DefaultIntervalMS = 100
	maxN              = 10_000_000
	maxIntervalMS     = 60_000
)

// Register adds Stream to reg.
func Register(reg *worker.Registry) { reg.Class("Stream", New) }

// Stream counts.
type Stream struct{}

// New takes no arguments.
func New() *Stream { return &Stream{} }

// Call yields 0 … n-1, one every interval_ms. Over HTTP n, interval_ms and
// fail_at come from the query; a handle call passes them as arguments (all
// optional). fail_at=K ends the stream with an error instead of item K (to
// try failures with). The stream stops when the caller goes away.
func (Stream) Call(ctx context.Context, req *worker.Request) (iter.Seq2[int, error], error) {
	n, interval, failAt := DefaultN, DefaultIntervalMS, -1
	if req.IsHTTP() {
		for _, p := range []struct {
			name string
			v    *int
			max  int
		}{{"n", &n, maxN}, {"interval_ms", &interval, maxIntervalMS}, {"fail_at", &failAt, maxN}} {
			if s := req.QueryParam(p.name); s != "" {
				x, err := strconv.Atoi(s)
				if err != nil || x < 0 || x > p.max {
					return nil, fmt.Errorf("%s=%.20q: want an integer from 0 to %d", p.name, s, p.max)
				}
				*p.v = x
			}
		}
	} else {
		for i, p := range []*int{&n, &interval, &failAt} {
			if i < req.NumArgs() {
				if err := req.Arg(i, p); err != nil {
					return nil, err
				}
			}
		}
		if n < 0 || n > maxN || interval < 0 || interval > maxIntervalMS {
			return nil, fmt.Errorf("n %d or interval_ms %d out of range (0 to %d, 0 to %d)", n, interval, maxN, maxIntervalMS)
		}
	}
	d := time.Duration(interval) * time.Millisecond
	return func(yield func(int, error) bool) {
		var t *time.Timer
		for i := 0; i < n; i++ {
			if i > 0 && d > 0 {
				if t == nil {
					t = time.NewTimer(d)
					defer t.Stop()
				} else {
					t.Reset(d)
				}
				select {
				case <-t.C:
				case <-ctx.Done():
					yield(0, ctx.Err())
					return
				}
			}
			if i == failAt {
				yield(0, errors.New("failed at item "+strconv.Itoa(i)+" (fail_at)"))
				return
			}
			if !yield(i, nil) {
				return
			}
		}
	}, nil
}
