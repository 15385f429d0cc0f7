package ingress_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/natserve/natserve/ingress"
	"github.com/natserve/natserve/internal/store"
	"github.com/natserve/natserve/internal/testutil"
)

// fromIP returns an HTTP client whose connections come from ip (a loopback
// address such as 127.0.0.3) and do not outlive a request.
func fromIP(ip string) *http.Client {
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}, Timeout: 2 * time.Second}
	return &http.Client{Timeout: 3 * time.Second, Transport: &http.Transport{DialContext: d.DialContext, DisableKeepAlives: true}}
}

func healthz(c *http.Client, base string) error {
	r, err := c.Get(base + "/-/healthz")
	if err != nil {
		return err
	}
	defer r.Body.Close()
	b, _ := io.ReadAll(r.Body)
	if r.StatusCode != 200 {
		return fmt.Errorf("healthz %d %q", r.StatusCode, b)
	}
	return nil
}

// hold opens n idle connections to addr from ip.
func hold(t *testing.T, ip, addr string, n int) []net.Conn {
	t.Helper()
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}, Timeout: 5 * time.Second}
	conns := make([]net.Conn, 0, n)
	for i := 0; i < n; i++ {
		c, err := d.Dial("tcp", addr)
		if err != nil {
			t.Fatalf("connection %d from %s: %v", i, ip, err)
		}
		conns = append(conns, c)
	}
	t.Cleanup(func() { release(conns) })
	return conns
}

func release(conns []net.Conn) {
	for _, c := range conns {
		_ = c.Close()
	}
}

// refused reports whether a connection from ip is answered with status
// and closed at once (fasthttp's answer over a connection limit).
func refused(ip, addr string, status int) error {
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}, Timeout: 2 * time.Second}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
	b, _ := io.ReadAll(c)
	if !strings.HasPrefix(string(b), "HTTP/1.1 "+strconv.Itoa(status)) {
		return fmt.Errorf("extra connection from %s got %q, want %d and close", ip, firstLine(string(b)), status)
	}
	return nil
}

// startLimited runs `natserve ingress` with an open-file limit of nofile
// (set by the shell before exec, so the test binary keeps its own) and
// returns its address.
func startLimited(t *testing.T, nofile int, flags ...string) (string, *testutil.Proc) {
	t.Helper()
	b := brokerWithBuckets(t)
	bin := testutil.Build(t, "./cmd/natserve")
	args := append([]string{"-c", fmt.Sprintf(`ulimit -n %d && exec "$0" "$@"`, nofile), bin, "ingress", "-nats", b.ClientURL(), "-creds", testutil.Creds(t, b.ClientURL(), "ingress"), "-addr", "127.0.0.1:0"}, flags...)
	p := testutil.Start(t, nil, "sh", args...)
	re := regexp.MustCompile(`listening on http://(\S+)`)
	var addr string
	testutil.Eventually(t, 20*time.Second, func() error {
		if p.Exited() {
			t.Fatalf("ingress exited:\n%s", p.Output())
		}
		m := re.FindStringSubmatch(p.Output())
		if m == nil {
			return errors.New("not listening yet")
		}
		addr = m[1]
		return nil
	})
	return addr, p
}

// The default connection cap stays below the open-file limit and one
// address gets at most half of it: a client holding every connection it
// may from 127.0.0.2 leaves 127.0.0.3 served, and after it lets go,
// /-/healthz answers at once.
// brokerWithBuckets is a broker with the control plane's buckets, as a
// controller leaves them: an ingress is ready (/-/healthz 200) only once it
// has loaded the routes bucket.
func brokerWithBuckets(t *testing.T) interface{ ClientURL() string } {
	t.Helper()
	b := testutil.Broker(t)
	js, err := jetstream.New(testutil.Conn(t, b.ClientURL()))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := store.Open(context.Background(), js, store.Config{}); err != nil {
		t.Fatal(err)
	}
	return b
}

