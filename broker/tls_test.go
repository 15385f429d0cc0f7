package broker_test

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/natserve/natserve/broker"
	"github.com/natserve/natserve/internal/natsconn"
	"github.com/natserve/natserve/internal/testutil"
)

// tlsBroker starts a broker on a random port with cfg's TLS settings.
func tlsBroker(t *testing.T, name string, mutate func(*broker.Config)) *broker.Broker {
	t.Helper()
	cfg := broker.DefaultConfig()
	cfg.Name, cfg.Port, cfg.DataDir = name, -1, t.TempDir()
	mutate(&cfg)
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

// connect tries a connection with t's files and closes it.
func connect(url string, files natsconn.TLS) error {
	opts := append([]nats.Option{nats.Timeout(3 * time.Second), nats.NoReconnect()}, files.Options()...)
	nc, err := nats.Connect(url, opts...)
	if err != nil {
		return err
	}
	defer nc.Close()
	return nc.Flush()
}

// plainPong speaks the NATS protocol without TLS and reports whether the
// server answered PING with PONG.
func plainPong(t *testing.T, url string) bool {
	t.Helper()
	addr := strings.TrimPrefix(strings.TrimPrefix(url, "tls://"), "nats://")
	c, err := net.DialTimeout("tcp", addr, 3*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	_, _ = c.Write([]byte("CONNECT {\"verbose\":false}\r\nPING\r\n"))
	sc := bufio.NewScanner(c)
	for sc.Scan() {
		if strings.HasPrefix(sc.Text(), "PONG") {
			return true
		}
	}
	return false
}

func TestTLSClients(t *testing.T) {
	ca := testutil.NewCA(t, "natserve")
	srv := ca.Issue("broker")
	b := tlsBroker(t, "tls-1", func(c *broker.Config) {
		c.TLS = broker.TLSConfig{CertFile: srv.CertFile, KeyFile: srv.KeyFile, CAFile: ca.CertFile}
	})
	url := b.ClientURL()
	if !strings.HasPrefix(url, "tls://127.0.0.1:") {
		t.Fatalf("client URL %q, want tls://127.0.0.1:port", url)
	}
	if err := connect(url, natsconn.TLS{CAFile: ca.CertFile}); err != nil {
		t.Fatalf("TLS client with the CA refused: %v", err)
	}
	if err := connect(strings.Replace(url, "tls://", "nats://", 1), natsconn.TLS{CAFile: ca.CertFile}); err != nil {
		t.Fatalf("TLS client with the CA and a nats:// URL refused: %v", err)
	}
	err := connect(url, natsconn.TLS{})
	if err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("client without the CA: err %v, want a certificate error", err)
	}
	if plainPong(t, url) {
		t.Fatal("a plain-TCP client got PONG from a TLS broker")
	}
	// In-process clients (natserve up's own parts) stay plain.
	nc, err := nats.Connect("", b.InProcessOption())
	if err != nil {
		t.Fatalf("in-process client: %v", err)
	}
	defer nc.Close()
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
}

func TestTLSVerifyClients(t *testing.T) {
	ca := testutil.NewCA(t, "natserve")
	other := testutil.NewCA(t, "other")
	srv, cli, rogue := ca.Issue("broker"), ca.Issue("client"), other.Issue("rogue")
	b := tlsBroker(t, "tls-verify", func(c *broker.Config) {
		c.TLS = broker.TLSConfig{CertFile: srv.CertFile, KeyFile: srv.KeyFile, CAFile: ca.CertFile, Verify: true}
	})
	for _, tc := range []struct {
		name  string
		files natsconn.TLS
		ok    bool
	}{
		{"cert from the CA", natsconn.TLS{CAFile: ca.CertFile, CertFile: cli.CertFile, KeyFile: cli.KeyFile}, true},
		{"no client cert", natsconn.TLS{CAFile: ca.CertFile}, false},
		{"cert from another CA", natsconn.TLS{CAFile: ca.CertFile, CertFile: rogue.CertFile, KeyFile: rogue.KeyFile}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := connect(b.ClientURL(), tc.files)
			if tc.ok && err != nil {
				t.Fatalf("refused: %v", err)
			}
			if !tc.ok && err == nil {
				t.Fatal("accepted")
			}
			t.Logf("err: %v", err)
		})
	}
}

