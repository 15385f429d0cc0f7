package gcheadroom

import (
	"os"
	"runtime"
	"runtime/debug"
	"testing"
)

func TestPercent(t *testing.T) {
	const mb = 1 << 20
	for _, c := range []struct {
		base           int
		live, headroom uint64
		want           int
	}{
		{100, 4 * mb, 16 * mb, 400},      // natserve up with a few deployments
		{100, 16 * mb, 16 * mb, 100},     // from here on, GOGC's own
		{100, 200 * mb, 16 * mb, 100},    // a large control plane: unchanged
		{100, 100 << 10, 16 * mb, 2000},  // just started: bounded
		{100, 0, 16 * mb, 2000},          // nothing live yet
		{3000, 100 << 10, 16 * mb, 3000}, // never below base
	} {
		if got := Percent(c.base, c.live, c.headroom); got != c.want {
			t.Errorf("Percent(%d, %d, %d) = %d, want %d", c.base, c.live, c.headroom, got, c.want)
		}
	}
}

// TestStartFollowsTheLiveHeap: in this process, with a small live heap
// GOGC goes up after collections; with a live heap above the headroom it
// comes back to 100; Stop restores 100. $GOGC set: nothing happens.
func TestStartFollowsTheLiveHeap(t *testing.T) {
	if os.Getenv("GOGC") != "" {
		t.Skip("GOGC is set")
	}
	const headroom = 32 << 20
	r := Start(headroom)
	defer r.Stop()
	for i := 0; i < 3; i++ {
		runtime.GC() // finalizers run on their own goroutine, after the cycle
		runtime.Gosched()
	}
	waitFor(t, func() bool { return r.Percent() > 100 }, "GOGC above 100 with a small live heap")
	if got := currentGOGC(); got != r.Percent() {
		t.Fatalf("the runtime's GOGC is %d, Start says %d", got, r.Percent())
	}
	big := make([]byte, 64<<20) // live: above the headroom
	for i := range big {
		big[i] = 1
	}
	waitFor(t, func() bool { runtime.GC(); runtime.Gosched(); return r.Percent() == 100 }, "GOGC back to 100 with a 64 MB live heap")
	runtime.KeepAlive(big)
	r.Stop()
	if got := currentGOGC(); got != 100 {
		t.Fatalf("after Stop GOGC is %d", got)
	}

	t.Setenv("GOGC", "150")
	if Start(headroom) != nil {
		t.Fatal("Start ran with $GOGC set")
	}
}

func waitFor(t *testing.T, ok func() bool, what string) {
	t.Helper()
	for i := 0; i < 200; i++ {
		if ok() {
			return
		}
		runtime.GC()
		runtime.Gosched()
	}
	t.Fatalf("never: %s", what)
}

// currentGOGC reads GOGC without changing it for long (SetGCPercent
// returns the previous value; setting it back at once).
func currentGOGC() int {
	p := debug.SetGCPercent(100)
	debug.SetGCPercent(p)
	return p
}
