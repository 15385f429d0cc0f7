package main_test

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/natserve/natserve/broker"
	"github.com/natserve/natserve/client"
	"github.com/natserve/natserve/internal/e2e"
	"github.com/natserve/natserve/internal/testutil"
)

func TestUpRefusesNoAuthOffLoopback(t *testing.T) {
	bin := testutil.Build(t, "./cmd/natserve")
	data := filepath.Join(t.TempDir(), "data")
	out, err := exec.Command(bin, "up", "-no-auth", "-data", data, "-nats-host", "0.0.0.0", "-nats-port", strconv.Itoa(e2e.FreePort(t))).CombinedOutput()
	if err == nil || strings.Count(string(out), "\n") != 1 || !strings.Contains(string(out), "-no-auth is for measuring on loopback only") {
		t.Fatalf("natserve up -no-auth -nats-host 0.0.0.0: %v, output %q; want a one-line refusal", err, out)
	}
	if _, err := os.Stat(data); !os.IsNotExist(err) {
		t.Errorf("data dir %s exists: refused too late", data)
	}
}

func TestUpRefusesOffLoopbackWithoutTLS(t *testing.T) {
	bin := testutil.Build(t, "./cmd/natserve")
	for _, host := range []string{"0.0.0.0", "::", ""} {
		t.Run("host="+host, func(t *testing.T) {
			data := filepath.Join(t.TempDir(), "data")
			cmd := exec.Command(bin, "up", "-data", data, "-nats-host", host, "-nats-port", strconv.Itoa(e2e.FreePort(t)))
			var stdout, stderr strings.Builder
			cmd.Stdout, cmd.Stderr = &stdout, &stderr
			err := cmd.Run()
			msg := stderr.String()
			if err == nil || strings.Count(msg, "\n") != 1 || !strings.HasPrefix(msg, "natserve: ") ||
				!strings.Contains(msg, "-tls-cert FILE -tls-key FILE") || !strings.Contains(msg, "off loopback") {
				t.Fatalf("natserve up -nats-host %q: %v, stderr %q; want one line naming -tls-cert and -tls-key", host, err, msg)
			}
			if stdout.Len() != 0 {
				t.Errorf("stdout %q, want nothing (refused before starting)", stdout.String())
			}
			if _, err := os.Stat(data); !os.IsNotExist(err) {
				t.Errorf("data dir %s exists: refused too late", data)
			}
			t.Logf("refusal: %s", strings.TrimSpace(msg))
		})
	}
}

