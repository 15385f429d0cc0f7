package main_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"
	"github.com/natserve/natserve/client"
	"github.com/natserve/natserve/internal/e2e"
	"github.com/natserve/natserve/internal/metrics"
	"github.com/natserve/natserve/internal/testutil"
	"github.com/natserve/natserve/internal/wire"
)

// bannerURL returns the URL of a banner line ("  metrics     <URL>").
func bannerURL(t *testing.T, out, name string) string {
	t.Helper()
	m := regexp.MustCompile(`(?m)^  ` + name + `\s+(http://\S+)$`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no %q line in the banner:\n%s", name, out)
	}
	return m[1]
}

// deployHello deploys the Hello class as name (route /name) and waits for it.
func deployHello(t *testing.T, u *upStack, name string, replicas int) *client.Client {
	t.Helper()
	cl := client.New(testutil.Conn(t, u.natsURL, testutil.CredsFileOptions(t, u.creds())...), client.WithTimeout(30*time.Second))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	// The node agent may still be registering its classes.
	testutil.Eventually(t, 30*time.Second, func() error {
		_, err := cl.Deploy(ctx, client.DeploymentSpec{Name: name, Class: "Hello", NumReplicas: replicas})
		if err != nil && !errors.Is(err, client.ErrUnknownClass) {
			t.Fatal(err)
		}
		return err
	})
	if _, err := cl.WaitHealthy(ctx, name, nil); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 10*time.Second, func() error {
		code, _, _ := e2e.HTTP(t, "GET", u.httpBase+"/"+name, "")
		if code != 200 {
			return fmt.Errorf("GET /%s: %d", name, code)
		}
		return nil
	})
	return cl
}

func TestUpServesMetricsForEverything(t *testing.T) {
	maddr := fmt.Sprintf("127.0.0.1:%d", e2e.FreePort(t))
	u := up(t, "-metrics-addr", maddr)
	murl := bannerURL(t, u.proc.Output(), "metrics")
	if murl != "http://"+maddr+"/metrics" {
		t.Fatalf("banner metrics URL %s, want on %s", murl, maddr)
	}
	cl := deployHello(t, u, "hi", 2)
	before, err := metrics.Scrape(murl, "")
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 10; i++ {
		if code, _, _ := e2e.HTTP(t, "GET", u.httpBase+"/hi", ""); code != 200 {
			t.Fatalf("GET /hi: %d", code)
		}
	}
	var after metrics.Families
	ok := map[string]string{"deployment": "hi", "route": "/hi", "method": "GET", "status": "200"}
	testutil.Eventually(t, 10*time.Second, func() error {
		if after, err = metrics.Scrape(murl, ""); err != nil {
			return err
		}
		b, _ := before.Value("natserve_http_requests_total", ok)
		a, _ := after.Value("natserve_http_requests_total", ok)
		if a-b != 10 {
			return fmt.Errorf("ingress counter moved by %v, want 10", a-b)
		}
		// Replica-side: the two replicas together processed all of them
		// (and the warm-up requests).
		if v, _ := after.Value("natserve_replica_requests_total", map[string]string{"deployment": "hi", "code": "ok"}); v < 10 {
			return fmt.Errorf("replicas processed %v", v)
		}
		return nil
	})
	replicas := map[string]bool{}
	for _, m := range after["natserve_replica_requests_total"].GetMetric() {
		for _, l := range m.GetLabel() {
			if l.GetName() == "replica" {
				replicas[l.GetValue()] = true
			}
		}
	}
	if len(replicas) != 2 {
		t.Errorf("replica series from %d replicas, want 2: %v", len(replicas), replicas)
	}
	for _, c := range []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"natserve_controller_leader", nil, 1},
		{"natserve_deployment_replicas", map[string]string{"deployment": "hi", "state": "RUNNING"}, 2},
		{"natserve_deployment_status", map[string]string{"deployment": "hi", "status": "HEALTHY"}, 1},
		{"natserve_deployment_target_replicas", map[string]string{"deployment": "hi"}, 2},
		{"natserve_replica_starts_total", map[string]string{"deployment": "hi"}, 2},
		{"natserve_agent_replica_starts_total", map[string]string{"deployment": "hi"}, 2},
		{"natserve_nodes", map[string]string{"state": "alive"}, 1},
		{"natserve_nats_connected", map[string]string{"conn": "ingress"}, 1},
		{"natserve_nats_connected", map[string]string{"conn": "controller"}, 1},
		{"natserve_nats_connected", map[string]string{"conn": "agent"}, 1},
	} {
		if v, found := after.Value(c.name, c.labels); !found || v != c.want {
			t.Errorf("%s%v = %v (found %v), want %v", c.name, c.labels, v, found, c.want)
		}
	}
	if v, _ := after.Value("natserve_controller_loop_duration_seconds", nil); v < 1 {
		t.Errorf("controller loop histogram count %v", v)
	}

	// Every deployment is a service of the NATS services protocol, its
	// replicas its instances; the ingress and the control API are too.
	pings := collect(t, cl.Conn(), wire.ServiceSubject(wire.SrvPing, "", ""))
	byName := map[string][]string{}
	for _, p := range pings {
		var pg micro.Ping
		if err := json.Unmarshal(p, &pg); err != nil || pg.Type != micro.PingResponseType {
			t.Fatalf("ping reply %s (%v)", p, err)
		}
		byName[pg.Name] = append(byName[pg.Name], pg.ID)
	}
	if len(byName["hi"]) != 2 || len(byName[wire.IngressService]) != 1 || len(byName[wire.ControllerService]) != 1 {
		t.Errorf("services answering $SRV.PING: %v", byName)
	}
	for _, id := range byName["hi"] {
		if !replicas[id] {
			t.Errorf("instance %s of hi is not a replica (%v)", id, replicas)
		}
	}

	// The stock nats CLI, when installed, lists them.
	if natsCLI, err := exec.LookPath("nats"); err == nil {
		out, err := exec.Command(natsCLI, "--server", u.natsURL, "--creds", u.creds(), "micro", "ls").CombinedOutput()
		if err != nil || !strings.Contains(string(out), "hi") || !strings.Contains(string(out), wire.ControllerService) {
			t.Errorf("nats micro ls: %v\n%s", err, out)
		}
		t.Logf("nats micro ls:\n%s", out)
		for _, args := range [][]string{{"micro", "info", "hi"}, {"micro", "stats", "hi"}} {
			out, err := exec.Command(natsCLI, append([]string{"--server", u.natsURL, "--creds", u.creds()}, args...)...).CombinedOutput()
			if err != nil || !strings.Contains(string(out), "Call") {
				t.Errorf("nats %s: %v\n%s", strings.Join(args, " "), err, out)
			}
			t.Logf("nats %s:\n%s", strings.Join(args, " "), out)
		}
	} else {
		t.Log("the nats CLI is not installed; skipped `nats micro ls` (go install github.com/nats-io/natscli/nats@v0.5.0)")
	}
}

