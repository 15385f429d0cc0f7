package client

import (
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"

	"github.com/natserve/natserve/internal/wire"
)

// ErrInvalidGraph is returned (wrapped) for a graph that cannot be deployed.
var ErrInvalidGraph = errors.New("invalid graph")

// InputRef is the argument that stands for the graph's input (the seed's
// InputNode).
const InputRef = "$input"

// GraphSpec is a deployment graph as data: nodes that bind classes (each
// becomes a deployment with its own replicas) and nodes that call a
// function or a bound class's method on other nodes' outputs. The caller of
// the graph (the ingress, a handle) runs it: nodes whose inputs are ready run
// in parallel, and values travel from each node straight back to the
// caller, with no driver process in between.
type GraphSpec struct {
	Name string `json:"name"`
	// RoutePrefix is where the ingress serves the graph: nil means "/"+Name,
	// a pointer to "" means not exposed over HTTP.
	RoutePrefix *string `json:"route_prefix"`
	// HTTPInput says how an HTTP request becomes the input: "json" (the JSON
	// body; the default) or "query:NAME" (query parameter NAME, as JSON if it
	// parses, else as a string).
	HTTPInput string      `json:"http_input,omitempty"`
	Nodes     []GraphNode `json:"nodes"`
	// Output is the node whose value the graph returns.
	Output string `json:"output"`
}

// GraphNode is one node. Exactly one of Class and Call is set.
type GraphNode struct {
	Name string `json:"name"`
	// Class binds a class with InitArgs (the seed's Model.bind(increment=2)):
	// the node is a deployment; other nodes call its methods.
	Class    string          `json:"class,omitempty"`
	InitArgs json.RawMessage `json:"init_args,omitempty"`
	// Call is what the node calls: a function class (a deployment of it is
	// made), "NODE" (a class node's default method) or "NODE.METHOD".
	Call string `json:"call,omitempty"`
	// Args are the call's arguments: "$input", "$NODE" for another node's
	// output, or a JSON literal.
	Args []json.RawMessage `json:"args,omitempty"`
	// Options for the deployment a Class node (or a function Call) makes.
	NumReplicas        int             `json:"num_replicas,omitempty"`
	MaxOngoingRequests int             `json:"max_ongoing_requests,omitempty"`
	UserConfig         json.RawMessage `json:"user_config,omitempty"`
}

// Route returns the graph's route prefix and whether it is on HTTP.
func (g *GraphSpec) Route() (string, bool) {
	if g.RoutePrefix == nil {
		return "/" + g.Name, true
	}
	return *g.RoutePrefix, *g.RoutePrefix != ""
}

// NodeDeployment is the name of the deployment a node makes.
func NodeDeployment(graph, node string) string { return graph + "_" + node }

// ref returns the node an argument refers to ("" for a literal, InputRef
// for the input).
func ref(arg json.RawMessage) (string, bool) {
	var s string
	if json.Unmarshal(arg, &s) != nil || !strings.HasPrefix(s, "$") {
		return "", false
	}
	if s == InputRef {
		return InputRef, true
	}
	return s[1:], true
}

// Normalize validates the graph's shape: names, references, that exactly
// one of class and call is set, the output, and that there is no cycle.
// Whether classes and methods exist is checked by the controller against
// what the nodes provide.
func (g *GraphSpec) Normalize() error {
	if err := wire.ValidateName("graph name", g.Name); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidGraph, &FieldError{Err: err})
	}
	if err := g.normalizeOptions(); err != nil {
		return err
	}
	nodes, err := g.indexNodes()
	if err != nil {
		return err
	}
	deps, err := g.edges(nodes)
	if err != nil {
		return err
	}
	if err := g.checkOutput(nodes); err != nil {
		return err
	}
	return g.checkAcyclic(nodes, deps)
}

// bad is an error of the graph's shape.
func (g *GraphSpec) bad(format string, args ...any) error {
	return fmt.Errorf("%w: %w", ErrInvalidGraph, &FieldError{Name: g.Name, Err: fmt.Errorf(format, args...)})
}

// normalizeOptions fills and checks route_prefix and http_input.
func (g *GraphSpec) normalizeOptions() error {
	if g.RoutePrefix == nil {
		p := "/" + g.Name
		g.RoutePrefix = &p
	}
	if p := *g.RoutePrefix; p != "" {
		if err := ValidateRoutePrefix(p); err != nil {
			return g.bad("route_prefix: %v", err)
		}
	}
	if g.HTTPInput == "" {
		g.HTTPInput = "json"
	}
	if g.HTTPInput != "json" && (!strings.HasPrefix(g.HTTPInput, "query:") || len(g.HTTPInput) == len("query:")) {
		return g.bad("http_input: %q: want json or query:NAME", g.HTTPInput)
	}
	return nil
}

