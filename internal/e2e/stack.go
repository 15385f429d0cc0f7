// Package e2e starts natserve stacks of real processes for end-to-end
// tests: an embedded broker, controllers and ingresses from the natserve
// binary, and node agents from a user program (internal/testprog), whose
// replicas are real child processes.
package e2e

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/natserve/natserve/client"
	"github.com/natserve/natserve/internal/testutil"
)

// Stack is a running natserve for one test.
type Stack struct {
	T        *testing.T
	URL      string
	Natserve string // path of the natserve binary
	Program  string // path of the test user program
	Client   *client.Client
	// NATSFlags are added to the arguments of every process the Stack
	// starts (e.g. -tls-ca FILE).
	NATSFlags []string

	mu          sync.Mutex
	controllers map[string]*testutil.Proc
	agents      map[string]*testutil.Proc
}

// New starts a broker and builds the binaries; nothing else runs yet.
func New(t *testing.T) *Stack {
	t.Helper()
	return NewOn(t, testutil.Broker(t).ClientURL(), nil)
}

// NewOn is New on a broker the test started at url: natsFlags go to every
// process (see NATSFlags), opts to the test's own connection.
func NewOn(t *testing.T, url string, natsFlags []string, opts ...nats.Option) *Stack {
	t.Helper()
	s := &Stack{
		T: t, URL: url, NATSFlags: natsFlags,
		Natserve: testutil.Build(t, "./cmd/natserve"), Program: testutil.Build(t, "./internal/testprog"),
		controllers: map[string]*testutil.Proc{}, agents: map[string]*testutil.Proc{},
	}
	s.Client = client.New(testutil.Conn(t, s.URL, opts...), client.WithTimeout(30*time.Second))
	return s
}

// Controller starts a controller process with id and extra flags.
func (s *Stack) Controller(id string, flags ...string) *testutil.Proc {
	s.T.Helper()
	args := append(append([]string{"controller", "-nats", s.URL, "-creds", testutil.Creds(s.T, s.URL, "controller"), "-id", id, "-node-timeout", "2s", "-lease-ttl", "3s"}, s.NATSFlags...), flags...)
	p := testutil.Start(s.T, nil, s.Natserve, args...)
	s.mu.Lock()
	s.controllers[id] = p
	s.mu.Unlock()
	return p
}

// Agent starts a node agent of the test program called name, with extra
// agent flags.
func (s *Stack) Agent(name string, flags ...string) *testutil.Proc {
	s.T.Helper()
	args := append([]string{"agent", "-nats", s.URL, "-creds", testutil.Creds(s.T, s.URL, "node-"+name), "-name", name}, s.NATSFlags...)
	p := testutil.Start(s.T, nil, s.Program, append(args, flags...)...)
	s.mu.Lock()
	s.agents[name] = p
	s.mu.Unlock()
	return p
}

// KillNode kills a node agent and every replica it started (its process group).
func (s *Stack) KillNode(name string) {
	s.mu.Lock()
	p := s.agents[name]
	s.mu.Unlock()
	_ = syscall.Kill(-p.PID(), syscall.SIGKILL)
	_, _ = p.Wait(10 * time.Second)
}

// Standard starts one controller and agents n1 and n2, and waits until the
// controller sees both nodes.
func Standard(t *testing.T) *Stack {
	s := New(t)
	s.Controller("c1")
	s.Agent("n1")
	s.Agent("n2")
	s.WaitNodes(2)
	return s
}

// WaitNodes waits until the controller reports n live nodes.
func (s *Stack) WaitNodes(n int) {
	s.T.Helper()
	testutil.Eventually(s.T, 30*time.Second, func() error {
		st, err := s.Client.Status(ctx(2 * time.Second))
		if err != nil {
			return err
		}
		alive := 0
		for _, nd := range st.Nodes {
			if nd.Alive {
				alive++
			}
		}
		if alive != n {
			return fmt.Errorf("%d live nodes, want %d", alive, n)
		}
		return nil
	})
}

func ctx(d time.Duration) context.Context {
	c, cancel := context.WithTimeout(context.Background(), d)
	_ = cancel // the timer ends the context; tests are short
	return c
}

// Ctx returns a context that ends after d.
func Ctx(d time.Duration) context.Context { return ctx(d) }

// Deploy applies spec and waits until it is HEALTHY.
func (s *Stack) Deploy(spec client.DeploymentSpec) *client.Deployment {
	s.T.Helper()
	if _, err := s.Client.Deploy(ctx(10*time.Second), spec); err != nil {
		s.T.Fatalf("deploy %s: %v", spec.Name, err)
	}
	return s.WaitHealthy(spec.Name)
}

