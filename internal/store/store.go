// Package store holds the control plane's state in JetStream key-value
// buckets: it creates and opens the buckets (their names and keys are
// internal/wire's), defines the records the controller and the node agents
// keep in them (Assignment, ReplicaState, Node, Lease), and gives typed,
// compare-and-set access. Each key has one writer; the table of buckets,
// keys, records and writers is in internal/wire's kv.go. The user SDK
// (client) does not use this package: it reads the buckets it needs through
// wire's names.
package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/natserve/natserve/client"
	"github.com/natserve/natserve/internal/natsconn"
	"github.com/natserve/natserve/internal/wire"
)

// Config sets how buckets are created.
type Config struct {
	// Replicas is the JetStream replication factor (3 in a cluster). Default: 1.
	Replicas int
	// LeaseTTL is how long a controller lease lives without renewal. Default: 6s.
	LeaseTTL time.Duration
	// OpenOnly opens buckets and never creates them (roles other than the
	// controller may not): Open retries until they exist. Default: false.
	OpenOnly bool
	// Only lists the buckets to open; the others stay nil. Default: all.
	Only []string
}

// Buckets are the opened buckets.
type Buckets struct {
	Deployments jetstream.KeyValue
	Assignments jetstream.KeyValue
	Replicas    jetstream.KeyValue
	Nodes       jetstream.KeyValue
	Leader      jetstream.KeyValue
	Graphs      jetstream.KeyValue
	Routes      jetstream.KeyValue
}

// Open creates the buckets that do not exist yet (with cfg) and opens them.
func Open(ctx context.Context, js jetstream.JetStream, cfg Config) (*Buckets, error) {
	if cfg.Replicas == 0 {
		cfg.Replicas = 1
	}
	if cfg.LeaseTTL == 0 {
		cfg.LeaseTTL = 6 * time.Second
	}
	open := func(name string, history uint8, ttl time.Duration) (jetstream.KeyValue, error) {
		if cfg.Only != nil && !slices.Contains(cfg.Only, name) {
			return nil, nil
		}
		kv, err := js.KeyValue(ctx, name)
		if err == nil {
			return kv, nil
		}
		if !errors.Is(err, jetstream.ErrBucketNotFound) || cfg.OpenOnly {
			return nil, fmt.Errorf("store: opening bucket %s: %w", name, err)
		}
		kv, err = js.CreateKeyValue(ctx, jetstream.KeyValueConfig{
			Bucket: name, History: history, TTL: ttl, Replicas: cfg.Replicas, Storage: jetstream.FileStorage,
		})
		if errors.Is(err, jetstream.ErrBucketExists) {
			return js.KeyValue(ctx, name)
		}
		if err != nil {
			return nil, fmt.Errorf("store: creating bucket %s: %w", name, err)
		}
		return kv, nil
	}
	var b Buckets
	var err error
	if b.Deployments, err = open(wire.BucketDeployments, 5, 0); err != nil {
		return nil, err
	}
	if b.Assignments, err = open(wire.BucketAssignments, 1, 0); err != nil {
		return nil, err
	}
	if b.Replicas, err = open(wire.BucketReplicas, 1, 0); err != nil {
		return nil, err
	}
	if b.Nodes, err = open(wire.BucketNodes, 1, 0); err != nil {
		return nil, err
	}
	if b.Leader, err = open(wire.BucketLeader, 1, cfg.LeaseTTL); err != nil {
		return nil, err
	}
	if b.Graphs, err = open(wire.BucketGraphs, 5, 0); err != nil {
		return nil, err
	}
	if b.Routes, err = open(wire.BucketRoutes, 1, 0); err != nil {
		return nil, err
	}
	return &b, nil
}

// OpenRetry is Open, retried with natsconn.Backoff (each attempt bounded to
// 10s) until it succeeds or ctx ends; log gets each failure. The broker may
// still be electing a JetStream leader when a process starts.
func OpenRetry(ctx context.Context, js jetstream.JetStream, cfg Config, log *slog.Logger) (*Buckets, error) {
	var retry natsconn.Backoff
	for {
		octx, cancel := context.WithTimeout(ctx, 10*time.Second)
		b, err := Open(octx, js, cfg)
		cancel()
		if err == nil {
			return b, nil
		}
		if ctx.Err() == nil {
			log.Warn("opening the store failed; retrying", "err", err)
		}
		if !retry.Wait(ctx) {
			return nil, err
		}
	}
}

