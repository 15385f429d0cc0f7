// Package composestack drives natserve's docker compose stack
// (docker-compose.yml: three NATS nodes, two controllers, an ingress and two
// node agents) for the tests and tools that need the real thing: the
// docker compose test, the partition test and the chaos soak. It builds the
// images without pulling anything (a builder image made from this machine's
// Go toolchain when golang:1.26-bookworm is absent, deploy/go-image.sh),
// brings the stack up under its own project name on free ports, and gives
// its faults a handle: containers, their processes (host PIDs, for kill -9
// and SIGSTOP) and the network.
//
// The nodes run internal/testprog (deploy/compose.testnode.yml, added to
// docker-compose.yml), a user program that registers the quick start's
// classes and Counter, which publishes the id of every request it runs on
// the fault-exec deployment's subject so that executions are counted
// from outside.
package composestack

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// Stack is one docker compose project of natserve.
type Stack struct {
	Project       string
	Root          string   // the module root (holds docker-compose.yml)
	Cmd           []string // docker compose or docker-compose
	Env           []string // added to each compose command's environment
	HTTPPort      int      // the ingress, on 127.0.0.1
	NATSPort      int      // nats1, on 127.0.0.1
	NATS2Port     int      // nats2, on 127.0.0.1
	DashboardPort int      // controller1's dashboard, on 127.0.0.1
	// RequestTimeout is the ingress's request deadline (default 60s), set
	// before Up.
	RequestTimeout time.Duration
	// Creds is the admin's credentials file (copied out of the one-shot
	// auth service's volume by Up): the brokers refuse anonymous clients.
	Creds string
	Logf  func(format string, args ...any)

	tag     string
	tempDir string // holds Creds; removed by Down
}

// Available reports why docker compose cannot run here, or nil.
func Available() error {
	if exec.Command("docker", "info").Run() != nil {
		return errors.New("no Docker engine")
	}
	if composeCommand() == nil {
		return errors.New("neither 'docker compose' nor docker-compose is installed")
	}
	return nil
}

func composeCommand() []string {
	if exec.Command("docker", "compose", "version").Run() == nil {
		return []string{"docker", "compose"}
	}
	if p, err := exec.LookPath("docker-compose"); err == nil {
		return []string{p}
	}
	return nil
}

// ModuleRoot finds the directory holding go.mod from the working directory up.
func ModuleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("go.mod not found above the working directory")
		}
		dir = parent
	}
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// New prepares a stack named project on free ports; tag names its images
// (natserve:TAG, natserve-testnode:TAG): make it unique to the run (other
// checkouts on the machine build the same names), and RemoveImages after
// Down. Nothing runs until Build and Up.
func New(project, tag string) (*Stack, error) {
	if err := Available(); err != nil {
		return nil, err
	}
	root, err := ModuleRoot()
	if err != nil {
		return nil, err
	}
	s := &Stack{Project: project, Root: root, Cmd: composeCommand(), Logf: func(string, ...any) {}, tag: tag}
	for _, p := range []*int{&s.HTTPPort, &s.NATSPort, &s.NATS2Port, &s.DashboardPort} {
		if *p, err = freePort(); err != nil {
			return nil, err
		}
	}
	goImg, err := goImage(root)
	if err != nil {
		return nil, err
	}
	s.Env = []string{
		"NATSERVE_GO_IMAGE=" + goImg,
		"NATSERVE_IMAGE=natserve:" + tag,
		"NATSERVE_TESTNODE_IMAGE=natserve-testnode:" + tag,
		"NATSERVE_HTTP_PORT=" + strconv.Itoa(s.HTTPPort),
		"NATSERVE_NATS_PORT=" + strconv.Itoa(s.NATSPort),
		"NATSERVE_NATS2_PORT=" + strconv.Itoa(s.NATS2Port),
		"NATSERVE_DASHBOARD_PORT=" + strconv.Itoa(s.DashboardPort),
	}
	return s, nil
}

// goImage returns a builder base image that exists locally: the official
// one if present, else one made from this machine's Go toolchain.
func goImage(root string) (string, error) {
	if img := os.Getenv("NATSERVE_GO_IMAGE"); img != "" {
		return img, nil
	}
	if exec.Command("docker", "image", "inspect", "golang:1.26-bookworm").Run() == nil {
		return "golang:1.26-bookworm", nil
	}
	const local = "natserve-go:local"
	if exec.Command("docker", "image", "inspect", local).Run() == nil {
		return local, nil
	}
	if out, err := exec.Command("bash", filepath.Join(root, "deploy", "go-image.sh"), local).CombinedOutput(); err != nil {
		return "", fmt.Errorf("making %s: %v\n%s", local, err, out)
	}
	return local, nil
}

