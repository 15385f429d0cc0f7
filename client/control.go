package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/natserve/natserve/internal/wire"
)

// Control-plane errors; match with errors.Is.
var (
	// ErrNotFound: no deployment of that name.
	ErrNotFound = errors.New("deployment not found")
	// ErrUnknownClass: no node provides the class.
	ErrUnknownClass = errors.New("unknown class")
	// ErrConflict: the deployment changed concurrently, or a route prefix is taken.
	ErrConflict = errors.New("conflict")
	// ErrNoController: no controller answered.
	ErrNoController = errors.New("no controller is running")
	// ErrDeployFailed: the deployment reached DEPLOY_FAILED.
	ErrDeployFailed = errors.New("deploy failed")
)

func (c *Client) api(ctx context.Context, verb string, req, out any) error {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
	}
	var body []byte
	if req != nil {
		var err error
		if body, err = json.Marshal(req); err != nil {
			return fmt.Errorf("%s: encoding the request: %w", verb, err)
		}
	}
	// The controller may be changing leaders: retry "no responders" and
	// "not leader" briefly.
	for {
		m, err := c.nc.RequestWithContext(ctx, wire.APISubject(verb), body)
		// One pass over the reply: its data decodes straight into out.
		rep := apiReply{Data: out}
		if out == nil {
			rep.Data = new(json.RawMessage)
		}
		if err == nil {
			if derr := json.Unmarshal(m.Data, &rep); derr != nil {
				var plain wire.APIReply
				if json.Unmarshal(m.Data, &plain) != nil {
					return fmt.Errorf("%s: %w: reply is not JSON: %v", verb, ErrProtocol, derr)
				}
				if plain.Code == "" {
					return fmt.Errorf("%s: %w: %v", verb, ErrProtocol, derr)
				}
				rep = apiReply{Error: plain.Error, Code: plain.Code, Name: plain.Name}
			}
		}
		if errors.Is(err, nats.ErrNoResponders) || (err == nil && rep.Code == wire.APINotLeader) {
			select {
			case <-time.After(100 * time.Millisecond):
				continue
			case <-ctx.Done():
				return fmt.Errorf("%s: %w (nothing answered on %s)", verb, ErrNoController, wire.APISubject(verb))
			}
		}
		if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, nats.ErrTimeout) {
			return fmt.Errorf("%s: %w: no reply before the deadline", verb, ErrNoController)
		}
		if err != nil {
			return fmt.Errorf("%s: %w", verb, err)
		}
		if rep.Code != "" {
			return apiError(wire.APIReply{Error: rep.Error, Code: rep.Code, Name: rep.Name})
		}
		return nil
	}
}

// apiReply is wire.APIReply with its data decoded in the same pass, into
// what Data points to (nil: skipped).
type apiReply struct {
	Data  any          `json:"data,omitempty"`
	Error string       `json:"error,omitempty"`
	Code  wire.APICode `json:"code,omitempty"`
	Name  string       `json:"name,omitempty"`
}

// apiSentinels maps the control API's error codes to the errors callers
// match with errors.Is.
var apiSentinels = map[wire.APICode]error{
	wire.APINotFound:     ErrNotFound,
	wire.APIInvalid:      ErrInvalidSpec,
	wire.APIInvalidGraph: ErrInvalidGraph,
	wire.APIConflict:     ErrConflict,
	wire.APIUnknownClass: ErrUnknownClass,
}

func apiError(rep wire.APIReply) error {
	sentinel, ok := apiSentinels[rep.Code]
	if !ok {
		return errors.New(rep.Error)
	}
	return &apiErr{msg: rep.Error, sentinel: sentinel, name: rep.Name}
}

type apiErr struct {
	msg      string
	sentinel error
	name     string // the deployment or graph the error is about, when the controller said
}

func (e *apiErr) Error() string { return e.msg }
func (e *apiErr) Unwrap() error { return e.sentinel }

