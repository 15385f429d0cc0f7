// Package broker embeds a NATS server with JetStream: the transport of every
// request and the store of the control plane's key-value buckets.
//
// A Broker is built from a Config with New, started with Start, and stopped
// with Shutdown. Clients in the same process may connect in-process (no TCP)
// with the option from InProcessOption; everything else connects to
// ClientURL. One node is the default; Config.Cluster makes it a member of a
// cluster of three or more. Config.TLS puts client connections on TLS (and
// may require client certificates); Config.Cluster.TLS does the same for
// routes, always verifying the peer against the CA. Routes authenticate
// with a shared route secret (Config.Cluster.Secret, by default the one in
// Config.Auth), with or without TLS.
package broker

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/natserve/natserve/internal/auth"
	"github.com/natserve/natserve/internal/natsconn"
	"github.com/natserve/natserve/internal/wire"
)

// ErrConfig is returned (wrapped) by Validate for a bad configuration.
var ErrConfig = errors.New("broker config")

// Config configures a Broker.
type Config struct {
	// Name is the server name, unique in a cluster. Default: "natserve-" + host name.
	Name string
	// Host is the client listen address. Default: 127.0.0.1.
	Host string
	// Port is the client port; -1 picks a free port. Default: 4222.
	Port int
	// DataDir holds JetStream's file store. Required.
	DataDir string
	// SyncAlways makes JetStream fsync every write (recommended for a cluster
	// holding the control plane, see Jepsen's NATS 2.12.1 analysis). Default: false.
	SyncAlways bool
	// MaxPayload is the largest message in bytes. Default: 8 MiB.
	MaxPayload int32
	// TLS, when its CertFile is set, requires TLS of every TCP client
	// (in-process clients stay plain). Default: no TLS.
	TLS TLSConfig
	// Cluster, when its Port is not 0, makes the broker a cluster member.
	Cluster ClusterConfig
	// ReadyTimeout bounds how long Start waits for the server. Default: 10s.
	ReadyTimeout time.Duration
	// Logger receives the server's log. Default: slog.Default() at warn level and up.
	Logger *slog.Logger
	// Debug passes nats-server's debug log to Logger. Default: false.
	Debug bool
	// Auth puts the server in operator mode: it trusts Auth's operator,
	// resolves its two accounts from memory, and refuses anonymous clients.
	// nil runs without authentication (only tests of the broker alone do).
	// Default: nil.
	Auth *auth.Set
}

// ClusterConfig configures cluster membership.
type ClusterConfig struct {
	// Name of the cluster; all members use the same. Default: "natserve".
	Name string
	// Host is the route listen address. Default: Config.Host.
	Host string
	// Port is the route port; 0 means no cluster, -1 picks a free one. Default: 0.
	Port int
	// Routes are the peers, as nats-route://host:port URLs. Default: none.
	Routes []string
	// TLS, when its CertFile is set, puts routes on TLS. Both sides of a
	// route present CertFile and verify the other's against CAFile (which is
	// then required), so a peer without a certificate from that CA is
	// refused; Verify is implied. Default: no TLS.
	TLS TLSConfig
	// Secret is the route secret: the broker requires it of every route it
	// accepts (user auth.RouteUser) and presents it on the routes it opens,
	// so a server without it cannot join. A cluster needs a Secret or
	// route TLS. Default: Config.Auth's route secret.
	Secret string
}

// TLSConfig names a listener's TLS files.
type TLSConfig struct {
	// CertFile is the server's PEM certificate; empty means no TLS. Default: "".
	CertFile string
	// KeyFile is CertFile's private key. Default: "".
	KeyFile string
	// CAFile is a PEM file of the CA(s) that sign the certificates peers
	// present. Default: "" (clients are not asked for certificates).
	CAFile string
	// Verify requires every client to present a certificate signed by
	// CAFile (mutual TLS). Default: false.
	Verify bool
}

// Enabled reports whether the listener uses TLS.
func (t TLSConfig) Enabled() bool { return t.CertFile != "" }

// build checks t and loads its files into a tls.Config; nil without TLS.
// verify requires peers' certificates.
func (t TLSConfig) build(what string, verify bool) (*tls.Config, error) {
	if !t.Enabled() && t.KeyFile == "" && t.CAFile == "" && !t.Verify {
		return nil, nil
	}
	switch {
	case t.CertFile == "" || t.KeyFile == "":
		return nil, fmt.Errorf("%w: %s TLS needs both a cert file and a key file (got cert %q, key %q)", ErrConfig, what, t.CertFile, t.KeyFile)
	case verify && t.CAFile == "":
		return nil, fmt.Errorf("%w: %s TLS verifying peers needs a CA file", ErrConfig, what)
	}
	tc, err := server.GenTLSConfig(&server.TLSConfigOpts{CertFile: t.CertFile, KeyFile: t.KeyFile, CaFile: t.CAFile, Verify: verify})
	if err == nil && tc == nil {
		err = fmt.Errorf("CA file %s is empty", t.CAFile)
	}
	if err != nil {
		return nil, fmt.Errorf("%w: %s TLS: %v", ErrConfig, what, err)
	}
	return tc, nil
}

