package main_test

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"sort"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/natserve/natserve/client"
	"github.com/natserve/natserve/internal/e2e"
	"github.com/natserve/natserve/internal/metrics"
	"github.com/natserve/natserve/internal/testutil"
)

type echoReply struct {
	BatchSize int    `json:"batch_size"`
	Input     string `json:"input"`
}

// getJSON GETs url with the header pairs hdr and decodes a 200's JSON.
func getJSON(hc *http.Client, url string, out any, hdr ...string) (int, string, error) {
	req, _ := http.NewRequest("GET", url, nil)
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := hc.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode == 200 {
		err = json.Unmarshal(b, out)
	}
	return resp.StatusCode, string(b), err
}

// batchedRound sends n requests from c workers (n/c each, each worker one
// at a time) and returns the batch sizes the replies report.
func batchedRound(t *testing.T, hc *http.Client, base string, c, n int) []int {
	t.Helper()
	var mu sync.Mutex
	var sizes []int
	var wg sync.WaitGroup
	for w := 0; w < c; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < n/c; i++ {
				x := strconv.Itoa(w*1000 + i)
				var r echoReply
				code, body, err := getJSON(hc, base+"/batched?x="+x, &r)
				if code != 200 || err != nil || r.Input != x {
					t.Errorf("GET /batched?x=%s: %d %q %v", x, code, body, err)
					return
				}
				mu.Lock()
				sizes = append(sizes, r.BatchSize)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return sizes
}

// meanBatch is the mean size of the batches that served calls whose
// replies reported sizes: calls / batches, a batch of B being B calls.
func meanBatch(sizes []int) float64 {
	batches := 0.0
	for _, b := range sizes {
		batches += 1 / float64(b)
	}
	return float64(len(sizes)) / batches
}

// TestQuickstartBatchingAndMultiplexing checks the quick start's batched
// and mux deployments through `natserve up` and HTTP: batch sizes at c16
// and c64, an in-place change of max_batch_size, the routing of models to
// the replicas that hold them, and 400 without a model id.
func TestQuickstartBatchingAndMultiplexing(t *testing.T) {
	u := up(t, "-f", filepath.Join(testutil.ModuleRoot(t), "examples/quickstart/serve.yaml"))
	hc := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 128}, Timeout: 30 * time.Second}
	cl, err := client.Connect(e2e.Ctx(5*time.Second), u.natsURL, client.WithCreds(u.creds()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	for _, name := range []string{"batched", "mux"} {
		if _, err := cl.WaitHealthy(e2e.Ctx(60*time.Second), name, nil); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
	}
	d, _ := cl.Get(e2e.Ctx(5*time.Second), "batched")
	replicasBefore := fmt.Sprint(d.Replicas[0].ID)
	batchedRound(t, hc, u.httpBase, 16, 16) // warm the connections

	// 16 concurrent calls: every batch holds 4 or more.
	sizes := batchedRound(t, hc, u.httpBase, 16, 16)
	sort.Ints(sizes)
	t.Logf("c16: batch sizes %v (mean batch %.1f)", sizes, meanBatch(sizes))
	if len(sizes) != 16 || sizes[0] < 4 {
		t.Errorf("c16: batch sizes %v, want 16 calls in batches of 4 or more", sizes)
	}
	// c64 (max_ongoing_requests 32 holds half; the rest wait at the
	// ingress): the mean batch is 6 or more.
	sizes = batchedRound(t, hc, u.httpBase, 64, 640)
	t.Logf("c64: %d calls, mean batch %.2f", len(sizes), meanBatch(sizes))
	if len(sizes) != 640 || meanBatch(sizes) < 6 {
		t.Errorf("c64: %d calls, mean batch %.2f, want 640 and at least 6", len(sizes), meanBatch(sizes))
	}

	// In place: max_batch_size 2 takes effect without a new replica.
	spec := d.Spec
	spec.Batching = map[string]client.BatchConfig{"Call": {MaxBatchSize: 2, BatchWaitTimeoutS: client.Seconds(0.02)}}
	if _, err := cl.Deploy(e2e.Ctx(5*time.Second), spec); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 30*time.Second, func() error {
		s := batchedRound(t, hc, u.httpBase, 16, 16)
		sort.Ints(s)
		if s[len(s)-1] > 2 {
			return fmt.Errorf("batch sizes %v", s)
		}
		return nil
	})
	d, _ = cl.Get(e2e.Ctx(5*time.Second), "batched")
	if len(d.Replicas) != 1 || d.Replicas[0].ID != replicasBefore {
		t.Errorf("after the batching change: replicas %+v, want %s unchanged", d.Replicas, replicasBefore)
	}
	// A block that cannot form batches is refused with one line.
	spec.Batching = map[string]client.BatchConfig{"Call": {MaxBatchSize: 64}}
	if _, err := cl.Deploy(e2e.Ctx(5*time.Second), spec); err == nil {
		t.Error("max_batch_size 64 over max_ongoing_requests 32 was accepted")
	} else {
		t.Logf("refused: %v", err)
	}

	// Multiplexing: 4 models cycled 10 times over 2 replicas of 2 slots.
	type muxReply struct {
		Model string `json:"model"`
		PID   int    `json:"pid"`
		Loads int    `json:"loads"`
	}
	loads := map[int]int{}
	for round := 0; round < 10; round++ {
		for _, m := range []string{"m1", "m2", "m3", "m4"} {
			var r muxReply
			code, body, err := getJSON(hc, u.httpBase+"/mux", &r, "serve_multiplexed_model_id", m)
			if code != 200 || err != nil || r.Model != m {
				t.Fatalf("GET /mux for %s: %d %q %v", m, code, body, err)
			}
			loads[r.PID] = max(loads[r.PID], r.Loads)
		}
	}
	t.Logf("loads per replica pid after 40 calls: %v", loads)
	for pid, n := range loads {
		if n > 3 {
			t.Errorf("replica pid %d loaded %d models, want at most 3", pid, n)
		}
	}
	code, body, _ := e2e.HTTP(t, "GET", u.httpBase+"/mux", "")
	if code != 400 {
		t.Errorf("GET /mux without a model id: %d %q, want 400", code, body)
	}
	t.Logf("without a model id: %d %s", code, body)

	// The metrics: batch sizes, model loads, and the ingress's routing
	// (36 of the 40 calls found a replica holding their model).
	f, err := metrics.Scrape(bannerURL(t, u.proc.Output(), "metrics"), "")
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name string
		lbl  map[string]string
		min  float64
	}{
		{"natserve_replica_batch_size", map[string]string{"deployment": "batched", "method": "Call"}, 20},
		{"natserve_replica_multiplexed_model_loads_total", map[string]string{"deployment": "mux"}, 4},
		{"natserve_ingress_multiplexed_routes_total", map[string]string{"deployment": "mux", "route": "model"}, 36},
	} {
		if v, ok := f.Value(c.name, c.lbl); !ok || v < c.min {
			t.Errorf("%s%v = %v (found %v), want at least %v", c.name, c.lbl, v, ok, c.min)
		} else {
			t.Logf("%s%v = %v", c.name, c.lbl, v)
		}
	}
}
