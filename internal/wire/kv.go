package wire

import "strings"

// JetStream key-value buckets and their keys. internal/store creates and
// opens the buckets and holds the control plane's records; callers that only
// read a bucket (a client, the ingress) open it by these names.
//
//	natserve_deployments  <deployment>        client.DeploymentSpec  controller (from the API)
//	natserve_assignments  <node>.<replica>    store.Assignment       controller
//	natserve_replicas     <replica>           store.ReplicaState     node agent
//	natserve_nodes        <node>              store.Node             node agent (heartbeat)
//	natserve_leader       controller          store.Lease            the leading controller
//	natserve_graphs       <graph>             client.GraphSpec       controller (from the API)
const (
	BucketDeployments = "natserve_deployments"
	BucketAssignments = "natserve_assignments"
	BucketReplicas    = "natserve_replicas"
	BucketNodes       = "natserve_nodes"
	BucketLeader      = "natserve_leader"
	BucketGraphs      = "natserve_graphs"
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
