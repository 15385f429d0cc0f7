package wire

import (
	"errors"
	"fmt"
	"math"
	"time"
)

// Request metadata inside the payload. A request that a caller sends
// straight to replicas (the ingress's HTTP requests, handle calls, graph
// calls, streams, WebSockets, batched and multiplexed calls) carries no
// NATS headers: what the Natserve-* headers used to say travels in front of
// the request's own payload,
//
//	0xc1 version [kind, request-id, method, timeout-µs, ack-by-µs, model, stream-window, websocket] payload
//
// where version is RequestMetaVersion, the bracket is a msgpack array of at
// least 5 elements (the last three are left off when empty, and decoders
// skip elements past the eighth, so that a later version may add fields),
// kind is KindHTTP or KindCall, timeout-µs the remaining budget when sent
// (0: none), ack-by-µs the ack-by time in Unix microseconds (0: the caller
// takes no acknowledgments; see HeaderAckBy), model the multiplexed model
// id (HeaderModelID), stream-window the stream's credit window (0: not a
// stream; HeaderStream), websocket the ingress's credit inbox of a
// WebSocket (HeaderWebSocket). payload is the HTTP request envelope or the
// msgpack array of arguments, as before.
//
// Why: five NATS headers per request cost the caller a header block to
// build, the broker an HPUB to parse, and the replica nats.go's MIME header
// parser and a map per request (issue 18's profiles: ~8% of a replica's
// CPU); the envelope is one small msgpack array decoded with one string
// allocation.
//
// 0xc1 is the one byte msgpack never uses, so no payload of the header form
// (an HTTP request envelope or an array of arguments) starts with it; a
// replica tells the two forms apart by the first byte. Mixed versions
// during a rolling upgrade: a replica of this version takes both forms
// (the header form with HeaderProto = ProtoVersion, as older callers, the
// nats CLI and stored requests send it); a replica from before it answers a
// request in the envelope form with CodeProto (it finds no HeaderProto), so
// a new caller against an old replica fails clearly, never silently
// (upgrade replicas before callers). An envelope of a version a replica
// does not speak is answered CodeProto too (*MetaVersionError).
//
// Stored (durable) requests keep the header form in JetStream: they are
// not on the hot path and their stream records stay readable by replicas
// of either version. W3C trace context (HeaderTraceparent,
// HeaderTracestate) stays in NATS headers, set only when the caller traces.
// Replies are unchanged: a success has no headers, an error carries
// HeaderCode, HeaderError, HeaderProto and HeaderReplica.
const (
	metaMarker = 0xc1
	// RequestMetaVersion is the version byte of the request envelope.
	RequestMetaVersion = 1
	metaFields         = 8
)

// RequestMeta is what a request says besides its payload.
type RequestMeta struct {
	Kind      string        // KindHTTP or KindCall
	RequestID string        // "" when the caller set none
	Method    string        // "" for the default entry point
	Timeout   time.Duration // remaining budget when sent; 0: none
	AckBy     time.Time     // zero: the caller takes no acknowledgments
	ModelID   string        // multiplexed model; "" for none
	Stream    int           // stream window; 0: not a stream
	WebSocket string        // the ingress's credit inbox of a WebSocket; "" for none
}

// MetaVersionError is the error of an envelope whose version this process
// does not speak.
type MetaVersionError struct{ Version byte }

func (e *MetaVersionError) Error() string {
	return fmt.Sprintf("request envelope version %d not spoken; this replica speaks %d", e.Version, RequestMetaVersion)
}

// HasRequestMeta reports whether a request payload is in the envelope form
// (it starts with the marker); otherwise its metadata is in NATS headers.
func HasRequestMeta(data []byte) bool { return len(data) > 0 && data[0] == metaMarker }

// RequestMetaSize bounds the bytes AppendRequestMeta appends for md.
func (md *RequestMeta) RequestMetaSize() int {
	return 2 + 1 + 4*5 + len(md.Kind) + len(md.RequestID) + len(md.Method) + len(md.ModelID) + len(md.WebSocket) + 3*9
}

// AppendRequestMeta appends the envelope's head for md; the request's
// payload follows it.
func AppendRequestMeta(b []byte, md *RequestMeta) []byte {
	n := 5
	switch {
	case md.WebSocket != "":
		n = 8
	case md.Stream != 0:
		n = 7
	case md.ModelID != "":
		n = 6
	}
	b = append(b, metaMarker, RequestMetaVersion, 0x90|byte(n))
	b = appendStr(b, md.Kind)
	b = appendStr(b, md.RequestID)
	b = appendStr(b, md.Method)
	var tmo uint64
	if md.Timeout > 0 {
		tmo = uint64(max(md.Timeout/time.Microsecond, 1))
	}
	b = appendUint(b, tmo)
	var by uint64
	if !md.AckBy.IsZero() && md.AckBy.UnixMicro() > 0 {
		by = uint64(md.AckBy.UnixMicro())
	}
	b = appendUint(b, by)
	if n > 5 {
		b = appendStr(b, md.ModelID)
	}
	if n > 6 {
		b = appendUint(b, uint64(max(md.Stream, 0)))
	}
	if n > 7 {
		b = appendStr(b, md.WebSocket)
	}
	return b
}

