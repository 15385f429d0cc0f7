// Package wire owns every name and byte layout that crosses a process
// boundary in natserve: NATS subjects and queue groups (subjects.go), the
// JetStream KV bucket names and keys (kv.go), header names, the request
// metadata envelope (meta.go: what a request says besides its payload, in
// front of the payload instead of in NATS headers; its doc says how mixed
// versions meet during a rolling upgrade), error codes, the
// control API verbs and messages, replica states, exit codes and the ping
// reply ReplicaStatus (replica.go), the msgpack envelopes of HTTP requests
// and replies, and the validation of deployment names.
//
// Nothing else in natserve builds a subject, a bucket name or a header name
// by hand: data enters through the Decode* and Validate* functions of this
// package, which refuse malformed input with an error and never panic, and
// leaves through the Append*/Subject functions. Protocol changes bump
// [ProtoVersion] (the header form) or [RequestMetaVersion] (the envelope). The records kept in the KV buckets are internal/store's;
// the deployment spec and its defaults are the client package's.
package wire
