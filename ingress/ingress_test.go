package ingress_test

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/natserve/natserve/client"
	"github.com/natserve/natserve/internal/e2e"
	"github.com/natserve/natserve/internal/testutil"
)

func TestMain(m *testing.M) { testutil.Main(m) }

func spec(name, class, initArgs string, replicas int, route *string) client.DeploymentSpec {
	return client.DeploymentSpec{Name: name, Class: class, InitArgs: json.RawMessage(initArgs), NumReplicas: replicas, RoutePrefix: route}
}

func TestSeedHTTPAndPrefixes(t *testing.T) {
	s := e2e.Standard(t)
	base, _ := s.Ingress()
	s.Deploy(spec("rep-1", "Model", `["/model/rep-1.pkl"]`, 2, nil))
	s.Deploy(spec("api", "Probe", `["api"]`, 1, e2e.Ptr("/api")))
	s.Deploy(spec("api-v2", "Probe", `["v2"]`, 1, e2e.Ptr("/api/v2")))
	pids := s.PIDs("rep-1")

	re := regexp.MustCompile(`^\(pid: (\d+)\); path: /model/rep-1.pkl; data: 0\.700; prediction: (\d+\.\d{3})$`)
	seen := map[int]bool{}
	for i := 0; i < 40; i++ {
		code, body, hdr := e2e.HTTP(t, "GET", base+"/rep-1?data=0.7", "")
		m := re.FindStringSubmatch(body)
		if code != 200 || m == nil {
			t.Fatalf("GET /rep-1?data=0.7: %d %q", code, body)
		}
		pid, _ := strconv.Atoi(m[1])
		pred, _ := strconv.ParseFloat(m[2], 64)
		if _, ok := pids[pid]; !ok || pred < 0.7 || pred > 1.7 {
			t.Fatalf("reply %q: pid not a replica of rep-1 (%v) or prediction outside the seed's rule", body, pids)
		}
		if hdr.Get("Content-Type") != "text/plain; charset=utf-8" || hdr.Get("X-Request-Id") == "" {
			t.Fatalf("headers %v", hdr)
		}
		seen[pid] = true
	}
	if len(seen) != 2 {
		t.Errorf("HTTP replies came from %d pids, want both replicas", len(seen))
	}
	for path, want := range map[string]string{
		"/api": "tag=api ", "/api/x": "tag=api ", "/api/v2": "tag=v2 ", "/api/v2/items": "tag=v2 ", "/api/v3": "tag=api ",
	} {
		code, body, _ := e2e.HTTP(t, "GET", base+path, "")
		if code != 200 || !strings.HasPrefix(body, want) {
			t.Errorf("GET %s: %d %q, want prefix %q", path, code, body, want)
		}
	}
	if code, body, _ := e2e.HTTP(t, "GET", base+"/api/v2/a/b?q=1", ""); !strings.Contains(body, "path=/api/v2/a/b rel=/a/b query=q=1") || code != 200 {
		t.Errorf("path split: %d %q", code, body)
	}
	if code, _, _ := e2e.HTTP(t, "GET", base+"/apix", ""); code != 404 {
		t.Errorf("GET /apix: %d, want 404", code)
	}
	code, body, _ := e2e.HTTP(t, "GET", base+"/-/routes", "")
	var routes map[string]string
	if code != 200 || json.Unmarshal([]byte(body), &routes) != nil || routes["/api/v2"] != "api-v2" || routes["/rep-1"] != "rep-1" || len(routes) != 3 {
		t.Errorf("/-/routes: %d %s", code, body)
	}
	// The request id is taken from the client and echoed.
	_, body, hdr := e2e.HTTP(t, "GET", base+"/api", "", "X-Request-Id", "abc-123")
	if hdr.Get("X-Request-Id") != "abc-123" {
		t.Errorf("X-Request-Id echoed as %q (%s)", hdr.Get("X-Request-Id"), body)
	}
}

func TestNetHTTPRouterDeployment(t *testing.T) {
	s := e2e.Standard(t)
	base, _ := s.Ingress()
	s.Deploy(spec("shop", "Router", `["hello"]`, 1, e2e.Ptr("/shop")))
	code, body, _ := e2e.HTTP(t, "GET", base+"/shop/items/42", "")
	if code != 200 || !strings.HasPrefix(body, "hello item 42 (pid ") || !strings.HasSuffix(body, "prefix /shop)") {
		t.Fatalf("GET /shop/items/42: %d %q", code, body)
	}
	if code, body, _ := e2e.HTTP(t, "GET", base+"/shop/health", ""); code != 200 || body != "ok" {
		t.Fatalf("GET /shop/health: %d %q", code, body)
	}
	code, body, hdr := e2e.HTTP(t, "POST", base+"/shop/echo", `{"n":1}`, "Content-Type", "application/json")
	if code != 201 || hdr.Get("Content-Type") != "application/json" || strings.TrimSpace(body) != `{"echoed":true,"n":1}` {
		t.Fatalf("POST /shop/echo: %d %q %v", code, body, hdr)
	}
	if code, _, _ := e2e.HTTP(t, "DELETE", base+"/shop/items/42", ""); code != 405 {
		t.Fatalf("DELETE: %d, want the mux's 405", code)
	}
}

