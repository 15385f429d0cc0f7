// Command servectl is natserve's operator CLI: it lists, inspects, deploys,
// scales and deletes deployments, shows the cluster and calls deployments
// through handles, all over the control API. Every command takes --server
// and -o json; a failure prints one line on stderr and exits 1.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sort"
	"strings"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(os.Stderr, "servectl: "+oneLine(err.Error()))
		}
		os.Exit(1)
	}
}

func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }

// command is one servectl command.
type command struct {
	usage string // arguments after the command name
	help  string
	flags func(fs *flag.FlagSet, o *options) // the command's own flags
	run   func(ctx context.Context, e *env, args []string) error
}

var commands = map[string]command{}

func register(name string, c command) { commands[name] = c }

func usage(w io.Writer) {
	fmt.Fprintln(w, "usage: servectl <command> [flags] [args]")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "commands:")
	names := make([]string, 0, len(commands))
	for n := range commands {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(w, "  %-17s %s\n", n, commands[n].help)
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Every command takes --server URL (default $NATSERVE_URL, then nats://127.0.0.1:4222) and -o table|json;")
	fmt.Fprintln(w, "over TLS, -tls-ca FILE (and -tls-cert/-tls-key FILE when the broker verifies clients).")
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		usage(stdout)
		if len(args) == 0 {
			return errors.New("no command given (see servectl help)")
		}
		return nil
	}
	name := args[0]
	cmd, ok := commands[name]
	if !ok {
		return fmt.Errorf("unknown command %q (see servectl help)", name)
	}
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: servectl %s %s\n\n%s\n\nflags:\n", name, cmd.usage, cmd.help)
		fs.PrintDefaults()
	}
	e := newEnv(fs, stdout, stderr)
	if cmd.flags != nil {
		cmd.flags(fs, &e.opts)
	}
	positional, err := parseInterspersed(fs, args[1:])
	if err != nil {
		return err
	}
	if e.output != "table" && e.output != "json" {
		return fmt.Errorf("-o %q: want table or json", e.output)
	}
	defer e.close()
	return e.denied(cmd.run(ctx, e, positional))
}

// parseInterspersed parses flags wherever they stand among the arguments
// (servectl get-deployment NAME -o json) and returns the rest in order. A
// "--" ends the flags.
func parseInterspersed(fs *flag.FlagSet, args []string) ([]string, error) {
	var flags, rest []string
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			rest = append(rest, args[i+1:]...)
			break
		}
		if len(a) < 2 || a[0] != '-' || isNumber(a) {
			rest = append(rest, a)
			continue
		}
		flags = append(flags, a)
		name := strings.TrimLeft(a, "-")
		if strings.Contains(name, "=") {
			continue
		}
		f := fs.Lookup(name)
		if f == nil {
			continue // fs.Parse reports it
		}
		if bf, ok := f.Value.(interface{ IsBoolFlag() bool }); ok && bf.IsBoolFlag() {
			continue
		}
		if i+1 < len(args) {
			flags = append(flags, args[i+1])
			i++
		}
	}
	if err := fs.Parse(flags); err != nil {
		return nil, err
	}
	return rest, nil
}

// isNumber lets negative numbers through as arguments (servectl call d -1).
func isNumber(s string) bool {
	if len(s) < 2 || s[0] != '-' {
		return false
	}
	c := s[1]
	return c >= '0' && c <= '9' || c == '.'
}
