package client

import (
	"errors"
	"strings"
	"testing"

	"github.com/natserve/natserve/internal/wire"
)

const goodConfig = `# the seed's two deployments
deployments:
  - name: rep-1
    class: Model
    init_args: ["/model/rep-1.pkl"]
    num_replicas: 2
    route_prefix: /rep-1
    max_ongoing_requests: 5
    user_config: {threshold: 0.5}
  - name: rep-2
    class: Model
    init_args: ["/model/rep-2.pkl"]
  - name: internal
    class: Model
    route_prefix: null
`

func TestParseConfig(t *testing.T) {
	cfg, err := ParseConfig("serve.yaml", []byte(goodConfig))
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.Deployments) != 3 {
		t.Fatalf("%d deployments", len(cfg.Deployments))
	}
	d := cfg.Deployments[0]
	if r, _ := d.Spec.Route(); d.Spec.Name != "rep-1" || d.Line != 3 || d.Spec.NumReplicas != 2 || r != "/rep-1" ||
		string(d.Spec.InitArgs) != `["/model/rep-1.pkl"]` || string(d.Spec.UserConfig) != `{"threshold":0.5}` {
		t.Errorf("rep-1: %+v", d)
	}
	d = cfg.Deployments[1]
	if r, _ := d.Spec.Route(); d.Spec.NumReplicas != 1 || r != "/rep-2" || d.Spec.MaxOngoingRequests != 5 || d.Spec.HealthCheckPeriodS != 10 {
		t.Errorf("rep-2 defaults: %+v", d.Spec)
	}
	if _, on := cfg.Deployments[2].Spec.Route(); on {
		t.Errorf("route_prefix: null should disable HTTP")
	}
}

func TestParseConfigErrors(t *testing.T) {
	for _, tc := range []struct{ name, yaml, want string }{
		{"unknown field", "deployments:\n  - name: a\n    class: M\n    replicas: 2\n", "f.yaml:4: deployments[0].replicas: unknown field"},
		{"wrong type", "deployments:\n  - name: a\n    class: M\n    num_replicas: two\n", `f.yaml:4: deployments[0].num_replicas: want an integer or auto, got "two"`},
		{"list for string", "deployments:\n  - name: [a]\n", "f.yaml:2: deployments[0].name: want a string, got a list"},
		{"init_args not a list", "deployments:\n  - name: a\n    class: M\n    init_args: x\n", "f.yaml:4: deployments[0].init_args: want a list"},
		{"negative replicas", "deployments:\n  - name: a\n    class: M\n    num_replicas: -1\n", "f.yaml:4: a: num_replicas: -1 is negative"},
		{"process storm", "deployments:\n  - name: a\n    class: M\n    num_replicas: 10000\n", "f.yaml:4: a: num_replicas: 10000 is more than 1000"},
		{"autoscaling storm", "deployments:\n  - name: a\n    class: M\n    autoscaling_config:\n      max_replicas: 10000\n", "a: autoscaling_config: max_replicas 10000 is more than 1000"},
		{"max_ongoing_requests past the replica's limit", "deployments:\n  - name: a\n    class: M\n    max_ongoing_requests: 2000000\n", "a: max_ongoing_requests: 2000000 is out of range (1 to 1048576)"},
		{"bad route", "deployments:\n  - name: a\n    class: M\n    route_prefix: api\n", `f.yaml:4: a: route_prefix: "api" must start with '/'`},
		{"empty route", "deployments:\n  - name: a\n    class: M\n    route_prefix: \"\"\n", `f.yaml:4: deployments[0].route_prefix: "" must start with '/'`},
		{"wildcard route", "deployments:\n  - name: a\n    class: M\n    route_prefix: /{x}\n", `f.yaml:4: a: route_prefix: "/{x}" must not contain wildcards`},
		{"no name", "deployments:\n  - class: M\n", "f.yaml:2: deployments[0]: name is required"},
		{"bad name", "deployments:\n  - name: a.b\n    class: M\n", "f.yaml:2: name: invalid name"},
		{"no class", "deployments:\n  - name: a\n", "f.yaml:2: a: class: is required"},
		{"duplicate", "deployments:\n  - name: a\n    class: M\n  - name: a\n    class: M\n", "f.yaml:4: deployment a is already declared at line 2"},
		{"same route", "deployments:\n  - name: a\n    class: M\n    route_prefix: /x\n  - name: b\n    class: M\n    route_prefix: /x\n", "f.yaml:5: b: route_prefix: /x is also the route of a"},
		{"top-level typo", "deployment:\n  - name: a\n", "f.yaml:1: deployment: unknown field"},
		{"not yaml", "deployments: [\n", "f.yaml:"},
		{"not a mapping", "- a\n", "f.yaml:1: the file must be a mapping"},
		{"tab indent", "deployments:\n\t- name: a\n", "f.yaml:2"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseConfig("f.yaml", []byte(tc.yaml))
			if !errors.Is(err, ErrConfigFile) || !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), "\n") {
				t.Fatalf("got %v\nwant one line containing %q", err, tc.want)
			}
		})
	}
}

