package main_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/natserve/natserve/client"
	"github.com/natserve/natserve/internal/e2e"
	"github.com/natserve/natserve/internal/testutil"
	"github.com/natserve/natserve/internal/wire"
)

// The quick start's slow deployment, over HTTP and through a handle.
func TestSlowExample(t *testing.T) {
	u := up(t, "-f", filepath.Join(testutil.ModuleRoot(t), "examples/quickstart/serve.yaml"))
	slept := regexp.MustCompile(`^slept (\d+) ms \(pid (\d+)\)$`)
	check := func(how, s string, want int) string {
		t.Helper()
		m := slept.FindStringSubmatch(strings.TrimSpace(s))
		if m == nil {
			t.Fatalf("%s: %q, want \"slept N ms (pid P)\"", how, s)
		}
		n, _ := strconv.Atoi(m[1])
		if n < want || n > want+2000 { // loose: a loaded machine oversleeps
			t.Errorf("%s: slept %d ms, want about %d", how, n, want)
		}
		return m[2]
	}

	// HTTP: ?ms=N, the default, and a bad N.
	pids := map[string]bool{}
	for i := 0; i < 20 && len(pids) < 2; i++ {
		code, body, _ := e2e.HTTP(t, "GET", u.httpBase+"/slow?ms=30", "")
		if code != 200 {
			t.Fatalf("GET /slow?ms=30: %d %q", code, body)
		}
		pids[check("GET /slow?ms=30", body, 30)] = true
	}
	if len(pids) != 2 {
		t.Errorf("answers from pids %v, want the 2 replicas", pids)
	}
	start := time.Now()
	code, body, _ := e2e.HTTP(t, "GET", u.httpBase+"/slow", "")
	if code != 200 {
		t.Fatalf("GET /slow: %d %q", code, body)
	}
	check("GET /slow", body, 1000)
	t.Logf("GET /slow (default 1000 ms) took %v", time.Since(start))
	for _, bad := range []string{"abc", "-1", "1.5", "99999999999"} {
		code, body, _ := e2e.HTTP(t, "GET", u.httpBase+"/slow?ms="+bad, "")
		if code != 400 || !strings.Contains(body, "ms=") || strings.Count(strings.TrimSpace(body), "\n") != 0 {
			t.Errorf("GET /slow?ms=%s: %d %q, want 400 with a one-line reason", bad, code, body)
		}
	}

	// Handle: the number of milliseconds as the argument.
	cl, err := client.Connect(e2e.Ctx(5*time.Second), u.natsURL, client.WithCreds(u.creds()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	s, err := client.Call[string](e2e.Ctx(10*time.Second), cl.Handle("slow"), 40)
	if err != nil {
		t.Fatalf("handle slow(40): %v", err)
	}
	check("handle slow(40)", s, 40)
	if _, err := client.Call[string](e2e.Ctx(10*time.Second), cl.Handle("slow"), "x"); err == nil {
		t.Errorf("handle slow(\"x\") succeeded")
	}

	// The sleep ends at the request's deadline: a 60 s call with a 300 ms
	// deadline fails with the deadline, and leaves the replica free.
	start = time.Now()
	_, err = client.Call[string](e2e.Ctx(300*time.Millisecond), cl.Handle("slow"), 60000)
	took := time.Since(start)
	t.Logf("slow(60000) with a 300 ms deadline returned after %v: %v", took, err)
	if err == nil || !(errors.Is(err, client.ErrDeadline) || strings.Contains(err.Error(), "deadline")) {
		t.Errorf("slow(60000) with a 300 ms deadline: %v, want a deadline error", err)
	}
	if took > 10*time.Second {
		t.Errorf("slow(60000) with a 300 ms deadline took %v", took)
	}
	// Its replica is free again long before the 60 s (the ping reports ongoing calls).
	nc := testutil.Conn(t, u.natsURL, testutil.CredsFileOptions(t, u.creds())...)
	dep, err := cl.Get(e2e.Ctx(5*time.Second), "slow")
	if err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 10*time.Second, func() error {
		for _, r := range dep.Replicas {
			m, err := nc.Request(wire.ReplicaSubject("slow", r.ID, wire.VerbPing), nil, 2*time.Second)
			if err != nil {
				return err
			}
			var st struct{ Ongoing int }
			if err := json.Unmarshal(m.Data, &st); err != nil {
				return err
			}
			if st.Ongoing != 0 {
				return fmt.Errorf("replica %s still runs %d call(s)", r.ID, st.Ongoing)
			}
		}
		return nil
	})
	t.Logf("both replicas idle %v after the 60 s call was sent", time.Since(start))
}
