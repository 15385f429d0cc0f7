package natsconn

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/nats-io/nats.go"
)

// ErrTLS is returned (wrapped) by TLS.Validate.
var ErrTLS = errors.New("nats tls")

// TLS names the files of a NATS client's TLS: the CA that signed the
// broker's certificate and, when the broker verifies clients, this client's
// certificate and key. The zero value connects as the URL says (nats:// in
// plain TCP; tls:// over TLS with the system's roots).
type TLS struct {
	// CAFile is a PEM file of the CA(s) trusted for the broker's certificate. Default: the system's roots.
	CAFile string
	// CertFile is this client's PEM certificate, for a broker that verifies clients. Default: none.
	CertFile string
	// KeyFile is the private key of CertFile. Default: none.
	KeyFile string
}

// Enabled reports whether any file is set: the connection then requires TLS.
func (t TLS) Enabled() bool { return t.CAFile != "" || t.CertFile != "" || t.KeyFile != "" }

// Validate reads the files and reports the first problem, in one line
// naming the file, so that a process fails at start and not at connect.
func (t TLS) Validate() error {
	if (t.CertFile == "") != (t.KeyFile == "") {
		return fmt.Errorf("%w: a client certificate needs both its cert and key files (got cert %q, key %q)", ErrTLS, t.CertFile, t.KeyFile)
	}
	if t.CAFile != "" {
		pem, err := os.ReadFile(t.CAFile)
		if err != nil {
			return fmt.Errorf("%w: CA file: %v", ErrTLS, err)
		}
		if !x509.NewCertPool().AppendCertsFromPEM(pem) {
			return fmt.Errorf("%w: CA file %s: no PEM certificate in it", ErrTLS, t.CAFile)
		}
	}
	if t.CertFile != "" {
		if _, err := tls.LoadX509KeyPair(t.CertFile, t.KeyFile); err != nil {
			return fmt.Errorf("%w: client certificate %s / key %s: %v", ErrTLS, t.CertFile, t.KeyFile, err)
		}
	}
	return nil
}

// Abs returns t with every path made absolute (for a process started in
// another working directory).
func (t TLS) Abs() (TLS, error) {
	for _, p := range []*string{&t.CAFile, &t.CertFile, &t.KeyFile} {
		if *p == "" {
			continue
		}
		a, err := filepath.Abs(*p)
		if err != nil {
			return t, fmt.Errorf("%w: %s: %v", ErrTLS, *p, err)
		}
		*p = a
	}
	return t, nil
}

// Options returns the nats.Options for t: nil for the zero value, else
// nats.Secure (TLS required) with the CA as root and the client certificate.
func (t TLS) Options() []nats.Option {
	if !t.Enabled() {
		return nil
	}
	opts := []nats.Option{nats.Secure()}
	if t.CAFile != "" {
		opts = append(opts, nats.RootCAs(t.CAFile))
	}
	if t.CertFile != "" {
		opts = append(opts, nats.ClientCert(t.CertFile, t.KeyFile))
	}
	return opts
}
