package fault_test

import (
	"fmt"
	"io"
	"net/http"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nuid"
	"github.com/natserve/natserve/internal/wire"
)

// result is one request of the open-loop load.
type result struct {
	at      time.Time
	latency time.Duration
	code    string // "200", "503", … or a client error code
	id      string // the request id
}

// openLoop sends requests at a constant rate, whether or not earlier ones
// have answered (so a stall shows as latency, not as fewer requests).
type openLoop struct {
	mu        sync.Mutex
	results   []result
	stop      chan struct{}
	wg        sync.WaitGroup
	sent      atomic.Int64
	closeIdle func()
}

// startHTTP sends rate req/s to url (each with a fresh X-Request-Id).
func startHTTP(url string, rate int, timeout time.Duration) *openLoop {
	tr := &http.Transport{MaxIdleConnsPerHost: 512}
	hc := &http.Client{Timeout: timeout + 5*time.Second, Transport: tr}
	l := start(rate, func() (string, string) {
		id := nuid.Next()
		req, _ := http.NewRequest("GET", url, nil)
		req.Header.Set("X-Request-Id", id)
		resp, err := hc.Do(req)
		if err != nil {
			return "conn", id
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return fmt.Sprint(resp.StatusCode), id
	})
	l.closeIdle = tr.CloseIdleConnections
	return l
}

func start(rate int, do func() (code, id string)) *openLoop {
	l := &openLoop{stop: make(chan struct{}), closeIdle: func() {}}
	interval := time.Second / time.Duration(rate)
	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			select {
			case <-l.stop:
				return
			case <-t.C:
			}
			l.wg.Add(1)
			l.sent.Add(1)
			go func() {
				defer l.wg.Done()
				at := time.Now()
				code, id := do()
				l.mu.Lock()
				l.results = append(l.results, result{at: at, latency: time.Since(at), code: code, id: id})
				l.mu.Unlock()
			}()
		}
	}()
	return l
}

// Stop ends the load and waits for every request to answer.
func (l *openLoop) Stop() []result {
	close(l.stop)
	l.wg.Wait()
	l.closeIdle()
	l.mu.Lock()
	defer l.mu.Unlock()
	sort.Slice(l.results, func(i, j int) bool { return l.results[i].at.Before(l.results[j].at) })
	return l.results
}

// stats summarizes results.
type stats struct {
	n, ok          int
	codes          map[string]int
	p50, p99, maxL time.Duration
	firstFail      time.Time
	lastFail       time.Time
	maxFailLatency time.Duration
}

func summarize(rs []result) stats {
	s := stats{codes: map[string]int{}}
	var lat []time.Duration
	for _, r := range rs {
		s.n++
		s.codes[r.code]++
		lat = append(lat, r.latency)
		if r.code == "200" {
			s.ok++
			continue
		}
		if s.firstFail.IsZero() {
			s.firstFail = r.at
		}
		s.lastFail = r.at.Add(r.latency)
		s.maxFailLatency = max(s.maxFailLatency, r.latency)
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	if len(lat) > 0 {
		s.p50, s.p99, s.maxL = lat[len(lat)/2], lat[len(lat)*99/100], lat[len(lat)-1]
	}
	return s
}

func (s stats) ratio() float64 {
	if s.n == 0 {
		return 0
	}
	return float64(s.ok) / float64(s.n)
}

func (s stats) codeString() string {
	var parts []string
	for c, n := range s.codes {
		parts = append(parts, fmt.Sprintf("%s×%d", c, n))
	}
	sort.Strings(parts)
	return strings.Join(parts, " ")
}

// executions counts the request ids the Counter class published, at method
// entry, and keeps their order and when each first arrived.
type executions struct {
	mu    sync.Mutex
	ids   map[string]int
	order []string
	first map[string]time.Time
	nc    *nats.Conn
}

func countExecutions(nc *nats.Conn) (*executions, error) {
	e := &executions{ids: map[string]int{}, first: map[string]time.Time{}, nc: nc}
	_, err := nc.Subscribe(wire.DeploymentSubject("fault-exec"), func(m *nats.Msg) {
		now := time.Now()
		e.mu.Lock()
		e.ids[string(m.Data)]++
		if _, ok := e.first[string(m.Data)]; !ok {
			e.first[string(m.Data)] = now
		}
		e.order = append(e.order, string(m.Data))
		e.mu.Unlock()
	})
	return e, err
}

// duplicates returns how many ids ran more than once, and resets.
func (e *executions) duplicates() int {
	_ = e.nc.Flush()
	e.mu.Lock()
	defer e.mu.Unlock()
	d := 0
	for _, n := range e.ids {
		if n > 1 {
			d++
		}
	}
	clear(e.ids)
	clear(e.first)
	e.order = e.order[:0]
	return d
}

// waits returns, for the admitted requests of rs (code 200), how long each
// waited from its sending to its method's entry (as seen here, one NATS hop
// later): the queueing, apart from the run time that a loaded machine
// stretches in both the loaded and the unloaded phase.
func (e *executions) waits(rs []result) []time.Duration {
	_ = e.nc.Flush()
	e.mu.Lock()
	defer e.mu.Unlock()
	var ws []time.Duration
	for _, r := range rs {
		if at, ok := e.first[r.id]; ok && r.code == "200" {
			ws = append(ws, at.Sub(r.at))
		}
	}
	return ws
}

// inversions counts the pairs of admitted requests (rs with code 200, in
// sending order) that ran in the other order, comparing each with the
// next one sent.
// firstSent is when the first request of rs was sent.
func firstSent(rs []result) time.Time {
	var start time.Time
	for _, r := range rs {
		if start.IsZero() || r.at.Before(start) {
			start = r.at
		}
	}
	return start
}

// longestWaits lists the n longest waits of admitted requests in rs as
// "+sent-offset wait" (offsets from the first request sent).
func (e *executions) longestWaits(rs []result, n int) string {
	_ = e.nc.Flush()
	e.mu.Lock()
	defer e.mu.Unlock()
	type w struct{ off, wait time.Duration }
	var ws []w
	start := firstSent(rs)
	for _, r := range rs {
		if at, ok := e.first[r.id]; ok && r.code == "200" {
			ws = append(ws, w{r.at.Sub(start), at.Sub(r.at)})
		}
	}
	sort.Slice(ws, func(i, j int) bool { return ws[i].wait > ws[j].wait })
	var b strings.Builder
	for i := 0; i < n && i < len(ws); i++ {
		fmt.Fprintf(&b, " +%v:%v", ws[i].off.Round(time.Millisecond), ws[i].wait.Round(100*time.Microsecond))
	}
	return b.String()
}

func (e *executions) inversions(rs []result) (inv, n int) {
	_ = e.nc.Flush()
	e.mu.Lock()
	pos := make(map[string]int, len(e.order))
	for i, id := range e.order {
		pos[id] = i
	}
	e.mu.Unlock()
	prev := -1
	for _, r := range rs {
		p, ok := pos[r.id]
		if r.code != "200" || !ok {
			continue
		}
		if prev >= 0 && p < prev {
			inv++
		}
		prev = p
		n++
	}
	return inv, n
}
