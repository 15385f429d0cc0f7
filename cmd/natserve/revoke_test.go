package main_test

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/natserve/natserve/client"
	"github.com/natserve/natserve/internal/auth"
	"github.com/natserve/natserve/internal/e2e"
	"github.com/natserve/natserve/internal/store"
	"github.com/natserve/natserve/internal/testutil"
	"github.com/natserve/natserve/internal/wire"
)

// TestDeletedDeploymentIdentityRevoked: an attacker who took a replica's
// identity (its creds, as the replica's code could leak them) is connected
// and listening on the deployment's subject in its queue group. When the
// deployment is deleted, natserve up revokes that identity once its replica
// has stopped: the attacker's connection is closed and it cannot connect
// again; the deployment deployed again under the same name serves every
// request, none of them reaching the attacker.
func TestDeletedDeploymentIdentityRevoked(t *testing.T) {
	u := up(t)
	cl, err := client.Connect(e2e.Ctx(5*time.Second), u.natsURL, client.WithCreds(u.creds()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	spec := client.DeploymentSpec{Name: "dep-x", Class: "Model", InitArgs: json.RawMessage(`["/model/x.pkl"]`), NumReplicas: 1}
	testutil.Eventually(t, 30*time.Second, func() error { // the node agent registers
		_, err := cl.Deploy(e2e.Ctx(10*time.Second), spec)
		return err
	})
	if _, err := cl.WaitHealthy(e2e.Ctx(60*time.Second), "dep-x", nil); err != nil {
		t.Fatal(err)
	}

	stolen, user := stealIdentity(t, u, "dep-x", "")
	credsFile := filepath.Join(t.TempDir(), "stolen.creds")
	if err := os.WriteFile(credsFile, []byte(stolen), 0o600); err != nil {
		t.Fatal(err)
	}

	// The attacker listens as a replica of dep-x.
	var received atomic.Int64
	var closedWith atomic.Value
	attacker, err := nats.Connect(u.natsURL, nats.UserCredentials(credsFile), nats.NoReconnect(),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) { closedWith.Store(err.Error()) }))
	if err != nil {
		t.Fatalf("the stolen identity before delete: %v", err)
	}
	defer attacker.Close()
	if _, err := attacker.QueueSubscribe(wire.DeploymentSubject("dep-x"), wire.QueueGroup("dep-x"), func(*nats.Msg) { received.Add(1) }); err != nil {
		t.Fatal(err)
	}
	if err := attacker.Flush(); err != nil {
		t.Fatal(err)
	}

	if err := cl.Delete(e2e.Ctx(10*time.Second), "dep-x"); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for !attacker.IsClosed() && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if !attacker.IsClosed() {
		t.Fatal("the stolen identity's connection is still open 30 s after delete")
	}
	t.Logf("the attacker's connection was closed: %v", closedWith.Load())
	if _, err := nats.Connect(u.natsURL, nats.UserCredentials(credsFile), nats.NoReconnect()); !errors.Is(err, nats.ErrAuthorization) && (err == nil || !strings.Contains(strings.ToLower(err.Error()), "authorization")) {
		t.Fatalf("the stolen identity connecting after delete: %v, want an authorization violation", err)
	}
	rev, _ := os.ReadFile(filepath.Join(u.data, "auth", auth.RevocationsFile))
	if !strings.Contains(string(rev), user) {
		t.Errorf("%s does not list the revoked identity %s:\n%s", auth.RevocationsFile, user, rev)
	}

	// The same name again: it serves, and the old identity gets nothing.
	if _, err := cl.Deploy(e2e.Ctx(10*time.Second), spec); err != nil {
		t.Fatal(err)
	}
	if _, err := cl.WaitHealthy(e2e.Ctx(60*time.Second), "dep-x", nil); err != nil {
		t.Fatal(err)
	}
	for i := range 20 {
		if _, err := client.Call[string](e2e.Ctx(10*time.Second), cl.Handle("dep-x"), 0.2); err != nil {
			t.Fatalf("call %d of the new dep-x: %v", i, err)
		}
	}
	if _, err := nats.Connect(u.natsURL, nats.UserCredentials(credsFile), nats.NoReconnect()); err == nil {
		t.Fatal("the stolen identity connects after the name was deployed again")
	}
	if n := received.Load(); n != 0 {
		t.Fatalf("the stolen identity received %d requests", n)
	}

	// Deleted and deployed again at once, while its replica is still
	// stopping: the old identity is revoked before the new deployment
	// exists (its drain is cut short).
	stolen2, user2 := stealIdentity(t, u, "dep-x", user)
	credsFile2 := filepath.Join(t.TempDir(), "stolen2.creds")
	if err := os.WriteFile(credsFile2, []byte(stolen2), 0o600); err != nil {
		t.Fatal(err)
	}
	var received2 atomic.Int64
	attacker2, err := nats.Connect(u.natsURL, nats.UserCredentials(credsFile2), nats.NoReconnect())
	if err != nil {
		t.Fatalf("the second stolen identity before delete: %v", err)
	}
	defer attacker2.Close()
	if _, err := attacker2.QueueSubscribe(wire.DeploymentSubject("dep-x"), wire.QueueGroup("dep-x"), func(*nats.Msg) { received2.Add(1) }); err != nil {
		t.Fatal(err)
	}
	_ = attacker2.Flush()
	if err := cl.Delete(e2e.Ctx(10*time.Second), "dep-x"); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 10*time.Second, func() error { // a deploy racing the delete's own write may be asked to retry
		_, err := cl.Deploy(e2e.Ctx(10*time.Second), spec)
		return err
	})
	if !attacker2.IsClosed() {
		// The revocation reached the broker before the deploy answered;
		// the close travels to the client right after.
		deadline := time.Now().Add(5 * time.Second)
		for !attacker2.IsClosed() && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
		if !attacker2.IsClosed() {
			t.Fatal("the second stolen identity's connection is open after its name was deployed again")
		}
	}
	if _, err := cl.WaitHealthy(e2e.Ctx(60*time.Second), "dep-x", nil); err != nil {
		t.Fatal(err)
	}
	for i := range 20 {
		if _, err := client.Call[string](e2e.Ctx(10*time.Second), cl.Handle("dep-x"), 0.2); err != nil {
			t.Fatalf("call %d of the third dep-x: %v", i, err)
		}
	}
	if n := received2.Load(); n != 0 {
		t.Fatalf("the second stolen identity received %d requests", n)
	}
	rev, _ = os.ReadFile(filepath.Join(u.data, "auth", auth.RevocationsFile))
	if !strings.Contains(string(rev), user2) {
		t.Errorf("%s does not list the revoked identity %s", auth.RevocationsFile, user2)
	}
}

// stealIdentity reads a replica identity of deployment (other than the
// user not) from its assignment, as admin: what a replica's code could
// leak. It returns the creds and the user's public key.
func stealIdentity(t *testing.T, u *upStack, deployment, not string) (string, string) {
	t.Helper()
	nc, err := nats.Connect(u.natsURL, nats.UserCredentials(u.creds()))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	kv, err := js.KeyValue(e2e.Ctx(5*time.Second), wire.BucketAssignments)
	if err != nil {
		t.Fatal(err)
	}
	keys, err := kv.Keys(e2e.Ctx(5 * time.Second))
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range keys {
		e, err := kv.Get(e2e.Ctx(5*time.Second), k)
		if err != nil {
			continue
		}
		var a store.Assignment
		if json.Unmarshal(e.Value(), &a) != nil || a.Deployment != deployment || a.Creds == "" || a.Desired != store.DesiredRun {
			continue
		}
		user, err := auth.CredsUser(a.Creds)
		if err != nil {
			t.Fatal(err)
		}
		if user != not {
			return a.Creds, user
		}
	}
	t.Fatalf("no replica identity in %s's assignments", deployment)
	return "", ""
}
