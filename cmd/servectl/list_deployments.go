package main

import (
	"context"
	"fmt"

	"github.com/natserve/natserve/client"
)

func init() {
	register("list-deployments", command{help: "list deployments: name, class, version, replicas, route, status", run: listDeployments})
}

func listDeployments(ctx context.Context, e *env, args []string) error {
	if err := needArgs(args, 0, "no arguments"); err != nil {
		return err
	}
	cl, cctx, cancel, err := e.connect(ctx)
	if err != nil {
		return err
	}
	defer cancel()
	ds, err := cl.List(cctx)
	if err != nil {
		return explain(err)
	}
	if e.output == "json" {
		if ds == nil {
			ds = []client.Deployment{}
		}
		return e.json(ds)
	}
	w := e.table()
	fmt.Fprintln(w, "NAME\tCLASS\tVERSION\tREPLICAS\tROUTE\tSTATUS")
	for _, d := range ds {
		fmt.Fprintf(w, "%s\t%s\t%s\t%d/%d\t%s\t%s\n", d.Spec.Name, d.Spec.Class, dash(d.Spec.Version), d.Ready, d.Target, route(d.Spec), d.Status)
	}
	return w.Flush()
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func route(s client.DeploymentSpec) string {
	if p, on := s.Route(); on {
		return p
	}
	return "-"
}
