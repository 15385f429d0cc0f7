package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"strings"
)

func init() {
	register("call", command{
		usage: "NAME [--method M] [ARG ...]",
		help:  "call a deployment through a handle; each ARG is a JSON value, the result is printed as JSON",
		flags: func(fs *flag.FlagSet, o *options) {
			fs.StringVar(&o.method, "method", "", "method to call (default: the default method, Call)")
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
	cl, err := e.client(ctx)
	if err != nil {
		return err
	}
	cctx, cancel := e.ctx(ctx)
	defer cancel()
	var out any
	if err := cl.Handle(args[0]).Method(e.opts.method).Call(cctx, &out, callArgs...); err != nil {
		return err
	}
	b, err := json.Marshal(normalize(out))
	if err != nil {
		return fmt.Errorf("the result cannot be shown as JSON: %v", err)
	}
	fmt.Fprintln(e.stdout, string(b))
	return nil
}

// parseArg decodes one JSON argument, keeping integers integers.
func parseArg(s string) (any, error) {
	dec := json.NewDecoder(strings.NewReader(s))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, err
	}
	if dec.More() {
		return nil, errors.New("more than one value")
	}
	return numbers(v), nil
}

func numbers(v any) any {
	switch x := v.(type) {
	case json.Number:
		if i, err := x.Int64(); err == nil {
			return i
		}
		f, _ := x.Float64()
		return f
	case []any:
		for i := range x {
			x[i] = numbers(x[i])
		}
	case map[string]any:
		for k := range x {
			x[k] = numbers(x[k])
		}
	}
	return v
}

// normalize makes msgpack-decoded values JSON-encodable (byte strings,
// maps with non-string keys).
func normalize(v any) any {
	switch x := v.(type) {
	case []byte:
		if bytes.IndexByte(x, 0) < 0 {
			return string(x)
		}
		return x
	case []any:
		for i := range x {
			x[i] = normalize(x[i])
		}
	case map[string]any:
		for k := range x {
			x[k] = normalize(x[k])
		}
	case map[any]any:
		m := make(map[string]any, len(x))
		for k, val := range x {
			m[fmt.Sprint(k)] = normalize(val)
		}
		return m
	}
	return v
}
