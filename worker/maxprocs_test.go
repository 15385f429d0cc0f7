package worker

import (
	"slices"
	"strings"
	"testing"

	"github.com/natserve/natserve/internal/sysmon"
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
	if got := maxprocs(replicaEnv(t.TempDir(), "", false)); !slices.Equal(got, []string{"GOMAXPROCS=3"}) {
		t.Errorf("%s=3: replica env has %v", ReplicaMaxProcsEnv, got)
	}
	t.Setenv(ReplicaMaxProcsEnv, "0")
	if got := maxprocs(replicaEnv(t.TempDir(), "", false)); len(got) != 0 {
		t.Errorf("%s=0: replica env has %v, want none", ReplicaMaxProcsEnv, got)
	}
}

// TestReplicaEnvAwake: an awake replica's GODEBUG keeps the runtime's
// monitor awake unless the agent's own GODEBUG (as its user started it)
// sets schedtrace, which every replica then gets; the agent hands out at
// most awakeReplicas tokens.
func TestReplicaEnvAwake(t *testing.T) {
	godebug := func(env []string) string {
		for _, kv := range env {
			if v, ok := strings.CutPrefix(kv, "GODEBUG="); ok {
				return v
			}
		}
		return ""
	}
	for _, c := range []struct {
		user        string
		awake, want string // the replica's GODEBUG awake, and not
	}{
		{"", "updatemaxprocs=0," + sysmon.Setting, "updatemaxprocs=0"},
		{"http2debug=1", "updatemaxprocs=0," + sysmon.Setting + ",http2debug=1", "updatemaxprocs=0,http2debug=1"},
		{"schedtrace=0", "updatemaxprocs=0,schedtrace=0", "updatemaxprocs=0,schedtrace=0"},
	} {
		t.Setenv("GODEBUG", c.user)
		t.Setenv("NATSERVE_USER_GODEBUG", c.user) // as sysmon.Reexec leaves it
		if got := godebug(replicaEnv(t.TempDir(), "", true)); got != c.awake {
			t.Errorf("user GODEBUG %q, awake: replica GODEBUG %q, want %q", c.user, got, c.awake)
		}
		if got := godebug(replicaEnv(t.TempDir(), "", false)); got != c.want {
			t.Errorf("user GODEBUG %q: replica GODEBUG %q, want %q", c.user, got, c.want)
		}
	}
	// natserve up re-executed itself: its own GODEBUG has the setting, the
	// user's had none; a replica that is not awake does not inherit it.
	t.Setenv("GODEBUG", sysmon.Setting)
	t.Setenv("NATSERVE_USER_GODEBUG", "")
	if got := godebug(replicaEnv(t.TempDir(), "", false)); got != "updatemaxprocs=0" {
		t.Errorf("after natserve's re-exec: replica GODEBUG %q, want updatemaxprocs=0", got)
	}

	a := &Agent{awake: make(chan struct{}, awakeReplicas())}
	n := 0
	for i := 0; i < awakeReplicas()+3; i++ {
		if a.takeAwake() {
			n++
		}
	}
	if n != awakeReplicas() {
		t.Fatalf("%d replicas awake, want %d (one per CPU)", n, awakeReplicas())
	}
	a.releaseAwake()
	if !a.takeAwake() || a.takeAwake() {
		t.Error("a released token is not taken exactly once")
	}
}
