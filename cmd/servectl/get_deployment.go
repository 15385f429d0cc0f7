package main

import (
	"context"
	"fmt"
	"time"
)

func init() {
	register("get-deployment", command{usage: "NAME", help: "show a deployment's spec, status and every replica", run: getDeployment})
}

func getDeployment(ctx context.Context, e *env, args []string) error {
	if err := needArgs(args, 1, "NAME"); err != nil {
		return err
	}
	cl, cctx, cancel, err := e.connect(ctx)
	if err != nil {
		return err
	}
	defer cancel()
	d, err := cl.Get(cctx, args[0])
	if err != nil {
		return explain(err)
	}
	if e.output == "json" {
		return e.json(d)
	}
	s := d.Spec
	w := e.table()
	fmt.Fprintf(w, "name:\t%s\n", s.Name)
	fmt.Fprintf(w, "class:\t%s\n", s.Class)
	fmt.Fprintf(w, "version:\t%s\n", dash(s.Version))
	fmt.Fprintf(w, "status:\t%s\n", d.Status)
	if d.Message != "" {
		fmt.Fprintf(w, "message:\t%s\n", d.Message)
	}
	fmt.Fprintf(w, "replicas:\t%d/%d ready\n", d.Ready, d.Target)
	fmt.Fprintf(w, "route_prefix:\t%s\n", route(s))
	if len(s.InitArgs) > 0 {
		fmt.Fprintf(w, "init_args:\t%s\n", s.InitArgs)
	}
	if len(s.UserConfig) > 0 {
		fmt.Fprintf(w, "user_config:\t%s\n", s.UserConfig)
	}
	if a := d.Autoscaling; a != nil {
		ac := s.AutoscalingConfig
		fmt.Fprintf(w, "autoscaling:\t%d–%d replicas, target %.1f ongoing requests each; now %.1f ongoing, target %d replicas\n", *ac.MinReplicas, ac.MaxReplicas, ac.TargetOngoingRequests, a.OngoingRequests, a.Target)
		if a.LastDecision != "" {
			fmt.Fprintf(w, "last scaling decision:\t%s\n", a.LastDecision)
		}
	}
	fmt.Fprintf(w, "max_ongoing_requests:\t%d\n", s.MaxOngoingRequests)
	fmt.Fprintf(w, "graceful_shutdown_timeout_s:\t%g\n", s.GracefulShutdownTimeoutS)
	fmt.Fprintf(w, "health_check_period_s:\t%g\n", s.HealthCheckPeriodS)
	fmt.Fprintf(w, "health_check_timeout_s:\t%g\n", s.HealthCheckTimeoutS)
	if err := w.Flush(); err != nil {
		return err
	}
	fmt.Fprintln(e.stdout)
	w = e.table()
	fmt.Fprintln(w, "REPLICA\tNODE\tPID\tSTATE\tHEALTHY\tCURRENT\tUPTIME")
	for _, r := range d.Replicas {
		up := "-"
		if !r.Started.IsZero() {
			up = time.Since(r.Started).Round(time.Second).String()
		}
		pid := "-"
		if r.PID > 0 {
			pid = fmt.Sprint(r.PID)
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%v\t%v\t%s\n", r.ID, r.Node, pid, r.State, r.Healthy, r.Current, up)
	}
	return w.Flush()
}
