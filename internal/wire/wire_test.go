package wire

import (
	"bytes"
	"errors"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/vmihailenco/msgpack/v5"
)

func TestValidateName(t *testing.T) {
	for _, tc := range []struct {
		name string
		ok   bool
	}{
		{"rep-1", true}, {"MyFirstDeployment", true}, {"a", true}, {"x_y-9", true},
		{"", false}, {"-a", false}, {"_a", false}, {"a.b", false}, {"a*", false}, {"a>", false},
		{"a b", false}, {"ä", false}, {string(make([]byte, 64)), false},
		{"abcdefghijabcdefghijabcdefghijabcdefghijabcdefghijabcdefghij123", true},
		{"abcdefghijabcdefghijabcdefghijabcdefghijabcdefghijabcdefghij1234", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := ValidateName("deployment name", tc.name)
			if (err == nil) != tc.ok {
				t.Fatalf("ValidateName(%q) = %v, want ok=%v", tc.name, err, tc.ok)
			}
			if err != nil && !errors.Is(err, ErrInvalidName) {
				t.Fatalf("error %v is not ErrInvalidName", err)
			}
		})
	}
}

func TestSanitizeName(t *testing.T) {
	for in, want := range map[string]string{"ip-10-0-0-1.ec2.internal": "ip-10-0-0-1-ec2-internal", "": "node", "..": "node", "_x": "x", "host name": "host-name"} {
		got := SanitizeName(in, "node")
		if got != want || ValidateName("n", got) != nil {
			t.Errorf("SanitizeName(%q) = %q, want %q (valid)", in, got, want)
		}
	}
	if got := SanitizeName(strings.Repeat("a", 100), "node"); len(got) != MaxNameLen {
		t.Errorf("not cut to %d: %d", MaxNameLen, len(got))
	}
}

func TestValidateMethod(t *testing.T) {
	for s, ok := range map[string]bool{"": true, "Predict": true, "other_method": true, "a1": true, "1a": false, "a.b": false, "a b": false} {
		if err := ValidateMethod(s); (err == nil) != ok {
			t.Errorf("ValidateMethod(%q) = %v, want ok=%v", s, err, ok)
		}
	}
}

func TestTimeout(t *testing.T) {
	for _, d := range []time.Duration{time.Microsecond, 1500 * time.Millisecond, time.Hour} {
		got, err := ParseTimeout(FormatTimeout(d))
		if err != nil || got != d {
			t.Errorf("round trip %v: got %v, %v", d, got, err)
		}
	}
	for _, s := range []string{"-1", "0", "x", "1e9", "9999999999999"} {
		if _, err := ParseTimeout(s); err == nil {
			t.Errorf("ParseTimeout(%q) accepted", s)
		}
	}
	if got, _ := ParseTimeout("999999999999"); got != MaxTimeout {
		t.Errorf("huge timeout not clamped: %v", got)
	}
}

func TestHTTPRequestRoundTrip(t *testing.T) {
	in := &HTTPRequest{
		Method: "POST", Path: "/api/v2/x", Prefix: "/api", Query: "a=1&b=2",
		Headers: []string{"Content-Type", "application/json", "X-Long", string(bytes.Repeat([]byte("v"), 70000))},
		Body:    bytes.Repeat([]byte{1, 2, 3}, 30000),
	}
	b := AppendHTTPRequest(nil, in)
	if err := CheckMsgpack(b); err != nil {
		t.Fatalf("CheckMsgpack: %v", err)
	}
	out, err := DecodeHTTPRequest(b)
	if err != nil {
		t.Fatal(err)
	}
	if out.Method != in.Method || out.Path != in.Path || out.Prefix != in.Prefix || out.Query != in.Query ||
		!bytes.Equal(out.Body, in.Body) || len(out.Headers) != 4 || out.Headers[3] != in.Headers[3] {
		t.Fatalf("round trip mismatch: %+v", out)
	}
	// The generic msgpack library reads the same bytes.
	var generic []any
	if err := msgpack.Unmarshal(b, &generic); err != nil || len(generic) != 6 {
		t.Fatalf("msgpack/v5 cannot read the envelope: %v %d", err, len(generic))
	}
}

func TestHTTPReplyRoundTrip(t *testing.T) {
	in := &HTTPReply{Status: 201, Headers: []string{"A", "b"}, Body: []byte("hello")}
	out, err := DecodeHTTPReply(AppendHTTPReply(nil, in))
	if err != nil || out.Status != 201 || string(out.Body) != "hello" || len(out.Headers) != 2 {
		t.Fatalf("got %+v, %v", out, err)
	}
	if out.Replica != nil {
		t.Fatalf("replica %q from a reply without one", out.Replica)
	}
	// The optional replica id, and extra trailing fields (a later protocol)
	// after it, which are skipped; a nil replica reads as none.
	in.Replica = []byte("r-123")
	withReplica := AppendHTTPReply(nil, in)
	b := append([]byte{0x95}, withReplica[1:]...)
	b = append(b, 0x01)
	for _, tc := range []struct {
		b    []byte
		want string
	}{{withReplica, "r-123"}, {b, "r-123"}, {append(append([]byte{0x94}, AppendHTTPReply(nil, &HTTPReply{Status: 200})[1:]...), 0xc0), ""}} {
		out, err := DecodeHTTPReply(tc.b)
		if err != nil || string(out.Replica) != tc.want || out.Status != in.Status && tc.want != "" {
			t.Fatalf("DecodeHTTPReply(% x) = %+v, %v; want replica %q", tc.b, out, err, tc.want)
		}
	}
	if n := len(AppendHTTPReply(nil, in)); n > in.MaxSize() {
		t.Fatalf("reply of %d bytes, MaxSize %d", n, in.MaxSize())
	}
	// A replica id that is not a string is malformed.
	bad := append(append([]byte{0x94}, AppendHTTPReply(nil, &HTTPReply{Status: 200})[1:]...), 0x91, 0x01)
	if _, err := DecodeHTTPReply(bad); !errors.Is(err, ErrMalformed) {
		t.Fatalf("replica as an array: %v", err)
	}
}

