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

// AppendValue appends v's encoding to b, as MarshalValue encodes it,
// without a copy of its own (MarshalValue's result is a new slice).
func AppendValue(b []byte, v any) ([]byte, error) {
	e := encPool.Get().(*encoder)
	defer encPool.Put(e)
	e.buf.Reset()
	if err := e.enc.Encode(v); err != nil {
		return b, err
	}
	return append(b, e.buf.Bytes()...), nil
}

// BytesValue returns the content of b when b is exactly one msgpack bin or
// str value (what MarshalValue makes of a []byte or a string), a slice of
// b itself, without a copy; nil for msgpack's nil. ok is false for
// anything else, which UnmarshalValue decodes. For a caller that owns b
// and decodes into a *[]byte.
func BytesValue(b []byte) (v []byte, ok bool) {
	if len(b) == 0 {
		return nil, false
	}
	c, n, h := b[0], 0, 1
	switch {
	case c == 0xc0: // nil
		return nil, len(b) == 1
	case c >= 0xa0 && c <= 0xbf: // fixstr
		n = int(c & 0x1f)
	case c == 0xc4 || c == 0xd9: // bin8, str8
		if len(b) < 2 {
			return nil, false
		}
		n, h = int(b[1]), 2
	case c == 0xc5 || c == 0xda: // bin16, str16
		if len(b) < 3 {
			return nil, false
		}
		n, h = int(b[1])<<8|int(b[2]), 3
	case c == 0xc6 || c == 0xdb: // bin32, str32
		if len(b) < 5 {
			return nil, false
		}
		n, h = int(b[1])<<24|int(b[2])<<16|int(b[3])<<8|int(b[4]), 5
	default:
		return nil, false
	}
	if n != len(b)-h {
		return nil, false
	}
	return b[h:len(b):len(b)], true
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

// Decoder is a pooled msgpack decoder (GetDecoder): a new decoder and its
// reader cost two allocations and ~0.45 µs a call otherwise (6% of a handle
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
