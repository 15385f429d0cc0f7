package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"strings"
	"time"

	"github.com/natserve/natserve/client"
)

func init() {
	register("requests", command{
		usage: "list [-deployment NAME] | get ID [-wait] | cancel ID",
		help:  "stored (asynchronous) requests: list them (admin credentials only: ids are bearer capabilities), show one (its result with -o json), cancel one",
		flags: func(fs *flag.FlagSet, o *options) {
			fs.StringVar(&o.dep, "deployment", "", "list: only this deployment's requests")
			fs.IntVar(&o.limit, "limit", 1000, "list: at most this many requests")
			fs.BoolVar(&o.wait, "wait", false, "get: wait until the request has ended")
		},
		run: requests,
	})
}

func requests(ctx context.Context, e *env, args []string) error {
	if len(args) == 0 {
		return errors.New("requests needs a subcommand: list, get ID or cancel ID")
	}
	sub, args := args[0], args[1:]
	cl, cctx, cancel, err := e.connect(ctx)
	if err != nil {
		return err
	}
	defer cancel()
	switch sub {
	case "list":
		if err := needArgs(args, 0, "no arguments after list"); err != nil {
			return err
		}
		rs, err := cl.ListRequests(cctx, e.opts.dep, e.opts.limit)
		if errors.Is(err, client.ErrListNeedsAdmin) {
			return errors.New(client.ErrListNeedsAdmin.Error() + ": pass the admin credentials with --creds FILE")
		}
		if err != nil {
			return explain(err)
		}
		if e.output == "json" {
			if rs == nil {
				rs = []*client.RequestStatus{}
			}
			return e.json(rs)
		}
		w := e.table()
		fmt.Fprintln(w, "ID\tDEPLOYMENT\tSTATUS\tATTEMPTS\tSUBMITTED\tERROR")
		for _, r := range rs {
			fmt.Fprintf(w, "%s\t%s\t%s\t%d\t%s\t%s\n", r.ID, r.Deployment, r.Status, r.Attempts, when(r.SubmittedAt), errText(r.Error))
		}
		return w.Flush()
	case "get", "cancel":
		if err := needArgs(args, 1, "ID"); err != nil {
			return err
		}
		var st *client.RequestStatus
		switch {
		case sub == "cancel":
			st, err = cl.Cancel(cctx, args[0])
		case e.opts.wait:
			st, err = cl.Wait(ctx, args[0]) // the command's ctx: Ctrl-C ends the wait
		default:
			st, err = cl.Request(cctx, args[0])
		}
		if err != nil {
			return explain(err)
		}
		if e.output == "json" {
			return e.json(st)
		}
		w := e.table()
		fmt.Fprintf(w, "id\t%s\ndeployment\t%s\nstatus\t%s\nattempts\t%d\nsubmitted\t%s\nstarted\t%s\nfinished\t%s\nerror\t%s\n",
			st.ID, st.Deployment, st.Status, st.Attempts, when(st.SubmittedAt), when(st.StartedAt), when(st.FinishedAt), errText(st.Error))
		if len(st.Result) > 0 && string(st.Result) != "null" {
			res := string(st.Result)
			if len(res) > 200 {
				res = res[:200] + "… (-o json for all of it)"
			}
			fmt.Fprintf(w, "result\t%s\n", res)
		}
		return w.Flush()
	}
	return fmt.Errorf("requests %q: want list, get or cancel", sub)
}

func when(t *time.Time) string {
	if t == nil {
		return "-"
	}
	return t.Local().Format("2006-01-02 15:04:05")
}

func errText(s *string) string {
	if s == nil {
		return "-"
	}
	return oneLine(strings.TrimSpace(*s))
}
