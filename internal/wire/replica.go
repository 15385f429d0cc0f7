package wire

// Replica states, as a node agent reports them in store.ReplicaState and the
// control plane in client.Replica.
const (
	ReplicaStarting = "STARTING"
	ReplicaRunning  = "RUNNING"
	ReplicaStopping = "STOPPING"
	ReplicaStopped  = "STOPPED"
	ReplicaFailed   = "FAILED"
)

// Exit codes of a replica process, read by the node agent and reported to
// the controller in store.ReplicaState.
const (
	ExitOK          = 0
	ExitError       = 1
	ExitConstructor = 3 // the constructor (or first reconfigure) failed; retrying may not help
)

// ReplicaStatus is a replica's JSON answer on ReplicaSubject(replica, VerbPing).
type ReplicaStatus struct {
	Replica    string `json:"replica"`
	Deployment string `json:"deployment"`
	Class      string `json:"class"`
	Version    string `json:"version,omitempty"`
	Node       string `json:"node,omitempty"`
	PID        int    `json:"pid"`
	Ongoing    int    `json:"ongoing"`
	MaxOngoing int    `json:"max_ongoing"`
	Draining   bool   `json:"draining,omitempty"`
	Healthy    bool   `json:"healthy"`
	Error      string `json:"error,omitempty"`
	// NotRun counts acknowledged requests the replica did not run because
	// the broker did not confirm the acknowledgment before its ack-by time
	// (answered CodeNotRun).
	NotRun uint64 `json:"not_run,omitempty"`
	// Batching describes the batched methods, by name.
	Batching map[string]BatchStats `json:"batching,omitempty"`
	// Models describes the models of a multiplexed replica.
	Models *ModelStats `json:"models,omitempty"`
}
