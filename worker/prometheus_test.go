package worker_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nats.go/micro"
	"github.com/nats-io/nuid"
	"github.com/natserve/natserve/client"
	"github.com/natserve/natserve/internal/discovery"
	"github.com/natserve/natserve/internal/metrics"
	"github.com/natserve/natserve/internal/store"
	"github.com/natserve/natserve/internal/testutil"
	"github.com/natserve/natserve/internal/wire"
	"github.com/natserve/natserve/worker"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
)

// replicaMetrics asks a replica for its metrics as its node agent does.
func replicaMetrics(t *testing.T, s *stack, deployment, id string) map[string]*dto.MetricFamily {
	t.Helper()
	m, err := s.cl.Conn().Request(wire.ReplicaSubject(deployment, id, wire.VerbMetrics), nil, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	dec := expfmt.NewDecoder(bytes.NewReader(m.Data), expfmt.NewFormat(expfmt.TypeProtoDelim))
	out := map[string]*dto.MetricFamily{}
	for {
		mf := &dto.MetricFamily{}
		if err := dec.Decode(mf); err != nil {
			if errors.Is(err, io.EOF) {
				return out
			}
			t.Fatal(err)
		}
		out[mf.GetName()] = mf
	}
}

func TestReplicaMetricsAndServiceStats(t *testing.T) {
	s := newStack(t)
	r := s.replicaWith(t, worker.ReplicaSpec{Deployment: "metered", Class: "Probe", InitArgs: json.RawMessage(`["m"]`), MaxOngoingRequests: 3, Metrics: true})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	h := s.cl.Handle("metered")
	for i := 0; i < 5; i++ {
		if _, err := client.Call[float64](ctx, h.Method("Add"), 1, 2); err != nil {
			t.Fatal(err)
		}
	}
	if err := h.Method("Fail").Call(ctx, nil, "boom"); !errors.Is(err, client.ErrUser) {
		t.Fatalf("Fail: %v", err)
	}
	if err := h.Method("Nope").Call(ctx, nil); !errors.Is(err, client.ErrUnknownMethod) {
		t.Fatalf("Nope: %v", err)
	}
	// A composed call: Relay calls Add of the same deployment through a handle.
	if _, err := client.Call[string](ctx, h.Method("Relay"), "metered", 1, 1); err != nil {
		t.Fatal(err)
	}
	f := metrics.Families(replicaMetrics(t, s, "metered", r.id))
	lbl := map[string]string{"deployment": "metered", "replica": r.id}
	with := func(kv ...string) map[string]string {
		m := map[string]string{}
		for k, v := range lbl {
			m[k] = v
		}
		for i := 0; i+1 < len(kv); i += 2 {
			m[kv[i]] = kv[i+1]
		}
		return m
	}
	checks := []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"natserve_replica_requests_total", with("method", "Add", "code", "ok"), 6},
		{"natserve_replica_requests_total", with("method", "Fail", "code", string(wire.CodeUser)), 1},
		{"natserve_replica_requests_total", with("method", "UNKNOWN", "code", string(wire.CodeUnknownMethod)), 1},
		{"natserve_replica_processing_seconds", with("method", "Add"), 6},
		{"natserve_handle_calls_total", with("callee", "metered", "method", "Add", "code", "ok"), 1},
		{"natserve_handle_call_duration_seconds", with("callee", "metered"), 1},
		{"natserve_replica_ongoing_requests", lbl, 0},
		{"natserve_replica_max_ongoing_requests", lbl, 3},
		{"natserve_nats_connected", with("conn", "replica"), 1},
	}
	for _, c := range checks {
		if v, found := f.Value(c.name, c.labels); !found || v != c.want {
			t.Errorf("%s%v = %v (found %v), want %v", c.name, c.labels, v, found, c.want)
		}
	}

	// The replica is an instance of the service named after its deployment.
	nc := s.cl.Conn()
	msg, err := nc.Request(wire.ServiceSubject(wire.SrvStats, "metered", r.id), nil, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var st micro.Stats
	if err := json.Unmarshal(msg.Data, &st); err != nil || st.Name != "metered" || st.ID != r.id || st.Type != micro.StatsResponseType {
		t.Fatalf("stats %s (%v)", msg.Data, err)
	}
	eps := map[string]*micro.EndpointStats{}
	for _, e := range st.Endpoints {
		eps[e.Name] = e
	}
	if a := eps["Add"]; a == nil || a.NumRequests != 6 || a.NumErrors != 0 || a.Subject != wire.DeploymentSubject("metered") || a.QueueGroup != "metered" || a.ProcessingTime <= 0 {
		t.Errorf("Add stats %+v", a)
	}
	if fl := eps["Fail"]; fl == nil || fl.NumRequests != 1 || fl.NumErrors != 1 || fl.LastError != "boom" {
		t.Errorf("Fail stats %+v", fl)
	} else {
		var lat discovery.Latency
		if err := json.Unmarshal(fl.Data, &lat); err != nil || lat.Errors[string(wire.CodeUser)] != 1 || len(lat.Counts) != len(metrics.LatencyBuckets)+1 {
			t.Errorf("Fail data %s (%v)", fl.Data, err)
		}
	}
	msg, err = nc.Request(wire.ServiceSubject(wire.SrvInfo, "metered", ""), nil, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var info micro.Info
	if err := json.Unmarshal(msg.Data, &info); err != nil || info.Metadata["class"] != "Probe" || len(info.Endpoints) < 5 {
		t.Errorf("info %s (%v)", msg.Data, err)
	}
	for _, e := range info.Endpoints {
		if e.Name == worker.HealthMethod || e.Name == worker.ReconfigureMethod {
			t.Errorf("hook %s listed as an endpoint", e.Name)
		}
	}
	// A draining replica leaves the service at once.
	_ = r.Signal(15)
	testutil.Eventually(t, 10*time.Second, func() error {
		_, err := nc.Request(wire.ServiceSubject(wire.SrvPing, "metered", r.id), nil, 200*time.Millisecond)
		if err == nil {
			return errors.New("still answers PING")
		}
		return nil
	})
}

// TestAgentExportsItsReplicas runs a node agent with metrics on: its
// /metrics holds its own metrics and, labelled, each replica's, user
// metrics included; a replica that exits leaves it.
func TestAgentExportsItsReplicas(t *testing.T) {
	s := newStack(t)
	reg := prometheus.NewRegistry()
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	var wreg worker.Registry
	a, err := worker.NewAgent(worker.AgentConfig{Name: "n1", NATSURL: s.url, NATSOptions: testutil.CredsOptions(t, s.url, "node-n1"), Registry: &wreg, Program: s.bin, Metrics: reg, Logger: quiet, ReplicaOutput: io.Discard, StopReplicasOnExit: true})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	srv := httptest.NewServer(metrics.Handler(prometheus.Gatherers{reg, a.ReplicaGatherer()}, "tok"))
	t.Cleanup(srv.Close)
	if _, err := metrics.Scrape(srv.URL, ""); err == nil {
		t.Fatal("scrape without the token succeeded")
	}

	kv := s.buckets(t)
	assign := func(id, class string, desired string) {
		a := store.Assignment{Replica: id, Node: "n1", Deployment: "dep-" + class, Class: class, InitArgs: json.RawMessage(`[]`), Desired: desired, MaxOngoingRequests: 2, GracefulShutdownTimeoutS: 5,
			Creds: testutil.ReplicaCreds(t, s.url, "dep-"+class)}
		if _, err := store.Put(context.Background(), kv.Assignments, a.Key(), a); err != nil {
			t.Fatal(err)
		}
	}
	assign("rmeter1", "Metered", store.DesiredRun)
	h := s.cl.Handle("dep-Metered").Method("Hit")
	testutil.Eventually(t, 20*time.Second, func() error {
		cctx, cc := context.WithTimeout(context.Background(), time.Second)
		defer cc()
		_, err := client.Call[int](cctx, h)
		return err
	})
	for i := 0; i < 3; i++ {
		if _, err := client.Call[int](ctx, h); err != nil {
			t.Fatal(err)
		}
	}
	var f metrics.Families
	testutil.Eventually(t, 10*time.Second, func() error {
		if f, err = metrics.Scrape(srv.URL, "tok"); err != nil {
			return err
		}
		if v, _ := f.Value("natserve_test_hits_total", map[string]string{"deployment": "dep-Metered", "replica": "rmeter1"}); v != 4 {
			return errors.New("user metric not exported yet")
		}
		return nil
	})
	for _, c := range []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"natserve_replica_requests_total", map[string]string{"deployment": "dep-Metered", "replica": "rmeter1", "method": "Hit", "code": "ok"}, 4},
		{"natserve_agent_replica_starts_total", map[string]string{"deployment": "dep-Metered"}, 1},
		{"natserve_agent_replicas", map[string]string{"node": "n1"}, 1},
		{"natserve_nats_connected", map[string]string{"conn": "agent"}, 1},
	} {
		if v, found := f.Value(c.name, c.labels); !found || v != c.want {
			t.Errorf("%s%v = %v (found %v), want %v", c.name, c.labels, v, found, c.want)
		}
	}
	// Stop it: its series leave the node's exposition.
	assign("rmeter1", "Metered", store.DesiredStop)
	testutil.Eventually(t, 20*time.Second, func() error {
		if f, err = metrics.Scrape(srv.URL, "tok"); err != nil {
			return err
		}
		if _, found := f.Value("natserve_replica_requests_total", map[string]string{"replica": "rmeter1"}); found {
			return errors.New("series of the stopped replica remain")
		}
		if v, _ := f.Value("natserve_agent_replica_exits_total", map[string]string{"deployment": "dep-Metered", "state": "STOPPED"}); v != 1 {
			return errors.New("exit not counted")
		}
		return nil
	})
}

