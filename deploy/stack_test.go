package deploy_test

import (
	"context"
	"fmt"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/natserve/natserve/internal/composestack"
)

// One docker compose stack per test binary: building the images and
// bringing the stack up cost most of this package's time, so the docker
// compose test, the partition test and the short chaos soak share it.
// Each test calls sharedStack, which also restarts whatever an earlier test
// left stopped; TestMain takes the stack down.
var shared struct {
	once         sync.Once
	stack        *composestack.Stack
	err          error
	removeImages bool
}

func sharedStack(t *testing.T) *composestack.Stack {
	t.Helper()
	if err := composestack.Available(); err != nil {
		t.Skipf("%v: the docker compose tests need one", err)
	}
	shared.once.Do(func() {
		// $NATSERVE_COMPOSE_TAG: use images already built with that tag
		// (natserve:TAG, natserve-testnode:TAG) and keep them; by default
		// the images are built for this run and removed after it.
		tag, build := os.Getenv("NATSERVE_COMPOSE_TAG"), false
		if tag == "" {
			tag, build = fmt.Sprintf("e2e-%d", os.Getpid()), true
		}
		s, err := composestack.New(fmt.Sprintf("natserve-e2e-%d", os.Getpid()), tag)
		if err != nil {
			shared.err = err
			return
		}
		s.Logf = t.Logf
		// The ingress's request deadline: no request should wait for it
		// (admission acknowledgments fail or resend at once); 10 s keeps
		// the soak's tail short if one does.
		s.RequestTimeout = 10 * time.Second
		if build {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute) // a loaded machine took 9m42s
			start := time.Now()
			shared.err = s.Build(ctx)
			cancel()
			if shared.err != nil {
				return
			}
			t.Logf("images built in %v", time.Since(start).Round(time.Second))
			shared.removeImages = true
		}
		shared.stack = s
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		start := time.Now()
		if shared.err = s.Up(ctx); shared.err != nil {
			shared.err = fmt.Errorf("%w\ncompose ps:\n%s\ncompose logs:\n%s", shared.err, psOf(s), composestack.Tail(s.Logs(60), 30000))
			return
		}
		t.Logf("serving on port %d %v after docker compose up", s.HTTPPort, time.Since(start).Round(100*time.Millisecond))
	})
	if shared.err != nil {
		t.Fatal(shared.err)
	}
	s := shared.stack
	s.Logf = t.Logf
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("compose logs:\n%s", composestack.Tail(s.Logs(60), 30000))
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if err := s.Up(ctx); err != nil {
		t.Fatal(err)
	}
	return s
}

func downSharedStack() {
	if shared.stack == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := shared.stack.Down(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "docker compose down:", err)
		os.Exit(1)
	}
	if shared.removeImages {
		if err := shared.stack.RemoveImages(ctx); err != nil {
			fmt.Fprintln(os.Stderr, err)
		}
	}
}

func psOf(s *composestack.Stack) string {
	out, _ := s.Compose(context.Background(), "ps")
	return out
}
