// Package profile serves the Go runtime's profiles over HTTP on a mux of
// its own, for the processes that are asked to (NATSERVE_PPROF,
// NATSERVE_REPLICA_PPROF). It builds its handlers from runtime/pprof and
// does not import net/http/pprof, whose init registers /debug/pprof/ on
// http.DefaultServeMux in every program that links it: a user's handler
// that serves the default mux would then expose the profiles.
package profile

import (
	"context"
	"errors"
	"fmt"
	"html"
	"log/slog"
	"net"
	"net/http"
	"os"
	"runtime"
	"runtime/pprof"
	"runtime/trace"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Prefix is where the handler serves the profiles; the paths and their
// parameters (debug, seconds, gc) are those of net/http/pprof, so
// `go tool pprof http://ADDR/debug/pprof/heap` works.
const Prefix = "/debug/pprof/"

// Handler returns a new mux that serves the profiles under Prefix.
func Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc(Prefix, index)
	mux.HandleFunc(Prefix+"profile", cpu)
	mux.HandleFunc(Prefix+"trace", traceHandler)
	mux.HandleFunc(Prefix+"cmdline", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprint(w, strings.Join(os.Args, "\x00"))
	})
	return mux
}

// Serve serves Handler on addr until ctx ends. A failure to listen is
// logged, not returned: profiling never stops the process it watches.
func Serve(ctx context.Context, addr string, log *slog.Logger) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		log.Debug("profiling not served", "addr", addr, "err", err)
		return
	}
	srv := &http.Server{Handler: Handler(), ReadHeaderTimeout: 10 * time.Second}
	stop := context.AfterFunc(ctx, func() { _ = srv.Close() })
	defer stop()
	log.Info("serving profiles", "addr", ln.Addr().String(), "path", Prefix)
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		log.Warn("profiling server failed", "err", err)
	}
}

func index(w http.ResponseWriter, r *http.Request) {
	name := strings.TrimPrefix(r.URL.Path, Prefix)
	if name != "" {
		named(w, r, name)
		return
	}
	profiles := pprof.Profiles()
	sort.Slice(profiles, func(i, j int) bool { return profiles[i].Name() < profiles[j].Name() })
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	fmt.Fprint(w, "<html><body><h1>profiles</h1><ul>\n")
	for _, p := range profiles {
		n := html.EscapeString(p.Name())
		fmt.Fprintf(w, "<li><a href=\"%s?debug=1\">%s</a> (%d)</li>\n", n, n, p.Count())
	}
	fmt.Fprint(w, "<li><a href=\"profile?seconds=30\">profile</a> (CPU)</li>\n<li><a href=\"trace?seconds=1\">trace</a></li>\n</ul></body></html>\n")
}

func named(w http.ResponseWriter, r *http.Request, name string) {
	p := pprof.Lookup(name)
	if p == nil {
		http.Error(w, "unknown profile "+name, http.StatusNotFound)
		return
	}
	debug, _ := strconv.Atoi(r.FormValue("debug"))
	if name == "heap" && r.FormValue("gc") != "" {
		runtime.GC()
	}
	if debug != 0 {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	} else {
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Header().Set("Content-Disposition", fmt.Sprintf("attachment; filename=%q", name))
	}
	_ = p.WriteTo(w, debug)
}

func seconds(r *http.Request, def int) time.Duration {
	s, err := strconv.Atoi(r.FormValue("seconds"))
	if err != nil || s <= 0 {
		s = def
	}
	return time.Duration(s) * time.Second
}

func cpu(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Disposition", `attachment; filename="profile"`)
	if err := pprof.StartCPUProfile(w); err != nil {
		http.Error(w, "cannot start a CPU profile: "+err.Error(), http.StatusInternalServerError)
		return
	}
	wait(r, seconds(r, 30))
	pprof.StopCPUProfile()
}

func traceHandler(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Disposition", `attachment; filename="trace"`)
	if err := trace.Start(w); err != nil {
		http.Error(w, "cannot start a trace: "+err.Error(), http.StatusInternalServerError)
		return
	}
	wait(r, seconds(r, 1))
	trace.Stop()
}

// wait waits d or until the client goes away.
func wait(r *http.Request, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-r.Context().Done():
	}
}
