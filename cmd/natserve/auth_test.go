package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/natserve/natserve/internal/auth"
)

// TestAuthInitSplit: auth init -split writes each role's share into its own
// directory, and the broker's share holds no seed.
func TestAuthInitSplit(t *testing.T) {
	dir, roles := filepath.Join(t.TempDir(), "all"), filepath.Join(t.TempDir(), "roles")
	var out, errb bytes.Buffer
	if err := runAuth([]string{"init", "-dir", dir, "-nodes", "w1,w2", "-split", roles}, &out, &errb); err != nil {
		t.Fatalf("%v\n%s", err, errb.String())
	}
	for _, p := range []string{"broker/operator.jwt", "controller/controller.creds", "controller/signer.nk", "ingress/ingress.creds", "admin/admin.creds", "node-w1/node-w1.creds", "node-w2/node-w2.creds"} {
		if _, err := os.Stat(filepath.Join(roles, p)); err != nil {
			t.Error(err)
		}
		if !strings.Contains(out.String(), filepath.Join(roles, filepath.Dir(p))) {
			t.Errorf("output does not name %s:\n%s", filepath.Dir(p), out.String())
		}
	}
	if !auth.ServerOnly(filepath.Join(roles, "broker")) {
		t.Error("the broker's share holds a seed")
	}
	if err := runAuth([]string{"init", "-dir", dir, "-nodes", "bad.name", "-split", roles}, &out, &errb); err == nil {
		t.Error("a node name with a dot was accepted")
	}
}
