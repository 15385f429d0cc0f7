// Package natsconn is how natserve's long-lived processes (controller, node
// agent, ingress, client) connect to NATS and retry what fails: the shared
// connect options, the TLS files of a client connection (TLS), and the one
// retry policy, Backoff.
//
// Data passes through it only on a Coalescing connection (a replica's, an
// ingress's), which batches nats.go's writes; the rest builds nats.Options
// and waits.
package natsconn

import (
	"context"
	"time"

	"github.com/nats-io/nats.go"
)

// ReconnectWait is the pause between reconnect attempts to the broker.
const ReconnectWait = 250 * time.Millisecond

// Options returns the connect options every natserve process uses: the
// connection name (seen in the broker's monitoring), reconnecting forever
// every ReconnectWait, then extra, which the caller's Config passes through
// (credentials, TLS, a custom dialer) and which win over the defaults.
func Options(name string, extra ...nats.Option) []nats.Option {
	return append([]nats.Option{
		nats.Name(name),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(ReconnectWait),
	}, extra...)
}

// Backoff is natserve's one retry policy: the first wait is Min, each
// failure doubles it up to Max. The zero value waits 100ms doubling to 2s.
// A Backoff is used by one goroutine.
type Backoff struct {
	Min, Max time.Duration // Default: 100ms, 2s
	next     time.Duration
}

// Reset makes the next wait Min again (call it after a success).
func (b *Backoff) Reset() { b.next = 0 }

// Wait sleeps for the next delay and reports whether ctx is still live.
func (b *Backoff) Wait(ctx context.Context) bool {
	if b.Min == 0 {
		b.Min = 100 * time.Millisecond
	}
	if b.Max == 0 {
		b.Max = 2 * time.Second
	}
	if b.next == 0 {
		b.next = b.Min
	}
	t := time.NewTimer(b.next)
	defer t.Stop()
	b.next = min(2*b.next, b.Max)
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
