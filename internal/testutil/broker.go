// Package testutil starts the real parts natserve's tests run against: an
// embedded NATS server with JetStream on a random port in a temp dir, and
// helpers to poll for a condition with a deadline instead of sleeping.
package testutil

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/natserve/natserve/broker"
)

// Broker starts an embedded broker on a random loopback port with its data in
// t.TempDir(), and stops it when the test ends.
func Broker(t testing.TB) *broker.Broker {
	t.Helper()
	cfg := broker.DefaultConfig()
	cfg.Port = -1
	cfg.DataDir = t.TempDir()
	b, err := broker.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Shutdown(context.Background()) })
	return b
}

// Conn connects to url with opts and closes the connection when the test ends.
func Conn(t testing.TB, url string, opts ...nats.Option) *nats.Conn {
	t.Helper()
	nc, err := nats.Connect(url, append([]nats.Option{nats.Name(t.Name())}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// Eventually polls cond every 20ms until it returns nil or timeout passes,
// then fails the test with cond's last error.
func Eventually(t testing.TB, timeout time.Duration, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("not true after %v: %v", timeout, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
