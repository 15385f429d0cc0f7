package worker

import (
	"encoding/json"
	"fmt"
	"time"

	natsjwt "github.com/nats-io/jwt/v2"
	"github.com/natserve/natserve/client"
	"github.com/natserve/natserve/internal/natsconn"
	"github.com/natserve/natserve/internal/tracing"
	"github.com/natserve/natserve/internal/wire"
)

// ReplicaSpec is everything one replica process needs to know. The node
// agent passes it to the re-executed program as JSON on its standard input
// (an inherited pipe): never in argv or the environment, where other
// processes of the user could read the credentials, and where a large spec
// would overflow the size limit.
type ReplicaSpec struct {
	Deployment string `json:"deployment"`
	Class      string `json:"class"`
	Replica    string `json:"replica"`
	Version    string `json:"version,omitempty"`
	Node       string `json:"node,omitempty"`
	// InitArgs is a JSON array of constructor arguments.
	InitArgs json.RawMessage `json:"init_args,omitempty"`
	// UserConfig is passed to Reconfigure before the replica serves.
	UserConfig json.RawMessage `json:"user_config,omitempty"`
	// Batching tunes the class's batched methods (the deployment's
	// batching block). Default: the values the class registered.
	Batching map[string]client.BatchConfig `json:"batching,omitempty"`
	// MaxOngoingRequests bounds the calls running at once. Default: 5.
	MaxOngoingRequests int `json:"max_ongoing_requests,omitempty"`
	// GracefulShutdownTimeoutS bounds the drain on stop. Default: 20.
	GracefulShutdownTimeoutS float64 `json:"graceful_shutdown_timeout_s,omitempty"`
	// IdempotentMethods lists the methods a caller may send again when this
	// replica dies holding the request ("Call" for the default method,
	// "*" for all). Default: none.
	IdempotentMethods []string `json:"idempotent_methods,omitempty"`
	// NATSURL is the broker (comma-separated for a cluster).
	NATSURL string `json:"nats_url"`
	// Metrics turns on the replica's Prometheus metrics (and the stats it
	// reports to `nats micro stats`); its node agent exports them. Default: false.
	Metrics bool `json:"metrics,omitempty"`
	// NATSCAFile, NATSCertFile and NATSKeyFile are the TLS files of the
	// replica's connection: the CA of the broker's certificate, and a client
	// certificate and key for a broker that verifies clients. Default: "" (plain TCP).
	NATSCAFile   string `json:"nats_ca_file,omitempty"`
	NATSCertFile string `json:"nats_cert_file,omitempty"`
	NATSKeyFile  string `json:"nats_key_file,omitempty"`
	// AgentPID is the node agent that started the replica; when it is gone
	// and no agent adopts the replica for OrphanTimeoutS, the replica drains
	// and exits. 0: no agent watched. Default: 0.
	AgentPID int `json:"agent_pid,omitempty"`
	// AgentLinkFD is the file descriptor of the replica's end of its
	// agent link (link.go): health pings and readiness without the broker.
	// Default: 0 (none).
	AgentLinkFD int `json:"agent_link_fd,omitempty"`
	// OrphanTimeoutS is how long the replica outlives its agent (unadopted)
	// or its NATS connection. Default: 300.
	OrphanTimeoutS float64 `json:"orphan_timeout_s,omitempty"`
	// OTLPEndpoint is the OTLP/HTTP traces URL the replica exports spans
	// to; "" turns tracing off. Default: "".
	OTLPEndpoint string `json:"otlp_endpoint,omitempty"`
	// Creds are the NATS credentials (the text of a .creds file) of the
	// deployment's replica identity; empty on a broker without auth.
	Creds string `json:"creds,omitempty"`
}

func (s *ReplicaSpec) tls() natsconn.TLS {
	return natsconn.TLS{CAFile: s.NATSCAFile, CertFile: s.NATSCertFile, KeyFile: s.NATSKeyFile}
}

// MaxSpecBytes bounds the spec a replica reads from its standard input.
const MaxSpecBytes = 64 << 20

// Normalize fills defaults (client's, the one place they are defined) and
// validates s.
func (s *ReplicaSpec) Normalize() error {
	if s.MaxOngoingRequests == 0 {
		s.MaxOngoingRequests = client.DefaultMaxOngoingRequests
	}
	if s.GracefulShutdownTimeoutS == 0 {
		s.GracefulShutdownTimeoutS = client.DefaultGracefulShutdownTimeoutS
	}
	for _, n := range []struct{ what, v string }{{"deployment name", s.Deployment}, {"class name", s.Class}, {"replica id", s.Replica}} {
		if err := wire.ValidateName(n.what, n.v); err != nil {
			return fmt.Errorf("%w: %w", ErrSpec, err)
		}
	}
	if s.MaxOngoingRequests < 1 || s.MaxOngoingRequests > client.MaxOngoingRequestsLimit {
		return fmt.Errorf("%w: max_ongoing_requests %d is out of range (1 to %d)", ErrSpec, s.MaxOngoingRequests, client.MaxOngoingRequestsLimit)
	}
	if s.GracefulShutdownTimeoutS < 0 {
		return fmt.Errorf("%w: graceful_shutdown_timeout_s %v is negative", ErrSpec, s.GracefulShutdownTimeoutS)
	}
	if s.OrphanTimeoutS < 0 {
		return fmt.Errorf("%w: orphan_timeout_s %v is negative", ErrSpec, s.OrphanTimeoutS)
	}
	if s.NATSURL == "" {
		return fmt.Errorf("%w: nats_url is required", ErrSpec)
	}
	if err := s.tls().Validate(); err != nil {
		return fmt.Errorf("%w: %w", ErrSpec, err)
	}
	if s.OTLPEndpoint != "" {
		if _, err := tracing.TracesURL(s.OTLPEndpoint); err != nil {
			return fmt.Errorf("%w: otlp_endpoint: %w", ErrSpec, err)
		}
	}
	return nil
}

func (s *ReplicaSpec) orphanTimeout() time.Duration {
	if s.OrphanTimeoutS == 0 {
		return DefaultOrphanTimeout
	}
	return time.Duration(s.OrphanTimeoutS * float64(time.Second))
}

func (s *ReplicaSpec) gracefulTimeout() time.Duration {
	return time.Duration(s.GracefulShutdownTimeoutS * float64(time.Second))
}

// ReplicaStatus is a replica's answer to a ping.
type ReplicaStatus = wire.ReplicaStatus

// parseCreds returns the user JWT and seed of a creds file's text.
func parseCreds(creds string) (jwt, seed string, err error) {
	tok, err := natsjwt.ParseDecoratedJWT([]byte(creds))
	if err != nil {
		return "", "", err
	}
	kp, err := natsjwt.ParseDecoratedNKey([]byte(creds))
	if err != nil {
		return "", "", err
	}
	s, err := kp.Seed()
	if err != nil {
		return "", "", err
	}
	return tok, string(s), nil
}
