package wire

import (
	"strings"

	"github.com/nats-io/jwt/v2"
)

// NATS permissions of every natserve role, as allow-lists. The broker
// enforces them (they are signed into each role's user JWT by
// internal/auth), so a role can publish and subscribe to exactly these
// subjects and nothing else. Later features extend these templates
// deliberately; perms_test.go pins each list.
//
// Reading a KV bucket B takes STREAM.INFO (opening it), CONSUMER.CREATE
// with a filter (watching, listing keys) and DIRECT.GET (reading a key);
// the filter is part of the CONSUMER.CREATE subject and the server checks
// it against the consumer's config, so a filtered allow-list limits reads to
// a key prefix. Writing key K is a publish to $KV.B.K.

// Perms are one role's allow-lists.
type Perms struct {
	// Pub and Sub list the subjects the role may publish to and subscribe
	// to; a Sub entry "subject queue" allows only that queue group.
	Pub, Sub []string
	// Responses lets the role answer the requests it receives (one reply
	// per request) without a Pub entry for the reply subject.
	Responses bool
	// InboxPrefix is the role's own inbox prefix (nats.CustomInboxPrefix);
	// Sub allows InboxPrefix+".>".
	InboxPrefix string
}

// Role names.
const (
	RoleAdmin      = "admin"
	RoleController = "controller"
	RoleIngress    = "ingress"
	RoleClient     = "client"
	RoleNode       = "node"
	RoleReplica    = "replica"
)

// inboxRoot is the first token of every natserve inbox.
const inboxRoot = "_INBOX."

// InboxPrefix is the inbox prefix of a role ("_INBOX.client"), or of a
// per-name role (node, replica) with its name ("_INBOX.node.n1").
func InboxPrefix(role string, name ...string) string {
	if len(name) == 0 {
		return inboxRoot + role
	}
	return inboxRoot + role + "." + name[0]
}

func kvInfo(bucket string) string { return "$JS.API.STREAM.INFO.KV_" + bucket }

// kvRead allows reading the keys of bucket under prefix ("" or a key
// prefix ending in "." followed by a wildcard, e.g. "n1.*"), watches
// included: a watch is an ordered consumer with flow control, and the
// server stalls it (until the watch's heartbeats time out and it starts
// over, again and again) when its flow-control replies are refused —
// which happens as soon as a watch's initial values are large (a node's
// 1,000 assignments).
func kvRead(bucket, keys string) []string {
	filter := "$KV." + bucket + "." + keys
	return []string{
		kvInfo(bucket),
		"$JS.API.CONSUMER.CREATE.KV_" + bucket + ".*." + filter,
		"$JS.API.DIRECT.GET.KV_" + bucket + "." + filter,
		kvFlowControl(bucket),
	}
}

// kvFlowControl is where a watch of bucket answers the server's flow
// control ($JS.FC.<stream>.<id>.<seq>).
func kvFlowControl(bucket string) string { return "$JS.FC.KV_" + bucket + ".>" }

func kvWrite(bucket, keys string) string { return "$KV." + bucket + "." + keys }

// consumerDelete lets a role that watches a bucket delete its ordered
// consumers when a watch stops (consumer names are random).
const consumerDelete = "$JS.API.CONSUMER.DELETE.>"

// AdminPerms: everything (servectl, the Go client's control operations,
// the stock nats CLI).
func AdminPerms() Perms {
	return Perms{Pub: []string{">"}, Sub: []string{">"}, Responses: false, InboxPrefix: "_INBOX"}
}

