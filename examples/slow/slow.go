// Package slow is an example deployment to try timeouts, queueing and
// failures with: each call sleeps for a chosen time, then answers with its
// pid. natserve registers it as the class Slow; the quick start serves it
// at /slow.
package slow

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"strconv"
	"time"

	"github.com/natserve/natserve/worker"
)

// DefaultMS is how long a call sleeps when it names no time.
const DefaultMS = 1000

// Register adds Slow to reg.
func Register(reg *worker.Registry) { reg.Class("Slow", New) }

// Slow sleeps.
type Slow struct{}

// New takes no arguments.
func New() *Slow { return &Slow{} }

// Call sleeps ?ms=N milliseconds over HTTP, or N (the first argument) for a
// handle call; DefaultMS without one. The sleep ends early at the request's
// deadline or when the caller cancels. It answers "slept N ms (pid P)"; a bad
// N is a 400 over HTTP and an error for a handle.
func (Slow) Call(ctx context.Context, req *worker.Request) (any, error) {
	ms := DefaultMS
	if req.IsHTTP() {
		if s := req.QueryParam("ms"); s != "" {
			n, err := parseMS(s)
			if err != nil {
				return worker.Text(http.StatusBadRequest, err.Error()+"\n"), nil
			}
			ms = n
		}
	} else if req.NumArgs() > 0 {
		var n int64
		if err := req.Arg(0, &n); err != nil {
			return nil, fmt.Errorf("want the number of milliseconds to sleep: %w", err)
		}
		if n < 0 || n > maxMS {
			return nil, fmt.Errorf("ms %d is out of range (0 to %d)", n, maxMS)
		}
		ms = int(n)
	}
	// No capping the sleep at the deadline: a sleep cut short is the
	// deadline's error, never a success.
	start := time.Now()
	t := time.NewTimer(time.Duration(ms) * time.Millisecond)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	return fmt.Sprintf("slept %d ms (pid %d)", time.Since(start).Milliseconds(), os.Getpid()), nil
}

// maxMS bounds a sleep: a day.
const maxMS = 24 * 60 * 60 * 1000

func parseMS(s string) (int, error) {
	n, err := strconv.Atoi(s)
	if err != nil || n < 0 || n > maxMS {
		return 0, fmt.Errorf("ms=%q: want a whole number of milliseconds from 0 to %d", s, maxMS)
	}
	return n, nil
}
