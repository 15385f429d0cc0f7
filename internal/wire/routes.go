package wire

import (
	"errors"
	"fmt"
	"strings"
)

// ErrInvalidRoutePrefix is returned (wrapped) for a route prefix Ray Serve
// would refuse.
var ErrInvalidRoutePrefix = errors.New("invalid route prefix")

// ValidateRoutePrefix checks a route prefix by Ray Serve's rules, no more
// and no fewer (ray/serve/_private/utils.py validate_route_prefix and
// ray/serve/schema.py _route_prefix_format):
//
//  1. it starts with '/';
//  2. it does not end with '/', unless it is "/" itself;
//  3. it holds no wildcard: no '{' and no '}'.
//
// A prefix that no request path can match (a query, an empty segment) is
// accepted, as Ray Serve accepts it. "Not on HTTP" (Ray's None) is not a
// prefix and is not checked here. The error is one line: the prefix is
// quoted and cut at 64 bytes.
func ValidateRoutePrefix(p string) error {
	switch {
	case !strings.HasPrefix(p, "/"):
		return routeError(quoteShort(p) + " must start with '/'")
	case p != "/" && strings.HasSuffix(p, "/"):
		return routeError(quoteShort(p) + " must not end with '/' unless it is just '/'")
	case strings.ContainsAny(p, "{}"):
		return routeError(quoteShort(p) + " must not contain wildcards ('{' or '}')")
	}
	return nil
}

// quoteShort quotes s for a one-line message, cut at 64 bytes.
func quoteShort(s string) string {
	if len(s) > 64 {
		return fmt.Sprintf("%q…", s[:64])
	}
	return fmt.Sprintf("%q", s)
}

// routeError is a route prefix's problem; it matches ErrInvalidRoutePrefix
// and reads without the sentinel's words, since callers name the field.
type routeError string

func (e routeError) Error() string        { return string(e) }
func (e routeError) Is(target error) bool { return target == ErrInvalidRoutePrefix }
