package main_test

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/natserve/natserve/client"
	"github.com/natserve/natserve/internal/e2e"
	"github.com/natserve/natserve/internal/testutil"
	"github.com/natserve/natserve/internal/wire"
	"github.com/natserve/natserve/worker"
)

// TestQuickstartStream: the quick start's /stream through natserve up, as
// SSE, as NDJSON, failing mid-stream, through a handle, and a client that
// goes away cancels the replica's stream (its slot frees).
func TestQuickstartStream(t *testing.T) {
	u := up(t, "-f", filepath.Join(testutil.ModuleRoot(t), "examples/quickstart/serve.yaml"))
	cl, err := client.Connect(e2e.Ctx(5*time.Second), u.natsURL, client.WithCreds(u.creds()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	if _, err := cl.WaitHealthy(e2e.Ctx(60*time.Second), "stream", nil); err != nil {
		t.Fatal(err)
	}

	// SSE: 5 events then end.
	start := time.Now()
	code, body, hdr := e2e.HTTP(t, "GET", u.httpBase+"/stream?n=5&interval_ms=20", "")
	want := ""
	for i := 0; i < 5; i++ {
		want += fmt.Sprintf("id: %d\ndata: %d\n\n", i, i)
	}
	want += "event: end\ndata: \n\n"
	if code != 200 || hdr.Get("Content-Type") != "text/event-stream" || body != want {
		t.Fatalf("GET /stream: %d %q\n%q\nwant %q", code, hdr.Get("Content-Type"), body, want)
	}
	t.Logf("SSE of 5 items at 20 ms in %v", time.Since(start))

	// NDJSON when asked for.
	code, body, _ = e2e.HTTP(t, "GET", u.httpBase+"/stream?n=3&interval_ms=0", "", "Accept", "application/x-ndjson")
	if code != 200 || body != "0\n1\n2\n" {
		t.Fatalf("NDJSON: %d %q", code, body)
	}

	// A failure mid-stream is an error event, never an end.
	_, body, _ = e2e.HTTP(t, "GET", u.httpBase+"/stream?n=5&interval_ms=0&fail_at=2", "")
	if !strings.HasSuffix(body, "event: error\ndata: {\"code\":\"user\",\"message\":\"failed at item 2 (fail_at)\"}\n\n") || strings.Contains(body, "event: end") {
		t.Fatalf("failing stream: %q", body)
	}
	// Bad input before any item is an ordinary HTTP error.
	code, body, _ = e2e.HTTP(t, "GET", u.httpBase+"/stream?n=x", "")
	if code != 500 || !strings.Contains(body, "n=") {
		t.Fatalf("bad n: %d %q", code, body)
	}

	// A handle yields the same integers.
	n := 0
	for v, err := range client.Stream[int](e2e.Ctx(10*time.Second), cl.Handle("stream"), 5, 0) {
		if err != nil || v != n {
			t.Fatalf("handle item %d: %v %v", n, v, err)
		}
		n++
	}
	if n != 5 {
		t.Fatalf("handle: %d items", n)
	}

	// servectl call --stream prints each item on its line.
	servectl := testutil.Build(t, "./cmd/servectl")
	out, err := exec.Command(servectl, "call", "--server", u.natsURL, "--creds", u.creds(), "--stream", "stream", "4", "0").CombinedOutput()
	if err != nil || string(out) != "0\n1\n2\n3\n" {
		t.Fatalf("servectl call --stream: %v %q", err, out)
	}
	out, err = exec.Command(servectl, "call", "--server", u.natsURL, "--creds", u.creds(), "--stream", "stream", "4", "0", "2").CombinedOutput()
	if err == nil || !strings.HasPrefix(string(out), "0\n1\n") || !strings.Contains(string(out), "failed at item 2") {
		t.Fatalf("servectl call --stream failing mid-way: %v %q", err, out)
	}

	// Client disconnect: read two events, hang up; the replica's stream is
	// cancelled and its slot freed (the deployment's ongoing count falls).
	conn, err := net.Dial("tcp", strings.TrimPrefix(u.httpBase, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(conn, "GET /stream?n=100000&interval_ms=10 HTTP/1.1\r\nHost: x\r\n\r\n")
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	line := bufio.NewReader(resp.Body)
	for seen := 0; seen < 2; {
		s, err := line.ReadString('\n')
		if err != nil {
			t.Fatal(err)
		}
		if strings.HasPrefix(s, "data: ") {
			seen++
		}
	}
	conn.Close()
	closed := time.Now()
	// The replica's stream ends (its ctx cancelled) and frees the slot.
	testutil.Eventually(t, 5*time.Second, func() error {
		d, err := cl.Get(e2e.Ctx(2*time.Second), "stream")
		if err != nil {
			return err
		}
		for _, r := range d.Replicas {
			st, err := replicaOngoing(cl, r.ID)
			if err != nil {
				return err
			}
			if st != 0 {
				return fmt.Errorf("replica %s: %d ongoing", r.ID, st)
			}
		}
		return nil
	})
	took := time.Since(closed)
	t.Logf("client disconnect → replica stream cancelled, slot free in %v", took)
	if took > time.Second {
		t.Errorf("slot freed %v after the disconnect, want ≤ 1s", took)
	}
}

// replicaOngoing asks a replica how many calls it holds.
func replicaOngoing(cl *client.Client, id string) (int, error) {
	m, err := cl.Conn().Request(wire.ReplicaSubject("stream", id, wire.VerbPing), nil, time.Second)
	if err != nil {
		return 0, err
	}
	var st worker.ReplicaStatus
	if err := json.Unmarshal(m.Data, &st); err != nil {
		return 0, err
	}
	return st.Ongoing, nil
}
