package worker

import (
	"slices"
	"strings"
	"testing"
)

func TestReplicaMaxProcs(t *testing.T) {
	for _, c := range []struct {
		v     string
		set   bool
		procs int
		want  string
	}{
		{"", false, 1, "1"}, {"", false, 2, "1"}, {"", false, 3, ""}, {"", false, 64, ""}, // small machines: one P
		{"4", true, 2, "4"}, {" 2 ", true, 64, "2"}, {"1", true, 64, "1"}, // set: as set
		{"0", true, 2, ""}, {"", true, 2, ""}, {"x", true, 2, ""}, {"-1", true, 2, ""}, // 0, empty or bad: Go's default
	} {
		if got := replicaMaxProcs(c.v, c.set, c.procs); got != c.want {
			t.Errorf("replicaMaxProcs(%q, %v, %d) = %q, want %q", c.v, c.set, c.procs, got, c.want)
		}
	}
}

// TestReplicaEnvMaxProcs: the agent's setting reaches the replica's
// environment, and 0 leaves GOMAXPROCS to Go.
func TestReplicaEnvMaxProcs(t *testing.T) {
	maxprocs := func(env []string) []string {
		var out []string
		for _, kv := range env {
			if strings.HasPrefix(kv, "GOMAXPROCS=") {
				out = append(out, kv)
			}
		}
		return out
	}
	t.Setenv(ReplicaMaxProcsEnv, "3")
	if got := maxprocs(replicaEnv(t.TempDir(), "")); !slices.Equal(got, []string{"GOMAXPROCS=3"}) {
		t.Errorf("%s=3: replica env has %v", ReplicaMaxProcsEnv, got)
	}
	t.Setenv(ReplicaMaxProcsEnv, "0")
	if got := maxprocs(replicaEnv(t.TempDir(), "")); len(got) != 0 {
		t.Errorf("%s=0: replica env has %v, want none", ReplicaMaxProcsEnv, got)
	}
}
