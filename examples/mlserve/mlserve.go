// Package mlserve holds example classes for natserve's two model-serving
// features, dynamic batching and model multiplexing; the quick start
// (examples/quickstart/serve.yaml) serves them as the deployments batched
// and mux. The natserve binary registers them, and so does
// examples/own-class.
package mlserve

import (
	"context"
	"fmt"
	"os"
	"sync/atomic"
	"time"

	"github.com/natserve/natserve/worker"
)

// Register adds the classes to reg.
func Register(reg *worker.Registry) {
	reg.Class("BatchedEcho", NewBatchedEcho, worker.Batched("Call", worker.BatchOptions{MaxBatchSize: 8, BatchWaitTimeout: 20 * time.Millisecond}))
	reg.Class("MuxModel", NewMuxModel, worker.Multiplexed("LoadModel", 2))
}

// BatchedEcho answers each call with the size of the batch that served it.
// A batch costs 2 ms plus 0.1 ms per call, a stand-in for a model whose
// forward pass costs about the same for one input as for a few.
type BatchedEcho struct{}

// NewBatchedEcho takes no arguments.
func NewBatchedEcho() *BatchedEcho { return &BatchedEcho{} }

// EchoReply is one call's answer.
type EchoReply struct {
	BatchSize int    `json:"batch_size" msgpack:"batch_size"`
	Input     string `json:"input" msgpack:"input"`
}

// Call is batched: it takes every request of a batch at once. The input is
// the query parameter x over HTTP, or a handle call's first argument.
func (BatchedEcho) Call(ctx context.Context, reqs []*worker.Request) ([]EchoReply, []error) {
	time.Sleep(2*time.Millisecond + time.Duration(len(reqs))*100*time.Microsecond)
	out := make([]EchoReply, len(reqs))
	errs := make([]error, len(reqs))
	for i, r := range reqs {
		out[i].BatchSize = len(reqs)
		if r.IsHTTP() {
			out[i].Input = r.QueryParam("x")
		} else if err := r.Arg(0, &out[i].Input); err != nil {
			errs[i] = fmt.Errorf("want one string argument: %w", err)
		}
	}
	return out, errs
}

// MuxModel serves many fake models, at most two per replica; loading one
// takes 20 ms.
type MuxModel struct{ loads atomic.Int64 }

// NewMuxModel takes no arguments.
func NewMuxModel() *MuxModel { return &MuxModel{} }

// FakeModel is a loaded model.
type FakeModel struct{ ID string }

// Close runs when the replica unloads the model to make room.
func (m *FakeModel) Close() error { return nil }

// LoadModel loads model id (the multiplexing loader; handles cannot call it).
func (m *MuxModel) LoadModel(ctx context.Context, id string) (*FakeModel, error) {
	select {
	case <-time.After(20 * time.Millisecond):
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	m.loads.Add(1)
	return &FakeModel{ID: id}, nil
}

// MuxReply is what MuxModel answers: the model, the replica's pid, and how
// many models the replica has loaded so far.
type MuxReply struct {
	Model string `json:"model" msgpack:"model"`
	PID   int    `json:"pid" msgpack:"pid"`
	Loads int64  `json:"loads" msgpack:"loads"`
}

// Call answers for the model the request names (the HTTP header
// serve_multiplexed_model_id, or client.MultiplexedModelID on a handle).
func (m *MuxModel) Call(ctx context.Context, req *worker.Request) (MuxReply, error) {
	model, err := worker.Model[*FakeModel](ctx)
	if err != nil {
		return MuxReply{}, err
	}
	return MuxReply{Model: model.ID, PID: os.Getpid(), Loads: m.loads.Load()}, nil
}
