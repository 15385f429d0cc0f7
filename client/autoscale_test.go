package client

import "testing"

func cfg(min, max int, target, up, down, upF, downF float64) *AutoscalingConfig {
	a := &AutoscalingConfig{MinReplicas: &min, MaxReplicas: max, TargetOngoingRequests: target, UpscaleDelayS: &up, DownscaleDelayS: &down, UpscalingFactor: upF, DownscalingFactor: downF}
	if err := a.Normalize(); err != nil {
		panic(err)
	}
	return a
}

func TestDesiredReplicas(t *testing.T) {
	for _, tc := range []struct {
		name    string
		a       *AutoscalingConfig
		running int
		total   float64
		want    int
	}{
		{"at target", cfg(1, 10, 2, 0, 0, 1, 1), 2, 4, 2},
		{"double load doubles", cfg(1, 10, 2, 0, 0, 1, 1), 2, 8, 4},
		{"ceil", cfg(1, 10, 2, 0, 0, 1, 1), 2, 5, 3},
		{"clamped to max", cfg(1, 3, 2, 0, 0, 1, 1), 2, 100, 3},
		{"half load halves", cfg(1, 10, 2, 0, 0, 1, 1), 4, 4, 2},
		{"clamped to min", cfg(2, 10, 2, 0, 0, 1, 1), 4, 0, 2},
		{"idle goes to one, not zero, from many", cfg(0, 10, 2, 0, 0, 1, 1), 4, 0, 1},
		{"idle goes to zero from one", cfg(0, 10, 2, 0, 0, 1, 1), 1, 0, 0},
		{"min 1 keeps one", cfg(1, 10, 2, 0, 0, 1, 1), 1, 0, 1},
		{"upscaling factor 0.5 damps", cfg(1, 100, 2, 0, 0, 0.5, 1), 4, 16, 6},  // ratio 2 → 4*(1+1*0.5)
		{"downscaling factor 0.5 damps", cfg(1, 100, 2, 0, 0, 1, 0.5), 8, 4, 5}, // ratio 0.25 → 8*(1-0.75*0.5)=5
		{"from zero with load", cfg(0, 10, 2, 0, 0, 1, 1), 0, 3, 1},
		{"from zero, factor 2", cfg(0, 10, 2, 0, 0, 2, 1), 0, 3, 2},
		{"zero stays zero idle", cfg(0, 10, 2, 0, 0, 1, 1), 0, 0, 0},
	} {
		if got := DesiredReplicas(tc.a, tc.running, tc.total); got != tc.want {
			t.Errorf("%s: DesiredReplicas(running=%d, total=%v) = %d, want %d", tc.name, tc.running, tc.total, got, tc.want)
		}
	}
}

func TestDecisionHoldsForTheDelay(t *testing.T) {
	a := cfg(0, 10, 2, 30, 600, 1, 1)
	zeroDelay := 60.0
	a.DownscaleToZeroDelayS = &zeroDelay
	var d Decision
	steps := []struct {
		now              float64
		current, desired int
		want             int
	}{
		{0, 2, 4, 2},   // upscale wanted at t=0
		{29, 2, 4, 2},  // still held
		{30, 2, 4, 4},  // after upscale_delay_s
		{31, 4, 4, 4},  // steady
		{40, 4, 2, 4},  // downscale wanted
		{50, 4, 5, 4},  // direction flips: the clock restarts
		{79, 4, 5, 4},  //
		{80, 4, 5, 5},  // 30 s after the flip
		{100, 5, 3, 5}, // downscale again
		{699, 5, 3, 5}, //
		{700, 5, 3, 3}, // after downscale_delay_s
		{800, 1, 0, 1}, // to zero
		{859, 1, 0, 1}, //
		{860, 1, 0, 0}, // after downscale_to_zero_delay_s
		{900, 0, 1, 1}, // from zero: at once
	}
	for i, s := range steps {
		if got := d.Hold(a, s.current, s.desired, s.now); got != s.want {
			t.Fatalf("step %d (t=%v, %d→%d): got %d, want %d", i, s.now, s.current, s.desired, got, s.want)
		}
	}
}

func TestAutoscalingConfigDefaultsAndErrors(t *testing.T) {
	a := &AutoscalingConfig{}
	if err := a.Normalize(); err != nil {
		t.Fatal(err)
	}
	if *a.MinReplicas != 1 || a.MaxReplicas != 1 || a.TargetOngoingRequests != 2 || *a.UpscaleDelayS != 30 || *a.DownscaleDelayS != 600 ||
		*a.DownscaleToZeroDelayS != 600 || a.LookBackPeriodS != 30 || a.UpscalingFactor != 1 || *a.InitialReplicas != 1 {
		t.Fatalf("defaults: %+v", a)
	}
	auto := AutoDefaults()
	if err := auto.Normalize(); err != nil || auto.MaxReplicas != 100 {
		t.Fatalf("auto: %+v %v", auto, err)
	}
	min, max := 3, 2
	if err := (&AutoscalingConfig{MinReplicas: &min, MaxReplicas: max}).Normalize(); err == nil {
		t.Fatal("max < min accepted")
	}
}
