package worker

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strings"

	"github.com/natserve/natserve/internal/wire"
	"github.com/vmihailenco/msgpack/v5"
)

// Request is what a class's default method receives when it takes a
// *Request: an HTTP request routed by the ingress, or a handle call whose
// arguments are read with Arg (the seed's isinstance(request, Request)
// check becomes req.IsHTTP()).
type Request struct {
	// Method is the HTTP method; "" for a handle call.
	Method string
	// Path is the full request path, e.g. /api/v2/items.
	Path string
	// RoutePrefix is the route prefix that matched, e.g. /api.
	RoutePrefix string
	// RawQuery is the query string without '?'.
	RawQuery string
	// Body is the request body.
	Body []byte
	// ID is the request id (X-Request-Id).
	ID string

	query   url.Values
	header  http.Header
	rawHdr  []string // name, value, … as received; Header builds from it
	args    []msgpack.RawMessage
	isHTTP  bool
	argsErr error
}

// IsHTTP reports whether the request came over HTTP rather than a handle.
func (r *Request) IsHTTP() bool { return r.isHTTP }

// RelPath is the path below the route prefix, always starting with '/'
// (the seed's ASGI root_path split).
func (r *Request) RelPath() string {
	p := strings.TrimPrefix(r.Path, strings.TrimSuffix(r.RoutePrefix, "/"))
	if p == "" || p[0] != '/' {
		p = "/" + p
	}
	return p
}

// Query returns the parsed query parameters.
func (r *Request) Query() url.Values {
	if r.query == nil {
		r.query, _ = url.ParseQuery(r.RawQuery)
		if r.query == nil {
			r.query = url.Values{}
		}
	}
	return r.query
}

// QueryParam returns the first value of query parameter name, or "". It
// scans the raw query without building the whole map.
func (r *Request) QueryParam(name string) string {
	if r.query != nil {
		return r.query.Get(name)
	}
	q := r.RawQuery
	for q != "" {
		var kv string
		kv, q, _ = strings.Cut(q, "&")
		k, v, _ := strings.Cut(kv, "=")
		if k == name || strings.ContainsAny(k, "%+") && unescape(k) == name {
			return unescape(v)
		}
	}
	return ""
}

func unescape(s string) string {
	if !strings.ContainsAny(s, "%+") {
		return s
	}
	u, err := url.QueryUnescape(s)
	if err != nil {
		return s
	}
	return u
}

// Header returns the request headers (built on first use).
func (r *Request) Header() http.Header {
	if r.header == nil {
		r.header = make(http.Header, len(r.rawHdr)/2)
		for i := 0; i+1 < len(r.rawHdr); i += 2 {
			r.header.Add(r.rawHdr[i], r.rawHdr[i+1])
		}
	}
	return r.header
}

// JSON decodes the body as JSON into v.
func (r *Request) JSON(v any) error {
	if err := wire.UnmarshalJSON(r.Body, v); err != nil {
		return fmt.Errorf("request body is not valid JSON for %T: %w", v, err)
	}
	return nil
}

// NumArgs is the number of handle-call arguments (0 over HTTP).
func (r *Request) NumArgs() int { return len(r.args) }

// Arg decodes handle-call argument i into v (a pointer).
func (r *Request) Arg(i int, v any) error {
	if r.argsErr != nil {
		return r.argsErr
	}
	if i < 0 || i >= len(r.args) {
		return fmt.Errorf("argument %d requested, the call has %d", i, len(r.args))
	}
	d := wire.GetDecoder(r.args[i])
	defer d.Release()
	if err := d.Decode(v); err != nil {
		return fmt.Errorf("argument %d: %w", i, err)
	}
	return nil
}

func newHTTPRequest(env *wire.HTTPRequest, id string) *Request {
	return &Request{
		Method: env.Method, Path: env.Path, RoutePrefix: env.Prefix, RawQuery: env.Query,
		rawHdr: env.Headers, Body: env.Body, ID: id, isHTTP: true,
	}
}

// Response is a full HTTP response a method may return.
type Response struct {
	Status int         // default 200
	Header http.Header // optional
	Body   []byte
}

// Text returns a text/plain response.
func Text(status int, s string) *Response {
	return &Response{Status: status, Header: http.Header{"Content-Type": {"text/plain; charset=utf-8"}}, Body: []byte(s)}
}

// JSON returns an application/json response of v; an unencodable v gives a 500.
func JSON(status int, v any) *Response {
	b, err := json.Marshal(v)
	if err != nil {
		return Text(http.StatusInternalServerError, "encoding the result as JSON: "+err.Error())
	}
	return &Response{Status: status, Header: http.Header{"Content-Type": {"application/json"}}, Body: b}
}
