package worker

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// A container built FROM scratch has no /tmp: the node agent makes it.
func TestReplicaDirWithoutTempDir(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "no", "tmp")
	t.Setenv("TMPDIR", missing)
	dir, err := replicaDir("r1")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(dir, missing+string(filepath.Separator)) {
		t.Fatalf("dir %s is not under %s", dir, missing)
	}
	fi, err := os.Stat(dir)
	if err != nil || !fi.IsDir() || fi.Mode().Perm() != 0o700 {
		t.Fatalf("dir %s: %v %v", dir, fi.Mode(), err)
	}
}
