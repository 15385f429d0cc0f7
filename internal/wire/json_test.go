package wire

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"testing"
)

// jsonArray is a JSON array of n copies of elem.
func jsonArray(n int, elem string) []byte {
	var b bytes.Buffer
	b.Grow(n*(len(elem)+1) + 2)
	b.WriteByte('[')
	for i := 0; i < n; i++ {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(elem)
	}
	b.WriteByte(']')
	return b.Bytes()
}

// jsonDecodedBytes is what decoding b into an interface value allocates,
// with json.Unmarshal (float64 numbers) or a json.Decoder with UseNumber
// (as client.DecodeJSON does), whichever is more.
func jsonDecodedBytes(b []byte) uint64 {
	var worst uint64
	for _, number := range []bool{false, true} {
		var v any
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		if number {
			d := json.NewDecoder(bytes.NewReader(b))
			d.UseNumber()
			_ = d.Decode(&v)
		} else {
			_ = json.Unmarshal(b, &v)
		}
		runtime.ReadMemStats(&after)
		runtime.KeepAlive(v)
		worst = max(worst, after.TotalAlloc-before.TotalAlloc)
	}
	return worst
}

// jsonOverhead is what a decoder allocates for itself.
const jsonOverhead = 16 << 10

var jsonCostCases = []struct{ name, elem string }{
	{"zero", "0"},
	{"small int", "7"},
	{"int", "123456"},
	{"float", "1.2345e-7"},
	{"true", "true"},
	{"null", "null"},
	{"empty string", `""`},
	{"string of 20", `"abcdefghijklmnopqrst"`},
	{"escaped string", `"a\nb\u00e9\"c\\"`},
	{"invalid UTF-8", "\"\xff\xfe\xfd\xfc\""},
	{"UTF-8 text", `"héllo wörld ünïcode"`},
	{"empty array", "[]"},
	{"array of one", "[0]"},
	{"empty object", "{}"},
	{"object of one", `{"":0}`},
	{"object of nine", `{"a":1,"b":2,"c":3,"d":4,"e":5,"f":6,"g":7,"h":8,"i":9}`},
	{"record", `{"id":1234,"name":"bob","tags":["a","b"],"score":0.5}`},
	{"nested", `[[[[{"a":[{}]}]]]]`},
}

// TestJSONCostModel checks that the estimate CheckJSON budgets with is never
// below what encoding/json really allocates, shape by shape, both for
// arrays of many and for one big object.
func TestJSONCostModel(t *testing.T) {
	const n = 20000
	check := func(t *testing.T, b []byte) {
		est, err := jsonCost(b, 1<<40)
		if err != nil {
			t.Fatal(err)
		}
		got := jsonDecodedBytes(b)
		t.Logf("%d B on the wire: estimated %d B decoded (%.1f×), allocated %d B (%.1f×)", len(b), est, float64(est)/float64(len(b)), got, float64(got)/float64(len(b)))
		if uint64(est)+jsonOverhead < got {
			t.Errorf("estimate %d B (+%d B for the decoder) is below the %d B allocated", est, jsonOverhead, got)
		}
	}
	for _, c := range jsonCostCases {
		t.Run(c.name, func(t *testing.T) { check(t, jsonArray(n, c.elem)) })
	}
	t.Run("object of many keys", func(t *testing.T) {
		var b bytes.Buffer
		b.WriteByte('{')
		for i := 0; i < n; i++ {
			if i > 0 {
				b.WriteByte(',')
			}
			fmt.Fprintf(&b, `"k%d":%d`, i, i)
		}
		b.WriteByte('}')
		check(t, b.Bytes())
	})
}

