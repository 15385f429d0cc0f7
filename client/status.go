package client

import (
	"time"

	"github.com/natserve/natserve/internal/wire"
)

// Deployment states, as in Ray Serve.
const (
	StatusUpdating     = "UPDATING"
	StatusHealthy      = "HEALTHY"
	StatusUnhealthy    = "UNHEALTHY"
	StatusDeployFailed = "DEPLOY_FAILED"
)

// Replica states.
const (
	ReplicaStarting = wire.ReplicaStarting
	ReplicaRunning  = wire.ReplicaRunning
	ReplicaStopping = wire.ReplicaStopping
	ReplicaStopped  = wire.ReplicaStopped
	ReplicaFailed   = wire.ReplicaFailed
)

// Deployment is a deployment as the control plane reports it.
type Deployment struct {
	Spec DeploymentSpec `json:"spec"`
	// Status is UPDATING, HEALTHY, UNHEALTHY or DEPLOY_FAILED.
	Status string `json:"status"`
	// Message says what a person can do about a status other than HEALTHY.
	Message string `json:"message,omitempty"`
	// Ready counts running, healthy replicas of the current version.
	Ready int `json:"ready"`
	// Target is the replica count the controller is driving towards.
	Target   int       `json:"target"`
	Replicas []Replica `json:"replicas,omitempty"`
	// Autoscaling reports the autoscaler's view, for autoscaled deployments.
	Autoscaling *AutoscalingStatus `json:"autoscaling,omitempty"`
}

// AutoscalingStatus is what the autoscaler decided and why.
type AutoscalingStatus struct {
	Target          int     `json:"target"`
	OngoingRequests float64 `json:"ongoing_requests"`
	LastDecision    string  `json:"last_decision,omitempty"`
}

// Replica is one replica as the control plane reports it.
type Replica struct {
	ID      string    `json:"id"`
	Node    string    `json:"node"`
	PID     int       `json:"pid,omitempty"`
	State   string    `json:"state"`
	Healthy bool      `json:"healthy"`
	Current bool      `json:"current"` // runs the deployment's current version and config
	Started time.Time `json:"started,omitzero"`
	Error   string    `json:"error,omitempty"`
}

// Node is a node agent as the control plane reports it.
type Node struct {
	Name     string   `json:"name"`
	Host     string   `json:"host"`
	PID      int      `json:"pid"`
	Classes  []string `json:"classes"`
	Alive    bool     `json:"alive"`
	Replicas int      `json:"replicas"`
	// MaxReplicas is the node's replica cap (0: none published).
	MaxReplicas int       `json:"max_replicas,omitempty"`
	LastSeen    time.Time `json:"last_seen,omitzero"`
}

// ClusterStatus is the answer of Status.
type ClusterStatus struct {
	Leader      string       `json:"leader"`
	Deployments []Deployment `json:"deployments"`
	Nodes       []Node       `json:"nodes"`
}
