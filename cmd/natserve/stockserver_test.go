package main_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/natserve/natserve/client"
	"github.com/natserve/natserve/internal/e2e"
	"github.com/natserve/natserve/internal/testutil"
)

// TestStockNATSServer runs natserve against a stock nats-server (built
// from the module cache) configured only with what `natserve auth init`
// wrote: a controller, a node agent and an ingress as processes, each with
// its role's credentials, serve the seed example.
func TestStockNATSServer(t *testing.T) {
	dir := t.TempDir()
	server := buildStockServer(t, dir)
	authDir := filepath.Join(dir, "auth")
	natserve := testutil.Build(t, "./cmd/natserve")
	if out, err := exec.Command(natserve, "auth", "init", "-dir", authDir, "-nodes", "n1").CombinedOutput(); err != nil {
		t.Fatalf("natserve auth init: %v\n%s", err, out)
	} else if !strings.Contains(string(out), "server.conf") {
		t.Errorf("auth init output lacks the server config:\n%s", out)
	}
	for _, f := range []string{"admin.creds", "controller.creds", "ingress.creds", "client.creds", "node-n1.creds", "signer.nk", "server.conf", "route.secret", "cluster.conf"} {
		st, err := os.Stat(filepath.Join(authDir, f))
		if err != nil || st.Mode().Perm() != 0o600 {
			t.Fatalf("%s: %v %v, want a 0600 file", f, err, st)
		}
	}
	port := e2e.FreePort(t)
	conf := filepath.Join(authDir, "nats.conf")
	body := fmt.Sprintf("listen: \"127.0.0.1:%d\"\njetstream: {store_dir: %q}\ninclude ./server.conf\n", port, filepath.Join(dir, "js"))
	if err := os.WriteFile(conf, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	srv := testutil.Start(t, nil, server, "-c", conf)
	testutil.Eventually(t, 20*time.Second, func() error {
		if srv.Exited() {
			t.Fatalf("nats-server exited:\n%s", srv.Output())
		}
		c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err == nil {
			c.Close()
		}
		return err
	})
	url := fmt.Sprintf("nats://127.0.0.1:%d", port)
	// Anonymous clients are refused by the stock server too.
	if nc, err := nats.Connect(url); !errors.Is(err, nats.ErrAuthorization) {
		if nc != nil {
			nc.Close()
		}
		t.Fatalf("anonymous connect to the stock server: %v, want authorization violation", err)
	}
	testutil.UseAuth(t, url, authDir)
	s := e2e.NewOn(t, url, nil)
	s.Controller("c1")
	s.Agent("n1")
	s.WaitNodes(1)
	d := s.Deploy(client.DeploymentSpec{Name: "rep-1", Class: "Model", InitArgs: json.RawMessage(`["/model/rep-1.pkl"]`), NumReplicas: 2})
	base, _ := s.Ingress()
	testutil.Eventually(t, 10*time.Second, func() error {
		code, body, _ := e2e.HTTP(t, "GET", base+"/rep-1?data=0.2", "")
		if code != 200 || !strings.Contains(body, "path: /model/rep-1.pkl") {
			return fmt.Errorf("GET /rep-1: %d %q", code, body)
		}
		return nil
	})
	t.Logf("seed example on a stock nats-server: %d replicas", len(d.Replicas))
}

func buildStockServer(t *testing.T, dir string) string {
	t.Helper()
	server := filepath.Join(dir, "nats-server")
	build := exec.Command("go", "build", "-o", server, "github.com/nats-io/nats-server/v2")
	build.Dir = testutil.ModuleRoot(t)
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building nats-server: %v\n%s", err, out)
	}
	return server
}

