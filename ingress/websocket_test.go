package ingress_test

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/natserve/natserve/client"
	"github.com/natserve/natserve/internal/e2e"
	"github.com/natserve/natserve/internal/testutil"
)

// Long-lived requests through one stack: WebSockets through the ingress to
// a net/http handler (examples/chat, gorilla/websocket) in a real replica
// process, with a real client library (gorilla/websocket's Dialer); a
// graph whose output node streams; SSE keep-alives.
func TestLongLived(t *testing.T) {
	s := e2e.Standard(t)
	base, _ := s.Ingress("-ws-idle-timeout", "1500ms", "-sse-keepalive", "150ms")
	sp := spec("chat", "Chat", `[]`, 1, e2e.Ptr("/chat"))
	sp.MaxOngoingRequests = 1
	s.Deploy(sp)
	s.Deploy(spec("probe", "Probe", `["p"]`, 1, e2e.Ptr("/probe")))
	rsp := spec("rt", "Router", `["hi"]`, 1, e2e.Ptr("/rt"))
	rsp.MaxOngoingRequests = 1
	s.Deploy(rsp)
	lsp := spec("late", "LateStream", `[]`, 1, e2e.Ptr("/late"))
	lsp.MaxOngoingRequests = 1
	s.Deploy(lsp)
	gr := client.NewGraph("gs").RoutePrefix("/gs")
	st := gr.Bind("s", "Stream")
	gspec, err := gr.Driver(gr.Call("out", st, gr.Call("d", "double", gr.Input()), 400))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Client.DeployGraph(e2e.Ctx(10*time.Second), gspec); err != nil {
		t.Fatal(err)
	}
	wsBase := "ws" + strings.TrimPrefix(base, "http")
	dial := func(path string) *websocket.Conn {
		t.Helper()
		c, resp, err := websocket.DefaultDialer.Dial(wsBase+path, nil)
		if err != nil {
			t.Fatalf("dial %s: %v (%v)", path, err, resp)
		}
		return c
	}
	read := func(c *websocket.Conn) string {
		t.Helper()
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		_, b, err := c.ReadMessage()
		if err != nil {
			t.Fatalf("read: %v", err)
		}
		return string(b)
	}

	t.Run("round trips in order", func(t *testing.T) {
		c := dial("/chat?name=ann")
		defer c.Close()
		start := time.Now()
		const n = 2000
		go func() {
			for i := 0; i < n; i++ {
				if c.WriteMessage(websocket.TextMessage, []byte(strconv.Itoa(i))) != nil {
					return
				}
			}
		}()
		for i := 0; i < n; i++ {
			if got, want := read(c), "ann: "+strconv.Itoa(i); got != want {
				t.Fatalf("message %d: %q, want %q", i, got, want)
			}
		}
		t.Logf("%d messages echoed in order in %v", n, time.Since(start))
		// A large binary message crosses in several chunks, unchanged.
		big := bytes.Repeat([]byte("0123456789abcdef"), 20000) // 320 KB
		if err := c.WriteMessage(websocket.BinaryMessage, big); err != nil {
			t.Fatal(err)
		}
		if kind, b, err := c.ReadMessage(); err != nil || kind != websocket.BinaryMessage || !bytes.Equal(b, big) {
			t.Fatalf("big message: kind %d, %d bytes, %v", kind, len(b), err)
		}
		// The server sends faster than we read: credit keeps it in step.
		if err := c.WriteMessage(websocket.TextMessage, []byte("/burst 5000")); err != nil {
			t.Fatal(err)
		}
		for i := 0; i < 5000; i++ {
			if got := read(c); got != strconv.Itoa(i) {
				t.Fatalf("burst item %d: %q", i, got)
			}
		}
	})

	t.Run("client close code reaches the handler", func(t *testing.T) {
		c := dial("/chat")
		defer c.Close()
		if err := c.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(4001, "bye"), time.Now().Add(time.Second)); err != nil {
			t.Fatal(err)
		}
		// gorilla's server answers a close with the client's code: the code
		// made the round trip.
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		_, _, err := c.ReadMessage()
		var ce *websocket.CloseError
		if !errors.As(err, &ce) || ce.Code != 4001 {
			t.Fatalf("after our close 4001: %v", err)
		}
	})

	t.Run("server close code reaches the client", func(t *testing.T) {
		c := dial("/chat")
		defer c.Close()
		if err := c.WriteMessage(websocket.TextMessage, []byte("/close 4002 server says bye")); err != nil {
			t.Fatal(err)
		}
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		_, _, err := c.ReadMessage()
		var ce *websocket.CloseError
		if !errors.As(err, &ce) || ce.Code != 4002 || ce.Text != "server says bye" {
			t.Fatalf("server close: %v", err)
		}
	})

	t.Run("client going away frees the slot", func(t *testing.T) {
		// max_ongoing_requests is 1: the open connection holds the slot.
		c := dial("/chat")
		if got := read2(t, c, "/pid"); !strings.HasPrefix(got, "pid ") {
			t.Fatalf("/pid: %q", got)
		}
		held := make(chan error, 1)
		go func() {
			_, resp, err := (&websocket.Dialer{HandshakeTimeout: 700 * time.Millisecond}).Dial(wsBase+"/chat", nil)
			if err == nil {
				err = fmt.Errorf("a second connection was accepted while the first held the only slot")
			} else {
				err = nil
			}
			_ = resp
			held <- err
		}()
		if err := <-held; err != nil {
			t.Fatal(err)
		}
		gone := time.Now()
		_ = c.UnderlyingConn().Close() // no close frame: the client just goes away
		var c2 *websocket.Conn
		for c2 == nil {
			var err error
			c2, _, err = (&websocket.Dialer{HandshakeTimeout: 5 * time.Second}).Dial(wsBase+"/chat", nil)
			if err != nil && time.Since(gone) > 5*time.Second {
				t.Fatalf("the slot was not freed: %v", err)
			}
		}
		freed := time.Since(gone)
		t.Logf("client hang-up → next connection served after %v", freed)
		if freed > time.Second {
			t.Errorf("slot freed after %v, want ≤ 1 s", freed)
		}
		defer c2.Close()
		if got := read2(t, c2, "/pid"); !strings.HasPrefix(got, "pid ") {
			t.Fatalf("/pid on the second connection: %q", got)
		}
	})

	t.Run("idle timeout", func(t *testing.T) {
		c := dial("/chat")
		defer c.Close()
		start := time.Now()
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		_, _, err := c.ReadMessage()
		var ce *websocket.CloseError
		if !errors.As(err, &ce) || ce.Code != websocket.CloseGoingAway || ce.Text != "idle timeout" {
			t.Fatalf("idle connection: %v", err)
		}
		t.Logf("idle connection closed with 1001 after %v (timeout 1.5 s)", time.Since(start))
		if time.Since(start) < 1400*time.Millisecond {
			t.Errorf("closed after %v, before the idle timeout", time.Since(start))
		}
		// The slot is free again.
		c2 := dial("/chat")
		defer c2.Close()
		if got := read2(t, c2, "/pid"); !strings.HasPrefix(got, "pid ") {
			t.Fatalf("/pid after the idle close: %q", got)
		}
	})

	t.Run("departed clients free the slot", func(t *testing.T) { testDeparted(t, base) })

	t.Run("departed client of a stream before its first item", func(t *testing.T) { testDepartedStream(t, base) })

	t.Run("graph output streams", func(t *testing.T) { testGraphStream(t, s, base) })

	t.Run("refusals", func(t *testing.T) {
		hdr := http.Header{"Prefer": {"respond-async"}}
		_, resp, err := websocket.DefaultDialer.Dial(wsBase+"/chat", hdr)
		if err == nil || resp == nil || resp.StatusCode != 400 {
			t.Fatalf("respond-async upgrade: %v %v", err, resp)
		}
		body := readBody(resp)
		if !strings.Contains(body, "respond-async") || strings.Count(body, "\n") != 1 {
			t.Errorf("respond-async upgrade: %q", body)
		}
		_, resp, err = websocket.DefaultDialer.Dial(wsBase+"/probe", nil)
		if err == nil || resp == nil || resp.StatusCode != 400 {
			t.Fatalf("upgrade to a class deployment: %v %v", err, resp)
		}
		if body := readBody(resp); !strings.Contains(body, "does not accept WebSocket upgrades") {
			t.Errorf("upgrade to a class deployment: %q", body)
		}
		// A broken handshake gets the handler's own answer (gorilla: 400).
		code, body, _ := e2e.HTTP(t, "GET", base+"/chat", "", "Connection", "Upgrade", "Upgrade", "websocket")
		if code != 400 {
			t.Errorf("handshake without a key: %d %q", code, body)
		}
	})

	t.Run("replica killed", func(t *testing.T) { // last: the chat replica is gone afterwards
		c := dial("/chat")
		defer c.Close()
		got := read2(t, c, "/pid")
		pid, err := strconv.Atoi(strings.TrimPrefix(got, "pid "))
		if err != nil {
			t.Fatalf("/pid: %q", got)
		}
		start := time.Now()
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		_, _, err = c.ReadMessage()
		var ce *websocket.CloseError
		if !errors.As(err, &ce) || ce.Code != websocket.CloseInternalServerErr || !strings.Contains(ce.Text, "replica") {
			t.Fatalf("after the replica was killed: %v", err)
		}
		t.Logf("replica killed → close 1011 %q after %v", ce.Text, time.Since(start))
	})
}

