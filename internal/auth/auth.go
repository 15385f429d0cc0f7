// Package auth creates and loads natserve's NATS credentials in NATS's
// decentralized JWT model: an operator, a system account (SYS), the
// application account (NATSERVE, JetStream enabled) with a signing key,
// and one user credentials file per role, each holding the role's
// permissions from internal/wire. nats-server verifies the chain itself
// (operator → account → user), so authentication needs no natserve process.
//
// Open creates what a directory lacks and reuses what it holds: the keys
// (seeds) are kept, the JWTs are signed again on every Open so that they
// carry the current permission templates. Files are 0600 in a 0700
// directory. The controller mints one user per deployment for its
// replicas with a Signer (the account signing key).
package auth

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nkeys"
	"github.com/natserve/natserve/internal/wire"
)

// Account names.
const (
	SystemAccountName = "SYS"
	AccountName       = "NATSERVE"
)

// ErrAuth is wrapped by every error of this package.
var ErrAuth = errors.New("auth")

// File names in a Set's directory.
const (
	operatorSeedFile = "operator.nk"
	operatorJWTFile  = "operator.jwt"
	sysSeedFile      = "sys.nk"
	sysJWTFile       = "sys.jwt"
	accountSeedFile  = "account.nk"
	accountJWTFile   = "account.jwt"
	// SignerFile holds the account signing key's seed: the controller
	// mints replica identities with it.
	SignerFile = "signer.nk"
	// ServerConfigFile is the nats-server config snippet for operator mode.
	ServerConfigFile = "server.conf"
	// RouteSecretFile holds the cluster route secret: every broker of a
	// cluster presents it on the routes it opens and requires it on the
	// routes it accepts, so a server without it cannot join.
	RouteSecretFile = "route.secret"
	// ClusterConfigFile is the nats-server snippet that goes inside a
	// stock server's cluster block: the route authorization.
	ClusterConfigFile = "cluster.conf"
	// RevocationsFile lists the user identities revoked in the account
	// (public key and time, as JSON), kept so that every re-signing of the
	// account JWT carries them.
	RevocationsFile = "revocations.json"
)

// RouteUser is the user name routes authenticate with (the password is
// the route secret).
const RouteUser = "natserve-route"

// ResponseTTL bounds how long a role that answers requests may still answer
// one (JWT response permission): the longest request natserve serves.
const ResponseTTL = time.Hour

// Set is an operator, its accounts and the role credentials in one
// directory.
type Set struct {
	// Dir is the absolute directory holding the files.
	Dir string
	// OperatorJWT is the operator's JWT (trusted by the server).
	OperatorJWT string
	// SystemAccount and SystemJWT are the system account's public key and JWT.
	SystemAccount, SystemJWT string
	// Account and AccountJWT are the application account's public key and JWT.
	Account, AccountJWT string
	// RouteSecret is the password of cluster routes (user RouteUser).
	RouteSecret string

	signer nkeys.KeyPair

	mu       sync.Mutex    // guards AccountJWT after Open, and revoked
	operator nkeys.KeyPair // nil in a broker's share (LoadServer)
	revoked  map[string]int64
}

