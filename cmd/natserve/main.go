// Command natserve runs natserve's servers: each alone (broker, controller,
// ingress) for a fleet of machines, or all of them in one process tree for
// one machine (up). Its node agent (agent, alias worker) provides the
// built-in example classes, for up and the quick start; in production a
// node runs the user's own program, which calls worker.Main.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"github.com/natserve/natserve/examples/quickstart"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/natserve/natserve/internal/profile"
	"github.com/natserve/natserve/internal/sysmon"
	"github.com/natserve/natserve/worker"
)

func main() {
	if len(os.Args) > 1 && hot(os.Args[1]) {
		// Once, before anything starts: the process goes on as it is if
		// the exec fails.
		if err := sysmon.Reexec(); err != nil {
			fmt.Fprintln(os.Stderr, "natserve: keeping the runtime's monitor awake (GODEBUG="+sysmon.Setting+"): "+err.Error())
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	if addr := os.Getenv("NATSERVE_PPROF"); addr != "" { // e.g. 127.0.0.1:6060, for profiling
		go profile.Serve(ctx, addr, slog.Default()) // ends with the process
	}
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err != nil && !errors.Is(err, flag.ErrHelp) {
		fmt.Fprintln(os.Stderr, "natserve: "+err.Error())
		if errors.Is(err, worker.ErrConstructor) || errors.Is(err, worker.ErrUnknownClass) {
			os.Exit(worker.ExitConstructor)
		}
		os.Exit(1)
	}
}

// hot reports whether a command runs a process on the request path, which
// keeps the Go runtime's monitor thread out of its deep sleep (package
// sysmon): natserve up, the broker and the ingress. Replicas get it from
// their agent; the controller and the agent are not on the request path.
func hot(cmd string) bool {
	switch cmd {
	case "up", "broker", "ingress":
		return true
	}
	return false
}

const usage = `usage: natserve <command> [flags]

commands:
  up          run broker, controller, ingress and a node agent in one process tree
  broker      run the embedded NATS broker (JetStream, operator mode)
  auth init   write the credentials and nats-server config to run natserve
              on your own NATS
  controller  run a controller (one leads, others stand by)
  ingress     run an HTTP ingress
  agent       run a node agent providing the built-in example classes
              (alias: worker; in production, run your own program instead)
  classes     list the built-in example classes

Run 'natserve <command> -h' for its flags.
`

func registry() *worker.Registry {
	var reg worker.Registry
	quickstart.Register(&reg)
	return &reg
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return errors.New("no command given")
	}
	cmd, rest := args[0], args[1:]
	switch cmd {
	case "up":
		return runUp(ctx, rest, stdout, stderr)
	case "broker":
		return runBroker(ctx, rest, stdout, stderr)
	case "auth":
		return runAuth(rest, stdout, stderr)
	case "controller":
		return runController(ctx, rest, stderr)
	case "ingress":
		return runIngress(ctx, rest, stdout, stderr)
	case "agent", "worker": // worker: the older name, kept for scripts
		return worker.Run(ctx, registry(), append([]string{"agent"}, rest...), stdout, stderr)
	case "replica", "classes":
		if cmd == "replica" {
			stopPSE()
		}
		return worker.Run(ctx, registry(), args, stdout, stderr)
	case "-h", "-help", "--help", "help":
		fmt.Fprint(stdout, usage)
		return nil
	}
	fmt.Fprint(stderr, usage)
	return fmt.Errorf("unknown command %q", cmd)
}