// replicaWith starts a replica process of spec (id, URL unless set and
// timeouts filled in) and waits until it answers pings.
func (s *stack) replicaWith(t *testing.T, spec worker.ReplicaSpec) *replicaProc {
	t.Helper()
	n := nuid.Next()
	spec.Replica = "r" + strings.ToLower(n[len(n)-12:]) // the sequence part: the first 12 characters are the same in one process
	if spec.NATSURL == "" {
		spec.NATSURL = s.url
	}
	spec.GracefulShutdownTimeoutS = 10
	spec.Creds = testutil.ReplicaCreds(t, s.url, spec.Deployment)
	b, _ := json.Marshal(spec)
	p := testutil.StartWith(t, "", b, nil, s.bin, "replica")
	testutil.Eventually(t, 20*time.Second, func() error {
		if p.Exited() {
			t.Fatalf("replica exited early:\n%s", p.Output())
		}
		_, err := s.cl.Conn().Request(wire.ReplicaSubject(spec.Deployment, spec.Replica, wire.VerbPing), nil, 200*time.Millisecond)
		return err
	})
	return &replicaProc{Proc: p, id: spec.Replica}
}

func (s *stack) buckets(t *testing.T) *store.Buckets {
	t.Helper()
	js, err := jetstream.New(s.cl.Conn())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	b, err := store.Open(ctx, js, store.Config{})
	if err != nil {
		t.Fatal(err)
	}
	return b
}