// Open loads the set in dir, creating what is missing: keys, JWTs, the
// creds of the fixed roles (admin, controller, ingress, client, sys) and
// of a node agent for each of nodes, and the server config snippet.
func Open(dir string, nodes ...string) (*Set, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrAuth, dir, err)
	}
	if err := os.MkdirAll(abs, 0o700); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrAuth, err)
	}
	if err := os.Chmod(abs, 0o700); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrAuth, err)
	}
	s := &Set{Dir: abs}
	op, err := s.key(operatorSeedFile, nkeys.CreateOperator)
	if err != nil {
		return nil, err
	}
	sys, err := s.key(sysSeedFile, nkeys.CreateAccount)
	if err != nil {
		return nil, err
	}
	acc, err := s.key(accountSeedFile, nkeys.CreateAccount)
	if err != nil {
		return nil, err
	}
	if s.signer, err = s.key(SignerFile, nkeys.CreateAccount); err != nil {
		return nil, err
	}
	if s.RouteSecret, err = s.secret(RouteSecretFile); err != nil {
		return nil, err
	}
	opPub, _ := op.PublicKey()
	s.SystemAccount, _ = sys.PublicKey()
	s.Account, _ = acc.PublicKey()

	oc := jwt.NewOperatorClaims(opPub)
	oc.Name = "natserve"
	oc.SystemAccount = s.SystemAccount
	if s.OperatorJWT, err = oc.Encode(op); err != nil {
		return nil, fmt.Errorf("%w: operator jwt: %v", ErrAuth, err)
	}
	sc := jwt.NewAccountClaims(s.SystemAccount)
	sc.Name = SystemAccountName
	if s.SystemJWT, err = sc.Encode(op); err != nil {
		return nil, fmt.Errorf("%w: system account jwt: %v", ErrAuth, err)
	}
	s.operator = op
	if s.revoked, err = readRevocations(filepath.Join(abs, RevocationsFile)); err != nil {
		return nil, err
	}
	if s.AccountJWT, err = s.accountJWT(); err != nil {
		return nil, err
	}
	for name, v := range map[string]string{operatorJWTFile: s.OperatorJWT, sysJWTFile: s.SystemJWT, accountJWTFile: s.AccountJWT, ServerConfigFile: s.serverConfig(), ClusterConfigFile: s.ClusterConfig()} {
		if err := writeFile(filepath.Join(abs, name), []byte(v)); err != nil {
			return nil, err
		}
	}
	// The system user, for operators (nats --creds sys.creds server list).
	if err := s.user("sys.creds", "sys", wire.AdminPerms(), sys, s.SystemAccount); err != nil {
		return nil, err
	}
	for _, r := range []struct {
		role  string
		perms wire.Perms
	}{
		{wire.RoleAdmin, wire.AdminPerms()},
		{wire.RoleController, wire.ControllerPerms()},
		{wire.RoleIngress, wire.IngressPerms()},
		{wire.RoleClient, wire.ClientPerms()},
	} {
		if err := s.user(r.role+".creds", r.role, r.perms, s.signer, s.Account); err != nil {
			return nil, err
		}
	}
	for _, n := range nodes {
		if _, err := s.Node(n); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// accountJWT signs the application account's JWT: its signing key,
// JetStream limits and revocations.
func (s *Set) accountJWT() (string, error) {
	signerPub, _ := s.signer.PublicKey()
	ac := jwt.NewAccountClaims(s.Account)
	ac.Name = AccountName
	ac.SigningKeys.Add(signerPub)
	// Streams: the KV buckets, the object store, the results stream and
	// one request stream per deployment (stored requests): a fixed cap
	// (it was 256) left deployments past the ~250th without stored
	// requests. Only the admin and the controller may create streams.
	ac.Limits.JetStreamLimits = jwt.JetStreamLimits{
		MemoryStorage: -1, DiskStorage: -1, Streams: -1, Consumer: -1,
		MaxAckPending: -1, MemoryMaxStreamBytes: -1, DiskMaxStreamBytes: -1,
	}
	if len(s.revoked) > 0 {
		ac.Revocations = jwt.RevocationList{}
	}
	for pub, at := range s.revoked {
		ac.Revocations.Revoke(pub, time.Unix(at, 0))
	}
	tok, err := ac.Encode(s.operator)
	if err != nil {
		return "", fmt.Errorf("%w: account jwt: %v", ErrAuth, err)
	}
	return tok, nil
}

// Revoke revokes the user identities users (public keys) in the account:
// their JWTs, issued before now, are refused from now on and connections
// using them are closed once a server has the new account JWT, which
// Revoke returns (and writes, with server.conf). The revocations are kept
// in the set's directory, so every later Open signs them again. It needs
// the operator key (a set from Open, not LoadServer).
func (s *Set) Revoke(users ...string) (string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.operator == nil {
		return "", fmt.Errorf("%w: revoking users needs the operator key, which %s does not hold", ErrAuth, s.Dir)
	}
	now := time.Now().Unix()
	for _, u := range users {
		if !nkeys.IsValidPublicUserKey(u) {
			return "", fmt.Errorf("%w: revoke: %q is not a user public key", ErrAuth, u)
		}
	}
	for _, u := range users {
		s.revoked[u] = now
	}
	b, err := json.MarshalIndent(s.revoked, "", " ")
	if err != nil {
		return "", fmt.Errorf("%w: %v", ErrAuth, err)
	}
	if err := writeFile(filepath.Join(s.Dir, RevocationsFile), append(b, '\n')); err != nil {
		return "", err
	}
	tok, err := s.accountJWT()
	if err != nil {
		return "", err
	}
	s.AccountJWT = tok
	if err := writeFile(filepath.Join(s.Dir, accountJWTFile), []byte(tok)); err != nil {
		return "", err
	}
	if err := writeFile(filepath.Join(s.Dir, ServerConfigFile), []byte(s.serverConfig())); err != nil {
		return "", err
	}
	return tok, nil
}

// Revoked reports the revoked user identities (public key → Unix time).
func (s *Set) Revoked() map[string]int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[string]int64, len(s.revoked))
	for k, v := range s.revoked {
		out[k] = v
	}
	return out
}

