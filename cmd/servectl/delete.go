package main

import (
	"context"
	"fmt"
)

func init() {
	register("delete", command{usage: "NAME", help: "delete a deployment; its replicas drain and stop", run: deleteDeployment})
}

func deleteDeployment(ctx context.Context, e *env, args []string) error {
	if err := needArgs(args, 1, "NAME"); err != nil {
		return err
	}
	cl, cctx, cancel, err := e.connect(ctx)
	if err != nil {
		return err
	}
	defer cancel()
	if err := cl.Delete(cctx, args[0]); err != nil {
		return explain(err)
	}
	if e.output == "json" {
		return e.json(map[string]string{"deleted": args[0]})
	}
	fmt.Fprintf(e.stdout, "%s deleted\n", args[0])
	return nil
}