func testGraphStream(t *testing.T, s *e2e.Stack, base string) {
	s.WaitHealthy("gs")
	// Over HTTP: input 2 → double → 4 items, one every 400 ms, with
	// keep-alive comments in the gaps (-sse-keepalive 150ms).
	var code int
	var body string
	var hdr http.Header
	testutil.Eventually(t, 10*time.Second, func() error {
		if code, body, hdr = e2e.HTTP(t, "POST", base+"/gs", "2"); code != 200 {
			return fmt.Errorf("graph: %d %s", code, body)
		}
		return nil
	})
	events := strings.ReplaceAll(body, ": keep-alive\n\n", "")
	want := "id: 0\ndata: 0\n\nid: 1\ndata: 1\n\nid: 2\ndata: 2\n\nid: 3\ndata: 3\n\nevent: end\ndata: \n\n"
	if hdr.Get("Content-Type") != "text/event-stream" || events != want {
		t.Fatalf("POST /gs: %q %q, want %q", hdr.Get("Content-Type"), body, want)
	}
	if k := strings.Count(body, ": keep-alive\n\n"); k < 3 {
		t.Errorf("%d keep-alive comments in 1.2 s of gaps at 150 ms: %q", k, body)
	} else {
		t.Logf("%d keep-alive comments in the graph's 3 gaps of 400 ms", k)
	}
	// NDJSON: the same items, no comments.
	if code, body, _ := e2e.HTTP(t, "POST", base+"/gs", "1", "Accept", "application/x-ndjson"); code != 200 || body != "0\n1\n" {
		t.Errorf("NDJSON graph stream: %d %q", code, body)
	}
	// Through a handle: the output node's items.
	var got []int
	for v, err := range client.Stream[int](e2e.Ctx(20*time.Second), s.Client.Handle("gs"), 2) {
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, v)
	}
	if fmt.Sprint(got) != "[0 1 2 3]" {
		t.Errorf("handle stream of the graph: %v", got)
	}
	// A node before the output failing is an ordinary HTTP error.
	if code, body, _ := e2e.HTTP(t, "POST", base+"/gs", `"x"`); code != 400 && code != 500 || !strings.Contains(body, "node d") {
		t.Errorf("failing node: %d %q", code, body)
	}
}

