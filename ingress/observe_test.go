package ingress_test

import (
	"bufio"
	"compress/gzip"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/natserve/natserve/client"
	"github.com/natserve/natserve/internal/e2e"
	"github.com/natserve/natserve/internal/testutil"
	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/protobuf/proto"
)

// otlpReceiver is an OTLP/HTTP traces endpoint: it decodes what the
// exporters send and keeps the spans.
type otlpReceiver struct {
	srv *httptest.Server

	mu    sync.Mutex // guards spans, service
	spans []*tracepb.Span
	svc   map[string]string // span id → service.name
}

func newOTLPReceiver(t *testing.T) *otlpReceiver {
	r := &otlpReceiver{svc: map[string]string{}}
	r.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if req.URL.Path != "/v1/traces" || req.Header.Get("Content-Type") != "application/x-protobuf" {
			http.Error(w, "want protobuf on /v1/traces", http.StatusBadRequest)
			return
		}
		var body io.Reader = req.Body
		if req.Header.Get("Content-Encoding") == "gzip" {
			zr, err := gzip.NewReader(req.Body)
			if err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			body = zr
		}
		b, err := io.ReadAll(body)
		var msg coltracepb.ExportTraceServiceRequest
		if err == nil {
			err = proto.Unmarshal(b, &msg)
		}
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		r.mu.Lock()
		for _, rs := range msg.ResourceSpans {
			svc := ""
			for _, a := range rs.GetResource().GetAttributes() {
				if a.Key == "service.name" {
					svc = a.GetValue().GetStringValue()
				}
			}
			for _, ss := range rs.ScopeSpans {
				for _, s := range ss.Spans {
					r.spans = append(r.spans, s)
					r.svc[hex.EncodeToString(s.SpanId)] = svc
				}
			}
		}
		r.mu.Unlock()
		out, _ := proto.Marshal(&coltracepb.ExportTraceServiceResponse{})
		w.Header().Set("Content-Type", "application/x-protobuf")
		_, _ = w.Write(out)
	}))
	t.Cleanup(r.srv.Close)
	return r
}

// trace returns the spans of one trace by name (the first of each name).
func (r *otlpReceiver) trace(traceID string) map[string]*tracepb.Span {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := map[string]*tracepb.Span{}
	for _, s := range r.spans {
		if hex.EncodeToString(s.TraceId) == traceID {
			if _, dup := out[s.Name]; !dup {
				out[s.Name] = s
			}
		}
	}
	return out
}

