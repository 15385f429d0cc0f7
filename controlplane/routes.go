package controlplane

import (
	"bytes"
	"context"
	"encoding/json"

	"github.com/natserve/natserve/client"
	"github.com/natserve/natserve/internal/wire"
)

// syncRoutes keeps the routes bucket, what callers (the ingress, handles)
// may read, equal to the specs less what they must not see: a
// deployment's route and max_queued_requests, and each graph without its
// nodes' init_args and user_config.
func (c *Controller) syncRoutes(ctx context.Context, st *state) {
	want := map[string][]byte{}
	for _, d := range st.deps.all() {
		r := wire.RouteRecord{Deployment: d.key, MaxQueuedRequests: d.val.MaxQueuedRequests, CallbackURLs: d.val.CallbackURLs}
		if p, on := d.val.Route(); on {
			r.Route = p
		}
		want[wire.RouteDeploymentPrefix+d.key], _ = json.Marshal(r)
	}
	for _, g := range st.graphs.all() {
		want[wire.RouteGraphPrefix+g.key], _ = json.Marshal(PublicGraph(g.val))
	}
	for key, b := range want {
		have, _, ok := st.routes.get(key)
		if ok && bytes.Equal(have, b) {
			continue
		}
		rev, err := c.kv.Routes.Put(ctx, key, b)
		if err != nil {
			c.log.Warn("writing a route failed; retrying at the next pass", "key", key, "err", err)
			st.ch.markAll()
			continue
		}
		st.routes.put(key, rev, b)
	}
	for _, r := range st.routes.all() {
		if _, ok := want[r.key]; !ok {
			c.deleteKey(ctx, st.routes, c.kv.Routes, r.key, r.rev)
		}
	}
}

// PublicGraph is g without what only its replicas may know.
func PublicGraph(g client.GraphSpec) client.GraphSpec {
	nodes := make([]client.GraphNode, len(g.Nodes))
	for i, n := range g.Nodes {
		n.InitArgs, n.UserConfig = nil, nil
		nodes[i] = n
	}
	g.Nodes = nodes
	return g
}
