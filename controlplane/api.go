package controlplane

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/natserve/natserve/client"
	"github.com/natserve/natserve/internal/store"
	"github.com/natserve/natserve/internal/wire"
)

// apiError is a control API failure with its code.
type apiError struct {
	code wire.APICode
	msg  string
	name string // the deployment or graph it is about, when set (see about)
}

func (e *apiError) Error() string { return e.msg }

func fail(code wire.APICode, format string, args ...any) error {
	return &apiError{code: code, msg: fmt.Sprintf(format, args...)}
}

// serveAPI answers one control API request.
func (c *Controller) serveAPI(ctx context.Context, st *state, m *nats.Msg) {
	verb := wire.APIVerb(m.Subject)
	start := time.Now()
	var rep wire.APIReply
	defer func() { c.m.served(verb, rep.Code, time.Since(start)) }()
	var data any
	var err error
	if len(m.Data) > wire.MaxAPIRequest {
		err = fail(wire.APIInvalid, "request of %d bytes is over the %d byte limit", len(m.Data), wire.MaxAPIRequest)
	} else {
		data, err = c.handle(ctx, st, verb, m.Data)
	}
	if err != nil {
		var ae *apiError
		if errors.As(err, &ae) {
			rep.Code, rep.Error, rep.Name = ae.code, ae.msg, ae.name
		} else {
			rep.Code, rep.Error = wire.APIInternal, err.Error()
		}
	} else if data != nil {
		body, err := json.Marshal(data)
		if err == nil {
			// {"data":…} around what json.Marshal made, without a second
			// pass over it (a list of 1,000 deployments is ~0.5 MB).
			_ = m.Respond(append(append(append(make([]byte, 0, len(body)+9), `{"data":`...), body...), '}'))
			return
		}
		rep.Code, rep.Error = wire.APIInternal, err.Error()
	}
	b, _ := json.Marshal(rep)
	_ = m.Respond(b)
}

// decodeStrict decodes a control API request: vetted first (wire.CheckJSON),
// then without unknown fields.
func decodeStrict(b []byte, v any) error {
	if err := wire.CheckJSON(b); err != nil {
		return fail(wire.APIInvalid, "request: %v", err)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fail(wire.APIInvalid, "request: %v", err)
	}
	return nil
}

func (c *Controller) handle(ctx context.Context, st *state, verb string, body []byte) (any, error) {
	if verb == wire.APIApply {
		var req wire.APIApplyRequest
		if err := decodeStrict(body, &req); err != nil {
			return nil, err
		}
		ctx, cancel := context.WithTimeout(ctx, wire.APITimeout(len(req.Deployments)+len(req.Graphs)))
		defer cancel()
		return c.apply(ctx, st, req)
	}
	ctx, cancel := context.WithTimeout(ctx, wire.APITimeout(1))
	defer cancel()
	switch verb {
	case wire.APIDeploy:
		spec, err := decodeSpec(body)
		if err != nil {
			return nil, err
		}
		return c.deploy(ctx, st, spec)
	case wire.APIDelete:
		var req wire.APIName
		if err := decodeStrict(body, &req); err != nil {
			return nil, err
		}
		if _, _, isGraph := st.graphs.get(req.Name); isGraph {
			return nil, c.deleteGraph(ctx, st, req.Name)
		}
		_, rev, ok := st.deps.get(req.Name)
		if !ok {
			return nil, fail(wire.APINotFound, "deployment %q not found", req.Name)
		}
		if err := c.kv.Deployments.Delete(ctx, req.Name, jetstream.LastRevision(rev)); err != nil {
			return nil, conflictOr(err, req.Name)
		}
		st.deps.del(req.Name, rev)
		c.log.Info("deployment deleted", "deployment", req.Name)
		return nil, nil
	case wire.APIList:
		return c.list(st), nil
	case wire.APIGet:
		var req wire.APIName
		if err := decodeStrict(body, &req); err != nil {
			return nil, err
		}
		if g, _, ok := st.graphs.get(req.Name); ok {
			return c.graphView(st, g), nil
		}
		spec, _, ok := st.deps.get(req.Name)
		if !ok {
			return nil, fail(wire.APINotFound, "deployment %q not found", req.Name)
		}
		return c.view(st, spec), nil
	case wire.APIScale:
		var req wire.APIScaleRequest
		if err := decodeStrict(body, &req); err != nil {
			return nil, err
		}
		spec, _, ok := st.deps.get(req.Name)
		if !ok {
			return nil, fail(wire.APINotFound, "deployment %q not found", req.Name)
		}
		spec.NumReplicas = req.NumReplicas
		return c.deploy(ctx, st, spec)
	case wire.APIStatus:
		return c.status(st), nil
	case wire.APIGraph:
		g, err := decodeGraph(body)
		if err != nil {
			return nil, err
		}
		return c.deployGraph(ctx, st, g)
	case wire.APIWake:
		var req wire.APIName
		if err := decodeStrict(body, &req); err != nil {
			return nil, err
		}
		return c.wake(st, req.Name), nil
	}
	return nil, fail(wire.APIInvalid, "unknown control API verb %q", verb)
}

