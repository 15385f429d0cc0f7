package controlplane

import (
	"slices"
	"sync"
	"time"

	"github.com/natserve/natserve/client"
	"github.com/natserve/natserve/internal/store"
)

// Rebalancing: placement spreads a deployment's replicas when it places
// them, but nothing else moves them; after a node is lost its replicas run
// on the others, and they stay there when it comes back, so a later fault
// of the node that now holds them all takes the whole deployment out. The
// controller therefore moves replicas of a HEALTHY deployment whose
// replicas are spread unevenly (the fullest eligible node holds at least
// two more than the emptiest) one at a time, make-before-break: a
// replacement starts on the emptiest node as a surge (not counted towards
// num_replicas), and once it is ready one replica on the fullest node is
// stopped, which drains it (in-flight requests finish, new ones go
// elsewhere). Nothing moves during a rolling update, a pending autoscaling
// change, while a replica is not ready, within the cooldown of the
// deployment's last move, onto a node alive for less than the settle time,
// or beyond the cluster-wide limit of moves in flight.

// moveBalance is the imbalance (replicas on the fullest eligible node less
// those on the emptiest) from which a replica moves: with 1, an odd count
// over two nodes would move back and forth.
const moveBalance = 2

// moveQueueRetry is how soon a deployment that found every move slot taken
// looks again (sooner if a move ends meanwhile).
const moveQueueRetry = time.Second

// moveNode is an eligible node (alive, provides the class) as a move
// decision sees it.
type moveNode struct {
	name     string
	replicas int       // the deployment's replicas on it
	upSince  time.Time // when it last joined the live nodes
	room     bool      // below its replica cap
}

// moveIn is what a move decision looks at.
type moveIn struct {
	now         time.Time
	ready       bool // HEALTHY: every replica current, ready, configured; none of an older version
	rolling     bool // a rolling update is under way (replicas of an older version)
	autoscaling bool // the autoscaler wants another replica count (waiting out its delay)
	lastMove    time.Time
	cooldown    time.Duration
	settle      time.Duration
	inFlight    int // moves in flight over all deployments
	maxMoves    int
	nodes       []moveNode
}

// moveOut is a move decision: a move from → to, or none and, when one may
// become possible without any event, when to look again (zero: on the next
// change).
type moveOut struct {
	from, to string
	retry    time.Time
	why      string // why not (for tests and debug logs)
}

// decideMove decides whether a deployment moves one replica now.
func decideMove(in moveIn) moveOut {
	switch {
	case in.rolling:
		return moveOut{why: "rolling update"}
	case in.autoscaling:
		return moveOut{why: "autoscaling"}
	case !in.ready:
		return moveOut{why: "not healthy"}
	case len(in.nodes) < 2:
		return moveOut{why: "balanced"}
	}
	// The fullest node gives; the emptiest node with room that has been
	// alive for the settle time takes.
	var from, to, unsettled *moveNode
	for i := range in.nodes {
		n := &in.nodes[i]
		if from == nil || n.replicas > from.replicas || n.replicas == from.replicas && n.name < from.name {
			from = n
		}
		if !n.room {
			continue
		}
		if in.now.Sub(n.upSince) < in.settle {
			if unsettled == nil || n.replicas < unsettled.replicas || n.replicas == unsettled.replicas && n.upSince.Before(unsettled.upSince) {
				unsettled = n
			}
			continue
		}
		if to == nil || n.replicas < to.replicas || n.replicas == to.replicas && n.name < to.name {
			to = n
		}
	}
	if to == nil || from.replicas-to.replicas < moveBalance {
		if unsettled != nil && from.replicas-unsettled.replicas >= moveBalance {
			return moveOut{why: "settling", retry: unsettled.upSince.Add(in.settle)}
		}
		return moveOut{why: "balanced"}
	}
	if next := in.lastMove.Add(in.cooldown); !in.lastMove.IsZero() && in.now.Before(next) {
		return moveOut{why: "cooldown", retry: next}
	}
	if in.inFlight >= in.maxMoves {
		return moveOut{why: "moves limit", retry: in.now.Add(moveQueueRetry)}
	}
	return moveOut{from: from.name, to: to.name}
}

// moves is the cluster-wide side of rebalancing: which deployments have a
// move in flight (bounded by Config.RebalanceMaxMoves), and since when
// each node is alive (the settle time counts from it).
type moves struct {
	mu       sync.Mutex           // guards the fields below
	inFlight map[string]bool      // deployments with a move in flight
	upSince  map[string]time.Time // node → when it last joined the live nodes
}

func newMoves() *moves {
	return &moves{inFlight: map[string]bool{}, upSince: map[string]time.Time{}}
}

// nodesChanged records the live nodes after a change of them.
func (m *moves) nodesChanged(alive map[string]store.Node, now time.Time) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for n := range alive {
		if _, ok := m.upSince[n]; !ok {
			m.upSince[n] = now
		}
	}
	for n := range m.upSince {
		if _, ok := alive[n]; !ok {
			delete(m.upSince, n)
		}
	}
}

func (m *moves) since(node string) time.Time {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.upSince[node]
}

func (m *moves) count() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.inFlight)
}

func (m *moves) begin(dep string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.inFlight[dep] = true
}

