package client

import (
	"context"
	"errors"
	"fmt"

	"github.com/natserve/natserve/internal/wire"
)

// Sentinel errors; match with errors.Is.
var (
	// ErrNoReplicas: no replica of the deployment is running. Returned at
	// once (from NATS "no responders"), never after waiting for a deadline.
	ErrNoReplicas = errors.New("no replicas running")
	// ErrDeadline: the call's deadline passed. errors.Is(err,
	// context.DeadlineExceeded) is true too.
	ErrDeadline = errors.New("deadline exceeded")
	// ErrBusy: every replica stayed busy past the retry budget.
	ErrBusy = errors.New("all replicas busy")
	// ErrBackpressure: too many requests were queued at this caller.
	ErrBackpressure = errors.New("too many queued requests")
	// ErrUser: the deployment's method returned an error.
	ErrUser = errors.New("deployment error")
	// ErrPanic: the deployment's method panicked (the replica kept serving).
	ErrPanic = errors.New("deployment panicked")
	// ErrUnknownMethod: the class has no such method.
	ErrUnknownMethod = errors.New("unknown method")
	// ErrBadRequest: the replica could not decode the arguments.
	ErrBadRequest = errors.New("bad request")
	// ErrProtocol: the replica speaks another protocol version, or replied
	// with something that is not a reply.
	ErrProtocol = errors.New("protocol error")
	// ErrReplicaDied: the replica that acknowledged the request died before
	// replying; the call may or may not have run. Returned at once (from the
	// replica exit event or missing heartbeats), never after the deadline.
	// Methods declared idempotent are sent again instead.
	ErrReplicaDied = errors.New("replica died")
	// ErrConnectionLost: the connection to NATS was lost while the request
	// was out and not yet acknowledged; it may or may not have run, so it
	// is not sent again.
	ErrConnectionLost = errors.New("connection to NATS lost")
	// ErrClosed: the client was closed.
	ErrClosed = errors.New("client closed")
)

// Error is the error of a call that reached natserve. It wraps the sentinel
// for its Code.
type Error struct {
	Deployment string
	Method     string // "" for the default method
	Code       string // one of the wire codes: busy, user, panic, deadline, no_replicas, …
	Message    string // the deployment's error text, or what went wrong
	Replica    string // the replica that answered, when one did
}

func (e *Error) Error() string {
	target := e.Deployment
	if e.Method != "" {
		target += "." + e.Method
	}
	return fmt.Sprintf("%s: %s: %s", target, e.sentinel().Error(), e.Message)
}

func (e *Error) sentinel() error {
	switch wire.Code(e.Code) {
	case wire.CodeNoReplicas:
		return ErrNoReplicas
	case wire.CodeDeadline:
		return ErrDeadline
	case wire.CodeBusy, wire.CodeDraining:
		return ErrBusy
	case wire.CodeBackpressure:
		return ErrBackpressure
	case wire.CodeUser:
		return ErrUser
	case wire.CodePanic:
		return ErrPanic
	case wire.CodeUnknownMethod:
		return ErrUnknownMethod
	case wire.CodeBadRequest:
		return ErrBadRequest
	case wire.CodeProto:
		return ErrProtocol
	case wire.CodeReplicaDied:
		return ErrReplicaDied
	case wire.CodeConnectionLost:
		return ErrConnectionLost
	}
	return errors.New(e.Code)
}

// Unwrap returns the sentinel error of the code.
func (e *Error) Unwrap() error { return e.sentinel() }

// Is makes a deadline error match context.DeadlineExceeded as well.
func (e *Error) Is(target error) bool {
	return target == context.DeadlineExceeded && wire.Code(e.Code) == wire.CodeDeadline
}

// HTTPStatus is the status the ingress answers this error with.
func (e *Error) HTTPStatus() int { return wire.Code(e.Code).HTTPStatus() }
