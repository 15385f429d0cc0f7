package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/natserve/natserve/internal/wire"
	"go.yaml.in/yaml/v3"
)

// ErrConfigFile is returned (wrapped) for a config file that cannot be
// applied; the message gives the file, the line and the field.
var ErrConfigFile = errors.New("invalid config file")

// Config is a parsed config file: the deployments it declares, in the
// style of Ray Serve's config files.
//
//	deployments:
//	  - name: rep-1
//	    class: Model
//	    init_args: ["/model/rep-1.pkl"]
//	    num_replicas: 2
//	    route_prefix: /rep-1
//	    max_ongoing_requests: 5
//	    user_config: {threshold: 0.5}
//	    batching:            # the class's batched methods, changed in place
//	      Predict: {max_batch_size: 8, batch_wait_timeout_s: 0.02}
type Config struct {
	// File is the file's name, used in errors.
	File        string
	Deployments []ConfigDeployment
	Graphs      []ConfigGraph
}

// ConfigGraph is one graph of a config file and where it stands.
type ConfigGraph struct {
	Spec GraphSpec
	Line int
}

// ConfigDeployment is one deployment of a config file and where it stands.
type ConfigDeployment struct {
	Spec DeploymentSpec
	Line int
}

// LoadConfig reads and parses a config file.
func LoadConfig(path string) (*Config, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrConfigFile, err)
	}
	return ParseConfig(path, b)
}

// MaxConfigSize bounds a config file.
const MaxConfigSize = 4 << 20

// ParseConfig parses a config file's bytes; file names it in errors. Unknown
// fields, wrong types and invalid values are refused with file:line.
func ParseConfig(file string, data []byte) (*Config, error) {
	if len(data) > MaxConfigSize {
		return nil, fmt.Errorf("%w: %s: %d bytes is over the %d byte limit", ErrConfigFile, file, len(data), MaxConfigSize)
	}
	p := &parser{file: file}
	var root yaml.Node
	if err := yaml.Unmarshal(data, &root); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrConfigFile, syntaxError(file, err))
	}
	cfg := &Config{File: file}
	if root.Kind == 0 || len(root.Content) == 0 {
		return cfg, nil
	}
	doc := root.Content[0]
	if doc.Kind != yaml.MappingNode {
		return nil, p.errf(doc, "", "the file must be a mapping with a deployments list")
	}
	for i := 0; i+1 < len(doc.Content); i += 2 {
		k, v := doc.Content[i], doc.Content[i+1]
		switch k.Value {
		case "deployments":
			if v.Kind != yaml.SequenceNode {
				return nil, p.errf(v, "deployments", "want a list")
			}
			for j, item := range v.Content {
				spec, err := p.deployment(item, fmt.Sprintf("deployments[%d]", j))
				if err != nil {
					return nil, err
				}
				cfg.Deployments = append(cfg.Deployments, ConfigDeployment{Spec: spec, Line: item.Line})
			}
		case "graphs":
			if v.Kind != yaml.SequenceNode {
				return nil, p.errf(v, "graphs", "want a list")
			}
			for j, item := range v.Content {
				g, err := p.graph(item, fmt.Sprintf("graphs[%d]", j))
				if err != nil {
					return nil, err
				}
				cfg.Graphs = append(cfg.Graphs, ConfigGraph{Spec: g, Line: item.Line})
			}
		default:
			return nil, p.errf(k, k.Value, "unknown field (want: deployments, graphs)")
		}
	}
	seen := map[string]int{}
	routes := map[string]string{}
	for _, g := range cfg.Graphs {
		if line, dup := seen[g.Spec.Name]; dup {
			return nil, fmt.Errorf("%w: %w", ErrConfigFile, &FieldError{File: file, Line: g.Line, Err: fmt.Errorf("graph %s is already declared at line %d", g.Spec.Name, line)})
		}
		seen[g.Spec.Name] = g.Line
		if r, on := g.Spec.Route(); on {
			routes[r] = g.Spec.Name
		}
	}
	for _, d := range cfg.Deployments {
		if line, dup := seen[d.Spec.Name]; dup {
			return nil, fmt.Errorf("%w: %w", ErrConfigFile, &FieldError{File: file, Line: d.Line, Err: fmt.Errorf("deployment %s is already declared at line %d", d.Spec.Name, line)})
		}
		seen[d.Spec.Name] = d.Line
		if r, on := d.Spec.Route(); on {
			if other, taken := routes[r]; taken {
				return nil, fmt.Errorf("%w: %w", ErrConfigFile, &FieldError{File: file, Line: d.Line, Name: d.Spec.Name, Path: "route_prefix", Err: fmt.Errorf("%s is also the route of %s", r, other)})
			}
			routes[r] = d.Spec.Name
		}
	}
	return cfg, nil
}

