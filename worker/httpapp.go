package worker

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"reflect"
)

// HTTPHandler registers a class whose instance is a net/http Handler: a
// whole Go HTTP router (the standard mux, chi, …) as one deployment, as Ray
// Serve wraps a FastAPI app. constructor takes the init args (optionally
// preceded by a context.Context) and returns an http.Handler, optionally
// with an error. The handler sees paths below the route prefix, so a mux
// pattern "GET /items/{id}" serves <prefix>/items/7.
func (r *Registry) HTTPHandler(name string, constructor any) {
	c, err := newHTTPClass(name, constructor)
	r.add(name, c, err)
}

var handlerType = reflect.TypeFor[http.Handler]()

func newHTTPClass(name string, ctor any) (*class, error) {
	v := reflect.ValueOf(ctor)
	if !v.IsValid() || v.Kind() != reflect.Func || v.IsNil() {
		return nil, fmt.Errorf("%w: HTTP handler %q: constructor must be a function, got %T", ErrRegistration, name, ctor)
	}
	t := v.Type()
	if t.NumOut() < 1 || t.NumOut() > 2 || !t.Out(0).Implements(handlerType) || (t.NumOut() == 2 && t.Out(1) != errType) {
		return nil, fmt.Errorf("%w: HTTP handler %q: constructor must return (http.Handler) or (http.Handler, error), not %v", ErrRegistration, name, t)
	}
	if t.IsVariadic() {
		return nil, fmt.Errorf("%w: HTTP handler %q: variadic constructors are not supported", ErrRegistration, name)
	}
	in := make([]reflect.Type, t.NumIn())
	for i := range in {
		in[i] = t.In(i)
	}
	out := []reflect.Type{reflect.TypeFor[*httpApp](), errType}
	wrapped := reflect.MakeFunc(reflect.FuncOf(in, out, false), func(args []reflect.Value) []reflect.Value {
		res := v.Call(args)
		if len(res) == 2 && !res[1].IsNil() {
			return []reflect.Value{reflect.Zero(out[0]), res[1]}
		}
		h, _ := res[0].Interface().(http.Handler)
		if h == nil {
			return []reflect.Value{reflect.Zero(out[0]), reflect.ValueOf(errors.New("constructor returned a nil http.Handler"))}
		}
		return []reflect.Value{reflect.ValueOf(&httpApp{h: h}), reflect.Zero(errType)}
	})
	return newClass(name, wrapped.Interface(), nil)
}

// httpApp adapts an http.Handler to the class protocol.
type httpApp struct{ h http.Handler }

// Call serves one HTTP request through the wrapped handler.
func (a *httpApp) Call(ctx context.Context, req *Request) (*Response, error) {
	if !req.IsHTTP() {
		return nil, errors.New("this deployment wraps an HTTP handler: call it over HTTP")
	}
	hr, err := a.request(ctx, req)
	if err != nil {
		return nil, err
	}
	w := &recorder{header: http.Header{}}
	a.h.ServeHTTP(w, hr)
	if w.status == 0 {
		w.status = http.StatusOK
	}
	if w.header.Get("Content-Type") == "" && w.body.Len() > 0 {
		w.header.Set("Content-Type", http.DetectContentType(w.body.Bytes()))
	}
	return &Response{Status: w.status, Header: w.header, Body: w.body.Bytes()}, nil
}

// request builds the net/http request the handler sees.
func (a *httpApp) request(ctx context.Context, req *Request) (*http.Request, error) {
	u := &url.URL{Path: req.RelPath(), RawQuery: req.RawQuery}
	hr, err := http.NewRequestWithContext(ctx, req.Method, u.String(), bytes.NewReader(req.Body))
	if err != nil {
		return nil, fmt.Errorf("building the request: %w", err)
	}
	hr.Header = req.Header()
	hr.Host = hr.Header.Get("Host")
	hr.RequestURI = u.RequestURI()
	hr.ContentLength = int64(len(req.Body))
	hr.Header.Set("X-Forwarded-Prefix", req.RoutePrefix)
	return hr, nil
}

// recorder is the http.ResponseWriter handed to the wrapped handler.
type recorder struct {
	header http.Header
	status int
	body   bytes.Buffer
}

func (w *recorder) Header() http.Header { return w.header }
func (w *recorder) WriteHeader(status int) {
	if w.status == 0 {
		w.status = status
	}
}
func (w *recorder) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return w.body.Write(b)
}

var _ http.ResponseWriter = (*recorder)(nil)
