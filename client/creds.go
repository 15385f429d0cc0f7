package client

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/nats-io/nats.go"
	"github.com/natserve/natserve/internal/wire"
)

// CredsEnv names the admin credentials file when no other is given.
const CredsEnv = "NATSERVE_CREDS"

// DefaultCredsPath is where natserve up writes the admin credentials with
// its default data directory, relative to the directory it runs in.
const DefaultCredsPath = "natserve-data/auth/admin.creds"

// ErrNoCreds is returned (wrapped) when the broker refused a connection
// for lack of (valid) credentials.
var ErrNoCreds = errors.New("authorization violation")

// CredsOptions returns the options that connect with the NATS credentials
// file path: the user JWT and seed, and the inbox prefix its permissions
// allow (every natserve role has its own).
func CredsOptions(path string) ([]nats.Option, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("credentials: %w", err)
	}
	opts := []nats.Option{nats.UserCredentials(path)}
	if p := wire.CredsInboxPrefix(b); p != "" {
		opts = append(opts, nats.CustomInboxPrefix(p))
	}
	return opts, nil
}

// noDefaultCreds is set inside a replica: user code there must not pick up
// an operator's admin credentials from the environment or a default path.
var noDefaultCreds bool

// DisableDefaultCreds turns off the lookup of $NATSERVE_CREDS and the
// default path in this process; the worker calls it in every replica.
func DisableDefaultCreds() { noDefaultCreds = true }

// FindCreds returns the credentials file to use: explicit if not empty,
// then $NATSERVE_CREDS, then DefaultCredsPath if it exists; the path is
// absolute. It returns "" when there is none.
func FindCreds(explicit string) string {
	p := explicit
	if p == "" && !noDefaultCreds {
		p = os.Getenv(CredsEnv)
		if p == "" {
			if _, err := os.Stat(DefaultCredsPath); err == nil {
				p = DefaultCredsPath
			}
		}
	}
	if p == "" {
		return ""
	}
	if abs, err := filepath.Abs(p); err == nil {
		p = abs
	}
	return p
}
