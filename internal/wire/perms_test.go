package wire

import (
	"reflect"
	"testing"
)

// TestPerms pins every role's exact allow-lists: a change here is a change
// of what a role may do, and must be deliberate.
func TestPerms(t *testing.T) {
	caller := func(sender string) []string {
		return []string{
			"natserve.dep.*", "natserve.mux.*.*", "natserve.api.wake", "natserve.evt.queue." + sender, "_INBOX.replica.>",
			"natserve.rep.*.*.req", "natserve.rep.*.*.cancel",
			"$JS.API.STREAM.INFO.KV_natserve_routes",
			"$JS.API.CONSUMER.CREATE.KV_natserve_routes.*.$KV.natserve_routes.>",
			"$JS.API.DIRECT.GET.KV_natserve_routes.$KV.natserve_routes.>",
			"$JS.FC.KV_natserve_routes.>",
			"$JS.API.CONSUMER.DELETE.>",
			"natserve.async.*", "natserve.areq",
		}
	}
	for _, tc := range []struct {
		role string
		got  Perms
		want Perms
	}{
		{"admin", AdminPerms(), Perms{Pub: []string{">"}, Sub: []string{">"}, InboxPrefix: "_INBOX"}},
		{"controller", ControllerPerms(), Perms{
			Pub: []string{"$JS.API.>", "$JS.FC.>", "$KV.>", "natserve.rep.>", "natserve.api.*", "$SRV.*", "$O.>", "$JS.ACK.>", "natserve.acancel.*", "_INBOX.>", "natserve.cb.>", "natserve.evt.exit.controller", "natserve.agent.*.health"},
			Sub: []string{"natserve.api.* natserve-controller", "natserve.areq natserve-requests", "natserve.evt.>", "_INBOX.controller.>", "$JS.EVENT.ADVISORY.STREAM.CREATED.*",
				"$SRV.*", "$SRV.*.natserve-controller", "$SRV.*.natserve-controller.*"},
			Responses: true, InboxPrefix: "_INBOX.controller",
		}},
		{"node n1", NodePerms("n1"), Perms{
			Pub: []string{
				"$JS.API.STREAM.INFO.KV_natserve_nodes", "$KV.natserve_nodes.n1", "$KV.natserve_replicas.n1.*",
				"$JS.API.STREAM.INFO.KV_natserve_assignments",
				"$JS.API.CONSUMER.CREATE.KV_natserve_assignments.*.$KV.natserve_assignments.n1.*",
				"$JS.API.DIRECT.GET.KV_natserve_assignments.$KV.natserve_assignments.n1.*",
				"$JS.FC.KV_natserve_assignments.>",
				"$JS.API.STREAM.INFO.KV_natserve_replicas",
				"$JS.API.CONSUMER.CREATE.KV_natserve_replicas.*.$KV.natserve_replicas.n1.*",
				"$JS.API.DIRECT.GET.KV_natserve_replicas.$KV.natserve_replicas.n1.*",
				"$JS.FC.KV_natserve_replicas.>",
				"$JS.API.CONSUMER.DELETE.>", "natserve.rep.*.*.ping", "natserve.rep.*.*.adopt", "natserve.rep.*.*.metrics", "natserve.evt.exit.n1",
			},
			Sub: []string{"_INBOX.node.n1.>", "natserve.agent.n1.health"}, Responses: true, InboxPrefix: "_INBOX.node.n1",
		}},
		{"ingress", IngressPerms(), Perms{Pub: caller("ingress"), Sub: []string{"_INBOX.ingress.>", "natserve.evt.exit.>",
			"$SRV.*", "$SRV.*.natserve-ingress", "$SRV.*.natserve-ingress.*"}, Responses: true, InboxPrefix: "_INBOX.ingress"}},
		{"client", ClientPerms(), Perms{Pub: caller("client"), Sub: []string{"_INBOX.client.>", "natserve.evt.exit.>"}, InboxPrefix: "_INBOX.client"}},
		{"replica of A", ReplicaPerms("A"), Perms{
			Pub: append(caller("dep.A"), "natserve.evt.load.A", "_INBOX.>",
				"$JS.API.CONSUMER.INFO.natserve_req_A.replicas", "$JS.API.CONSUMER.MSG.NEXT.natserve_req_A.replicas",
				"$JS.ACK.natserve_req_A.>", "natserve.ares.A.*",
				"$JS.API.STREAM.INFO.natserve_results", "$JS.API.DIRECT.GET.natserve_results.natserve.ares.A.*"),
			Sub: []string{"natserve.dep.A A", "natserve.mux.A.* A", "natserve.rep.A.*.*", "_INBOX.replica.A.>", "natserve.evt.exit.>",
				"natserve.acancel.A", "$JS.EVENT.ADVISORY.CONSUMER.LEADER_ELECTED.natserve_req_A.replicas", "$JS.EVENT.ADVISORY.CONSUMER.CREATED.natserve_req_A.replicas", "$SRV.*", "$SRV.*.A", "$SRV.*.A.*"},
			Responses: false, InboxPrefix: "_INBOX.replica.A",
		}},
	} {
		t.Run(tc.role, func(t *testing.T) {
			if !reflect.DeepEqual(tc.got, tc.want) {
				t.Errorf("perms of %s:\n got %#v\nwant %#v", tc.role, tc.got, tc.want)
			}
			if p := InboxPrefixFromAllow(tc.got.Sub); p != tc.want.InboxPrefix && !(tc.role == "admin" && p == "") {
				t.Errorf("inbox prefix from the allow-list: %q, want %q", p, tc.want.InboxPrefix)
			}
		})
	}
}
