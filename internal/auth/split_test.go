package auth_test

import (
	"context"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

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
