package ingress

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"
)

func FuzzAppendJSONString(f *testing.F) {
	for _, s := range []string{"", "/plain/path", `quote" back\slash`, "ctl\x00\x1f\n\r\t", "é日本\U0001F600", "bad\xff\xfeutf8", "\xe6\x97"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		out := appendJSONString(nil, in)
		var got string
		if err := json.Unmarshal(out, &got); err != nil {
			t.Fatalf("%q → %s: not JSON: %v", in, out, err)
		}
		if want := strings.ToValidUTF8(string(in), "\uFFFD"); utf8.Valid(in) && got != string(in) || !utf8.Valid(in) && !utf8.ValidString(got) {
			t.Fatalf("%q → %q, want %q", in, got, want)
		}
		if s := appendJSONString(nil, string(in)); !bytes.Equal(s, out) {
			t.Fatalf("string and []byte forms differ: %s vs %s", s, out)
		}
	})
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestAccessLogLines writes lines from many goroutines and checks that
// each arrives whole, once, as JSON, after Close.
func TestAccessLogLines(t *testing.T) {
	var out lockedBuffer
	l := newAccessLog(&out, slog.Default())
	const workers, each = 8, 2000 // 16,000 lines of ~250 bytes: several size-triggered flushes
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < each; i++ {
				e := accessEntry{start: time.Now(), id: "id-" + string(rune('a'+w)) + "-" + time.Duration(i).String(), deployment: "d", replica: "r",
					method: []byte("GET"), path: []byte("/p\"\x01\xff"), status: 200, bytes: i}
				var scratch [512]byte
				l.add(appendAccessLine(scratch[:0], &e, time.Duration(i)*time.Microsecond))
			}
		}()
	}
	wg.Wait()
	l.Close()
	l.Close() // idempotent
	lines := strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n")
	if len(lines) != workers*each {
		t.Fatalf("%d lines, want %d", len(lines), workers*each)
	}
	seen := map[string]bool{}
	for _, ln := range lines {
		var v struct {
			RequestID string  `json:"request_id"`
			Path      string  `json:"path"`
			Status    int     `json:"status"`
			Latency   float64 `json:"latency_ms"`
		}
		if err := json.Unmarshal([]byte(ln), &v); err != nil {
			t.Fatalf("line %q: %v", ln, err)
		}
		if v.Path != "/p\"\x01\uFFFD" || v.Status != 200 || seen[v.RequestID] {
			t.Fatalf("line %q decoded as %+v (seen before: %v)", ln, v, seen[v.RequestID])
		}
		seen[v.RequestID] = true
	}
}