func readRevocations(p string) (map[string]int64, error) {
	m := map[string]int64{}
	b, err := os.ReadFile(p)
	if errors.Is(err, os.ErrNotExist) {
		return m, nil
	}
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrAuth, err)
	}
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrAuth, p, err)
	}
	for u := range m {
		if !nkeys.IsValidPublicUserKey(u) {
			return nil, fmt.Errorf("%w: %s: %q is not a user public key", ErrAuth, p, u)
		}
	}
	return m, nil
}

// CredsUser returns the public key of the user in a creds file's text.
func CredsUser(creds string) (string, error) {
	tok, err := jwt.ParseDecoratedJWT([]byte(creds))
	if err != nil {
		return "", fmt.Errorf("%w: %v", ErrAuth, err)
	}
	uc, err := jwt.DecodeUserClaims(tok)
	if err != nil {
		return "", fmt.Errorf("%w: %v", ErrAuth, err)
	}
	return uc.Subject, nil
}

// CredsPath is the path of a fixed role's creds file (admin, controller,
// ingress, client).
func (s *Set) CredsPath(role string) string { return filepath.Join(s.Dir, role+".creds") }

// NodeCredsPath is the path of node's agent creds file.
func (s *Set) NodeCredsPath(node string) string {
	return filepath.Join(s.Dir, "node-"+node+".creds")
}

// SignerPath is the path of the account signing key's seed.
func (s *Set) SignerPath() string { return filepath.Join(s.Dir, SignerFile) }

// Node creates (or refreshes) the creds of node's agent and returns their path.
func (s *Set) Node(node string) (string, error) {
	if err := wire.ValidateName("node name", node); err != nil {
		return "", fmt.Errorf("%w: %w", ErrAuth, err)
	}
	p := s.NodeCredsPath(node)
	return p, s.user(filepath.Base(p), wire.RoleNode+" "+node, wire.NodePerms(node), s.signer, s.Account)
}

// Signer returns the signer that mints replica identities.
func (s *Set) Signer() *Signer { return &Signer{kp: s.signer, account: s.Account} }

// ServerConfig is the nats-server configuration of operator mode with a
// memory resolver holding both accounts.
func (s *Set) ServerConfig() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.serverConfig()
}

func (s *Set) serverConfig() string {
	var b strings.Builder
	fmt.Fprintf(&b, "# natserve: NATS operator mode (decentralized JWT), written by natserve.\n")
	fmt.Fprintf(&b, "# Include it in your nats-server.conf and enable JetStream.\n")
	fmt.Fprintf(&b, "operator: %s\n", s.OperatorJWT)
	fmt.Fprintf(&b, "system_account: %s\n", s.SystemAccount)
	fmt.Fprintf(&b, "resolver: MEMORY\n")
	fmt.Fprintf(&b, "resolver_preload: {\n")
	keys := map[string]string{s.SystemAccount: s.SystemJWT, s.Account: s.AccountJWT}
	names := make([]string, 0, len(keys))
	for k := range keys {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, k := range names {
		fmt.Fprintf(&b, "  %s: %s\n", k, keys[k])
	}
	fmt.Fprintf(&b, "}\n")
	fmt.Fprintf(&b, "# Cluster routes authenticate with the route secret (%s): in every member's\n", RouteSecretFile)
	fmt.Fprintf(&b, "# cluster block include %s and give each route URL the same credentials:\n", ClusterConfigFile)
	fmt.Fprintf(&b, "#   cluster {\n")
	fmt.Fprintf(&b, "#     name: natserve\n")
	fmt.Fprintf(&b, "#     listen: 0.0.0.0:6222\n")
	fmt.Fprintf(&b, "#     include ./%s\n", ClusterConfigFile)
	fmt.Fprintf(&b, "#     routes: [nats-route://%s:%s@nats2:6222, nats-route://%s:%s@nats3:6222]\n", RouteUser, s.RouteSecret, RouteUser, s.RouteSecret)
	fmt.Fprintf(&b, "#   }\n")
	return b.String()
}

// ClusterConfig is the nats-server snippet for inside a cluster block:
// routes must present RouteUser and the route secret.
func (s *Set) ClusterConfig() string {
	return fmt.Sprintf("# natserve: cluster route authorization, written by natserve; include it in the cluster block.\nauthorization {\n  user: %s\n  password: %q\n  timeout: 2\n}\n", RouteUser, s.RouteSecret)
}

// secret loads the secret in file, or creates one (32 random bytes, hex).
func (s *Set) secret(file string) (string, error) {
	p := filepath.Join(s.Dir, file)
	b, err := os.ReadFile(p)
	if err == nil {
		v := strings.TrimSpace(string(b))
		if err := checkSecret(v); err != nil {
			return "", fmt.Errorf("%w: %s: %v", ErrAuth, p, err)
		}
		return v, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("%w: %v", ErrAuth, err)
	}
	var raw [32]byte
	if _, err := rand.Read(raw[:]); err != nil {
		return "", fmt.Errorf("%w: %v", ErrAuth, err)
	}
	v := hex.EncodeToString(raw[:])
	return v, writeFile(p, []byte(v+"\n"))
}

// checkSecret accepts a route secret of 32 to 256 URL-safe characters (it
// travels in route URLs and nats-server config).
func checkSecret(v string) error {
	if len(v) < 32 || len(v) > 256 {
		return fmt.Errorf("route secret of %d characters, want 32 to 256", len(v))
	}
	for _, c := range v {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.' || c == '~') {
			return fmt.Errorf("route secret holds %q, want letters, digits and -_.~ only", c)
		}
	}
	return nil
}

