package broker_test

import (
	"context"
	"errors"
	"net/url"
	"strconv"
	"strings"
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/natserve/natserve/broker"
	"github.com/natserve/natserve/internal/testutil"
)

func TestBrokerServesJetStreamKV(t *testing.T) {
	b := testutil.Broker(t)
	nc := testutil.Conn(t, b.ClientURL())
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	kv, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "t"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Put(ctx, "k", []byte("v")); err != nil {
		t.Fatal(err)
	}
	e, err := kv.Get(ctx, "k")
	if err != nil || string(e.Value()) != "v" {
		t.Fatalf("get: %v %v", e, err)
	}
}

func TestInProcessConnection(t *testing.T) {
	b := testutil.Broker(t)
	nc, err := nats.Connect("", append(testutil.CredsOptions(t, b.ClientURL(), "admin"), b.InProcessOption())...)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	sub, _ := nc.Subscribe("x", func(m *nats.Msg) { _ = m.Respond([]byte("pong")) })
	defer sub.Unsubscribe()
	r, err := nc.Request("x", nil, 0x7fffffff)
	if err != nil || string(r.Data) != "pong" {
		t.Fatalf("%v %v", r, err)
	}
}

func TestConfigErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		mod  func(*broker.Config)
		want string
	}{
		{"no data dir", func(c *broker.Config) { c.DataDir = "" }, "data dir is required"},
		{"bad port", func(c *broker.Config) { c.Port = 70000 }, "port 70000 out of range"},
		{"bad route scheme", func(c *broker.Config) { c.Cluster.Routes = []string{"http://a:1"} }, "want nats-route://host:port"},
		{"route without port", func(c *broker.Config) { c.Cluster.Routes = []string{"nats-route://a"} }, "want nats-route://host:port"},
		{"route bad port", func(c *broker.Config) { c.Cluster.Routes = []string{"nats-route://a:0"} }, "bad port"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := broker.DefaultConfig()
			cfg.DataDir = t.TempDir()
			tc.mod(&cfg)
			_, err := broker.New(cfg)
			if !errors.Is(err, broker.ErrConfig) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want %q", err, tc.want)
			}
		})
	}
}

func TestPortTaken(t *testing.T) {
	b := testutil.Broker(t)
	u, _ := url.Parse(b.ClientURL())
	port, _ := strconv.Atoi(u.Port())
	cfg := broker.DefaultConfig()
	cfg.DataDir = t.TempDir()
	cfg.Port = port
	b2, err := broker.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	err = b2.Start(context.Background())
	if err == nil || !strings.Contains(err.Error(), "in use") {
		t.Fatalf("second broker on port %d: %v", port, err)
	}
}
