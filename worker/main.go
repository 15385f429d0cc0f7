package worker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
)

// Exit codes of a replica process, read by the node agent.
const (
	ExitOK          = 0
	ExitError       = 1
	ExitConstructor = 3 // the constructor (or first reconfigure) failed; retrying may not help
)

// Main runs the program as natserve's worker side and exits: with the
// argument "replica" (how the node agent re-executes it) it serves one
// replica described by $NATSERVE_REPLICA_SPEC; with "classes" it lists the
// registered classes. SIGINT and SIGTERM stop it gracefully.
func Main(reg *Registry) {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := Run(ctx, reg, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", filepath.Base(os.Args[0]), err)
		if errors.Is(err, ErrConstructor) || errors.Is(err, ErrUnknownClass) {
			os.Exit(ExitConstructor)
		}
		os.Exit(ExitError)
	}
}

// Run is Main without the exit, for programs that add commands of their own.
func Run(ctx context.Context, reg *Registry, args []string, stdout, stderr io.Writer) error {
	if err := reg.Err(); err != nil {
		return err
	}
	cmd := ""
	if len(args) > 0 {
		cmd = args[0]
	}
	switch cmd {
	case "replica":
		return RunReplicaFromEnv(ctx, reg, stderr)
	case "classes":
		for _, c := range reg.Classes() {
			fmt.Fprintln(stdout, c)
		}
		return nil
	}
	return fmt.Errorf("unknown command %q (want: replica, classes)", cmd)
}

// RunReplicaFromEnv serves the replica described by $NATSERVE_REPLICA_SPEC
// until ctx ends, logging to logw.
func RunReplicaFromEnv(ctx context.Context, reg *Registry, logw io.Writer) error {
	raw := os.Getenv(SpecEnv)
	if raw == "" {
		return fmt.Errorf("%w: $%s is not set (replicas are started by the node agent)", ErrSpec, SpecEnv)
	}
	var spec ReplicaSpec
	if err := json.Unmarshal([]byte(raw), &spec); err != nil {
		return fmt.Errorf("%w: $%s: %v", ErrSpec, SpecEnv, err)
	}
	log := slog.New(slog.NewTextHandler(logw, &slog.HandlerOptions{Level: slog.LevelInfo}))
	r, err := NewReplica(reg, spec, log)
	if err != nil {
		return err
	}
	return r.Run(ctx)
}
