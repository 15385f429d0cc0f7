package client

import (
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"
)

const pipelineYAML = `graphs:
  - name: pipeline
    route_prefix: /pipeline
    nodes:
      model: {class: AddModel, init_args: [2]}
      pre:   {call: preprocess, args: [$input]}
      out:   {call: model.predict, args: [$pre]}
    output: out
`

func TestGraphFromGoEqualsGraphFromConfig(t *testing.T) {
	g := NewGraph("pipeline").RoutePrefix("/pipeline")
	model := g.Bind("model", "AddModel", 2)
	pre := g.Call("pre", "preprocess", g.Input())
	out := g.Call("out", model.Method("predict"), pre)
	fromGo, err := g.Driver(out)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := ParseConfig("serve.yaml", []byte(pipelineYAML))
	if err != nil {
		t.Fatal(err)
	}
	fromYAML := cfg.Graphs[0].Spec
	a, _ := json.Marshal(fromGo)
	b, _ := json.Marshal(fromYAML)
	if string(a) != string(b) {
		t.Fatalf("specs differ:\nGo:   %s\nYAML: %s", a, b)
	}
	deps := fromGo.Deployments()
	var names []string
	for _, d := range deps {
		names = append(names, d.Name+":"+d.Class)
		if _, on := d.Route(); on {
			t.Errorf("node deployment %s is on HTTP", d.Name)
		}
	}
	if !reflect.DeepEqual(names, []string{"pipeline_model:AddModel", "pipeline_pre:preprocess"}) {
		t.Errorf("deployments %v", names)
	}
}

func TestBadGraphsRefused(t *testing.T) {
	for _, tc := range []struct {
		name  string
		build func() (GraphSpec, error)
		want  string
	}{
		{"cycle", func() (GraphSpec, error) {
			return GraphSpec{Name: "g", Output: "a", Nodes: []GraphNode{
				{Name: "a", Call: "f", Args: []json.RawMessage{json.RawMessage(`"$b"`)}},
				{Name: "b", Call: "f", Args: []json.RawMessage{json.RawMessage(`"$a"`)}},
			}}, nil
		}, "cycle: a → b → a"},
		{"unknown node", func() (GraphSpec, error) {
			g := NewGraph("g")
			return g.Driver(g.Call("out", "f", &Ref{name: "ghost"}))
		}, "argument $ghost: unknown node ghost"},
		{"unknown method target", func() (GraphSpec, error) {
			g := NewGraph("g")
			return g.Driver(g.Call("out", "nobody.predict", g.Input()))
		}, `call "nobody.predict": unknown node nobody`},
		{"output missing", func() (GraphSpec, error) {
			g := NewGraph("g")
			g.Call("a", "f", g.Input())
			return g.Driver(&Ref{name: "zzz"})
		}, `output: unknown node "zzz"`},
		{"class node as value", func() (GraphSpec, error) {
			g := NewGraph("g")
			m := g.Bind("m", "Model")
			return g.Driver(g.Call("out", "f", m))
		}, "a class node has no value"},
		{"output is class node", func() (GraphSpec, error) {
			g := NewGraph("g")
			return g.Driver(g.Bind("m", "Model"))
		}, "output: m is a class node"},
		{"duplicate", func() (GraphSpec, error) {
			g := NewGraph("g")
			g.Call("a", "f", g.Input())
			return g.Driver(g.Call("a", "f", g.Input()))
		}, "node a is declared twice"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			spec, err := tc.build()
			if err == nil {
				err = spec.Normalize()
			}
			if !errors.Is(err, ErrInvalidGraph) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want %q", err, tc.want)
			}
		})
	}
}
