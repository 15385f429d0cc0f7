package wire

import (
	"bytes"
	"fmt"
	"reflect"
	"testing"
)

// decodeHTTPRequestBaseline is DecodeHTTPRequest before issue 18 (one
// allocation per string): the baseline of BenchmarkDecodeHTTPRequest and
// the reference of FuzzDecodeHTTPRequestSameAsBaseline.
func decodeHTTPRequestBaseline(b []byte) (*HTTPRequest, error) {
	r := reader{b: b}
	n := r.arrayLen()
	if r.err == nil && n < 6 {
		r.fail("request envelope has %d fields, want 6", n)
	}
	req := &HTTPRequest{
		Method: string(r.rawStr()),
		Path:   string(r.rawStr()),
		Prefix: string(r.rawStr()),
		Query:  string(r.rawStr()),
	}
	req.Headers = r.headers()
	req.Body = r.rawStr()
	r.tail(n, 6)
	if r.err != nil {
		return nil, fmt.Errorf("http request envelope: %w", r.err)
	}
	return req, nil
}

func benchEnvelope() []byte {
	return AppendHTTPRequest(nil, &HTTPRequest{Method: "GET", Path: "/hello1", Prefix: "/hello1", Query: "size=20",
		Headers: []string{"Host", "127.0.0.1:8000", "User-Agent", "wrk", "Accept", "*/*"}})
}

// FuzzDecodeHTTPRequestSameAsBaseline: the one-allocation decoder gives
// what the baseline gives, error or request, on any input.
func FuzzDecodeHTTPRequestSameAsBaseline(f *testing.F) {
	fuzzSeeds(f)
	f.Add(benchEnvelope())
	f.Add(AppendHTTPRequest(nil, &HTTPRequest{Method: "POST", Body: []byte("x")}))
	f.Fuzz(func(t *testing.T, b []byte) {
		got, err := DecodeHTTPRequest(b)
		want, werr := decodeHTTPRequestBaseline(b)
		if (err == nil) != (werr == nil) || (err != nil && err.Error() != werr.Error()) {
			t.Fatalf("error %v, baseline %v", err, werr)
		}
		if err == nil && (!reflect.DeepEqual(got.Headers, want.Headers) || got.Method != want.Method || got.Path != want.Path ||
			got.Prefix != want.Prefix || got.Query != want.Query || !bytes.Equal(got.Body, want.Body)) {
			t.Fatalf("got %+v, baseline %+v", got, want)
		}
	})
}

// BenchmarkDecodeHTTPRequest: a replica's decoding of a wrk-like request
// envelope (3 headers), against the baseline.
func BenchmarkDecodeHTTPRequest(b *testing.B) {
	env := benchEnvelope()
	for _, bc := range []struct {
		name string
		f    func([]byte) (*HTTPRequest, error)
	}{{"baseline", decodeHTTPRequestBaseline}, {"one-allocation", DecodeHTTPRequest}} {
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			for i := 0; i < b.N; i++ {
				if _, err := bc.f(env); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// decodeHTTPReplyBaseline is DecodeHTTPReply before this change (one
// allocation per header string): the baseline of BenchmarkDecodeHTTPReply
// and the reference of FuzzDecodeHTTPReplySameAsBaseline.
func decodeHTTPReplyBaseline(b []byte) (*HTTPReply, error) {
	r := reader{b: b}
	n := r.arrayLen()
	if r.err == nil && n < 3 {
		r.fail("reply envelope has %d fields, want 3", n)
	}
	rep := &HTTPReply{}
	st := r.uint()
	if r.err == nil && (st < 100 || st > 999) {
		r.fail("status %d out of range", st)
	}
	rep.Status = int(st)
	rep.Headers = r.headers()
	rep.Body = r.rawStr()
	fields := 3
	if n > 3 {
		rep.Replica = r.rawStr()
		fields = 4
	}
	r.tail(n, fields)
	if r.err != nil {
		return nil, fmt.Errorf("http reply envelope: %w", r.err)
	}
	return rep, nil
}

func benchReply() []byte {
	return AppendHTTPReply(nil, &HTTPReply{Status: 200, Headers: []string{"Content-Type", "application/octet-stream"},
		Body: bytes.Repeat([]byte("x"), 20), Replica: []byte("hello1-7f9c2a1b")})
}

// FuzzDecodeHTTPReplySameAsBaseline: the one-copy decoder gives what the
// baseline gives, error or reply, on any input.
func FuzzDecodeHTTPReplySameAsBaseline(f *testing.F) {
	fuzzSeeds(f)
	f.Add(benchReply())
	f.Add(AppendHTTPReply(nil, &HTTPReply{Status: 204}))
	f.Add(AppendHTTPReply(nil, &HTTPReply{Status: 302, Headers: []string{"Location", "/x", "Set-Cookie", "a=b", "", ""}, Body: []byte("moved")}))
	f.Fuzz(func(t *testing.T, b []byte) {
		got, err := DecodeHTTPReply(b)
		want, werr := decodeHTTPReplyBaseline(b)
		if (err == nil) != (werr == nil) || (err != nil && err.Error() != werr.Error()) {
			t.Fatalf("error %v, baseline %v", err, werr)
		}
		if err == nil && (!reflect.DeepEqual(got.Headers, want.Headers) || got.Status != want.Status ||
			!bytes.Equal(got.Body, want.Body) || !bytes.Equal(got.Replica, want.Replica)) {
			t.Fatalf("got %+v, baseline %+v", got, want)
		}
	})
}

// BenchmarkDecodeHTTPReply: the ingress's decoding of a Hello reply
// envelope (1 header), into a reply on the stack, against the baseline.
func BenchmarkDecodeHTTPReply(b *testing.B) {
	env := benchReply()
	b.Run("baseline", func(b *testing.B) {
		b.ReportAllocs()
		for i := 0; i < b.N; i++ {
			if _, err := decodeHTTPReplyBaseline(env); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("one-copy", func(b *testing.B) {
		b.ReportAllocs()
		for i := 0; i < b.N; i++ {
			var rep HTTPReply
			if err := rep.Decode(env); err != nil {
				b.Fatal(err)
			}
		}
	})
}
