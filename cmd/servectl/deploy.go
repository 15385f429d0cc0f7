package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/natserve/natserve/client"
)

func init() {
	register("deploy", command{
		usage: "-f FILE [--wait] [--prune] [--dry-run]",
		help:  "apply a config file: create and update what it lists",
		flags: func(fs *flag.FlagSet, o *options) {
			fs.StringVar(&o.file, "f", "", "config file (YAML)")
			fs.BoolVar(&o.wait, "wait", false, "show progress until every deployment is HEALTHY; fail on DEPLOY_FAILED")
			fs.BoolVar(&o.prune, "prune", false, "also delete deployments the file does not list")
			fs.BoolVar(&o.dryRun, "dry-run", false, "validate against the cluster without changing it")
			fs.IntVar(&o.nodes, "min-nodes", 0, "first wait (up to --timeout) until this many node agents are alive, so that replicas spread")
		},
		run: deploy,
	})
}

func deploy(ctx context.Context, e *env, args []string) error {
	if e.opts.file == "" {
		return errors.New("deploy needs -f FILE")
	}
	if err := needArgs(args, 0, "no arguments besides -f FILE"); err != nil {
		return err
	}
	cfg, err := client.LoadConfig(e.opts.file)
	if err != nil {
		return err
	}
	cl, err := e.client(ctx)
	if err != nil {
		return err
	}
	if e.opts.nodes > 0 {
		if err := waitNodes(ctx, e, cl, e.opts.nodes); err != nil {
			return err
		}
	}
	// A big file takes longer than --timeout's default: the wait grows
	// with the number of deployments (client.ApplyTimeout).
	cctx, cancel := context.WithTimeout(ctx, max(e.timeout, client.ApplyTimeout(cfg)))
	res, err := cl.Apply(cctx, cfg, client.ApplyOptions{Prune: e.opts.prune, DryRun: e.opts.dryRun})
	cancel()
	if err != nil {
		return explain(err)
	}
	if e.output == "json" && !e.opts.wait {
		return e.json(res)
	}
	if e.output == "table" {
		verb := ""
		if e.opts.dryRun {
			verb = "would be "
		}
		for _, l := range []struct {
			what  string
			names []string
		}{{"created", res.Created}, {"updated", res.Updated}, {"unchanged", res.Unchanged}, {"deleted", res.Deleted}} {
			for _, n := range l.names {
				fmt.Fprintf(e.stdout, "%s %s%s\n", n, verb, l.what)
			}
		}
	}
	if !e.opts.wait || e.opts.dryRun {
		return nil
	}
	return waitAll(ctx, e, cl, cfg)
}

// waitAll shows ready/target per deployment until all are HEALTHY.
func waitAll(ctx context.Context, e *env, cl *client.Client, cfg *client.Config) error {
	names := make([]string, 0, len(cfg.Deployments))
	for _, d := range cfg.Deployments {
		names = append(names, d.Spec.Name)
	}
	sort.Strings(names)
	last := ""
	deadline := time.Now().Add(max(e.timeout, 5*time.Minute))
	for {
		var line []string
		done := true
		final := map[string]client.Deployment{}
		for _, n := range names {
			cctx, cancel := e.ctx(ctx)
			d, err := cl.Get(cctx, n)
			cancel()
			if err != nil {
				return explain(err)
			}
			final[n] = *d
			line = append(line, fmt.Sprintf("%s %d/%d %s", n, d.Ready, d.Target, d.Status))
			switch {
			case d.Status == client.StatusDeployFailed:
				return fmt.Errorf("%s: %s: %s", n, d.Status, d.Message)
			case d.Status != client.StatusHealthy:
				done = false
			}
		}
		if s := strings.Join(line, ", "); s != last && e.output == "table" {
			fmt.Fprintln(e.stdout, s)
			last = s
		}
		if done {
			if e.output == "json" {
				out := make([]client.Deployment, 0, len(names))
				for _, n := range names {
					out = append(out, final[n])
				}
				return e.json(out)
			}
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not HEALTHY after waiting: %s", last)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// waitNodes waits until n node agents are alive.
func waitNodes(ctx context.Context, e *env, cl *client.Client, n int) error {
	deadline := time.Now().Add(e.timeout)
	for {
		cctx, cancel := e.ctx(ctx)
		st, err := cl.Status(cctx)
		cancel()
		alive := 0
		if err == nil {
			for _, nd := range st.Nodes {
				if nd.Alive {
					alive++
				}
			}
			if alive >= n {
				return nil
			}
		}
		if time.Now().After(deadline) {
			if err != nil {
				return explain(err)
			}
			return fmt.Errorf("%d of %d node agents alive after %v", alive, n, e.timeout)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}
