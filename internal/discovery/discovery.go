// Package discovery answers the NATS services protocol ($SRV.PING,
// $SRV.INFO and $SRV.STATS, with their name and id variants) for one
// service instance, in the JSON shapes of nats.go's micro package, so that
// the stock `nats micro ls/info/stats` commands list natserve's
// deployments (one service per deployment, its replicas as instances), its
// ingresses and its control API.
//
// It answers the protocol itself instead of using micro.AddService because
// a micro endpoint would add its own subscription and handler in front of
// the request path: the replica already holds the deployment's queue
// subscription, and counts its calls in its Prometheus metrics, from which
// the stats are read when asked. Stats may carry a latency histogram in
// their data field (Latency), which the dashboard merges.
package discovery

import (
	"encoding/json"
	"fmt"
	"math"
	"sort"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"
	"github.com/natserve/natserve/internal/wire"
	dto "github.com/prometheus/client_model/go"
)

// Service describes one instance. Endpoints and Stats are called on each
// INFO and STATS request, from the NATS connection's goroutine.
type Service struct {
	Name        string
	ID          string
	Version     string // semantic version; "0.0.0" when empty or not one
	Description string
	Metadata    map[string]string
	Endpoints   func() []micro.EndpointInfo
	Stats       func() []*micro.EndpointStats

	mu      sync.Mutex // guards subs
	subs    []*nats.Subscription
	started time.Time
}

// Start subscribes to the instance's nine subjects on nc.
func (s *Service) Start(nc *nats.Conn) error {
	if s.Version == "" || !semver(s.Version) {
		s.Version = "0.0.0"
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.started = time.Now().UTC()
	for _, subj := range wire.ServiceSubjects(s.Name, s.ID) {
		sub, err := nc.Subscribe(subj, s.answer)
		if err != nil {
			for _, x := range s.subs {
				_ = x.Unsubscribe()
			}
			s.subs = nil
			return fmt.Errorf("discovery: subscribing to %s: %w", subj, err)
		}
		s.subs = append(s.subs, sub)
	}
	return nil
}

// Stop unsubscribes. Idempotent.
func (s *Service) Stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, x := range s.subs {
		_ = x.Unsubscribe()
	}
	s.subs = nil
}

func (s *Service) identity() micro.ServiceIdentity {
	return micro.ServiceIdentity{Name: s.Name, ID: s.ID, Version: s.Version, Metadata: s.Metadata}
}

func (s *Service) answer(m *nats.Msg) {
	if m.Reply == "" {
		return
	}
	// $SRV.<VERB>[.name[.id]]
	verb := m.Subject[len("$SRV."):]
	for i := 0; i < len(verb); i++ {
		if verb[i] == '.' {
			verb = verb[:i]
			break
		}
	}
	var v any
	switch verb {
	case wire.SrvPing:
		v = micro.Ping{ServiceIdentity: s.identity(), Type: micro.PingResponseType}
	case wire.SrvInfo:
		eps := []micro.EndpointInfo{}
		if s.Endpoints != nil {
			eps = s.Endpoints()
		}
		v = micro.Info{ServiceIdentity: s.identity(), Type: micro.InfoResponseType, Description: s.Description, Endpoints: eps}
	case wire.SrvStats:
		eps := []*micro.EndpointStats{}
		if s.Stats != nil {
			eps = s.Stats()
		}
		s.mu.Lock()
		started := s.started
		s.mu.Unlock()
		v = micro.Stats{ServiceIdentity: s.identity(), Type: micro.StatsResponseType, Started: started, Endpoints: eps}
	default:
		return
	}
	b, err := json.Marshal(v)
	if err != nil {
		return
	}
	_ = m.Respond(b)
}

func semver(v string) bool {
	dots, digits := 0, 0
	for i := 0; i < len(v); i++ {
		switch c := v[i]; {
		case c >= '0' && c <= '9':
			digits++
		case c == '.' && digits > 0:
			dots++
			digits = 0
		case (c == '-' || c == '+') && dots == 2 && digits > 0:
			return true
		default:
			return false
		}
	}
	return dots == 2 && digits > 0
}

