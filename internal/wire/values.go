package wire

import (
	"bytes"
	"fmt"
	"sync"

	"github.com/vmihailenco/msgpack/v5"
)

// Values (handle arguments and results) are encoded with msgpack/v5 using
// the `json` struct tags, so one set of tags serves HTTP (JSON) and handles.

var encPool = sync.Pool{New: func() any {
	var buf bytes.Buffer
	enc := msgpack.NewEncoder(&buf)
	enc.SetCustomStructTag("json")
	enc.UseCompactInts(true)
	return &encoder{buf: &buf, enc: enc}
}}

type encoder struct {
	buf *bytes.Buffer
	enc *msgpack.Encoder
}

// MarshalArgs encodes args as one msgpack array.
func MarshalArgs(args []any) ([]byte, error) {
	e := encPool.Get().(*encoder)
	defer encPool.Put(e)
	e.buf.Reset()
	if err := e.enc.EncodeArrayLen(len(args)); err != nil {
		return nil, err
	}
	for i, a := range args {
		if err := e.enc.Encode(a); err != nil {
			return nil, fmt.Errorf("argument %d (%T): %w", i, a, err)
		}
	}
	return bytes.Clone(e.buf.Bytes()), nil
}

// MarshalValue encodes one value.
func MarshalValue(v any) ([]byte, error) {
	e := encPool.Get().(*encoder)
	defer encPool.Put(e)
	e.buf.Reset()
	if err := e.enc.Encode(v); err != nil {
		return nil, err
	}
	return bytes.Clone(e.buf.Bytes()), nil
}

// NewDecoder returns a msgpack decoder over b, configured like the encoder.
// The caller must have vetted b with CheckMsgpack.
func NewDecoder(b []byte) *msgpack.Decoder {
	d := msgpack.NewDecoder(bytes.NewReader(b))
	d.SetCustomStructTag("json")
	return d
}

// Decoder is a pooled NewDecoder (GetDecoder): a decoder and its reader
// cost two allocations and ~0.45 µs a call otherwise (6% of a handle
// caller's CPU at 64 calls in flight, issue 18). What it decodes is the
// caller's (msgpack copies bytes, strings and raw values out of its
// scratch buffer).
type Decoder struct {
	*msgpack.Decoder
	r bytes.Reader
}

var decPool = sync.Pool{New: func() any { return &Decoder{Decoder: msgpack.NewDecoder(nil)} }}

// GetDecoder returns a pooled decoder over b, configured like the encoder;
// Release gives it back. The caller must have vetted b with CheckMsgpack.
func GetDecoder(b []byte) *Decoder {
	d := decPool.Get().(*Decoder)
	d.r.Reset(b)
	d.Reset(&d.r) // also clears the options and the dictionary
	d.SetCustomStructTag("json")
	return d
}

// Release returns d to the pool; d is not used after.
func (d *Decoder) Release() {
	d.r.Reset(nil)
	d.Reset(nil)
	decPool.Put(d)
}

// UnmarshalValue vets b and decodes it into v (a pointer).
func UnmarshalValue(b []byte, v any) error {
	if err := CheckMsgpack(b); err != nil {
		return err
	}
	d := GetDecoder(b)
	err := d.Decode(v)
	d.Release()
	return err
}