// httpsClient trusts only caFile.
func httpsClient(t *testing.T, caFile string) *http.Client {
	t.Helper()
	pem, err := os.ReadFile(caFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
}

// TestUpOverTLS runs natserve up with NATS over TLS and HTTPS on the
// ingress: replicas connect over TLS, servectl and the Go client connect with
// the CA, curl (or net/http) reaches the deployments over HTTPS, and clients
// without the CA are refused.
func TestUpOverTLS(t *testing.T) {
	ca := testutil.NewCA(t, "natserve")
	srv := ca.Issue("up")
	u := up(t, "-tls-cert", srv.CertFile, "-tls-key", srv.KeyFile, "-tls-ca", ca.CertFile,
		"-http-tls-cert", srv.CertFile, "-http-tls-key", srv.KeyFile,
		"-f", filepath.Join(testutil.ModuleRoot(t), "examples/quickstart/serve.yaml"))
	natsURL := strings.Replace(u.natsURL, "nats://", "tls://", 1)
	httpsBase := strings.Replace(u.httpBase, "http://", "https://", 1)
	out := u.proc.Output()
	if !strings.Contains(out, "  broker      "+natsURL) || !strings.Contains(out, "  http        "+httpsBase) || !strings.Contains(out, "clients trust "+ca.CertFile) {
		t.Fatalf("banner lacks the tls:// and https:// addresses or the CA:\n%s", out)
	}

	// HTTPS with a real client: curl if present, else net/http with the CA.
	want := regexp.MustCompile(`^\(pid: \d+\); path: /model/rep-1.pkl;`)
	url := httpsBase + "/rep-1?data=0.2"
	if curl, err := exec.LookPath("curl"); err == nil {
		good, err := exec.Command(curl, "-sS", "--fail", "--max-time", "10", "--cacert", ca.CertFile, url).CombinedOutput()
		if err != nil || !want.Match(good) {
			t.Fatalf("curl --cacert %s: %v %q", url, err, good)
		}
		bad, err := exec.Command(curl, "-sS", "--max-time", "10", url).CombinedOutput()
		if err == nil {
			t.Fatalf("curl without the CA succeeded: %q", bad)
		}
		t.Logf("curl --cacert: %s; without the CA: %s", good, strings.SplitN(string(bad), "\n", 2)[0])
	}
	resp, err := httpsClient(t, ca.CertFile).Get(url)
	if err != nil {
		t.Fatalf("net/http with the CA: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !want.Match(body) {
		t.Fatalf("net/http with the CA: %d %q", resp.StatusCode, body)
	}
	if _, err := http.Get(u.httpBase + "/rep-1"); err == nil {
		t.Errorf("plain HTTP to the HTTPS ingress got a response")
	}

	// NATS: the Go client with the CA works; without it, refused.
	cl, err := client.Connect(e2e.Ctx(5*time.Second), natsURL, client.WithTLS(ca.CertFile, "", ""), client.WithCreds(u.creds()))
	if err != nil {
		t.Fatalf("Go client with the CA: %v", err)
	}
	defer cl.Close()
	s, err := client.Call[string](e2e.Ctx(5*time.Second), cl.Handle("rep-2"), 0.2)
	if err != nil || !strings.Contains(s, "/model/rep-2.pkl") {
		t.Fatalf("handle over TLS: %q %v", s, err)
	}
	t.Setenv(client.EnvTLSCA, ca.CertFile) // what Connect reads without WithTLS
	cl2, err := client.Connect(e2e.Ctx(5*time.Second), natsURL, client.WithCreds(u.creds()))
	if err != nil {
		t.Fatalf("Go client with $%s: %v", client.EnvTLSCA, err)
	}
	cl2.Close()
	if nc, err := nats.Connect(u.natsURL, nats.Timeout(3*time.Second)); err == nil {
		nc.Close()
		t.Fatal("a NATS client without the CA connected")
	} else {
		t.Logf("NATS client without the CA: %v", err)
	}

	servectl := testutil.Build(t, "./cmd/servectl")
	lst, err := exec.Command(servectl, "list-deployments", "--server", natsURL, "--creds", u.creds(), "-tls-ca", ca.CertFile).CombinedOutput()
	if err != nil || !regexp.MustCompile(`(?m)^rep-1\s+Model\s+-\s+2/2\s+/rep-1\s+HEALTHY$`).Match(lst) {
		t.Fatalf("servectl -tls-ca: %v\n%s", err, lst)
	}
	cmd := exec.Command(servectl, "list-deployments", "--server", natsURL, "--creds", u.creds())
	cmd.Env = append(os.Environ(), client.EnvTLSCA+"=")
	bad, err := cmd.CombinedOutput()
	if err == nil || strings.Count(string(bad), "\n") != 1 || !strings.Contains(string(bad), "pass -tls-ca FILE") {
		t.Fatalf("servectl without the CA: %v %q; want one line naming -tls-ca", err, bad)
	}
	t.Logf("servectl without the CA: %s", strings.TrimSpace(string(bad)))
}

// TestProcessesOverMutualTLS runs a controller, a node agent (with its
// replicas) and an ingress as processes against a broker that requires TLS
// and client certificates, and serves a request through them.
func TestProcessesOverMutualTLS(t *testing.T) {
	ca := testutil.NewCA(t, "natserve")
	srv, cli := ca.Issue("broker"), ca.Issue("natserve-client")
	cfg := broker.DefaultConfig()
	cfg.Port, cfg.DataDir = -1, t.TempDir()
	cfg.TLS = broker.TLSConfig{CertFile: srv.CertFile, KeyFile: srv.KeyFile, CAFile: ca.CertFile, Verify: true}
	b, err := broker.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Start(e2e.Ctx(10 * time.Second)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Shutdown(e2e.Ctx(10 * time.Second)) })

	flags := []string{"-tls-ca", ca.CertFile, "-tls-cert", cli.CertFile, "-tls-key", cli.KeyFile}
	s := e2e.NewOn(t, b.ClientURL(), flags, nats.RootCAs(ca.CertFile), nats.ClientCert(cli.CertFile, cli.KeyFile))
	s.Controller("c1")
	s.Agent("n1")
	s.WaitNodes(1)
	d := s.Deploy(client.DeploymentSpec{Name: "m", Class: "Model", InitArgs: json.RawMessage(`["/model/m.pkl"]`), NumReplicas: 1})
	base, _ := s.Ingress()
	code, body, _ := e2e.HTTP(t, "GET", base+"/m?data=0.2", "")
	if code != 200 || !strings.Contains(body, fmt.Sprintf("(pid: %d); path: /model/m.pkl", d.Replicas[0].PID)) {
		t.Fatalf("GET /m: %d %q, want the replica pid %d", code, body, d.Replicas[0].PID)
	}
	// Every process connected over TLS with a client certificate: the
	// broker refuses anything else.
	cz, err := b.Server().Connz(nil)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, c := range cz.Conns {
		if c.TLSVersion == "" {
			t.Errorf("connection %q is not TLS", c.Name)
		}
		names = append(names, c.Name)
	}
	t.Logf("GET /m: %s; TLS connections: %q", strings.TrimSpace(body), names)
	all := strings.Join(names, "|")
	for _, kind := range []string{"controller c1", "ingress", "agent n1", "replica "} {
		if !strings.Contains(all, kind) {
			t.Errorf("no TLS connection of the %s among %q", kind, names)
		}
	}
	if nc, err := nats.Connect(b.ClientURL(), nats.RootCAs(ca.CertFile), nats.Timeout(3*time.Second)); err == nil {
		nc.Close()
		t.Fatal("a client without a certificate connected")
	}
}
