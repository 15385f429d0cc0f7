package main

import (
	"context"
	"fmt"
	"strconv"
)

func init() {
	register("scale", command{usage: "NAME N", help: "set a deployment's replica count", run: scale})
}

func scale(ctx context.Context, e *env, args []string) error {
	if err := needArgs(args, 2, "NAME N"); err != nil {
		return err
	}
	n, err := strconv.Atoi(args[1])
	if err != nil {
		return fmt.Errorf("replica count %q is not a whole number", args[1])
	}
	cl, cctx, cancel, err := e.connect(ctx)
	if err != nil {
		return err
	}
	defer cancel()
	if err := cl.Scale(cctx, args[0], n); err != nil {
		return explain(err)
	}
	if e.output == "json" {
		return e.json(map[string]any{"name": args[0], "num_replicas": n})
	}
	fmt.Fprintf(e.stdout, "%s scaled to %d\n", args[0], n)
	return nil
}
