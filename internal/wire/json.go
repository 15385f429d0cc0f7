package wire

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"unicode/utf8"
)

// JSON that came from outside (HTTP bodies, control API requests, reports
// and records other identities write) is vetted by [CheckJSON] before it
// is decoded, as msgpack is by [CheckMsgpack]: encoding/json decoding into
// interface values allocates up to ~60 times the input (an 8 MB body of
// {"":0} objects is 420 MB of Go maps), so a body is refused when it is
// malformed, nests deeper than MaxDepth, holds more than MaxJSONElements
// values, or would cost more than JSONDecodeBudget to decode.

// ErrJSONMalformed is returned (wrapped) for bytes that are not one JSON value.
var ErrJSONMalformed = errors.New("malformed JSON")

// ErrJSONTooCostly is returned (wrapped) for well-formed JSON that nests
// too deep, holds too many values, or would take too much memory decoded.
var ErrJSONTooCostly = errors.New("JSON value too costly to decode")

// MaxJSONElements bounds the values (numbers, strings, literals, arrays,
// objects and object keys) in one JSON value.
const MaxJSONElements = 1 << 22

// JSON decoding budget: a value of n bytes may cost JSONDecodeCostFactor*n
// + JSONDecodeCostSlack bytes allocated decoding into interface values
// (see jsonCost). An array of one-digit integers, the densest ordinary
// payload, costs ~60 bytes per byte (each element's slot in a growing
// slice and its number); text-heavy bodies cost a few bytes per byte. So a
// body of up to ~2 MB passes whatever its shape, and an 8 MB body may cost
// at most 320 MiB.
const (
	JSONDecodeCostFactor = 32
	JSONDecodeCostSlack  = 64 << 20
)

// JSONDecodeBudget is the memory decoding a JSON value of n bytes may cost.
func JSONDecodeBudget(n int) int { return JSONDecodeCostFactor*n + JSONDecodeCostSlack }

// What encoding/json allocates decoding into interface values, measured
// (TestJSONCostModel), with json.Number (UseNumber) or float64 numbers,
// whichever costs more: an array element's slot in a slice grown by
// append (16 bytes, about five times over counting the slices left
// behind); a number's boxed value or string; a string's header and bytes
// (twice when it has escapes); a boxed slice header; a map's header, its
// first group of eight slots, and about 160 bytes an entry as it grows.
const (
	jcostElem     = 88
	jcostNumber   = 32
	jcostString   = 24
	jcostArray    = 32
	jcostObject   = 64
	jcostGroup    = 288
	jcostEntry    = 160
	jcostRewrite  = 8
	jcostDecoder  = 4 // json.Decoder buffers the input (growing its buffer)
	jcostReadBase = 4096
)

// CheckJSON reports whether b holds exactly one JSON value (surrounded by
// optional white space) that nests at most MaxDepth deep, holds at most
// MaxJSONElements values and whose decoding into interface values would
// cost at most JSONDecodeBudget(len(b)). Errors wrap ErrJSONMalformed or
// ErrJSONTooCostly and are one line. It reads b once and allocates
// nothing but its error.
func CheckJSON(b []byte) error {
	_, err := jsonCost(b, JSONDecodeBudget(len(b)))
	return err
}

// UnmarshalJSON vets b with CheckJSON and decodes it into v.
func UnmarshalJSON(b []byte, v any) error {
	if err := CheckJSON(b); err != nil {
		return err
	}
	return json.Unmarshal(b, v)
}

// NewJSONDecoder vets b with CheckJSON and returns a decoder over it.
func NewJSONDecoder(b []byte) (*json.Decoder, error) {
	if err := CheckJSON(b); err != nil {
		return nil, err
	}
	return json.NewDecoder(bytes.NewReader(b)), nil
}

// jsonCost checks b as CheckJSON does, against budget, and returns the
// estimated allocation of decoding it.
func jsonCost(b []byte, budget int) (int, error) {
	s := jscan{b: b, budget: budget, cost: jcostDecoder*len(b) + jcostReadBase}
	s.ws()
	s.value(1)
	s.ws()
	if s.err == nil && s.off != len(b) {
		s.fail("after the value")
	}
	if s.err == nil && s.cost > budget {
		s.costly()
	}
	return s.cost, s.err
}

// jscan walks one JSON value; the first error sticks.
type jscan struct {
	b                   []byte
	off                 int
	elems, cost, budget int
	err                 error
}

func (s *jscan) fail(what string) {
	if s.err != nil {
		return
	}
	if s.off >= len(s.b) {
		s.err = fmt.Errorf("%w: unexpected end %s (byte %d)", ErrJSONMalformed, what, s.off)
		return
	}
	s.err = fmt.Errorf("%w: unexpected %q %s (byte %d)", ErrJSONMalformed, s.b[s.off], what, s.off)
}

func (s *jscan) costly() {
	if s.err == nil {
		s.err = fmt.Errorf("%w: %d bytes would take more than %d bytes decoded", ErrJSONTooCostly, len(s.b), s.budget)
	}
}

// add counts one value of cost c.
func (s *jscan) add(c int) bool {
	s.elems++
	s.cost += c
	switch {
	case s.elems > MaxJSONElements:
		if s.err == nil {
			s.err = fmt.Errorf("%w: more than %d values", ErrJSONTooCostly, MaxJSONElements)
		}
		return false
	case s.cost > s.budget:
		s.costly()
		return false
	}
	return true
}

func (s *jscan) ws() {
	for s.off < len(s.b) {
		switch s.b[s.off] {
		case ' ', '\t', '\n', '\r':
			s.off++
		default:
			return
		}
	}
}

