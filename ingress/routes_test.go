package ingress

import "testing"

func TestLongestPrefixMatch(t *testing.T) {
	tb := newTable(map[string]string{"/api": "api", "/api/v2": "v2", "/rep-1": "rep-1", "/a/b/c": "deep"})
	root := newTable(map[string]string{"/": "root", "/api": "api"})
	for _, tc := range []struct {
		t    *table
		path string
		want string
	}{
		{tb, "/api", "api"}, {tb, "/api/", "api"}, {tb, "/api/x", "api"}, {tb, "/api/v2", "v2"}, {tb, "/api/v2/items/1", "v2"},
		{tb, "/api/v3", "api"}, {tb, "/apix", ""}, {tb, "/ap", ""}, {tb, "/", ""}, {tb, "", ""}, {tb, "rep-1", ""},
		{tb, "/rep-1?x", ""}, {tb, "/rep-1", "rep-1"}, {tb, "/a/b", ""}, {tb, "/a/b/c/d", "deep"}, {tb, "//api", ""},
		{root, "/anything/else", "root"}, {root, "/", "root"}, {root, "/api/x", "api"}, {root, "/apix", "root"},
	} {
		got := ""
		if r := tc.t.match([]byte(tc.path)); r != nil {
			got = r.deployment
		}
		if got != tc.want {
			t.Errorf("match(%q) = %q, want %q", tc.path, got, tc.want)
		}
	}
}

func BenchmarkMatch(b *testing.B) {
	routes := map[string]string{}
	for _, p := range []string{"/api", "/api/v2", "/rep-1", "/rep-2", "/models/a", "/models/b"} {
		routes[p] = "d"
	}
	tb := newTable(routes)
	path := []byte("/api/v2/items/12345")
	b.ReportAllocs()
	for b.Loop() {
		if tb.match(path) == nil {
			b.Fatal("no match")
		}
	}
}
