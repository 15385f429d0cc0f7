// Package kvwatch follows a JetStream key-value bucket for as long as its
// context lives: it waits for the bucket to exist, delivers the initial
// values and then every change to a Handler, and re-establishes the watch
// with natsconn.Backoff whenever it fails or ends. The controller, the node
// agent, the ingress and the client all follow the control plane's state
// this way.
//
// Entries come in from the bucket's watcher and leave only through the
// Handler's callbacks, which run on the watch's one goroutine, in order.
package kvwatch

import (
	"context"
	"errors"
	"log/slog"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/natserve/natserve/internal/natsconn"
)

var errWatchEnded = errors.New("kvwatch: the watch ended")

// Handler receives a watch's events, all on one goroutine.
type Handler struct {
	// Restart runs each time a watch is established, before its initial
	// values: what was learnt from an earlier watch may be stale. Optional.
	Restart func()
	// Entry runs for each initial value and then each change; a delete or
	// purge has Operation() != jetstream.KeyValuePut. Required.
	Entry func(jetstream.KeyValueEntry)
	// Synced runs after each watch's initial values. Optional.
	Synced func()
	// Failed runs when an attempt fails (the bucket may not exist yet),
	// before the wait for the next. Optional.
	Failed func(error)
}

// Config is one watch.
type Config struct {
	// JetStream opens the bucket. Required.
	JetStream jetstream.JetStream
	// Bucket is the bucket's name (a wire.Bucket* constant). Required.
	Bucket string
	// Keys is the key or key pattern to follow. Default: every key.
	Keys string
	// Retry is the wait between attempts. Default: natsconn.Backoff{}.
	Retry natsconn.Backoff
	// Logger reports failed attempts (at debug level while the bucket does
	// not exist yet). Default: slog.Default().
	Logger *slog.Logger
}

// Run follows the bucket until ctx ends (or the connection is closed for
// good), calling h; it returns after the last callback has returned.
func Run(ctx context.Context, cfg Config, h Handler) {
	if cfg.Keys == "" {
		cfg.Keys = ">"
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	log := cfg.Logger.With("bucket", cfg.Bucket)
	for ctx.Err() == nil && !cfg.JetStream.Conn().IsClosed() {
		if once(ctx, cfg, h, log) {
			cfg.Retry.Reset()
		}
		if !cfg.Retry.Wait(ctx) {
			return
		}
	}
}

// once runs one watch until it fails or ctx ends and reports whether it got
// as far as the initial values.
func once(ctx context.Context, cfg Config, h Handler, log *slog.Logger) (synced bool) {
	failed := func(err error) {
		if h.Failed != nil {
			h.Failed(err)
		}
	}
	kv, err := cfg.JetStream.KeyValue(ctx, cfg.Bucket)
	if err != nil {
		if ctx.Err() == nil {
			log.Debug("opening the bucket to watch failed; retrying", "err", err)
			failed(err)
		}
		return false
	}
	w, err := kv.Watch(ctx, cfg.Keys)
	if err != nil {
		if ctx.Err() == nil {
			log.Warn("watch failed; retrying", "err", err)
			failed(err)
		}
		return false
	}
	defer func() { _ = w.Stop() }()
	if h.Restart != nil {
		h.Restart()
	}
	for {
		select {
		case <-ctx.Done():
			return synced
		case e, ok := <-w.Updates():
			if !ok {
				if ctx.Err() == nil {
					log.Warn("watch ended; re-establishing")
					failed(errWatchEnded)
				}
				return synced
			}
			if e == nil {
				synced = true
				if h.Synced != nil {
					h.Synced()
				}
				continue
			}
			h.Entry(e)
		}
	}
}

// Watcher is a watch running on a goroutine it owns.
type Watcher struct {
	cancel context.CancelFunc
	done   chan struct{}
}

// Start runs Run(ctx, cfg, h) on a new goroutine until ctx ends or Stop.
func Start(ctx context.Context, cfg Config, h Handler) *Watcher {
	ctx, cancel := context.WithCancel(ctx)
	w := &Watcher{cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(w.done)
		Run(ctx, cfg, h)
	}()
	return w
}

// Stop ends the watch and returns after its goroutine has exited (and so
// after the last callback). Idempotent; safe on a nil Watcher.
func (w *Watcher) Stop() {
	if w == nil {
		return
	}
	w.cancel()
	<-w.done
}

// Done is closed when the watch's goroutine has exited.
func (w *Watcher) Done() <-chan struct{} { return w.done }