// WaitHealthy waits until the deployment is HEALTHY with all replicas current.
func (s *Stack) WaitHealthy(name string) *client.Deployment {
	s.T.Helper()
	d, err := s.Client.WaitHealthy(ctx(60*time.Second), name, nil)
	if err != nil {
		s.T.Fatalf("waiting for %s: %v", name, err)
	}
	for _, r := range d.Replicas {
		if !r.Current || r.State != client.ReplicaRunning {
			return s.WaitHealthy(name)
		}
	}
	return d
}

// PIDs returns the pids of the deployment's running replicas.
func (s *Stack) PIDs(name string) map[int]string {
	s.T.Helper()
	d, err := s.Client.Get(ctx(5*time.Second), name)
	if err != nil {
		s.T.Fatal(err)
	}
	out := map[int]string{}
	for _, r := range d.Replicas {
		if r.State == client.ReplicaRunning {
			out[r.PID] = r.Node
		}
	}
	return out
}

// Load calls a handle from workers goroutines until stopped.
type Load struct {
	OK, Failed atomic.Int64
	stop       chan struct{}
	wg         sync.WaitGroup
	mu         sync.Mutex
	errs       []error
	last       atomic.Value // string: the last successful result
}

// StartLoad starts workers goroutines calling h(args...) in a loop.
func StartLoad(h *client.Handle, workers int, args ...any) *Load {
	l := &Load{stop: make(chan struct{})}
	for i := 0; i < workers; i++ {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			for {
				select {
				case <-l.stop:
					return
				default:
				}
				var out any
				err := h.Call(ctx(20*time.Second), &out, args...)
				if err != nil {
					l.Failed.Add(1)
					l.mu.Lock()
					if len(l.errs) < 10 {
						l.errs = append(l.errs, err)
					}
					l.mu.Unlock()
					time.Sleep(10 * time.Millisecond)
					continue
				}
				l.OK.Add(1)
				l.last.Store(fmt.Sprint(out))
			}
		}()
	}
	return l
}

// WaitOK waits until at least n more calls succeeded.
func (l *Load) WaitOK(t *testing.T, n int64) {
	t.Helper()
	start := l.OK.Load()
	testutil.Eventually(t, 30*time.Second, func() error {
		if got := l.OK.Load() - start; got < n {
			return fmt.Errorf("%d of %d calls", got, n)
		}
		return nil
	})
}

// Stop stops the load and returns the failures seen.
func (l *Load) Stop() error {
	close(l.stop)
	l.wg.Wait()
	l.mu.Lock()
	defer l.mu.Unlock()
	return errors.Join(l.errs...)
}

// Ptr returns a pointer to v.
func Ptr[T any](v T) *T { return &v }

// ProcessAlive reports whether pid runs (not a zombie).
func ProcessAlive(pid int) bool { return testutil.Alive(pid) }

// Env returns the environment entry for key from the test's environment.
func Env(key string) string { return strings.TrimSpace(os.Getenv(key)) }

// FreePort returns a loopback port that was free a moment ago.
func FreePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// Ingress starts an ingress process with extra flags and waits until it
// answers /-/healthz; it returns the base URL.
func (s *Stack) Ingress(flags ...string) (string, *testutil.Proc) {
	s.T.Helper()
	addr := fmt.Sprintf("127.0.0.1:%d", FreePort(s.T))
	args := append(append([]string{"ingress", "-nats", s.URL, "-creds", testutil.Creds(s.T, s.URL, "ingress"), "-addr", addr}, s.NATSFlags...), flags...)
	p := testutil.Start(s.T, nil, s.Natserve, args...)
	base := "http://" + addr
	testutil.Eventually(s.T, 20*time.Second, func() error {
		if p.Exited() {
			s.T.Fatalf("ingress exited:\n%s", p.Output())
		}
		r, err := http.Get(base + "/-/healthz")
		if err != nil {
			return err
		}
		r.Body.Close()
		if r.StatusCode != 200 {
			return fmt.Errorf("healthz %d", r.StatusCode)
		}
		return nil
	})
	return base, p
}

// HTTP does a request and returns the status, body and headers.
func HTTP(t testing.TB, method, url, body string, hdr ...string) (int, string, http.Header) {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), resp.Header
}

// KillAgentOnly kills a node agent's process alone (kill -9); the replicas
// it started keep running.
func (s *Stack) KillAgentOnly(name string) {
	s.mu.Lock()
	p := s.agents[name]
	s.mu.Unlock()
	_ = p.Signal(syscall.SIGKILL)
	_, _ = p.Wait(10 * time.Second)
}

// AgentPIDs returns the pids of the running node agents.
func (s *Stack) AgentPIDs() []int {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []int
	for _, p := range s.agents {
		if !p.Exited() {
			out = append(out, p.PID())
		}
	}
	return out
}