// DefaultConfig returns the defaults for one node on loopback.
func DefaultConfig() Config {
	host, _ := os.Hostname()
	return Config{
		Name:         wire.SanitizeName("natserve-"+host, "natserve"),
		Host:         "127.0.0.1",
		Port:         4222,
		MaxPayload:   8 << 20,
		ReadyTimeout: 10 * time.Second,
		Cluster:      ClusterConfig{Name: "natserve"},
	}
}

// Validate reports the first problem with c.
func (c *Config) Validate() error {
	if c.DataDir == "" {
		return fmt.Errorf("%w: data dir is required", ErrConfig)
	}
	if c.Port < -1 || c.Port > 65535 {
		return fmt.Errorf("%w: port %d out of range", ErrConfig, c.Port)
	}
	if c.Cluster.Port < -1 || c.Cluster.Port > 65535 {
		return fmt.Errorf("%w: cluster port %d out of range", ErrConfig, c.Cluster.Port)
	}
	if c.MaxPayload <= 0 || c.MaxPayload > 64<<20 {
		return fmt.Errorf("%w: max payload %d out of range (1 B to 64 MiB)", ErrConfig, c.MaxPayload)
	}
	for _, r := range c.Cluster.Routes {
		if _, err := parseRoute(r); err != nil {
			return err
		}
	}
	if _, err := c.TLS.build("client", c.TLS.Verify); err != nil {
		return err
	}
	if c.Cluster.Port != 0 && c.Cluster.Secret == "" && !c.Cluster.TLS.Enabled() && (c.Auth == nil || c.Auth.RouteSecret == "") {
		return fmt.Errorf("%w: cluster routes need a route secret (natserve auth init writes %s) or route TLS; nothing listens unauthenticated", ErrConfig, auth.RouteSecretFile)
	}
	if _, err := c.Cluster.TLS.build("cluster", true); err != nil {
		return err
	}
	return nil
}

func parseRoute(r string) (*url.URL, error) {
	u, err := url.Parse(r)
	if err != nil {
		return nil, fmt.Errorf("%w: cluster route %q: %v", ErrConfig, r, err)
	}
	if u.Scheme != "nats-route" && u.Scheme != "nats" {
		return nil, fmt.Errorf("%w: cluster route %q: want nats-route://host:port", ErrConfig, r)
	}
	if u.User != nil {
		return nil, fmt.Errorf("%w: cluster route %s://%s carries credentials; routes authenticate with the route secret from its file", ErrConfig, u.Scheme, u.Host)
	}
	host, port, err := net.SplitHostPort(u.Host)
	if err != nil || host == "" {
		return nil, fmt.Errorf("%w: cluster route %q: want nats-route://host:port", ErrConfig, r)
	}
	if p, err := strconv.Atoi(port); err != nil || p <= 0 || p > 65535 {
		return nil, fmt.Errorf("%w: cluster route %q: bad port %q", ErrConfig, r, port)
	}
	return u, nil
}

// Broker is an embedded NATS server.
type Broker struct {
	cfg Config

	mu  sync.Mutex // guards srv
	srv *server.Server
}

