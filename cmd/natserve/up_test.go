package main_test

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/natserve/natserve/client"
	"github.com/natserve/natserve/internal/e2e"
	"github.com/natserve/natserve/internal/sysmon"
	"github.com/natserve/natserve/internal/testutil"
)

func TestMain(m *testing.M) { testutil.Main(m) }

type upStack struct {
	proc     *testutil.Proc
	natsURL  string
	httpBase string
	data     string
}

// up starts `natserve up` on free ports and waits for its banner.
func up(t *testing.T, extra ...string) *upStack {
	t.Helper()
	bin := testutil.Build(t, "./cmd/natserve")
	natsPort, httpPort := e2e.FreePort(t), e2e.FreePort(t)
	data := filepath.Join(t.TempDir(), "data")
	args := append([]string{"up", "-data", data, "-nats-port", strconv.Itoa(natsPort), "-addr", fmt.Sprintf("127.0.0.1:%d", httpPort)}, extra...)
	p := testutil.Start(t, nil, bin, args...)
	testutil.Eventually(t, 60*time.Second, func() error {
		if p.Exited() {
			t.Fatalf("natserve up exited:\n%s", p.Output())
		}
		if !strings.Contains(p.Output(), "Press Ctrl-C to stop.") {
			return fmt.Errorf("not up yet")
		}
		return nil
	})
	return &upStack{proc: p, natsURL: fmt.Sprintf("nats://127.0.0.1:%d", natsPort), httpBase: fmt.Sprintf("http://127.0.0.1:%d", httpPort), data: data}
}

// creds is the admin creds file natserve up wrote.
func (u *upStack) creds() string { return filepath.Join(u.data, "auth", "admin.creds") }

func TestSeedExampleThroughTheBinaries(t *testing.T) {
	u := up(t)
	example := testutil.Build(t, "./examples/two-deployments")
	cmd := exec.Command(example, "-server", u.natsURL, "-http", u.httpBase)
	cmd.Env = append(os.Environ(), client.CredsEnv+"="+u.creds())
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("two-deployments: %v\n%s", err, out)
	}
	text := string(out)
	t.Logf("the seed example printed:\n%s", text)
	if !strings.Contains(text, "{'rep-1': Deployment(name=rep-1,version=None,route_prefix=/rep-1), 'rep-2': Deployment(name=rep-2,version=None,route_prefix=/rep-2)}") {
		t.Errorf("list_deployments line missing")
	}
	re := regexp.MustCompile(`handle name : (rep-\d)\nprediction  : \(pid: (\d+)\); path: /model/(rep-\d).pkl; data: (\d\.\d{3}); prediction: (\d\.\d{3})`)
	ms := re.FindAllStringSubmatch(text, -1)
	if len(ms) != 8 {
		t.Fatalf("found %d predictions, want 8 (4 by handle, 4 over HTTP)", len(ms))
	}
	for _, m := range ms {
		data, _ := strconv.ParseFloat(m[4], 64)
		pred, _ := strconv.ParseFloat(m[5], 64)
		if m[1] != m[3] {
			t.Errorf("%s answered with path of %s", m[1], m[3])
		}
		if data <= 0.5 && m[5] != m[4] || data > 0.5 && (pred < data || pred > data+1.001) {
			t.Errorf("prediction %v for data %v breaks the seed's rule", pred, data)
		}
	}

	// Each deployment answers from 2 distinct replica pids, by handle and over HTTP.
	cl, err := client.Connect(e2e.Ctx(5*time.Second), u.natsURL, client.WithCreds(u.creds()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	pidRe := regexp.MustCompile(`^\(pid: (\d+)\); path: /model/(rep-\d).pkl;`)
	for _, name := range []string{"rep-1", "rep-2"} {
		byHandle, byHTTP := map[string]bool{}, map[string]bool{}
		for i := 0; i < 40 && (len(byHandle) < 2 || len(byHTTP) < 2); i++ {
			s, err := client.Call[string](e2e.Ctx(5*time.Second), cl.Handle(name), 0.2)
			m := pidRe.FindStringSubmatch(s)
			if err != nil || m == nil || m[2] != name {
				t.Fatalf("handle %s: %q %v", name, s, err)
			}
			byHandle[m[1]] = true
			code, body, _ := e2e.HTTP(t, "GET", u.httpBase+"/"+name+"?data=0.2", "")
			m = pidRe.FindStringSubmatch(body)
			if code != 200 || m == nil || m[2] != name {
				t.Fatalf("HTTP %s: %d %q", name, code, body)
			}
			byHTTP[m[1]] = true
		}
		if len(byHandle) != 2 || len(byHTTP) != 2 {
			t.Errorf("%s: pids by handle %v, by HTTP %v; want 2 each", name, byHandle, byHTTP)
		}
	}

	servectl := testutil.Build(t, "./cmd/servectl")
	lst, err := exec.Command(servectl, "list-deployments", "--server", u.natsURL, "--creds", u.creds()).CombinedOutput()
	if err != nil {
		t.Fatalf("servectl: %v %s", err, lst)
	}
	for _, re := range []string{`(?m)^rep-1\s+Model\s+-\s+2/2\s+/rep-1\s+HEALTHY$`, `(?m)^rep-2\s+Model\s+-\s+2/2\s+/rep-2\s+HEALTHY$`} {
		if !regexp.MustCompile(re).Match(lst) {
			t.Errorf("list-deployments lacks %s:\n%s", re, lst)
		}
	}
}

func TestStopLeavesNoReplicas(t *testing.T) {
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGKILL} {
		t.Run(sig.String(), func(t *testing.T) {
			u := up(t, "-f", filepath.Join(testutil.ModuleRoot(t), "examples/quickstart/serve.yaml"))
			replicas := testutil.ChildPIDs(u.proc.PID())
			if len(replicas) < 6 {
				t.Fatalf("natserve up has %d child processes, want the quick start's 6 replicas", len(replicas))
			}
			if sig == syscall.SIGTERM { // once is enough
				checkAwake(t, u.proc.PID(), replicas)
			}
			if err := u.proc.Signal(sig); err != nil {
				t.Fatal(err)
			}
			if exited, _ := u.proc.Wait(30 * time.Second); !exited {
				t.Fatal("natserve up did not exit")
			}
			testutil.Eventually(t, 10*time.Second, func() error {
				for _, pid := range replicas {
					if testutil.Alive(pid) {
						return fmt.Errorf("replica pid %d still running", pid)
					}
				}
				return nil
			})
			t.Logf("%s: natserve up and its %d replicas (pids %v) are gone", sig, len(replicas), replicas)
		})
	}
}

