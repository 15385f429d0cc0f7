package kvwatch_test

import (
	"context"
	"fmt"
	"net"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/natserve/natserve/broker"
	"github.com/natserve/natserve/internal/auth"
	"github.com/natserve/natserve/internal/kvwatch"
	"github.com/natserve/natserve/internal/testutil"
)

// recorder keeps what a Handler was told.
type recorder struct {
	mu       sync.Mutex
	events   []string
	restarts int
	synced   int
}

func (r *recorder) handler() kvwatch.Handler {
	return kvwatch.Handler{
		Restart: func() { r.mu.Lock(); r.restarts++; r.mu.Unlock() },
		Entry: func(e jetstream.KeyValueEntry) {
			r.mu.Lock()
			defer r.mu.Unlock()
			if e.Operation() == jetstream.KeyValuePut {
				r.events = append(r.events, e.Key()+"="+string(e.Value()))
			} else {
				r.events = append(r.events, e.Key()+" deleted")
			}
		},
		Synced: func() { r.mu.Lock(); r.synced++; r.mu.Unlock() },
	}
}

func (r *recorder) has(want ...string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !slices.Equal(r.events, want) {
		return fmt.Errorf("events %q, want %q", r.events, want)
	}
	return nil
}

func TestWatchFollowsABucketThatAppearsLater(t *testing.T) {
	b := testutil.Broker(t)
	js, err := jetstream.New(testutil.Conn(t, b.ClientURL()))
	if err != nil {
		t.Fatal(err)
	}
	var r recorder
	w := kvwatch.Start(context.Background(), kvwatch.Config{JetStream: js, Bucket: "kvwatch_test", Keys: "n1.*"}, r.handler())
	defer w.Stop()

	// The bucket does not exist yet: the watcher keeps trying.
	ctx := context.Background()
	kv, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "kvwatch_test"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kv.PutString(ctx, "n1.a", "1"); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 10*time.Second, func() error { return r.has("n1.a=1") })
	testutil.Eventually(t, 5*time.Second, func() error {
		r.mu.Lock()
		defer r.mu.Unlock()
		if r.restarts != 1 || r.synced != 1 {
			return fmt.Errorf("restarts %d, synced %d; want 1, 1", r.restarts, r.synced)
		}
		return nil
	})

	// Changes after the initial values; keys outside the pattern are not delivered.
	for _, kvp := range [][2]string{{"n2.x", "9"}, {"n1.b", "2"}, {"n1.a", "3"}} {
		if _, err := kv.PutString(ctx, kvp[0], kvp[1]); err != nil {
			t.Fatal(err)
		}
	}
	if err := kv.Delete(ctx, "n1.b"); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 5*time.Second, func() error { return r.has("n1.a=1", "n1.b=2", "n1.a=3", "n1.b deleted") })

	// Stop returns after the goroutine (and so every callback) has exited.
	w.Stop()
	select {
	case <-w.Done():
	default:
		t.Fatal("Done is open after Stop")
	}
	w.Stop() // idempotent
}

func TestRunReturnsWhenItsContextEnds(t *testing.T) {
	b := testutil.Broker(t)
	js, err := jetstream.New(testutil.Conn(t, b.ClientURL()))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		kvwatch.Run(ctx, kvwatch.Config{JetStream: js, Bucket: "missing"}, kvwatch.Handler{Entry: func(jetstream.KeyValueEntry) {}})
	}()
	cancel()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after its context ended")
	}
}

// TestWatchReestablishedOnReconnect: a broker killed and started again
// keeps no ephemeral consumer, so the watch's consumer is gone; the watch
// is re-established on the reconnect (Restart runs again, with the initial
// values), not only when its heartbeats stop coming ~10 s later, and
// follows the changes made after it.
func TestWatchReestablishedOnReconnect(t *testing.T) {
	authDir := t.TempDir()
	set, err := auth.Open(authDir)
	if err != nil {
		t.Fatal(err)
	}
	cfg := broker.DefaultConfig()
	cfg.Port, cfg.DataDir, cfg.Auth = freePort(t), t.TempDir(), set
	start := func() *broker.Broker {
		b, err := broker.New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		if err := b.Start(context.Background()); err != nil {
			t.Fatal(err)
		}
		return b
	}
	b := start()
	url := b.ClientURL()
	testutil.UseAuth(t, url, authDir)
	nc := testutil.Conn(t, url, nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	kv, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "kvwatch_test", Storage: jetstream.FileStorage})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Put(ctx, "n1.a", []byte("1")); err != nil {
		t.Fatal(err)
	}
	var r recorder
	w := kvwatch.Start(ctx, kvwatch.Config{JetStream: js, Bucket: "kvwatch_test", Keys: "n1.*"}, r.handler())
	defer w.Stop()
	testutil.Eventually(t, 10*time.Second, func() error { return r.has("n1.a=1") })

	_ = b.Shutdown(ctx) // the store stays; the ephemeral consumer does not
	b = start()
	t.Cleanup(func() { _ = b.Shutdown(context.Background()) })
	testutil.Eventually(t, 30*time.Second, func() error {
		r.mu.Lock()
		defer r.mu.Unlock()
		if r.restarts < 2 || r.synced < 2 {
			return fmt.Errorf("%d watches established, %d synced: want the one after the reconnect", r.restarts, r.synced)
		}
		return nil
	})
	testutil.Eventually(t, 30*time.Second, func() error {
		_, err := kv.Put(ctx, "n1.b", []byte("2"))
		return err
	})
	testutil.Eventually(t, 30*time.Second, func() error { return r.has("n1.a=1", "n1.a=1", "n1.b=2") })
}

// freePort returns a loopback port free now.
func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}
