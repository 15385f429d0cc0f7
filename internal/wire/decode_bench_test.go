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
