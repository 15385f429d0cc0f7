package main_test

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/natserve/natserve/client"
	"github.com/natserve/natserve/internal/e2e"
	"github.com/natserve/natserve/internal/testutil"
)

func TestMain(m *testing.M) { testutil.Main(m) }

type cli struct {
	t   *testing.T
	bin string
	url string
}

// run runs servectl and returns stdout, stderr and the exit code.
func (c cli) run(args ...string) (string, string, int) {
	c.t.Helper()
	cmd := exec.Command(c.bin, args...)
	cmd.Env = append(os.Environ(), "NATSERVE_URL="+c.url, "NATSERVE_CREDS="+testutil.Creds(c.t, c.url, "admin"))
	var out, errb strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		c.t.Fatal(err)
	}
	return out.String(), errb.String(), code
}

func (c cli) ok(args ...string) string {
	c.t.Helper()
	out, errs, code := c.run(args...)
	if code != 0 {
		c.t.Fatalf("servectl %s: exit %d: %s", strings.Join(args, " "), code, errs)
	}
	return out
}

// fails checks a one-line error on stderr and a non-zero exit.
func (c cli) fails(want string, args ...string) {
	c.t.Helper()
	out, errs, code := c.run(args...)
	if code == 0 || !strings.Contains(errs, want) || strings.Count(strings.TrimSpace(errs), "\n") != 0 || strings.Contains(errs, "goroutine") {
		c.t.Errorf("servectl %s: exit %d, stdout %q, stderr %q; want one line containing %q", strings.Join(args, " "), code, out, errs, want)
	}
}

