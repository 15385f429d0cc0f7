package main

import (
	"flag"
	"fmt"
	"io"
	"path/filepath"
	"sort"

	"github.com/natserve/natserve/internal/auth"
	"github.com/natserve/natserve/internal/wire"
)

// runAuth writes everything an operator needs to run natserve against a
// stock nats-server: the operator and accounts, each role's credentials,
// and the server config snippet (operator mode, memory resolver).
func runAuth(args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] != "init" {
		return fmt.Errorf("usage: natserve auth init -dir DIR [-nodes n1,n2] [-split DIR]")
	}
	fs := flag.NewFlagSet("auth init", flag.ContinueOnError)
	fs.SetOutput(stderr)
	dir := fs.String("dir", "natserve-data/auth", "directory to write into (0700; files 0600); existing keys are kept")
	var nodes listFlag
	fs.Var(&nodes, "nodes", "node agents to write credentials for, comma-separated")
	split := fs.String("split", "", "also copy each role's files into its own subdirectory of this directory (broker/, controller/, ingress/, admin/, client/, node-<name>/), to hand each service only its own")
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("auth init takes no arguments, got %q", fs.Args())
	}
	set, err := auth.Open(*dir, nodes...)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "natserve credentials in %s\n", set.Dir)
	fmt.Fprintf(stdout, "  server config  %s (include it in nats-server.conf; enable JetStream)\n", filepath.Join(set.Dir, auth.ServerConfigFile))
	fmt.Fprintf(stdout, "  route secret   %s (cluster routes present it; %s goes inside a stock server's cluster block)\n", filepath.Join(set.Dir, auth.RouteSecretFile), auth.ClusterConfigFile)
	for _, r := range []string{wire.RoleAdmin, wire.RoleController, wire.RoleIngress, wire.RoleClient} {
		fmt.Fprintf(stdout, "  %-14s %s\n", r, set.CredsPath(r))
	}
	fmt.Fprintf(stdout, "  %-14s %s (the controller mints replica identities with it)\n", "signer", set.SignerPath())
	for _, n := range nodes {
		fmt.Fprintf(stdout, "  %-14s %s\n", "node "+n, set.NodeCredsPath(n))
	}
	if *split != "" {
		dirs, err := set.Split(*split, nodes...)
		if err != nil {
			return err
		}
		sort.Strings(dirs)
		fmt.Fprintf(stdout, "each role's files in its own directory:\n")
		for _, d := range dirs {
			fmt.Fprintf(stdout, "  %s\n", d)
		}
	}
	return nil
}
