package controlplane_test

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/natserve/natserve/client"
	"github.com/natserve/natserve/internal/e2e"
	"github.com/natserve/natserve/internal/testutil"
)

func ip(v int) *int         { return &v }
func fp(v float64) *float64 { return &v }

func TestAutoscaleUpAndDown(t *testing.T) {
	s := e2e.Standard(t)
	spec := probe("auto", "a", 0)
	spec.MaxOngoingRequests = 100
	spec.AutoscalingConfig = &client.AutoscalingConfig{MinReplicas: ip(1), MaxReplicas: 3, TargetOngoingRequests: 2,
		UpscaleDelayS: fp(1), DownscaleDelayS: fp(2), LookBackPeriodS: 2}
	s.Deploy(spec)
	h := s.Client.Handle("auto").Method("Work")

	// A load step: 12 callers keep 12 requests ongoing; the policy wants 6, clamped to 3.
	var peak atomic.Int64
	stopWatch := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { // watch the count never passes max_replicas
		defer wg.Done()
		for {
			select {
			case <-stopWatch:
				return
			case <-time.After(100 * time.Millisecond):
			}
			if d, err := s.Client.Get(e2e.Ctx(2*time.Second), "auto"); err == nil {
				n := int64(0)
				for _, r := range d.Replicas {
					if r.State == client.ReplicaRunning || r.State == client.ReplicaStarting {
						n++
					}
				}
				if n > peak.Load() {
					peak.Store(n)
				}
			}
		}
	}()
	load := e2e.StartLoad(h, 12, 200)
	start := time.Now()
	testutil.Eventually(t, 20*time.Second, func() error {
		d, err := s.Client.Get(e2e.Ctx(2*time.Second), "auto")
		if err != nil {
			return err
		}
		if d.Ready != 3 {
			return fmt.Errorf("%d ready, target %d", d.Ready, d.Target)
		}
		return nil
	})
	up := time.Since(start)
	d, _ := s.Client.Get(e2e.Ctx(2*time.Second), "auto")
	t.Logf("load step to 12 ongoing: 3 replicas ready after %v (upscale_delay_s 1, look_back_period_s 2); decision: %s", up.Round(10*time.Millisecond), d.Autoscaling.LastDecision)
	if err := load.Stop(); err != nil {
		t.Fatalf("calls failed under the load step: %v", err)
	}

	// The load drops to one caller: back to 1 replica after downscale_delay_s, no failed call.
	light := e2e.StartLoad(h, 1, 50)
	start = time.Now()
	testutil.Eventually(t, 30*time.Second, func() error {
		d, err := s.Client.Get(e2e.Ctx(2*time.Second), "auto")
		if err != nil {
			return err
		}
		if len(d.Replicas) != 1 || d.Ready != 1 {
			return fmt.Errorf("%d replicas, %d ready", len(d.Replicas), d.Ready)
		}
		return nil
	})
	t.Logf("load dropped: back to 1 replica after %v (downscale_delay_s 2)", time.Since(start).Round(10*time.Millisecond))
	if err := light.Stop(); err != nil || light.Failed.Load() != 0 {
		t.Fatalf("%d calls failed while scaling down: %v", light.Failed.Load(), err)
	}
	close(stopWatch)
	wg.Wait()
	if peak.Load() > 3 {
		t.Fatalf("%d replicas at the peak, max_replicas is 3", peak.Load())
	}
}

