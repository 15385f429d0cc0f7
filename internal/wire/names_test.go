package wire_test

import (
	"testing"

	"github.com/natserve/natserve/internal/wire"
)

// Every subject is built from valid names only; these check that what is
// built can be taken apart again, for any names ValidateName accepts.

func TestAPIVerb(t *testing.T) {
	for _, verb := range []string{wire.APIDeploy, wire.APIWake, wire.APIStatus} {
		if got := wire.APIVerb(wire.APISubject(verb)); got != verb {
			t.Errorf("APIVerb(APISubject(%q)) = %q", verb, got)
		}
	}
	for _, s := range []string{"", "natserve.api", "natserve.rep.x.ping", "other.api.deploy"} {
		if got := wire.APIVerb(s); got != "" {
			t.Errorf("APIVerb(%q) = %q, want empty", s, got)
		}
	}
}

func FuzzAssignmentKey(f *testing.F) {
	f.Add("node-1", "r1")
	f.Add("n", "hello-abc_1")
	f.Fuzz(func(t *testing.T, node, replica string) {
		if wire.ValidateName("node", node) != nil || wire.ValidateName("replica", replica) != nil {
			return
		}
		n, r, ok := wire.SplitAssignmentKey(wire.AssignmentKey(node, replica))
		if !ok || n != node || r != replica {
			t.Fatalf("SplitAssignmentKey(AssignmentKey(%q, %q)) = %q, %q, %v", node, replica, n, r, ok)
		}
	})
}

func FuzzAPIVerb(f *testing.F) {
	f.Add("deploy")
	f.Add("a.b")
	f.Fuzz(func(t *testing.T, verb string) {
		if wire.ValidateName("verb", verb) != nil {
			return
		}
		if got := wire.APIVerb(wire.APISubject(verb)); got != verb {
			t.Fatalf("APIVerb(APISubject(%q)) = %q", verb, got)
		}
	})
}
