// Package wire owns every name and byte layout that crosses a process
// boundary in natserve: NATS subjects and queue groups, KV bucket names,
// header names, error codes, the msgpack envelopes of HTTP requests and
// replies, and the validation of deployment names.
//
// Nothing else in natserve builds a subject or a header name by hand: data
// enters through the Decode* and Validate* functions of this package, which
// refuse malformed input with an error and never panic, and leaves through
// the Append*/Subject functions. Protocol changes bump [ProtoVersion].
package wire
