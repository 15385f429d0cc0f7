package wire

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/base32"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"
)

// Durable (asynchronous) requests. A submitted request is a JetStream
// message in its deployment's request stream; the deployment's replicas
// pull it from the stream's one durable consumer, run it, and publish what
// happened on the deployment's results subject, which the results stream
// keeps; the leading controller folds those events into the requests
// bucket, where callers read the request's status and result.
//
//	natserve.async.<deployment>        stream AsyncStream(deployment), consumer AsyncConsumer (the replicas)
//	natserve.ares.<deployment>.<id>    results: one AsyncEvent per message; stream AsyncResultsStream
//	natserve.acancel.<deployment>      core: the id of a request cancelled while it may run
//	natserve_requests  req.<id>        AsyncRecord                       submitter, then the controller
//	natserve_requests  idem.<deployment>.<hash>  the id an Idempotency-Key maps to  submitter (Create)
//	natserve_results   (object store)  <id>: a result too large for the record  controller
const (
	asyncRoot   = subjectRoot + "async."
	aresRoot    = subjectRoot + "ares."
	acancelRoot = subjectRoot + "acancel."

	// AsyncStreamPrefix starts the name of every deployment's request stream.
	AsyncStreamPrefix = "natserve_req_"
	// AsyncConsumer is the durable pull consumer the replicas of a
	// deployment share.
	AsyncConsumer = "replicas"
	// AsyncResultsStream keeps the results subjects of every deployment.
	AsyncResultsStream = "natserve_results"
	// AsyncResultsSubjects is its subject filter.
	AsyncResultsSubjects = aresRoot + ">"
	// AsyncFolder is the results stream's durable consumer (the controller).
	AsyncFolder = "folder"
	// BucketRequests holds the requests' records and idempotency keys.
	BucketRequests = "natserve_requests"
	// ObjectResults holds results larger than AsyncInlineResult.
	ObjectResults = "natserve_results"
	// AsyncMetaMaxAttempts is the consumer metadata key carrying the
	// deployment's max_attempts to its replicas.
	AsyncMetaMaxAttempts = "natserve_max_attempts"
)

// AsyncInlineResult is the largest result kept in the record itself;
// larger ones go to ObjectResults.
const AsyncInlineResult = 64 << 10

// Headers of a stored request message (besides HeaderKind, HeaderMethod,
// HeaderRequestID).
const (
	HeaderSubmitted = "Natserve-Submitted" // RFC 3339 time of submission
	HeaderCallback  = "Natserve-Callback"  // the callback (NATS subject or URL), if any
)

// AsyncSubject is the subject requests to deployment are stored on.
func AsyncSubject(deployment string) string { return asyncRoot + deployment }

// AsyncStream is the name of deployment's request stream.
func AsyncStream(deployment string) string { return AsyncStreamPrefix + deployment }

// AsyncConsumerCreatedSubject is the broker's advisory that deployment's
// request consumer was created: a deployment's stream and consumer are
// made on its first stored request (AsyncOpOpen), and its replicas, which
// found none, wait for this to start pulling.
func AsyncConsumerCreatedSubject(deployment string) string {
	return "$JS.EVENT.ADVISORY.CONSUMER.CREATED." + AsyncStream(deployment) + "." + AsyncConsumer
}

// AsyncStreamCreatedSubjects are the broker's advisories of created
// streams; the leading controller picks the request streams out of them.
const AsyncStreamCreatedSubjects = "$JS.EVENT.ADVISORY.STREAM.CREATED.*"

// AsyncStreamDeployment is the deployment of a request stream name ("" if
// name is not one).
func AsyncStreamDeployment(name string) string {
	d, ok := strings.CutPrefix(name, AsyncStreamPrefix)
	if !ok || ValidateName("deployment", d) != nil {
		return ""
	}
	return d
}

// AsyncResultSubject is the subject a replica reports on request id's
// progress and result.
func AsyncResultSubject(deployment, id string) string { return aresRoot + deployment + "." + id }

