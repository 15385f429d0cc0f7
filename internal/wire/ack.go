package wire

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Admission acknowledgments. One inbox per request carries everything back:
// a replica that takes a request first sends an acknowledgment on the
// request's reply subject, before the user's code runs, so that the caller
// knows who holds it; while the call runs longer than HeartbeatInterval it
// repeats the acknowledgment as a heartbeat; then it sends the one reply.
//
// An acknowledgment is a message without headers whose payload is
//
//	0xc1 flags replica-id
//
// 0xc1 is the one byte msgpack never uses, so no reply (a msgpack value or
// an HTTP reply envelope, or an error reply, which has headers) starts with
// it. flags is AckIdempotent or 0.
const (
	ackMarker = 0xc1
	// AckIdempotent: the method is declared idempotent, so the caller may
	// send it again if the replica dies while holding it.
	AckIdempotent = 1
)

// Coalesced acknowledgments. A caller whose call tokens begin with
// AckTokenMark (client/inbox.go: "<prefix>.-<base36>") takes the
// acknowledgments of one replica's confirmation round together: one message
// per caller per round, on "<prefix>." + AckBatchToken, whose payload is
//
//	0xc1 flags len(replica-id) replica-id token ' ' token ' ' …
//
// (the tokens with their mark). A caller with other tokens (older clients,
// raw inboxes) gets one acknowledgment per request on its reply subject, as
// does every caller of a method declared idempotent. Heartbeats coalesce the
// same way.
const (
	// AckTokenMark begins the call tokens of callers that take coalesced
	// acknowledgments; NUIDs and base36 numbers never contain it.
	AckTokenMark = '-'
	// AckBatchToken is the inbox token coalesced acknowledgments go to.
	AckBatchToken = "-"
)

// SplitAckReply returns the inbox prefix (ending with ".") and the token of a
// reply subject whose caller takes coalesced acknowledgments; ok is false
// for any other reply subject.
func SplitAckReply(reply string) (prefix, token string, ok bool) {
	i := strings.LastIndexByte(reply, '.')
	if i <= 0 || i+2 >= len(reply) || reply[i+1] != AckTokenMark {
		return "", "", false
	}
	return reply[:i+1], reply[i+1:], true
}

// Coalesced replies. A caller that takes coalesced acknowledgments takes its
// replies on the same repeating subject, "<prefix>." + AckBatchToken, so that
// the broker's per-connection publish-permission cache and its sublist cache
// hit for them (a subject per request missed both, once per request). The
// message keeps the reply's own headers (none for a success; code, error,
// protocol and replica for an error); its payload is
//
//	'R' len(token) token reply
//
// 'R' is not the acknowledgments' 0xc1, so a message on AckBatchToken is one
// or the other (ParseReply, ParseAcks).
const replyMarker = 'R'

// ReplySubject returns the subject to publish the reply to a reply subject
// of a caller that takes coalesced replies ("<prefix>." + AckBatchToken) and
// the call's token for AppendReplyHeader; ok is false for any other reply
// subject (answer on it directly).
func ReplySubject(reply string) (subject, token string, ok bool) {
	i := strings.LastIndexByte(reply, '.')
	if i <= 0 || i+2 >= len(reply) || reply[i+1] != AckTokenMark || len(reply)-i-1 > 255 {
		return "", "", false
	}
	return reply[:i+2], reply[i+1:], true
}

// AppendReplyHeader starts a coalesced reply to token (ReplySubject); the
// reply's payload follows.
func AppendReplyHeader(b []byte, token string) []byte {
	b = append(b, replyMarker, byte(len(token)))
	return append(b, token...)
}

// ParseReply splits a coalesced reply into the call's token and the reply's
// payload; ok is false for anything else (coalesced acknowledgments).
func ParseReply(data []byte) (token, reply []byte, ok bool) {
	if len(data) < 2 || data[0] != replyMarker || len(data) < 2+int(data[1]) {
		return nil, nil, false
	}
	n := int(data[1])
	return data[2 : 2+n], data[2+n:], true
}

// AppendAcksHeader starts a coalesced acknowledgment from replica, whose id
// is at most 255 bytes (CoalescesAcks).
func AppendAcksHeader(b []byte, replica string, flags byte) []byte {
	b = append(b, ackMarker, flags, byte(len(replica)))
	return append(b, replica...)
}

// CoalescesAcks reports whether acknowledgments from replica can be
// coalesced (its id fits the header's length byte).
func CoalescesAcks(replica string) bool { return len(replica) <= 255 }

// AppendAckToken adds a call's token to a coalesced acknowledgment.
func AppendAckToken(b []byte, token string) []byte {
	b = append(b, token...)
	return append(b, ' ')
}

// ParseAcks splits a coalesced acknowledgment: the replica, the flags and
// the tokens (NextAckToken walks them).
func ParseAcks(data []byte) (replica []byte, flags byte, tokens []byte, ok bool) {
	if len(data) < 3 || data[0] != ackMarker || len(data) < 3+int(data[2]) {
		return nil, 0, nil, false
	}
	n := int(data[2])
	return data[3 : 3+n], data[1], data[3+n:], true
}

