package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/natserve/natserve/client"
	"github.com/natserve/natserve/internal/natsconn"
)

// env is what every command gets: its flags, its output and a client.
type env struct {
	server  string
	tlsCA   string
	tlsCert string
	tlsKey  string
	creds   string
	output  string
	timeout time.Duration
	stdout  io.Writer
	stderr  io.Writer
	cl      *client.Client
	opts    options
}

// options are the flags of single commands.
type options struct {
	file   string
	wait   bool
	prune  bool
	dryRun bool
	method string
	nodes  int
	dep    string // requests list -deployment
	limit  int    // requests list -limit
	stream bool   // call -stream
}

func newEnv(fs *flag.FlagSet, stdout, stderr io.Writer) *env {
	e := &env{stdout: stdout, stderr: stderr}
	def := os.Getenv("NATSERVE_URL")
	if def == "" {
		def = client.DefaultURL
	}
	fs.StringVar(&e.server, "server", def, "natserve broker URL ($NATSERVE_URL)")
	fs.StringVar(&e.tlsCA, "tls-ca", os.Getenv(client.EnvTLSCA), "CA file that signed the broker's TLS certificate ($"+client.EnvTLSCA+")")
	fs.StringVar(&e.tlsCert, "tls-cert", os.Getenv(client.EnvTLSCert), "client certificate, for a broker that verifies clients ($"+client.EnvTLSCert+")")
	fs.StringVar(&e.tlsKey, "tls-key", os.Getenv(client.EnvTLSKey), "key of -tls-cert ($"+client.EnvTLSKey+")")
	fs.StringVar(&e.creds, "creds", "", "NATS credentials file (default: $NATSERVE_CREDS, then ./"+client.DefaultCredsPath+")")
	fs.StringVar(&e.output, "o", "table", "output: table or json")
	fs.DurationVar(&e.timeout, "timeout", 10*time.Second, "how long to wait for the server")
	return e
}

// client connects on first use.
func (e *env) client(ctx context.Context) (*client.Client, error) {
	if e.cl != nil {
		return e.cl, nil
	}
	cctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	// The broker's asynchronous errors (a subject these credentials may
	// not use) join the command's own error line instead of printing
	// one of their own (see denied).
	cl, err := client.Connect(cctx, e.server, client.WithName("servectl"), client.WithTLS(e.tlsCA, e.tlsCert, e.tlsKey), client.WithCreds(e.creds),
		client.WithNATSOptions(nats.ErrorHandler(func(*nats.Conn, *nats.Subscription, error) {})))
	switch {
	case errors.Is(err, client.ErrNoCreds): // one line naming what to pass
		return nil, err
	case errors.Is(err, natsconn.ErrTLS): // a TLS file is missing or bad
		return nil, err
	case errors.Is(err, nats.ErrTLS):
		return nil, fmt.Errorf("cannot reach natserve at %s over TLS: %v (pass -tls-ca FILE, and -tls-cert/-tls-key if the broker verifies clients)", e.server, errors.Unwrap(err))
	case err != nil:
		return nil, fmt.Errorf("cannot reach natserve at %s: is it running? (set --server or NATSERVE_URL)", e.server)
	}
	e.cl = cl
	return cl, nil
}

func (e *env) close() {
	if e.cl != nil {
		e.cl.Close()
	}
}

func (e *env) ctx(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, e.timeout)
}

// connect returns the client and a context bounded by --timeout; the
// caller defers cancel.
func (e *env) connect(ctx context.Context) (*client.Client, context.Context, context.CancelFunc, error) {
	cl, err := e.client(ctx)
	if err != nil {
		return nil, nil, nil, err
	}
	cctx, cancel := e.ctx(ctx)
	return cl, cctx, cancel, nil
}

// denied adds to a command's error the permissions violation the broker
// reported meanwhile, if the error does not say so already.
func (e *env) denied(err error) error {
	if err == nil || e.cl == nil {
		return err
	}
	last := e.cl.Conn().LastError()
	if last == nil || !errors.Is(last, nats.ErrPermissionViolation) || strings.Contains(err.Error(), "ermissions") {
		return err
	}
	return fmt.Errorf("%w (%v)", err, last)
}

// explain turns control-plane errors into advice.
func explain(err error) error {
	switch {
	case errors.Is(err, client.ErrNoController):
		return fmt.Errorf("%v: start one with 'natserve controller' or 'natserve up'", err)
	}
	return err
}

func (e *env) json(v any) error {
	enc := json.NewEncoder(e.stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// table returns a writer of aligned columns whose Flush writes the
// whole table at once: tabwriter alone writes each cell and padding to
// stdout as a system call of its own (12,000 for a list of 1,000
// deployments, a third of servectl list-deployments' time).
func (e *env) table() *table {
	buf := bufio.NewWriterSize(e.stdout, 64<<10)
	return &table{Writer: tabwriter.NewWriter(buf, 0, 4, 2, ' ', 0), buf: buf}
}

type table struct {
	*tabwriter.Writer
	buf *bufio.Writer
}

// Flush aligns and writes out the table.
func (t *table) Flush() error {
	if err := t.Writer.Flush(); err != nil {
		return err
	}
	return t.buf.Flush()
}

func needArgs(args []string, n int, usage string) error {
	if len(args) != n {
		return fmt.Errorf("want %s, got %d argument(s)", usage, len(args))
	}
	return nil
}