func FuzzParseConfig(f *testing.F) {
	f.Add([]byte(goodConfig))
	f.Add([]byte("deployments:\n  - name: a\n    class: M\n    init_args: [1, {a: [b]}]\n"))
	f.Add([]byte("a: &a [*a, *a]\n"))
	f.Add([]byte("deployments:\n  - {name: a, class: M, user_config: {1: 2}}\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		cfg, err := ParseConfig("f.yaml", b)
		if err != nil {
			if !errors.Is(err, ErrConfigFile) {
				t.Fatalf("error does not wrap ErrConfigFile: %v", err)
			}
			return
		}
		for _, d := range cfg.Deployments {
			if err := d.Spec.Normalize(); err != nil {
				t.Fatalf("accepted an invalid spec: %v", err)
			}
		}
	})
}

// TestConfigFieldError reads where an error stands from the *FieldError
// it carries, not from its text.
func TestConfigFieldError(t *testing.T) {
	for _, tc := range []struct {
		name, yaml string
		line       int
		path       string
	}{
		{"parser", "deployments:\n  - name: a\n    class: M\n    replicas: 2\n", 4, "deployments[0].replicas"},
		{"spec field", "deployments:\n  - name: a\n    class: M\n    num_replicas: -1\n", 4, "num_replicas"},
		{"spec name", "deployments:\n  - name: a.b\n    class: M\n", 2, "name"},
		{"graph", "graphs:\n  - name: g\n    nodes: {a: {call: f, args: [$b]}}\n    output: a\n", 2, ""},
		{"syntax", "deployments:\n\t- name: a\n", 2, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseConfig("f.yaml", []byte(tc.yaml))
			var fe *FieldError
			if !errors.Is(err, ErrConfigFile) || !errors.As(err, &fe) {
				t.Fatalf("got %v, want an ErrConfigFile carrying a *FieldError", err)
			}
			if fe.File != "f.yaml" || fe.Line != tc.line || fe.Path != tc.path {
				t.Errorf("field error at %s:%d %q, want f.yaml:%d %q (%v)", fe.File, fe.Line, fe.Path, tc.line, tc.path, err)
			}
		})
	}
}

// TestAPIErrorCodes maps control API codes to sentinels by code alone.
func TestAPIErrorCodes(t *testing.T) {
	for _, tc := range []struct {
		code wire.APICode
		msg  string
		want error
	}{
		{wire.APIInvalid, "g: cycle: a → b → a", ErrInvalidSpec}, // the text does not decide
		{wire.APIInvalidGraph, "g: output: unknown node \"x\"", ErrInvalidGraph},
		{wire.APINotFound, "deployment \"x\" not found", ErrNotFound},
		{wire.APIConflict, "x: route_prefix: taken", ErrConflict},
		{wire.APIUnknownClass, "x: class: unknown class Y", ErrUnknownClass},
	} {
		err := apiError(wire.APIReply{Code: tc.code, Error: tc.msg})
		if !errors.Is(err, tc.want) || err.Error() != tc.msg {
			t.Errorf("%s %q: %v, want %v with the message unchanged", tc.code, tc.msg, err, tc.want)
		}
		for _, other := range []error{ErrInvalidSpec, ErrInvalidGraph, ErrNotFound, ErrConflict, ErrUnknownClass} {
			if other != tc.want && errors.Is(err, other) {
				t.Errorf("%s also matches %v", tc.code, other)
			}
		}
	}
	if err := apiError(wire.APIReply{Code: wire.APIInternal, Error: "boom"}); err.Error() != "boom" {
		t.Errorf("internal: %v", err)
	}
}