// BaseURL is the ingress's.
func (s *Stack) BaseURL() string { return fmt.Sprintf("http://127.0.0.1:%d", s.HTTPPort) }

// NATSURL lists the two published NATS nodes (a client fails over between them).
func (s *Stack) NATSURL() string {
	return fmt.Sprintf("nats://127.0.0.1:%d,nats://127.0.0.1:%d", s.NATSPort, s.NATS2Port)
}

// Network is the project's default network, the one the services share.
func (s *Stack) Network() string {
	// docker-compose v1 strips characters other than [a-z0-9_-] from the project name.
	return strings.ToLower(s.Project) + "_default"
}

// Compose runs a compose command and returns its combined output.
func (s *Stack) Compose(ctx context.Context, args ...string) (string, error) {
	full := append(append([]string{}, s.Cmd[1:]...), "-p", s.Project,
		"-f", filepath.Join(s.Root, "docker-compose.yml"), "-f", filepath.Join(s.Root, "deploy", "compose.testnode.yml"))
	full = append(full, args...)
	cmd := exec.CommandContext(ctx, s.Cmd[0], full...)
	cmd.Dir = s.Root
	cmd.Env = append(os.Environ(), s.Env...)
	if s.RequestTimeout > 0 {
		cmd.Env = append(cmd.Env, "NATSERVE_REQUEST_TIMEOUT="+s.RequestTimeout.String())
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s %s: %v\n%s", strings.Join(s.Cmd, " "), strings.Join(args, " "), err, Tail(string(out), 3000))
	}
	return string(out), nil
}

// Docker runs a docker command and returns its output.
func Docker(ctx context.Context, args ...string) (string, error) {
	out, err := exec.CommandContext(ctx, "docker", args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("docker %s: %v: %s", strings.Join(args, " "), err, Tail(strings.TrimSpace(string(out)), 500))
	}
	return string(out), nil
}

// Tail returns the last n bytes of s.
func Tail(s string, n int) string {
	if len(s) > n {
		return "…" + s[len(s)-n:]
	}
	return s
}

// Build builds the servers' image and the nodes' (a user program).
func (s *Stack) Build(ctx context.Context) error {
	_, err := s.Compose(ctx, "build", "nats1", "worker1")
	return err
}

// Up brings the stack up: the first time with docker compose up (the
// one-shot auth service writes the credentials, setup applies the quick
// start), afterwards by starting whichever long-running service a test
// stopped or killed (the one-shot services are not run again). It waits
// until the ingress serves the quick start's rep-1 and copies the admin's
// credentials out (Creds).
func (s *Stack) Up(ctx context.Context) error {
	cs, err := s.Containers(ctx)
	if err != nil {
		return err
	}
	if len(cs) == 0 {
		if _, err := s.Compose(ctx, "up", "-d"); err != nil {
			return err
		}
	} else {
		var stopped []string
		for _, svc := range Services {
			if cs[svc].State != "running" {
				stopped = append(stopped, svc)
			}
		}
		if len(stopped) > 0 {
			if _, err := s.Compose(ctx, append([]string{"start"}, stopped...)...); err != nil {
				return err
			}
		}
	}
	if s.Creds == "" {
		if err := s.copyCreds(ctx); err != nil {
			return err
		}
	}
	return WaitFor(ctx, 3*time.Minute, func() error { // correctness, not timing: a loaded machine starts slowly
		resp, err := http.Get(s.BaseURL() + "/rep-1?data=0.3")
		if err != nil {
			return err
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || !strings.Contains(string(b), "path: /model/rep-1.pkl") {
			return fmt.Errorf("%d %s", resp.StatusCode, b)
		}
		return nil
	})
}

// Services are the stack's long-running services (auth and setup run once).
var Services = []string{"nats1", "nats2", "nats3", "controller1", "controller2", "ingress", "worker1", "worker2"}

// copyCreds copies admin.creds out of the auth service's container (it has
// exited; its volumes stay) into a private temporary directory.
func (s *Stack) copyCreds(ctx context.Context) error {
	var id string
	if err := WaitFor(ctx, 2*time.Minute, func() error {
		cs, err := s.Containers(ctx)
		if err != nil {
			return err
		}
		c := cs["auth"]
		if c.ID == "" || c.State != "exited" {
			return fmt.Errorf("auth service: %q", c.State)
		}
		id = c.ID
		return nil
	}); err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "natserve-compose-")
	if err != nil {
		return err
	}
	creds := filepath.Join(dir, "admin.creds")
	if _, err := Docker(ctx, "cp", id+":/roles/admin/admin.creds", creds); err != nil {
		os.RemoveAll(dir)
		return err
	}
	s.tempDir, s.Creds = dir, creds
	return nil
}

