package wire

import "time"

// Batched health checks. Each health_check_period_s the controller asks a
// node agent, in one message on AgentSubject(node, AgentVerbHealth), to
// check the replicas of that node whose checks are due; the agent checks
// each over its local link with the replica process (the replica's ping:
// its status and the class's CheckHealth, bounded by the timeout) and
// answers with every result in one message. The broker carries two
// messages per node per batch instead of two per replica per period (at
// 1,000 replicas checked every 10 s: ~200 messages a second, most of an
// idle `natserve up`'s CPU). A controller whose batch finds no agent (gone,
// or credentials from before batching) pings each replica itself, as
// before.

// AgentVerbHealth is the node agent's batched health check verb.
const AgentVerbHealth = "health"

// HealthBatch is the body of a batched health check request.
type HealthBatch struct {
	// TimeoutUS bounds each check (health_check_timeout_s), in µs.
	TimeoutUS int64         `json:"timeout_us"`
	Checks    []HealthCheck `json:"checks"`
}

// HealthCheck names one replica to check.
type HealthCheck struct {
	Deployment string `json:"deployment"`
	Replica    string `json:"replica"`
}

// HealthResult is one replica's result: what its ping answered (Healthy,
// and CheckHealth's error if not), or, when it did not answer in time (or
// could not be asked), Answered false and why in Error.
type HealthResult struct {
	Replica  string `json:"replica"`
	Answered bool   `json:"answered,omitempty"`
	Healthy  bool   `json:"healthy,omitempty"`
	Error    string `json:"error,omitempty"`
}

// HealthResults is the body of the answer: one result per check asked.
type HealthResults struct {
	Results []HealthResult `json:"results"`
}

// Timeout is the batch's per-check timeout.
func (b HealthBatch) Timeout() time.Duration { return time.Duration(b.TimeoutUS) * time.Microsecond }