// AsyncResultDeployment splits a results subject into deployment and id.
func AsyncResultDeployment(subject string) (deployment, id string, ok bool) {
	rest, ok := strings.CutPrefix(subject, aresRoot)
	if !ok {
		return "", "", false
	}
	deployment, id, ok = strings.Cut(rest, ".")
	if !ok || ValidateName("deployment", deployment) != nil || !ValidAsyncID(id) {
		return "", "", false
	}
	return deployment, id, true
}

// AsyncCancelSubject carries the ids of cancelled requests to the
// deployment's replicas.
func AsyncCancelSubject(deployment string) string { return acancelRoot + deployment }

// AsyncLeaderSubject is the JetStream advisory a clustered broker
// publishes when deployment's request consumer elects a leader: a pull
// request waiting at the former leader may be gone without a status, so
// the replicas pull again when they see it (worker/durable.go). The
// broker publishes it in the account of the consumer; a replica only
// subscribes to it.
func AsyncLeaderSubject(deployment string) string {
	return "$JS.EVENT.ADVISORY.CONSUMER.LEADER_ELECTED." + AsyncStream(deployment) + "." + AsyncConsumer
}

// AsyncRecordKey is a request's key in BucketRequests.
func AsyncRecordKey(id string) string { return "req." + id }

// AsyncRecordKeys is the filter of every record key.
const AsyncRecordKeys = "req.*"

// AsyncIdemKey is the key in BucketRequests that maps an Idempotency-Key
// of deployment to a request id. The key itself is hashed: any bytes a
// client sends become a valid KV key.
func AsyncIdemKey(deployment, key string) string {
	return AsyncIdemKeyOfHash(deployment, AsyncIdemHash(key))
}

// MaxIdempotencyKey bounds an Idempotency-Key.
const MaxIdempotencyKey = 256

// asyncIDLen is the length of a request id: 160 random bits in base32.
const asyncIDLen = 32

var idEncoding = base32.NewEncoding("abcdefghijklmnopqrstuvwxyz234567").WithPadding(base32.NoPadding)

// NewAsyncID returns a new request id: 160 bits from crypto/rand, base32.
// Ids are bearer capabilities: whoever knows one reads and cancels the
// request.
func NewAsyncID() string {
	var b [20]byte
	_, _ = rand.Read(b[:]) // never fails (crypto/rand panics instead)
	return idEncoding.EncodeToString(b[:])
}

// ValidAsyncID reports whether id has the shape NewAsyncID gives.
func ValidAsyncID(id string) bool {
	if len(id) != asyncIDLen {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !(c >= 'a' && c <= 'z' || c >= '2' && c <= '7') {
			return false
		}
	}
	return true
}

// Request statuses.
const (
	AsyncQueued    = "queued"
	AsyncRunning   = "running"
	AsyncSucceeded = "succeeded"
	AsyncFailed    = "failed"
	AsyncCancelled = "cancelled"
)

// AsyncTerminal reports whether status is final.
func AsyncTerminal(status string) bool {
	return status == AsyncSucceeded || status == AsyncFailed || status == AsyncCancelled
}

// AsyncRecord is a request's record in BucketRequests. Its public JSON is
// client.RequestStatus; the other fields are natserve's own.
type AsyncRecord struct {
	ID         string          `json:"id"`
	Deployment string          `json:"deployment"`
	Status     string          `json:"status"`
	Attempts   int             `json:"attempts"`
	Submitted  time.Time       `json:"submitted_at"`
	Started    time.Time       `json:"started_at,omitzero"`
	Finished   time.Time       `json:"finished_at,omitzero"`
	Error      string          `json:"error,omitempty"`
	Result     json.RawMessage `json:"result,omitempty"`
	// ResultObject: the result is in ObjectResults under the id.
	ResultObject bool `json:"result_object,omitempty"`
	// Method is the method called ("" for the default and for HTTP).
	Method string `json:"method,omitempty"`
	// Kind is KindHTTP or KindCall.
	Kind string `json:"kind,omitempty"`
	// Callback is a NATS subject notified with the public record when the
	// request ends.
	Callback string `json:"callback,omitempty"`
	// Seq is the request's sequence in its deployment's stream.
	Seq uint64 `json:"seq,omitempty"`
}