// indexNodes checks each node on its own and indexes them by name.
func (g *GraphSpec) indexNodes() (map[string]*GraphNode, error) {
	if len(g.Nodes) == 0 {
		return nil, g.bad("nodes: a graph needs at least one node")
	}
	nodes := map[string]*GraphNode{}
	for i := range g.Nodes {
		n := &g.Nodes[i]
		if err := wire.ValidateName("node name", n.Name); err != nil {
			return nil, g.bad("nodes: %v", err)
		}
		if err := wire.ValidateName("deployment name", NodeDeployment(g.Name, n.Name)); err != nil {
			return nil, g.bad("node %s: the deployment name %s is too long or invalid", n.Name, NodeDeployment(g.Name, n.Name))
		}
		if _, dup := nodes[n.Name]; dup {
			return nil, g.bad("node %s is declared twice", n.Name)
		}
		nodes[n.Name] = n
		switch {
		case n.Class != "" && n.Call != "":
			return nil, g.bad("node %s: set class or call, not both", n.Name)
		case n.Class == "" && n.Call == "":
			return nil, g.bad("node %s: set class (bind a class) or call (call a function or a node's method)", n.Name)
		case n.Class != "" && len(n.Args) > 0:
			return nil, g.bad("node %s: a class node takes init_args, not args", n.Name)
		}
		if n.NumReplicas < 0 {
			return nil, g.bad("node %s: num_replicas: %d is negative", n.Name, n.NumReplicas)
		}
	}
	return nodes, nil
}

// edges checks the call targets and the arguments' references and returns
// each node's dependencies.
func (g *GraphSpec) edges(nodes map[string]*GraphNode) (map[string][]string, error) {
	deps := map[string][]string{}
	for _, n := range g.Nodes {
		if n.Call != "" {
			target, method, hasMethod := strings.Cut(n.Call, ".")
			if t, ok := nodes[target]; ok {
				if t.Class == "" {
					return nil, g.bad("node %s: calls %s, which is a call node, not a class node", n.Name, target)
				}
				if hasMethod {
					if err := wire.ValidateMethod(method); err != nil || method == "" {
						return nil, g.bad("node %s: call %q: bad method name", n.Name, n.Call)
					}
				}
				deps[n.Name] = append(deps[n.Name], target)
			} else if hasMethod {
				return nil, g.bad("node %s: call %q: unknown node %s", n.Name, n.Call, target)
			} else if err := wire.ValidateName("class name", target); err != nil {
				return nil, g.bad("node %s: call %q: %v", n.Name, n.Call, err)
			}
		}
		for _, a := range n.Args {
			if !json.Valid(a) {
				return nil, g.bad("node %s: argument %s is not JSON", n.Name, a)
			}
			r, isRef := ref(a)
			if !isRef || r == InputRef {
				continue
			}
			t, ok := nodes[r]
			if !ok {
				return nil, g.bad("node %s: argument $%s: unknown node %s", n.Name, r, r)
			}
			if t.Class != "" {
				return nil, g.bad("node %s: argument $%s: a class node has no value; call one of its methods", n.Name, r)
			}
			deps[n.Name] = append(deps[n.Name], r)
		}
	}
	return deps, nil
}

// checkOutput checks that the output is a call node.
func (g *GraphSpec) checkOutput(nodes map[string]*GraphNode) error {
	out, ok := nodes[g.Output]
	if !ok {
		return g.bad("output: unknown node %q", g.Output)
	}
	if out.Class != "" {
		return g.bad("output: %s is a class node; output a call node", g.Output)
	}
	return nil
}

// checkAcyclic finds a cycle by depth-first search with colours, visiting
// nodes and dependencies in name order so that the cycle reported is
// always the same.
func (g *GraphSpec) checkAcyclic(nodes map[string]*GraphNode, deps map[string][]string) error {
	colour := map[string]int{}
	var visit func(string, []string) error
	visit = func(n string, path []string) error {
		switch colour[n] {
		case 1:
			return g.bad("cycle: %s", strings.Join(append(path, n), " → "))
		case 2:
			return nil
		}
		colour[n] = 1
		ds := append([]string(nil), deps[n]...)
		sort.Strings(ds)
		for _, d := range ds {
			if err := visit(d, append(path, n)); err != nil {
				return err
			}
		}
		colour[n] = 2
		return nil
	}
	names := make([]string, 0, len(nodes))
	for n := range nodes {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		if err := visit(n, nil); err != nil {
			return err
		}
	}
	return nil
}

