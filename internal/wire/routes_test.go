package wire

import (
	"errors"
	"strings"
	"testing"
)

// The reference is Ray Serve itself:
//   - python/ray/serve/tests/test_http_routes.py test_path_validation:
//     "hello" (no leading '/'), "/hello/" (trailing '/') and "/{hello}"
//     (wildcard) are refused;
//   - python/ray/serve/tests/test_schema.py test_route_prefix:
//     "hello/world", "/hello/world/" and "/hello/{adjective}/world/" are
//     refused; "/hello/wonderful/world" and "/" are accepted;
//   - python/ray/serve/_private/utils.py validate_route_prefix and
//     python/ray/serve/schema.py _route_prefix_format: those three rules and
//     nothing else, so the other rows (ours) follow from them.
func TestValidateRoutePrefixMatchesRayServe(t *testing.T) {
	for _, tc := range []struct {
		prefix string
		ok     bool
		why    string // part of the error
	}{
		// Ray Serve's test cases.
		{"hello", false, "must start with '/'"},
		{"/hello/", false, "must not end with '/'"},
		{"/{hello}", false, "wildcards"},
		{"hello/world", false, "must start with '/'"},
		{"/hello/world/", false, "must not end with '/'"},
		{"/hello/{adjective}/world/", false, "must not end with '/'"},
		{"/hello/wonderful/world", true, ""},
		{"/", true, ""},
		// Ours, by the same rules.
		{"/api", true, ""},
		{"/api/v1", true, ""},
		{"/my_deployment", true, ""},
		{"/rep-1", true, ""},
		{"/🐈", true, ""},
		{"/%%", true, ""},
		// Ray Serve accepts these too, although no request path matches them.
		{"/a//b", true, ""},
		{"/a/../b", true, ""},
		{"/a?b=c", true, ""},
		{"/a#b", true, ""},
		{"/a b", true, ""},
		{"//", false, "must not end with '/'"},
		{"", false, "must start with '/'"},
		{"api/", false, "must start with '/'"},
		{" /api", false, "must start with '/'"},
		{"/api/v1/", false, "must not end with '/'"},
		{"/api/{wildcard}", false, "wildcards"},
		{"/{a}/b", false, "wildcards"},
		{"/a{", false, "wildcards"},
		{"/a}", false, "wildcards"},
	} {
		t.Run(tc.prefix, func(t *testing.T) {
			err := ValidateRoutePrefix(tc.prefix)
			if tc.ok {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatal("accepted; Ray Serve refuses it")
			}
			if !errors.Is(err, ErrInvalidRoutePrefix) || !strings.Contains(err.Error(), tc.why) {
				t.Fatalf("got %v, want ErrInvalidRoutePrefix saying %q", err, tc.why)
			}
		})
	}
}

func FuzzValidateRoutePrefix(f *testing.F) {
	for _, s := range []string{"/", "/api", "", "api", "/api/", "/{x}", "/a\nb/", strings.Repeat("/x", 100) + "/"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, p string) {
		err := ValidateRoutePrefix(p)
		ray := strings.HasPrefix(p, "/") && (p == "/" || !strings.HasSuffix(p, "/")) && !strings.ContainsAny(p, "{}")
		if (err == nil) != ray {
			t.Fatalf("%q: got %v, Ray Serve's rules say ok=%v", p, err, ray)
		}
		if err != nil && (strings.ContainsAny(err.Error(), "\n\r") || len(err.Error()) > 400) {
			t.Fatalf("error is not one short line: %q", err.Error())
		}
	})
}
