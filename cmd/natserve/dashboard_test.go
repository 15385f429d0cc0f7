package main_test

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/natserve/natserve/internal/e2e"
	"github.com/natserve/natserve/internal/testutil"
)

// TestDashboardInABrowser loads the dashboard natserve up prints into
// headless Chromium, under traffic: the deployments and a rising request
// count appear. It saves a screenshot (to $NATSERVE_DASHBOARD_SCREENSHOT
// when set, e.g. docs/dashboard.png).
func TestDashboardInABrowser(t *testing.T) {
	browser := ""
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			browser = p
			break
		}
	}
	if browser == "" {
		t.Skip("no Chromium installed (apt-get install chromium); skipping the browser test")
	}
	u := up(t, "-dashboard-addr", fmt.Sprintf("127.0.0.1:%d", e2e.FreePort(t)), "-metrics-addr", fmt.Sprintf("127.0.0.1:%d", e2e.FreePort(t)))
	durl := bannerURL(t, u.proc.Output(), "dashboard")
	if !strings.Contains(durl, "/?token=") {
		t.Fatalf("dashboard URL %s carries no token", durl)
	}
	// Without the token: 401.
	resp, err := http.Get(strings.Split(durl, "?")[0])
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("dashboard without the token: %s, want 401", resp.Status)
	}
	deployHello(t, u, "hi", 2)
	deployHello(t, u, "hello2", 1)

	// Traffic while the page is open.
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			case <-time.After(10 * time.Millisecond):
			}
			path := "/hi"
			if i%3 == 0 {
				path = "/hello2"
			}
			if r, err := http.Get(u.httpBase + path); err == nil {
				r.Body.Close()
			}
		}
	}()
	defer func() { close(stop); wg.Wait() }()

	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(browser), chromedp.NoSandbox, chromedp.WindowSize(1400, 1000), chromedp.Flag("disable-gpu", true))
	actx, acancel := chromedp.NewExecAllocator(context.Background(), opts...)
	defer acancel()
	ctx, cancel := chromedp.NewContext(actx)
	defer cancel()
	ctx, tcancel := context.WithTimeout(ctx, 90*time.Second)
	defer tcancel()

	requests := func() int {
		var s string
		if err := chromedp.Run(ctx, chromedp.Text(`tr[data-deployment="hi"] td.requests`, &s, chromedp.ByQuery)); err != nil {
			t.Fatal(err)
		}
		n, _ := strconv.Atoi(strings.TrimSpace(s))
		return n
	}
	if err := chromedp.Run(ctx,
		chromedp.Navigate(durl),
		chromedp.WaitVisible(`tr[data-deployment="hi"]`, chromedp.ByQuery),
		chromedp.WaitVisible(`tr[data-deployment="hello2"]`, chromedp.ByQuery),
	); err != nil {
		t.Fatalf("loading %s: %v", durl, err)
	}
	first := requests()
	deadline := time.Now().Add(30 * time.Second)
	for requests() <= first {
		if time.Now().After(deadline) {
			t.Fatalf("the request count stayed at %d", first)
		}
		time.Sleep(200 * time.Millisecond)
	}
	var status, url string
	if err := chromedp.Run(ctx,
		chromedp.Text(`tr[data-deployment="hi"] .status`, &status, chromedp.ByQuery),
		chromedp.Location(&url),
	); err != nil {
		t.Fatal(err)
	}
	if status != "HEALTHY" || strings.Contains(url, "token=") {
		t.Errorf("status %q, location %s (the token should have moved to a cookie)", status, url)
	}
	// Let the charts fill a little, then take the picture.
	time.Sleep(8 * time.Second)
	var png []byte
	if err := chromedp.Run(ctx, chromedp.FullScreenshot(&png, 90)); err != nil {
		t.Fatal(err)
	}
	out := os.Getenv("NATSERVE_DASHBOARD_SCREENSHOT")
	if out == "" {
		out = filepath.Join(t.TempDir(), "dashboard.png")
	}
	if err := os.WriteFile(out, png, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("request count rose from %d to %d; screenshot: %s (%d bytes)", first, requests(), out, len(png))
	_ = testutil.Alive
}