var bombs = [][]byte{
	{0xdd, 0xff, 0xff, 0xff, 0xff},       // array32
	{0xdf, 0xff, 0xff, 0xff, 0xff},       // map32
	{0xdb, 0xff, 0xff, 0xff, 0xff},       // str32
	{0xc6, 0xff, 0xff, 0xff, 0xff},       // bin32
	{0xc9, 0xff, 0xff, 0xff, 0xff, 0x00}, // ext32
	{0x96, 0xdb, 0xff, 0xff, 0xff, 0xff},
	{0x96, 0xa3, 'G', 'E', 'T', 0xa1, '/', 0xa0, 0xa0, 0xdd, 0xff, 0xff, 0xff, 0xfe},
	{0x93, 0xcc, 200, 0x90, 0xc6, 0xff, 0xff, 0xff, 0xff},
	{0xd4}, {0xd8, 1, 2}, {0xc1}, {},
}

func TestBombsRefused(t *testing.T) {
	for _, b := range bombs {
		if err := CheckMsgpack(b); err == nil {
			t.Errorf("CheckMsgpack(% x) accepted", b)
		}
		if _, err := DecodeHTTPRequest(b); !errors.Is(err, ErrMalformed) {
			t.Errorf("DecodeHTTPRequest(% x) = %v", b, err)
		}
		if _, err := DecodeHTTPReply(b); !errors.Is(err, ErrMalformed) {
			t.Errorf("DecodeHTTPReply(% x) = %v", b, err)
		}
	}
	deep := bytes.Repeat([]byte{0x91}, 10000)
	if err := CheckMsgpack(append(deep, 0)); err == nil {
		t.Error("10000-deep nesting accepted")
	}
}

// allocBound checks that decoding b allocated at most 8× its size + 64 KiB.
func allocBound(t testing.TB, b []byte, f func()) {
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	f()
	runtime.ReadMemStats(&after)
	if got, limit := after.TotalAlloc-before.TotalAlloc, uint64(8*len(b)+64<<10); got > limit {
		t.Fatalf("decoding %d bytes allocated %d bytes (limit %d): % x", len(b), got, limit, b[:min(len(b), 16)])
	}
}

func fuzzSeeds(f *testing.F) {
	for _, b := range bombs {
		f.Add(b)
	}
	f.Add(AppendHTTPRequest(nil, &HTTPRequest{Method: "GET", Path: "/a", Headers: []string{"k", "v"}, Body: []byte("x")}))
	f.Add(AppendHTTPReply(nil, &HTTPReply{Status: 200, Body: []byte("x")}))
	f.Add(AppendHTTPReply(nil, &HTTPReply{Status: 200, Body: []byte("x"), Replica: []byte("r1")}))
}

func FuzzDecodeHTTPRequest(f *testing.F) {
	fuzzSeeds(f)
	f.Fuzz(func(t *testing.T, b []byte) {
		allocBound(t, b, func() {
			req, err := DecodeHTTPRequest(b)
			if err == nil {
				if again, err := DecodeHTTPRequest(AppendHTTPRequest(nil, req)); err != nil || again.Path != req.Path {
					t.Fatalf("re-encoding a decoded request fails: %v", err)
				}
			}
		})
	})
}

func FuzzDecodeHTTPReply(f *testing.F) {
	fuzzSeeds(f)
	f.Fuzz(func(t *testing.T, b []byte) {
		allocBound(t, b, func() { _, _ = DecodeHTTPReply(b) })
	})
}

// FuzzCheckThenDecode feeds values that pass CheckMsgpack to the generic
// decoder used for user arguments: bounded allocation, no panic.
func FuzzCheckThenDecode(f *testing.F) {
	fuzzSeeds(f)
	f.Add([]byte{0x92, 0x01, 0xa1, 'x'})
	f.Fuzz(func(t *testing.T, b []byte) {
		if CheckMsgpack(b) != nil {
			return
		}
		allocBound(t, b, func() {
			var v []any
			_ = msgpack.Unmarshal(b, &v)
		})
	})
}

func FuzzHeaders(f *testing.F) {
	f.Add("123", "req-1")
	f.Add("-5", "\x00")
	f.Fuzz(func(t *testing.T, timeout, id string) {
		if d, err := ParseTimeout(timeout); err == nil && (d < 0 || d > MaxTimeout) {
			t.Fatalf("ParseTimeout(%q) = %v", timeout, d)
		}
		_ = ValidRequestID(id)
		_ = ValidateName("name", id)
		_ = ValidateMethod(id)
	})
}

func TestCodeHTTPStatus(t *testing.T) {
	want := map[Code]int{CodeBusy: 503, CodeNoReplicas: 503, CodeReplicaDied: 502, CodeDeadline: 504, CodeUser: 500, CodePanic: 500, CodeBadRequest: 400, Code("zzz"): 500}
	for c, s := range want {
		if got := c.HTTPStatus(); got != s {
			t.Errorf("%s → %d, want %d", c, got, s)
		}
	}
	if !CodeBusy.Retryable() || CodeUser.Retryable() {
		t.Error("Retryable is wrong")
	}
}