// Deployments returns the deployments the graph needs: one per class node
// and one per call of a function class. They are not exposed over HTTP.
func (g *GraphSpec) Deployments() []DeploymentSpec {
	nodes := map[string]bool{}
	for _, n := range g.Nodes {
		nodes[n.Name] = true
	}
	var out []DeploymentSpec
	for _, n := range g.Nodes {
		class := n.Class
		if class == "" {
			target, _, _ := strings.Cut(n.Call, ".")
			if nodes[target] {
				continue // a method of a class node: no deployment of its own
			}
			class = target
		}
		none := ""
		out = append(out, DeploymentSpec{
			Name: NodeDeployment(g.Name, n.Name), Class: class, InitArgs: n.InitArgs, NumReplicas: max(n.NumReplicas, 1),
			RoutePrefix: &none, MaxOngoingRequests: n.MaxOngoingRequests, UserConfig: n.UserConfig,
		})
	}
	return out
}

// Graph builds a GraphSpec in Go, as Ray Serve's InputNode, bind and
// DAGDriver do:
//
//	g := client.NewGraph("pipeline")
//	model := g.Bind("model", "AddModel", 2)
//	pre := g.Call("pre", "preprocess", g.Input())
//	out := g.Call("out", model.Method("predict"), pre)
//	spec, err := g.Driver(out)
type Graph struct {
	spec GraphSpec
	err  error
}

// Ref is a node of a Graph being built.
type Ref struct {
	g    *Graph
	name string
}

// MethodRef names a method of a class node.
type MethodRef struct {
	node   *Ref
	method string
}

// NewGraph starts a graph.
func NewGraph(name string) *Graph { return &Graph{spec: GraphSpec{Name: name}} }

// RoutePrefix sets the graph's route prefix ("" for no HTTP).
func (g *Graph) RoutePrefix(p string) *Graph { g.spec.RoutePrefix = &p; return g }

// HTTPInput sets how HTTP requests become the input ("json" or "query:NAME").
func (g *Graph) HTTPInput(mode string) *Graph { g.spec.HTTPInput = mode; return g }

// Input is the graph's input node.
func (g *Graph) Input() *Ref { return &Ref{g: g, name: InputRef} }

// Bind binds a class with its init args into a node (Model.bind(...)).
func (g *Graph) Bind(name, class string, initArgs ...any) *Ref {
	args, err := json.Marshal(initArgs)
	if err != nil && g.err == nil {
		g.err = fmt.Errorf("%w: node %s: init args: %v", ErrInvalidGraph, name, err)
	}
	if len(initArgs) == 0 {
		args = nil
	}
	g.spec.Nodes = append(g.spec.Nodes, GraphNode{Name: name, Class: class, InitArgs: args})
	return &Ref{g: g, name: name}
}

// Method refers to a method of a class node (model.predict).
func (n *Ref) Method(name string) MethodRef { return MethodRef{node: n, method: name} }

// Call adds a node that calls target with args: target is a function class
// name (string), a class node (*Ref, its default method) or a MethodRef.
// args are *Ref values (other nodes' outputs, or Input()) or literals.
func (g *Graph) Call(name string, target any, args ...any) *Ref {
	n := GraphNode{Name: name}
	switch t := target.(type) {
	case string:
		n.Call = t
	case *Ref:
		n.Call = t.name
	case MethodRef:
		n.Call = t.node.name + "." + t.method
	default:
		if g.err == nil {
			g.err = fmt.Errorf("%w: node %s: call target %T is not a class name, node or method", ErrInvalidGraph, name, target)
		}
	}
	for _, a := range args {
		var raw []byte
		var err error
		if an, ok := a.(*Ref); ok {
			raw, err = json.Marshal("$" + strings.TrimPrefix(an.name, "$"))
		} else {
			raw, err = json.Marshal(a)
		}
		if err != nil && g.err == nil {
			g.err = fmt.Errorf("%w: node %s: argument: %v", ErrInvalidGraph, name, err)
		}
		n.Args = append(n.Args, raw)
	}
	g.spec.Nodes = append(g.spec.Nodes, n)
	return &Ref{g: g, name: name}
}

// Driver ends the graph with its output node (DAGDriver.bind(output)) and
// returns the validated spec.
func (g *Graph) Driver(output *Ref) (GraphSpec, error) {
	g.spec.Output = output.name
	if g.err != nil {
		return g.spec, g.err
	}
	spec := g.spec
	err := spec.Normalize()
	return spec, err
}
