// Package testutil starts the real parts natserve's tests run against: an
// embedded NATS server with JetStream on a random port in a temp dir, and
// helpers to poll for a condition with a deadline instead of sleeping.
package testutil

import (
	"context"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/natserve/natserve/broker"
	"github.com/natserve/natserve/client"
	"github.com/natserve/natserve/internal/auth"
)

// NoAuthEnv, when set, makes Broker run without authentication (for
// benchmarks comparing auth on and off); tests then connect anonymously.
const NoAuthEnv = "NATSERVE_TEST_NO_AUTH"

var (
	authMu sync.Mutex
	auths  = map[string]*auth.Set{} // client URL → the credentials its broker trusts
)

// Broker starts an embedded broker on a random loopback port with its data in
// t.TempDir(), in operator mode (credentials in t.TempDir()), and stops it
// when the test ends. Conn, Creds and ReplicaCreds find its credentials by
// its URL.
func Broker(t testing.TB) *broker.Broker {
	t.Helper()
	set, err := auth.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	cfg := broker.DefaultConfig()
	cfg.Port = -1
	cfg.DataDir = t.TempDir()
	cfg.Auth = set
	if os.Getenv(NoAuthEnv) != "" { // to measure what auth costs
		cfg.Auth = nil
	}
	b, err := broker.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	url := b.ClientURL()
	authMu.Lock()
	if cfg.Auth != nil {
		auths[url] = set
	}
	authMu.Unlock()
	t.Cleanup(func() {
		_ = b.Shutdown(context.Background())
		authMu.Lock()
		delete(auths, url)
		authMu.Unlock()
	})
	return b
}

// UseAuth makes Conn, Creds and ReplicaCreds use the credentials in dir
// (natserve up's <data>/auth) for the broker at url, until the test ends.
func UseAuth(t testing.TB, url, dir string) {
	t.Helper()
	set, err := auth.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	authMu.Lock()
	auths[url] = set
	authMu.Unlock()
	t.Cleanup(func() {
		authMu.Lock()
		delete(auths, url)
		authMu.Unlock()
	})
}

// Auth returns the credentials of the broker at url (nil: none).
func Auth(url string) *auth.Set {
	authMu.Lock()
	defer authMu.Unlock()
	return auths[url]
}

// Creds returns the creds file of role (admin, controller, ingress,
// client, or "node-NAME") for the broker at url, or "" without auth.
func Creds(t testing.TB, url, role string) string {
	t.Helper()
	set := Auth(url)
	if set == nil {
		return ""
	}
	if len(role) > 5 && role[:5] == "node-" {
		p, err := set.Node(role[5:])
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	return set.CredsPath(role)
}

// CredsOptions returns the NATS options that connect as role to the broker
// at url (none without auth).
func CredsOptions(t testing.TB, url, role string) []nats.Option {
	t.Helper()
	p := Creds(t, url, role)
	if p == "" {
		return nil
	}
	opts, err := client.CredsOptions(p)
	if err != nil {
		t.Fatal(err)
	}
	return opts
}

// CredsFileOptions returns the NATS options that connect with the creds
// file path.
func CredsFileOptions(t testing.TB, path string) []nats.Option {
	t.Helper()
	opts, err := client.CredsOptions(path)
	if err != nil {
		t.Fatal(err)
	}
	return opts
}

// ReplicaCreds mints the creds of deployment's replicas for the broker at
// url ("" without auth).
func ReplicaCreds(t testing.TB, url, deployment string) string {
	t.Helper()
	set := Auth(url)
	if set == nil {
		return ""
	}
	c, err := set.Signer().Replica(deployment)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// Conn connects to url with opts, as admin on a broker Broker started, and
// closes the connection when the test ends.
func Conn(t testing.TB, url string, opts ...nats.Option) *nats.Conn {
	t.Helper()
	nc, err := nats.Connect(url, append(append([]nats.Option{nats.Name(t.Name())}, CredsOptions(t, url, "admin")...), opts...)...)
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
