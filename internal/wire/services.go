package wire

// The NATS services protocol (what `nats micro ls/info/stats` speak): every
// natserve service instance answers these subjects. Replicas answer as
// instances of the service named after their deployment, ingresses as
// instances of IngressService, controllers as ControllerService.
//
//	$SRV.<verb>               every service
//	$SRV.<verb>.<name>        every instance of service name
//	$SRV.<verb>.<name>.<id>   one instance
const (
	srvPrefix = "$SRV."

	SrvPing  = "PING"
	SrvInfo  = "INFO"
	SrvStats = "STATS"

	// IngressService is the service name of ingresses.
	IngressService = "natserve-ingress"
	// ControllerService is the service name of the control API.
	ControllerService = "natserve-controller"
)

// SrvVerbs are the services protocol verbs, in the order ServiceSubjects
// lists them.
var SrvVerbs = [...]string{SrvPing, SrvInfo, SrvStats}

// ServiceSubject is the services protocol subject of verb for service name
// ("" for all) and instance id ("" for all of name).
func ServiceSubject(verb, name, id string) string {
	s := srvPrefix + verb
	if name != "" {
		s += "." + name
		if id != "" {
			s += "." + id
		}
	}
	return s
}

// ServiceSubjects are the nine subjects one instance answers: each verb for
// all services, for its name, and for its id.
func ServiceSubjects(name, id string) []string {
	out := make([]string, 0, 3*len(SrvVerbs))
	for _, v := range SrvVerbs {
		out = append(out, ServiceSubject(v, "", ""), ServiceSubject(v, name, ""), ServiceSubject(v, name, id))
	}
	return out
}

// VerbMetrics asks a replica for its Prometheus metrics (protobuf-delimited
// exposition); its node agent merges them into the node's /metrics.
const VerbMetrics = "metrics"