// TestStockNATSServerRoutes: two stock nats-servers configured as
// server.conf's comment says (cluster.conf inside the cluster block, the
// route secret in the route URLs) form a cluster; a third that knows the
// routes but not the secret is refused by both.
func TestStockNATSServerRoutes(t *testing.T) {
	dir := t.TempDir()
	server := buildStockServer(t, dir)
	authDir := filepath.Join(dir, "auth")
	natserve := testutil.Build(t, "./cmd/natserve")
	if out, err := exec.Command(natserve, "auth", "init", "-dir", authDir).CombinedOutput(); err != nil {
		t.Fatalf("natserve auth init: %v\n%s", err, out)
	}
	secret, err := os.ReadFile(filepath.Join(authDir, "route.secret"))
	if err != nil {
		t.Fatal(err)
	}
	conf, _ := os.ReadFile(filepath.Join(authDir, "server.conf"))
	if !strings.Contains(string(conf), "natserve-route:"+strings.TrimSpace(string(secret))+"@") || !strings.Contains(string(conf), "include ./cluster.conf") {
		t.Fatalf("server.conf does not show the route set-up:\n%s", conf)
	}
	routePorts := []int{e2e.FreePort(t), e2e.FreePort(t), e2e.FreePort(t)}
	monPorts := []int{e2e.FreePort(t), e2e.FreePort(t), e2e.FreePort(t)}
	start := func(i int, withSecret bool) *testutil.Proc {
		var routes []string
		for j, p := range routePorts[:2] {
			if j == i {
				continue
			}
			cred := ""
			if withSecret {
				cred = "natserve-route:" + strings.TrimSpace(string(secret)) + "@"
			}
			routes = append(routes, fmt.Sprintf("nats-route://%s127.0.0.1:%d", cred, p))
		}
		include := ""
		if withSecret {
			include = "include ./cluster.conf"
		}
		body := fmt.Sprintf("server_name: s%d\nlisten: \"127.0.0.1:%d\"\nhttp: \"127.0.0.1:%d\"\ninclude ./server.conf\ncluster {\n  name: natserve\n  listen: \"127.0.0.1:%d\"\n  %s\n  routes: [%s]\n}\n",
			i, e2e.FreePort(t), monPorts[i], routePorts[i], include, strings.Join(routes, ", "))
		f := filepath.Join(authDir, fmt.Sprintf("s%d.conf", i))
		if err := os.WriteFile(f, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return testutil.Start(t, nil, server, "-c", f)
	}
	numRoutes := func(i int) (int, error) {
		resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/routez", monPorts[i]))
		if err != nil {
			return 0, err
		}
		defer resp.Body.Close()
		var rz struct {
			Routes []struct {
				RemoteName string `json:"remote_name"`
			} `json:"routes"`
		}
		if err := json.NewDecoder(resp.Body).Decode(&rz); err != nil {
			return 0, err
		}
		peers := map[string]bool{}
		for _, r := range rz.Routes {
			peers[r.RemoteName] = true
		}
		return len(peers), nil
	}
	s0, s1 := start(0, true), start(1, true)
	testutil.Eventually(t, 20*time.Second, func() error {
		for i, p := range []*testutil.Proc{s0, s1} {
			if p.Exited() {
				t.Fatalf("s%d exited:\n%s", i, p.Output())
			}
			if n, err := numRoutes(i); err != nil || n != 1 {
				return fmt.Errorf("s%d: %d peers, %v", i, n, err)
			}
		}
		return nil
	})
	rogue := start(2, false)
	testutil.Eventually(t, 20*time.Second, func() error {
		if !strings.Contains(s0.Output(), "authentication error") || !strings.Contains(s1.Output(), "authentication error") {
			return fmt.Errorf("the members have not refused the rogue yet")
		}
		return nil
	})
	for i := range 3 {
		want := 1
		if i == 2 {
			want = 0
		}
		if n, err := numRoutes(i); err != nil || n != want {
			t.Errorf("s%d: %d peers (%v), want %d", i, n, err, want)
		}
	}
	if strings.Contains(s0.Output()+s1.Output(), strings.TrimSpace(string(secret))) {
		t.Error("a member's log shows the route secret")
	}
	_ = rogue
}
