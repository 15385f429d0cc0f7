package wire

// Code is an error code carried in HeaderCode of a reply. The HTTP status
// each maps to is decided in one table, [Code.HTTPStatus].
type Code string

// Error codes.
const (
	CodeBusy          Code = "busy"           // replica at max_ongoing_requests; not accepted, safe to retry
	CodeDraining      Code = "draining"       // replica is stopping; not accepted, safe to retry
	CodeUser          Code = "user"           // the user's method returned an error
	CodePanic         Code = "panic"          // the user's method panicked
	CodeDeadline      Code = "deadline"       // the budget ran out in the replica
	CodeBadRequest    Code = "bad_request"    // arguments or envelope could not be decoded
	CodeUnknownMethod Code = "unknown_method" // no such method on the class
	CodeProto         Code = "proto"          // protocol version not spoken
	CodeNoReplicas    Code = "no_replicas"    // nobody serves the deployment (from NATS no-responders)
	CodeBackpressure  Code = "backpressure"   // too many queued requests at the caller
	CodeReplicaDied   Code = "replica_died"   // the replica that acknowledged the request died before replying
	CodeInternal      Code = "internal"       // anything else
	// CodeNotRun: the replica acknowledged the request but the broker did
	// not confirm the acknowledgment before its ack-by time, so it did not
	// run it; safe to send again (the caller may already have).
	CodeNotRun Code = "not_run"
	// CodeConnectionLost: the caller's connection to NATS was lost while
	// its request was out and not yet acknowledged, so the caller cannot
	// tell whether a replica ran it (the acknowledgment may have gone down
	// with the connection); it is not sent again (at most once).
	CodeConnectionLost Code = "connection_lost"
)

// Retryable reports whether a reply with this code means the request was not
// accepted by the replica, so sending it again cannot run it twice.
func (c Code) Retryable() bool { return c == CodeBusy || c == CodeDraining || c == CodeNotRun }

// HTTPStatus maps an error code to the HTTP status the ingress answers with.
func (c Code) HTTPStatus() int {
	switch c {
	case CodeBusy, CodeDraining, CodeNoReplicas, CodeBackpressure, CodeNotRun:
		return 503
	case CodeDeadline:
		return 504
	case CodeBadRequest, CodeStreaming:
		return 400
	case CodeUnknownMethod:
		return 404
	case CodeProto, CodeReplicaDied, CodeConnectionLost:
		return 502
	default: // CodeUser, CodePanic, CodeInternal and unknown codes
		return 500
	}
}
