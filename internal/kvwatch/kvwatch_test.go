package kvwatch_test

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
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
