package client

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strings"

	"github.com/natserve/natserve/internal/wire"
)

// ErrInvalidSpec is returned (wrapped) for a deployment spec that cannot be
// applied; the message names the field.
var ErrInvalidSpec = errors.New("invalid deployment spec")

// Deployment defaults, as in Ray Serve. This is the one place they are
// defined: the controller, the node agent and the replicas use these.
const (
	DefaultNumReplicas              = 1
	DefaultMaxOngoingRequests       = 5
	DefaultMaxQueuedRequests        = -1
	DefaultGracefulShutdownTimeoutS = 20.0
	DefaultHealthCheckPeriodS       = 10.0
	DefaultHealthCheckTimeoutS      = 30.0
	DefaultMaxConstructorRetryCount = 20
	DefaultMaxAttempts              = 3
	DefaultMaxStoredRequests        = 100000
)

// Bounds a spec must keep, so that no spec starts a process storm or hands a
// replica something it refuses (a replica checks the same bounds).
const (
	// MaxNumReplicas bounds num_replicas and autoscaling_config.max_replicas.
	MaxNumReplicas = 1000
	// MaxOngoingRequestsLimit bounds max_ongoing_requests.
	MaxOngoingRequestsLimit = 1 << 20
	// MaxReplicaArgsBytes bounds init_args and user_config together, as
	// compact JSON with HTML escaping (how the node agent passes them on):
	// the replica spec must fit in one environment variable (128 KiB).
	MaxReplicaArgsBytes = 96 << 10
)

// DeploymentSpec is the desired state of one deployment. Field names follow
// Ray Serve's options.
type DeploymentSpec struct {
	// Name is unique; it is the handle name and the default route prefix.
	Name string `json:"name"`
	// Class is a class (or function) a node's program registered.
	Class string `json:"class"`
	// InitArgs is a JSON array passed to the constructor.
	InitArgs json.RawMessage `json:"init_args,omitempty"`
	// NumReplicas is the replica count. Default: 1.
	NumReplicas int `json:"num_replicas"`
	// RoutePrefix is where the ingress serves the deployment. nil means
	// "/"+Name; a pointer to "" means not exposed over HTTP.
	RoutePrefix *string `json:"route_prefix"`
	// MaxOngoingRequests bounds the calls one replica runs at once. Default: 5.
	MaxOngoingRequests int `json:"max_ongoing_requests"`
	// MaxQueuedRequests bounds the requests each caller holds waiting for a
	// free replica; -1 is no limit. Default: -1.
	MaxQueuedRequests int `json:"max_queued_requests"`
	// UserConfig is passed to the class's Reconfigure; changing it alone
	// reconfigures replicas in place.
	UserConfig json.RawMessage `json:"user_config,omitempty"`
	// GracefulShutdownTimeoutS bounds a replica's drain. Default: 20.
	GracefulShutdownTimeoutS float64 `json:"graceful_shutdown_timeout_s"`
	// HealthCheckPeriodS is the time between health checks. Default: 10.
	HealthCheckPeriodS float64 `json:"health_check_period_s"`
	// HealthCheckTimeoutS bounds one health check. Default: 30.
	HealthCheckTimeoutS float64 `json:"health_check_timeout_s"`
	// MaxConstructorRetryCount bounds constructor retries before
	// DEPLOY_FAILED; the limit is min(num_replicas*3, this). Default: 20.
	MaxConstructorRetryCount int `json:"max_constructor_retry_count"`
	// IdempotentMethods lists the methods that may run twice: a request one
	// of them that a replica acknowledged and then died holding is sent
	// again instead of failing with replica_died. "Call" names the default
	// method (HTTP requests), "*" all methods. Changing it restarts the
	// replicas. Default: none.
	IdempotentMethods []string `json:"idempotent_methods,omitempty"`
	// Version labels the code; changing it rolls the replicas. Default: "".
	Version string `json:"version,omitempty"`
	// AutoscalingConfig turns on autoscaling; NumReplicas is then ignored.
	// Default: none.
	AutoscalingConfig *AutoscalingConfig `json:"autoscaling_config,omitempty"`
	// Batching tunes the class's batched methods, by method name; a
	// change is applied in place. Default: the values the class registered.
	Batching map[string]BatchConfig `json:"batching,omitempty"`
	// MaxAttempts bounds how often a stored (asynchronous) request runs
	// before it ends as failed with its last error. Default: 3.
	MaxAttempts int `json:"max_attempts,omitempty"`
	// MaxStoredRequests caps the deployment's stored requests, queued and
	// running; a submission over it gets 429. Default: 100000.
	MaxStoredRequests int `json:"max_stored_requests,omitempty"`
	// CallbackURLs allow-lists the URLs a stored request may name in
	// Natserve-Callback (http or https; a URL is allowed when it starts
	// with one of these). Default: none (NATS subjects only).
	CallbackURLs []string `json:"callback_urls,omitempty"`
}