// ControllerPerms: the control API, every KV bucket (it creates them),
// replica control subjects and events; never a deployment's subject. Its
// process's dashboard calls the control API and asks every service for
// its stats ($SRV.STATS) with the same identity.
func ControllerPerms() Perms {
	in := InboxPrefix(RoleController)
	return Perms{
		Pub: []string{
			"$JS.API.>", // create, open and watch the buckets
			"$JS.FC.>",  // the watches' flow control (kvRead)
			"$KV.>",     // write every key
			subjectRoot + "rep.>",
			APISubject("*"),
			ServiceSubject("*", "", ""),
			"$O.>",                              // the stored requests' large results (object store)
			"$JS.ACK.>",                         // the results stream's folder consumer
			AsyncCancelSubject("*"),             // the requests service's cancels (internal/durable)
			inboxRoot + ">", callbackRoot + ">", // stored requests' NATS callbacks (NATSCallbackAllowed)
			ReplicaExitSubject(ReplicaExitSenderController), // replicas it gave up (ack.go)
			AgentSubject("*", AgentVerbHealth),              // batched health checks (health.go)
		},
		Sub: append([]string{
			APISubject("*") + " natserve-controller",
			AsyncServiceSubject + " " + AsyncServiceQueue, // every controller process (internal/durable)
			subjectRoot + "evt.>",
			in + ".>",
			AsyncStreamCreatedSubjects, // request streams made on a first stored request (controlplane/async.go)
		}, serviceSubs(ControllerService)...),
		Responses:   true,
		InboxPrefix: in,
	}
}

// NodePerms: a node agent writes only its own node's keys and reads only
// its own assignments and replica states; it pings replicas to see them
// ready, and answers the controller's batched health checks of its
// replicas (health.go).
func NodePerms(node string) Perms {
	in := InboxPrefix(RoleNode, node)
	pub := []string{kvInfo(BucketNodes), kvWrite(BucketNodes, node), kvWrite(BucketReplicas, node+".*")}
	pub = append(pub, kvRead(BucketAssignments, node+".*")...)
	pub = append(pub, kvRead(BucketReplicas, node+".*")...)
	pub = append(pub, consumerDelete, ReplicaSubject("*", "*", VerbPing), ReplicaSubject("*", "*", VerbAdopt), ReplicaSubject("*", "*", VerbMetrics),
		ReplicaExitSubject(node)) // its replicas' exits (ack.go)
	return Perms{Pub: pub, Sub: []string{in + ".>", AgentSubject(node, AgentVerbHealth)}, Responses: true, InboxPrefix: in}
}

// callerPerms is what calling deployments takes: publishing to any
// deployment's subject, asking the controller to wake one, reporting the
// caller's queue under sender, and reading the routes bucket (routes,
// max_queued_requests, graphs without their arguments).
func callerPerms(sender, inbox string) Perms {
	pub := []string{DeploymentSubject("*"), muxSubjects("*"), APISubject(APIWake), EventSubject(EventQueue, sender),
		InboxPrefix(RoleReplica) + ".>",       // stream credit and cancel, on the replica's inbox (stream.go)
		ReplicaSubject("*", "*", VerbRequest), // a resend to one replica alone (ack.go)
		ReplicaSubject("*", "*", VerbCancel)}  // cancel a call whose caller went away (subjects.go)
	pub = append(pub, kvRead(BucketRoutes, ">")...)
	pub = append(pub, consumerDelete)
	pub = append(pub, asyncCallerPerms()...)
	// Replica exits fail the calls an exited replica acknowledged (ack.go).
	return Perms{Pub: pub, Sub: []string{inbox + ".>", ReplicaExitSubjects}, InboxPrefix: inbox}
}

// asyncCallerPerms is what submitting, reading, waiting for and
// cancelling stored requests takes: publishing to a deployment's request
// stream (any deployment's, like calling it) and asking the requests
// service, which answers by id only. Request ids are bearer capabilities,
// and a permission cannot tell one record's key from a wildcard over all
// of them ("req.*" in a consumer filter, a direct get or a subscription
// matches an allow-list entry "req.*"), so callers get nothing of the
// requests bucket, the results stream or the result object store: no
// listing, no enumeration, no reads but through the service. Listing is
// the admin's.
func asyncCallerPerms() []string {
	return []string{AsyncSubject("*"), AsyncServiceSubject}
}

// IngressPerms: call deployments, read routes, wake, report its queue,
// answer the services protocol as IngressService.
func IngressPerms() Perms {
	p := callerPerms(RoleIngress, InboxPrefix(RoleIngress))
	p.Sub = append(p.Sub, serviceSubs(IngressService)...)
	p.Responses = true
	return p
}

