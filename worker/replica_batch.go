package worker

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/natserve/natserve/client"
	"github.com/natserve/natserve/internal/wire"
)

// The replica's side of batching and multiplexing: what serve adds for a
// batched method or a multiplexed class.

var errNoModelID = errors.New("no model id")

// acquireModel loads (or finds) the model a request asks for.
func (r *Replica) acquireModel(id string, timeout time.Duration) (*modelEntry, error) {
	if id == "" {
		return nil, fmt.Errorf("%w: deployment %s is multiplexed: name the model in the HTTP header %s, or with client.MultiplexedModelID on a handle", errNoModelID, r.spec.Deployment, wire.HTTPHeaderModelID)
	}
	if err := wire.ValidateModelID(id); err != nil {
		return nil, fmt.Errorf("%w: %v", errNoModelID, err)
	}
	// Not the replica's life: calls that run during a drain load too.
	ctx := context.WithValue(context.Background(), replicaKey, r)
	if timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	return r.models.acquire(ctx, id)
}

// serveBatched hands one call to its method's batcher and answers with
// the call's own result.
func (r *Replica) serveBatched(m *nats.Msg, oc *outcome, meth *method, model *modelEntry, args []reflect.Value, req *Request, timeout time.Duration, isHTTP bool, id string) {
	it := &batchItem{model: model}
	if model != nil {
		it.key = model.id
	}
	switch {
	case req != nil:
		it.arg = reflect.ValueOf(req)
	case len(args) == 1:
		it.arg = args[0]
	default:
		r.fail(oc, m, wire.CodeBadRequest, fmt.Sprintf("%s.%s is batched: send exactly one argument per call", r.cls.name, meth.name))
		return
	}
	ctx := context.Background() // for telling a deadline apart
	if timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
		it.deadline, _ = ctx.Deadline()
	}
	res, err := r.batchers[meth].submit(it)
	r.replyResult(m, oc, meth, ctx, res, err, isHTTP, id, nil)
}

// startBatchers starts one batcher per batched method, with the registered
// parameters and then the spec's batching block.
func (r *Replica) startBatchers() error {
	r.batchers = map[*method]*batcher{}
	for _, m := range r.cls.methods {
		if m.batch != nil && r.batchers[m] == nil {
			r.batchers[m] = newBatcher(r, m, m.batch.opts)
		}
	}
	if err := r.applyBatching(r.spec.Batching); err != nil {
		return err
	}
	for _, b := range r.batchers {
		b.start() // set warned if max_batch_size exceeds max_ongoing_requests
	}
	return nil
}

func (r *Replica) stopBatchers() {
	for _, b := range r.batchers {
		b.stop()
	}
}

// reconfigureAll applies a reconfigure request: the batching block (JSON
// in the batching header, if any), then user_config through the class's
// Reconfigure, unless it is the one the class already took.
func (r *Replica) reconfigureAll(ctx context.Context, batching string, userConfig []byte) error {
	r.reconfMu.Lock()
	defer r.reconfMu.Unlock()
	if batching != "" {
		var block map[string]client.BatchConfig
		if err := json.Unmarshal([]byte(batching), &block); err != nil {
			return fmt.Errorf("%w: the batching block is not JSON: %v", ErrBatch, err)
		}
		if err := r.applyBatching(block); err != nil {
			return err
		}
		r.log.Info("batching reconfigured")
		if bytes.Equal(compactJSON(userConfig), r.userConfig) {
			return nil
		}
	}
	if len(userConfig) == 0 && r.userConfig == nil {
		return nil
	}
	return r.reconfigure(ctx, userConfig)
}

func compactJSON(b []byte) []byte {
	var buf bytes.Buffer
	if len(b) == 0 || json.Compact(&buf, b) != nil {
		return b
	}
	return buf.Bytes()
}

func (r *Replica) batchStats() map[string]wire.BatchStats {
	if len(r.batchers) == 0 {
		return nil
	}
	out := map[string]wire.BatchStats{}
	for m, b := range r.batchers {
		out[m.name] = b.stats.snapshot(b.get())
	}
	return out
}

func (r *Replica) modelStats() *wire.ModelStats {
	if r.models == nil {
		return nil
	}
	return r.models.stats()
}
