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
		if err := NewDecoder(src).Decode(&out); err != nil {
			b.Fatal(err)
		}
	}
}