// NextAckToken returns the first token of tokens (empty when none is left)
// and the rest.
func NextAckToken(tokens []byte) (token, rest []byte) {
	for len(tokens) > 0 && tokens[0] == ' ' {
		tokens = tokens[1:]
	}
	for i, c := range tokens {
		if c == ' ' {
			return tokens[:i], tokens[i+1:]
		}
	}
	return tokens, nil
}

// HeaderAckBy (RequestMeta.AckBy in the envelope form, meta.go) is the
// time (Unix microseconds, the caller's clock) by which the replica must have acknowledged the request; a replica that takes it
// later drops it without running it, so that a request the caller saw no
// acknowledgment for never ran. "Acknowledged" means the replica's broker
// has the acknowledgment: the replica publishes it, then a PING/PONG round
// trip on its connection must end before ack-by (one round trip confirms
// every acknowledgment published before it); a request whose confirmation
// comes later is answered CodeNotRun and never runs. Callers wait AckGrace
// longer than ack-by for the acknowledgment to travel from the replica's
// broker to theirs, then flush their own connection before they decide it
// never came. Clocks of callers and replicas must agree well within
// AckGrace (NTP does).
const HeaderAckBy = "Natserve-Ack-By"

// Acknowledgment timing.
const (
	// DefaultAckTimeout is how long after sending a caller gives the replica
	// to acknowledge a request before it tries another replica.
	DefaultAckTimeout = 250 * time.Millisecond
	// AckGrace is how much longer than the ack-by time a caller waits for an
	// acknowledgment that is on its way. The replica's broker had it by
	// ack-by (confirmed); what is left is the route between NATS nodes
	// when caller and replica use different ones, a starved broker's
	// writer, and clock skew. 250 ms (was 50 ms) gives a starved cluster's
	// route five times the old budget; it only delays the retry of a
	// request nobody acknowledged (a stopped or dead replica): 500 ms after
	// sending by default instead of 300 ms.
	AckGrace = 250 * time.Millisecond
	// HeartbeatInterval is how often a replica repeats the acknowledgment of
	// a call still running. Idle replicas send nothing.
	HeartbeatInterval = 200 * time.Millisecond
	// DefaultHeartbeatTimeout is how long a caller waits without an
	// acknowledgment, heartbeat or reply from the replica holding its request
	// before it takes the replica for dead: four missed heartbeats, so that
	// a request acknowledged just before its replica stopped (SIGSTOP, a
	// node cut off, an agent killed with its replicas) fails within 1 s of
	// the fault, not 1 s after its last heartbeat (issue 16's target; it
	// was 1 s with beats every 250 ms, which answered such requests 1.00 to
	// 1.04 s after the fault in the chaos soak).
	DefaultHeartbeatTimeout = 800 * time.Millisecond
)

// AppendAck appends an acknowledgment from replica.
func AppendAck(b []byte, replica string, flags byte) []byte {
	b = append(b, ackMarker, flags)
	return append(b, replica...)
}

// IsAck reports whether a message payload without headers is an
// acknowledgment (or heartbeat).
func IsAck(data []byte) bool { return len(data) >= 2 && data[0] == ackMarker }

// ParseAck returns the replica and flags of an acknowledgment.
func ParseAck(data []byte) (replica string, flags byte, ok bool) {
	if !IsAck(data) {
		return "", 0, false
	}
	return string(data[2:]), data[1], true
}

// FormatAckBy encodes t for HeaderAckBy.
func FormatAckBy(t time.Time) string { return strconv.FormatInt(t.UnixMicro(), 10) }

// ParseAckBy decodes HeaderAckBy; empty means none (zero time).
func ParseAckBy(s string) (time.Time, error) {
	if s == "" {
		return time.Time{}, nil
	}
	if len(s) > 20 {
		return time.Time{}, fmt.Errorf("%s %.24q: too long", HeaderAckBy, s)
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n <= 0 {
		return time.Time{}, fmt.Errorf("%s %q: want Unix microseconds", HeaderAckBy, s)
	}
	return time.UnixMicro(n), nil
}

// Replica exits. Node agents (when a replica process ends) and the
// controller (when it gives a replica up: failed health checks, a lost
// node) publish a ReplicaExit on ReplicaExitSubject(sender), where sender
// is the node's name or "controller"; callers holding a request that the
// replica acknowledged fail it (or resend an idempotent one) at once.
const (
	// EventReplicaExit is the event kind of replica exits.
	EventReplicaExit = "exit"
	// ReplicaExitSenderController is the sender token the controller uses.
	ReplicaExitSenderController = "controller"
)

// ReplicaExitSubject is the subject sender publishes replica exits on.
func ReplicaExitSubject(sender string) string { return EventSubject(EventReplicaExit, sender) }

// ReplicaExitSubjects is the wildcard callers subscribe to.
var ReplicaExitSubjects = EventSubjects(EventReplicaExit)

// ReplicaExit says that a replica is gone.
type ReplicaExit struct {
	Replica    string `json:"replica"`
	Deployment string `json:"deployment,omitempty"`
	Node       string `json:"node,omitempty"`
	Reason     string `json:"reason,omitempty"`
}
