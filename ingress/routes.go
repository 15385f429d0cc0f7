package ingress

import (
	"encoding/json"
	"sort"
	"strings"

	"github.com/natserve/natserve/client"
	"github.com/natserve/natserve/internal/wire"
)

// route sends paths under prefix to a deployment.
type route struct {
	prefix     string
	deployment string
	subject    string
	graph      *client.GraphSpec // set for a graph: the ingress runs it
	metrics    *routeMetrics     // nil when metrics are off
}

// table is an immutable route table; the ingress swaps whole tables
// atomically, so the request path takes no lock.
type table struct {
	byPrefix map[string]*route
	json     []byte // the /-/routes body
}

func newTable(routes map[string]string, graphs ...*client.GraphSpec) *table { // prefix → deployment
	t := &table{byPrefix: make(map[string]*route, len(routes))}
	for p, d := range routes {
		t.byPrefix[p] = &route{prefix: p, deployment: d, subject: wire.DeploymentSubject(d)}
	}
	for _, g := range graphs {
		if p, on := g.Route(); on {
			t.byPrefix[p] = &route{prefix: p, deployment: g.Name, graph: g}
			routes[p] = g.Name
		}
	}
	keys := make([]string, 0, len(routes))
	for p := range routes {
		keys = append(keys, p)
	}
	sort.Strings(keys)
	ordered := make(map[string]string, len(routes))
	for _, k := range keys {
		ordered[k] = routes[k]
	}
	t.json, _ = json.Marshal(ordered)
	return t
}

// match returns the route with the longest prefix that matches path on a
// segment boundary: /api matches /api and /api/x, not /apix; / matches all.
// It tries the path, then each parent, so its cost grows with the path's
// depth, not with the number of routes; the lookups do not allocate.
func (t *table) match(path []byte) *route {
	if len(path) == 0 || path[0] != '/' {
		return nil
	}
	p := path
	for len(p) > 1 && p[len(p)-1] == '/' {
		p = p[:len(p)-1] // /api/ is /api
	}
	for {
		if r, ok := t.byPrefix[string(p)]; ok {
			return r
		}
		if len(p) <= 1 {
			return nil
		}
		i := strings.LastIndexByte(string(p), '/')
		if i == 0 {
			p = p[:1]
		} else {
			p = p[:i]
		}
	}
}
