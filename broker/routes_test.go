package broker_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/natserve/natserve/broker"
	"github.com/natserve/natserve/internal/auth"
	"github.com/natserve/natserve/internal/testutil"
)

// TestClusterRouteSecret: without TLS, routes authenticate with the route
// secret. Two members with it form a cluster; a stock server that presents
// no credentials, and a broker with a wrong secret, are refused and never
// become peers. The secret never shows in the members' logs.
func TestClusterRouteSecret(t *testing.T) {
	set, err := auth.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	member := func(name string, a *auth.Set, secret string, port int, routes ...string) (*broker.Broker, *logBuffer) {
		logs := &logBuffer{}
		b := tlsBroker(t, name, func(c *broker.Config) {
			c.Logger = slog.New(slog.NewTextHandler(logs, nil))
			c.Auth = a
			c.Cluster = broker.ClusterConfig{Name: "natserve", Port: port, Routes: routes, Secret: secret}
		})
		return b, logs
	}
	p1, p2 := freePort(t), freePort(t)
	route := func(p int) string { return fmt.Sprintf("nats-route://127.0.0.1:%d", p) }
	// One member takes the secret from its auth set, the other explicitly.
	b1, logs1 := member("route-1", set, "", p1, route(p2))
	b2, logs2 := member("route-2", set, set.RouteSecret, p2, route(p1))
	testutil.Eventually(t, 20*time.Second, func() error {
		if n1, n2 := b1.Server().NumRoutes(), b2.Server().NumRoutes(); n1 < 1 || n2 < 1 {
			return fmt.Errorf("routes: %d and %d", n1, n2)
		}
		return nil
	})

	refused := func() int { return strings.Count(strings.ToLower(logs1.String()), "authentication error") }
	for _, tc := range []struct {
		name  string
		start func() (stop func())
	}{
		{"stock server without the secret", func() func() {
			o := &server.Options{ServerName: "rogue-stock", Host: "127.0.0.1", Port: -1, NoSigs: true, NoLog: true}
			o.Cluster.Name, o.Cluster.Host, o.Cluster.Port = "natserve", "127.0.0.1", -1
			u, _ := url.Parse(route(p1))
			o.Routes = []*url.URL{u}
			s, err := server.NewServer(o)
			if err != nil {
				t.Fatal(err)
			}
			s.Start()
			return func() { s.Shutdown(); s.WaitForShutdown() }
		}},
		{"broker with a wrong secret", func() func() {
			b, _ := member("rogue-wrong", nil, strings.Repeat("0", 64), -1, route(p1))
			return func() { _ = b.Shutdown(context.Background()) }
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := refused()
			stop := tc.start()
			defer stop()
			testutil.Eventually(t, 20*time.Second, func() error {
				if refused() <= before {
					return fmt.Errorf("route-1 has not refused the rogue route yet")
				}
				return nil
			})
			// The members never take it as a peer (sampled while it keeps
			// trying; its own side may count a route being refused).
			for range 10 {
				if peers := peerNames(t, b1); len(peers) != 1 || peers[0] != "route-2" {
					t.Fatalf("route-1's peers after the rogue tried: %v, want [route-2]", peers)
				}
				if peers := peerNames(t, b2); len(peers) != 1 || peers[0] != "route-1" {
					t.Fatalf("route-2's peers after the rogue tried: %v, want [route-1]", peers)
				}
				time.Sleep(100 * time.Millisecond)
			}
		})
	}
	t.Logf("route-1 refused %d route connections (\"authentication error\")", refused())
	for name, l := range map[string]string{"route-1": logs1.String(), "route-2": logs2.String()} {
		if strings.Contains(l, set.RouteSecret) {
			t.Errorf("%s's log shows the route secret", name)
		}
	}
}

// TestClusterNeedsRouteAuth: a cluster port with neither a route secret
// nor route TLS, and a route URL carrying credentials (on the command
// line), are refused in one line.
func TestClusterNeedsRouteAuth(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  func(*broker.Config)
		want string
	}{
		{"no secret, no TLS", func(c *broker.Config) { c.Cluster.Port = -1 }, "route secret"},
		{"credentials in a route", func(c *broker.Config) {
			c.Cluster = broker.ClusterConfig{Port: -1, Secret: strings.Repeat("a", 32), Routes: []string{"nats-route://u:p@127.0.0.1:6222"}}
		}, "carries credentials"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := broker.DefaultConfig()
			cfg.DataDir = t.TempDir()
			tc.cfg(&cfg)
			_, err := broker.New(cfg)
			if !errors.Is(err, broker.ErrConfig) || !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), "\n") || strings.Contains(err.Error(), ":p@") {
				t.Fatalf("err %v, want one line with %q", err, tc.want)
			}
		})
	}
}
