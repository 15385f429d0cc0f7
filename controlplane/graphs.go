package controlplane

import (
	"context"
	"encoding/json"
	"errors"
	"slices"
	"strings"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/natserve/natserve/client"
	"github.com/natserve/natserve/internal/wire"
)

// GraphClass is the class a graph shows in deployment listings.
const GraphClass = "graph"

func decodeGraph(body []byte) (client.GraphSpec, error) {
	var g client.GraphSpec
	if err := decodeStrict(body, &g); err != nil {
		return g, err
	}
	return g, nil
}

// validateGraph checks a graph's shape, that its classes and called
// methods exist on some live node, and its route; routes and names gain the
// graph's.
func (c *Controller) validateGraph(st *state, g *client.GraphSpec, routes map[string]string) error {
	if err := g.Normalize(); err != nil {
		var fe *client.FieldError
		if errors.As(err, &fe) { // the message without the sentinel's prefix
			return fail(wire.APIInvalidGraph, "%v", fe)
		}
		return fail(wire.APIInvalidGraph, "%v", err)
	}
	if _, _, ok := st.deps.get(g.Name); ok {
		return fail(wire.APIConflict, "%s: name: a deployment already has this name", g.Name)
	}
	methods := map[string][]string{} // class → methods, over live nodes
	for _, n := range st.alive(c.cfg.NodeTimeout) {
		for _, cl := range n.Classes {
			if _, ok := methods[cl]; !ok {
				methods[cl] = n.Methods[cl]
			}
		}
	}
	classOf := map[string]string{}
	for _, n := range g.Nodes {
		if n.Class != "" {
			classOf[n.Name] = n.Class
		}
	}
	for _, n := range g.Nodes {
		class := n.Class
		method := ""
		if n.Call != "" {
			target, m, _ := strings.Cut(n.Call, ".")
			if cl, ok := classOf[target]; ok {
				class, method = cl, m
			} else {
				class = target
			}
		}
		ms, ok := methods[class]
		if !ok {
			return fail(wire.APIUnknownClass, "%s: node %s: unknown class %s", g.Name, n.Name, class)
		}
		if method != "" && !slices.Contains(ms, method) {
			return fail(wire.APIInvalidGraph, "%s: node %s: class %s has no method %s (it has: %s)", g.Name, n.Name, class, method, strings.Join(ms, ", "))
		}
	}
	if routes != nil {
		if p, on := g.Route(); on {
			if other, taken := routes[p]; taken && other != g.Name {
				return fail(wire.APIConflict, "%s: route_prefix: %s is already the route of %s", g.Name, p, other)
			}
			routes[p] = g.Name
		}
	}
	return nil
}

// currentRoutes maps every route prefix in use to its deployment or graph,
// leaving out skip.
func currentRoutes(st *state, skip func(string) bool) map[string]string {
	routes := map[string]string{}
	for _, d := range st.deps.all() {
		if p, on := d.val.Route(); on && !skip(d.key) {
			routes[p] = d.key
		}
	}
	for _, g := range st.graphs.all() {
		if p, on := g.val.Route(); on && !skip(g.key) {
			routes[p] = g.key
		}
	}
	return routes
}

// deployGraph deploys a graph: its node deployments, then the graph itself;
// node deployments an earlier version had and this one has not are deleted.
func (c *Controller) deployGraph(ctx context.Context, st *state, g client.GraphSpec) (any, error) {
	routes := currentRoutes(st, func(n string) bool { return n == g.Name })
	if err := c.validateGraph(st, &g, routes); err != nil {
		return nil, err
	}
	deps := g.Deployments()
	for i := range deps {
		if err := c.validate(st, &deps[i], map[string]string{}); err != nil {
			return nil, err
		}
	}
	if err := c.writeGraph(ctx, st, g, deps); err != nil {
		return nil, err
	}
	return c.graphView(st, g), nil
}

func (c *Controller) writeGraph(ctx context.Context, st *state, g client.GraphSpec, deps []client.DeploymentSpec) error {
	keep := map[string]bool{}
	for _, d := range deps {
		keep[d.Name] = true
		old, rev, exists := st.deps.get(d.Name)
		if exists && sameSpec(old, d) {
			continue
		}
		if err := c.write(ctx, st, d, rev); err != nil {
			return err
		}
	}
	old, rev, exists := st.graphs.get(g.Name)
	if exists {
		for _, d := range old.Deployments() {
			if !keep[d.Name] {
				c.deleteDeployment(ctx, st, d.Name)
			}
		}
		a, _ := json.Marshal(old)
		b, _ := json.Marshal(g)
		if string(a) == string(b) {
			return nil
		}
	}
	b, _ := json.Marshal(g)
	var nrev uint64
	var err error
	if rev == 0 {
		nrev, err = c.kv.Graphs.Create(ctx, g.Name, b)
	} else {
		nrev, err = c.kv.Graphs.Update(ctx, g.Name, b, rev)
	}
	if err != nil {
		return conflictOr(err, g.Name)
	}
	st.graphs.put(g.Name, nrev, g)
	c.log.Info("graph applied", "graph", g.Name, "nodes", len(g.Nodes), "deployments", len(deps))
	return nil
}

func (c *Controller) deleteDeployment(ctx context.Context, st *state, name string) {
	if _, rev, ok := st.deps.get(name); ok {
		if err := c.kv.Deployments.Delete(ctx, name, jetstream.LastRevision(rev)); err == nil {
			st.deps.del(name, rev)
		}
	}
}

// deleteGraph deletes a graph and the deployments it made.
func (c *Controller) deleteGraph(ctx context.Context, st *state, name string) error {
	g, rev, ok := st.graphs.get(name)
	if !ok {
		return fail(wire.APINotFound, "deployment %q not found", name)
	}
	if err := c.kv.Graphs.Delete(ctx, name, jetstream.LastRevision(rev)); err != nil {
		return conflictOr(err, name)
	}
	st.graphs.del(name, rev)
	for _, d := range g.Deployments() {
		c.deleteDeployment(ctx, st, d.Name)
	}
	c.log.Info("graph deleted", "graph", name)
	return nil
}

// graphView shows a graph as a deployment: its status is its node
// deployments' worst, Ready/Target count node deployments.
func (c *Controller) graphView(st *state, g client.GraphSpec) client.Deployment {
	d := client.Deployment{Spec: client.DeploymentSpec{Name: g.Name, Class: GraphClass, RoutePrefix: g.RoutePrefix}, Status: client.StatusHealthy}
	rank := map[string]int{client.StatusHealthy: 0, client.StatusUpdating: 1, client.StatusUnhealthy: 2, client.StatusDeployFailed: 3}
	for _, spec := range g.Deployments() {
		d.Target++
		s, _, ok := st.deps.get(spec.Name)
		v := client.Deployment{Status: client.StatusUpdating, Message: "node deployment " + spec.Name + " is missing"}
		if ok {
			v = c.view(st, s)
		}
		if v.Status == client.StatusHealthy {
			d.Ready++
		}
		if rank[v.Status] > rank[d.Status] {
			d.Status = v.Status
			d.Message = spec.Name + ": " + v.Message
		}
	}
	return d
}