type parser struct{ file string }

func (p *parser) errf(n *yaml.Node, field, format string, args ...any) error {
	return fmt.Errorf("%w: %w", ErrConfigFile, &FieldError{File: p.file, Line: n.Line, Path: field, Err: fmt.Errorf(format, args...)})
}

// located places a spec's or a graph's *FieldError in the file: at the
// line of its field when lines has it, else at line.
func (p *parser) located(err error, line int, lines map[string]int) error {
	var fe *FieldError
	if !errors.As(err, &fe) {
		return fmt.Errorf("%w: %w", ErrConfigFile, &FieldError{File: p.file, Line: line, Err: err})
	}
	if l, ok := lines[fe.Path]; ok {
		line = l
	}
	return fmt.Errorf("%w: %w", ErrConfigFile, fe.at(p.file, line))
}

// syntaxError makes yaml's syntax error ("yaml: line 3: did not find
// expected key") a *FieldError: yaml.v3 gives it no type, only text.
func syntaxError(file string, err error) *FieldError {
	msg := strings.TrimPrefix(err.Error(), "yaml: ")
	fe := &FieldError{File: file, Err: errors.New(msg)}
	var line int
	if rest, ok := strings.CutPrefix(msg, "line "); ok {
		if n, text, ok := strings.Cut(rest, ": "); ok {
			if _, serr := fmt.Sscanf(n, "%d", &line); serr == nil && line > 0 {
				fe.Line, fe.Err = line, errors.New(text)
			}
		}
	}
	return fe
}

// scalar decodes the scalar v of field into out, or says what was wanted.
func (p *parser) scalar(v *yaml.Node, field string, out any, want string) error {
	if v.Kind != yaml.ScalarNode || v.Tag == "!!null" || v.Decode(out) != nil {
		return p.errf(v, field, "want %s, got %s", want, kindName(v))
	}
	return nil
}

// routePrefix decodes a route_prefix: a path, or null for "not on HTTP"
// (a pointer to "").
func (p *parser) routePrefix(v *yaml.Node, field string) (*string, error) {
	if v.Tag == "!!null" {
		return new(string), nil
	}
	var r string
	if err := p.scalar(v, field, &r, "a path like /api, or null"); err != nil {
		return nil, err
	}
	if r == "" { // "" is how a spec says "not on HTTP"; in a file that is null, and "" is refused as Ray Serve refuses it
		return nil, p.errf(v, field, "%v", wire.ValidateRoutePrefix(r))
	}
	return &r, nil
}

func kindName(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	}
	if n.Tag == "!!null" {
		return "null"
	}
	return fmt.Sprintf("%q", n.Value)
}

