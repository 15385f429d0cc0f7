package wire

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"unicode/utf8"
)

// Model multiplexing on the wire. A request for model m carries its id in
// HeaderModelID (set from the HTTP header HTTPHeaderModelID or a handle
// option). A replica that holds m also serves ModelSubject(deployment, m),
// and a replica with a free model slot serves FreeSlotSubject(deployment),
// both in the deployment's queue group; callers try them in that order
// before DeploymentSubject.
//
//	natserve.mux.<deployment>.<hash of m>   replicas holding model m
//	natserve.mux.<deployment>.free          replicas with a free model slot
const (
	// HeaderModelID carries the multiplexed model id of a request.
	HeaderModelID = "Natserve-Model-Id"
	// HTTPHeaderModelID is the HTTP request header the ingress reads the
	// model id from (Ray Serve's name).
	HTTPHeaderModelID = "serve_multiplexed_model_id"
	// MaxModelIDLen bounds a model id.
	MaxModelIDLen = 128
)

// ValidateModelID checks a model id taken from outside: 1 to 128 bytes of
// UTF-8 without control characters (it travels in a NATS header).
func ValidateModelID(id string) error {
	switch {
	case id == "":
		return fmt.Errorf("%w: model id must not be empty", ErrInvalidName)
	case len(id) > MaxModelIDLen:
		return fmt.Errorf("%w: model id %.20q… is %d bytes long, the limit is %d", ErrInvalidName, id, len(id), MaxModelIDLen)
	case !utf8.ValidString(id):
		return fmt.Errorf("%w: model id %q is not UTF-8", ErrInvalidName, id)
	}
	for _, c := range id {
		if c < ' ' || c == 0x7f {
			return fmt.Errorf("%w: model id %q holds a control character", ErrInvalidName, id)
		}
	}
	return nil
}

// ModelToken is the subject token of a model id: 24 hex digits of its
// SHA-256. Two ids that share a token share a subject, which costs routing
// precision, not correctness (the replica loads the id it is sent).
func ModelToken(id string) string {
	h := sha256.Sum256([]byte(id))
	return hex.EncodeToString(h[:12])
}

// ModelSubject is the subject the replicas holding model id serve on.
func ModelSubject(deployment, id string) string {
	return subjectRoot + "mux." + deployment + "." + ModelToken(id)
}

// FreeSlotSubject is the subject the replicas of a multiplexed deployment
// with a free model slot serve on.
func FreeSlotSubject(deployment string) string { return subjectRoot + "mux." + deployment + ".free" }

// HeaderBatching carries, on a reconfigure request, the deployment's
// batching block as JSON (absent: unchanged).
const HeaderBatching = "Natserve-Batching"

// muxSubjects is the filter of every multiplexed subject of deployment
// ("*" for every deployment).
func muxSubjects(deployment string) string { return subjectRoot + "mux." + deployment + ".*" }
