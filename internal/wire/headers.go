package wire

import (
	"fmt"
	"strconv"
	"time"
)

// ProtoVersion is the data-plane protocol version carried in HeaderProto.
// A replica refuses requests of a version it does not speak with CodeProto.
// Requests in the envelope form (meta.go) carry RequestMetaVersion instead.
const ProtoVersion = "1"

// Header names on NATS messages. The request headers (HeaderProto to
// HeaderTimeout here, HeaderAckBy, HeaderModelID, HeaderStream,
// HeaderWebSocket: IsRequestHeader) are the header form of a request's
// metadata: what stored requests, older callers and hand-made requests
// (the nats CLI) send. Callers of this version send RequestMeta in front
// of the payload instead (meta.go); replicas read both.
const (
	HeaderProto     = "Natserve-Proto"      // protocol version, request and reply
	HeaderRequestID = "Natserve-Request-Id" // request id, taken from X-Request-Id or generated
	HeaderKind      = "Natserve-Kind"       // KindHTTP or KindCall
	HeaderMethod    = "Natserve-Method"     // method name; absent for the default entry point
	HeaderTimeout   = "Natserve-Timeout"    // remaining budget in microseconds when sent
	HeaderCode      = "Natserve-Code"       // reply: error code; absent on success
	HeaderError     = "Natserve-Error"      // reply: error message
	HeaderReplica   = "Natserve-Replica"    // reply: the replica that answered
	// HeaderSlots: a busy reply's max_ongoing_requests of the replica that
	// refused, for the caller's pacing of queued calls (client/pace.go);
	// absent from a replica that batches, whose calls are meant to start
	// together.
	HeaderSlots = "Natserve-Slots"

	// W3C trace context (https://www.w3.org/TR/trace-context/), set on a
	// request only when the caller traces; optional, so not a protocol
	// change. internal/tracectx reads and writes them.
	HeaderTraceparent = "Traceparent"
	HeaderTracestate  = "Tracestate"
)

// Request kinds.
const (
	KindHTTP = "http" // payload is an HTTP request envelope
	KindCall = "call" // payload is a msgpack array of arguments
)

// MaxTimeout bounds the budget a request may ask for.
const MaxTimeout = 24 * time.Hour

// FormatTimeout encodes a remaining budget for HeaderTimeout.
func FormatTimeout(d time.Duration) string {
	if d < time.Microsecond {
		d = time.Microsecond
	}
	return strconv.FormatInt(int64(d/time.Microsecond), 10)
}

// ParseTimeout decodes HeaderTimeout. Empty means no budget (0).
func ParseTimeout(s string) (time.Duration, error) {
	if s == "" {
		return 0, nil
	}
	if len(s) > 12 {
		return 0, fmt.Errorf("%s %.20q: too long", HeaderTimeout, s)
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n <= 0 {
		return 0, fmt.Errorf("%s %q: want a positive number of microseconds", HeaderTimeout, s)
	}
	d := time.Duration(n) * time.Microsecond
	if d > MaxTimeout {
		d = MaxTimeout
	}
	return d, nil
}

// MaxRequestIDLen bounds request ids taken from outside.
const MaxRequestIDLen = 128

// ValidRequestID reports whether id (taken from a client) is safe to carry
// and echo: 1 to 128 visible ASCII characters.
func ValidRequestID(id string) bool {
	if id == "" || len(id) > MaxRequestIDLen {
		return false
	}
	for i := 0; i < len(id); i++ {
		if id[i] <= ' ' || id[i] > '~' {
			return false
		}
	}
	return true
}