// LoadRouteSecret reads a route secret file (as Open writes it).
func LoadRouteSecret(file string) (string, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return "", fmt.Errorf("%w: route secret: %v", ErrAuth, err)
	}
	v := strings.TrimSpace(string(b))
	if err := checkSecret(v); err != nil {
		return "", fmt.Errorf("%w: %s: %v", ErrAuth, file, err)
	}
	return v, nil
}

// key loads the seed in file, or creates one with create.
func (s *Set) key(file string, create func() (nkeys.KeyPair, error)) (nkeys.KeyPair, error) {
	p := filepath.Join(s.Dir, file)
	b, err := os.ReadFile(p)
	if err == nil {
		kp, err := nkeys.FromSeed([]byte(strings.TrimSpace(string(b))))
		if err != nil {
			return nil, fmt.Errorf("%w: %s: %v", ErrAuth, p, err)
		}
		return kp, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%w: %v", ErrAuth, err)
	}
	kp, err := create()
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrAuth, err)
	}
	seed, _ := kp.Seed()
	if err := writeFile(p, append(seed, '\n')); err != nil {
		return nil, err
	}
	return kp, nil
}

// user writes the creds file for a user with perms, signed by signer for
// account. An existing file keeps its user key; its JWT is signed again.
func (s *Set) user(file, name string, perms wire.Perms, signer nkeys.KeyPair, account string) error {
	p := filepath.Join(s.Dir, file)
	var ukp nkeys.KeyPair
	if b, err := os.ReadFile(p); err == nil {
		if ukp, err = jwt.ParseDecoratedNKey(b); err != nil {
			return fmt.Errorf("%w: %s: %v", ErrAuth, p, err)
		}
	} else if ukp, err = nkeys.CreateUser(); err != nil {
		return fmt.Errorf("%w: %v", ErrAuth, err)
	}
	creds, err := userCreds(ukp, name, perms, signer, account)
	if err != nil {
		return err
	}
	return writeFile(p, creds)
}

func userCreds(ukp nkeys.KeyPair, name string, perms wire.Perms, signer nkeys.KeyPair, account string) ([]byte, error) {
	pub, _ := ukp.PublicKey()
	uc := jwt.NewUserClaims(pub)
	uc.Name = name
	if sp, _ := signer.PublicKey(); sp != account {
		uc.IssuerAccount = account
	}
	uc.Pub.Allow.Add(perms.Pub...)
	uc.Sub.Allow.Add(perms.Sub...)
	if perms.Responses {
		uc.Resp = &jwt.ResponsePermission{MaxMsgs: 1, Expires: ResponseTTL}
	}
	tok, err := uc.Encode(signer)
	if err != nil {
		return nil, fmt.Errorf("%w: user %s: %v", ErrAuth, name, err)
	}
	seed, _ := ukp.Seed()
	creds, err := jwt.FormatUserConfig(tok, seed)
	if err != nil {
		return nil, fmt.Errorf("%w: user %s: %v", ErrAuth, name, err)
	}
	return creds, nil
}

// writeFile writes b to p (0600) through a temporary file and a rename,
// unless p already holds b.
func writeFile(p string, b []byte) error {
	if old, err := os.ReadFile(p); err == nil && string(old) == string(b) {
		return nil
	}
	f, err := os.CreateTemp(filepath.Dir(p), ".tmp-*")
	if err != nil {
		return fmt.Errorf("%w: %v", ErrAuth, err)
	}
	defer os.Remove(f.Name())
	if _, err := f.Write(b); err != nil {
		f.Close()
		return fmt.Errorf("%w: %v", ErrAuth, err)
	}
	if err := f.Chmod(0o600); err != nil {
		f.Close()
		return fmt.Errorf("%w: %v", ErrAuth, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("%w: %v", ErrAuth, err)
	}
	if err := os.Rename(f.Name(), p); err != nil {
		return fmt.Errorf("%w: %v", ErrAuth, err)
	}
	return nil
}
