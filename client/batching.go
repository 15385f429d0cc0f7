package client

import (
	"fmt"
	"sort"

	"github.com/natserve/natserve/internal/wire"
)

// BatchConfig tunes one batched method (Ray Serve's @serve.batch). In a
// deployment spec's batching block, a field left out (zero, or nil for
// BatchWaitTimeoutS) keeps the value the class registered; changing the
// block reconfigures the replicas in place, without a restart.
type BatchConfig struct {
	// MaxBatchSize is the most calls one batch holds. It must not exceed
	// the deployment's max_ongoing_requests: a replica holds at most that
	// many calls, so a larger batch could never fill. Default: 10.
	MaxBatchSize int `json:"max_batch_size,omitempty"`
	// BatchWaitTimeoutS is how long the first call of a batch waits for
	// more before the batch runs anyway; 0 runs at once with what is
	// there. Default: 0.01.
	BatchWaitTimeoutS *float64 `json:"batch_wait_timeout_s,omitempty"`
	// MaxConcurrentBatches is how many batches of the method run at once
	// on one replica. Default: 1.
	MaxConcurrentBatches int `json:"max_concurrent_batches,omitempty"`
	// AdaptiveWait, when true, never waits for a longer queue than the
	// method has had lately, so that a lone caller pays no wait (see
	// worker.BatchOptions.AdaptiveWait). Default: false.
	AdaptiveWait *bool `json:"adaptive_wait,omitempty"`
}

// Batching defaults, as in Ray Serve, and bounds.
const (
	DefaultMaxBatchSize         = 10
	DefaultBatchWaitTimeoutS    = 0.01
	DefaultMaxConcurrentBatches = 1
	MaxBatchSizeLimit           = 1 << 16
	MaxBatchWaitTimeoutS        = 60.0
	MaxConcurrentBatchesLimit   = 1024
)

// Validate checks the fields that are set.
func (b BatchConfig) Validate() error {
	switch {
	case b.MaxBatchSize < 0 || b.MaxBatchSize > MaxBatchSizeLimit:
		return fmt.Errorf("max_batch_size %d is out of range (1 to %d)", b.MaxBatchSize, MaxBatchSizeLimit)
	case b.BatchWaitTimeoutS != nil && (*b.BatchWaitTimeoutS < 0 || *b.BatchWaitTimeoutS > MaxBatchWaitTimeoutS || *b.BatchWaitTimeoutS != *b.BatchWaitTimeoutS):
		return fmt.Errorf("batch_wait_timeout_s %v is out of range (0 to %v)", *b.BatchWaitTimeoutS, MaxBatchWaitTimeoutS)
	case b.MaxConcurrentBatches < 0 || b.MaxConcurrentBatches > MaxConcurrentBatchesLimit:
		return fmt.Errorf("max_concurrent_batches %d is out of range (1 to %d)", b.MaxConcurrentBatches, MaxConcurrentBatchesLimit)
	}
	return nil
}

// Merge returns b with the fields set in over replaced.
func (b BatchConfig) Merge(over BatchConfig) BatchConfig {
	if over.MaxBatchSize > 0 {
		b.MaxBatchSize = over.MaxBatchSize
	}
	if over.BatchWaitTimeoutS != nil {
		w := *over.BatchWaitTimeoutS
		b.BatchWaitTimeoutS = &w
	}
	if over.MaxConcurrentBatches > 0 {
		b.MaxConcurrentBatches = over.MaxConcurrentBatches
	}
	if over.AdaptiveWait != nil {
		a := *over.AdaptiveWait
		b.AdaptiveWait = &a
	}
	return b
}

// Seconds returns a pointer to s, for BatchConfig.BatchWaitTimeoutS.
func Seconds(s float64) *float64 { return &s }

// validateBatching checks a spec's batching block against its
// max_ongoing_requests.
func validateBatching(batching map[string]BatchConfig, maxOngoing int) error {
	names := make([]string, 0, len(batching))
	for m := range batching {
		names = append(names, m)
	}
	sort.Strings(names)
	for _, m := range names {
		b := batching[m]
		if m == "" {
			return fmt.Errorf("a method name is empty")
		}
		if err := wire.ValidateMethod(m); err != nil {
			return err
		}
		if err := b.Validate(); err != nil {
			return fmt.Errorf("%s: %v", m, err)
		}
		if b.MaxBatchSize > maxOngoing {
			return fmt.Errorf("%s: max_batch_size %d is more than max_ongoing_requests %d, so a replica never holds enough calls to fill a batch; raise max_ongoing_requests to at least %d", m, b.MaxBatchSize, maxOngoing, b.MaxBatchSize)
		}
	}
	return nil
}
