package client_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/natserve/natserve/client"
	"github.com/natserve/natserve/internal/testutil"
)

// TestClientCloseStopsItsGoroutines uses what starts a client's background
// work (the graph and queue-limit watches, a handle call) on a connection
// the caller owns, closes the client and checks that nothing it started
// still runs while the connection stays open.
func TestClientCloseStopsItsGoroutines(t *testing.T) {
	b := testutil.Broker(t)
	nc := testutil.Conn(t, b.ClientURL())
	// nats.go's request mux (one subscription per connection, made by the
	// first request) is the connection's, not the client's: make it first.
	_, _ = nc.Request("nobody.listens", nil, time.Second)
	// After the broker and the connection: checked while both still run.
	verify := testutil.LeakCheck(t)
	c := client.New(nc)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, ok := c.Graph(ctx, "nothing"); ok {
		t.Error("found a graph in an empty broker")
	}
	if _, err := client.Call[int](ctx, c.Handle("nobody")); !errors.Is(err, client.ErrNoReplicas) {
		t.Errorf("call with no replica: %v, want ErrNoReplicas", err)
	}
	c.Close()
	c.Close() // idempotent
	if nc.IsClosed() {
		t.Error("Close closed a connection the caller owns")
	}
	verify(nil)
}

// TestConnectedClientClose does the same for a client that owns its
// connection.
func TestConnectedClientClose(t *testing.T) {
	verify := testutil.LeakCheck(t)
	b := testutil.Broker(t)
	c, err := client.Connect(context.Background(), b.ClientURL(), client.WithCreds(testutil.Creds(t, b.ClientURL(), "admin")))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c.Graph(ctx, "nothing")
	c.Close()
	if !c.Conn().IsClosed() {
		t.Error("Close left the connection it opened open")
	}
	verify(b)
}
