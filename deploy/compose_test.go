package deploy_test

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/natserve/natserve/client"
	"github.com/natserve/natserve/internal/e2e"
	"github.com/natserve/natserve/internal/testutil"
)

func TestMain(m *testing.M) { testutil.Main(m, downSharedStack) }

type traffic struct {
	ok, failed atomic.Int64
	codes      sync.Map // status → *atomic.Int64
	stop       chan struct{}
	wg         sync.WaitGroup
}

// startTraffic sends GET url from workers goroutines, each at most every 10 ms.
func startTraffic(url string, workers int) *traffic {
	tr := &traffic{stop: make(chan struct{})}
	hc := &http.Client{Timeout: 10 * time.Second}
	for i := 0; i < workers; i++ {
		tr.wg.Add(1)
		go func() {
			defer tr.wg.Done()
			tick := time.NewTicker(10 * time.Millisecond)
			defer tick.Stop()
			for {
				select {
				case <-tr.stop:
					return
				case <-tick.C:
				}
				resp, err := hc.Get(url)
				code := 0
				if err == nil {
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					code = resp.StatusCode
				}
				v, _ := tr.codes.LoadOrStore(code, new(atomic.Int64))
				v.(*atomic.Int64).Add(1)
				if code == 200 {
					tr.ok.Add(1)
				} else {
					tr.failed.Add(1)
				}
			}
		}()
	}
	return tr
}

func (tr *traffic) finish() (ratio float64, summary string) {
	close(tr.stop)
	tr.wg.Wait()
	ok, failed := tr.ok.Load(), tr.failed.Load()
	var parts []string
	tr.codes.Range(func(k, v any) bool {
		parts = append(parts, fmt.Sprintf("%d×%d", v.(*atomic.Int64).Load(), k))
		return true
	})
	if ok+failed == 0 {
		return 0, "no requests"
	}
	return float64(ok) / float64(ok+failed), fmt.Sprintf("%d requests, %.2f%% ok (status: %s)", ok+failed, 100*float64(ok)/float64(ok+failed), strings.Join(parts, " "))
}

