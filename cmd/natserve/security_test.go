package main_test

import (
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
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

// attacker is a NATS connection of one role that records the permission
// violations the broker reports.
type attacker struct {
	nc   *nats.Conn
	errs chan error
}

func connectAs(t *testing.T, url string, opts ...nats.Option) (*attacker, error) {
	t.Helper()
	a := &attacker{errs: make(chan error, 64)}
	opts = append(opts, nats.Timeout(3*time.Second), nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
		select {
		case a.errs <- err:
		default:
		}
	}))
	nc, err := nats.Connect(url, opts...)
	if err != nil {
		return nil, err
	}
	t.Cleanup(nc.Close)
	a.nc = nc
	return a, nil
}

func role(t *testing.T, s *e2e.Stack, name string) *attacker {
	t.Helper()
	a, err := connectAs(t, s.URL, testutil.CredsOptions(t, s.URL, name)...)
	if err != nil {
		t.Fatalf("connect as %s: %v", name, err)
	}
	return a
}

func replicaRole(t *testing.T, s *e2e.Stack, deployment string) *attacker {
	t.Helper()
	creds := filepath.Join(t.TempDir(), "replica.creds")
	if err := os.WriteFile(creds, []byte(testutil.ReplicaCreds(t, s.URL, deployment)), 0o600); err != nil {
		t.Fatal(err)
	}
	opts, err := client.CredsOptions(creds)
	if err != nil {
		t.Fatal(err)
	}
	a, err := connectAs(t, s.URL, opts...)
	if err != nil {
		t.Fatalf("connect as replica of %s: %v", deployment, err)
	}
	return a
}

// denied waits for the broker's permissions violation naming subject.
func (a *attacker) denied(t *testing.T, subject string) {
	t.Helper()
	_ = a.nc.Flush()
	deadline := time.After(3 * time.Second)
	for {
		select {
		case err := <-a.errs:
			if errors.Is(err, nats.ErrPermissionViolation) && strings.Contains(err.Error(), subject) {
				return
			}
		case <-deadline:
			t.Fatalf("no permissions violation for %q", subject)
		}
	}
}

func (a *attacker) subDenied(t *testing.T, subject string) {
	t.Helper()
	sub, err := a.nc.SubscribeSync(subject)
	if err == nil {
		defer sub.Unsubscribe()
	}
	a.denied(t, subject)
}

func (a *attacker) pubDenied(t *testing.T, subject string) {
	t.Helper()
	_ = a.nc.Publish(subject, []byte("pwned"))
	a.denied(t, subject)
}

// requestDenied sends a request that must not be answered.
func (a *attacker) requestDenied(t *testing.T, subject string, body []byte) {
	t.Helper()
	m, err := a.nc.Request(subject, body, time.Second)
	if err == nil {
		t.Fatalf("request to %s answered: %s", subject, m.Data)
	}
	a.denied(t, subject)
}

func (a *attacker) kvPutDenied(t *testing.T, bucket, key string) {
	t.Helper()
	js, err := jetstream.New(a.nc)
	if err != nil {
		t.Fatal(err)
	}
	subj := "$KV." + bucket + "." + key
	if _, err := js.Publish(e2e.Ctx(time.Second), subj, []byte(`{"desired":"run"}`)); err == nil {
		t.Fatalf("KV put %s/%s accepted", bucket, key)
	}
	a.denied(t, subj)
}

