package wire

import (
	"bytes"
	"errors"
	"strings"
	"testing"
	"time"
)

func TestRequestMetaRoundTrip(t *testing.T) {
	by := time.UnixMicro(1_800_000_000_123_456)
	for _, md := range []RequestMeta{
		{Kind: KindHTTP, RequestID: "abc", Timeout: 30 * time.Second, AckBy: by},
		{Kind: KindCall, RequestID: strings.Repeat("x", 128), Method: "Other", Timeout: time.Microsecond},
		{Kind: KindCall, Method: "M", ModelID: "m1"},
		{Kind: KindCall, Stream: 64, Timeout: time.Minute},
		{Kind: KindHTTP, RequestID: "id", Stream: 16, WebSocket: "_INBOX.abc"},
		{Kind: KindCall},
	} {
		payload := []byte{0x92, 0x01, 0x02}
		b := AppendRequestMeta(nil, &md)
		if len(b) > md.RequestMetaSize() {
			t.Errorf("%+v: %d bytes, RequestMetaSize %d", md, len(b), md.RequestMetaSize())
		}
		if !HasRequestMeta(b) {
			t.Fatalf("%+v: no marker: % x", md, b)
		}
		b = append(b, payload...)
		var got RequestMeta
		rest, err := DecodeRequestMeta(b, &got)
		if err != nil {
			t.Fatalf("%+v: %v", md, err)
		}
		if !bytes.Equal(rest, payload) {
			t.Errorf("%+v: payload % x, want % x", md, rest, payload)
		}
		if !got.AckBy.Equal(md.AckBy) {
			t.Errorf("ack-by %v, want %v", got.AckBy, md.AckBy)
		}
		got.AckBy = md.AckBy
		if got != md {
			t.Errorf("decoded %+v, want %+v", got, md)
		}
	}
}

// The payloads of the header form never start with the marker: an HTTP
// request envelope is a msgpack array, and so is a call's arguments.
func TestHeaderFormIsNotMeta(t *testing.T) {
	if HasRequestMeta(AppendHTTPRequest(nil, &HTTPRequest{Method: "GET", Path: "/"})) {
		t.Fatal("an HTTP envelope reads as a request envelope")
	}
	args, err := MarshalArgs([]any{1, "x"})
	if err != nil {
		t.Fatal(err)
	}
	if HasRequestMeta(args) || HasRequestMeta(nil) {
		t.Fatal("arguments read as a request envelope")
	}
}

func TestRequestMetaRefused(t *testing.T) {
	good := AppendRequestMeta(nil, &RequestMeta{Kind: KindCall, RequestID: "a"})
	var md RequestMeta
	newer := append([]byte{good[0], RequestMetaVersion + 1}, good[2:]...)
	_, err := DecodeRequestMeta(newer, &md)
	var ve *MetaVersionError
	if !errors.As(err, &ve) || ve.Version != RequestMetaVersion+1 {
		t.Fatalf("version %d: %v, want a MetaVersionError", RequestMetaVersion+1, err)
	}
	for name, b := range map[string][]byte{
		"empty":       nil,
		"marker only": {metaMarker},
		"no array":    {metaMarker, RequestMetaVersion, 0xa1, 'x'},
		"short array": {metaMarker, RequestMetaVersion, 0x92, 0xa4, 'c', 'a', 'l', 'l', 0xa0},
		"bad kind":    AppendRequestMeta(nil, &RequestMeta{Kind: "rpc"}),
		"big window":  AppendRequestMeta(nil, &RequestMeta{Kind: KindCall, Stream: MaxStreamWindow + 1}),
		"truncated":   good[:len(good)-2],
	} {
		if _, err := DecodeRequestMeta(b, &md); err == nil {
			t.Errorf("%s (% x): decoded %+v", name, b, md)
		} else if errors.As(err, &ve) {
			t.Errorf("%s: a version error: %v", name, err)
		}
	}
	// Fields past the eighth are skipped (a later version may add some).
	b := AppendRequestMeta(nil, &RequestMeta{Kind: KindCall, WebSocket: "_INBOX.x"})
	b[2] = 0x9a
	b = append(b, 0xa1, 'z', 0x92, 0x01, 0xc0, 0x07)
	rest, err := DecodeRequestMeta(b, &md)
	if err != nil || md.WebSocket != "_INBOX.x" || !bytes.Equal(rest, []byte{0x07}) {
		t.Fatalf("extra fields: %+v, rest % x, %v", md, rest, err)
	}
}