func TestScaleToZeroAndColdStart(t *testing.T) {
	s := e2e.Standard(t)
	base, _ := s.Ingress()
	spec := probe("sleepy", "z", 0)
	spec.AutoscalingConfig = &client.AutoscalingConfig{MinReplicas: ip(0), MaxReplicas: 2, InitialReplicas: ip(1),
		UpscaleDelayS: fp(0.5), DownscaleDelayS: fp(1), DownscaleToZeroDelayS: fp(1), LookBackPeriodS: 1}
	s.Deploy(spec)
	for _, via := range []string{"HTTP", "handle"} {
		testutil.Eventually(t, 30*time.Second, func() error {
			d, err := s.Client.Get(e2e.Ctx(2*time.Second), "sleepy")
			if err != nil {
				return err
			}
			if len(d.Replicas) != 0 || d.Target != 0 {
				return fmt.Errorf("%d replicas, target %d", len(d.Replicas), d.Target)
			}
			return nil
		})
		start := time.Now()
		if via == "HTTP" {
			if code, body, _ := e2e.HTTP(t, "GET", base+"/sleepy", ""); code != 200 {
				t.Fatalf("first request after scale to zero: %d %q", code, body)
			}
		} else if _, err := client.Call[string](e2e.Ctx(30*time.Second), s.Client.Handle("sleepy"), "x"); err != nil {
			t.Fatalf("first handle call after scale to zero: %v", err)
		}
		t.Logf("cold start through %s: the first request after scaling to zero succeeded in %v", via, time.Since(start).Round(time.Millisecond))
	}
}

func TestMaxQueuedRequests(t *testing.T) {
	s := e2e.Standard(t)
	base, _ := s.Ingress()
	spec := probe("narrow", "n", 1)
	spec.MaxOngoingRequests = 1
	spec.MaxQueuedRequests = 2
	s.Deploy(spec)
	// The client learns max_queued_requests from the control plane.
	testutil.Eventually(t, 5*time.Second, func() error {
		_, err := client.Call[int](e2e.Ctx(5*time.Second), s.Client.Handle("narrow").Method("Work"), 1)
		return err
	})
	time.Sleep(500 * time.Millisecond) // let the client's watch of the limits catch up (asserted by the burst below)
	type result struct {
		err  error
		took time.Duration
	}
	burst := func(call func() error) []result {
		var mu sync.Mutex
		var out []result
		var wg sync.WaitGroup
		for i := 0; i < 10; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				start := time.Now()
				err := call()
				mu.Lock()
				out = append(out, result{err, time.Since(start)})
				mu.Unlock()
			}()
		}
		wg.Wait()
		return out
	}
	res := burst(func() error {
		_, err := client.Call[int](e2e.Ctx(30*time.Second), s.Client.Handle("narrow").Method("Work"), 300)
		return err
	})
	ok, rejected := 0, 0
	var slowest time.Duration
	for _, r := range res {
		switch {
		case r.err == nil:
			ok++
		case errors.Is(r.err, client.ErrBackpressure):
			rejected++
			slowest = max(slowest, r.took)
		default:
			t.Errorf("unexpected error: %v", r.err)
		}
	}
	t.Logf("handle burst of 10 (capacity 1, max_queued_requests 2): %d succeeded, %d rejected at once (slowest rejection %v)", ok, rejected, slowest)
	if ok < 3 || rejected == 0 || ok+rejected != 10 || slowest > time.Second {
		t.Fatalf("want at least 3 admitted (1 running + 2 queued) all succeeding, the rest rejected quickly; got %d ok, %d rejected, slowest %v", ok, rejected, slowest)
	}
	// Over HTTP: 503 with Retry-After. Each request holds its slot 300 ms.
	web := client.DeploymentSpec{Name: "narrowweb", Class: "Counter", NumReplicas: 1, MaxOngoingRequests: 1, MaxQueuedRequests: 2}
	s.Deploy(web)
	time.Sleep(500 * time.Millisecond) // the ingress learns the limit from its watch (asserted below)
	var codes []int
	var mu sync.Mutex
	burst(func() error {
		code, _, hdr := e2e.HTTP(t, "GET", base+"/narrowweb?ms=300", "")
		mu.Lock()
		codes = append(codes, code)
		if code == 503 && hdr.Get("Retry-After") == "" {
			t.Errorf("503 without Retry-After")
		}
		mu.Unlock()
		return nil
	})
	sort.Ints(codes)
	t.Logf("HTTP burst: %v", codes)
	n200, n503 := 0, 0
	for _, c := range codes {
		switch c {
		case 200:
			n200++
		case 503:
			n503++
		}
	}
	if n200 < 3 || n503 < 5 || n200+n503 != 10 {
		t.Fatalf("HTTP burst codes %v: want 1 running + 2 queued to succeed and the rest 503", codes)
	}
}

var _ = context.Background