// TestSecurityProbes plays the attacker of issue 15 with nats.go against
// a running stack: every probe is denied, and the stack still serves.
func TestSecurityProbes(t *testing.T) {
	s := e2e.Standard(t)
	for _, n := range []string{"dep-a", "dep-b"} {
		s.Deploy(client.DeploymentSpec{Name: n, Class: "Probe", InitArgs: json.RawMessage(`["secret-` + n + `"]`), NumReplicas: 1})
	}

	t.Run("anonymous/connect", func(t *testing.T) {
		_, err := connectAs(t, s.URL)
		if !errors.Is(err, nats.ErrAuthorization) {
			t.Fatalf("anonymous connect: %v, want authorization violation", err)
		}
	})
	t.Run("wrong-creds/connect", func(t *testing.T) {
		other, err := auth.Open(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		_, err = connectAs(t, s.URL, nats.UserCredentials(other.CredsPath(wire.RoleAdmin)))
		if err == nil {
			t.Fatal("creds of another operator accepted")
		}
		_, err = client.Connect(e2e.Ctx(5*time.Second), s.URL, client.WithCreds(other.CredsPath(wire.RoleAdmin)))
		if !errors.Is(err, client.ErrNoCreds) || !strings.Contains(err.Error(), "--creds FILE") || strings.Contains(err.Error(), "\n") {
			t.Fatalf("client with wrong creds: %v, want one line naming --creds", err)
		}
	})
	t.Run("client/control-api", func(t *testing.T) {
		a := role(t, s, wire.RoleClient)
		a.requestDenied(t, wire.APISubject(wire.APIList), nil)
		a.requestDenied(t, wire.APISubject(wire.APIDelete), []byte(`{"name":"dep-a"}`))
		a.requestDenied(t, wire.APISubject(wire.APIDeploy), []byte(`{"name":"pwn","class":"Probe"}`))
		a.pubDenied(t, wire.ReplicaSubject("dep-a", "x", wire.VerbStop))
		a.subDenied(t, wire.DeploymentSubject("dep-a"))
		a.subDenied(t, "_INBOX.>")
		a.kvPutDenied(t, wire.BucketLeader, wire.LeaderKey)
		a.kvPutDenied(t, wire.BucketDeployments, "dep-a")
	})
	t.Run("ingress/kv-write", func(t *testing.T) {
		a := role(t, s, wire.RoleIngress)
		a.kvPutDenied(t, wire.BucketDeployments, "dep-a")
		a.kvPutDenied(t, wire.BucketLeader, wire.LeaderKey)
		a.kvPutDenied(t, wire.BucketAssignments, "n1.rpwn")
		a.subDenied(t, "natserve.dep.>")
		a.subDenied(t, wire.EventSubjects(wire.EventLoad))
		a.requestDenied(t, wire.APISubject(wire.APIScale), []byte(`{"name":"dep-a","num_replicas":0}`))
		// Reads: routes yes, specs (init_args) no.
		js, _ := jetstream.New(a.nc)
		if _, err := js.KeyValue(e2e.Ctx(2*time.Second), wire.BucketRoutes); err != nil {
			t.Fatalf("ingress cannot open the routes bucket: %v", err)
		}
		a.nc.Request("$JS.API.STREAM.INFO.KV_"+wire.BucketDeployments, nil, 500*time.Millisecond)
		a.denied(t, "$JS.API.STREAM.INFO.KV_"+wire.BucketDeployments)
	})
	t.Run("replica-of-dep-a/others", func(t *testing.T) {
		a := replicaRole(t, s, "dep-a")
		a.subDenied(t, wire.DeploymentSubject("dep-b"))
		a.subDenied(t, "_INBOX.>")
		a.subDenied(t, wire.InboxPrefix(wire.RoleReplica, "dep-b")+".>")
		a.subDenied(t, wire.ReplicaSubject("dep-b", "*", "*"))
		a.requestDenied(t, wire.APISubject(wire.APIDelete), []byte(`{"name":"dep-b"}`))
		a.kvPutDenied(t, wire.BucketDeployments, "dep-b")
		a.kvPutDenied(t, wire.BucketLeader, wire.LeaderKey)
		a.pubDenied(t, wire.EventSubject(wire.EventLoad, "dep-b"))
		a.pubDenied(t, wire.ReplicaSubject("dep-b", "x", wire.VerbStop))
		// Its own queue group only: a forged responder in another group is refused.
		if _, err := a.nc.QueueSubscribe(wire.DeploymentSubject("dep-a"), "rogue", func(*nats.Msg) {}); err == nil {
			a.denied(t, wire.DeploymentSubject("dep-a"))
		}
		// Calling another deployment as a handle does works.
		cl := client.New(a.nc, client.WithSender(wire.QueueSender("dep-a")))
		if _, err := client.Call[int](e2e.Ctx(10*time.Second), cl.Handle("dep-b").Method("PID")); err != nil {
			t.Fatalf("replica of dep-a calling dep-b: %v", err)
		}
	})
	t.Run("node-n1/others", func(t *testing.T) {
		a := role(t, s, "node-n1")
		a.kvPutDenied(t, wire.BucketNodes, "n2")
		a.kvPutDenied(t, wire.BucketReplicas, wire.ReplicaKey("n2", "rpwn"))
		a.kvPutDenied(t, wire.BucketAssignments, "n1.rpwn")
		a.kvPutDenied(t, wire.BucketLeader, wire.LeaderKey)
		a.subDenied(t, wire.DeploymentSubject("dep-a"))
		a.requestDenied(t, wire.APISubject(wire.APIList), nil)
	})
	t.Run("rogue-agent/register", func(t *testing.T) {
		// No node credentials: the agent cannot join (nor is anything placed on it).
		cmd := exec.Command(s.Program, "agent", "-nats", s.URL, "-name", "rogue")
		cmd.Env = append(os.Environ(), client.CredsEnv+"=")
		cmd.Dir = t.TempDir() // no default admin creds here
		out, err := cmd.CombinedOutput()
		if err == nil || !strings.Contains(string(out), "authorization violation") || !strings.Contains(string(out), "-creds FILE") {
			t.Fatalf("rogue agent: %v %s", err, out)
		}
		st, err := s.Client.Status(e2e.Ctx(5 * time.Second))
		if err != nil {
			t.Fatal(err)
		}
		for _, n := range st.Nodes {
			if n.Name == "rogue" {
				t.Fatal("the rogue node is registered")
			}
		}
	})

	// Everything still serves, with the same replicas.
	for _, n := range []string{"dep-a", "dep-b"} {
		d := s.WaitHealthy(n)
		if len(d.Replicas) != 1 {
			t.Errorf("%s: %d replicas after the probes", n, len(d.Replicas))
		}
	}
}

// TestSecurityStockCLI plays the attacker with the stock nats CLI (natscli)
// when it is installed: anonymous and client-role probes are refused, the
// admin credentials natserve up printed work.
func TestSecurityStockCLI(t *testing.T) {
	natsCLI, err := exec.LookPath("nats")
	if err != nil {
		t.Skip("the nats CLI is not installed (go install github.com/nats-io/natscli/nats@v0.5.0)")
	}
	u := up(t)
	run := func(args ...string) (string, error) {
		out, err := exec.Command(natsCLI, append([]string{"--server", u.natsURL, "--timeout", "2s"}, args...)...).CombinedOutput()
		return string(out), err
	}
	clientCreds := filepath.Join(filepath.Dir(u.creds()), "client.creds")
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"anonymous/req-api-list", []string{"req", wire.APISubject(wire.APIList), ""}, "uthorization"},
		{"anonymous/sub-dep", []string{"sub", "natserve.dep.>", "--count", "1"}, "uthorization"},
		{"anonymous/kv-put-leader", []string{"kv", "put", wire.BucketLeader, wire.LeaderKey, "x"}, "uthorization"},
		{"client/req-api-delete", []string{"--creds", clientCreds, "--inbox-prefix", wire.InboxPrefix(wire.RoleClient), "req", wire.APISubject(wire.APIDelete), `{"name":"x"}`}, "ermissions"},
		{"client/kv-put-deployments", []string{"--creds", clientCreds, "--inbox-prefix", wire.InboxPrefix(wire.RoleClient), "kv", "put", wire.BucketDeployments, "x", "{}"}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, err := run(tc.args...)
			// natscli reports a denied request's permissions violation
			// but may exit 0: the output must name the refusal.
			if err == nil && tc.want == "" {
				t.Fatalf("nats %s succeeded:\n%s", strings.Join(tc.args, " "), out)
			}
			if !strings.Contains(out, tc.want) {
				t.Errorf("nats %s: %v, output lacks %q:\n%s", strings.Join(tc.args, " "), err, tc.want, out)
			}
		})
	}
	t.Run("admin/req-api-list", func(t *testing.T) {
		out, err := run("--creds", u.creds(), "req", wire.APISubject(wire.APIList), "")
		if err != nil || !strings.Contains(out, `"data"`) {
			t.Fatalf("admin creds: %v\n%s", err, out)
		}
	})
}