// Down removes the project's containers, network and volumes.
func (s *Stack) Down(ctx context.Context) error {
	if s.tempDir != "" {
		os.RemoveAll(s.tempDir)
		s.tempDir, s.Creds = "", ""
	}
	_, err := s.Compose(ctx, "down", "-v", "--timeout", "5")
	if err != nil {
		return err
	}
	out, _ := exec.Command("docker", "ps", "-aq", "--filter", "label=com.docker.compose.project="+s.Project).Output()
	if len(bytes.TrimSpace(out)) != 0 {
		return fmt.Errorf("docker compose down left containers: %s", out)
	}
	return nil
}

// RemoveImages removes the images Build tagged (the build cache stays).
func (s *Stack) RemoveImages(ctx context.Context) error {
	_, err := Docker(ctx, "rmi", "natserve:"+s.tag, "natserve-testnode:"+s.tag)
	return err
}

// Logs returns the last lines of every service's log.
func (s *Stack) Logs(lines int) string {
	out, _ := s.Compose(context.Background(), "logs", "--no-color", fmt.Sprintf("--tail=%d", lines))
	return out
}

// Containers returns the project's containers by service: id and state
// ("running", "exited", …), from one docker command.
func (s *Stack) Containers(ctx context.Context) (map[string]Container, error) {
	out, err := Docker(ctx, "ps", "-a", "--no-trunc", "--filter", "label=com.docker.compose.project="+s.Project,
		"--format", `{{.Label "com.docker.compose.service"}} {{.ID}} {{.State}}`)
	if err != nil {
		return nil, err
	}
	cs := map[string]Container{}
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		if f := strings.Fields(line); len(f) == 3 {
			if _, dup := cs[f[0]]; dup {
				return nil, fmt.Errorf("service %s has more than one container", f[0])
			}
			cs[f[0]] = Container{ID: f[1], State: f[2]}
		}
	}
	return cs, nil
}

// Container is one service's container.
type Container struct {
	ID    string
	State string
}

// Container returns the id of service's container.
func (s *Stack) Container(ctx context.Context, service string) (string, error) {
	cs, err := s.Containers(ctx)
	if err != nil {
		return "", err
	}
	c, ok := cs[service]
	if !ok {
		return "", fmt.Errorf("service %s has no container", service)
	}
	return c.ID, nil
}

// Running reports whether service's container runs.
func (s *Stack) Running(ctx context.Context, service string) bool {
	cs, err := s.Containers(ctx)
	return err == nil && cs[service].State == "running"
}

// Proc is a process inside a container.
type Proc struct {
	HostPID int    // for kill(2) from the host
	PID     int    // inside the container (what natserve reports)
	Args    string // its command line
}

// Procs lists the processes of service's container. Signalling them from
// the host (HostPID) needs the engine on this machine and the right to
// signal its processes (root).
func (s *Stack) Procs(ctx context.Context, service string) ([]Proc, error) {
	id, err := s.Container(ctx, service)
	if err != nil {
		return nil, err
	}
	out, err := Docker(ctx, "top", id, "-eo", "pid,args")
	if err != nil {
		return nil, err
	}
	var ps []Proc
	for _, line := range strings.Split(strings.TrimSpace(out), "\n")[1:] {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		hp, err := strconv.Atoi(f[0])
		if err != nil {
			continue
		}
		p := Proc{HostPID: hp, PID: hp, Args: strings.Join(f[1:], " ")}
		// NSpid: the pid in each namespace, the innermost last.
		if st, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", hp)); err == nil {
			for _, l := range strings.Split(string(st), "\n") {
				if rest, ok := strings.CutPrefix(l, "NSpid:"); ok {
					if ns := strings.Fields(rest); len(ns) > 0 {
						p.PID, _ = strconv.Atoi(ns[len(ns)-1])
					}
				}
			}
		}
		ps = append(ps, p)
	}
	return ps, nil
}

// WaitFor polls f until it returns nil or timeout passes (or ctx ends),
// returning its last error.
func WaitFor(ctx context.Context, timeout time.Duration, f func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := f()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("after %v: %w", timeout, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(250 * time.Millisecond):
		}
	}
}
