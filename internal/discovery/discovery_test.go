package discovery

import (
	"math"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

func TestLatencyFromHistogramMergeAndQuantile(t *testing.T) {
	bounds := []float64{0.001, 0.01, 0.1, 1}
	h := prometheus.NewHistogram(prometheus.HistogramOpts{Name: "x", Buckets: bounds})
	for _, v := range []float64{0.0005, 0.005, 0.005, 0.05, 0.5, 5} {
		h.Observe(v)
	}
	var d dto.Metric
	if err := h.Write(&d); err != nil {
		t.Fatal(err)
	}
	var a Latency
	a.FromHistogram(d.GetHistogram())
	if len(a.Bounds) != 4 || len(a.Counts) != 5 || a.Count != 6 || a.Counts[1] != 2 || a.Counts[4] != 1 {
		t.Fatalf("from histogram: %+v", a)
	}
	var sum Latency
	sum.Add(&a)
	sum.Add(&a)
	if sum.Count != 12 || sum.Counts[1] != 4 || math.Abs(sum.Sum-2*a.Sum) > 1e-9 {
		t.Fatalf("merged: %+v", sum)
	}
	for _, tc := range []struct{ q, lo, hi float64 }{{0.5, 0.001, 0.01 + 1e-9}, {0.99, 1, 1}, {0.01, 0, 0.001}} {
		if v := sum.Quantile(tc.q); v < tc.lo || v > tc.hi {
			t.Errorf("quantile %v = %v, want in [%v, %v]", tc.q, v, tc.lo, tc.hi)
		}
	}
	if (&Latency{}).Quantile(0.5) != 0 {
		t.Error("quantile of nothing is not 0")
	}
	d2 := sum.Sub(&a)
	if d2.Count != 6 || d2.Counts[1] != 2 {
		t.Errorf("delta %+v", d2)
	}
	// A restarted instance (counts went down) counts in full.
	if d3 := a.Sub(&sum); d3.Count != 6 {
		t.Errorf("delta after a restart %+v", d3)
	}
}

func TestSemver(t *testing.T) {
	for v, want := range map[string]bool{"1.2.3": true, "0.0.0": true, "1.2.3-rc1": true, "v1": false, "1.2": false, "": false, "abc": false, "1..2": false} {
		if semver(v) != want {
			t.Errorf("semver(%q) = %v", v, !want)
		}
	}
}