// errNotMeta: DecodeRequestMeta was given a payload of the header form.
var errNotMeta = errors.New("not a request envelope")

// DecodeRequestMeta decodes the envelope's head into md and returns the
// request's payload, which aliases b. The strings of md are cut from one
// copy of the bytes they span. Malformed input is an error (wrapping
// ErrMalformed), an unknown version a *MetaVersionError; it never panics.
func DecodeRequestMeta(b []byte, md *RequestMeta) (payload []byte, err error) {
	*md = RequestMeta{}
	if !HasRequestMeta(b) {
		return nil, fmt.Errorf("%w: %w", ErrMalformed, errNotMeta)
	}
	if len(b) < 2 {
		return nil, fmt.Errorf("request envelope: %w: no version", ErrMalformed)
	}
	if b[1] != RequestMetaVersion {
		return nil, &MetaVersionError{Version: b[1]}
	}
	r := reader{b: b, off: 2}
	n := r.arrayLen()
	if r.err == nil && n < 5 {
		r.fail("request envelope has %d fields, want at least 5", n)
	}
	kind := r.rawStr()
	start := r.off
	var spans [4][2]int // request id, method, model, websocket: offsets in b
	str := func(i int) {
		v := r.rawStr()
		spans[i] = [2]int{r.off - len(v), r.off}
	}
	str(0)
	str(1)
	tmo := r.uint()
	by := r.uint()
	var window uint64
	if n > 5 {
		str(2)
	}
	if n > 6 {
		window = r.uint()
	}
	if n > 7 {
		str(3)
	}
	end := r.off
	for i := metaFields; i < n && r.err == nil; i++ {
		r.skip(1)
	}
	if r.err == nil {
		switch string(kind) {
		case KindHTTP:
			md.Kind = KindHTTP
		case KindCall:
			md.Kind = KindCall
		default:
			r.fail("kind %.16q: want %q or %q", kind, KindHTTP, KindCall)
		}
	}
	if r.err == nil && by > math.MaxInt64/1000 {
		r.fail("ack-by %d: out of range", by)
	}
	if r.err == nil && window > MaxStreamWindow {
		r.fail("stream window %d: want at most %d", window, MaxStreamWindow)
	}
	if r.err != nil {
		*md = RequestMeta{}
		return nil, fmt.Errorf("request envelope: %w", r.err)
	}
	if end > start {
		all := string(b[start:end])
		cut := func(i int) string {
			s := spans[i]
			if s[1] <= s[0] {
				return ""
			}
			return all[s[0]-start : s[1]-start]
		}
		md.RequestID, md.Method, md.ModelID, md.WebSocket = cut(0), cut(1), cut(2), cut(3)
	}
	if tmo > 0 {
		md.Timeout = MaxTimeout
		if tmo < uint64(MaxTimeout/time.Microsecond) {
			md.Timeout = time.Duration(tmo) * time.Microsecond
		}
	}
	if by > 0 {
		md.AckBy = time.UnixMicro(int64(by))
	}
	md.Stream = int(window)
	return b[r.off:], nil
}

// ParseRequestHeaders fills md from the NATS headers of a request in the
// header form (get is the message's Header.Get). It does not check
// HeaderProto.
func ParseRequestHeaders(get func(string) string, md *RequestMeta) error {
	*md = RequestMeta{RequestID: get(HeaderRequestID), Method: get(HeaderMethod), ModelID: get(HeaderModelID), WebSocket: get(HeaderWebSocket)}
	md.Kind = KindCall
	if get(HeaderKind) == KindHTTP {
		md.Kind = KindHTTP
	}
	var err error
	if md.Timeout, err = ParseTimeout(get(HeaderTimeout)); err != nil {
		return err
	}
	if md.AckBy, err = ParseAckBy(get(HeaderAckBy)); err != nil {
		return err
	}
	if md.Stream, err = ParseStreamWindow(get(HeaderStream)); err != nil {
		return err
	}
	return nil
}

// IsRequestHeader reports whether name is one of the NATS headers whose
// meaning RequestMeta carries (and HeaderProto), so that a caller moving a
// request of the header form into the envelope form drops it.
func IsRequestHeader(name string) bool {
	switch name {
	case HeaderProto, HeaderKind, HeaderRequestID, HeaderMethod, HeaderTimeout, HeaderAckBy, HeaderModelID, HeaderStream, HeaderWebSocket:
		return true
	}
	return false
}
