package auth

import (
	"fmt"
	"os"
	"strings"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nkeys"
	"github.com/natserve/natserve/internal/wire"
)

// Signer mints replica identities with the account signing key: the
// controller holds it and puts a deployment's creds into each assignment.
type Signer struct {
	kp      nkeys.KeyPair
	account string
}

// LoadSigner reads the signing key seed in signerFile; the account it signs
// for is read from the (controller's) creds file credsFile, whose JWT names
// it as issuer account.
func LoadSigner(signerFile, credsFile string) (*Signer, error) {
	b, err := os.ReadFile(signerFile)
	if err != nil {
		return nil, fmt.Errorf("%w: signing key: %v", ErrAuth, err)
	}
	kp, err := nkeys.FromSeed([]byte(strings.TrimSpace(string(b))))
	if err != nil {
		return nil, fmt.Errorf("%w: signing key %s: %v", ErrAuth, signerFile, err)
	}
	cb, err := os.ReadFile(credsFile)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrAuth, err)
	}
	tok, err := jwt.ParseDecoratedJWT(cb)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrAuth, credsFile, err)
	}
	uc, err := jwt.DecodeUserClaims(tok)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrAuth, credsFile, err)
	}
	if uc.IssuerAccount == "" {
		return nil, fmt.Errorf("%w: %s: not signed with an account signing key", ErrAuth, credsFile)
	}
	return &Signer{kp: kp, account: uc.IssuerAccount}, nil
}

// Replica returns the creds (the text of a .creds file) of a new identity
// for the replicas of deployment, with wire.ReplicaPerms.
func (g *Signer) Replica(deployment string) (string, error) {
	if err := wire.ValidateName("deployment name", deployment); err != nil {
		return "", fmt.Errorf("%w: %w", ErrAuth, err)
	}
	ukp, err := nkeys.CreateUser()
	if err != nil {
		return "", fmt.Errorf("%w: %v", ErrAuth, err)
	}
	b, err := userCreds(ukp, wire.RoleReplica+" "+deployment, wire.ReplicaPerms(deployment), g.kp, g.account)
	return string(b), err
}
