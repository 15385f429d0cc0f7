package durable_test

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/natserve/natserve/client"
	"github.com/natserve/natserve/internal/auth"
	"github.com/natserve/natserve/internal/e2e"
	"github.com/natserve/natserve/internal/testutil"
	"github.com/natserve/natserve/internal/wire"
)

// An idle replica waits for stored requests in one long pull (10 min,
// server heartbeat 2 min: worker/durable.go). These tests make sure no
// stored request waits for that pull's expiry or heartbeat after what can
// lose the pull at the server: a broker restart, a consumer leader change
// (a step-down, the leader's node killed, an R1 consumer's node killed and
// started again) and a replica killed. Each starts real broker processes
// (`natserve broker`), a controller and a node agent whose replicas are
// real processes, lets the deployment's one replica settle into its long
// pull, does the fault, then submits a stored request and measures how long
// it took to start. The bound asserted (idleRecoverBound) is below the 4 min
// a missed heartbeat takes to notice and far above what a loaded machine
// needs.
const idleRecoverBound = 90 * time.Second

// idleSettle is how long a replica is left idle before a fault: its
// no-wait pull is done and its long pull waits at the server.
const idleSettle = 3 * time.Second

type brokerNode struct {
	t                 *testing.T
	bin, name, data   string
	authDir           string
	port, clusterPort int
	routes            []string
	proc              *testutil.Proc
}

func (b *brokerNode) url() string { return fmt.Sprintf("nats://127.0.0.1:%d", b.port) }

// start starts (or restarts, on the same data) the broker process and
// waits until its client port accepts.
func (b *brokerNode) start() {
	b.t.Helper()
	args := []string{"broker", "-name", b.name, "-port", strconv.Itoa(b.port), "-data", b.data, "-auth", b.authDir, "-log-level", "warn"}
	if b.clusterPort != 0 {
		args = append(args, "-cluster-port", strconv.Itoa(b.clusterPort), "-routes", strings.Join(b.routes, ","))
	}
	b.proc = testutil.Start(b.t, nil, b.bin, args...)
	testutil.Eventually(b.t, 30*time.Second, func() error {
		if b.proc.Exited() {
			b.t.Fatalf("broker %s exited:\n%s", b.name, b.proc.Output())
		}
		c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", b.port), time.Second)
		if err != nil {
			return err
		}
		return c.Close()
	})
}

func (b *brokerNode) kill() {
	_ = b.proc.Signal(syscall.SIGKILL)
	_, _ = b.proc.Wait(10 * time.Second)
}

// brokers starts n broker processes sharing one auth directory (a cluster
// when n > 1) and returns them with the comma-separated URL of all.
func brokers(t *testing.T, bin string, n int) ([]*brokerNode, string) {
	t.Helper()
	authDir := t.TempDir()
	if _, err := auth.Open(authDir); err != nil { // written once, before the members read it
		t.Fatal(err)
	}
	bs := make([]*brokerNode, n)
	for i := range bs {
		bs[i] = &brokerNode{t: t, bin: bin, name: fmt.Sprintf("b%d", i+1), data: t.TempDir(), authDir: authDir, port: e2e.FreePort(t)}
		if n > 1 {
			bs[i].clusterPort = e2e.FreePort(t)
		}
	}
	var urls []string
	for i, b := range bs {
		for j, o := range bs {
			if i != j {
				b.routes = append(b.routes, fmt.Sprintf("nats-route://127.0.0.1:%d", o.clusterPort))
			}
		}
		urls = append(urls, b.url())
	}
	for _, b := range bs {
		b.start()
	}
	url := strings.Join(urls, ",")
	testutil.UseAuth(t, url, authDir)
	return bs, url
}

// idleStack is a controller (kvReplicas) on the brokers; the agent is
// started by the test, on the broker it chooses.
func idleStack(t *testing.T, url string, kvReplicas int) *e2e.Stack {
	t.Helper()
	s := e2e.NewOn(t, url, nil, nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond))
	s.Controller("c1", "-kv-replicas", strconv.Itoa(kvReplicas))
	return s
}

// agentOn starts node agent n1 connected to the broker at url only, so that
// its replicas are connected there.
func agentOn(t *testing.T, s *e2e.Stack, url string) *testutil.Proc {
	t.Helper()
	return testutil.Start(t, nil, s.Program, "agent", "-nats", url, "-creds", testutil.Creds(t, s.URL, "node-n1"), "-name", "n1")
}