// value reads one value at nesting depth (1 for the top level).
func (s *jscan) value(depth int) {
	if s.err != nil {
		return
	}
	if s.off >= len(s.b) {
		s.fail("where a value belongs")
		return
	}
	switch c := s.b[s.off]; {
	case c == '{':
		s.object(depth)
	case c == '[':
		s.array(depth)
	case c == '"':
		n := s.str()
		if s.err == nil {
			s.add(jcostString + n)
		}
	case c == '-' || c >= '0' && c <= '9':
		start := s.off
		s.number()
		if s.err == nil {
			s.add(jcostNumber + s.off - start)
		}
	case c == 't':
		s.lit("true")
	case c == 'f':
		s.lit("false")
	case c == 'n':
		s.lit("null")
	default:
		s.fail("where a value belongs")
	}
}

func (s *jscan) lit(w string) {
	if len(s.b)-s.off < len(w) || string(s.b[s.off:s.off+len(w)]) != w {
		s.fail("in a literal")
		return
	}
	s.off += len(w)
	s.add(0)
}

func (s *jscan) nest(depth int) bool {
	if depth > MaxDepth {
		if s.err == nil {
			s.err = fmt.Errorf("%w: nested deeper than %d", ErrJSONTooCostly, MaxDepth)
		}
		return false
	}
	return true
}

func (s *jscan) array(depth int) {
	if !s.nest(depth) || !s.add(jcostArray) {
		return
	}
	s.off++ // '['
	s.ws()
	if s.off < len(s.b) && s.b[s.off] == ']' {
		s.off++
		return
	}
	for s.err == nil {
		s.cost += jcostElem
		s.value(depth + 1)
		s.ws()
		if s.err != nil {
			return
		}
		if !s.more(']', "in an array") {
			return
		}
	}
}

// more reads what follows a container's element: a comma (true: another
// element follows) or the closer (false), anything else fails (false).
func (s *jscan) more(closer byte, where string) bool {
	if s.off < len(s.b) && s.b[s.off] == ',' {
		s.off++
		s.ws()
		return true
	}
	if s.off < len(s.b) && s.b[s.off] == closer {
		s.off++
		return false
	}
	s.fail(where)
	return false
}

func (s *jscan) object(depth int) {
	if !s.nest(depth) || !s.add(jcostObject) {
		return
	}
	s.off++ // '{'
	s.ws()
	if s.off < len(s.b) && s.b[s.off] == '}' {
		s.off++
		return
	}
	s.cost += jcostGroup
	for s.err == nil {
		if s.off >= len(s.b) || s.b[s.off] != '"' {
			s.fail("where an object key belongs")
			return
		}
		n := s.str()
		if s.err != nil || !s.add(jcostEntry+jcostString+n) {
			return
		}
		s.ws()
		if s.off >= len(s.b) || s.b[s.off] != ':' {
			s.fail("after an object key")
			return
		}
		s.off++
		s.ws()
		s.value(depth + 1)
		s.ws()
		if s.err != nil {
			return
		}
		if !s.more('}', "in an object") {
			return
		}
	}
}

// str reads a string at s.off (a '"') and returns what decoding it may
// allocate beyond its header: its length, or with escapes or invalid UTF-8
// (which decoding rewrites in a growing buffer, each bad byte as three)
// jcostRewrite times its length.
func (s *jscan) str() int {
	start := s.off
	s.off++
	escaped, high := false, false
	for s.off < len(s.b) {
		c := s.b[s.off]
		switch {
		case c == '"':
			s.off++
			n := s.off - start
			if escaped || high && !utf8.Valid(s.b[start:s.off]) {
				n *= jcostRewrite
			}
			return n
		case c == '\\':
			escaped = true
			s.off++
			if s.off >= len(s.b) {
				s.fail("in a string escape")
				return 0
			}
			switch s.b[s.off] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				s.off++
			case 'u':
				s.off++
				for i := 0; i < 4; i++ {
					if s.off >= len(s.b) || !isHex(s.b[s.off]) {
						s.fail("in a \\u escape")
						return 0
					}
					s.off++
				}
			default:
				s.fail("in a string escape")
				return 0
			}
		case c < 0x20:
			s.fail("in a string")
			return 0
		case c >= utf8.RuneSelf:
			high = true
			s.off++
		default:
			s.off++
		}
	}
	s.fail("in a string")
	return 0
}

func isHex(c byte) bool { return c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F' }

func isDigit(c byte) bool { return c >= '0' && c <= '9' }

// number reads a JSON number (RFC 8259 grammar).
func (s *jscan) number() {
	if s.b[s.off] == '-' {
		s.off++
	}
	switch {
	case s.off < len(s.b) && s.b[s.off] == '0':
		s.off++
	case s.off < len(s.b) && s.b[s.off] >= '1' && s.b[s.off] <= '9':
		for s.off < len(s.b) && isDigit(s.b[s.off]) {
			s.off++
		}
	default:
		s.fail("in a number")
		return
	}
	if s.off < len(s.b) && s.b[s.off] == '.' {
		s.off++
		if s.off >= len(s.b) || !isDigit(s.b[s.off]) {
			s.fail("in a number's fraction")
			return
		}
		for s.off < len(s.b) && isDigit(s.b[s.off]) {
			s.off++
		}
	}
	if s.off < len(s.b) && (s.b[s.off] == 'e' || s.b[s.off] == 'E') {
		s.off++
		if s.off < len(s.b) && (s.b[s.off] == '+' || s.b[s.off] == '-') {
			s.off++
		}
		if s.off >= len(s.b) || !isDigit(s.b[s.off]) {
			s.fail("in a number's exponent")
			return
		}
		for s.off < len(s.b) && isDigit(s.b[s.off]) {
			s.off++
		}
	}
}
