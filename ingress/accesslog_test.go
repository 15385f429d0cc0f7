package ingress

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"strconv"
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

// TestAppendAccessTime checks the cached-second timestamp against
// time.AppendFormat, across seconds, zones and odd years.
func TestAppendAccessTime(t *testing.T) {
	base := time.Date(2026, 11, 27, 23, 59, 58, 0, time.UTC)
	zone := time.FixedZone("x", -7*3600-30*60)
	var times []time.Time
	for _, d := range []time.Duration{0, 999 * time.Millisecond, time.Second, 1500 * time.Millisecond, 2*time.Second + 1, 3*time.Second - 1} {
		times = append(times, base.Add(d), base.Add(d).In(zone), base.Add(-d))
	}
	times = append(times, time.Date(1969, 12, 31, 23, 59, 59, 999999999, time.UTC), time.Date(12000, 1, 1, 0, 0, 0, 5e6, time.UTC),
		time.Date(-5, 1, 1, 0, 0, 0, 0, time.UTC), time.Unix(0, 0), time.Now())
	for _, tm := range append(times, times...) { // the second pass reads the cache
		want := tm.UTC().AppendFormat(nil, "2006-01-02T15:04:05.000Z")
		if got := appendAccessTime([]byte("x"), tm); string(got) != "x"+string(want) {
			t.Errorf("%v: got %s, want %s", tm, got[1:], want)
		}
	}
}

// FuzzAppendMillis checks the integer formatting of latency_ms against
// strconv's float formatting it replaces.
func FuzzAppendMillis(f *testing.F) {
	for _, us := range []int64{0, 1, 10, 100, 412, 1000, 1500, 12000, 999999, 1e15 - 1, 1e15, -3, 1<<63 - 1} {
		f.Add(us)
	}
	f.Fuzz(func(t *testing.T, us int64) {
		want := strconv.AppendFloat(nil, float64(us)/1000, 'f', -1, 64)
		if got := appendMillis(nil, us); string(got) != string(want) {
			t.Fatalf("%d µs: got %s, want %s", us, got, want)
		}
	})
}
