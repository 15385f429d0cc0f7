package wire

import (
	"encoding/binary"
	"errors"
	"runtime"
	"testing"
)

// arrayOf is a msgpack array of n copies of elem.
func arrayOf(n int, elem []byte) []byte {
	b := binary.BigEndian.AppendUint32([]byte{0xdd}, uint32(n))
	for i := 0; i < n; i++ {
		b = append(b, elem...)
	}
	return b
}

// decoderOverhead is what a decoder allocates for itself (about 8 KiB).
const decoderOverhead = 16 << 10

// decodedBytes is what decoding b into an interface value allocates.
func decodedBytes(b []byte) uint64 {
	var v any
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	d := GetDecoder(b) // as UnmarshalValue decodes
	_ = d.Decode(&v)
	d.Release()
	runtime.ReadMemStats(&after)
	runtime.KeepAlive(v)
	return after.TotalAlloc - before.TotalAlloc
}

var costCases = []struct {
	name string
	elem []byte
}{
	{"empty map", []byte{0x80}},
	{"empty array", []byte{0x90}},
	{"map of one", []byte{0x81, 0xa1, 'a', 0xc0}},
	{"map of nine", append([]byte{0x89}, arrayOf(9, []byte{0xa2, 'k', 'k', 0x01})[5:]...)},
	{"map of int keys", []byte{0x82, 0x01, 0xc0, 0x02, 0xc0}},
	{"array of one", []byte{0x91, 0xc0}},
	{"nil", []byte{0xc0}},
	{"small int", []byte{0x05}},
	{"uint16", []byte{0xcd, 1, 2}},
	{"float64", []byte{0xcb, 1, 2, 3, 4, 5, 6, 7, 8}},
	{"empty string", []byte{0xa0}},
	{"string of 20", append([]byte{0xb4}, "abcdefghijklmnopqrst"...)},
	{"empty bin", []byte{0xc4, 0}},
	{"record", []byte{0x82, 0xa2, 'i', 'd', 0xcd, 1, 2, 0xa4, 'n', 'a', 'm', 'e', 0xa3, 'b', 'o', 'b'}},
}

// TestDecodeCostModel checks that the estimate CheckMsgpack budgets with is
// never below what msgpack/v5 really allocates, shape by shape.
func TestDecodeCostModel(t *testing.T) {
	const n = 20000
	for _, c := range costCases {
		t.Run(c.name, func(t *testing.T) {
			b := arrayOf(n, c.elem)
			est, err := msgpackCost(b, 1<<40)
			if err != nil {
				t.Fatal(err)
			}
			got := decodedBytes(b)
			t.Logf("%d B on the wire: estimated %d B decoded (%.1f×), allocated %d B (%.1f×)", len(b), est, float64(est)/float64(len(b)), got, float64(got)/float64(len(b)))
			if uint64(est)+decoderOverhead < got {
				t.Errorf("estimate %d B (+%d B for the decoder) is below the %d B allocated", est, decoderOverhead, got)
			}
		})
	}
}

// TestMapBombRefused: the 8 MB argument of empty maps of issue 15 is
// refused before decoding, with ErrTooCostly, and so are its neighbours;
// an ordinary payload of the same size passes.
func TestMapBombRefused(t *testing.T) {
	const size = 8 << 20
	for _, b := range [][]byte{
		arrayOf(size, []byte{0x80}),
		arrayOf(size/2, []byte{0x91, 0x80}),
		arrayOf(size/4, []byte{0x81, 0xa0, 0xc0, 0x90}),
		append([]byte{0x92, 0xa0}, arrayOf(size, []byte{0x90})...),
	} {
		if err := CheckMsgpack(b); !errors.Is(err, ErrTooCostly) {
			t.Errorf("CheckMsgpack(% x …) = %v, want ErrTooCostly", b[:8], err)
		}
	}
	ok := [][]byte{
		arrayOf(size, []byte{0x07}),                           // small integers: 16× (the densest ordinary shape)
		arrayOf(size/9, []byte{0xcb, 1, 2, 3, 4, 5, 6, 7, 8}), // floats
		arrayOf(size/20, append([]byte{0xb3}, "nineteen bytes long"...)),
		arrayOf(1000, []byte{0x81, 0xa1, 'a', 0xc0}), // a few small maps
	}
	for _, b := range ok {
		if err := CheckMsgpack(b); err != nil {
			t.Errorf("CheckMsgpack(% x …) = %v", b[:8], err)
		}
	}
}

func costSeeds(f *testing.F) {
	fuzzSeeds(f)
	for _, c := range costCases {
		f.Add(arrayOf(3, c.elem))
	}
	f.Add([]byte{0x91, 0x91, 0x91, 0x80})
	f.Add([]byte{0xde, 0x00, 0x02, 0xa1, 'a', 0x80, 0xa1, 'b', 0x90})
}

// FuzzMsgpackCost: for any input the pre-scan neither panics nor reads past
// it, and for any input it accepts, decoding allocates no more than its
// estimate (plus a small constant for the decoder itself).
func FuzzMsgpackCost(f *testing.F) {
	costSeeds(f)
	f.Fuzz(func(t *testing.T, b []byte) {
		est, err := msgpackCost(b, DecodeBudget(len(b)))
		if err != nil {
			if !errors.Is(err, ErrMalformed) && !errors.Is(err, ErrTooCostly) {
				t.Fatalf("unexpected error kind: %v", err)
			}
			return
		}
		if est > DecodeBudget(len(b)) {
			t.Fatalf("accepted an estimate of %d over the budget %d", est, DecodeBudget(len(b)))
		}
		if got := decodedBytes(b); got > uint64(est)+decoderOverhead {
			t.Fatalf("decoding % x allocated %d bytes, estimated %d", b[:min(len(b), 32)], got, est)
		}
	})
}