// Kinds of AsyncEvent.
const (
	AsyncEventStarted = "started" // an attempt began
	AsyncEventRetry   = "retry"   // an attempt failed; the request is queued again
	AsyncEventDone    = "done"    // succeeded: Result holds the result
	AsyncEventFailed  = "failed"  // the last attempt failed, or the request cannot run
)

// AsyncEvent is what a replica publishes on AsyncResultSubject.
type AsyncEvent struct {
	Kind        string          `json:"kind"`
	Attempt     int             `json:"attempt"`
	At          time.Time       `json:"at"`
	Submitted   time.Time       `json:"submitted,omitzero"`
	Error       string          `json:"error,omitempty"`
	Code        Code            `json:"code,omitempty"`
	Result      json.RawMessage `json:"result,omitempty"`
	Replica     string          `json:"replica,omitempty"`
	RequestKind string          `json:"request_kind,omitempty"` // KindHTTP or KindCall
	MethodName  string          `json:"method,omitempty"`
	// Callback is the request's callback, carried so that a record the
	// controller creates from an event (the submitter's write came later,
	// or never) keeps it.
	Callback string `json:"callback,omitempty"`
}

// DecodeAsyncEvent decodes an event from a results subject.
func DecodeAsyncEvent(b []byte) (*AsyncEvent, error) {
	var e AsyncEvent
	if err := UnmarshalJSON(b, &e); err != nil {
		return nil, fmt.Errorf("async event: %w", err)
	}
	switch e.Kind {
	case AsyncEventStarted, AsyncEventRetry, AsyncEventDone, AsyncEventFailed:
	default:
		return nil, fmt.Errorf("async event: kind %q unknown", e.Kind)
	}
	if e.Attempt < 0 {
		return nil, errors.New("async event: negative attempt")
	}
	return &e, nil
}

// Fold applies an event to a record and reports whether it changed. A
// final record never changes; an event of an earlier attempt than the
// record's is ignored (events may be folded twice after a restart).
// Attempt 0 is no attempt: the controller's own verdict (a deleted
// deployment), which applies whatever ran.
func (r *AsyncRecord) Fold(e *AsyncEvent) bool {
	if AsyncTerminal(r.Status) || (e.Attempt > 0 && e.Attempt < r.Attempts) {
		return false
	}
	switch e.Kind {
	case AsyncEventStarted:
		if e.Attempt == r.Attempts && r.Status == AsyncRunning {
			return false
		}
		r.Status, r.Attempts, r.Started = AsyncRunning, e.Attempt, e.At
	case AsyncEventRetry:
		r.Status, r.Attempts, r.Error = AsyncQueued, e.Attempt, e.Error
	case AsyncEventDone:
		r.Status, r.Attempts, r.Finished, r.Result, r.Error = AsyncSucceeded, max(e.Attempt, r.Attempts), e.At, e.Result, ""
	case AsyncEventFailed:
		r.Status, r.Attempts, r.Finished = AsyncFailed, max(e.Attempt, r.Attempts), e.At
		if e.Error != "" || r.Error == "" {
			r.Error = e.Error
		}
	}
	if r.Callback == "" {
		r.Callback = e.Callback
	}
	if r.Started.IsZero() && e.Kind != AsyncEventFailed {
		r.Started = e.At
	}
	return true
}

// HTTPResult is the result of a stored HTTP request: the reply, its body
// as text when it is UTF-8, else base64 with Base64 set.
type HTTPResult struct {
	Status  int               `json:"status"`
	Headers map[string]string `json:"headers"`
	Body    string            `json:"body"`
	Base64  bool              `json:"base64,omitempty"`
}

// Errors of the async protocol.
var (
	// ErrAsyncBacklogFull: the deployment's stored requests reached its
	// max_stored_requests.
	ErrAsyncBacklogFull = errors.New("backlog full")
)