// collect sends a request to subject and gathers the replies for 500 ms.
func collect(t *testing.T, nc *nats.Conn, subject string) [][]byte {
	t.Helper()
	inbox := nats.NewInbox()
	ch := make(chan *nats.Msg, 256)
	sub, err := nc.ChanSubscribe(inbox, ch)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	if err := nc.PublishRequest(subject, inbox, nil); err != nil {
		t.Fatal(err)
	}
	var out [][]byte
	deadline := time.After(500 * time.Millisecond)
	for {
		select {
		case m := <-ch:
			out = append(out, m.Data)
		case <-deadline:
			return out
		}
	}
}

func TestMetricsOffLoopbackNeedToken(t *testing.T) {
	bin := testutil.Build(t, "./cmd/natserve")
	out, err := exec.Command(bin, "up", "-data", t.TempDir(), "-nats-port", strconv.Itoa(e2e.FreePort(t)), "-metrics-addr", "0.0.0.0:0").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "need a bearer token") {
		t.Fatalf("up with metrics on 0.0.0.0 and no token: %v\n%s", err, out)
	}
	// With a token, /metrics answers 401 without it and 200 with it.
	tok := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tok, []byte("s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	b := testutil.Broker(t)
	port := e2e.FreePort(t)
	testutil.Start(t, nil, bin, "controller", "-nats", b.ClientURL(), "-creds", testutil.Creds(t, b.ClientURL(), "controller"), "-metrics-addr", fmt.Sprintf("0.0.0.0:%d", port), "-metrics-token-file", tok)
	u := fmt.Sprintf("http://127.0.0.1:%d/metrics", port)
	testutil.Eventually(t, 20*time.Second, func() error {
		f, err := metrics.Scrape(u, "s3cret")
		if err != nil {
			return err
		}
		if _, found := f.Value("natserve_controller_leader", nil); !found {
			return fmt.Errorf("no natserve_controller_leader")
		}
		return nil
	})
	resp, err := http.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("scrape without the token: %s, want 401", resp.Status)
	}
	if _, err := metrics.Scrape(u, "wrong"); err == nil || !strings.Contains(err.Error(), "401") {
		t.Errorf("scrape with a wrong token: %v", err)
	}
}
