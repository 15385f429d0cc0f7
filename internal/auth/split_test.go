package auth_test

import (
	"context"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats.go"

	"github.com/natserve/natserve/broker"
	"github.com/natserve/natserve/internal/auth"
)

// TestSplitAndLoadServer splits a set into per-role directories and runs a
// broker from the broker's share alone (JWTs, no seed): each role's creds
// connect, an anonymous client and another operator's accounts do not.
func TestSplitAndLoadServer(t *testing.T) {
	set, err := auth.Open(filepath.Join(t.TempDir(), "all"), "w1")
	if err != nil {
		t.Fatal(err)
	}
	roles := t.TempDir()
	if _, err := set.Split(roles, "w1"); err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"admin":      "admin.creds",
		"broker":     "account.jwt cluster.conf operator.jwt route.secret server.conf sys.jwt",
		"client":     "client.creds",
		"controller": "controller.creds signer.nk",
		"ingress":    "ingress.creds",
		"node-w1":    "node-w1.creds",
	}
	dirs, _ := os.ReadDir(roles)
	if len(dirs) != len(want) {
		t.Errorf("%d role directories, want %d", len(dirs), len(want))
	}
	for role, files := range want {
		es, err := os.ReadDir(filepath.Join(roles, role))
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, e := range es {
			got = append(got, e.Name())
		}
		sort.Strings(got)
		if strings.Join(got, " ") != files {
			t.Errorf("%s/ holds %v, want %s", role, got, files)
		}
	}
	bdir := filepath.Join(roles, "broker")
	if !auth.ServerOnly(bdir) || auth.ServerOnly(set.Dir) {
		t.Errorf("ServerOnly: broker share %v, full set %v", auth.ServerOnly(bdir), auth.ServerOnly(set.Dir))
	}
	srv, err := auth.LoadServer(bdir)
	if err != nil {
		t.Fatal(err)
	}
	if srv.OperatorJWT != set.OperatorJWT || srv.Account != set.Account || srv.SystemAccount != set.SystemAccount || srv.AccountJWT != set.AccountJWT {
		t.Errorf("LoadServer read a different set: account %s, want %s", srv.Account, set.Account)
	}

	cfg := broker.DefaultConfig()
	cfg.Port = -1
	cfg.DataDir = t.TempDir()
	cfg.Auth = srv
	b, err := broker.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Shutdown(context.Background()) })
	for _, f := range []string{"admin/admin.creds", "controller/controller.creds", "ingress/ingress.creds", "node-w1/node-w1.creds"} {
		nc, err := nats.Connect(b.ClientURL(), nats.UserCredentials(filepath.Join(roles, f)))
		if err != nil {
			t.Errorf("%s: %v", f, err)
			continue
		}
		nc.Close()
	}
	if nc, err := nats.Connect(b.ClientURL(), nats.NoReconnect()); err == nil {
		nc.Close()
		t.Error("an anonymous client connected")
	}

	// Another operator's account JWT beside this operator: refused.
	other, err := auth.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	b2, _ := os.ReadFile(filepath.Join(other.Dir, "account.jwt"))
	if err := os.WriteFile(filepath.Join(bdir, "account.jwt"), b2, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := auth.LoadServer(bdir); err == nil || !strings.Contains(err.Error(), "not the operator") {
		t.Errorf("LoadServer with another operator's account: %v, want refused", err)
	}
}

// TestRotatingTheSignerCutsOldIdentities: what the README offers until
// replica identities can be revoked one by one. A replica identity minted
// with the account signing key connects; after the signing key is deleted
// and the set opened again (new key, every role re-signed) and the broker
// restarted with it, that identity is refused and the re-signed roles and
// newly minted replicas connect.
func TestRotatingTheSignerCutsOldIdentities(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "all")
	set, err := auth.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	old, err := set.Signer().Replica("dep-a")
	if err != nil {
		t.Fatal(err)
	}
	oldCreds := filepath.Join(t.TempDir(), "old.creds")
	if err := os.WriteFile(oldCreds, []byte(old), 0o600); err != nil {
		t.Fatal(err)
	}
	data := t.TempDir()
	start := func(s *auth.Set) *broker.Broker {
		cfg := broker.DefaultConfig()
		cfg.Port, cfg.DataDir, cfg.Auth = -1, data, s
		b, err := broker.New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		if err := b.Start(context.Background()); err != nil {
			t.Fatal(err)
		}
		return b
	}
	connect := func(url, creds string) error {
		nc, err := nats.Connect(url, nats.UserCredentials(creds), nats.NoReconnect())
		if err == nil {
			nc.Close()
		}
		return err
	}
	b := start(set)
	if err := connect(b.ClientURL(), oldCreds); err != nil {
		t.Fatalf("the replica identity before rotation: %v", err)
	}
	_ = b.Shutdown(context.Background())

	if err := os.Remove(filepath.Join(dir, auth.SignerFile)); err != nil {
		t.Fatal(err)
	}
	if set, err = auth.Open(dir); err != nil {
		t.Fatal(err)
	}
	b = start(set)
	defer func() { _ = b.Shutdown(context.Background()) }()
	if err := connect(b.ClientURL(), oldCreds); err == nil {
		t.Fatal("the old replica identity still connects after the signing key was rotated")
	} else {
		t.Logf("old replica identity after rotation: %v", err)
	}
	fresh, err := set.Signer().Replica("dep-a")
	if err != nil {
		t.Fatal(err)
	}
	freshCreds := filepath.Join(t.TempDir(), "fresh.creds")
	if err := os.WriteFile(freshCreds, []byte(fresh), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, c := range []string{set.CredsPath("admin"), set.CredsPath("controller"), freshCreds} {
		if err := connect(b.ClientURL(), c); err != nil {
			t.Errorf("%s after rotation: %v", filepath.Base(c), err)
		}
	}
}

// TestRevokeIsKept: a revocation is signed into the account JWT, written
// with it, and signed in again by a later Open; a broker's share cannot
// revoke, and a key that is not a user's is refused.
func TestRevokeIsKept(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "all")
	set, err := auth.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	creds, err := set.Signer().Replica("dep-a")
	if err != nil {
		t.Fatal(err)
	}
	user, err := auth.CredsUser(creds)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := set.Revoke(user)
	if err != nil {
		t.Fatal(err)
	}
	revoked := func(tok string) bool {
		ac, err := jwt.DecodeAccountClaims(tok)
		if err != nil {
			t.Fatal(err)
		}
		_, ok := ac.Revocations[user]
		return ok
	}
	if !revoked(tok) || !revoked(set.AccountJWT) {
		t.Fatal("the account JWT Revoke returned does not revoke the user")
	}
	again, err := auth.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	if !revoked(again.AccountJWT) {
		t.Fatal("a later Open dropped the revocation")
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "account.jwt")); !revoked(string(b)) {
		t.Fatal("account.jwt on disk does not revoke the user")
	}
	if _, err := set.Revoke(set.Account); err == nil {
		t.Error("revoking an account key: accepted")
	}
	roles := t.TempDir()
	if _, err := set.Split(roles); err != nil {
		t.Fatal(err)
	}
	srv, err := auth.LoadServer(filepath.Join(roles, "broker"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := srv.Revoke(user); err == nil || !strings.Contains(err.Error(), "operator key") {
		t.Errorf("a broker's share revoking: %v, want refused for lack of the operator key", err)
	}
}
