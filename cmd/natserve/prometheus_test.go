package main_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/natserve/natserve/internal/e2e"
	"github.com/natserve/natserve/internal/testutil"
)

// TestRealPrometheusScrapes runs Debian's prometheus against natserve up
// with the scrape config the README gives (bearer token included) and
// queries what it stored: the counters move with traffic.
func TestRealPrometheusScrapes(t *testing.T) {
	prom, err := exec.LookPath("prometheus")
	if err != nil {
		t.Skip("prometheus is not installed (apt-get install prometheus); skipping the real-scrape test")
	}
	dir := t.TempDir()
	tokenFile := filepath.Join(dir, "metrics-token")
	if err := os.WriteFile(tokenFile, []byte("prom-s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	maddr := fmt.Sprintf("127.0.0.1:%d", e2e.FreePort(t))
	u := up(t, "-metrics-addr", maddr, "-metrics-token-file", tokenFile, "-dashboard-addr", "")
	deployHello(t, u, "hi", 1)

	cfg := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(cfg, []byte(fmt.Sprintf(`global:
  scrape_interval: 1s
scrape_configs:
  - job_name: natserve
    authorization:
      credentials_file: %s
    static_configs:
      - targets: ['%s']
`, tokenFile, maddr)), 0o600); err != nil {
		t.Fatal(err)
	}
	if promtool, err := exec.LookPath("promtool"); err == nil {
		if out, err := exec.Command(promtool, "check", "config", cfg).CombinedOutput(); err != nil {
			t.Fatalf("promtool check config: %v\n%s", err, out)
		}
	}
	paddr := fmt.Sprintf("127.0.0.1:%d", e2e.FreePort(t))
	testutil.Start(t, nil, prom, "--config.file="+cfg, "--storage.tsdb.path="+filepath.Join(dir, "tsdb"), "--web.listen-address="+paddr)

	query := func(q string) (float64, error) {
		resp, err := http.Get("http://" + paddr + "/api/v1/query?query=" + url.QueryEscape(q))
		if err != nil {
			return 0, err
		}
		defer resp.Body.Close()
		var r struct {
			Status string
			Data   struct {
				Result []struct {
					Value [2]any
				}
			}
		}
		if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
			return 0, err
		}
		if r.Status != "success" || len(r.Data.Result) == 0 {
			return 0, fmt.Errorf("%s: no result yet (%s)", q, r.Status)
		}
		s, _ := r.Data.Result[0].Value[1].(string)
		return strconv.ParseFloat(s, 64)
	}
	// The target is up (the token was accepted).
	testutil.Eventually(t, 60*time.Second, func() error {
		v, err := query(`up{job="natserve"}`)
		if err != nil || v != 1 {
			return fmt.Errorf("up = %v (%v)", v, err)
		}
		return nil
	})
	base, err := query(`sum(natserve_http_requests_total{deployment="hi",status="200"})`)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 25; i++ {
		if code, _, _ := e2e.HTTP(t, "GET", u.httpBase+"/hi", ""); code != 200 {
			t.Fatalf("GET /hi: %d", code)
		}
	}
	testutil.Eventually(t, 30*time.Second, func() error {
		v, err := query(`sum(natserve_http_requests_total{deployment="hi",status="200"})`)
		if err != nil || v-base < 25 {
			return fmt.Errorf("ingress counter %v → %v (%v)", base, v, err)
		}
		r, err := query(`sum(natserve_replica_requests_total{deployment="hi",code="ok"})`)
		if err != nil || r < 25 {
			return fmt.Errorf("replica counter %v (%v)", r, err)
		}
		return nil
	})
	if v, err := query(`natserve_deployment_replicas{deployment="hi",state="RUNNING"}`); err != nil || v != 1 {
		t.Errorf("natserve_deployment_replicas RUNNING = %v (%v)", v, err)
	}
	if v, err := query(`histogram_quantile(0.99, sum by (le) (rate(natserve_replica_processing_seconds_bucket{deployment="hi"}[1m])))`); err != nil || v <= 0 {
		t.Logf("p99 of processing from Prometheus: %v (%v)", v, err)
	}
}