// about records that err (an *apiError) is about the deployment or graph
// name, unless it already names one: the client places it in its file.
func about(name string, err error) error {
	var ae *apiError
	if errors.As(err, &ae) && ae.name == "" {
		ae.name = name
	}
	return err
}

func conflictOr(err error, name string) error {
	if isConflict(err) {
		return fail(wire.APIConflict, "deployment %q changed concurrently; read it again and retry", name)
	}
	return err
}

// isConflict reports whether a KV write lost a compare-and-set: the key
// exists (a create) or its revision moved (an update or a delete), by
// JetStream's error code.
func isConflict(err error) bool {
	if errors.Is(err, jetstream.ErrKeyExists) {
		return true
	}
	var ae *jetstream.APIError
	return errors.As(err, &ae) &&
		(ae.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence || ae.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant)
}

// decodeSpec decodes one spec from the API; an absent num_replicas is 1.
func decodeSpec(body []byte) (client.DeploymentSpec, error) {
	var spec client.DeploymentSpec
	if err := decodeStrict(body, &spec); err != nil {
		return spec, err
	}
	var present struct {
		NumReplicas *int `json:"num_replicas"`
	}
	if json.Unmarshal(body, &present) == nil && present.NumReplicas == nil {
		spec.NumReplicas = client.DefaultNumReplicas
	}
	return spec, nil
}

// deploy validates a spec and writes it; equal specs are not rewritten, so
// applying the same spec twice restarts nothing.
func (c *Controller) deploy(ctx context.Context, st *state, spec client.DeploymentSpec) (any, error) {
	if err := c.validate(st, &spec, nil); err != nil {
		return nil, err
	}
	old, rev, exists := st.deps.get(spec.Name)
	if exists && sameSpec(old, spec) {
		return c.view(st, spec), nil
	}
	if err := c.write(ctx, st, spec, rev); err != nil {
		return nil, err
	}
	return c.view(st, spec), nil
}

func sameSpec(a, b client.DeploymentSpec) bool {
	x, _ := json.Marshal(a)
	y, _ := json.Marshal(b)
	return bytes.Equal(x, y)
}

func (c *Controller) write(ctx context.Context, st *state, spec client.DeploymentSpec, rev uint64) error {
	if _, _, exists := st.deps.get(spec.Name); !exists {
		// A new deployment of a name whose previous deployment is still
		// stopping: revoke those replicas' identities first (cutting their
		// drain short), so none of them serves the new one.
		prev := c.views(st, spec.Name)
		if !c.revokeIdentities(ctx, prev) {
			return fail(wire.APIInternal, "deployment %q: revoking the identities of its previous replicas failed; try again", spec.Name)
		}
		for _, v := range prev {
			c.setDesired(ctx, st, v, store.DesiredStop)
		}
	}
	nrev, err := store.Update(ctx, c.kv.Deployments, spec.Name, spec, rev)
	if err != nil {
		return conflictOr(err, spec.Name)
	}
	st.deps.put(spec.Name, nrev, spec)
	c.log.Info("deployment applied", "deployment", spec.Name, "class", spec.Class, "num_replicas", spec.NumReplicas, "revision", nrev)
	return nil
}

