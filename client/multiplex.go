package client

import (
	"context"
	"errors"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/natserve/natserve/internal/wire"
)

// HandleOption changes a handle; see Handle.Options.
type HandleOption func(*Handle)

// MultiplexedModelID makes the handle's calls ask for model id of a
// multiplexed deployment (Ray Serve's handle.options(multiplexed_model_id=id)):
// they go to a replica that holds the model when one does.
func MultiplexedModelID(id string) HandleOption { return func(h *Handle) { h.model = id } }

// Options returns a copy of h with opts applied.
func (h *Handle) Options(opts ...HandleOption) *Handle {
	h2 := *h
	for _, o := range opts {
		o(&h2)
	}
	return &h2
}

// MultiplexedModelID returns the model id the handle's calls ask for, or "".
func (h *Handle) MultiplexedModelID() string { return h.model }

// MultiplexMatchTimeout is how long a call for a model keeps retrying the
// busy replicas that hold it (or have a free slot) before it takes any
// replica, which then loads the model (Ray Serve's 1 s matching timeout).
const MultiplexMatchTimeout = time.Second

// probeKey marks the context of a RequestMsg that tries a multiplexing
// subject: no responders fails at once (no wake), and busy replicas are
// retried for MultiplexMatchTimeout only.
const probeKey ctxKey = 1

type probe struct{ until time.Time }

// probeOf returns the probe ctx carries, or nil; only RequestMsg's failure
// paths ask.
func probeOf(ctx context.Context) *probe {
	p, _ := ctx.Value(probeKey).(*probe)
	return p
}

// RequestModel is RequestMsg for a call that asks for model of a
// multiplexed deployment. With no central router, the NATS subjects route:
// it tries the replicas that hold the model (wire.ModelSubject), then those
// with a free model slot (wire.FreeSlotSubject), so that models do not
// thrash between replicas, then any replica of the deployment, which
// evicts its least recently used model to load this one.
func (c *Client) RequestModel(ctx context.Context, deadline time.Time, deployment, method, model string, msg *nats.Msg) (*nats.Msg, error) {
	var md wire.RequestMeta
	extra, err := metaFromHeader(msg.Header, &md)
	if err != nil {
		return nil, &Error{Deployment: deployment, Method: method, Code: string(wire.CodeBadRequest), Message: err.Error()}
	}
	md.ModelID = model
	return c.requestModel(ctx, deadline, deployment, method, &md, msg, extra)
}

// requestModel is RequestModel for md.ModelID; it sets msg's subject.
func (c *Client) requestModel(ctx context.Context, deadline time.Time, deployment, method string, md *wire.RequestMeta, msg *nats.Msg, extra nats.Header) (*nats.Msg, error) {
	model := md.ModelID
	if err := wire.ValidateModelID(model); err != nil {
		return nil, &Error{Deployment: deployment, Method: method, Code: string(wire.CodeBadRequest), Message: err.Error()}
	}
	st := c.muxStats(deployment)
	for i, subject := range []string{wire.ModelSubject(deployment, model), wire.FreeSlotSubject(deployment)} {
		msg.Subject = subject
		reply, err := c.request(context.WithValue(ctx, probeKey, &probe{until: time.Now().Add(MultiplexMatchTimeout)}), deadline, deployment, method, md, msg, extra)
		var ce *Error
		if err != nil && errors.As(err, &ce) && (ce.Code == string(wire.CodeNoReplicas) || ce.Code == string(wire.CodeBusy) && ce.Replica == probeGaveUp) {
			continue
		}
		if i == 0 {
			st.Hits.Add(1)
		} else {
			st.FreeSlot.Add(1)
		}
		return reply, err
	}
	st.Fallback.Add(1)
	msg.Subject = wire.DeploymentSubject(deployment)
	return c.request(ctx, deadline, deployment, method, md, msg, extra)
}

// probeGaveUp marks the busy error of a probe that ran out of time.
const probeGaveUp = "(multiplex probe)"

// MultiplexStats counts how this client's calls for multiplexed models
// were routed: to a replica holding the model (a hit), to one with a free
// model slot, or to any replica (a miss that evicts a model).
type MultiplexStats struct {
	Hits, FreeSlot, Fallback atomic.Int64
}

// HitRate is Hits over all routed calls (0 without calls).
func (s *MultiplexStats) HitRate() float64 {
	h, f, a := s.Hits.Load(), s.FreeSlot.Load(), s.Fallback.Load()
	if h+f+a == 0 {
		return 0
	}
	return float64(h) / float64(h+f+a)
}

// Multiplex returns the routing counters of this client's calls to
// deployment's models.
func (c *Client) Multiplex(deployment string) *MultiplexStats { return c.muxStats(deployment) }

func (c *Client) muxStats(deployment string) *MultiplexStats {
	if s, ok := c.mux.Load(deployment); ok {
		return s.(*MultiplexStats)
	}
	s, _ := c.mux.LoadOrStore(deployment, &MultiplexStats{})
	return s.(*MultiplexStats)
}

// RangeMultiplex calls f with the routing counters of every deployment
// this client called for a multiplexed model (for metrics).
func (c *Client) RangeMultiplex(f func(deployment string, s *MultiplexStats)) {
	c.mux.Range(func(k, v any) bool {
		f(k.(string), v.(*MultiplexStats))
		return true
	})
}