// TestJSONBombRefused: an 8 MB body of {"":0} objects (~420 MB decoded),
// nesting past MaxDepth and more than MaxJSONElements values are refused
// before decoding, in one line; ordinary bodies of the same size pass.
func TestJSONBombRefused(t *testing.T) {
	const size = 8 << 20
	for name, b := range map[string][]byte{
		"8 MB of objects of one": jsonArray(size/7, `{"":0}`),
		"8 MB of empty objects":  jsonArray(size/3, `{}`),
		"8 MB of one-digit ints": jsonArray(size/2, `0`),
		"deep":                   []byte(strings.Repeat("[", MaxDepth+1) + strings.Repeat("]", MaxDepth+1)),
		"deep objects":           []byte(strings.Repeat(`{"a":`, MaxDepth+1) + "0" + strings.Repeat("}", MaxDepth+1)),
	} {
		err := CheckJSON(b)
		if !errors.Is(err, ErrJSONTooCostly) || strings.Contains(err.Error(), "\n") {
			t.Errorf("%s: CheckJSON = %v, want one line wrapping ErrJSONTooCostly", name, err)
		}
		t.Logf("%s (%d B): %v", name, len(b), err)
	}
	// Within budget, the count of values still bounds what a body holds.
	if _, err := jsonCost(jsonArray(MaxJSONElements+1, "0"), 1<<40); !errors.Is(err, ErrJSONTooCostly) || !strings.Contains(err.Error(), "values") {
		t.Errorf("%d values: %v, want ErrJSONTooCostly for the count", MaxJSONElements+1, err)
	}
	for name, b := range map[string][]byte{
		"8 MB of floats":         jsonArray(size/10, "1.2345678"),
		"8 MB of strings":        jsonArray(size/22, `"twenty bytes of text"`),
		"8 MB of records":        jsonArray(size/56, `{"id":1234,"name":"bob","tags":["a","b"],"score":0.5}`),
		"1 MB of one-digit ints": jsonArray(1<<19, "7"),
		"nested to MaxDepth":     []byte(strings.Repeat("[", MaxDepth) + strings.Repeat("]", MaxDepth)),
		"a string of 8 MB":       []byte(`"` + strings.Repeat("x", size) + `"`),
	} {
		if err := CheckJSON(b); err != nil {
			t.Errorf("%s: CheckJSON = %v", name, err)
		}
	}
	for _, b := range []string{``, ` `, `[`, `{"a"}`, `[1,]`, `01`, `"\x01"`, `tru`, `1 2`, `{"a":1,}`, `"\u12"`, `-`, `1.`, `1e`} {
		if err := CheckJSON([]byte(b)); !errors.Is(err, ErrJSONMalformed) {
			t.Errorf("CheckJSON(%q) = %v, want ErrJSONMalformed", b, err)
		}
	}
}

// FuzzJSONCost: for any input the pre-scan neither panics nor reads past
// it; what it calls malformed encoding/json calls invalid, and what it
// accepts encoding/json calls valid; and for
// any input it accepts, decoding allocates no more than its estimate (plus
// a small constant for the decoder itself).
func FuzzJSONCost(f *testing.F) {
	for _, c := range jsonCostCases {
		f.Add([]byte(c.elem))
		f.Add(jsonArray(3, c.elem))
	}
	for _, s := range []string{``, ` [ 1 , 2 ] `, `{"a":{"b":[1,2,{"c":null}]}}`, `"\ud800"`, `-0.0e+10`, `[1,]`, `{"a" 1}`, "\"\x80\"", `1e400`, strings.Repeat("[", 70)} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		est, err := jsonCost(b, JSONDecodeBudget(len(b)))
		valid := json.Valid(b)
		switch {
		case errors.Is(err, ErrJSONMalformed):
			if valid {
				t.Fatalf("%q: pre-scan says %v, encoding/json says valid", b, err)
			}
			return
		case errors.Is(err, ErrJSONTooCostly): // refused before the scan saw all of it
			return
		case err != nil:
			t.Fatalf("unexpected error kind: %v", err)
		}
		if !valid {
			t.Fatalf("%q: accepted, but encoding/json says invalid", b)
		}
		if est > JSONDecodeBudget(len(b)) {
			t.Fatalf("accepted an estimate of %d over the budget %d", est, JSONDecodeBudget(len(b)))
		}
		if got := jsonDecodedBytes(b); got > uint64(est)+jsonOverhead {
			t.Fatalf("decoding %q allocated %d bytes, estimated %d", b[:min(len(b), 64)], got, est)
		}
	})
}