// apply validates a whole set against the state it will produce, then
// writes it: a set with any error changes nothing. Errors name the item
// they are about (see about).
func (c *Controller) apply(ctx context.Context, st *state, req wire.APIApplyRequest) (any, error) {
	set, err := decodeSet(req)
	if err != nil {
		return nil, err
	}
	if err := c.validateSet(st, set, req.Prune); err != nil {
		return nil, err
	}
	var res wire.APIApplyResult
	if err := c.writeSet(ctx, st, set, req.DryRun, &res); err != nil {
		return nil, err
	}
	if req.Prune {
		if err := c.prune(ctx, st, set, req.DryRun, &res); err != nil {
			return nil, err
		}
	}
	return res, nil
}

// applyWriters bounds the KV writes one apply has in flight.
const applyWriters = 32

// applySet is the set an apply request lists.
type applySet struct {
	specs     []client.DeploymentSpec
	graphs    []client.GraphSpec
	graphDeps [][]client.DeploymentSpec // each graph's deployments, once validated
	names     map[string]bool           // every deployment and graph listed
}

// decodeSet decodes an apply request's deployments and graphs; a name may
// be listed once.
func decodeSet(req wire.APIApplyRequest) (*applySet, error) {
	set := &applySet{
		specs:  make([]client.DeploymentSpec, 0, len(req.Deployments)),
		graphs: make([]client.GraphSpec, 0, len(req.Graphs)),
		names:  map[string]bool{},
	}
	for _, raw := range req.Deployments {
		spec, err := decodeSpec(raw)
		if err != nil {
			return nil, err
		}
		if set.names[spec.Name] {
			return nil, about(spec.Name, fail(wire.APIInvalid, "%s: name: listed twice", spec.Name))
		}
		set.names[spec.Name] = true
		set.specs = append(set.specs, spec)
	}
	for _, raw := range req.Graphs {
		g, err := decodeGraph(raw)
		if err != nil {
			return nil, err
		}
		if set.names[g.Name] {
			return nil, about(g.Name, fail(wire.APIInvalid, "%s: name: listed twice", g.Name))
		}
		set.names[g.Name] = true
		set.graphs = append(set.graphs, g)
	}
	return set, nil
}

// validateSet normalizes and checks every item against the routes the
// apply leaves (with prune, only the set's own), and fills set.graphDeps.
func (c *Controller) validateSet(st *state, set *applySet, prune bool) error {
	routes := currentRoutes(st, func(n string) bool { return set.names[n] || prune })
	for i := range set.specs {
		if err := c.validate(st, &set.specs[i], routes); err != nil {
			return about(set.specs[i].Name, err)
		}
	}
	set.graphDeps = make([][]client.DeploymentSpec, len(set.graphs))
	for i := range set.graphs {
		g := &set.graphs[i]
		if err := c.validateGraph(st, g, routes); err != nil {
			return about(g.Name, err)
		}
		set.graphDeps[i] = g.Deployments()
		for j := range set.graphDeps[i] {
			if err := c.validate(st, &set.graphDeps[i][j], map[string]string{}); err != nil {
				return about(g.Name, err)
			}
		}
	}
	return nil
}

