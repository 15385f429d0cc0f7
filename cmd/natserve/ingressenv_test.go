package main

import (
	"flag"
	"io"
	"testing"
	"time"
)

func TestIngressRequestTimeoutFromEnv(t *testing.T) {
	parse := func(args ...string) time.Duration {
		fs := flag.NewFlagSet("ingress", flag.ContinueOnError)
		fs.SetOutput(io.Discard)
		cfg := ingressFlags(fs)
		if err := fs.Parse(args); err != nil {
			t.Fatal(err)
		}
		return cfg.RequestTimeout
	}
	if got := parse(); got != time.Minute {
		t.Errorf("default: %v, want 1m", got)
	}
	t.Setenv("NATSERVE_REQUEST_TIMEOUT", "10s")
	if got := parse(); got != 10*time.Second {
		t.Errorf("$NATSERVE_REQUEST_TIMEOUT=10s: %v", got)
	}
	if got := parse("-request-timeout", "3s"); got != 3*time.Second {
		t.Errorf("the flag over the environment: %v, want 3s", got)
	}
	t.Setenv("NATSERVE_REQUEST_TIMEOUT", "soon")
	if got := parse(); got > 0 {
		t.Errorf("$NATSERVE_REQUEST_TIMEOUT=soon: %v, want a value the ingress refuses", got)
	}
}
