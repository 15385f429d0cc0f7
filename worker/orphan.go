package worker

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/natserve/natserve/internal/wire"
)

// DefaultOrphanTimeout is how long a replica outlives its node agent, and
// NATS, before it drains and exits.
const DefaultOrphanTimeout = 5 * time.Minute

// Orphans. A node agent that stops without -stop-replicas-on-exit (or is
// killed) leaves its replicas serving, and a restarted agent of the same
// node adopts them. A replica that no agent adopts within the orphan
// timeout drains and exits; so does one that cannot reach NATS for that
// long.
//
// The replica knows its agent by process: the agent that starts it passes
// its pid in the spec, and an agent that adopts it sends its pid in an
// adopt message. The replica records the process's start time (from
// /proc), so a recycled pid does not pass for the agent. A watchdog checks
// every 5 s (a quarter of the timeout if that is shorter) with one
// syscall and one small file read: nothing on the request path, no message
// while idle, and it works with NATS down or the agent killed with -9.

// agentRef is the node agent process a replica answers to.
type agentRef struct {
	pid   int
	start string // the process's start time in clock ticks since boot; "" if unknown
}

// newAgentRef reads pid's start time; ok is false if pid does not run.
func newAgentRef(pid int) (agentRef, bool) {
	if pid <= 0 || syscall.Kill(pid, 0) == syscall.ESRCH {
		return agentRef{}, false
	}
	return agentRef{pid: pid, start: processStart(pid)}, true
}

// alive reports whether the agent process still runs.
func (a agentRef) alive() bool {
	if syscall.Kill(a.pid, 0) == syscall.ESRCH {
		return false
	}
	if a.start == "" { // no /proc: the pid is all there is
		return true
	}
	return processStart(a.pid) == a.start
}

// processStart returns field 22 of /proc/PID/stat (the start time), or ""
// when there is none; a zombie counts as gone.
func processStart(pid int) string {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return ""
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')') // comm may hold spaces and parentheses
	if i < 0 {
		return ""
	}
	f := strings.Fields(s[i+1:]) // state is f[0], so field n is f[n-3]
	if len(f) < 20 || f[0] == "Z" {
		return ""
	}
	return f[19]
}

// adoption is the body of an adopt message.
type adoption struct {
	Node string `json:"node"`
	PID  int    `json:"pid"`
}

// startWatchdog records the agent from the spec and the NATS connection's
// state, then checks them until done is closed; when the replica has been
// an orphan, or cut off from NATS, for the orphan timeout it calls Stop.
//
// A replica linked to the agent that started it (link.go), connected to
// NATS and not orphaned sets no timer at all: the link's end (the agent
// exited) and a NATS disconnect wake the watchdog. Otherwise (no link, an
// adopting agent, an agent found gone, NATS down) it checks every 5 s (a
// quarter of the timeout if that is shorter).
func (r *Replica) startWatchdog(done <-chan struct{}) {
	timeout := r.spec.orphanTimeout()
	r.agentMu.Lock()
	if r.spec.AgentPID > 0 {
		ref, ok := newAgentRef(r.spec.AgentPID)
		r.agent = ref
		if !ok {
			r.orphanSince = time.Now()
		}
	}
	r.agentMu.Unlock()
	every := min(5*time.Second, timeout/4) // a 5-minute timeout may run 5 s late
	go func() {
		t := time.NewTimer(every)
		t.Stop() // armed only when it polls
		defer t.Stop()
		for {
			var tick <-chan time.Time
			if r.watchPolls() {
				t.Reset(every)
				tick = t.C
			}
			select {
			case <-done:
				return
			case <-tick:
			case <-r.wakeWatch:
			}
			if why := r.orphaned(time.Now(), timeout); why != "" {
				r.log.Warn("replica orphaned; draining", "reason", why, "orphan_timeout", timeout)
				r.Stop()
				return
			}
		}
	}()
}

// watchPolls reports whether the watchdog must look on a timer: anything
// but a replica linked to its starting agent, connected and not orphaned.
func (r *Replica) watchPolls() bool {
	if r.link == nil || r.linkGone.Load() || r.disconnected.Load() != 0 {
		return true
	}
	r.agentMu.Lock()
	defer r.agentMu.Unlock()
	return !r.orphanSince.IsZero() || r.agent.pid != r.spec.AgentPID
}

// wakeWatchdog makes the watchdog look now.
func (r *Replica) wakeWatchdog() {
	select {
	case r.wakeWatch <- struct{}{}:
	default:
	}
}

// orphaned says why the replica should end, or "".
func (r *Replica) orphaned(now time.Time, timeout time.Duration) string {
	r.agentMu.Lock()
	if r.agent.pid > 0 && r.orphanSince.IsZero() && !r.agent.alive() {
		r.orphanSince = now
		r.log.Warn("node agent gone; waiting to be adopted", "agent_pid", r.agent.pid, "orphan_timeout", timeout)
	}
	since, pid := r.orphanSince, r.agent.pid
	r.agentMu.Unlock()
	if !since.IsZero() && now.Sub(since) >= timeout {
		return fmt.Sprintf("node agent (pid %d) gone and no agent adopted this replica for %v", pid, timeout)
	}
	if d := r.disconnected.Load(); d != 0 && now.Sub(time.Unix(0, d)) >= timeout {
		return fmt.Sprintf("NATS unreachable for %v", timeout)
	}
	return ""
}

// onAdopt takes a new node agent: the replica answers to it from now on.
func (r *Replica) onAdopt(m *nats.Msg) {
	var a adoption
	if err := wire.UnmarshalJSON(m.Data, &a); err != nil || a.PID <= 0 {
		r.respondError(m, fmt.Sprintf("adopt: want {\"node\": NAME, \"pid\": PID}, got %.100q", m.Data))
		return
	}
	ref, ok := newAgentRef(a.PID)
	if !ok {
		r.respondError(m, fmt.Sprintf("adopt: pid %d does not run here", a.PID))
		return
	}
	r.agentMu.Lock()
	r.agent, r.orphanSince = ref, time.Time{}
	r.agentMu.Unlock()
	r.log.Info("adopted by node agent", "node", a.Node, "agent_pid", a.PID)
	_ = m.Respond(nil)
}

func (r *Replica) respondError(m *nats.Msg, text string) {
	_ = m.RespondMsg(&nats.Msg{Header: nats.Header{wire.HeaderCode: {string(wire.CodeBadRequest)}, wire.HeaderError: {text}}})
}
