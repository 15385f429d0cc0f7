package worker

import (
	"encoding/json"
	"errors"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/natserve/natserve/internal/wire"
)

// maxHealthBatch bounds the checks of one batch (a node's replicas).
const maxHealthBatch = 100_000

// onHealth answers the controller's batched health check of this node's
// replicas (wire.HealthBatch) in one message: each replica is pinged over
// its agent link, or over NATS when it has none (adopted, or an older
// program), each within the batch's timeout, all at once.
func (a *Agent) onHealth(m *nats.Msg) {
	var b wire.HealthBatch
	if err := wire.UnmarshalJSON(m.Data, &b); err != nil || len(b.Checks) > maxHealthBatch || b.TimeoutUS <= 0 {
		return // the controller's budget runs out and it pings the replicas itself
	}
	go func() {
		res := a.checkHealth(b)
		body, _ := json.Marshal(res)
		if err := m.Respond(body); err != nil {
			a.log.Warn("answering a health check failed", "err", err)
		}
	}()
}

// checkHealth runs a batch's checks at once: the pings over the links
// first, then one deadline for all their answers; replicas without a link
// are pinged over NATS, each on a goroutine.
func (a *Agent) checkHealth(b wire.HealthBatch) wire.HealthResults {
	timeout := b.Timeout()
	expired := make(chan struct{})
	deadline := time.AfterFunc(timeout, func() { close(expired) })
	defer deadline.Stop()
	res := wire.HealthResults{Results: make([]wire.HealthResult, len(b.Checks))}
	type asked struct {
		r    *wire.HealthResult
		link *agentLink
		id   uint64
		ch   chan linkMsg
	}
	var links []asked
	var wg sync.WaitGroup
	for i, c := range b.Checks {
		r := &res.Results[i]
		r.Replica = c.Replica
		a.mu.Lock()
		p := a.running[c.Replica]
		a.mu.Unlock()
		var link *agentLink
		if p != nil && p.asg.Deployment == c.Deployment {
			p.mu.Lock()
			link = p.link
			p.mu.Unlock()
		}
		if link.said() {
			id, ch, err := link.ask(timeout)
			if err != nil {
				r.Error = err.Error()
				continue
			}
			links = append(links, asked{r, link, id, ch})
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			healthy, why, err := a.pingNATS(c.Deployment, c.Replica, timeout)
			if err != nil {
				r.Error = err.Error()
				return
			}
			r.Answered, r.Healthy, r.Error = true, healthy, why
		}()
	}
	for _, q := range links {
		healthy, why, err := q.link.wait(q.id, q.ch, expired, timeout)
		if err != nil {
			q.r.Error = err.Error()
			continue
		}
		q.r.Answered, q.r.Healthy, q.r.Error = true, healthy, why
	}
	wg.Wait()
	return res
}

// pingNATS pings one replica over NATS (one without a link: adopted, or
// a program built with an older SDK), as the controller did before
// batching.
func (a *Agent) pingNATS(deployment, replica string, timeout time.Duration) (healthy bool, why string, err error) {
	var st ReplicaStatus
	ping := &nats.Msg{Subject: wire.ReplicaSubject(deployment, replica, wire.VerbPing), Header: nats.Header{wire.HeaderTimeout: {wire.FormatTimeout(timeout)}}}
	m, err := a.nc.RequestMsg(ping, timeout)
	if err != nil {
		return false, "", err
	}
	if err := wire.UnmarshalJSON(m.Data, &st); err != nil {
		return false, "", errors.New("bad reply: " + err.Error())
	}
	return st.Healthy, st.Error, nil
}