func TestTLSConfigErrors(t *testing.T) {
	ca := testutil.NewCA(t, "natserve")
	srv := ca.Issue("broker")
	for _, tc := range []struct {
		name string
		cfg  func(*broker.Config)
		want string
	}{
		{"cert without key", func(c *broker.Config) { c.TLS.CertFile = srv.CertFile }, "key file"},
		{"verify without CA", func(c *broker.Config) {
			c.TLS = broker.TLSConfig{CertFile: srv.CertFile, KeyFile: srv.KeyFile, Verify: true}
		}, "CA file"},
		{"missing cert", func(c *broker.Config) { c.TLS = broker.TLSConfig{CertFile: "/nonexistent.pem", KeyFile: srv.KeyFile} }, "nonexistent.pem"},
		{"cluster without CA", func(c *broker.Config) {
			c.Cluster.Port = -1
			c.Cluster.TLS = broker.TLSConfig{CertFile: srv.CertFile, KeyFile: srv.KeyFile}
		}, "cluster TLS verifying peers needs a CA file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := broker.DefaultConfig()
			cfg.DataDir = t.TempDir()
			tc.cfg(&cfg)
			_, err := broker.New(cfg)
			if !errors.Is(err, broker.ErrConfig) || !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), "\n") {
				t.Fatalf("err %v, want one line with %q", err, tc.want)
			}
		})
	}
}

// logBuffer is a slog handler's output, safe to read while the server logs.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

func TestClusterTLSRoutes(t *testing.T) {
	ca := testutil.NewCA(t, "natserve")
	other := testutil.NewCA(t, "other")
	member := func(name string, pair testutil.KeyPair, port int, routes ...string) (*broker.Broker, *logBuffer) {
		logs := &logBuffer{}
		b := tlsBroker(t, name, func(c *broker.Config) {
			c.Logger = slog.New(slog.NewTextHandler(logs, nil))
			// The same route secret everywhere: what refuses the rogues here is TLS.
			c.Cluster = broker.ClusterConfig{Name: "natserve", Port: port, Routes: routes, Secret: strings.Repeat("s", 32)}
			if pair.CertFile != "" {
				c.Cluster.TLS = broker.TLSConfig{CertFile: pair.CertFile, KeyFile: pair.KeyFile, CAFile: ca.CertFile}
			}
		})
		return b, logs
	}
	// JetStream in a cluster needs routes configured from the start: each
	// member names the other.
	p1, p2 := freePort(t), freePort(t)
	route := func(p int) string { return fmt.Sprintf("nats-route://127.0.0.1:%d", p) }
	b1, logs1 := member("route-1", ca.Issue("route-1"), p1, route(p2))
	b2, _ := member("route-2", ca.Issue("route-2"), p2, route(p1))
	testutil.Eventually(t, 20*time.Second, func() error {
		if n1, n2 := b1.Server().NumRoutes(), b2.Server().NumRoutes(); n1 < 1 || n2 < 1 {
			return fmt.Errorf("routes: %d and %d", n1, n2)
		}
		return nil
	})

	for _, tc := range []struct {
		name string
		pair testutil.KeyPair
	}{
		{"no TLS", testutil.KeyPair{}},
		{"cert from another CA", other.Issue("rogue")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := strings.Count(logs1.String(), "handshake error")
			rogue, _ := member("rogue-"+strings.ReplaceAll(tc.name, " ", "-"), tc.pair, -1, route(p1))
			testutil.Eventually(t, 20*time.Second, func() error {
				if n := strings.Count(logs1.String(), "handshake error"); n <= before {
					return fmt.Errorf("route-1 has not refused the rogue route yet")
				}
				return nil
			})
			if peers := peerNames(t, b1); len(peers) != 1 || peers[0] != "route-2" {
				t.Fatalf("route-1's peers after the rogue tried: %v, want [route-2]", peers)
			}
			if n := rogue.Server().NumRoutes(); n != 0 {
				t.Fatalf("the rogue has %d routes, want 0", n)
			}
			_ = rogue.Shutdown(context.Background())
		})
	}
	t.Logf("route-1's log of the refusals:\n%s", grepLines(logs1.String(), "handshake error"))
}

// peerNames lists the servers b has routes to (nats-server pools several
// connections per peer).
func peerNames(t *testing.T, b *broker.Broker) []string {
	t.Helper()
	rz, err := b.Server().Routez(nil)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	var out []string
	for _, r := range rz.Routes {
		if !seen[r.RemoteName] {
			seen[r.RemoteName] = true
			out = append(out, r.RemoteName)
		}
	}
	return out
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
