package testutil

import (
	"context"
	"testing"
	"time"

	"github.com/natserve/natserve/broker"
	"go.uber.org/goleak"
)

// LeakCheck snapshots the goroutines running now; the function it returns
// shuts the broker b down (nil: none) and fails the test if a goroutine
// started since is still running. Call it after the component under test
// was closed:
//
//	verify := testutil.LeakCheck(t)
//	b := testutil.Broker(t)
//	… start, use and close the component …
//	verify(b)
//
// opts ignore goroutines that a library starts once per process and that
// are not the component's (say which, and why, where you pass them).
func LeakCheck(t testing.TB) func(b *broker.Broker, opts ...goleak.Option) {
	t.Helper()
	before := goleak.IgnoreCurrent()
	return func(b *broker.Broker, opts ...goleak.Option) {
		t.Helper()
		if b != nil {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			if err := b.Shutdown(ctx); err != nil {
				t.Errorf("broker shutdown: %v", err)
			}
			cancel()
		}
		goleak.VerifyNone(t, append(opts, before)...)
	}
}
