package auth

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/nats-io/jwt/v2"

	"github.com/natserve/natserve/internal/wire"
)

// BrokerRole is the name of Split's directory for the brokers: the
// operator and account JWTs, server.conf and the route secret, no seed
// and no user creds.
const BrokerRole = "broker"

// Split copies each role's files into its own subdirectory of dir, so a
// service can be given only its own: broker/ (operator.jwt, sys.jwt,
// account.jwt, server.conf, route.secret, cluster.conf), controller/ (controller.creds, signer.nk),
// ingress/, admin/, client/ and node-<name>/ for each of nodes. It returns
// the subdirectories written.
func (s *Set) Split(dir string, nodes ...string) ([]string, error) {
	roles := map[string][]string{
		BrokerRole:          {operatorJWTFile, sysJWTFile, accountJWTFile, ServerConfigFile, RouteSecretFile, ClusterConfigFile},
		wire.RoleController: {wire.RoleController + ".creds", SignerFile},
		wire.RoleIngress:    {wire.RoleIngress + ".creds"},
		wire.RoleAdmin:      {wire.RoleAdmin + ".creds"},
		wire.RoleClient:     {wire.RoleClient + ".creds"},
	}
	for _, n := range nodes {
		p, err := s.Node(n)
		if err != nil {
			return nil, err
		}
		roles["node-"+n] = []string{filepath.Base(p)}
	}
	var out []string
	for role, files := range roles {
		sub := filepath.Join(dir, role)
		if err := os.MkdirAll(sub, 0o700); err != nil {
			return nil, fmt.Errorf("%w: %v", ErrAuth, err)
		}
		if err := os.Chmod(sub, 0o700); err != nil {
			return nil, fmt.Errorf("%w: %v", ErrAuth, err)
		}
		for _, f := range files {
			b, err := os.ReadFile(filepath.Join(s.Dir, f))
			if err != nil {
				return nil, fmt.Errorf("%w: %v", ErrAuth, err)
			}
			if err := writeFile(filepath.Join(sub, f), b); err != nil {
				return nil, err
			}
		}
		out = append(out, sub)
	}
	return out, nil
}

// LoadServer reads what a broker needs from dir: the operator JWT, the
// two account JWTs and the route secret (as written by Open or Split),
// without any seed. The accounts must be issued by the operator. The Set it
// returns cannot sign.
func LoadServer(dir string) (*Set, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrAuth, dir, err)
	}
	read := func(f string) (string, error) {
		b, err := os.ReadFile(filepath.Join(abs, f))
		if err != nil {
			return "", fmt.Errorf("%w: %v", ErrAuth, err)
		}
		return strings.TrimSpace(string(b)), nil
	}
	s := &Set{Dir: abs}
	if s.OperatorJWT, err = read(operatorJWTFile); err != nil {
		return nil, err
	}
	oc, err := jwt.DecodeOperatorClaims(s.OperatorJWT)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrAuth, filepath.Join(abs, operatorJWTFile), err)
	}
	for _, a := range []struct {
		file     string
		jwt, pub *string
	}{{sysJWTFile, &s.SystemJWT, &s.SystemAccount}, {accountJWTFile, &s.AccountJWT, &s.Account}} {
		if *a.jwt, err = read(a.file); err != nil {
			return nil, err
		}
		ac, err := jwt.DecodeAccountClaims(*a.jwt)
		if err != nil {
			return nil, fmt.Errorf("%w: %s: %v", ErrAuth, filepath.Join(abs, a.file), err)
		}
		if ac.Issuer != oc.Subject {
			return nil, fmt.Errorf("%w: %s: issued by %s, not the operator %s", ErrAuth, filepath.Join(abs, a.file), ac.Issuer, oc.Subject)
		}
		*a.pub = ac.Subject
	}
	if s.RouteSecret, err = LoadRouteSecret(filepath.Join(abs, RouteSecretFile)); err != nil {
		return nil, fmt.Errorf("%w (natserve auth init writes it; run it again on this directory's set)", err)
	}
	if oc.SystemAccount != s.SystemAccount {
		return nil, fmt.Errorf("%w: %s: the operator's system account is %s, not %s", ErrAuth, abs, oc.SystemAccount, s.SystemAccount)
	}
	return s, nil
}

// HasSeeds reports whether dir holds the operator's seed (a full set Open
// loads) rather than only a broker's JWTs (LoadServer).
func HasSeeds(dir string) bool {
	_, err := os.Stat(filepath.Join(dir, operatorSeedFile))
	return err == nil || !errors.Is(err, os.ErrNotExist)
}

// ServerOnly reports whether dir holds a broker's share of a set (the
// operator JWT without its seed), for LoadServer.
func ServerOnly(dir string) bool {
	_, err := os.Stat(filepath.Join(dir, operatorJWTFile))
	return err == nil && !HasSeeds(dir)
}