func TestDefaultLimitsUnderLowFileLimit(t *testing.T) {
	const nofile = 256 // cap 256-64 = 192, per address 96
	addr, p := startLimited(t, nofile)
	base := "http://" + addr
	if !strings.Contains(p.Output(), "max_connections=192") || !strings.Contains(p.Output(), "max_conns_per_ip=96") {
		t.Fatalf("want max_connections=192 max_conns_per_ip=96 under ulimit -n %d:\n%s", nofile, p.Output())
	}
	conns := hold(t, "127.0.0.2", addr, 96)
	if err := refused("127.0.0.2", addr, 429); err != nil {
		t.Fatal(err)
	}
	other := fromIP("127.0.0.3")
	for i := 0; i < 20; i++ {
		if err := healthz(other, base); err != nil {
			t.Fatalf("127.0.0.3 while 127.0.0.2 holds 96 connections: %v", err)
		}
	}
	release(conns)
	start := time.Now()
	testutil.Eventually(t, 10*time.Second, func() error { return healthz(fromIP("127.0.0.2"), base) })
	t.Logf("127.0.0.2 served %v after releasing its 96 connections (target: 2 s)", time.Since(start))
	if p.Exited() {
		t.Fatalf("ingress exited:\n%s", p.Output())
	}
}

// With a connection cap above the open-file limit, connections really
// exhaust the descriptors (accept fails with EMFILE); the ingress keeps
// retrying and serves again once they close.
func TestRecoversFromDescriptorExhaustion(t *testing.T) {
	const nofile = 64
	addr, p := startLimited(t, nofile, "-max-connections", "100000", "-max-conns-per-ip", "-1")
	base := "http://" + addr
	conns := hold(t, "127.0.0.2", addr, 2*nofile) // the kernel completes the handshakes; accept runs out
	testutil.Eventually(t, 20*time.Second, func() error {
		if !strings.Contains(p.Output(), "too many open files") {
			return errors.New("no EMFILE logged yet")
		}
		return nil
	})
	release(conns)
	start := time.Now()
	testutil.Eventually(t, 10*time.Second, func() error { return healthz(fromIP("127.0.0.3"), base) })
	t.Logf("served %v after releasing %d connections that exhausted ulimit -n %d (target: 2 s)", time.Since(start), len(conns), nofile)
	if n := strings.Count(p.Output(), "accept failed; retrying"); n == 0 || n > 30 {
		t.Errorf("logged %d accept failures; want a few (at most one a second)", n)
	}
	if p.Exited() {
		t.Fatalf("ingress exited:\n%s", p.Output())
	}
}

// An HTTP server that stops for any reason but Shutdown is reported, and
// `natserve ingress` exits non-zero on it.
func TestServerStopIsReported(t *testing.T) {
	b := brokerWithBuckets(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g, err := ingress.New(ingress.Config{NATSURL: b.ClientURL(), NATSOptions: testutil.CredsOptions(t, b.ClientURL(), "ingress"), Listener: ln})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := g.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = g.Shutdown(context.Background()) }()
	testutil.Eventually(t, 10*time.Second, func() error { return healthz(http.DefaultClient, "http://"+g.Addr()) }) // routes loaded
	select {
	case <-g.Done():
		t.Fatal("done before anything stopped it")
	default:
	}
	_ = ln.Close() // not Shutdown
	select {
	case <-g.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("the server's stop was not reported")
	}
	if err := g.Err(); err == nil || !strings.Contains(err.Error(), "stopped") {
		t.Fatalf("Err() = %v", err)
	}
	t.Logf("reported: %v", g.Err())

	// A Shutdown is not a failure.
	h, err := ingress.New(ingress.Config{NATSURL: b.ClientURL(), NATSOptions: testutil.CredsOptions(t, b.ClientURL(), "ingress"), Addr: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	if err := h.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if err := h.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	<-h.Done()
	if err := h.Err(); err != nil {
		t.Fatalf("Err() after Shutdown = %v", err)
	}
}
