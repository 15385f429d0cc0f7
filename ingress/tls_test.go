package ingress_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/natserve/natserve/ingress"
	"github.com/natserve/natserve/internal/testutil"
)

func TestHTTPSConfig(t *testing.T) {
	kp := testutil.NewCA(t, "natserve").Issue("ingress")
	for _, tc := range []struct {
		name       string
		cert, key  string
		want       string // "" means valid
		wantScheme string
	}{
		{"plain", "", "", "", "http"},
		{"https", kp.CertFile, kp.KeyFile, "", "https"},
		{"cert without key", kp.CertFile, "", "needs both a cert file and a key file", ""},
		{"missing files", "/nonexistent/cert.pem", "/nonexistent/key.pem", "/nonexistent/cert.pem", ""},
		{"key is not the cert's", kp.CertFile, kp.CertFile, "HTTPS certificate", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := ingress.Config{NATSURL: "nats://127.0.0.1:4222", TLSCertFile: tc.cert, TLSKeyFile: tc.key}
			_, err := ingress.New(cfg)
			if tc.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				if got := cfg.Scheme(); got != tc.wantScheme {
					t.Fatalf("scheme %q, want %q", got, tc.wantScheme)
				}
				return
			}
			if !errors.Is(err, ingress.ErrConfig) || !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), "\n") {
				t.Fatalf("err %v, want one line with %q", err, tc.want)
			}
		})
	}
}