// TestTraceAndAccessLog sends one HTTP request through a graph whose node
// calls another deployment from inside its replica, and checks that every
// process's spans arrive at an OTLP receiver as one trace under the
// caller's traceparent, each with the right parent; and that the ingress
// writes one access line per request with the right fields, and none with
// -access-log=false.
func TestTraceAndAccessLog(t *testing.T) {
	otlp := newOTLPReceiver(t)
	env := []string{"OTEL_BSP_SCHEDULE_DELAY=100"} // export every 100 ms, not 5 s
	s := e2e.New(t)
	s.Controller("c1")
	testutil.Start(t, env, s.Program, "agent", "-nats", s.URL, "-creds", testutil.Creds(t, s.URL, "node-n1"), "-name", "n1", "-otlp-endpoint", otlp.srv.URL)
	s.WaitNodes(1)
	startIngress := func(flags ...string) (string, *testutil.Proc) {
		addr := fmt.Sprintf("127.0.0.1:%d", e2e.FreePort(t))
		p := testutil.Start(t, env, s.Natserve, append([]string{"ingress", "-nats", s.URL, "-creds", testutil.Creds(t, s.URL, "ingress"), "-addr", addr}, flags...)...)
		base := "http://" + addr
		testutil.Eventually(t, 20*time.Second, func() error {
			if p.Exited() {
				t.Fatalf("ingress exited:\n%s", p.Output())
			}
			r, err := http.Get(base + "/-/healthz")
			if err != nil {
				return err
			}
			r.Body.Close()
			return nil
		})
		return base, p
	}
	base, ing := startIngress("-otlp-endpoint", otlp.srv.URL)
	quiet, quietIng := startIngress("-access-log=false")

	s.Deploy(spec("adder", "Probe", `["adder"]`, 1, nil))
	g := client.NewGraph("traced").RoutePrefix("/traced")
	p := g.Bind("p", "Probe", "p")
	gs, err := g.Driver(g.Call("relay", p.Method("Relay"), "adder", g.Input(), 2))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Client.DeployGraph(e2e.Ctx(10*time.Second), gs); err != nil {
		t.Fatal(err)
	}
	s.WaitHealthy("traced")
	testutil.Eventually(t, 10*time.Second, func() error {
		if code, body, _ := e2e.HTTP(t, "POST", base+"/traced", "1.5"); code != 200 {
			return fmt.Errorf("graph: %d %s", code, body)
		}
		return nil
	})

	// One traced request, under a parent span of the caller's.
	const traceID, callerSpan = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
	code, body, _ := e2e.HTTP(t, "POST", base+"/traced", "5.5", "Traceparent", "00-"+traceID+"-"+callerSpan+"-01", "X-Request-Id", "graph-1")
	if code != 200 || !strings.HasPrefix(body, "adder via pid ") || !strings.HasSuffix(body, ": 7.5") {
		t.Fatalf("POST /traced: %d %q", code, body)
	}
	// span name → (parent's span name, service)
	want := map[string][2]string{
		"POST /traced":         {"", "natserve-ingress"},
		"graph traced":         {"POST /traced", "natserve-ingress"},
		"call traced_p.Relay":  {"graph traced", "natserve-ingress"},
		"serve traced_p.Relay": {"call traced_p.Relay", "traced_p"},
		"call adder.Add":       {"serve traced_p.Relay", "traced_p"},
		"serve adder.Add":      {"call adder.Add", "adder"},
	}
	var spans map[string]*tracepb.Span
	testutil.Eventually(t, 20*time.Second, func() error {
		spans = otlp.trace(traceID)
		for name := range want {
			if spans[name] == nil {
				return fmt.Errorf("span %q not received (have %d spans of the trace)", name, len(spans))
			}
		}
		return nil
	})
	for name, w := range want {
		sp := spans[name]
		parent := hex.EncodeToString(sp.ParentSpanId)
		if w[0] == "" {
			if parent != callerSpan {
				t.Errorf("span %q: parent %s, want the caller's %s", name, parent, callerSpan)
			}
		} else if wantParent := hex.EncodeToString(spans[w[0]].SpanId); parent != wantParent {
			t.Errorf("span %q: parent %s, want %q (%s)", name, parent, w[0], wantParent)
		}
		if svc := otlp.svc[hex.EncodeToString(sp.SpanId)]; svc != w[1] {
			t.Errorf("span %q from service %q, want %q", name, svc, w[1])
		}
	}
	for name, kind := range map[string]tracepb.Span_SpanKind{
		"POST /traced": tracepb.Span_SPAN_KIND_SERVER, "call adder.Add": tracepb.Span_SPAN_KIND_CLIENT, "serve adder.Add": tracepb.Span_SPAN_KIND_SERVER,
	} {
		if spans[name].Kind != kind {
			t.Errorf("span %q is of kind %v, want %v", name, spans[name].Kind, kind)
		}
	}

	// Access log: a request to a deployment, one to no route.
	d, err := s.Client.Get(e2e.Ctx(5*time.Second), "adder")
	if err != nil || len(d.Replicas) != 1 {
		t.Fatalf("adder: %+v %v", d, err)
	}
	_, adderBody, _ := e2e.HTTP(t, "GET", base+"/adder/x?q=1", "", "X-Request-Id", "acc-1")
	e2e.HTTP(t, "GET", base+"/nowhere", "", "X-Request-Id", "acc-404")
	e2e.HTTP(t, "GET", quiet+"/adder", "", "X-Request-Id", "quiet-1")

	type line struct {
		Time       string   `json:"time"`
		RequestID  string   `json:"request_id"`
		Deployment string   `json:"deployment"`
		Method     string   `json:"method"`
		Path       string   `json:"path"`
		Status     int      `json:"status"`
		Bytes      int      `json:"bytes"`
		LatencyMS  *float64 `json:"latency_ms"`
		Replica    string   `json:"replica"`
		TraceID    string   `json:"trace_id"`
	}
	lines := map[string]line{}
	testutil.Eventually(t, 10*time.Second, func() error {
		sc := bufio.NewScanner(strings.NewReader(ing.Output()))
		for sc.Scan() {
			if !strings.HasPrefix(sc.Text(), "{") {
				continue
			}
			var l line
			if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
				t.Fatalf("access line %q: %v", sc.Text(), err)
			}
			lines[l.RequestID] = l
		}
		if _, ok := lines["acc-404"]; !ok {
			return fmt.Errorf("%d access lines, none for acc-404 yet", len(lines))
		}
		return nil
	})
	if l := lines["acc-1"]; l.Deployment != "adder" || l.Method != "GET" || l.Path != "/adder/x" || l.Status != 200 ||
		l.Bytes != len(adderBody) || l.LatencyMS == nil || *l.LatencyMS <= 0 || l.Replica != d.Replicas[0].ID || l.TraceID == "" {
		t.Errorf("access line of acc-1: %+v (replica want %s, %d bytes)", l, d.Replicas[0].ID, len(adderBody))
	}
	if ts, err := time.Parse(time.RFC3339Nano, lines["acc-1"].Time); err != nil || time.Since(ts) > time.Minute {
		t.Errorf("access line time %q: %v", lines["acc-1"].Time, err)
	}
	if l := lines["acc-404"]; l.Deployment != "" || l.Status != 404 || l.Replica != "" || l.Path != "/nowhere" {
		t.Errorf("access line of acc-404: %+v", l)
	}
	if l := lines["graph-1"]; l.Deployment != "traced" || l.Status != 200 || l.TraceID != traceID || l.Method != "POST" {
		t.Errorf("access line of graph-1: %+v", l)
	}
	// -access-log=false: nothing, even after the final flush on shutdown.
	_ = quietIng.Signal(syscall.SIGTERM)
	if exited, _ := quietIng.Wait(30 * time.Second); !exited {
		t.Fatal("quiet ingress did not stop")
	}
	if out := quietIng.Output(); strings.Contains(out, "quiet-1") || strings.Contains(out, `"request_id"`) {
		t.Errorf("-access-log=false wrote an access line:\n%s", out)
	}
}