// testDeparted: a unary request whose client hangs up is cancelled at the
// replica (its context ends, its slot frees), and one waiting at the
// ingress for that slot is dropped. rt has max_ongoing_requests 1 and
// /wait returns only when its context ends (or after 30 s).
func testDeparted(t *testing.T, base string) {
	addr := strings.TrimPrefix(base, "http://")
	send := func() net.Conn {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.Write([]byte("GET /rt/wait?ms=30000 HTTP/1.1\r\nHost: x\r\n\r\n")); err != nil {
			t.Fatal(err)
		}
		return c
	}
	running := send()
	time.Sleep(300 * time.Millisecond) // it holds the replica's only slot
	waiting := send()
	time.Sleep(300 * time.Millisecond) // it waits at the ingress (busy)
	_ = waiting.Close()
	time.Sleep(100 * time.Millisecond)
	gone := time.Now()
	_ = running.Close()
	hc := &http.Client{Timeout: 5 * time.Second}
	resp, err := hc.Get(base + "/rt/health")
	if err != nil {
		t.Fatalf("the slot was not freed: %v", err)
	}
	resp.Body.Close()
	freed := time.Since(gone)
	t.Logf("client hang-up → slot free (next request answered) after %v (goal 100 ms)", freed)
	if resp.StatusCode != 200 || freed > time.Second {
		t.Errorf("GET /rt/health: %d after %v, want 200 within 1 s", resp.StatusCode, freed)
	}
}

// testDepartedStream: an SSE stream whose client hangs up while its first
// item is awaited is cancelled at the replica (its context ends, its slot
// frees). late has max_ongoing_requests 1; /late yields its one item after
// first_ms (or never, if its context ends first).
func testDepartedStream(t *testing.T, base string) {
	c, err := net.Dial("tcp", strings.TrimPrefix(base, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write([]byte("GET /late?first_ms=30000 HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n")); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond) // it holds the replica's only slot
	gone := time.Now()
	_ = c.Close()
	req, _ := http.NewRequest("GET", base+"/late?first_ms=0", nil)
	req.Header.Set("Accept", "text/event-stream")
	resp, err := (&http.Client{Timeout: 5 * time.Second}).Do(req)
	if err != nil {
		t.Fatalf("the slot was not freed: %v", err)
	}
	body := readBody(resp)
	freed := time.Since(gone)
	t.Logf("stream client hang-up before the first item → slot free (next stream answered) after %v (goal 100 ms)", freed)
	if resp.StatusCode != 200 || !strings.HasPrefix(body, "id: 0\ndata: 0\n\n") || freed > time.Second {
		t.Errorf("GET /late: %d %q after %v, want 200 with item 0 within 1 s", resp.StatusCode, body, freed)
	}
}

func read2(t *testing.T, c *websocket.Conn, msg string) string {
	t.Helper()
	if err := c.WriteMessage(websocket.TextMessage, []byte(msg)); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, b, err := c.ReadMessage()
	if err != nil {
		t.Fatalf("reading the answer to %q: %v", msg, err)
	}
	return string(b)
}

func readBody(resp *http.Response) string {
	defer resp.Body.Close()
	var b bytes.Buffer
	_, _ = b.ReadFrom(resp.Body)
	return b.String()
}