// New returns a Broker for cfg; it does not start it.
func New(cfg Config) (*Broker, error) {
	d := DefaultConfig()
	if cfg.Name == "" {
		cfg.Name = d.Name
	}
	if cfg.Host == "" {
		cfg.Host = d.Host
	}
	if cfg.Port == 0 {
		cfg.Port = d.Port
	}
	if cfg.MaxPayload == 0 {
		cfg.MaxPayload = d.MaxPayload
	}
	if cfg.ReadyTimeout == 0 {
		cfg.ReadyTimeout = d.ReadyTimeout
	}
	if cfg.Cluster.Name == "" {
		cfg.Cluster.Name = d.Cluster.Name
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &Broker{cfg: cfg}, nil
}

func (b *Broker) options() (*server.Options, error) {
	c := b.cfg
	o := &server.Options{
		ServerName:    c.Name,
		Host:          c.Host,
		Port:          c.Port,
		JetStream:     true,
		StoreDir:      c.DataDir,
		MaxPayload:    c.MaxPayload,
		NoSigs:        true,
		SyncAlways:    c.SyncAlways,
		PingInterval:  20 * time.Second, // find dead clients in ~1 min, not 4
		MaxPingsOut:   3,
		WriteDeadline: 5 * time.Second,
	}
	tc, err := c.TLS.build("client", c.TLS.Verify)
	if err != nil {
		return nil, err
	}
	if tc != nil {
		o.TLS, o.TLSVerify, o.TLSConfig = true, c.TLS.Verify, tc
	}
	if a := c.Auth; a != nil {
		oc, err := jwt.DecodeOperatorClaims(a.OperatorJWT)
		if err != nil {
			return nil, fmt.Errorf("%w: operator jwt: %v", ErrConfig, err)
		}
		r := &server.MemAccResolver{}
		if err := r.Store(a.SystemAccount, a.SystemJWT); err != nil {
			return nil, fmt.Errorf("%w: %v", ErrConfig, err)
		}
		if err := r.Store(a.Account, a.AccountJWT); err != nil {
			return nil, fmt.Errorf("%w: %v", ErrConfig, err)
		}
		o.TrustedOperators = []*jwt.OperatorClaims{oc}
		o.AccountResolver = r
		o.SystemAccount = a.SystemAccount
	}
	if c.Cluster.Port != 0 {
		o.Cluster.Name = c.Cluster.Name
		o.Cluster.Host = c.Cluster.Host
		if o.Cluster.Host == "" {
			o.Cluster.Host = c.Host
		}
		o.Cluster.Port = c.Cluster.Port
		rc, err := c.Cluster.TLS.build("cluster", true)
		if err != nil {
			return nil, err
		}
		if rc != nil {
			// A route is both client and server of TLS: as nats-server does for
			// a cluster's tls block, trust the CA both ways and always verify.
			rc.RootCAs = rc.ClientCAs
			o.Cluster.TLSConfig = rc
		}
		secret := c.Cluster.Secret
		if secret == "" && c.Auth != nil {
			secret = c.Auth.RouteSecret
		}
		if secret != "" {
			// nats-server requires these of every route it accepts, and
			// presents them on routes it learns of from its peers; the
			// routes configured here carry them in their URLs.
			o.Cluster.Username, o.Cluster.Password = auth.RouteUser, secret
			o.Cluster.AuthTimeout = 2
		}
		for _, r := range c.Cluster.Routes {
			u, err := parseRoute(r)
			if err != nil {
				return nil, err
			}
			u.Scheme = "nats-route"
			if secret != "" {
				u.User = url.UserPassword(auth.RouteUser, secret)
			}
			o.Routes = append(o.Routes, u)
		}
	}
	return o, nil
}

// Start starts the server and waits until it accepts clients and JetStream
// is ready (in a cluster: until this node is connected, not until the
// cluster has a meta leader).
func (b *Broker) Start(ctx context.Context) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.srv != nil {
		return nil
	}
	if err := os.MkdirAll(b.cfg.DataDir, 0o750); err != nil {
		return fmt.Errorf("broker: data dir %s: %w", b.cfg.DataDir, err)
	}
	opts, err := b.options()
	if err != nil {
		return err
	}
	for _, port := range []int{opts.Port, opts.Cluster.Port} {
		if port <= 0 {
			continue
		}
		addr := net.JoinHostPort(opts.Host, strconv.Itoa(port))
		l, err := net.Listen("tcp", addr)
		if err != nil {
			return fmt.Errorf("broker: cannot listen on %s: address in use or not allowed (%v)", addr, err)
		}
		_ = l.Close()
	}
	srv, err := server.NewServer(opts)
	if err != nil {
		return fmt.Errorf("broker: %w", err)
	}
	srv.SetLoggerV2(&logger{l: b.cfg.Logger, debug: b.cfg.Debug}, b.cfg.Debug, false, false)
	go srv.Start()
	timeout := b.cfg.ReadyTimeout
	if dl, ok := ctx.Deadline(); ok && time.Until(dl) < timeout {
		timeout = time.Until(dl)
	}
	if !srv.ReadyForConnections(timeout) {
		srv.Shutdown()
		srv.WaitForShutdown()
		return fmt.Errorf("broker: not ready after %v on %s:%d (is the port taken or the data dir %s locked by another broker?)", timeout, b.cfg.Host, b.cfg.Port, b.cfg.DataDir)
	}
	b.srv = srv
	return nil
}