// storedRuns submits one stored request and returns how long it took from
// its submission to its start (the replica's "started" event), failing the
// test if it did not succeed within idleRecoverBound.
func storedRuns(t *testing.T, s *e2e.Stack, dep, after string) time.Duration {
	t.Helper()
	return storedRunsWithin(t, s, dep, after, idleRecoverBound)
}

// storedRunsWithin is storedRuns with bound instead of idleRecoverBound.
func storedRunsWithin(t *testing.T, s *e2e.Stack, dep, after string, bound time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	var id string
	testutil.Eventually(t, 30*time.Second, func() error { // the broker may still be electing
		var err error
		id, err = s.Client.Handle(dep).Method("Add").Submit(e2e.Ctx(5*time.Second), 2, 3)
		return err
	})
	submitted := time.Since(start)
	st, err := s.Client.Wait(e2e.Ctx(bound), id)
	if err != nil {
		t.Fatalf("after %s: the stored request submitted %v later did not end within %v: %v", after, submitted.Round(time.Millisecond), bound, err)
	}
	if st.Status != wire.AsyncSucceeded {
		t.Fatalf("after %s: the stored request ended %s", after, st.Status)
	}
	ran := time.Since(start)
	if st.StartedAt != nil && st.SubmittedAt != nil {
		ran = st.StartedAt.Sub(*st.SubmittedAt)
	}
	t.Logf("after %s: stored request submitted in %v, started %v after its submission, result read %v after the first try",
		after, submitted.Round(time.Millisecond), ran.Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
	return ran
}

// consumerLeader returns the server leading dep's request consumer.
func consumerLeader(t *testing.T, s *e2e.Stack, dep string) string {
	t.Helper()
	js, err := jetstream.New(s.Client.Conn())
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Client.OpenRequestStream(e2e.Ctx(time.Minute), dep); err != nil { // made on the first stored request otherwise
		t.Fatal(err)
	}
	var leader string
	testutil.Eventually(t, 60*time.Second, func() error {
		c, err := js.Consumer(e2e.Ctx(2*time.Second), wire.AsyncStream(dep), wire.AsyncConsumer)
		if err != nil {
			return err
		}
		if cl := c.CachedInfo().Cluster; cl == nil || cl.Leader == "" {
			return fmt.Errorf("consumer of %s has no leader", dep)
		} else {
			leader = cl.Leader
		}
		return nil
	})
	return leader
}

func deployIdle(t *testing.T, s *e2e.Stack, dep string) {
	t.Helper()
	if _, err := s.Client.Deploy(e2e.Ctx(20*time.Second), client.DeploymentSpec{Name: dep, Class: "Probe", InitArgs: json.RawMessage(`["idle"]`),
		NumReplicas: 1, MaxOngoingRequests: 2, GracefulShutdownTimeoutS: 1}); err != nil {
		t.Fatal(err)
	}
}

// TestIdlePullBrokerRestart: natserve's broker alone, killed -9 and started
// again while the replica waits in its long pull; then the replica killed
// -9 and replaced.
func TestIdlePullBrokerRestart(t *testing.T) {
	bin := testutil.Build(t, "./cmd/natserve")
	bs, url := brokers(t, bin, 1)
	s := idleStack(t, url, 1)
	agentOn(t, s, url)
	s.WaitNodes(1)
	const dep = "idle"
	deployIdle(t, s, dep)
	s.WaitHealthy(dep)
	storedRuns(t, s, dep, "the start")
	time.Sleep(idleSettle)

	pids := s.PIDs(dep)
	bs[0].kill()
	bs[0].start()
	storedRuns(t, s, dep, "a broker restart (kill -9)")
	testutil.Eventually(t, 30*time.Second, func() error {
		for pid := range s.PIDs(dep) {
			if _, ok := pids[pid]; !ok {
				return fmt.Errorf("replica %d is new: the test wants the one that waited through the restart", pid)
			}
		}
		return nil
	})

	time.Sleep(idleSettle)
	for pid := range s.PIDs(dep) {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	t0 := time.Now()
	testutil.Eventually(t, 60*time.Second, func() error {
		for pid := range s.PIDs(dep) {
			if _, ok := pids[pid]; !ok {
				return nil
			}
		}
		return fmt.Errorf("no new replica yet")
	})
	t.Logf("replica killed -9, replaced in %v", time.Since(t0).Round(time.Millisecond))
	time.Sleep(idleSettle)
	storedRuns(t, s, dep, "a replica kill (-9), replaced")
}

// TestIdlePullLeaderChange: three brokers in a cluster; the replica is
// connected to a broker that does not lead its deployment's request
// consumer, so that nothing it sees as a connection ends its long pull.
//
//   - R3 (controller -kv-replicas 3): the consumer's leader steps down, then
//     the node of its new leader is killed -9. The new leader answers the
//     pulls it knows of with a 409, and the replica also sees the consumer's
//     leader-elected advisory.
//   - R1 (-kv-replicas 1, only with $NATSERVE_IDLE_R1 set: it takes
//     minutes): the node holding the consumer is killed -9 and started
//     again. The consumer comes back with no memory of the waiting pull, no
//     409 is sent and the broker publishes no advisory for an R1 consumer:
//     only the pull's heartbeat finds it, within 2 × storedFetchBeat (2
//     min). A cluster runs its streams at R3 (-kv-replicas 3), where the
//     new leader answers the pulls it knows of with a 409, and the
//     leader-elected advisory covers a pull whose registration had not been
//     replicated yet.
func TestIdlePullLeaderChange(t *testing.T) {
	if testing.Short() {
		t.Skip("three brokers and two kills: not in -short")
	}
	bin := testutil.Build(t, "./cmd/natserve")
	rs := []int{3}
	if os.Getenv("NATSERVE_IDLE_R1") != "" {
		rs = append(rs, 1)
	}
	for _, r := range rs {
		t.Run(fmt.Sprintf("R%d", r), func(t *testing.T) {
			bs, url := brokers(t, bin, 3)
			byName := map[string]*brokerNode{}
			for _, b := range bs {
				byName[b.name] = b
			}
			// The replicas are connected to b3 only, the controller to b1
			// and b2 (the broker places an R1 stream at the server the
			// request to create it came from). Of a few deployments, the
			// test takes one whose consumer b3 does not lead.
			home := bs[2]
			s := e2e.NewOn(t, url, nil, nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond))
			testutil.Start(t, nil, s.Natserve, "controller", "-nats", bs[0].url()+","+bs[1].url(), "-creds", testutil.Creds(t, s.URL, "controller"),
				"-id", "c1", "-node-timeout", "2s", "-lease-ttl", "3s", "-kv-replicas", strconv.Itoa(r))
			agentOn(t, s, home.url())
			s.WaitNodes(1)
			var dep, leader string
			for i := 0; i < 6 && dep == ""; i++ {
				d := fmt.Sprintf("idle%d", i)
				deployIdle(t, s, d)
				if l := consumerLeader(t, s, d); l != home.name {
					dep, leader = d, l
				}
			}
			if dep == "" {
				t.Fatalf("%s leads the consumers of all 6 deployments", home.name)
			}
			s.WaitHealthy(dep)
			t.Logf("%s: consumer leader %s, replica connected to %s", dep, leader, home.name)
			storedRuns(t, s, dep, "the start")
			time.Sleep(idleSettle)

			if r == 3 {
				var third string
				for _, b := range bs {
					if b.name != leader && b != home {
						third = b.name
					}
				}
				req := fmt.Sprintf(`{"placement":{"preferred":%q}}`, third)
				if _, err := s.Client.Conn().Request("$JS.API.CONSUMER.LEADER.STEPDOWN."+wire.AsyncStream(dep)+"."+wire.AsyncConsumer, []byte(req), 5*time.Second); err != nil {
					t.Fatal(err)
				}
				var now string
				testutil.Eventually(t, 30*time.Second, func() error {
					if now = consumerLeader(t, s, dep); now == leader {
						return fmt.Errorf("%s still leads", now)
					}
					return nil
				})
				t.Logf("consumer leader stepped down: %s → %s", leader, now)
				storedRuns(t, s, dep, "a consumer leader step-down")
				time.Sleep(idleSettle)
				leader = now
			}
			if leader == home.name {
				t.Fatalf("the consumer's leader is the replica's broker %s: the kill would be a reconnect", leader)
			}
			victim := byName[leader]
			victim.kill()
			t.Logf("killed -9 %s (the consumer's leader)", victim.name)
			if r == 1 {
				// An R1 consumer has no other server: it comes back with its node.
				victim.start()
			} else {
				defer victim.start() // quorum for the stack's clean-up
				testutil.Eventually(t, 30*time.Second, func() error {
					if now := consumerLeader(t, s, dep); now == leader {
						return fmt.Errorf("%s still leads", now)
					}
					return nil
				})
			}
			bound := idleRecoverBound
			if r == 1 {
				bound += 2 * 2 * time.Minute // worker's storedFetchBeat, twice
			}
			storedRunsWithin(t, s, dep, "killing -9 the consumer leader's node "+victim.name, bound)
		})
	}
}