func TestRoutesFollowTheControlPlane(t *testing.T) {
	s := e2e.Standard(t)
	base, _ := s.Ingress()
	if code, _, _ := e2e.HTTP(t, "GET", base+"/late", ""); code != 404 {
		t.Fatalf("before deploy: %d", code)
	}
	s.Deploy(spec("late", "Probe", `["late"]`, 1, nil))
	start := time.Now()
	testutil.Eventually(t, time.Second, func() error {
		if code, _, _ := e2e.HTTP(t, "GET", base+"/late", ""); code != 200 {
			return fmt.Errorf("status %d", code)
		}
		return nil
	})
	t.Logf("new route answered %v after the deployment was healthy", time.Since(start))
	if err := s.Client.Delete(e2e.Ctx(5*time.Second), "late"); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, time.Second, func() error {
		if code, _, _ := e2e.HTTP(t, "GET", base+"/late", ""); code != 404 {
			return fmt.Errorf("status %d", code)
		}
		return nil
	})
}

func TestErrorCodes(t *testing.T) {
	s := e2e.Standard(t)
	const maxBody = 4000
	base, _ := s.Ingress("-request-timeout", "1s", "-max-busy-retries", "3", "-max-body-size", strconv.Itoa(maxBody), "-max-header-bytes", "4096")
	s.Deploy(spec("probe", "Probe", `["p"]`, 1, nil))
	one := spec("single", "Probe", `["s"]`, 1, nil)
	one.MaxOngoingRequests = 1
	s.Deploy(one)
	s.Deploy(spec("zero", "Probe", `["z"]`, 1, nil))
	if err := s.Client.Scale(e2e.Ctx(5*time.Second), "zero", 0); err != nil {
		t.Fatal(err)
	}
	s.WaitHealthy("zero")

	check := func(name string, code int, body string, wantCode int, wantBody string) {
		t.Helper()
		if code != wantCode || !strings.Contains(body, wantBody) {
			t.Errorf("%s: %d %q, want %d containing %q", name, code, body, wantCode, wantBody)
		}
	}
	code, body, _ := e2e.HTTP(t, "GET", base+"/nowhere", "")
	check("unknown route", code, body, 404, "no deployment serves /nowhere")

	start := time.Now()
	code, body, hdr := e2e.HTTP(t, "GET", base+"/zero", "")
	check("scaled to zero", code, body, 503, "no_replicas")
	if hdr.Get("Retry-After") == "" {
		t.Errorf("503 without Retry-After")
	}
	t.Logf("503 for a deployment scaled to zero after %v", time.Since(start))

	code, body, _ = e2e.HTTP(t, "POST", base+"/probe", `["a","b"]`, "Content-Type", "application/json")
	check("POST to a *Request method", code, body, 200, "tag=p")

	// 503 when every replica stays busy past the retry budget.
	code, body, _ = e2e.HTTP(t, "GET", base+"/probe", "")
	check("normal", code, body, 200, "tag=p")
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { // occupy the only slot of "single" for 3 s
		defer wg.Done()
		if err := s.Client.Handle("single").Method("Sleep").Call(e2e.Ctx(5*time.Second), nil, 3000); err != nil {
			t.Errorf("occupying call: %v", err)
		}
	}()
	testutil.Eventually(t, 5*time.Second, func() error {
		code, body, hdr := e2e.HTTP(t, "GET", base+"/single", "")
		if code != 503 || !strings.Contains(body, "busy") || hdr.Get("Retry-After") == "" {
			return fmt.Errorf("%d %q", code, body)
		}
		return nil
	})
	wg.Wait()

	// A user error: route a deployment whose default method fails.
	s.Deploy(spec("double", "double", ``, 1, nil))
	code, body, _ = e2e.HTTP(t, "POST", base+"/double", `"not a number"`)
	check("bad argument", code, body, 400, "bad_request")
	code, body, _ = e2e.HTTP(t, "POST", base+"/double", `21`)
	check("function over HTTP", code, body, 200, "42")
	code, body, _ = e2e.HTTP(t, "GET", base+"/rep-model?data=abc", "")
	check("unknown route again", code, body, 404, "")
	s.Deploy(spec("rep-model", "Model", `["/m"]`, 1, nil))
	code, body, _ = e2e.HTTP(t, "GET", base+"/rep-model?data=abc", "")
	check("user error", code, body, 500, `query parameter data="abc" is not a number`)

	// 504: the deadline passes while the method sleeps.
	s.Deploy(spec("slow-route", "Router", `["x"]`, 1, nil))
	start = time.Now()
	code, body, _ = e2e.HTTP(t, "GET", base+"/slow-route/sleep?ms=3000", "")
	took := time.Since(start)
	check("deadline", code, body, 504, "deadline")
	t.Logf("504 after %v with a 1s request timeout", took)

	// 413 at one byte over the limit, 200 at the limit.
	code, body, _ = e2e.HTTP(t, "POST", base+"/probe", strings.Repeat("x", maxBody))
	check("body at the limit", code, body, 200, "tag=p")
	// Raw: the server answers 413 from the Content-Length and closes without
	// reading the body, which a Go client may see as a broken pipe.
	code, body = raw(t, base, fmt.Sprintf("POST /probe HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s", maxBody+1, strings.Repeat("x", maxBody+1)))
	check("body one byte over", code, body, 413, "larger than 4000 bytes")

	// 431: headers too large.
	code, body, _ = e2e.HTTP(t, "GET", base+"/probe", "", "X-Big", strings.Repeat("h", 5000))
	check("headers too large", code, body, 431, "headers are larger")

	// 400: malformed request line.
	code, body = raw(t, base, "GARBAGE\r\n\r\n")
	check("malformed request line", code, body, 400, "malformed")
}

