package wire

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
)

// A minimal msgpack reader and writer for the envelopes, written against the
// byte slice so that decoding never allocates more than the input holds and
// never reads past it. User arguments and results are encoded with
// github.com/vmihailenco/msgpack/v5, after [CheckMsgpack] has vetted them.

// ErrMalformed is returned (wrapped) for bytes that are not a well-formed
// envelope or msgpack value.
var ErrMalformed = errors.New("malformed msgpack")

// ErrTooCostly is returned (wrapped) for a well-formed msgpack value whose
// decoding would take more memory than DecodeBudget allows: many small
// containers cost far more decoded than they take on the wire (an 8 MB
// array of empty maps is 640 MB of Go maps).
var ErrTooCostly = errors.New("msgpack value too costly to decode")

// MaxDepth bounds the nesting of arrays and maps in a value.
const MaxDepth = 64

// Decoding budget: a value of n bytes may cost DecodeCostFactor*n +
// DecodeCostSlack bytes decoded into interface values (see msgpackCost).
// An array of small integers, the densest ordinary payload, costs 16 bytes
// per byte; records of short strings and numbers stay well below.
const (
	DecodeCostFactor = 16
	DecodeCostSlack  = 32 << 20
)

// DecodeBudget is the decoded memory a msgpack value of n bytes may cost.
func DecodeBudget(n int) int { return DecodeCostFactor*n + DecodeCostSlack }

// What decoding into interface values costs, measured with msgpack/v5 and
// Go's maps (see TestDecodeCostModel): every value takes an interface slot;
// numbers beyond a byte are boxed; strings, bytes and extensions box a
// header and copy their bytes; a slice boxes its header; a map takes its
// header plus at least one group of eight slots.
const (
	costSlot     = 16
	costNumber   = 16 // 8 bytes, 16 with the race detector
	costBytes    = 24
	costArray    = 24
	costMap      = 64
	costMapEntry = 48
	costMapGroup = 8
)

func appendStr[T string | []byte](b []byte, s T) []byte {
	n := len(s)
	switch {
	case n < 32:
		b = append(b, 0xa0|byte(n))
	case n <= math.MaxUint8:
		b = append(b, 0xd9, byte(n))
	case n <= math.MaxUint16:
		b = append(b, 0xda, byte(n>>8), byte(n))
	default:
		b = append(b, 0xdb)
		b = binary.BigEndian.AppendUint32(b, uint32(n))
	}
	return append(b, s...)
}

func appendBin(b, v []byte) []byte {
	n := len(v)
	switch {
	case n <= math.MaxUint8:
		b = append(b, 0xc4, byte(n))
	case n <= math.MaxUint16:
		b = append(b, 0xc5, byte(n>>8), byte(n))
	default:
		b = append(b, 0xc6)
		b = binary.BigEndian.AppendUint32(b, uint32(n))
	}
	return append(b, v...)
}

func appendArrayLen(b []byte, n int) []byte {
	switch {
	case n < 16:
		return append(b, 0x90|byte(n))
	case n <= math.MaxUint16:
		return append(b, 0xdc, byte(n>>8), byte(n))
	default:
		b = append(b, 0xdd)
		return binary.BigEndian.AppendUint32(b, uint32(n))
	}
}

func appendUint(b []byte, v uint64) []byte {
	switch {
	case v < 128:
		return append(b, byte(v))
	case v <= math.MaxUint8:
		return append(b, 0xcc, byte(v))
	case v <= math.MaxUint16:
		return append(b, 0xcd, byte(v>>8), byte(v))
	case v <= math.MaxUint32:
		b = append(b, 0xce)
		return binary.BigEndian.AppendUint32(b, uint32(v))
	default:
		b = append(b, 0xcf)
		return binary.BigEndian.AppendUint64(b, v)
	}
}

// reader walks a msgpack byte slice. The first error sticks.
type reader struct {
	b   []byte
	off int
	err error

	cost, budget int // estimated decoded size so far; skip fails above budget (0: no budget)
}

func (r *reader) fail(format string, args ...any) {
	if r.err == nil {
		r.err = fmt.Errorf("%w: at byte %d: %s", ErrMalformed, r.off, fmt.Sprintf(format, args...))
	}
}

func (r *reader) need(n int) bool {
	if r.err != nil {
		return false
	}
	if n < 0 || n > len(r.b)-r.off {
		r.fail("%d bytes declared, %d left", n, len(r.b)-r.off)
		return false
	}
	return true
}

func (r *reader) byte1() byte {
	if !r.need(1) {
		return 0
	}
	c := r.b[r.off]
	r.off++
	return c
}

func (r *reader) uintN(n int) uint64 {
	if !r.need(n) {
		return 0
	}
	var v uint64
	for i := 0; i < n; i++ {
		v = v<<8 | uint64(r.b[r.off+i])
	}
	r.off += n
	return v
}

// length reads a big-endian length of n bytes and checks that at least
// min*length bytes remain, so that no declared size exceeds the input.
func (r *reader) length(n, min int) int {
	l := r.uintN(n)
	if r.err != nil {
		return 0
	}
	if l > uint64(len(r.b)-r.off) || int(l)*min > len(r.b)-r.off {
		r.fail("length %d exceeds the %d bytes left", l, len(r.b)-r.off)
		return 0
	}
	return int(l)
}

