package natsconn_test

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/natserve/natserve/internal/natsconn"
	"github.com/natserve/natserve/internal/testutil"
)

func TestTLSValidate(t *testing.T) {
	ca := testutil.NewCA(t, "natserve")
	kp := ca.Issue("client")
	junk := filepath.Join(t.TempDir(), "junk.pem")
	if err := os.WriteFile(junk, []byte("not a certificate"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		tls  natsconn.TLS
		want string // "" means valid
		opts int
	}{
		{"zero", natsconn.TLS{}, "", 0},
		{"CA only", natsconn.TLS{CAFile: ca.CertFile}, "", 2},
		{"CA and client cert", natsconn.TLS{CAFile: ca.CertFile, CertFile: kp.CertFile, KeyFile: kp.KeyFile}, "", 3},
		{"cert without key", natsconn.TLS{CertFile: kp.CertFile}, "needs both its cert and key", 0},
		{"missing CA", natsconn.TLS{CAFile: "/nonexistent/ca.pem"}, "/nonexistent/ca.pem", 0},
		{"CA not PEM", natsconn.TLS{CAFile: junk}, "no PEM certificate", 0},
		{"key does not match", natsconn.TLS{CertFile: kp.CertFile, KeyFile: junk}, "junk.pem", 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.tls.Validate()
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("invalid: %v", err)
			case tc.want != "" && (!errors.Is(err, natsconn.ErrTLS) || !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), "\n")):
				t.Fatalf("err %v, want one line with %q", err, tc.want)
			case tc.want == "" && len(tc.tls.Options()) != tc.opts:
				t.Fatalf("%d options, want %d", len(tc.tls.Options()), tc.opts)
			}
		})
	}
}

func TestTLSAbs(t *testing.T) {
	got, err := natsconn.TLS{CAFile: "ca.pem"}.Abs()
	if err != nil || !filepath.IsAbs(got.CAFile) || got.CertFile != "" {
		t.Fatalf("Abs: %+v %v", got, err)
	}
}