func TestDockerCompose(t *testing.T) {
	c := sharedStack(t)
	base, natsURL := c.BaseURL(), fmt.Sprintf("nats://127.0.0.1:%d", c.NATSPort)
	nats2Port := c.NATS2Port
	run := func(args ...string) {
		t.Helper()
		if _, err := c.Compose(e2e.Ctx(2*time.Minute), args...); err != nil {
			t.Fatal(err)
		}
	}

	// controller1's dashboard is published, behind its login token.
	testutil.Eventually(t, 30*time.Second, func() error {
		resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/", c.DashboardPort))
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized {
			return fmt.Errorf("dashboard without its token: %s, want 401", resp.Status)
		}
		return nil
	})

	// The admin credentials, copied out of the one-shot auth service's
	// volume (composestack); the brokers refuse anonymous clients.
	creds := c.Creds
	if anon, err := nats.Connect(natsURL, nats.Timeout(5*time.Second), nats.NoReconnect()); err == nil {
		anon.Close()
		t.Fatal("a client without credentials connected to nats1")
	} else if !strings.Contains(strings.ToLower(err.Error()), "authorization") {
		t.Fatalf("without credentials: %v, want an authorization violation", err)
	}
	cl, err := client.Connect(e2e.Ctx(10*time.Second), natsURL, client.WithTimeout(20*time.Second), client.WithCreds(creds))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	// The setup service applies the quick start's config (deploy/Dockerfile).
	quick, err := client.LoadConfig(filepath.Join("..", "examples", "quickstart", "serve.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var ds []client.Deployment
	testutil.Eventually(t, 3*time.Minute, func() error { // correctness, not timing: a loaded machine starts slowly
		ds, err = cl.List(e2e.Ctx(5 * time.Second))
		if err != nil {
			return err
		}
		for _, d := range ds {
			if d.Status != client.StatusHealthy {
				return fmt.Errorf("%s is %s", d.Spec.Name, d.Status)
			}
		}
		if len(ds) != len(quick.Deployments) {
			return fmt.Errorf("%d deployments, want the quick start's %d", len(ds), len(quick.Deployments))
		}
		return nil
	})
	servectl := testutil.Build(t, "./cmd/servectl")
	out, err := exec.Command(servectl, "list-deployments", "--server", natsURL, "--creds", creds).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "rep-1") || !strings.Contains(string(out), "/api") {
		t.Fatalf("servectl list-deployments: %v\n%s", err, out)
	}

	// Replicas are spread over both workers.
	nodesOf := func() map[string]int {
		nodes := map[string]int{}
		ds, err := cl.List(e2e.Ctx(5 * time.Second))
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range ds {
			for _, r := range d.Replicas {
				if r.State == client.ReplicaRunning {
					nodes[r.Node]++
				}
			}
		}
		return nodes
	}
	n := nodesOf()
	if n["worker1"] == 0 || n["worker2"] == 0 {
		t.Fatalf("replicas per node: %v", n)
	}
	total := n["worker1"] + n["worker2"]

	// Stopping a worker moves its replicas to the other within 10 s; HTTP keeps answering.
	tr := startTraffic(base+"/rep-1?data=0.3", 8)
	time.Sleep(time.Second) // traffic before the event, measured with it
	start := time.Now()
	run("stop", "worker1")
	testutil.Eventually(t, 10*time.Second, func() error {
		n := nodesOf()
		if n["worker1"] != 0 || n["worker2"] != total {
			return fmt.Errorf("replicas per node %v", n)
		}
		return nil
	})
	moved := time.Since(start)
	time.Sleep(time.Second)
	ratio, summary := tr.finish()
	t.Logf("worker1 stopped: replicas on worker2 after %v; traffic: %s", moved.Round(10*time.Millisecond), summary)
	if ratio < 0.99 {
		t.Errorf("success ratio %.4f while a worker stopped, want ≥ 0.99", ratio)
	}
	run("start", "worker1")

	// Stopping a NATS node under load: traffic continues, KV takes writes, the node rejoins.
	tr = startTraffic(base+"/rep-2?data=0.3", 8)
	time.Sleep(time.Second)
	run("stop", "nats2")
	if err := cl.Scale(e2e.Ctx(20*time.Second), "rep-2", 3); err != nil {
		t.Fatalf("scale with nats2 down: %v", err)
	}
	if _, err := cl.WaitHealthy(e2e.Ctx(30*time.Second), "rep-2", nil); err != nil {
		t.Fatalf("rep-2 with nats2 down: %v", err)
	}
	time.Sleep(2 * time.Second)
	ratio, summary = tr.finish()
	t.Logf("nats2 stopped; the controller wrote KV (rep-2 scaled to 3, HEALTHY); traffic: %s", summary)
	if ratio < 0.99 {
		t.Errorf("success ratio %.4f while a NATS node stopped, want ≥ 0.99", ratio)
	}
	run("start", "nats2")
	testutil.Eventually(t, 30*time.Second, func() error {
		nc, err := client.Connect(e2e.Ctx(2*time.Second), fmt.Sprintf("nats://127.0.0.1:%d", nats2Port), client.WithCreds(creds))
		if err != nil {
			return err
		}
		defer nc.Close()
		d, err := nc.Get(e2e.Ctx(2*time.Second), "rep-2")
		if err != nil {
			return err
		}
		if d.Spec.NumReplicas != 3 {
			return fmt.Errorf("nats2 serves rep-2 with %d replicas", d.Spec.NumReplicas)
		}
		return nil
	})
	t.Logf("nats2 rejoined and serves the control plane")

	// Killing the leading controller: the standby takes over within 10 s and a deploy succeeds.
	st, err := cl.Status(e2e.Ctx(5 * time.Second))
	if err != nil {
		t.Fatal(err)
	}
	leader := st.Leader
	start = time.Now()
	run("kill", leader)
	testutil.Eventually(t, 10*time.Second, func() error {
		st, err := cl.Status(e2e.Ctx(time.Second))
		if err != nil {
			return err
		}
		if st.Leader == leader {
			return fmt.Errorf("leader still %s", leader)
		}
		return nil
	})
	t.Logf("%s killed; the standby leads after %v", leader, time.Since(start).Round(10*time.Millisecond))
	spec := client.DeploymentSpec{Name: "after-failover", Class: "MyFirstDeployment", InitArgs: json.RawMessage(`["still here"]`)}
	if _, err := cl.Deploy(e2e.Ctx(10*time.Second), spec); err != nil {
		t.Fatal(err)
	}
	if _, err := cl.WaitHealthy(e2e.Ctx(30*time.Second), "after-failover", nil); err != nil {
		t.Fatal(err)
	}
	if got, err := client.Call[string](e2e.Ctx(5*time.Second), cl.Handle("after-failover"), "x"); err != nil || got != "still here" {
		t.Fatalf("after failover: %q %v", got, err)
	}
}