func (r *reader) arrayLen() int {
	c := r.byte1()
	switch {
	case r.err != nil:
		return 0
	case c&0xf0 == 0x90:
		return int(c & 0x0f)
	case c == 0xdc:
		return r.length(2, 1)
	case c == 0xdd:
		return r.length(4, 1)
	}
	r.fail("want an array, got type byte 0x%02x", c)
	return 0
}

// rawStr returns the bytes of a str or bin value, aliasing the input.
func (r *reader) rawStr() []byte {
	c := r.byte1()
	var n int
	switch {
	case r.err != nil:
		return nil
	case c&0xe0 == 0xa0:
		n = int(c & 0x1f)
	case c == 0xd9, c == 0xc4:
		n = r.length(1, 1)
	case c == 0xda, c == 0xc5:
		n = r.length(2, 1)
	case c == 0xdb, c == 0xc6:
		n = r.length(4, 1)
	case c == 0xc0: // nil reads as empty
		return nil
	default:
		r.fail("want a string, got type byte 0x%02x", c)
		return nil
	}
	if !r.need(n) {
		return nil
	}
	s := r.b[r.off : r.off+n : r.off+n]
	r.off += n
	return s
}

func (r *reader) uint() uint64 {
	c := r.byte1()
	switch {
	case r.err != nil:
		return 0
	case c < 0x80:
		return uint64(c)
	case c == 0xcc:
		return r.uintN(1)
	case c == 0xcd:
		return r.uintN(2)
	case c == 0xce:
		return r.uintN(4)
	case c == 0xcf:
		return r.uintN(8)
	}
	r.fail("want an unsigned integer, got type byte 0x%02x", c)
	return 0
}

// skip steps over one value of any type.
func (r *reader) skip(depth int) {
	if depth > MaxDepth {
		r.fail("nested deeper than %d", MaxDepth)
		return
	}
	c := r.byte1()
	if r.err != nil {
		return
	}
	n, elems, isMap := 0, 0, false
	switch {
	case c < 0x80 || c >= 0xe0 || c == 0xc0 || c == 0xc2 || c == 0xc3: // fixint, nil, bool
	case c&0xf0 == 0x80: // fixmap
		elems, isMap = 2*int(c&0x0f), true
	case c&0xf0 == 0x90: // fixarray
		elems = int(c & 0x0f)
	case c&0xe0 == 0xa0: // fixstr
		n = int(c & 0x1f)
	case c == 0xc4 || c == 0xd9:
		n = r.length(1, 1)
	case c == 0xc5 || c == 0xda:
		n = r.length(2, 1)
	case c == 0xc6 || c == 0xdb:
		n = r.length(4, 1)
	case c == 0xc7:
		n = r.length(1, 1) + 1
	case c == 0xc8:
		n = r.length(2, 1) + 1
	case c == 0xc9:
		n = r.length(4, 1) + 1
	case c == 0xca:
		n = 4
	case c == 0xcb:
		n = 8
	case c == 0xcc || c == 0xd0:
		n = 1
	case c == 0xcd || c == 0xd1:
		n = 2
	case c == 0xce || c == 0xd2:
		n = 4
	case c == 0xcf || c == 0xd3:
		n = 8
	case c == 0xd4:
		n = 2
	case c == 0xd5:
		n = 3
	case c == 0xd6:
		n = 5
	case c == 0xd7:
		n = 9
	case c == 0xd8:
		n = 17
	case c == 0xdc:
		elems = r.length(2, 1)
	case c == 0xdd:
		elems = r.length(4, 1)
	case c == 0xde:
		elems, isMap = 2*r.length(2, 2), true
	case c == 0xdf:
		elems, isMap = 2*r.length(4, 2), true
	default: // 0xc1 is never used
		r.fail("type byte 0x%02x is not msgpack", c)
		return
	}
	if r.budget > 0 && r.err == nil {
		r.cost += costSlot
		switch {
		case isMap:
			r.cost += costMap
			if elems > 0 {
				r.cost += costMapEntry * max(elems/2, costMapGroup)
			}
		case c&0xf0 == 0x90 || c == 0xdc || c == 0xdd:
			r.cost += costArray
		case c&0xe0 == 0xa0 || c >= 0xc4 && c <= 0xc9 || c >= 0xd4 && c <= 0xdb:
			r.cost += costBytes + n
		case n > 0:
			r.cost += costNumber
		}
		if r.cost > r.budget {
			r.err = fmt.Errorf("%w: %d bytes would take more than %d bytes decoded", ErrTooCostly, len(r.b), r.budget)
			return
		}
	}
	if n > 0 && r.need(n) {
		r.off += n
	}
	for i := 0; i < elems && r.err == nil; i++ {
		r.skip(depth + 1)
	}
}

// CheckMsgpack reports whether b holds exactly one well-formed msgpack value
// whose declared lengths all fit in b, whose nesting is at most MaxDepth and
// whose decoding into interface values would cost at most
// DecodeBudget(len(b)) (otherwise the error wraps ErrTooCostly). It reads
// b once and allocates nothing: a request is vetted before it is decoded.
func CheckMsgpack(b []byte) error {
	_, err := msgpackCost(b, DecodeBudget(len(b)))
	return err
}

// msgpackCost checks b as CheckMsgpack does, against budget, and returns
// the estimated decoded size.
func msgpackCost(b []byte, budget int) (int, error) {
	r := reader{b: b, budget: budget}
	r.skip(0)
	if r.err == nil && r.off != len(b) {
		r.fail("%d trailing bytes", len(b)-r.off)
	}
	return r.cost, r.err
}
