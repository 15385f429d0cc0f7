package controlplane_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/natserve/natserve/client"
	"github.com/natserve/natserve/controlplane"
	"github.com/natserve/natserve/internal/store"
	"github.com/natserve/natserve/internal/testutil"
	"github.com/natserve/natserve/internal/wire"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// runController runs an in-process controller until the returned stop is
// called; stop waits for Run to return and fails the test on its error.
func runController(t *testing.T, cfg controlplane.Config) (*controlplane.Controller, func()) {
	t.Helper()
	if cfg.NATSOptions == nil {
		cfg.NATSOptions = testutil.CredsOptions(t, cfg.NATSURL, "controller")
	}
	if set := testutil.Auth(cfg.NATSURL); set != nil && cfg.Signer == nil {
		cfg.Signer = set.Signer() // replicas get their deployment's identity
	}
	c, err := controlplane.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	return c, func() {
		t.Helper()
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("controller run: %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Fatal("controller did not stop within 30s of its context ending")
		}
	}
}

// TestControllerLeadsAgainAfterLosingLease overwrites the lease with another
// holder while the controller leads: it must step down and, once the
// stranger's lease expires, lead again and answer the API.
func TestControllerLeadsAgainAfterLosingLease(t *testing.T) {
	verify := testutil.LeakCheck(t)
	b := testutil.Broker(t)
	const ttl = 2 * time.Second
	c, stop := runController(t, controlplane.Config{NATSURL: b.ClientURL(), LeaseTTL: ttl, Logger: quiet})
	nc := testutil.Conn(t, b.ClientURL())
	cl := client.New(nc)
	testutil.Eventually(t, 30*time.Second, func() error {
		if !c.Leading() {
			return errors.New("not leading yet")
		}
		return nil
	})

	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	kv, err := js.KeyValue(context.Background(), wire.BucketLeader)
	if err != nil {
		t.Fatal(err)
	}
	lease, _ := json.Marshal(store.Lease{Holder: "someone-else", Renewed: time.Now()})
	if _, err := kv.Put(context.Background(), wire.LeaderKey, lease); err != nil {
		t.Fatal(err)
	}
	taken := time.Now()
	testutil.Eventually(t, 10*time.Second, func() error {
		if c.Leading() {
			return errors.New("still leading with another holder's lease")
		}
		return nil
	})
	// Back within 2 × TTL (the stranger's lease expires after one TTL);
	// the deadline is looser, for a loaded machine, and the time printed.
	testutil.Eventually(t, 5*ttl, func() error {
		if !c.Leading() {
			return errors.New("not leading again")
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_, err := cl.List(ctx)
		return err
	})
	back := time.Since(taken)
	t.Logf("leading and answering again %v after the lease was taken (TTL %v)", back.Round(time.Millisecond), ttl)
	if back > 2*ttl {
		t.Logf("note: more than 2 × TTL (%v): a loaded machine", 2*ttl)
	}
	stop()
	nc.Close()
	verify(b)
}

// TestControllerStopsItsGoroutines starts a controller, uses its API,
// stops it and checks that nothing it started still runs.
func TestControllerStopsItsGoroutines(t *testing.T) {
	verify := testutil.LeakCheck(t)
	b := testutil.Broker(t)
	c, stop := runController(t, controlplane.Config{NATSURL: b.ClientURL(), LeaseTTL: 2 * time.Second, Logger: quiet})
	nc := testutil.Conn(t, b.ClientURL())
	cl := client.New(nc)
	testutil.Eventually(t, 30*time.Second, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		st, err := cl.Status(ctx)
		if err != nil {
			return err
		}
		if st.Leader != c.ID() {
			return errors.New("leader is " + st.Leader)
		}
		return nil
	})
	if _, err := cl.Deploy(context.Background(), client.DeploymentSpec{Name: "x", Class: "Nobody"}); !errors.Is(err, client.ErrUnknownClass) {
		t.Errorf("deploy of a class no node has: %v, want ErrUnknownClass", err)
	}
	stop()
	cl.Close()
	nc.Close()
	verify(b)
}
