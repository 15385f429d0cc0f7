package wire

import (
	"encoding/json"
	"time"
)

// Control API verbs, served on APISubject(verb) by the leading controller.
// Requests and replies are JSON.
const (
	APIDeploy = "deploy" // body: DeploymentSpec; reply: Deployment
	APIDelete = "delete" // body: APIName
	APIList   = "list"   // reply: []Deployment
	APIGet    = "get"    // body: APIName; reply: Deployment
	APIScale  = "scale"  // body: APIScaleRequest
	APIStatus = "status" // reply: ClusterStatus
	APIApply  = "apply"  // body: APIApplyRequest; reply: APIApplyResult
	APIGraph  = "graph"  // body: GraphSpec; reply: Deployment (the graph)
	APIWake   = "wake"   // body: APIName; reply: APIWakeReply
)

// APIWakeReply answers a caller that found no replica: Waking is true when
// the deployment is scaled to zero and a replica is being started for it.
type APIWakeReply struct {
	Waking bool `json:"waking"`
}

// Load events, published by replicas and callers on EventSubject(kind).
const (
	EventLoad  = "load"  // LoadReport from a replica
	EventQueue = "queue" // QueueReport from a caller (an ingress, a handle)
)

// LoadReport is a replica's ongoing requests, averaged over Window.
type LoadReport struct {
	Replica    string  `json:"r"`
	Deployment string  `json:"d"`
	Ongoing    float64 `json:"o"`
	WindowMS   int64   `json:"w"`
}

// QueueReport is a caller's requests waiting for a free replica, per
// deployment, averaged over Window.
type QueueReport struct {
	Caller   string             `json:"c"`
	Queued   map[string]float64 `json:"q"`
	WindowMS int64              `json:"w"`
}

// APIApplyRequest applies a whole set of deployments at once: all are
// validated before any is written.
type APIApplyRequest struct {
	Deployments []json.RawMessage `json:"deployments"`
	Graphs      []json.RawMessage `json:"graphs,omitempty"`
	// Prune deletes the deployments the set does not list.
	Prune bool `json:"prune,omitempty"`
	// DryRun validates without writing.
	DryRun bool `json:"dry_run,omitempty"`
}

// APIApplyResult says what an apply changed.
type APIApplyResult struct {
	Created   []string `json:"created"`
	Updated   []string `json:"updated"`
	Unchanged []string `json:"unchanged"`
	Deleted   []string `json:"deleted"`
}

// APIName names a deployment in a control request.
type APIName struct {
	Name string `json:"name"`
}

// APIScaleRequest is the body of a scale request.
type APIScaleRequest struct {
	Name        string `json:"name"`
	NumReplicas int    `json:"num_replicas"`
}

// APIReply is every control API reply: Data on success, Error and Code on
// failure.
type APIReply struct {
	Data  json.RawMessage `json:"data,omitempty"`
	Error string          `json:"error,omitempty"`
	Code  APICode         `json:"code,omitempty"`
	// Name is the deployment or graph an error is about, when one is (an
	// apply names which item of the set failed).
	Name string `json:"name,omitempty"`
}

// APICode classifies a control API failure.
type APICode string

// Control API error codes.
const (
	APINotFound     APICode = "not_found"
	APIInvalid      APICode = "invalid_spec"
	APIInvalidGraph APICode = "invalid_graph"
	APIConflict     APICode = "conflict"
	APIUnknownClass APICode = "unknown_class"
	APINotLeader    APICode = "not_leader"
	APIInternal     APICode = "internal"
)

// MaxAPIRequest bounds a control API request body.
const MaxAPIRequest = 1 << 20

// APITimeout is how long a control API request about items deployments
// and graphs may take, on both sides (the caller's wait and the
// controller's work): 10 s, plus 50 ms an item past the first, so that an
// apply of 1,000 deployments (a KV write each) gets 60 s on a loaded
// machine rather than failing at a fixed 10 s.
func APITimeout(items int) time.Duration {
	return 10*time.Second + time.Duration(max(items-1, 0))*50*time.Millisecond
}