// ClientURL is the URL clients on this machine connect to: tls:// with
// TLS, and a loopback address when the broker listens on all of them.
func (b *Broker) ClientURL() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.srv == nil {
		return ""
	}
	u := b.srv.ClientURL()
	if p, err := url.Parse(u); err == nil {
		if ip := net.ParseIP(p.Hostname()); ip != nil && ip.IsUnspecified() {
			lo := "127.0.0.1"
			if ip.To4() == nil {
				lo = "::1"
			}
			p.Host = net.JoinHostPort(lo, p.Port())
			u = p.String()
		}
	}
	return u
}

// ClusterAddr is the route listener's address, or nil without a cluster.
func (b *Broker) ClusterAddr() net.Addr {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.srv == nil {
		return nil
	}
	return b.srv.ClusterAddr()
}

// Server returns the embedded server, for in-process connections and tests.
func (b *Broker) Server() *server.Server {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.srv
}

// InProcessOption connects a nats.Conn to this broker without TCP.
func (b *Broker) InProcessOption() nats.Option { return nats.InProcessServer(b.Server()) }

// InProcessCoalescingOption connects a nats.Conn to this broker without
// TCP, its writes coalesced (natsconn.Coalescing): for a part that
// publishes from many goroutines, the ingress.
func (b *Broker) InProcessCoalescingOption() nats.Option {
	return nats.InProcessServer(coalescingInProcess{b.Server()})
}

type coalescingInProcess struct{ s *server.Server }

func (p coalescingInProcess) InProcessConn() (net.Conn, error) {
	c, err := p.s.InProcessConn()
	if err != nil {
		return nil, err
	}
	return natsconn.NewCoalescingConn(c, natsconn.WriteTimeout), nil
}

// Auth returns the credentials the broker trusts, or nil without
// authentication.
func (b *Broker) Auth() *auth.Set { return b.cfg.Auth }

// UpdateAccount gives the running server a new JWT of an account it
// trusts (as auth.Set.Revoke returns): revoked users' connections are
// closed and their JWTs refused from now on.
func (b *Broker) UpdateAccount(token string) error {
	srv := b.Server()
	if srv == nil {
		return fmt.Errorf("broker: not running")
	}
	ac, err := jwt.DecodeAccountClaims(token)
	if err != nil {
		return fmt.Errorf("broker: account jwt: %w", err)
	}
	if b.cfg.Auth == nil || (ac.Subject != b.cfg.Auth.Account && ac.Subject != b.cfg.Auth.SystemAccount) {
		return fmt.Errorf("broker: account %s is not one this broker trusts", ac.Subject)
	}
	oc, err := jwt.DecodeOperatorClaims(b.cfg.Auth.OperatorJWT)
	if err != nil || ac.Issuer != oc.Subject {
		return fmt.Errorf("broker: account jwt for %s not issued by the operator", ac.Subject)
	}
	if err := srv.AccountResolver().Store(ac.Subject, token); err != nil {
		return fmt.Errorf("broker: %w", err)
	}
	acc, err := srv.LookupAccount(ac.Subject)
	if err != nil {
		return fmt.Errorf("broker: %w", err)
	}
	srv.UpdateAccountClaims(acc, ac)
	return nil
}

// Shutdown stops the server and waits for it, or until ctx ends. Idempotent.
func (b *Broker) Shutdown(ctx context.Context) error {
	b.mu.Lock()
	srv := b.srv
	b.srv = nil
	b.mu.Unlock()
	if srv == nil {
		return nil
	}
	done := make(chan struct{})
	go func() {
		srv.Shutdown()
		srv.WaitForShutdown()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("broker: shutdown: %w", ctx.Err())
	}
}

// logger adapts nats-server's Logger to slog.
type logger struct {
	l     *slog.Logger
	debug bool
}

func (g *logger) Noticef(format string, v ...any) {
	if g.debug {
		g.l.Info("nats", "msg", fmt.Sprintf(format, v...))
	}
}
func (g *logger) Warnf(format string, v ...any) {
	g.l.Warn("nats", "msg", fmt.Sprintf(format, v...))
}
func (g *logger) Fatalf(format string, v ...any) {
	g.l.Error("nats fatal", "msg", fmt.Sprintf(format, v...))
}
func (g *logger) Errorf(format string, v ...any) {
	msg := fmt.Sprintf(format, v...)
	if strings.Contains(msg, "Error trying to connect to route") && !g.debug {
		return // expected while peers start
	}
	g.l.Error("nats", "msg", msg)
}
func (g *logger) Debugf(format string, v ...any) {
	if g.debug {
		g.l.Debug("nats", "msg", fmt.Sprintf(format, v...))
	}
}
func (g *logger) Tracef(string, ...any) {}
