package worker

import (
	"context"

	"github.com/natserve/natserve/client"
)

type ctxKey int

const replicaKey ctxKey = 0

// Info describes the replica a method runs in.
type Info struct {
	Deployment string
	Replica    string
	Class      string
	Version    string
	PID        int
}

// ReplicaInfo returns the replica the call runs in; ok is false outside one.
func ReplicaInfo(ctx context.Context) (info Info, ok bool) {
	r, ok := ctx.Value(replicaKey).(*Replica)
	if !ok {
		return Info{}, false
	}
	return Info{Deployment: r.spec.Deployment, Replica: r.spec.Replica, Class: r.spec.Class, Version: r.spec.Version, PID: r.pid}, true
}

// Client returns the client of the replica the call runs in, or nil outside
// a replica. Calls made with it carry the caller's deadline and request id.
func Client(ctx context.Context) *client.Client {
	r, ok := ctx.Value(replicaKey).(*Replica)
	if !ok {
		return nil
	}
	return r.cl
}

// Handle returns a handle to another deployment, for composition: code in a
// replica calls other deployments with it. It panics outside a replica (the
// replica turns a panic into an error reply).
func Handle(ctx context.Context, deployment string) *client.Handle {
	c := Client(ctx)
	if c == nil {
		panic("worker.Handle called outside a natserve replica; use client.Connect")
	}
	return c.Handle(deployment)
}
