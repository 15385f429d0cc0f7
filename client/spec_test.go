package client

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
)

// TestSpecBoundsMatchTheReplica: what Normalize accepts a replica accepts;
// what a replica would refuse (and so restart forever) Normalize refuses in
// one line naming the field and the bound.
func TestSpecBoundsMatchTheReplica(t *testing.T) {
	big := func(n int, c string) json.RawMessage { return json.RawMessage(`["` + strings.Repeat(c, n) + `"]`) }
	for _, tc := range []struct {
		name string
		spec DeploymentSpec
		want string // "" accepts
	}{
		{"1000 replicas", DeploymentSpec{NumReplicas: 1000}, ""},
		{"10000 replicas", DeploymentSpec{NumReplicas: 10000}, "num_replicas: 10000 is more than 1000"},
		{"autoscaling to 1000", DeploymentSpec{AutoscalingConfig: &AutoscalingConfig{MaxReplicas: 1000}}, ""},
		{"autoscaling to 10000", DeploymentSpec{AutoscalingConfig: &AutoscalingConfig{MaxReplicas: 10000}}, "autoscaling_config: max_replicas 10000 is more than 1000"},
		{"max_ongoing_requests at the limit", DeploymentSpec{MaxOngoingRequests: MaxOngoingRequestsLimit}, ""},
		{"max_ongoing_requests past the limit", DeploymentSpec{MaxOngoingRequests: MaxOngoingRequestsLimit + 1}, "max_ongoing_requests: 1048577 is out of range (1 to 1048576)"},
		{"90 KiB of init_args", DeploymentSpec{InitArgs: big(90<<10, "a")}, ""},
		{"200 KiB of init_args", DeploymentSpec{InitArgs: big(200<<10, "a")}, "init_args: init_args and user_config take 204804 bytes together, more than 98304"},
		// '<' is escaped to \u003c (6 bytes) on the way to the replica.
		{"20 KiB of '<' in init_args", DeploymentSpec{InitArgs: big(20<<10, "<")}, "init_args: init_args and user_config take 122884 bytes together"},
		{"both halves", DeploymentSpec{InitArgs: big(50<<10, "a"), UserConfig: big(50<<10, "a")}, "init_args: init_args and user_config take 102408 bytes together"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := tc.spec
			s.Name, s.Class = "d", "Model"
			err := s.Normalize()
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("refused: %v", err)
			case tc.want != "" && (!errors.Is(err, ErrInvalidSpec) || !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), "\n")):
				t.Fatalf("got %v, want one line containing %q", err, tc.want)
			}
		})
	}
}
