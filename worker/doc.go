// Package worker is the side of natserve that runs user code: the SDK a
// program uses to define deployment classes, the replica runtime that serves
// one deployment in its own OS process, and the node agent that starts and
// watches replica processes on a machine.
//
// A user's program registers classes by name and hands control to natserve:
//
//	func main() {
//		var reg worker.Registry
//		reg.Class("Model", NewModel)         // constructor: init args → *Model
//		reg.Func("preprocess", Preprocess)   // a plain function is a deployment too
//		worker.Main(&reg)
//	}
//
// Options serve ML models: Batched gathers concurrent calls of a method into
// one call on a slice (Ray Serve's @serve.batch), Multiplexed keeps an LRU
// of models per replica loaded on demand (@serve.multiplexed):
//
//	reg.Class("Model", NewModel,
//		worker.Batched("Predict", worker.BatchOptions{MaxBatchSize: 8, BatchWaitTimeout: 20 * time.Millisecond}),
//		worker.Multiplexed("LoadModel", 3))
//
// The same binary is the node agent and, re-executed by it, each replica.
// Requests enter a replica from its deployment's NATS queue group, run the
// class's methods with at most max_ongoing_requests at once, and leave as
// replies; see package wire for the bytes.
package worker
