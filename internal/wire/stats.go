package wire

// Histogram is a cumulative-free histogram: Counts[i] counts observations
// at most Bounds[i] (and above Bounds[i-1]); the last count is above every
// bound. It is carried in a replica's status and turned into Prometheus
// histograms by whoever exports them.
type Histogram struct {
	Bounds []float64 `json:"bounds"`
	Counts []int64   `json:"counts"`
	Count  int64     `json:"count"`
	Sum    float64   `json:"sum"`
}

// NewHistogram returns an empty histogram with bounds (ascending).
func NewHistogram(bounds []float64) Histogram {
	return Histogram{Bounds: bounds, Counts: make([]int64, len(bounds)+1)}
}

// Observe adds v.
func (h *Histogram) Observe(v float64) {
	i := 0
	for i < len(h.Bounds) && v > h.Bounds[i] {
		i++
	}
	h.Counts[i]++
	h.Count++
	h.Sum += v
}

// Mean is Sum/Count (0 when empty).
func (h *Histogram) Mean() float64 {
	if h.Count == 0 {
		return 0
	}
	return h.Sum / float64(h.Count)
}

// Clone returns a copy that shares nothing with h.
func (h *Histogram) Clone() Histogram {
	c := *h
	c.Counts = append([]int64(nil), h.Counts...)
	return c
}

// BatchStats describe one batched method of a replica: its parameters now,
// batch sizes, and how long calls waited for their batch (milliseconds).
type BatchStats struct {
	MaxBatchSize         int       `json:"max_batch_size"`
	BatchWaitTimeoutS    float64   `json:"batch_wait_timeout_s"`
	MaxConcurrentBatches int       `json:"max_concurrent_batches"`
	Size                 Histogram `json:"size"`
	WaitMS               Histogram `json:"wait_ms"`
}

// ModelStats describe the models a multiplexed replica holds.
type ModelStats struct {
	Max           int       `json:"max_models"`
	Loaded        []string  `json:"loaded"` // least recently used first
	Loads         int64     `json:"loads"`
	Unloads       int64     `json:"unloads"`
	LoadFailures  int64     `json:"load_failures"`
	LoadLatencyMS Histogram `json:"load_latency_ms"`
}
