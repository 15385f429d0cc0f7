package controlplane_test

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/natserve/natserve/client"
	"github.com/natserve/natserve/internal/e2e"
	"github.com/natserve/natserve/internal/testutil"
)

func seedGraph(t *testing.T) client.GraphSpec {
	g := client.NewGraph("pipeline")
	model := g.Bind("model", "AddModel", 2)
	pre := g.Call("pre", "preprocess", g.Input())
	spec, err := g.Driver(g.Call("out", model.Method("predict"), pre))
	if err != nil {
		t.Fatal(err)
	}
	return spec
}

func TestSeedGraph(t *testing.T) {
	s := e2e.Standard(t)
	base, _ := s.Ingress()
	if _, err := s.Client.DeployGraph(e2e.Ctx(10*time.Second), seedGraph(t)); err != nil {
		t.Fatal(err)
	}
	s.WaitHealthy("pipeline")
	// Through a handle: handle.predict.remote(1) == 4.
	if got, err := client.Call[int](e2e.Ctx(10*time.Second), s.Client.Handle("pipeline"), 1); err != nil || got != 4 {
		t.Fatalf("handle: %v %v, want 4", got, err)
	}
	// Through servectl call.
	out, err := exec.Command(testutil.Build(t, "./cmd/servectl"), "call", "pipeline", "1", "--server", s.URL, "--creds", testutil.Creds(t, s.URL, "admin")).CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "4" {
		t.Fatalf("servectl call: %v %s", err, out)
	}
	// Over HTTP, the JSON body is the input.
	if code, body, _ := e2e.HTTP(t, "POST", base+"/pipeline", "1"); code != 200 || body != "4" {
		t.Fatalf("HTTP: %d %q", code, body)
	}
	// A JSON body that would cost far more decoded than it weighs (6 MB of
	// {"":0} objects: ~300 MB of Go maps) is refused before decoding, in
	// one line.
	bomb := "[" + strings.Repeat(`{"":0},`, 6<<20/7) + "0]"
	if code, body, _ := e2e.HTTP(t, "POST", base+"/pipeline", bomb); code != 400 || !strings.Contains(body, "too costly") || strings.Count(strings.TrimSpace(body), "\n") != 0 {
		t.Fatalf("HTTP JSON bomb: %d %q, want 400 with one line (too costly)", code, body)
	}
	// The graph is listed with its deployments.
	ds, err := s.Client.List(e2e.Ctx(5 * time.Second))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, d := range ds {
		names = append(names, d.Spec.Name+":"+d.Spec.Class+":"+d.Status)
	}
	if strings.Join(names, " ") != "pipeline:graph:HEALTHY pipeline_model:AddModel:HEALTHY pipeline_pre:preprocess:HEALTHY" {
		t.Fatalf("list: %v", names)
	}
	// Deleting the graph deletes what it deployed.
	if err := s.Client.Delete(e2e.Ctx(5*time.Second), "pipeline"); err != nil {
		t.Fatal(err)
	}
	if ds, _ := s.Client.List(e2e.Ctx(5 * time.Second)); len(ds) != 0 {
		t.Fatalf("after delete: %d deployments", len(ds))
	}
}

func TestGraphFromConfigAndQueryInput(t *testing.T) {
	s := e2e.Standard(t)
	base, _ := s.Ingress()
	file := filepath.Join(t.TempDir(), "graph.yaml")
	_ = os.WriteFile(file, []byte(`graphs:
  - name: pipeline
    route_prefix: /pipeline
    http_input: query:data
    nodes:
      model: {class: AddModel, init_args: [2]}
      pre:   {call: preprocess, args: [$input]}
      out:   {call: model.predict, args: [$pre]}
    output: out
`), 0o644)
	cfg, err := client.LoadConfig(file)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Client.Apply(e2e.Ctx(10*time.Second), cfg, client.ApplyOptions{}); err != nil {
		t.Fatal(err)
	}
	s.WaitHealthy("pipeline")
	if code, body, _ := e2e.HTTP(t, "GET", base+"/pipeline?data=1", ""); code != 200 || body != "4" {
		t.Fatalf("HTTP: %d %q", code, body)
	}
	if code, body, _ := e2e.HTTP(t, "GET", base+"/pipeline", ""); code != 400 || !strings.Contains(body, "query parameter data is required") {
		t.Fatalf("missing input: %d %q", code, body)
	}
}

