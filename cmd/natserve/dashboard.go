package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/natserve/natserve/internal/dashboard"
	"github.com/natserve/natserve/internal/metrics"
)

// defaultDashboardAddr is Ray's dashboard port.
const defaultDashboardAddr = "127.0.0.1:8265"

type dashboardFlags struct {
	addr, tokenFile *string
}

func addDashboardFlags(fs *flag.FlagSet) *dashboardFlags {
	return &dashboardFlags{
		addr:      fs.String("dashboard-addr", defaultDashboardAddr, "web dashboard listen address; \"\" turns it off (a taken default falls back to a free port)"),
		tokenFile: fs.String("dashboard-token-file", envOr("NATSERVE_DASHBOARD_TOKEN_FILE", ""), "file holding the dashboard's login token (default: a new random one, printed in its URL) ($NATSERVE_DASHBOARD_TOKEN_FILE)"),
	}
}

// runningDashboard is a dashboard and its listener.
type runningDashboard struct {
	URL    string // with ?token=…
	srv    *metrics.Server
	cancel context.CancelFunc
	done   chan struct{}
}

// start runs a dashboard reading through nc (nil result with the address "").
func (f *dashboardFlags) start(nc *nats.Conn, log *slog.Logger) (*runningDashboard, error) {
	if *f.addr == "" {
		return nil, nil
	}
	token := dashboard.NewToken()
	if *f.tokenFile != "" {
		t, err := metrics.ReadToken(*f.tokenFile)
		if err != nil {
			return nil, fmt.Errorf("dashboard: %w", err)
		}
		token = t
	}
	d, err := dashboard.New(dashboard.Config{Conn: nc, Token: token, Logger: log})
	if err != nil {
		return nil, err
	}
	srv, err := metrics.Listen(*f.addr, *f.addr == defaultDashboardAddr, d.Handler(), log)
	if err != nil {
		return nil, fmt.Errorf("dashboard: %w", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &runningDashboard{URL: fmt.Sprintf("http://%s/?token=%s", srv.Addr(), token), srv: srv, cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(r.done)
		_ = d.Run(ctx)
	}()
	return r, nil
}

// stop stops the dashboard. Nil-safe.
func (r *runningDashboard) stop() {
	if r == nil {
		return
	}
	r.cancel()
	<-r.done
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_ = r.srv.Shutdown(ctx)
}

func dashboardURL(r *runningDashboard) string {
	if r == nil {
		return "off"
	}
	return r.URL
}
