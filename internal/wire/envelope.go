package wire

import "fmt"

// The HTTP envelopes. A request is a msgpack array
//
//	[method str, path str, prefix str, query str, headers [k, v, k, v, …] of str, body bin]
//
// and a reply is
//
//	[status uint, headers [k, v, …] of str, body bin, replica str]
//
// where the replica id (for the ingress's access log) is optional: a
// reply of three elements has none.
// Decoders accept and ignore extra trailing elements so that a later
// protocol version may add fields.

// MaxHeaders bounds the header lines an envelope may carry.
const MaxHeaders = 512

// HTTPRequest is an HTTP request as a replica receives it.
type HTTPRequest struct {
	Method  string
	Path    string   // full path, e.g. /api/v2/items
	Prefix  string   // the route prefix that matched, e.g. /api
	Query   string   // raw query string without '?'
	Headers []string // alternating names and values
	Body    []byte
}

// HTTPReply is the reply a replica sends for an HTTPRequest.
type HTTPReply struct {
	Status  int
	Headers []string // alternating names and values
	Body    []byte
	Replica []byte // the replica that answered; optional; aliases the input when decoded
}

// MaxSize bounds the bytes AppendHTTPReply appends for r, so that a
// replica sizes the buffer once.
func (r *HTTPReply) MaxSize() int {
	n := 16 + len(r.Body) + len(r.Replica)
	for _, h := range r.Headers {
		n += 5 + len(h)
	}
	return n
}

// AppendHTTPRequestHead starts a request envelope; the caller then appends
// exactly nheaders header pairs with AppendHeader and the body with
// AppendBody. The ingress builds envelopes this way straight from fasthttp's
// buffers without an intermediate struct.
func AppendHTTPRequestHead[T string | []byte](b []byte, method, path, prefix, query T, nheaders int) []byte {
	b = append(b, 0x96)
	b = appendStr(b, method)
	b = appendStr(b, path)
	b = appendStr(b, prefix)
	b = appendStr(b, query)
	return appendArrayLen(b, 2*nheaders)
}

// AppendHeader appends one header pair.
func AppendHeader[T string | []byte](b []byte, name, value T) []byte {
	return appendStr(appendStr(b, name), value)
}

// AppendBody appends the body that ends an envelope.
func AppendBody(b, body []byte) []byte { return appendBin(b, body) }

// AppendHTTPRequest appends the envelope of r.
func AppendHTTPRequest(b []byte, r *HTTPRequest) []byte {
	b = AppendHTTPRequestHead(b, r.Method, r.Path, r.Prefix, r.Query, len(r.Headers)/2)
	for i := 0; i+1 < len(r.Headers); i += 2 {
		b = AppendHeader(b, r.Headers[i], r.Headers[i+1])
	}
	return AppendBody(b, r.Body)
}

// AppendHTTPReply appends the envelope of r.
func AppendHTTPReply(b []byte, r *HTTPReply) []byte {
	if len(r.Replica) > 0 {
		b = append(b, 0x94)
	} else {
		b = append(b, 0x93)
	}
	status := r.Status
	if status <= 0 {
		status = 200
	}
	b = appendUint(b, uint64(status))
	b = appendArrayLen(b, len(r.Headers)/2*2)
	for i := 0; i+1 < len(r.Headers); i += 2 {
		b = AppendHeader(b, r.Headers[i], r.Headers[i+1])
	}
	b = AppendBody(b, r.Body)
	if len(r.Replica) > 0 {
		b = appendStr(b, r.Replica)
	}
	return b
}

func (r *reader) headers() []string {
	n := r.headerLen()
	if n == 0 {
		return nil
	}
	h := make([]string, n)
	for i := range h {
		h[i] = string(r.rawStr())
	}
	return h
}