// Deploy creates or updates a deployment (the seed's
// Deployment.options(...).deploy(...)). It returns once the controller has
// accepted the spec; use WaitHealthy to wait for the replicas. A NumReplicas
// of 0 means the default, 1, as Ray Serve refuses num_replicas=0; scale to
// zero with Scale.
func (c *Client) Deploy(ctx context.Context, spec DeploymentSpec) (*Deployment, error) {
	if spec.NumReplicas == 0 {
		spec.NumReplicas = DefaultNumReplicas
	}
	if err := spec.Normalize(); err != nil {
		return nil, err
	}
	var d Deployment
	if err := c.api(ctx, wire.APIDeploy, spec, &d); err != nil {
		return nil, err
	}
	return &d, nil
}

// DeployGraph creates or updates a deployment graph: a deployment for each
// bound class and function, and the graph itself, reachable by name
// through handles and over HTTP at its route prefix.
func (c *Client) DeployGraph(ctx context.Context, g GraphSpec) (*Deployment, error) {
	if err := g.Normalize(); err != nil {
		return nil, err
	}
	var d Deployment
	if err := c.api(ctx, wire.APIGraph, g, &d); err != nil {
		return nil, err
	}
	return &d, nil
}

// Delete deletes a deployment, or a graph and the deployments it made;
// replicas drain and stop.
func (c *Client) Delete(ctx context.Context, name string) error {
	return c.api(ctx, wire.APIDelete, wire.APIName{Name: name}, nil)
}

// List returns every deployment, sorted by name (serve.list_deployments()).
func (c *Client) List(ctx context.Context) ([]Deployment, error) {
	var ds []Deployment
	err := c.api(ctx, wire.APIList, nil, &ds)
	return ds, err
}

// Get returns one deployment (serve.get_deployment(name)).
func (c *Client) Get(ctx context.Context, name string) (*Deployment, error) {
	var d Deployment
	if err := c.api(ctx, wire.APIGet, wire.APIName{Name: name}, &d); err != nil {
		return nil, err
	}
	return &d, nil
}

// Scale sets a deployment's replica count.
func (c *Client) Scale(ctx context.Context, name string, numReplicas int) error {
	return c.api(ctx, wire.APIScale, wire.APIScaleRequest{Name: name, NumReplicas: numReplicas}, nil)
}

// Status returns deployments, nodes and the leading controller.
func (c *Client) Status(ctx context.Context) (*ClusterStatus, error) {
	var s ClusterStatus
	if err := c.api(ctx, wire.APIStatus, nil, &s); err != nil {
		return nil, err
	}
	return &s, nil
}

// WaitHealthy polls the deployment until it is HEALTHY with every replica
// current, or DEPLOY_FAILED (ErrDeployFailed with the controller's message),
// or ctx ends. progress, if not nil, is called on every change.
func (c *Client) WaitHealthy(ctx context.Context, name string, progress func(*Deployment)) (*Deployment, error) {
	var last string
	for {
		d, err := c.Get(ctx, name)
		if err != nil {
			return nil, err
		}
		key := fmt.Sprintf("%s %d/%d %d", d.Status, d.Ready, d.Target, len(d.Replicas))
		if progress != nil && key != last {
			progress(d)
		}
		last = key
		switch {
		case d.Status == StatusDeployFailed:
			return d, fmt.Errorf("%s: %w: %s", name, ErrDeployFailed, d.Message)
		case d.Status == StatusHealthy && d.Ready == d.Target && (len(d.Replicas) == d.Target || d.Spec.Class == "graph"):
			return d, nil
		}
		select {
		case <-time.After(100 * time.Millisecond):
		case <-ctx.Done():
			return d, fmt.Errorf("%s: waiting for HEALTHY (now %s, %d/%d ready): %w", name, d.Status, d.Ready, d.Target, ctx.Err())
		}
	}
}