// checkAwake: natserve up re-executed itself (same pid) with the runtime's
// monitor kept awake, and so did one replica per CPU, no more (package
// sysmon). Nothing here sets schedtrace in GODEBUG.
func checkAwake(t *testing.T, up int, replicas []int) {
	t.Helper()
	if sysmon.Sets(os.Getenv("GODEBUG")) {
		t.Skip("GODEBUG sets schedtrace")
	}
	godebug := func(pid int) string {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
		if err != nil {
			t.Fatal(err)
		}
		for _, kv := range strings.Split(string(b), "\x00") {
			if v, ok := strings.CutPrefix(kv, "GODEBUG="); ok {
				return v
			}
		}
		return ""
	}
	if g := godebug(up); !strings.Contains(g, sysmon.Setting) {
		t.Errorf("natserve up (pid %d) runs with GODEBUG %q, without %s", up, g, sysmon.Setting)
	}
	awake := 0
	for _, pid := range replicas {
		if strings.Contains(godebug(pid), sysmon.Setting) {
			awake++
		}
	}
	if want := min(runtime.NumCPU(), len(replicas)); awake != want {
		t.Errorf("%d of %d replicas run with %s, want %d (one per CPU)", awake, len(replicas), sysmon.Setting, want)
	}
}

func TestUpRefusesTakenPortAndDataDir(t *testing.T) {
	u := up(t)
	bin := testutil.Build(t, "./cmd/natserve")
	port := strings.TrimPrefix(u.natsURL, "nats://127.0.0.1:")
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"up", "-data", t.TempDir(), "-nats-port", port}, "cannot listen on 127.0.0.1:" + port},
		{[]string{"up", "-data", u.data, "-nats-port", strconv.Itoa(e2e.FreePort(t))}, "data dir " + u.data + " is in use by another natserve (pid "},
		{[]string{"up", "-f", "/nonexistent.yaml"}, "no such file"},
	} {
		out, err := exec.Command(bin, tc.args...).CombinedOutput()
		lines := strings.Split(strings.TrimSpace(string(out)), "\n")
		if err == nil || !strings.Contains(lines[len(lines)-1], tc.want) || !strings.HasPrefix(lines[len(lines)-1], "natserve: ") {
			t.Errorf("natserve %s: %v\n%s\nwant a last line containing %q", strings.Join(tc.args, " "), err, out, tc.want)
		}
	}
}

// natserve up -no-auth (the benchmarks' auth-off row): it says it is
// insecure, writes no credentials, and serves an anonymous client end to
// end (deploy, HTTP); by default the same anonymous client is refused.
func TestUpNoAuth(t *testing.T) {
	u := up(t, "-no-auth")
	if out := u.proc.Output(); !strings.Contains(out, "WARNING: -no-auth") || !strings.Contains(out, "creds       none (-no-auth: INSECURE)") {
		t.Fatalf("no warning or creds line in:\n%s", out)
	}
	if _, err := os.Stat(u.creds()); !os.IsNotExist(err) {
		t.Fatalf("admin creds %s: %v, want none written", u.creds(), err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	t.Setenv(client.CredsEnv, "")
	cl, err := client.Connect(ctx, u.natsURL)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	testutil.Eventually(t, 60*time.Second, func() error {
		_, err := cl.Deploy(ctx, client.DeploymentSpec{Name: "hello", Class: "Hello", NumReplicas: 1})
		return err
	})
	if _, err := cl.WaitHealthy(ctx, "hello", nil); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 30*time.Second, func() error {
		resp, err := http.Get(u.httpBase + "/hello?size=5")
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		if resp.StatusCode != 200 {
			return fmt.Errorf("status %d", resp.StatusCode)
		}
		return nil
	})
	secure := up(t)
	if nc, err := nats.Connect(secure.natsURL); err == nil {
		nc.Close()
		t.Fatal("natserve up without -no-auth accepted an anonymous client")
	}
}
