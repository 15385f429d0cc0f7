package wire

import "strings"

// Subjects and queue groups. Every subject natserve uses is built here.
//
//	natserve.dep.<deployment>          requests to a deployment; queue group <deployment>
//	natserve.mux.<deployment>.<token>  multiplexed requests (multiplex.go); same queue group
//	natserve.rep.<dep>.<replica>.<verb> control of one replica (ping, reconfigure, stop)
//	natserve.api.<verb>                the controller's control API
//	natserve.agent.<node>.<verb>       commands to one node agent
//	natserve.evt.<kind>.<sender>       events, with their sender in the subject:
//	                                   load.<deployment>, queue.<ingress|client|dep.<deployment>>
const (
	subjectRoot = "natserve."
)

// DeploymentSubject is the subject a deployment's replicas serve on.
func DeploymentSubject(deployment string) string { return subjectRoot + "dep." + deployment }

// QueueGroup is the queue group the replicas of a deployment join, so that
// each request reaches exactly one of them.
func QueueGroup(deployment string) string { return deployment }

// ReplicaSubject is the control subject of one replica of deployment for
// verb. The deployment is in the subject so that a replica's identity may
// subscribe to its own deployment's control subjects only.
func ReplicaSubject(deployment, replica, verb string) string {
	return subjectRoot + "rep." + deployment + "." + replica + "." + verb
}

// Replica control verbs.
const (
	VerbPing        = "ping"
	VerbReconfigure = "reconfigure"
	VerbStop        = "stop"
	VerbAdopt       = "adopt" // a node agent takes over a running replica
	// VerbRequest: a request for this replica alone (a caller resending one
	// that another replica did not acknowledge); served like the
	// deployment's subject.
	VerbRequest = "req"
	// VerbCancel: the caller of a request this replica acknowledged went
	// away; the payload is "<reply subject> <request id>" (both must match
	// the running call, so that only its caller, who knows its inbox, can
	// cancel it). The call's context is cancelled.
	VerbCancel = "cancel"
)

// APISubject is the control API subject for verb.
func APISubject(verb string) string { return subjectRoot + "api." + verb }

// APISubjects is the wildcard the controller serves the control API on, in
// queue group APIQueueGroup so that each request reaches one controller.
const (
	APISubjects   = subjectRoot + "api.*"
	APIQueueGroup = "natserve-controller"
)

// APIVerb is the verb of a control API subject ("" if subject is not one).
func APIVerb(subject string) string {
	v, ok := strings.CutPrefix(subject, subjectRoot+"api.")
	if !ok {
		return ""
	}
	return v
}

// AgentSubject is the subject of a node agent's command verb.
func AgentSubject(node, verb string) string { return subjectRoot + "agent." + node + "." + verb }

// EventSubject is the subject events of kind are published on by sender
// (a deployment for load reports; a role or "dep.<deployment>" for queue
// reports). The broker lets each identity publish under its own sender only.
func EventSubject(kind, sender string) string { return subjectRoot + "evt." + kind + "." + sender }

// EventSubjects is the subject filter of every event of kind.
func EventSubjects(kind string) string { return subjectRoot + "evt." + kind + ".>" }