func TestDiamondRunsBranchesInParallel(t *testing.T) {
	s := e2e.Standard(t)
	g := client.NewGraph("diamond")
	left := g.Bind("left", "Probe", "l")
	right := g.Bind("right", "Probe", "r")
	a := g.Call("a", left.Method("Work"), g.Input())
	b := g.Call("b", right.Method("Work"), g.Input())
	spec, err := g.Driver(g.Call("sum", "combine", a, b))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Client.DeployGraph(e2e.Ctx(10*time.Second), spec); err != nil {
		t.Fatal(err)
	}
	s.WaitHealthy("diamond")
	h := s.Client.Handle("diamond")
	if _, err := client.Call[int](e2e.Ctx(10*time.Second), h, 1); err != nil { // warm up
		t.Fatal(err)
	}
	const sleep = 500 * time.Millisecond
	start := time.Now()
	got, err := client.Call[int](e2e.Ctx(10*time.Second), h, int(sleep/time.Millisecond))
	took := time.Since(start)
	if err != nil || got <= 0 {
		t.Fatalf("diamond: %v %v", got, err)
	}
	t.Logf("two branches of %v each took %v together", sleep, took)
	if took >= 2*sleep {
		t.Fatalf("branches ran one after the other: %v for two %v sleeps", took, sleep)
	}
}

func TestGraphErrorsNameTheNode(t *testing.T) {
	s := e2e.Standard(t)
	g := client.NewGraph("failing")
	p := g.Bind("p", "Probe", "x")
	spec, err := g.Driver(g.Call("boom", p.Method("Fail"), g.Input()))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Client.DeployGraph(e2e.Ctx(10*time.Second), spec); err != nil {
		t.Fatal(err)
	}
	s.WaitHealthy("failing")
	_, err = client.Call[any](e2e.Ctx(10*time.Second), s.Client.Handle("failing"), "disk full")
	if !errors.Is(err, client.ErrUser) || !strings.Contains(err.Error(), "node boom (failing_p.Fail): disk full") {
		t.Fatalf("got %v", err)
	}
}

func TestBadGraphsRefusedAtDeploy(t *testing.T) {
	s := e2e.Standard(t)
	cases := []struct {
		build    func() client.GraphSpec
		want     string
		sentinel error
	}{
		{func() client.GraphSpec {
			g := client.NewGraph("g1")
			spec, _ := g.Driver(g.Call("out", "NoSuchFunc", g.Input()))
			return spec
		}, "g1: node out: unknown class NoSuchFunc", client.ErrUnknownClass},
		{func() client.GraphSpec {
			g := client.NewGraph("g2")
			m := g.Bind("m", "AddModel", 2)
			spec, _ := g.Driver(g.Call("out", m.Method("fly"), g.Input()))
			return spec
		}, "g2: node out: class AddModel has no method fly", client.ErrInvalidGraph},
		{func() client.GraphSpec {
			g := client.NewGraph("g3")
			m := g.Bind("m", "NoSuchClass")
			spec, _ := g.Driver(g.Call("out", m.Method("x"), g.Input()))
			return spec
		}, "g3: node m: unknown class NoSuchClass", client.ErrUnknownClass},
	}
	for _, tc := range cases {
		_, err := s.Client.DeployGraph(e2e.Ctx(10*time.Second), tc.build())
		if err == nil || !strings.Contains(err.Error(), tc.want) || !errors.Is(err, tc.sentinel) {
			t.Errorf("got %v, want %q matching %v", err, tc.want, tc.sentinel)
		}
	}
	if ds, _ := s.Client.List(e2e.Ctx(5 * time.Second)); len(ds) != 0 {
		t.Fatalf("refused graphs deployed %d deployments", len(ds))
	}
}
