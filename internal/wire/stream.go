package wire

import (
	"fmt"
	"strconv"
	"time"
)

// Streams. A caller that takes a stream sends its request with
// HeaderStream (its initial credit: how many items the replica may send
// before it hears from the caller again). The replica answers on the
// request's reply subject with frames, each a message with headers:
//
//	item:  Natserve-Seq: n, payload: one item (msgpack; JSON for HTTP)
//	end:   Natserve-Seq: n, Natserve-Frame: end
//	error: Natserve-Seq: n, Natserve-Frame: error, Natserve-Code, Natserve-Error
//	beat:  Natserve-Frame: beat (no sequence number; sent while nothing else is)
//
// Sequence numbers count items, end and error frames from 0 without gaps,
// so the caller detects loss, reordering and duplicates. The first frame
// carries HeaderCredit: the subject the caller grants more credit on (the
// payload is the decimal number of further items) or cancels the stream on
// (payload StreamCancel). A replica with no credit waits; the caller grants
// as it consumes, so every hop holds at most the window per stream.
//
// A failure before the stream starts (busy, bad arguments, unknown method)
// is an ordinary error reply; a method that does not stream answers a
// stream request with its ordinary reply, which the caller takes as a
// stream of one item.
const (
	HeaderStream = "Natserve-Stream" // request: the caller takes a stream; initial credit
	HeaderSeq    = "Natserve-Seq"    // frame: sequence number
	HeaderFrame  = "Natserve-Frame"  // frame: FrameEnd, FrameError or FrameBeat; absent for an item
	HeaderCredit = "Natserve-Credit" // first frame: the subject for credit and cancel
)

// Frame kinds in HeaderFrame.
const (
	FrameEnd   = "end"
	FrameError = "error"
	FrameBeat  = "beat"
)

// StreamCancel is the payload a caller sends on the credit subject to stop
// the stream (its client went away or its context ended).
const StreamCancel = "cancel"

// Stream timing and sizes.
const (
	// DefaultStreamWindow is the credit a caller grants a stream at once.
	DefaultStreamWindow = 64
	// MaxStreamWindow bounds HeaderStream.
	MaxStreamWindow = 4096
	// StreamBeatInterval is how often a replica sends a beat frame while it
	// sends nothing else (waiting for its method's next item or for credit).
	StreamBeatInterval = 250 * time.Millisecond
	// StreamDeadAfter is how long a caller waits without any frame before it
	// takes the replica for dead.
	StreamDeadAfter = time.Second
)

// CodeStreaming is the error code of a non-stream call to a streaming
// method. The replica answers it before running the method, so the caller
// may send the request again as a stream.
const CodeStreaming Code = "streaming"

// ParseStreamWindow decodes HeaderStream; "" means the request is not a
// stream (0).
func ParseStreamWindow(s string) (int, error) {
	if s == "" {
		return 0, nil
	}
	n, err := strconv.Atoi(s)
	if err != nil || n <= 0 || n > MaxStreamWindow {
		return 0, fmt.Errorf("%s %.12q: want 1 to %d", HeaderStream, s, MaxStreamWindow)
	}
	return n, nil
}

// ParseSeq decodes HeaderSeq.
func ParseSeq(s string) (uint64, error) {
	n, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%s %.24q: want a sequence number", HeaderSeq, s)
	}
	return n, nil
}
