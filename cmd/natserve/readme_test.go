package main_test

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/natserve/natserve/internal/testutil"
)

// readmeBlock returns the lines of the ```sh block after <!-- readme:NAME -->.
func readmeBlock(t *testing.T, readme, name string) []string {
	t.Helper()
	re := regexp.MustCompile("(?s)<!-- readme:" + name + " -->\\s*```sh\\n(.*?)```")
	m := re.FindStringSubmatch(readme)
	if m == nil {
		t.Fatalf("README has no block marked readme:%s", name)
	}
	return strings.Split(strings.TrimSpace(m[1]), "\n")
}

func portFree(addr string) bool {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return false
	}
	l.Close()
	return true
}

// TestReadmeCommands runs the README's commands as written, in a copy of
// the module's layout (so natserve-data lands in a temp dir), on the
// default ports.
func TestReadmeCommands(t *testing.T) {
	if testing.Short() {
		t.Skip("runs go run and the default ports")
	}
	root := testutil.ModuleRoot(t)
	b, err := os.ReadFile(filepath.Join(root, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	readme := string(b)
	if got := readmeBlock(t, readme, "test"); len(got) != 1 || got[0] != "make check" {
		t.Fatalf("README test command %q", got)
	}
	ci, err := os.ReadFile(filepath.Join(root, ".ci/run"))
	if err != nil || !regexp.MustCompile(`(?m)^make check$`).Match(ci) {
		t.Fatalf(".ci/run does not run the README's test command: %v", err)
	}
	for _, addr := range []string{"127.0.0.1:4222", "127.0.0.1:8000"} {
		if !portFree(addr) {
			t.Skipf("%s is in use (is natserve up running?); the README's commands need it", addr)
		}
	}
	// A directory that looks like the module but keeps its own natserve-data.
	dir := t.TempDir()
	entries, _ := os.ReadDir(root)
	for _, e := range entries {
		if e.Name() == "natserve-data" || e.Name() == ".git" {
			continue
		}
		if err := os.Symlink(filepath.Join(root, e.Name()), filepath.Join(dir, e.Name())); err != nil {
			t.Fatal(err)
		}
	}
	bash := func(line string) *exec.Cmd {
		cmd := exec.Command("bash", "-c", line)
		cmd.Dir = dir
		return cmd
	}
	serve := readmeBlock(t, readme, "serve")
	if len(serve) != 1 {
		t.Fatalf("the run block has %d lines, want 1", len(serve))
	}
	srv := testutil.StartIn(t, dir, nil, "bash", "-c", serve[0])
	testutil.Eventually(t, 3*time.Minute, func() error {
		if srv.Exited() {
			t.Fatalf("%s exited:\n%s", serve[0], srv.Output())
		}
		if !strings.Contains(srv.Output(), "Press Ctrl-C to stop.") {
			return fmt.Errorf("not up")
		}
		return nil
	})
	want := []*regexp.Regexp{
		regexp.MustCompile(`^\(pid: \d+\); path: /model/rep-1.pkl; data: 0.700; prediction: \d+\.\d{3}$`),
		regexp.MustCompile(`^Hello world!$`),
		regexp.MustCompile(`(?m)^rep-1\s+Model\s+-\s+2/2\s+/rep-1\s+HEALTHY$`),
		regexp.MustCompile(`^"\(pid: \d+\); path: /model/rep-1.pkl; data: 0.300; prediction: 0.300"$`),
		regexp.MustCompile(`^"Hello world!"$`),
		regexp.MustCompile(`(?m)^status:\s+HEALTHY$`),
		regexp.MustCompile(`^slept 2\d\d ms \(pid \d+\)$`),
		regexp.MustCompile(`^"slept 2\d\d ms \(pid \d+\)"$`),
		regexp.MustCompile(`^\{"batch_size":1,"input":"7"\}$`),
		regexp.MustCompile(`^\{"model":"m1","pid":\d+,"loads":\d+\}$`),
	}
	try := readmeBlock(t, readme, "try")
	if len(try) != len(want) {
		t.Fatalf("the try block has %d lines; this test checks %d", len(try), len(want))
	}
	for i, line := range try {
		out, err := bash(line).Output()
		if err != nil || !want[i].Match([]byte(strings.TrimSpace(string(out)))) {
			t.Errorf("%s: %v\n%q\nwant %s", line, err, out, want[i])
		}
	}
	own := readmeBlock(t, readme, "own")
	for _, line := range own {
		if strings.HasSuffix(line, "&") {
			testutil.StartIn(t, dir, nil, "bash", "-c", strings.TrimSuffix(line, "&"))
			continue
		}
		var out []byte
		var err error
		// The agent compiles and registers while the next line runs: retry
		// the deploy until the class is known.
		testutil.Eventually(t, 2*time.Minute, func() error {
			out, err = bash(line).CombinedOutput()
			if err != nil && strings.Contains(string(out), "unknown class MyModel") {
				return fmt.Errorf("%s", out)
			}
			return nil
		})
		if err != nil {
			t.Errorf("%s: %v\n%s", line, err, out)
		}
		if strings.HasPrefix(line, "curl") && !strings.Contains(string(out), "MyModel (pid ") {
			t.Errorf("%s: %s", line, out)
		}
	}
	_ = syscall.Kill(-srv.PID(), syscall.SIGINT)
	if exited, _ := srv.Wait(60 * time.Second); !exited {
		t.Errorf("natserve up did not stop on Ctrl-C")
	}
}