// serviceSubs are the services protocol subjects ($SRV.<verb>,
// $SRV.<verb>.<name>, $SRV.<verb>.<name>.<id>) an instance of service
// name answers.
func serviceSubs(name string) []string {
	return []string{ServiceSubject("*", "", ""), ServiceSubject("*", name, ""), ServiceSubject("*", name, "*")}
}

// ClientPerms: call deployments (and graphs) only.
func ClientPerms() Perms {
	return callerPerms(RoleClient, InboxPrefix(RoleClient))
}

// ReplicaPerms: one identity per deployment. A replica receives only its
// own deployment's subject in its own queue group and its own control
// subjects, answers through reply subjects, publishes its own load
// reports, and calls other deployments as a handle does.
func ReplicaPerms(deployment string) Perms {
	p := callerPerms(QueueSender(deployment), InboxPrefix(RoleReplica, deployment))
	// Stream frames are several messages on one reply subject, which a
	// response permission (one message per request) does not allow, and an
	// unlimited one would keep every reply subject in the server for its
	// whole TTL; so a replica may publish to inboxes, which it can neither
	// read nor enumerate (they are random).
	p.Pub = append(p.Pub, EventSubject(EventLoad, deployment), inboxRoot+">")
	// Stored requests of its own deployment: pull from its stream, ack,
	// publish results, read its results' last events.
	stream := AsyncStream(deployment)
	p.Pub = append(p.Pub,
		"$JS.API.CONSUMER.INFO."+stream+"."+AsyncConsumer, "$JS.API.CONSUMER.MSG.NEXT."+stream+"."+AsyncConsumer,
		"$JS.ACK."+stream+".>", aresRoot+deployment+".*",
		"$JS.API.STREAM.INFO."+AsyncResultsStream, "$JS.API.DIRECT.GET."+AsyncResultsStream+"."+aresRoot+deployment+".*")
	// The request consumer's leader-elected advisory: an idle replica's
	// long pull may be lost at a former leader without a status; the
	// advisory makes it pull again at once (worker/durable.go).
	// And the consumer's creation: the stream and consumer are made on the
	// deployment's first stored request, and a replica that found none
	// waits for this instead of looking again and again.
	p.Sub = append(p.Sub, AsyncCancelSubject(deployment), AsyncLeaderSubject(deployment), AsyncConsumerCreatedSubject(deployment))
	p.Sub = append([]string{
		DeploymentSubject(deployment) + " " + QueueGroup(deployment),
		muxSubjects(deployment) + " " + QueueGroup(deployment),
		ReplicaSubject(deployment, "*", "*"),
	}, p.Sub...)
	p.Sub = append(p.Sub, serviceSubs(deployment)...)
	// No response permission: every caller's reply subject is an inbox,
	// which the Pub entry above already allows. With one, the broker
	// checks and caches each request's (unique) reply subject against the
	// replica's allow-list as it delivers the request: one cache miss and
	// prune per request on the hot path (issue 18's profile: 2.6% of natserve
	// up's CPU).
	p.Responses = false
	return p
}

// QueueSender is the sender token of a replica's queue reports.
func QueueSender(deployment string) string { return "dep." + deployment }

// InboxPrefixFromAllow returns the inbox prefix a sub allow-list grants
// (its "_INBOX.….>" entry), or "" when it allows any inbox.
func InboxPrefixFromAllow(subAllow []string) string {
	for _, s := range subAllow {
		if s == ">" || s == "_INBOX.>" {
			return ""
		}
	}
	for _, s := range subAllow {
		if strings.HasPrefix(s, inboxRoot) && strings.HasSuffix(s, ".>") {
			return strings.TrimSuffix(s, ".>")
		}
	}
	return ""
}

// CredsInboxPrefix returns the inbox prefix the user JWT in a creds file's
// text allows, or "" when it allows any (or cannot be read: the server
// then refuses the connection with a clearer error).
func CredsInboxPrefix(creds []byte) string {
	tok, err := jwt.ParseDecoratedJWT(creds)
	if err != nil {
		return ""
	}
	uc, err := jwt.DecodeUserClaims(tok)
	if err != nil {
		return ""
	}
	return InboxPrefixFromAllow(uc.Sub.Allow)
}