// Latency is what natserve puts in an endpoint's stats data: its latency
// histogram (seconds, the bounds of metrics.LatencyBuckets) and its errors
// by code, so that a reader can merge instances and compute rates and
// percentiles.
type Latency struct {
	// Bounds are the buckets' upper bounds; Counts[i] counts observations
	// ≤ Bounds[i] and above the previous bound; the last count is +Inf's.
	Bounds []float64 `json:"bounds"`
	Counts []uint64  `json:"counts"`
	Count  uint64    `json:"count"`
	Sum    float64   `json:"sum"`
	// Errors counts failed requests by error code.
	Errors map[string]uint64 `json:"errors,omitempty"`
}

// FromHistogram fills l's buckets from a Prometheus histogram.
func (l *Latency) FromHistogram(h *dto.Histogram) {
	if h == nil {
		return
	}
	prev := uint64(0)
	l.Bounds, l.Counts = l.Bounds[:0], l.Counts[:0]
	for _, b := range h.GetBucket() {
		if math.IsInf(b.GetUpperBound(), 1) {
			continue
		}
		l.Bounds = append(l.Bounds, b.GetUpperBound())
		l.Counts = append(l.Counts, b.GetCumulativeCount()-prev)
		prev = b.GetCumulativeCount()
	}
	l.Counts = append(l.Counts, h.GetSampleCount()-prev)
	l.Count, l.Sum = h.GetSampleCount(), h.GetSampleSum()
}

// Add adds o's counts into l (same bounds).
func (l *Latency) Add(o *Latency) {
	if len(l.Counts) == 0 {
		l.Bounds = append([]float64(nil), o.Bounds...)
		l.Counts = make([]uint64, len(o.Counts))
	}
	if len(o.Counts) == len(l.Counts) {
		for i, c := range o.Counts {
			l.Counts[i] += c
		}
	}
	l.Count += o.Count
	l.Sum += o.Sum
	for k, v := range o.Errors {
		if l.Errors == nil {
			l.Errors = map[string]uint64{}
		}
		l.Errors[k] += v
	}
}

// Quantile estimates quantile q (0..1) by linear interpolation inside the
// bucket it falls in, as Prometheus's histogram_quantile does; NaN-free:
// 0 with no observations, the highest finite bound for the +Inf bucket.
func (l *Latency) Quantile(q float64) float64 {
	var total uint64
	for _, c := range l.Counts {
		total += c
	}
	if total == 0 || len(l.Bounds) == 0 {
		return 0
	}
	rank := q * float64(total)
	var cum uint64
	for i, c := range l.Counts {
		if float64(cum+c) >= rank && c > 0 {
			if i >= len(l.Bounds) {
				return l.Bounds[len(l.Bounds)-1]
			}
			lo := 0.0
			if i > 0 {
				lo = l.Bounds[i-1]
			}
			return lo + (l.Bounds[i]-lo)*(rank-float64(cum))/float64(c)
		}
		cum += c
	}
	return l.Bounds[len(l.Bounds)-1]
}

// Sub returns l minus an earlier snapshot prev of the same counters.
func (l *Latency) Sub(prev *Latency) *Latency {
	d := &Latency{Bounds: l.Bounds, Counts: make([]uint64, len(l.Counts))}
	if prev == nil || len(prev.Counts) != len(l.Counts) || prev.Count > l.Count {
		copy(d.Counts, l.Counts) // new, or restarted: all of it
		d.Count, d.Sum = l.Count, l.Sum
		for k, v := range l.Errors {
			if d.Errors == nil {
				d.Errors = map[string]uint64{}
			}
			d.Errors[k] = v
		}
		return d
	}
	for i := range l.Counts {
		d.Counts[i] = l.Counts[i] - min(prev.Counts[i], l.Counts[i])
	}
	d.Count, d.Sum = l.Count-prev.Count, l.Sum-prev.Sum
	for k, v := range l.Errors {
		if n := v - min(prev.Errors[k], v); n > 0 {
			if d.Errors == nil {
				d.Errors = map[string]uint64{}
			}
			d.Errors[k] = n
		}
	}
	return d
}

// SortedKeys returns m's keys in order (stable endpoint lists).
func SortedKeys[V any](m map[string]V) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}
