package client_test

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/natserve/natserve/client"
	"github.com/natserve/natserve/internal/e2e"
	"github.com/natserve/natserve/internal/testutil"
)

func TestMain(m *testing.M) { testutil.Main(m) }

func TestControlOperations(t *testing.T) {
	s := e2e.Standard(t)
	cl := s.Client
	ctx := e2e.Ctx(30 * time.Second)

	d, err := cl.Deploy(ctx, client.DeploymentSpec{Name: "rep-1", Class: "Model", InitArgs: json.RawMessage(`["/model/rep-1.pkl"]`), NumReplicas: 2})
	if err != nil {
		t.Fatal(err)
	}
	if d.Spec.NumReplicas != 2 || d.Spec.MaxOngoingRequests != 5 || *d.Spec.RoutePrefix != "/rep-1" {
		t.Fatalf("deploy returned %+v", d.Spec)
	}
	var progress []string
	d, err = cl.WaitHealthy(ctx, "rep-1", func(d *client.Deployment) { progress = append(progress, d.Status) })
	if err != nil || d.Ready != 2 || len(progress) == 0 {
		t.Fatalf("wait: %v %+v %v", err, d, progress)
	}
	// Get → handle, as serve.get_deployment(name).get_handle().
	got, err := cl.Get(ctx, "rep-1")
	if err != nil {
		t.Fatal(err)
	}
	out, err := client.Call[string](ctx, cl.Handle(got.Spec.Name), 0.25)
	if err != nil || !strings.HasSuffix(out, "path: /model/rep-1.pkl; data: 0.250; prediction: 0.250") {
		t.Fatalf("handle from get: %q %v", out, err)
	}
	if err := cl.Scale(ctx, "rep-1", 3); err != nil {
		t.Fatal(err)
	}
	if d, err := cl.WaitHealthy(ctx, "rep-1", nil); err != nil || len(d.Replicas) != 3 {
		t.Fatalf("scale: %v %d", err, len(d.Replicas))
	}
	st, err := cl.Status(ctx)
	if err != nil || st.Leader != "c1" || len(st.Nodes) != 2 || len(st.Deployments) != 1 {
		t.Fatalf("status: %v %+v", err, st)
	}
	if err := cl.Delete(ctx, "rep-1"); err != nil {
		t.Fatal(err)
	}
	if _, err := cl.Get(ctx, "rep-1"); !errors.Is(err, client.ErrNotFound) {
		t.Fatalf("get after delete: %v", err)
	}
	testutil.Eventually(t, 20*time.Second, func() error {
		_, err := client.Call[string](ctx, cl.Handle("rep-1"), 0.1)
		if !errors.Is(err, client.ErrNoReplicas) {
			return errors.New("replicas still serving")
		}
		return nil
	})

	// Errors.
	for _, tc := range []struct {
		name string
		err  error
		want error
	}{
		{"delete unknown", cl.Delete(ctx, "nope"), client.ErrNotFound},
		{"scale unknown", cl.Scale(ctx, "nope", 1), client.ErrNotFound},
		{"scale negative", func() error {
			_, _ = cl.Deploy(ctx, client.DeploymentSpec{Name: "x", Class: "Model", InitArgs: json.RawMessage(`["p"]`)})
			return cl.Scale(ctx, "x", -2)
		}(), client.ErrInvalidSpec},
		{"invalid spec", func() error {
			_, err := cl.Deploy(ctx, client.DeploymentSpec{Name: "", Class: "Model"})
			return err
		}(), client.ErrInvalidSpec},
		{"unknown class", func() error {
			_, err := cl.Deploy(ctx, client.DeploymentSpec{Name: "y", Class: "Nope"})
			return err
		}(), client.ErrUnknownClass},
	} {
		if !errors.Is(tc.err, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, tc.err, tc.want)
		}
	}
}