func TestRequestMetaFromHeaders(t *testing.T) {
	h := map[string]string{HeaderKind: KindHTTP, HeaderRequestID: "r", HeaderMethod: "M", HeaderTimeout: "1500",
		HeaderAckBy: "1800000000000000", HeaderModelID: "m", HeaderStream: "8", HeaderWebSocket: "_INBOX.w"}
	var md RequestMeta
	if err := ParseRequestHeaders(func(k string) string { return h[k] }, &md); err != nil {
		t.Fatal(err)
	}
	want := RequestMeta{Kind: KindHTTP, RequestID: "r", Method: "M", Timeout: 1500 * time.Microsecond,
		AckBy: time.UnixMicro(1_800_000_000_000_000), ModelID: "m", Stream: 8, WebSocket: "_INBOX.w"}
	if md != want {
		t.Fatalf("%+v, want %+v", md, want)
	}
	h[HeaderTimeout] = "-1"
	if err := ParseRequestHeaders(func(k string) string { return h[k] }, &md); err == nil {
		t.Fatal("a negative timeout was taken")
	}
	for _, k := range []string{HeaderProto, HeaderKind, HeaderAckBy, HeaderWebSocket} {
		if !IsRequestHeader(k) {
			t.Errorf("%s is not a request header", k)
		}
	}
	if IsRequestHeader(HeaderTraceparent) {
		t.Error("trace context is a request header")
	}
}

// FuzzDecodeRequestMeta: whatever arrives on a deployment's subject, the
// replica's envelope decoder never panics, and what it accepts encodes
// back to an envelope that decodes the same.
func FuzzDecodeRequestMeta(f *testing.F) {
	f.Add(AppendRequestMeta(nil, &RequestMeta{Kind: KindHTTP, RequestID: "abc", Timeout: time.Second, AckBy: time.UnixMicro(1e15)}))
	f.Add(append(AppendRequestMeta(nil, &RequestMeta{Kind: KindCall, Method: "M", ModelID: "m", Stream: 3, WebSocket: "_INBOX.x"}), 0x91, 0x01))
	f.Add([]byte{metaMarker, RequestMetaVersion, 0xdc, 0xff, 0xff})
	f.Add([]byte{metaMarker, 9})
	f.Fuzz(func(t *testing.T, b []byte) {
		var md RequestMeta
		rest, err := DecodeRequestMeta(b, &md)
		if err != nil {
			if md != (RequestMeta{}) {
				t.Fatalf("error %v with metadata %+v", err, md)
			}
			return
		}
		if len(rest) > len(b) {
			t.Fatalf("payload of %d bytes from %d", len(rest), len(b))
		}
		again := AppendRequestMeta(nil, &md)
		var md2 RequestMeta
		if _, err := DecodeRequestMeta(again, &md2); err != nil {
			t.Fatalf("re-encoded %+v: %v", md, err)
		}
		if !md2.AckBy.Equal(md.AckBy) {
			t.Fatalf("ack-by %v, then %v", md.AckBy, md2.AckBy)
		}
		md2.AckBy = md.AckBy
		if md2 != md {
			t.Fatalf("decoded %+v, then %+v", md, md2)
		}
	})
}

func BenchmarkDecodeRequestMeta(b *testing.B) {
	payload := AppendHTTPRequest(nil, &HTTPRequest{Method: "GET", Path: "/hello", Query: "size=20", Headers: []string{"Host", "x", "User-Agent", "wrk"}})
	msg := append(AppendRequestMeta(nil, &RequestMeta{Kind: KindHTTP, RequestID: "Z2pGkRvZa4tT6Dv1f8ljp9", Timeout: 30 * time.Second, AckBy: time.Now()}), payload...)
	b.ReportAllocs()
	var md RequestMeta
	for b.Loop() {
		if _, err := DecodeRequestMeta(msg, &md); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkAppendRequestMeta(b *testing.B) {
	md := RequestMeta{Kind: KindHTTP, RequestID: "Z2pGkRvZa4tT6Dv1f8ljp9", Timeout: 30 * time.Second, AckBy: time.Now()}
	buf := make([]byte, 0, 256)
	b.ReportAllocs()
	for b.Loop() {
		buf = AppendRequestMeta(buf[:0], &md)
	}
}
