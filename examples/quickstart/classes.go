// Package quickstart registers the example classes that the quick start's
// deployments (serve.yaml beside this file) use. Both programs that serve
// the quick start call it: the natserve binary (`natserve up`, `natserve
// agent`) and examples/own-class (the node image of docker compose and
// deploy/k8s), so that the two cannot drift apart.
package quickstart

import (
	"github.com/natserve/natserve/examples/chat"
	"github.com/natserve/natserve/examples/hello"
	"github.com/natserve/natserve/examples/mlserve"
	"github.com/natserve/natserve/examples/seed"
	"github.com/natserve/natserve/examples/slow"
	"github.com/natserve/natserve/examples/stream"
	"github.com/natserve/natserve/worker"
)

// Register adds every example class to reg.
func Register(reg *worker.Registry) {
	seed.Register(reg)    // Model, HTTPDeployment, MyFirstDeployment, …: the seed's classes
	hello.Register(reg)   // Hello (benchmarks)
	slow.Register(reg)    // Slow: /slow
	stream.Register(reg)  // Stream: /stream
	mlserve.Register(reg) // BatchedEcho, MuxModel: /batched and /mux
	chat.Register(reg)    // Chat: WebSockets at /chat
}
