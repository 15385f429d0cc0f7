package wire

import (
	"bytes"
	"testing"

	"github.com/vmihailenco/msgpack/v5"
)

// TestPooledDecoderOwnsNothing: what a pooled decoder decodes stays the
// caller's when the decoder (and its scratch buffer) decodes the next
// value, and when the source bytes change; options do not leak from one
// use to the next.
func TestPooledDecoderOwnsNothing(t *testing.T) {
	type rec struct {
		Name string `json:"name"`
		Blob []byte `json:"blob"`
	}
	big := bytes.Repeat([]byte("x"), 5000)
	src, err := MarshalValue(rec{Name: "first-name-longer-than-scratch-" + string(big[:100]), Blob: big})
	if err != nil {
		t.Fatal(err)
	}
	var first rec
	if err := UnmarshalValue(src, &first); err != nil {
		t.Fatal(err)
	}
	var raw msgpack.RawMessage
	d := GetDecoder(src)
	if err := d.Decode(&raw); err != nil {
		t.Fatal(err)
	}
	d.Release()
	for i := range src { // the caller's buffer reused for something else
		src[i] = 0xc1
	}
	for i := 0; i < 50; i++ { // the pool's decoders decode other values meanwhile
		other, _ := MarshalValue(rec{Name: "y", Blob: bytes.Repeat([]byte("z"), 6000)})
		var r rec
		if err := UnmarshalValue(other, &r); err != nil || r.Name != "y" {
			t.Fatal(r.Name, err)
		}
	}
	if first.Name != "first-name-longer-than-scratch-"+string(big[:100]) || !bytes.Equal(first.Blob, big) {
		t.Fatalf("a decoded value changed when the decoder was reused: name %.40q, blob %d bytes", first.Name, len(first.Blob))
	}
	var again rec
	if err := msgpack.Unmarshal(raw, &again); err != nil {
		t.Fatal(err)
	}
	if err := UnmarshalValue(mustMarshal(t, map[string]any{"name": "tagged"}), &again); err != nil || again.Name != "tagged" {
		t.Fatalf("the json struct tag was not applied on reuse: %+v %v", again, err)
	}
}

func mustMarshal(t *testing.T, v any) []byte {
	t.Helper()
	b, err := MarshalValue(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func BenchmarkUnmarshalValue(b *testing.B) {
	src, _ := MarshalValue([]byte("Hello world!"))
	b.ReportAllocs()
	for b.Loop() {
		var out []byte
		if err := UnmarshalValue(src, &out); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkUnmarshalValueUnpooled is UnmarshalValue's baseline: a new
// decoder per value, as before the pool.
func BenchmarkUnmarshalValueUnpooled(b *testing.B) {
	src, _ := MarshalValue([]byte("Hello world!"))
	b.ReportAllocs()
	for b.Loop() {
		var out []byte
		if err := CheckMsgpack(src); err != nil {
			b.Fatal(err)
		}
		d := msgpack.NewDecoder(bytes.NewReader(src))
		d.SetCustomStructTag("json")
		if err := d.Decode(&out); err != nil {
			b.Fatal(err)
		}
	}
}

// TestBytesValue: BytesValue reads what MarshalValue makes of []byte and
// string values of every length class, shares b, and refuses the rest.
func TestBytesValue(t *testing.T) {
	for _, n := range []int{0, 1, 31, 32, 255, 256, 65535, 65536, 100000} {
		p := bytes.Repeat([]byte{'a'}, n)
		for _, v := range []any{p, string(p)} {
			b := mustMarshal(t, v)
			got, ok := BytesValue(b)
			if !ok || !bytes.Equal(got, p) {
				t.Fatalf("%T of %d bytes: BytesValue = %d bytes, %v", v, n, len(got), ok)
			}
			if n > 0 && &got[0] != &b[len(b)-n] {
				t.Fatalf("%T of %d bytes: a copy, not b's own bytes", v, n)
			}
			if len(got) > 0 && cap(got) != len(got) {
				t.Fatalf("cap %d: an append to the result would write past it into b", cap(got))
			}
		}
	}
	if v, ok := BytesValue(mustMarshal(t, []byte(nil))); !ok || v != nil {
		t.Fatalf("nil: %v %v", v, ok)
	}
	for _, v := range []any{1, -1, 3.5, true, map[string]int{"a": 1}, []int{1}, []string{"a"}} {
		if _, ok := BytesValue(mustMarshal(t, v)); ok {
			t.Errorf("%T %v: taken for bytes", v, v)
		}
	}
	b := mustMarshal(t, []byte("hello"))
	for _, bad := range [][]byte{nil, {}, b[:len(b)-1], append(b[:len(b):len(b)], 0), {0xc4}, {0xc5, 0}, {0xc6, 0, 0, 0}, {0xc0, 0xc0}} {
		if v, ok := BytesValue(bad); ok {
			t.Errorf("% x: taken for bytes (%q)", bad, v)
		}
	}
}

// FuzzBytesValue: whatever BytesValue takes, msgpack decodes into a
// []byte to the same bytes.
func FuzzBytesValue(f *testing.F) {
	for _, v := range []any{[]byte("x"), "hello", []byte(nil), bytes.Repeat([]byte{1}, 300), 7} {
		b, _ := MarshalValue(v)
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		v, ok := BytesValue(b)
		if !ok {
			return
		}
		var want []byte
		if err := UnmarshalValue(b, &want); err != nil {
			t.Fatalf("BytesValue took % x, msgpack refuses it: %v", b, err)
		}
		if !bytes.Equal(v, want) || (v == nil) != (want == nil) {
			t.Fatalf("% x: BytesValue %q, msgpack %q", b, v, want)
		}
	})
}

// BenchmarkResultBytes10KB: a 10 KB []byte result taken by BytesValue
// (Handle.Call's path) beside UnmarshalValue (its baseline: a decode and a
// copy).
func BenchmarkResultBytes10KB(b *testing.B) {
	src, _ := MarshalValue(bytes.Repeat([]byte{'x'}, 10240))
	b.Run("BytesValue", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if v, ok := BytesValue(src); !ok || len(v) != 10240 {
				b.Fatal(len(v), ok)
			}
		}
	})
	b.Run("UnmarshalValue", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			var out []byte
			if err := UnmarshalValue(src, &out); err != nil || len(out) != 10240 {
				b.Fatal(len(out), err)
			}
		}
	})
}
