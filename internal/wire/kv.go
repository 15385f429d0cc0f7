package wire

import "strings"

// JetStream key-value buckets and their keys. internal/store creates and
// opens the buckets and holds the control plane's records; callers that only
// read a bucket (a client, the ingress) open it by these names.
//
//	natserve_deployments  <deployment>        client.DeploymentSpec  controller (from the API)
//	natserve_assignments  <node>.<replica>    store.Assignment       controller
//	natserve_replicas     <node>.<replica>    store.ReplicaState     node agent
//	natserve_nodes        <node>              store.Node             node agent (heartbeat)
//	natserve_leader       controller          store.Lease            the leading controller
//	natserve_graphs       <graph>             client.GraphSpec       controller (from the API)
//	natserve_routes       dep.<deployment>    RouteRecord            controller (what callers may read)
//	                      graph.<graph>       client.GraphSpec without init_args and user_config
//
// The broker enforces the writers (perms.go): a node agent's identity writes
// only keys that start with its node's name; callers read only
// natserve_routes.
const (
	BucketDeployments = "natserve_deployments"
	BucketAssignments = "natserve_assignments"
	BucketReplicas    = "natserve_replicas"
	BucketNodes       = "natserve_nodes"
	BucketLeader      = "natserve_leader"
	BucketGraphs      = "natserve_graphs"
	BucketRoutes      = "natserve_routes"
)

// LeaderKey is the key of the controller lease in BucketLeader.
const LeaderKey = "controller"

// AssignmentKey is the key of a replica's assignment on node in
// BucketAssignments.
func AssignmentKey(node, replica string) string { return node + "." + replica }

// SplitAssignmentKey splits an assignment key into node and replica.
func SplitAssignmentKey(key string) (node, replica string, ok bool) {
	return strings.Cut(key, ".")
}

// ReplicaKey is the key of a replica's state in BucketReplicas: under its
// node, so that only that node's agent may write it.
func ReplicaKey(node, replica string) string { return node + "." + replica }

// RouteRecord is what callers (the ingress, handles) may know of a
// deployment, in BucketRoutes: not its init_args or user_config, which
// hold secrets.
type RouteRecord struct {
	Deployment string `json:"deployment"`
	// Route is the route prefix; empty when the deployment has none.
	Route             string `json:"route,omitempty"`
	MaxQueuedRequests int    `json:"max_queued_requests,omitempty"`
	// CallbackURLs are the URL prefixes a stored request may name as its
	// callback.
	CallbackURLs []string `json:"callback_urls,omitempty"`
}

// Key prefixes in BucketRoutes.
const (
	RouteDeploymentPrefix = "dep."
	RouteGraphPrefix      = "graph."
)
