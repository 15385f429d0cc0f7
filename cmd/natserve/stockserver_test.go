package main_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
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
	server := filepath.Join(dir, "nats-server")
	build := exec.Command("go", "build", "-o", server, "github.com/nats-io/nats-server/v2")
	build.Dir = testutil.ModuleRoot(t)
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building nats-server: %v\n%s", err, out)
	}
	authDir := filepath.Join(dir, "auth")
	natserve := testutil.Build(t, "./cmd/natserve")
	if out, err := exec.Command(natserve, "auth", "init", "-dir", authDir, "-nodes", "n1").CombinedOutput(); err != nil {
		t.Fatalf("natserve auth init: %v\n%s", err, out)
	} else if !strings.Contains(string(out), "server.conf") {
		t.Errorf("auth init output lacks the server config:\n%s", out)
	}
	for _, f := range []string{"admin.creds", "controller.creds", "ingress.creds", "client.creds", "node-n1.creds", "signer.nk", "server.conf"} {
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
