package worker

import (
	"runtime"
	"testing"

	"github.com/natserve/natserve/internal/wire"
)

type fuzzClass struct{}

type fuzzArg struct {
	Name  string             `json:"name"`
	Vals  []float64          `json:"vals"`
	Attrs map[string]any     `json:"attrs"`
	Sub   *fuzzArg           `json:"sub"`
	Grid  [][]int            `json:"grid"`
	Index map[int]([]string) `json:"index"`
}

func (fuzzClass) Call(s string, n int, a fuzzArg, raw []byte, anything any) {}
func (fuzzClass) Req(r *Request)                                            {}

// FuzzCallArgs feeds raw bytes to the replica's argument decoding, as a
// request from any NATS client would: no panic, memory bounded by the input.
func FuzzCallArgs(f *testing.F) {
	for _, b := range [][]byte{
		{0xdd, 0xff, 0xff, 0xff, 0xff}, {0xdf, 0xff, 0xff, 0xff, 0xff}, {0xdb, 0xff, 0xff, 0xff, 0xff}, {0xc6, 0xff, 0xff, 0xff, 0xff},
		{0x95, 0xa1, 'x', 0x01, 0x80, 0xc4, 0x00, 0xc0},
		{0x95, 0xa1, 'x', 0x01, 0x81, 0xa4, 'v', 'a', 'l', 's', 0xdd, 0xff, 0xff, 0xff, 0xff, 0xc4, 0x00, 0xc0},
	} {
		f.Add(b, false)
		f.Add(b, true)
	}
	f.Add(wire.AppendHTTPRequest(nil, &wire.HTTPRequest{Method: "GET", Path: "/", Body: []byte(`["x",1,{},"",null]`)}), true)
	var r Registry
	r.Class("F", func() fuzzClass { return fuzzClass{} })
	c, err := r.lookup("F")
	if err != nil {
		f.Fatal(err)
	}
	rep := &Replica{cls: c}
	f.Fuzz(func(t *testing.T, b []byte, http bool) {
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		for _, m := range c.methods {
			if http {
				_, _ = rep.httpArgs(b, "id", m)
			} else {
				_, _ = callArgs(b, m, "id")
			}
		}
		runtime.ReadMemStats(&after)
		if got, limit := after.TotalAlloc-before.TotalAlloc, uint64(64*len(b)+256<<10); got > limit {
			t.Fatalf("decoding %d bytes allocated %d (limit %d)", len(b), got, limit)
		}
	})
}
