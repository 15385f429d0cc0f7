package wire

import "encoding/json"

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
)

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
}

// APICode classifies a control API failure.
type APICode string

// Control API error codes.
const (
	APINotFound     APICode = "not_found"
	APIInvalid      APICode = "invalid_spec"
	APIConflict     APICode = "conflict"
	APIUnknownClass APICode = "unknown_class"
	APINotLeader    APICode = "not_leader"
	APIInternal     APICode = "internal"
)

// MaxAPIRequest bounds a control API request body.
const MaxAPIRequest = 1 << 20