func (p *parser) deployment(n *yaml.Node, path string) (DeploymentSpec, error) {
	var s DeploymentSpec
	if n.Kind != yaml.MappingNode {
		return s, p.errf(n, path, "want a mapping with name and class")
	}
	s.NumReplicas = DefaultNumReplicas
	lines := map[string]int{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		lines[k.Value] = v.Line
		field := path + "." + k.Value
		toJSON := func(want string) (json.RawMessage, error) {
			var x any
			if err := v.Decode(&x); err != nil {
				return nil, p.errf(v, field, "%v", err)
			}
			b, err := json.Marshal(x)
			if err != nil {
				return nil, p.errf(v, field, "cannot be expressed as JSON (%s): %v", want, err)
			}
			return b, nil
		}
		var err error
		switch k.Value {
		case "name":
			err = p.scalar(v, field, &s.Name, "a string")
		case "class":
			err = p.scalar(v, field, &s.Class, "a string")
		case "init_args":
			if v.Kind != yaml.SequenceNode {
				return s, p.errf(v, field, "want a list of constructor arguments, got %s", kindName(v))
			}
			s.InitArgs, err = toJSON("a list")
		case "user_config":
			s.UserConfig, err = toJSON("a value")
		case "num_replicas":
			if v.Kind == yaml.ScalarNode && v.Value == "auto" {
				if s.AutoscalingConfig == nil {
					s.AutoscalingConfig = AutoDefaults()
				}
				break
			}
			err = p.scalar(v, field, &s.NumReplicas, "an integer or auto")
		case "autoscaling_config":
			var x any
			if v.Kind != yaml.MappingNode || v.Decode(&x) != nil {
				return s, p.errf(v, field, "want a mapping, got %s", kindName(v))
			}
			b, _ := json.Marshal(x)
			base := s.AutoscalingConfig
			if base == nil {
				base = &AutoscalingConfig{}
			}
			dec := json.NewDecoder(strings.NewReader(string(b)))
			dec.DisallowUnknownFields()
			if derr := dec.Decode(base); derr != nil {
				return s, p.errf(v, field, "%s", strings.TrimPrefix(derr.Error(), "json: "))
			}
			s.AutoscalingConfig = base
		case "batching":
			s.Batching, err = p.batching(v, field)
		case "route_prefix":
			s.RoutePrefix, err = p.routePrefix(v, field)
		case "max_ongoing_requests":
			err = p.scalar(v, field, &s.MaxOngoingRequests, "an integer")
		case "max_queued_requests":
			err = p.scalar(v, field, &s.MaxQueuedRequests, "an integer")
		case "graceful_shutdown_timeout_s":
			err = p.scalar(v, field, &s.GracefulShutdownTimeoutS, "a number of seconds")
		case "health_check_period_s":
			err = p.scalar(v, field, &s.HealthCheckPeriodS, "a number of seconds")
		case "health_check_timeout_s":
			err = p.scalar(v, field, &s.HealthCheckTimeoutS, "a number of seconds")
		case "max_constructor_retry_count":
			err = p.scalar(v, field, &s.MaxConstructorRetryCount, "an integer")
		case "version":
			err = p.scalar(v, field, &s.Version, "a string")
		case "max_attempts":
			err = p.scalar(v, field, &s.MaxAttempts, "an integer")
		case "max_stored_requests":
			err = p.scalar(v, field, &s.MaxStoredRequests, "an integer")
		case "callback_urls":
			if v.Kind != yaml.SequenceNode || v.Decode(&s.CallbackURLs) != nil {
				return s, p.errf(v, field, "want a list of URL prefixes")
			}
		case "idempotent_methods":
			if v.Kind != yaml.SequenceNode || v.Decode(&s.IdempotentMethods) != nil {
				return s, p.errf(v, field, "want a list of method names, got %s", kindName(v))
			}
		default:
			return s, p.errf(k, field, "unknown field")
		}
		if err != nil {
			return s, err
		}
	}
	if s.Name == "" {
		return s, p.errf(n, path, "name is required")
	}
	if err := s.Normalize(); err != nil {
		return s, p.located(err, n.Line, lines)
	}
	return s, nil
}

// batching decodes a batching block: method name to its batch parameters.
func (p *parser) batching(v *yaml.Node, field string) (map[string]BatchConfig, error) {
	if v.Kind != yaml.MappingNode {
		return nil, p.errf(v, field, "want a mapping of method names to {max_batch_size, batch_wait_timeout_s, max_concurrent_batches, adaptive_wait}, got %s", kindName(v))
	}
	out := map[string]BatchConfig{}
	for i := 0; i+1 < len(v.Content); i += 2 {
		k, mv := v.Content[i], v.Content[i+1]
		mfield := field + "." + k.Value
		var x any
		if mv.Kind != yaml.MappingNode || mv.Decode(&x) != nil {
			return nil, p.errf(mv, mfield, "want a mapping with max_batch_size, batch_wait_timeout_s, max_concurrent_batches or adaptive_wait, got %s", kindName(mv))
		}
		b, _ := json.Marshal(x)
		var bc BatchConfig
		dec := json.NewDecoder(strings.NewReader(string(b)))
		dec.DisallowUnknownFields()
		if derr := dec.Decode(&bc); derr != nil {
			return nil, p.errf(mv, mfield, "%s", strings.TrimPrefix(derr.Error(), "json: "))
		}
		if err := bc.Validate(); err != nil {
			return nil, p.errf(mv, mfield, "%v", err)
		}
		out[k.Value] = bc
	}
	return out, nil
}