// writeSet writes what changed (nothing with dryRun) and records in res
// what was created, updated or left unchanged.
func (c *Controller) writeSet(ctx context.Context, st *state, set *applySet, dryRun bool, res *wire.APIApplyResult) error {
	type write struct {
		spec client.DeploymentSpec
		rev  uint64
	}
	var writes []write
	for _, spec := range set.specs {
		old, rev, exists := st.deps.get(spec.Name)
		switch {
		case exists && sameSpec(old, spec):
			res.Unchanged = append(res.Unchanged, spec.Name)
			continue
		case exists:
			res.Updated = append(res.Updated, spec.Name)
		default:
			res.Created = append(res.Created, spec.Name)
		}
		writes = append(writes, write{spec, rev})
	}
	if !dryRun {
		// Each write is one KV round trip: a file of 1,000 deployments
		// written one after the other takes 1,000 round trips, seconds on
		// a loaded machine. Several at once; the first error (in the
		// file's order) is the answer, as it was one by one.
		errs := make([]error, len(writes))
		sem := make(chan struct{}, applyWriters)
		var wg sync.WaitGroup
		for i, w := range writes {
			sem <- struct{}{}
			wg.Add(1)
			go func() {
				defer func() { <-sem; wg.Done() }()
				if err := c.write(ctx, st, w.spec, w.rev); err != nil {
					errs[i] = about(w.spec.Name, err)
				}
			}()
		}
		wg.Wait()
		for _, err := range errs {
			if err != nil {
				return err
			}
		}
	}
	for i, g := range set.graphs {
		old, _, exists := st.graphs.get(g.Name)
		switch {
		case exists && sameGraph(old, g):
			res.Unchanged = append(res.Unchanged, g.Name)
			continue
		case exists:
			res.Updated = append(res.Updated, g.Name)
		default:
			res.Created = append(res.Created, g.Name)
		}
		if !dryRun {
			if err := c.writeGraph(ctx, st, g, set.graphDeps[i]); err != nil {
				return about(g.Name, err)
			}
		}
	}
	return nil
}

// prune deletes the graphs and deployments the set does not list (nothing
// with dryRun), except the deployments of the set's or live graphs.
func (c *Controller) prune(ctx context.Context, st *state, set *applySet, dryRun bool, res *wire.APIApplyResult) error {
	owned := map[string]bool{} // deployments a listed graph makes: the graph's
	for _, g := range set.graphs {
		for _, d := range g.Deployments() {
			owned[d.Name] = true
		}
	}
	for _, g := range st.graphs.all() {
		if set.names[g.key] {
			continue
		}
		res.Deleted = append(res.Deleted, g.key)
		if !dryRun {
			if err := c.deleteGraph(ctx, st, g.key); err != nil {
				return err
			}
		}
	}
	for _, d := range st.deps.all() {
		if set.names[d.key] || owned[d.key] || c.ownedByGraph(st, d.key) {
			continue
		}
		res.Deleted = append(res.Deleted, d.key)
		if !dryRun {
			if err := c.kv.Deployments.Delete(ctx, d.key, jetstream.LastRevision(d.rev)); err != nil {
				return conflictOr(err, d.key)
			}
			st.deps.del(d.key, d.rev)
			c.log.Info("deployment pruned", "deployment", d.key)
		}
	}
	return nil
}

func sameGraph(a, b client.GraphSpec) bool {
	_ = b.Normalize()
	x, _ := json.Marshal(a)
	y, _ := json.Marshal(b)
	return bytes.Equal(x, y)
}

// ownedByGraph reports whether a live graph made the deployment.
func (c *Controller) ownedByGraph(st *state, name string) bool {
	for _, g := range st.graphs.all() {
		for _, d := range g.val.Deployments() {
			if d.Name == name {
				return true
			}
		}
	}
	return false
}

// list returns the deployments a person deployed (not the ones graphs
// made) and the graphs, sorted by name.
func (c *Controller) list(st *state) []client.Deployment {
	out := []client.Deployment{}
	for _, d := range st.deps.all() {
		out = append(out, c.view(st, d.val))
	}
	for _, g := range st.graphs.all() {
		out = append(out, c.graphView(st, g.val))
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Spec.Name < out[j].Spec.Name })
	return out
}