func TestServectl(t *testing.T) {
	s := e2e.Standard(t)
	c := cli{t: t, bin: testutil.Build(t, "./cmd/servectl"), url: s.URL}
	dir := t.TempDir()
	file := filepath.Join(dir, "serve.yaml")
	if err := os.WriteFile(file, []byte(`deployments:
  - name: rep-1
    class: Model
    init_args: ["/model/rep-1.pkl"]
    num_replicas: 2
  - name: rep-2
    class: Model
    init_args: ["/model/rep-2.pkl"]
    num_replicas: 2
    version: v1
`), 0o644); err != nil {
		t.Fatal(err)
	}

	// deploy --wait shows progress and ends HEALTHY.
	out := c.ok("deploy", "-f", file, "--wait")
	if !strings.Contains(out, "rep-1 created") || !strings.Contains(out, "rep-1 2/2 HEALTHY, rep-2 2/2 HEALTHY") {
		t.Fatalf("deploy --wait:\n%s", out)
	}
	out = c.ok("deploy", "-f", file, "-o", "json")
	var res client.ApplyResult
	if json.Unmarshal([]byte(out), &res) != nil || len(res.Unchanged) != 2 {
		t.Fatalf("deploy -o json: %s", out)
	}

	// list-deployments: table and JSON.
	out = c.ok("list-deployments")
	for _, re := range []string{
		`(?m)^NAME\s+CLASS\s+VERSION\s+REPLICAS\s+ROUTE\s+STATUS$`,
		`(?m)^rep-1\s+Model\s+-\s+2/2\s+/rep-1\s+HEALTHY$`,
		`(?m)^rep-2\s+Model\s+v1\s+2/2\s+/rep-2\s+HEALTHY$`,
	} {
		if !regexp.MustCompile(re).MatchString(out) {
			t.Errorf("list-deployments lacks %s:\n%s", re, out)
		}
	}
	var ds []client.Deployment
	if err := json.Unmarshal([]byte(c.ok("list-deployments", "-o", "json")), &ds); err != nil || len(ds) != 2 || ds[1].Spec.Name != "rep-2" {
		t.Fatalf("list-deployments -o json: %v %+v", err, ds)
	}

	// get-deployment.
	out = c.ok("get-deployment", "rep-1")
	if !regexp.MustCompile(`(?m)^status:\s+HEALTHY$`).MatchString(out) || !regexp.MustCompile(`(?m)^REPLICA\s+NODE\s+PID\s+STATE`).MatchString(out) ||
		len(regexp.MustCompile(`(?m)^\w+\s+n[12]\s+\d+\s+RUNNING\s+true\s+true`).FindAllString(out, -1)) != 2 {
		t.Errorf("get-deployment:\n%s", out)
	}
	var d client.Deployment
	if err := json.Unmarshal([]byte(c.ok("get-deployment", "rep-1", "-o", "json")), &d); err != nil || len(d.Replicas) != 2 || d.Replicas[0].PID == 0 {
		t.Fatalf("get-deployment -o json: %v %+v", err, d)
	}

	// call: JSON arguments in, JSON out — as the seed's handle call.
	out = c.ok("call", "rep-1", "0.3")
	if !regexp.MustCompile(`^"\(pid: \d+\); path: /model/rep-1.pkl; data: 0.300; prediction: 0.300"\n$`).MatchString(out) {
		t.Errorf("call: %q", out)
	}
	c.fails("argument 1 (abc) is not JSON", "call", "rep-1", "abc")
	c.fails("rep-1: deployment error: want one number", "call", "rep-1", `"x"`)
	c.fails("nope: no replicas running", "call", "nope")

	// scale, routes, status.
	out = c.ok("scale", "rep-2", "1")
	if out != "rep-2 scaled to 1\n" {
		t.Errorf("scale: %q", out)
	}
	if _, err := s.Client.WaitHealthy(e2e.Ctx(30*time.Second), "rep-2", nil); err != nil {
		t.Fatal(err)
	}
	out = c.ok("routes")
	if !regexp.MustCompile(`(?m)^/rep-1\s+rep-1$`).MatchString(out) || !regexp.MustCompile(`(?m)^/rep-2\s+rep-2$`).MatchString(out) {
		t.Errorf("routes:\n%s", out)
	}
	var routes map[string]string
	if json.Unmarshal([]byte(c.ok("routes", "-o", "json")), &routes) != nil || routes["/rep-2"] != "rep-2" {
		t.Errorf("routes -o json")
	}
	out = c.ok("status")
	if !strings.Contains(out, "controller: c1 (leader)") || !regexp.MustCompile(`(?m)^rep-2\s+1/1\s+/rep-2\s+HEALTHY`).MatchString(out) ||
		!regexp.MustCompile(`(?m)^n1\s+\S+\s+true\s+\d+`).MatchString(out) {
		t.Errorf("status:\n%s", out)
	}
	var st client.ClusterStatus
	if json.Unmarshal([]byte(c.ok("status", "-o", "json")), &st) != nil || st.Leader != "c1" || len(st.Nodes) != 2 {
		t.Errorf("status -o json: %+v", st)
	}

	// delete.
	if out := c.ok("delete", "rep-2"); out != "rep-2 deleted\n" {
		t.Errorf("delete: %q", out)
	}

	// One-line errors.
	c.fails("deployment \"nope\" not found", "get-deployment", "nope")
	c.fails("deployment \"nope\" not found", "delete", "nope")
	c.fails(`replica count "x" is not a whole number`, "scale", "rep-1", "x")
	c.fails("want NAME", "get-deployment")
	c.fails(`unknown command "frobnicate"`, "frobnicate")
	c.fails("deploy needs -f FILE", "deploy")
	c.fails("-o \"yaml\": want table or json", "list-deployments", "-o", "yaml")
	bad := filepath.Join(dir, "bad.yaml")
	_ = os.WriteFile(bad, []byte("deployments:\n  - name: a\n    class: Model\n    num_replicas: lots\n"), 0o644)
	c.fails(`bad.yaml:4: deployments[0].num_replicas: want an integer or auto, got "lots"`, "deploy", "-f", bad)
	unknown := filepath.Join(dir, "unknown.yaml")
	_ = os.WriteFile(unknown, []byte("deployments:\n  - name: a\n    class: Nope\n"), 0o644)
	c.fails("unknown.yaml:2: a: class: unknown class Nope", "deploy", "-f", unknown)
	c.fails("no such file", "deploy", "-f", filepath.Join(dir, "missing.yaml"))
	port := e2e.FreePort(t)
	c.fails("cannot reach natserve at nats://127.0.0.1:", "list-deployments", "--server", "nats://127.0.0.1:"+itoa(port))
}

func itoa(n int) string { b, _ := json.Marshal(n); return string(b) }

func TestDeployWaitFails(t *testing.T) {
	s := e2e.Standard(t)
	c := cli{t: t, bin: testutil.Build(t, "./cmd/servectl"), url: s.URL}
	file := filepath.Join(t.TempDir(), "broken.yaml")
	_ = os.WriteFile(file, []byte("deployments:\n  - name: broken\n    class: Probe\n    init_args: [\"fail:weights missing\"]\n"), 0o644)
	c.fails("broken: DEPLOY_FAILED: replica constructor failed 3 times (limit 3); last error: testprog: constructor failed: class Probe: weights missing", "deploy", "-f", file, "--wait")
}