// headerLen reads a header array's length: an even number of elements,
// at most MaxHeaders pairs (0 after an error).
func (r *reader) headerLen() int {
	n := r.arrayLen()
	if r.err != nil {
		return 0
	}
	if n%2 != 0 || n/2 > MaxHeaders {
		r.fail("%d header elements: want an even number, at most %d pairs", n, MaxHeaders)
		return 0
	}
	return n
}

func (r *reader) tail(fields, want int) {
	for i := want; i < fields && r.err == nil; i++ {
		r.skip(1)
	}
	if r.err == nil && r.off != len(r.b) {
		r.fail("%d trailing bytes", len(r.b)-r.off)
	}
}

// DecodeHTTPRequest decodes a request envelope. Body aliases b.
//
// Every string (method, path, prefix, query, header names and values) is
// cut from one copy of the bytes they span: one allocation instead of one
// per string (a replica decodes one envelope per HTTP request). A first
// pass checks the envelope and finds the span; a second cuts the strings.
func DecodeHTTPRequest(b []byte) (*HTTPRequest, error) {
	r := reader{b: b}
	n := r.arrayLen()
	if r.err == nil && n < 6 {
		r.fail("request envelope has %d fields, want 6", n)
	}
	start := r.off
	for i := 0; i < 4; i++ {
		r.rawStr()
	}
	hn := r.headerLen()
	for i := 0; i < hn; i++ {
		r.rawStr()
	}
	end := r.off
	body := r.rawStr()
	r.tail(n, 6)
	if r.err != nil {
		return nil, fmt.Errorf("http request envelope: %w", r.err)
	}
	all := string(b[start:end])
	c := reader{b: b, off: start}
	str := func() string {
		v := c.rawStr()
		if len(v) == 0 {
			return ""
		}
		o := c.off - len(v) - start
		return all[o : o+len(v)]
	}
	req := &HTTPRequest{Method: str(), Path: str(), Prefix: str(), Query: str()}
	if c.headerLen() > 0 {
		req.Headers = make([]string, hn)
		for i := range req.Headers {
			req.Headers[i] = str()
		}
	}
	req.Body = body
	return req, nil
}

// DecodeHTTPReply decodes a reply envelope. Body and Replica alias b;
// the header strings are cut from one copy of the bytes they span.
func DecodeHTTPReply(b []byte) (*HTTPReply, error) {
	rep := &HTTPReply{}
	if err := rep.Decode(b); err != nil {
		return nil, err
	}
	return rep, nil
}

// Decode is DecodeHTTPReply into rep, which the caller may keep on its
// stack (the ingress decodes one reply per HTTP request); after an error
// rep holds nothing useful.
func (rep *HTTPReply) Decode(b []byte) error {
	r := reader{b: b}
	n := r.arrayLen()
	if r.err == nil && n < 3 {
		r.fail("reply envelope has %d fields, want 3", n)
	}
	*rep = HTTPReply{}
	st := r.uint()
	if r.err == nil && (st < 100 || st > 999) {
		r.fail("status %d out of range", st)
	}
	rep.Status = int(st)
	rep.Headers = r.headersOneCopy()
	rep.Body = r.rawStr()
	fields := 3
	if n > 3 {
		rep.Replica = r.rawStr()
		fields = 4
	}
	r.tail(n, fields)
	if r.err != nil {
		return fmt.Errorf("http reply envelope: %w", r.err)
	}
	return nil
}

// headersOneCopy is headers with one string allocation for all of them:
// a first pass checks the array and finds its span, a second cuts it.
func (r *reader) headersOneCopy() []string {
	n := r.headerLen()
	if n == 0 {
		return nil
	}
	c := *r
	start := r.off
	for i := 0; i < n; i++ {
		r.rawStr()
	}
	if r.err != nil {
		return nil
	}
	all := string(r.b[start:r.off])
	h := make([]string, n)
	for i := range h {
		v := c.rawStr()
		o := c.off - len(v) - start
		h[i] = all[o : o+len(v)]
	}
	return h
}