// raw sends bytes on a fresh connection and reads the status and body.
func raw(t *testing.T, base, data string) (int, string) {
	t.Helper()
	c, err := net.Dial("tcp", strings.TrimPrefix(base, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	_, _ = io.WriteString(c, data) // the server may answer and close before all is written
	br := bufio.NewReader(c)
	line, err := br.ReadString('\n')
	if err != nil {
		t.Fatalf("reading the status line: %v", err)
	}
	parts := strings.SplitN(line, " ", 3)
	code, _ := strconv.Atoi(parts[1])
	rest, _ := io.ReadAll(br)
	return code, string(rest)
}

func TestSlowlorisCutOff(t *testing.T) {
	s := e2e.Standard(t)
	base, _ := s.Ingress("-read-timeout", "2s")
	s.Deploy(spec("probe", "Probe", `["p"]`, 1, nil))
	c, err := net.Dial("tcp", strings.TrimPrefix(base, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	start := time.Now()
	var cut atomic.Bool
	done := make(chan struct{})
	go func() { // one header byte every 500 ms
		defer close(done)
		req := "GET /probe HTTP/1.1\r\nHost: x\r\nX-Slow: " + strings.Repeat("a", 100)
		for i := 0; i < len(req); i++ {
			if _, err := c.Write([]byte{req[i]}); err != nil {
				cut.Store(true)
				return
			}
			time.Sleep(500 * time.Millisecond)
			if time.Since(start) > 20*time.Second {
				return
			}
		}
	}()
	// Normal requests are served meanwhile.
	for i := 0; i < 10; i++ {
		if code, _, _ := e2e.HTTP(t, "GET", base+"/probe", ""); code != 200 {
			t.Fatalf("normal request during slowloris: %d", code)
		}
	}
	_ = c.SetReadDeadline(time.Now().Add(20 * time.Second))
	b, _ := io.ReadAll(c) // returns when the server closes the connection
	took := time.Since(start)
	<-done
	t.Logf("slowloris connection closed after %v (read timeout 2s); server sent %q", took, firstLine(string(b)))
	if took > 10*time.Second {
		t.Fatalf("slow client kept its connection for %v", took)
	}
}

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}

func TestGracefulShutdown(t *testing.T) {
	s := e2e.Standard(t)
	base, p := s.Ingress("-drain-delay", "1s")
	s.Deploy(spec("probe", "Probe", `["p"]`, 1, nil))
	type result struct {
		code int
		body string
	}
	inflight := make(chan result, 1)
	go func() {
		code, body, _ := e2e.HTTP(t, "GET", base+"/probe", "")
		inflight <- result{code, body}
	}()
	time.Sleep(100 * time.Millisecond) // let the request start; the test asserts its outcome below
	if err := p.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 900*time.Millisecond, func() error {
		code, _, _ := e2e.HTTP(t, "GET", base+"/-/healthz", "")
		if code != 503 {
			return fmt.Errorf("healthz %d while draining", code)
		}
		return nil
	})
	if r := <-inflight; r.code != 200 {
		t.Fatalf("in-flight request: %d %q", r.code, r.body)
	}
	if exited, err := p.Wait(15 * time.Second); !exited || err != nil {
		t.Fatalf("ingress after SIGTERM: exited=%v err=%v", exited, err)
	}
}