func TestUnreachableServer(t *testing.T) {
	port := e2e.FreePort(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	start := time.Now()
	_, err := client.Connect(ctx, "nats://127.0.0.1:"+itoa(port))
	if err == nil || !strings.Contains(err.Error(), "cannot reach natserve at nats://127.0.0.1:") {
		t.Fatalf("got %v", err)
	}
	if took := time.Since(start); took > 2500*time.Millisecond {
		t.Fatalf("Connect took %v with a 2s context", took)
	}
}

func TestNoController(t *testing.T) {
	s := e2e.New(t) // a broker, no controller
	start := time.Now()
	_, err := s.Client.List(e2e.Ctx(500 * time.Millisecond))
	if !errors.Is(err, client.ErrNoController) {
		t.Fatalf("got %v", err)
	}
	t.Logf("no-controller error after %v", time.Since(start))
}

func itoa(n int) string { return strconv.Itoa(n) }

func writeFile(t *testing.T, name, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestApplyConfigFile(t *testing.T) {
	s := e2e.Standard(t)
	cl := s.Client
	ctx := e2e.Ctx(60 * time.Second)
	v1 := `deployments:
  - name: rep-1
    class: Probe
    init_args: ["v1"]
    num_replicas: 2
  - name: rep-2
    class: Probe
    init_args: ["v1"]
`
	load := func(body string) *client.Config {
		cfg, err := client.LoadConfig(writeFile(t, "serve.yaml", body))
		if err != nil {
			t.Fatal(err)
		}
		return cfg
	}
	res, err := cl.Apply(ctx, load(v1), client.ApplyOptions{})
	if err != nil || strings.Join(res.Created, ",") != "rep-1,rep-2" {
		t.Fatalf("apply: %+v %v", res, err)
	}
	s.WaitHealthy("rep-1")
	s.WaitHealthy("rep-2")
	pids := s.PIDs("rep-1")

	// Re-apply: no change, no restart.
	res, err = cl.Apply(ctx, load(v1), client.ApplyOptions{})
	if err != nil || len(res.Unchanged) != 2 || len(res.Updated) != 0 {
		t.Fatalf("re-apply: %+v %v", res, err)
	}
	s.WaitHealthy("rep-1")
	if after := s.PIDs("rep-1"); len(after) != 2 || !samePIDs(pids, after) {
		t.Fatalf("re-apply restarted replicas: %v → %v", pids, after)
	}

	// Change a field: a rolling update.
	v2 := strings.Replace(v1, `init_args: ["v1"]
    num_replicas: 2`, `init_args: ["v2"]
    num_replicas: 2`, 1)
	res, err = cl.Apply(ctx, load(v2), client.ApplyOptions{})
	if err != nil || strings.Join(res.Updated, ",") != "rep-1" || strings.Join(res.Unchanged, ",") != "rep-2" {
		t.Fatalf("apply v2: %+v %v", res, err)
	}
	s.WaitHealthy("rep-1")
	if after := s.PIDs("rep-1"); samePIDs(pids, after) {
		t.Fatalf("changing init_args did not roll the replicas")
	}
	if out, _ := client.Call[string](ctx, cl.Handle("rep-1"), "x"); !strings.HasPrefix(out, "tag=v2 ") {
		t.Fatalf("after the update: %q", out)
	}

	// A file with an error changes nothing.
	before, _ := cl.List(ctx)
	bad := v2 + `  - name: rep-3
    class: NoSuchClass
`
	_, err = cl.Apply(ctx, load(bad), client.ApplyOptions{Prune: true})
	if !errors.Is(err, client.ErrUnknownClass) || !strings.Contains(err.Error(), "serve.yaml:9: rep-3: class: unknown class NoSuchClass") {
		t.Fatalf("bad file: %v", err)
	}
	if _, err := client.LoadConfig(writeFile(t, "serve.yaml", v2+"    replicas: 3\n")); !errors.Is(err, client.ErrConfigFile) || !strings.Contains(err.Error(), "serve.yaml:9: deployments[1].replicas: unknown field") {
		t.Fatalf("unknown field: %v", err)
	}
	if _, err := client.LoadConfig(writeFile(t, "serve.yaml", strings.Replace(v2, "num_replicas: 2", "num_replicas: two", 1))); !errors.Is(err, client.ErrConfigFile) || !strings.Contains(err.Error(), `serve.yaml:5: deployments[0].num_replicas: want an integer or auto, got "two"`) {
		t.Fatalf("wrong type: %v", err)
	}
	after, _ := cl.List(ctx)
	if len(after) != len(before) || after[0].Spec.Version != before[0].Spec.Version || string(after[0].Spec.InitArgs) != string(before[0].Spec.InitArgs) {
		t.Fatalf("a refused file changed the deployments")
	}

	// Prune deletes what the file no longer lists.
	only1 := strings.SplitN(v2, "  - name: rep-2", 2)[0]
	res, err = cl.Apply(ctx, load(only1), client.ApplyOptions{Prune: true})
	if err != nil || strings.Join(res.Deleted, ",") != "rep-2" {
		t.Fatalf("prune: %+v %v", res, err)
	}
	if _, err := cl.Get(ctx, "rep-2"); !errors.Is(err, client.ErrNotFound) {
		t.Fatalf("rep-2 after prune: %v", err)
	}
}

func samePIDs(a, b map[int]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k := range a {
		if _, ok := b[k]; !ok {
			return false
		}
	}
	return true
}