// CallbackAllowed reports whether a stored request of this deployment may
// name url as its callback.
func (s *DeploymentSpec) CallbackAllowed(url string) bool {
	for _, p := range s.CallbackURLs {
		if p != "" && strings.HasPrefix(url, p) {
			return true
		}
	}
	return false
}

// IsCallbackURL reports whether a callback is a URL rather than a NATS
// subject.
func IsCallbackURL(s string) bool {
	return strings.HasPrefix(s, "http://") || strings.HasPrefix(s, "https://")
}

// Autoscaled reports whether the controller chooses the replica count.
func (s *DeploymentSpec) Autoscaled() bool { return s.AutoscalingConfig != nil }

// Route returns the route prefix and whether the deployment is on HTTP.
func (s *DeploymentSpec) Route() (string, bool) {
	if s.RoutePrefix == nil {
		return "/" + s.Name, true
	}
	return *s.RoutePrefix, *s.RoutePrefix != ""
}

// Normalize fills defaults and validates the spec. Every error names the
// field (a *FieldError) and wraps ErrInvalidSpec.
func (s *DeploymentSpec) Normalize() error {
	bad := func(field, format string, args ...any) error {
		return fmt.Errorf("%w: %w", ErrInvalidSpec, &FieldError{Name: s.Name, Path: field, Err: fmt.Errorf(format, args...)})
	}
	if err := wire.ValidateName("deployment name", s.Name); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidSpec, &FieldError{Path: "name", Err: err})
	}
	if s.Class == "" {
		return bad("class", "is required")
	}
	if err := wire.ValidateName("class name", s.Class); err != nil {
		return bad("class", "%v", err)
	}
	for _, m := range s.IdempotentMethods {
		if m == "*" {
			continue
		}
		if err := wire.ValidateMethod(m); err != nil || m == "" {
			return bad("idempotent_methods", "%q is not a method name", m)
		}
	}
	if len(s.InitArgs) > 0 {
		if t := bytes.TrimSpace(s.InitArgs); len(t) == 0 || (t[0] != '[' && string(t) != "null") || !json.Valid(t) {
			return bad("init_args", "must be a JSON array")
		}
	}
	if len(s.UserConfig) > 0 && !json.Valid(s.UserConfig) {
		return bad("user_config", "must be valid JSON")
	}
	if s.NumReplicas < 0 {
		return bad("num_replicas", "%d is negative", s.NumReplicas)
	}
	if s.NumReplicas > MaxNumReplicas {
		return bad("num_replicas", "%d is more than %d", s.NumReplicas, MaxNumReplicas)
	}
	if n := ReplicaArgsSize(s.InitArgs, s.UserConfig); n > MaxReplicaArgsBytes {
		return bad("init_args", "init_args and user_config take %d bytes together, more than %d", n, MaxReplicaArgsBytes)
	}
	if s.RoutePrefix == nil {
		p := "/" + s.Name
		s.RoutePrefix = &p
	}
	if p := *s.RoutePrefix; p != "" {
		if err := ValidateRoutePrefix(p); err != nil {
			return bad("route_prefix", "%v", err)
		}
	}
	setInt := func(v *int, d int) {
		if *v == 0 {
			*v = d
		}
	}
	setFloat := func(v *float64, d float64) {
		if *v == 0 {
			*v = d
		}
	}
	setInt(&s.MaxOngoingRequests, DefaultMaxOngoingRequests)
	setInt(&s.MaxQueuedRequests, DefaultMaxQueuedRequests)
	setInt(&s.MaxConstructorRetryCount, DefaultMaxConstructorRetryCount)
	setInt(&s.MaxAttempts, DefaultMaxAttempts)
	setInt(&s.MaxStoredRequests, DefaultMaxStoredRequests)
	setFloat(&s.GracefulShutdownTimeoutS, DefaultGracefulShutdownTimeoutS)
	setFloat(&s.HealthCheckPeriodS, DefaultHealthCheckPeriodS)
	setFloat(&s.HealthCheckTimeoutS, DefaultHealthCheckTimeoutS)
	switch {
	case s.MaxOngoingRequests < 1 || s.MaxOngoingRequests > MaxOngoingRequestsLimit:
		return bad("max_ongoing_requests", "%d is out of range (1 to %d)", s.MaxOngoingRequests, MaxOngoingRequestsLimit)
	case s.MaxQueuedRequests < -1:
		return bad("max_queued_requests", "%d must be -1 (no limit) or at least 0", s.MaxQueuedRequests)
	case s.MaxConstructorRetryCount < 1:
		return bad("max_constructor_retry_count", "%d must be at least 1", s.MaxConstructorRetryCount)
	case s.GracefulShutdownTimeoutS < 0:
		return bad("graceful_shutdown_timeout_s", "%v is negative", s.GracefulShutdownTimeoutS)
	case s.HealthCheckPeriodS < 0.05:
		return bad("health_check_period_s", "%v is below 0.05", s.HealthCheckPeriodS)
	case s.HealthCheckTimeoutS < 0.05:
		return bad("health_check_timeout_s", "%v is below 0.05", s.HealthCheckTimeoutS)
	case s.MaxAttempts < 1 || s.MaxAttempts > 100:
		return bad("max_attempts", "%d is out of range (1 to 100)", s.MaxAttempts)
	case s.MaxStoredRequests < 1:
		return bad("max_stored_requests", "%d must be at least 1", s.MaxStoredRequests)
	case len(s.CallbackURLs) > 64:
		return bad("callback_urls", "%d entries, the limit is 64", len(s.CallbackURLs))
	case len(s.Version) > 128:
		return bad("version", "longer than 128 characters")
	}
	if err := validateBatching(s.Batching, s.MaxOngoingRequests); err != nil {
		return bad("batching", "%v", err)
	}
	for i, u := range s.CallbackURLs {
		if !IsCallbackURL(u) || len(u) > 512 {
			return bad(fmt.Sprintf("callback_urls[%d]", i), "%.60q is not an http:// or https:// URL prefix", u)
		}
	}
	if s.AutoscalingConfig != nil {
		if err := s.AutoscalingConfig.Normalize(); err != nil {
			return bad("autoscaling_config", "%v", err)
		}
	}
	return nil
}

// ReplicaArgsSize is the size of init_args and user_config as the node agent
// passes them to a replica: compact JSON, HTML-escaped.
func ReplicaArgsSize(initArgs, userConfig json.RawMessage) int {
	n := 0
	for _, raw := range []json.RawMessage{initArgs, userConfig} {
		if len(raw) == 0 {
			continue
		}
		b, err := json.Marshal(raw)
		if err != nil {
			return math.MaxInt // not JSON: never passes
		}
		n += len(b)
	}
	return n
}

// ValidateRoutePrefix checks a route prefix by Ray Serve's rules: it
// starts with '/', does not end with '/' (except "/" itself) and holds no
// wildcard ('{' or '}'). See wire.ValidateRoutePrefix.
func ValidateRoutePrefix(p string) error { return wire.ValidateRoutePrefix(p) }