// JetStream API error code of a publish refused by a full stream
// (DiscardNew with MaxMsgs): the backlog cap.
const JSStreamStoreFailed = 10077

// NATSCallbackAllowed reports whether the controller may publish a stored
// request's final status on the NATS subject: only an inbox or a subject
// under natserve.cb., so that a submitter cannot make the controller
// publish where only the controller may (its API, KV, replica control).
func NATSCallbackAllowed(subject string) bool {
	return strings.HasPrefix(subject, inboxRoot) || strings.HasPrefix(subject, callbackRoot)
}

// callbackRoot is the prefix of NATS callback subjects outside inboxes.
const callbackRoot = subjectRoot + "cb."

// The requests service (answered by every controller process, in one
// queue group): callers read, await and cancel stored requests by id,
// and record and deduplicate their submissions, through it alone; they
// have no access to the requests bucket, the results stream or the
// result object store. It has no list operation.
const (
	AsyncServiceSubject = subjectRoot + "areq"
	AsyncServiceQueue   = "natserve-requests"
	// MaxAsyncServiceRequest bounds a request to it.
	MaxAsyncServiceRequest = 64 << 10
)

// Operations of the requests service.
const (
	AsyncOpRecord  = "record"  // Record: create a submission's queued record
	AsyncOpClaim   = "claim"   // Deployment, IdemHash, ID: map an idempotency key to ID (or get the id it maps to)
	AsyncOpRelease = "release" // Deployment, IdemHash, ID: undo a claim whose request was not stored
	AsyncOpGet     = "get"     // ID: the record
	AsyncOpWait    = "wait"    // ID, WaitMS: the record once it has ended, or when WaitMS is up
	AsyncOpCancel  = "cancel"  // ID: cancel; the record after it
	AsyncOpChunk   = "chunk"   // ID, Offset: part of a result too large for one reply
	AsyncOpOpen    = "open"    // Deployment: make its request stream and consumer if they are not there
)

// Codes of the requests service's errors.
const (
	AsyncCodeInvalid  = "invalid"
	AsyncCodeNotFound = "not_found"
	AsyncCodeNotReady = "not_ready" // the bucket or the broker cannot answer now: try again
	AsyncCodeBusy     = "busy"
	AsyncCodeInternal = "internal"
)

// AsyncServiceRequest is a request to the requests service.
type AsyncServiceRequest struct {
	Op         string       `json:"op"`
	ID         string       `json:"id,omitempty"`
	Deployment string       `json:"deployment,omitempty"`
	IdemHash   string       `json:"idem_hash,omitempty"`
	Record     *AsyncRecord `json:"record,omitempty"`
	WaitMS     int          `json:"wait_ms,omitempty"`
	Offset     int          `json:"offset,omitempty"`
}

// AsyncServiceReply is its reply: Code and Error on failure, else the
// request's ID and, when it is recorded, its Record (without Callback and
// Seq). ResultSize set with a record whose Result is empty: the result
// did not fit in the reply; AsyncOpChunk returns it in parts.
type AsyncServiceReply struct {
	Code       string       `json:"code,omitempty"`
	Error      string       `json:"error,omitempty"`
	ID         string       `json:"id,omitempty"`
	Claimed    bool         `json:"claimed,omitempty"`
	Record     *AsyncRecord `json:"record,omitempty"`
	ResultSize int          `json:"result_size,omitempty"`
	Chunk      []byte       `json:"chunk,omitempty"`
}

// AsyncIdemHash is the hash of an idempotency key as AsyncIdemKey uses it.
func AsyncIdemHash(key string) string {
	h := sha256.Sum256([]byte(key))
	return hex.EncodeToString(h[:16])
}

// AsyncIdemKeyOfHash is AsyncIdemKey from the key's hash.
func AsyncIdemKeyOfHash(deployment, hash string) string { return "idem." + deployment + "." + hash }

// ValidIdemHash reports whether h has the shape AsyncIdemHash gives.
func ValidIdemHash(h string) bool {
	if len(h) != 32 {
		return false
	}
	_, err := hex.DecodeString(h)
	return err == nil
}
