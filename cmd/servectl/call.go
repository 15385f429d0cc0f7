package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"

	"github.com/natserve/natserve/client"
)

func init() {
	register("call", command{
		usage: "NAME [--method M] [--stream] [ARG ...]",
		help:  "call a deployment through a handle; each ARG is a JSON value, the result is printed as JSON (with --stream, each item on its own line as it arrives)",
		flags: func(fs *flag.FlagSet, o *options) {
			fs.StringVar(&o.method, "method", "", "method to call (default: the default method, Call)")
			fs.BoolVar(&o.stream, "stream", false, "call a streaming method: print each item as it arrives (the timeout covers the first item and each gap)")
		},
		run: call,
	})
}

func call(ctx context.Context, e *env, args []string) error {
	if len(args) < 1 {
		return errors.New("want NAME [ARG ...]")
	}
	callArgs := make([]any, 0, len(args)-1)
	for i, a := range args[1:] {
		v, err := parseArg(a)
		if err != nil {
			return fmt.Errorf("argument %d (%s) is not JSON: %v (quote strings: '\"text\"')", i+1, a, err)
		}
		callArgs = append(callArgs, v)
	}
	cl, cctx, cancel, err := e.connect(ctx)
	if err != nil {
		return err
	}
	defer cancel()
	if e.opts.stream {
		// The stream ends on Ctrl-C, not at the whole call's timeout: the
		// client's budget covers each item.
		for v, err := range cl.Handle(args[0]).Method(e.opts.method).Stream(ctx, callArgs...) {
			if err != nil {
				return err
			}
			b, err := json.Marshal(client.JSONable(v))
			if err != nil {
				return fmt.Errorf("an item cannot be shown as JSON: %v", err)
			}
			fmt.Fprintln(e.stdout, string(b))
		}
		return nil
	}
	var out any
	if err := cl.Handle(args[0]).Method(e.opts.method).Call(cctx, &out, callArgs...); err != nil {
		return err
	}
	b, err := json.Marshal(client.JSONable(out))
	if err != nil {
		return fmt.Errorf("the result cannot be shown as JSON: %v", err)
	}
	fmt.Fprintln(e.stdout, string(b))
	return nil
}

// parseArg decodes one JSON argument, keeping integers integers.
func parseArg(s string) (any, error) { return client.DecodeJSON([]byte(s)) }
