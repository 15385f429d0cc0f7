package wire

import "time"

// WebSockets. The ingress relays a WebSocket connection to a deployment
// that wraps a net/http handler as one stream (see HeaderStream), in both
// directions:
//
//   - The upgrade request goes out as an HTTP request with HeaderStream and
//     HeaderWebSocket, whose value is the subject where the replica grants
//     the ingress credit (an inbox of the ingress; the payload is the
//     decimal number of further chunks it may send).
//   - The handler's connection (it hijacks the ResponseWriter, as a
//     WebSocket library does) sends its bytes, the 101 answer first, as
//     stream items of at most WSChunk bytes, with the stream's credit.
//   - The ingress sends the client's bytes to the stream's credit subject
//     (HeaderCredit of the first frame) as messages with HeaderFrame
//     FrameData and HeaderSeq (from 0, no gaps), at most WSWindow chunks
//     ahead of the replica's grants; while it sends nothing it sends
//     FrameBeat every StreamBeatInterval, and StreamCancel when the client
//     went away. A replica that hears nothing for WSDeadAfter closes the
//     connection.
//   - The handler closing its connection ends the stream (FrameEnd); a
//     handler that does not hijack answers an ordinary HTTP reply.
//
// WebSocket frames (and so close codes) travel unchanged: the ingress only
// reads frame headers to know frame boundaries, so that it can close a
// connection cleanly at its idle timeout or maximum lifetime.
const (
	HeaderWebSocket = "Natserve-Websocket"
	FrameData       = "data"
)

const (
	// WSChunk bounds the bytes of one message in either direction.
	WSChunk = 32 << 10
	// WSWindow is how many chunks either side may send ahead of the
	// other's grants: at most WSWindow*WSChunk bytes are buffered per
	// connection and direction on each hop.
	WSWindow = 16
	// WSDeadAfter is how long a replica waits without hearing from the
	// ingress before it takes the connection for lost.
	WSDeadAfter = 3 * time.Second
)