func (m *moves) end(dep string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.inFlight, dep)
}

// takeSurge takes the replacement of the deployment's move in flight out
// of cur (it does not count towards num_replicas until it is ready and the
// replica it replaces stops); found is false when the move has no
// replacement among cur any more (it failed, its node went, or a rolling
// update made it old), which ends the move.
func (p *depPass) takeSurge(cur []view) (rest []view, surge view, found bool) {
	if p.ds.moveReplica == "" {
		return cur, view{}, false
	}
	for i, v := range cur {
		if v.a.Replica == p.ds.moveReplica {
			return slices.Delete(slices.Clone(cur), i, i+1), v, true
		}
	}
	p.endMove("its replacement is gone")
	return cur, view{}, false
}

// endMove ends the deployment's move in flight.
func (p *depPass) endMove(why string) {
	if p.ds.moveReplica == "" {
		return
	}
	p.c.log.Info("rebalancing move ended", "deployment", p.spec.Name, "replica", p.ds.moveReplica, "from", p.ds.moveFrom, "why", why)
	p.ds.moveReplica, p.ds.moveFrom = "", ""
	p.ds.lastMove = p.now
	p.st.mv.end(p.spec.Name)
	if p.c.cfg.RebalanceCooldown > 0 {
		p.st.ch.wakeAt(p.spec.Name, p.now.Add(p.c.cfg.RebalanceCooldown)) // the next move, if still uneven
	}
}

// finishMove acts on the move in flight once its replacement is out of
// cur. While the deployment still wants exactly cur's replicas, all ready,
// the move waits for its replacement, then the replacement joins cur and
// one replica on the node the move relieves stops (draining). If anything
// else changed meanwhile (a spec, the target, a replica not ready), the
// move ends at once and the replacement joins cur as it is, for the usual
// steps (scale down, rolling update, replacing a failed replica) to deal
// with: it may well be what replaces the replica that failed.
func (p *depPass) finishMove(cur []view, surge view, target, readyCur int, steady bool) []view {
	if !steady || len(cur) != target || readyCur != len(cur) {
		p.endMove("the deployment changed meanwhile")
		return append(cur, surge)
	}
	if !surge.ready {
		return cur // still starting
	}
	var on []view
	for _, v := range cur {
		if v.a.Node == p.ds.moveFrom {
			on = append(on, v)
		}
	}
	if len(on) == 0 { // the node emptied meanwhile: the replacement is a replica like the others
		p.endMove("nothing left on the node it relieves")
		return append(cur, surge)
	}
	sortForStop(on, p.load)
	victim := on[0]
	p.c.setDesired(p.ctx, p.st, victim, store.DesiredStop)
	p.load[victim.a.Node]--
	p.c.log.Info("rebalancing moved a replica", "deployment", p.spec.Name, "from", victim.a.Node, "stopped", victim.a.Replica, "to", surge.a.Node, "started", surge.a.Replica)
	p.endMove("done")
	out := make([]view, 0, len(cur))
	for _, v := range cur {
		if v.a.Replica != victim.a.Replica {
			out = append(out, v)
		}
	}
	return append(out, surge)
}

// maybeMove starts a move when the deployment is HEALTHY and unevenly
// spread; when one may become due later (settle, cooldown, the limit of
// moves in flight) it asks for a pass then.
func (p *depPass) maybeMove(cur []view, rolling, autoscaling bool) {
	c := p.c
	if c.cfg.DisableRebalance || p.ds.moveReplica != "" || p.orphans || len(cur) < moveBalance {
		return
	}
	spec := p.spec
	in := moveIn{
		now: p.now, ready: p.ds.status == client.StatusHealthy, rolling: rolling,
		autoscaling: autoscaling,
		lastMove:    p.ds.lastMove, cooldown: c.cfg.RebalanceCooldown, settle: c.cfg.RebalanceSettle,
		maxMoves: c.cfg.RebalanceMaxMoves,
	}
	if !in.ready || rolling || in.autoscaling {
		return // the cheap refusals first: no walk over the nodes
	}
	perNode := map[string]int{}
	for _, v := range cur {
		perNode[v.a.Node]++
	}
	for name, n := range p.alive {
		if !slices.Contains(n.Classes, spec.Class) {
			continue
		}
		in.nodes = append(in.nodes, moveNode{name: name, replicas: perNode[name], upSince: p.st.mv.since(name), room: hasRoom(p.st, name, n)})
	}
	in.inFlight = p.st.mv.count()
	out := decideMove(in)
	if out.to == "" {
		if !out.retry.IsZero() {
			p.st.ch.wakeAt(spec.Name, out.retry)
		}
		return
	}
	replica := c.createAssignment(p.ctx, p.st, spec, out.to, p.code, p.cfg)
	if replica == "" {
		return
	}
	p.load[out.to]++
	p.ds.moveReplica, p.ds.moveFrom = replica, out.from
	p.st.mv.begin(spec.Name)
	c.log.Info("rebalancing: starting a replacement before stopping a replica", "deployment", spec.Name, "from", out.from, "to", out.to,
		"replica", replica, "from_replicas", perNode[out.from], "to_replicas", perNode[out.to])
}