// Desired states of an assignment.
const (
	DesiredRun  = "run"  // keep the replica running
	DesiredStop = "stop" // drain it (SIGTERM), then the record is deleted
	DesiredKill = "kill" // kill it at once (SIGKILL): it failed its health checks
)

// Assignment places one replica on one node.
type Assignment struct {
	Replica    string          `json:"replica"`
	Node       string          `json:"node"`
	Deployment string          `json:"deployment"`
	Class      string          `json:"class"`
	InitArgs   json.RawMessage `json:"init_args,omitempty"`
	UserConfig json.RawMessage `json:"user_config,omitempty"`
	Version    string          `json:"version,omitempty"`
	// Batching is the deployment's batching block.
	Batching map[string]client.BatchConfig `json:"batching,omitempty"`
	// CodeHash identifies everything that needs a restart to change.
	CodeHash string `json:"code_hash"`
	// ConfigHash identifies the user_config the replica should have.
	ConfigHash               string    `json:"config_hash"`
	MaxOngoingRequests       int       `json:"max_ongoing_requests"`
	IdempotentMethods        []string  `json:"idempotent_methods,omitempty"`
	GracefulShutdownTimeoutS float64   `json:"graceful_shutdown_timeout_s"`
	Desired                  string    `json:"desired"`
	Created                  time.Time `json:"created"`
	// Creds are the NATS credentials of the deployment's replica identity,
	// minted by the controller; only it and this node's agent may read
	// the record.
	Creds string `json:"creds,omitempty"`
}

// Key is the assignment's key.
func (a *Assignment) Key() string { return wire.AssignmentKey(a.Node, a.Replica) }

// ReplicaState is what a node agent observes of one replica.
type ReplicaState struct {
	Replica    string    `json:"replica"`
	Node       string    `json:"node"`
	Deployment string    `json:"deployment"`
	PID        int       `json:"pid,omitempty"`
	State      string    `json:"state"`               // wire.Replica* states
	ExitCode   int       `json:"exit_code,omitempty"` // wire.Exit* codes
	Error      string    `json:"error,omitempty"`
	CodeHash   string    `json:"code_hash"`
	ConfigHash string    `json:"config_hash"`
	Started    time.Time `json:"started,omitzero"`
	Updated    time.Time `json:"updated"`
	// EarlyExit: it failed before it ever served (exec failure, bad spec,
	// constructor, crash or no answer while starting); the controller
	// counts these against max_constructor_retry_count.
	EarlyExit bool `json:"early_exit,omitempty"`
}

// Node is a node agent's heartbeat record.
type Node struct {
	Name    string   `json:"name"`
	Host    string   `json:"host"`
	PID     int      `json:"pid"`
	Classes []string `json:"classes"`
	// Methods lists each class's handle-callable methods.
	Methods map[string][]string `json:"methods,omitempty"`
	// MaxReplicas caps the replica processes on the node; 0 is no cap (an
	// agent from before caps).
	MaxReplicas int       `json:"max_replicas,omitempty"`
	Started     time.Time `json:"started"`
	Heartbeat   time.Time `json:"heartbeat"`
}

// Lease is the controller lease.
type Lease struct {
	Holder  string    `json:"holder"`
	Host    string    `json:"host"`
	PID     int       `json:"pid"`
	Renewed time.Time `json:"renewed"`
}

// Put writes v as JSON under key, unconditionally.
func Put(ctx context.Context, kv jetstream.KeyValue, key string, v any) (uint64, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return 0, err
	}
	return kv.Put(ctx, key, b)
}

// Update writes v under key if the key's revision is still rev (0: only if
// the key does not exist). It returns jetstream.ErrKeyExists on a conflict.
func Update(ctx context.Context, kv jetstream.KeyValue, key string, v any, rev uint64) (uint64, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return 0, err
	}
	if rev == 0 {
		return kv.Create(ctx, key, b)
	}
	return kv.Update(ctx, key, b, rev)
}

// Get reads key into v and returns its revision.
func Get(ctx context.Context, kv jetstream.KeyValue, key string, v any) (uint64, error) {
	e, err := kv.Get(ctx, key)
	if err != nil {
		return 0, err
	}
	if err := json.Unmarshal(e.Value(), v); err != nil {
		return 0, fmt.Errorf("store: %s/%s: %w", kv.Bucket(), key, err)
	}
	return e.Revision(), nil
}
