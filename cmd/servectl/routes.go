package main

import (
	"context"
	"fmt"
	"sort"
)

func init() {
	register("routes", command{help: "the route table: route prefix → deployment", run: routes})
}

func routes(ctx context.Context, e *env, args []string) error {
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
	table := map[string]string{}
	var prefixes []string
	for _, d := range ds {
		if p, on := d.Spec.Route(); on {
			table[p] = d.Spec.Name
			prefixes = append(prefixes, p)
		}
	}
	if e.output == "json" {
		return e.json(table)
	}
	sort.Strings(prefixes)
	w := e.table()
	fmt.Fprintln(w, "ROUTE\tDEPLOYMENT")
	for _, p := range prefixes {
		fmt.Fprintf(w, "%s\t%s\n", p, table[p])
	}
	return w.Flush()
}