// validate normalizes spec and checks it against the nodes' classes and the
// route table: routes maps prefix → deployment for the state being built
// (nil: the current deployments), and gains spec's route.
func (c *Controller) validate(st *state, spec *client.DeploymentSpec, routes map[string]string) error {
	if err := spec.Normalize(); err != nil {
		return fail(wire.APIInvalid, "%v", err)
	}
	alive := st.alive(c.cfg.NodeTimeout)
	provided := map[string]bool{}
	for _, n := range alive {
		for _, cl := range n.Classes {
			provided[cl] = true
		}
	}
	if !provided[spec.Class] {
		names := make([]string, 0, len(provided))
		for n := range provided {
			names = append(names, n)
		}
		sort.Strings(names)
		if len(names) == 0 {
			return fail(wire.APIUnknownClass, "%s: class: no node agent is running to provide class %s", spec.Name, spec.Class)
		}
		return fail(wire.APIUnknownClass, "%s: class: unknown class %s (the nodes provide: %s)", spec.Name, spec.Class, strings.Join(names, ", "))
	}
	if _, _, isGraph := st.graphs.get(spec.Name); isGraph {
		return fail(wire.APIConflict, "%s: name: a graph already has this name", spec.Name)
	}
	if routes == nil {
		routes = currentRoutes(st, func(n string) bool { return n == spec.Name })
	}
	if prefix, on := spec.Route(); on {
		if other, taken := routes[prefix]; taken && other != spec.Name {
			return fail(wire.APIConflict, "%s: route_prefix: %s is already the route of deployment %s", spec.Name, prefix, other)
		}
		routes[prefix] = spec.Name
	}
	return nil
}

// view is a deployment as the API reports it.
func (c *Controller) view(st *state, spec client.DeploymentSpec) client.Deployment {
	ds := st.snapshot(spec.Name)
	stored, rev, _ := st.deps.get(spec.Name)
	d := client.Deployment{Spec: spec, Status: ds.status, Message: ds.message, Ready: ds.ready, Target: spec.NumReplicas}
	if spec.Autoscaled() {
		d.Target = max(ds.autoTarget, 0)
		d.Autoscaling = &client.AutoscalingStatus{Target: d.Target, OngoingRequests: ds.ongoing, LastDecision: ds.scaleReason}
	}
	if ds.specRev != rev { // not reconciled since the last change
		d.Status = client.StatusUpdating
		d.Message = "applying the new spec"
	}
	// Every caller passes the stored spec (or the one it just stored):
	// its hashes are computed once per revision, not once per list of
	// 1,000 deployments.
	var code, cfg string
	if rev != 0 {
		code, cfg = st.ch.specHashes(spec.Name, rev, &stored)
	} else {
		code, cfg = hashes(&spec)
	}
	for _, v := range c.views(st, spec.Name) { // its assignments only, by key
		r := client.Replica{ID: v.a.Replica, Node: v.a.Node, State: client.ReplicaStarting,
			Current: v.a.CodeHash == code && v.a.ConfigHash == cfg, Healthy: st.healthy(v.a.Replica)}
		if v.hasSt {
			r.PID, r.State, r.Started, r.Error = v.st.PID, v.st.State, v.st.Started, v.st.Error
		}
		if v.a.Desired != store.DesiredRun && r.State == client.ReplicaRunning {
			r.State = client.ReplicaStopping
		}
		d.Replicas = append(d.Replicas, r)
	}
	return d
}

func (c *Controller) status(st *state) client.ClusterStatus {
	out := client.ClusterStatus{Leader: c.cfg.ID}
	for _, d := range st.deps.all() {
		v := c.view(st, d.val)
		v.Replicas = nil
		out.Deployments = append(out.Deployments, v)
	}
	alive := st.alive(c.cfg.NodeTimeout)
	count := map[string]int{}
	for _, a := range st.asgs.all() {
		if a.val.Desired == store.DesiredRun {
			count[a.val.Node]++
		}
	}
	st.mu.Lock()
	seen := make(map[string]time.Time, len(st.seen))
	for k, v := range st.seen {
		seen[k] = v
	}
	st.mu.Unlock()
	for _, n := range st.nodes.all() {
		_, up := alive[n.key]
		out.Nodes = append(out.Nodes, client.Node{Name: n.key, Host: n.val.Host, PID: n.val.PID, Classes: n.val.Classes,
			Alive: up, Replicas: count[n.key], MaxReplicas: n.val.MaxReplicas, LastSeen: seen[n.key]})
	}
	return out
}
