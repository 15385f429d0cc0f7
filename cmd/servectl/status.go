package main

import (
	"context"
	"fmt"
	"strings"
	"time"
)

func init() {
	register("status", command{help: "deployments, nodes and the leading controller at a glance", run: status})
}

func status(ctx context.Context, e *env, args []string) error {
	if err := needArgs(args, 0, "no arguments"); err != nil {
		return err
	}
	cl, cctx, cancel, err := e.connect(ctx)
	if err != nil {
		return err
	}
	defer cancel()
	st, err := cl.Status(cctx)
	if err != nil {
		return explain(err)
	}
	if e.output == "json" {
		return e.json(st)
	}
	fmt.Fprintf(e.stdout, "controller: %s (leader)\n\n", st.Leader)
	w := e.table()
	fmt.Fprintln(w, "DEPLOYMENT\tREPLICAS\tROUTE\tSTATUS\tMESSAGE")
	for _, d := range st.Deployments {
		fmt.Fprintf(w, "%s\t%d/%d\t%s\t%s\t%s\n", d.Spec.Name, d.Ready, d.Target, route(d.Spec), d.Status, dash(d.Message))
	}
	if err := w.Flush(); err != nil {
		return err
	}
	fmt.Fprintln(e.stdout)
	w = e.table()
	fmt.Fprintln(w, "NODE\tHOST\tALIVE\tREPLICAS\tLAST SEEN\tCLASSES")
	for _, n := range st.Nodes {
		seen := "-"
		if !n.LastSeen.IsZero() {
			seen = time.Since(n.LastSeen).Round(100*time.Millisecond).String() + " ago"
		}
		fmt.Fprintf(w, "%s\t%s\t%v\t%d\t%s\t%s\n", n.Name, n.Host, n.Alive, n.Replicas, seen, strings.Join(n.Classes, ","))
	}
	return w.Flush()
}
