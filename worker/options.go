package worker

import (
	"fmt"
	"reflect"
	"time"
)

// ClassOption changes how a registered class is served: Batched and
// Multiplexed.
type ClassOption func(*classOptions) error

type classOptions struct {
	batched map[string]BatchOptions
	mux     *muxOptions
}

func buildOptions(opts []ClassOption) (*classOptions, error) {
	co := &classOptions{batched: map[string]BatchOptions{}}
	for _, o := range opts {
		if o == nil {
			continue
		}
		if err := o(co); err != nil {
			return nil, err
		}
	}
	return co, nil
}

// check runs once the class's methods are known: every batched method
// exists, and the multiplexing loader is a method of the right shape,
// which handles cannot call.
func (co *classOptions) check(c *class) error {
	for name := range co.batched {
		return fmt.Errorf("Batched(%q): the class has no exported method %s", name, name)
	}
	if co.mux == nil {
		return nil
	}
	m := c.methods[co.mux.loader]
	if m == nil || hook(co.mux.loader) {
		return fmt.Errorf("Multiplexed(%q): the class has no exported method %s", co.mux.loader, co.mux.loader)
	}
	if len(m.in) != 1 || m.in[0].Kind() != reflect.String || !m.hasResult || m.batch != nil {
		return fmt.Errorf("Multiplexed(%q): the loader must be %s(ctx, modelID string) (M, error), not %v", co.mux.loader, co.mux.loader, m.fn.Type())
	}
	for name, mm := range c.methods {
		if mm == m {
			delete(c.methods, name) // the loader and its snake_case alias
		}
	}
	c.mux = &muxSpec{loader: m, max: co.mux.max}
	return nil
}

// BatchOptions are the batching parameters a class registers for a
// method (Ray Serve's @serve.batch arguments); a deployment's batching
// block and the setters (SetMaxBatchSize, …) change them per replica.
type BatchOptions struct {
	// MaxBatchSize is the most calls one batch holds. Default: 10.
	MaxBatchSize int
	// BatchWaitTimeout is how long the first call of a batch waits for
	// more; negative means no wait. Default: 10ms.
	BatchWaitTimeout time.Duration
	// MaxConcurrentBatches is how many batches run at once. Default: 1.
	MaxConcurrentBatches int
	// AdaptiveWait never waits for a longer queue than the method has had
	// lately (the peak over the last 1 to 2 s): a batch runs as soon as
	// the queue is that long, so a lone caller pays no wait, while callers
	// that come many at once still fill batches. It never waits longer
	// than BatchWaitTimeout; when a burst ends, its last calls may wait
	// that long, as with the fixed wait. Default: false (Ray Serve's
	// fixed wait).
	AdaptiveWait bool
}

// Batched makes method a batched method: natserve gathers concurrent calls
// to it, up to MaxBatchSize or until BatchWaitTimeout passes, whichever
// comes first, and calls it once with all of them. The method takes a
// slice with one element per call (after an optional context) and returns
// a slice with one result per call, in the same order:
//
//	func (m *Model) Predict(ctx context.Context, xs []float64) []float64
//	func (m *Model) Predict(ctx context.Context, xs []float64) ([]float64, error)   // the error fails every call
//	func (m *Model) Predict(ctx context.Context, xs []float64) ([]float64, []error) // errs[i] fails call i only
//
// The element may be *Request (HTTP requests and handle calls alike).
// Callers call it with one element, as an ordinary method. A panic fails
// every call of the batch with a panic error; the replica keeps serving.
// Batches never mix multiplexed model ids. A replica runs at most
// max_ongoing_requests calls at once, so max_ongoing_requests must be at
// least MaxBatchSize for a batch to fill (and MaxBatchSize ×
// MaxConcurrentBatches for that many full batches to run at once).
func Batched(method string, opts BatchOptions) ClassOption {
	return func(co *classOptions) error {
		if _, dup := co.batched[method]; dup {
			return fmt.Errorf("Batched(%q) is given twice", method)
		}
		if opts.MaxBatchSize < 0 || opts.MaxConcurrentBatches < 0 {
			return fmt.Errorf("Batched(%q): negative MaxBatchSize or MaxConcurrentBatches", method)
		}
		co.batched[method] = opts
		return nil
	}
}

// Multiplexed makes the class serve many models per deployment (Ray
// Serve's @serve.multiplexed): loader names a method
//
//	func (c *Class) LoadModel(ctx context.Context, modelID string) (*MyModel, error)
//
// that loads a model; each replica keeps at most maxModels of them and
// unloads the least recently used one (calling its Close or Unload method,
// if it has one) to make room. Every request must name a model (the HTTP
// header serve_multiplexed_model_id, or client.MultiplexedModelID on a
// handle); one without gets 400. Methods find the id with
// MultiplexedModelID(ctx) and the model with Model[*MyModel](ctx). Requests
// go to a replica that holds the model when one does, then to one with a
// free slot, then to any.
func Multiplexed(loader string, maxModels int) ClassOption {
	return func(co *classOptions) error {
		if maxModels < 1 {
			return fmt.Errorf("Multiplexed(%q, %d): max models per replica must be at least 1", loader, maxModels)
		}
		if co.mux != nil {
			return fmt.Errorf("Multiplexed is given twice")
		}
		co.mux = &muxOptions{loader: loader, max: maxModels}
		return nil
	}
}

type muxOptions struct {
	loader string
	max    int
}