func (p *parser) graph(n *yaml.Node, path string) (GraphSpec, error) {
	var g GraphSpec
	if n.Kind != yaml.MappingNode {
		return g, p.errf(n, path, "want a mapping with name, nodes and output")
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		field := path + "." + k.Value
		var err error
		switch k.Value {
		case "name":
			err = p.scalar(v, field, &g.Name, "a string")
		case "route_prefix":
			g.RoutePrefix, err = p.routePrefix(v, field)
		case "http_input":
			err = p.scalar(v, field, &g.HTTPInput, "json or query:NAME")
		case "output":
			err = p.scalar(v, field, &g.Output, "a node name")
		case "nodes":
			if v.Kind != yaml.MappingNode {
				return g, p.errf(v, field, "want a mapping of node name to node")
			}
			for j := 0; j+1 < len(v.Content); j += 2 {
				node, err := p.graphNode(v.Content[j+1], field+"."+v.Content[j].Value)
				if err != nil {
					return g, err
				}
				node.Name = v.Content[j].Value
				g.Nodes = append(g.Nodes, node)
			}
		default:
			return g, p.errf(k, field, "unknown field")
		}
		if err != nil {
			return g, err
		}
	}
	if err := g.Normalize(); err != nil {
		return g, p.located(err, n.Line, nil)
	}
	return g, nil
}

func (p *parser) graphNode(n *yaml.Node, path string) (GraphNode, error) {
	var gn GraphNode
	if n.Kind != yaml.MappingNode {
		return gn, p.errf(n, path, "want {class: C, init_args: [...]} or {call: F, args: [...]}")
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		field := path + "." + k.Value
		var err error
		switch k.Value {
		case "class":
			err = p.scalar(v, field, &gn.Class, "a class name")
		case "call":
			err = p.scalar(v, field, &gn.Call, "a function, NODE or NODE.METHOD")
		case "num_replicas":
			err = p.scalar(v, field, &gn.NumReplicas, "an integer")
		case "max_ongoing_requests":
			err = p.scalar(v, field, &gn.MaxOngoingRequests, "an integer")
		case "init_args", "args", "user_config":
			var x any
			if err := v.Decode(&x); err != nil {
				return gn, p.errf(v, field, "%v", err)
			}
			if k.Value != "user_config" {
				if _, ok := x.([]any); !ok {
					return gn, p.errf(v, field, "want a list, got %s", kindName(v))
				}
			}
			b, jerr := json.Marshal(x)
			if jerr != nil {
				return gn, p.errf(v, field, "cannot be expressed as JSON: %v", jerr)
			}
			switch k.Value {
			case "init_args":
				gn.InitArgs = b
			case "user_config":
				gn.UserConfig = b
			default:
				var raw []json.RawMessage
				_ = json.Unmarshal(b, &raw)
				gn.Args = raw
			}
		default:
			return gn, p.errf(k, field, "unknown field")
		}
		if err != nil {
			return gn, err
		}
	}
	return gn, nil
}

// ApplyOptions change Apply.
type ApplyOptions struct {
	// Prune deletes deployments the file does not list.
	Prune bool
	// DryRun validates against the running cluster without changing it.
	DryRun bool
}

// ApplyResult says what Apply changed.
type ApplyResult = wire.APIApplyResult

// ApplyTimeout is how long Apply waits for the controller when ctx has no
// deadline: 10 s, plus 50 ms for each deployment or graph past the first
// (60 s for 1,000), the time the controller gives itself to write them.
func ApplyTimeout(cfg *Config) time.Duration {
	return wire.APITimeout(len(cfg.Deployments) + len(cfg.Graphs))
}

// Apply makes the cluster's deployments match cfg: it creates and updates
// what cfg lists and, with Prune, deletes the rest. The controller
// validates the whole file before writing anything, so a file with an
// error changes nothing; errors name the file and line.
func (c *Client) Apply(ctx context.Context, cfg *Config, opts ApplyOptions) (*ApplyResult, error) {
	req := wire.APIApplyRequest{Prune: opts.Prune, DryRun: opts.DryRun}
	lines := map[string]int{}
	for _, d := range cfg.Deployments {
		b, err := json.Marshal(d.Spec)
		if err != nil {
			return nil, err
		}
		req.Deployments = append(req.Deployments, b)
		lines[d.Spec.Name] = d.Line
	}
	for _, g := range cfg.Graphs {
		b, err := json.Marshal(g.Spec)
		if err != nil {
			return nil, err
		}
		req.Graphs = append(req.Graphs, b)
		lines[g.Spec.Name] = g.Line
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, ApplyTimeout(cfg))
		defer cancel()
	}
	var res ApplyResult
	if err := c.api(ctx, wire.APIApply, req, &res); err != nil {
		// The controller names the deployment or graph an error is about.
		var ae *apiErr
		if errors.As(err, &ae) {
			if line, ok := lines[ae.name]; ok && ae.name != "" {
				return nil, &FieldError{File: cfg.File, Line: line, Err: ae}
			}
		}
		return nil, err
	}
	return &res, nil
}
