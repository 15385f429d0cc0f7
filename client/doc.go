// Package client is what Go programs import to call natserve deployments and
// to drive the control plane.
//
// A Client wraps one NATS connection. Handle returns a handle to a
// deployment by name (the seed's serve.get_deployment(name).get_handle());
// Handle.Call calls its default method and Handle.Method("Predict").Call a
// named one; Handle.Remote starts a call whose result is awaited later (the
// seed's handle.remote(...) then ray.get). Arguments and results travel as
// msgpack; Call and Await are the typed forms.
//
// Errors are told apart with errors.Is against ErrNoReplicas, ErrDeadline,
// ErrBusy, ErrUser, ErrPanic, ErrUnknownMethod and ErrBadRequest, and
// errors.As to *Error for the deployment, code and message.
//
// This package does not import the server side of natserve.
package client
