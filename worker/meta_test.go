package worker_test

import (
	"bytes"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/natserve/natserve/internal/wire"
)

// TestRequestForms: a replica takes a request's metadata from the envelope
// in front of its payload (what callers of this version send) and, for one
// release and for stored requests, from Natserve-* headers; a version it
// does not speak, on either side of a rolling upgrade, is answered "proto"
// (never run, never silently misread), a malformed envelope "bad_request".
func TestRequestForms(t *testing.T) {
	s := newStack(t)
	s.replica(t, "meta-1", "Counter", ``, 1)
	nc := s.cl.Conn()
	args, err := wire.MarshalValue([]any{0})
	if err != nil {
		t.Fatal(err)
	}
	code := func(what string, data []byte, h nats.Header) string {
		t.Helper()
		m, err := nc.RequestMsg(&nats.Msg{Subject: wire.DeploymentSubject("meta-1"), Data: data, Header: h}, 20*time.Second)
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		if m.Header == nil {
			return ""
		}
		c := m.Header.Get(wire.HeaderCode)
		t.Logf("%s: %s: %s", what, c, m.Header.Get(wire.HeaderError))
		return c
	}
	env := append(wire.AppendRequestMeta(nil, &wire.RequestMeta{Kind: wire.KindCall, RequestID: "e1", Timeout: 10 * time.Second}), args...)
	if c := code("envelope", env, nil); c != "" {
		t.Fatalf("envelope form: %q", c)
	}
	hdr := nats.Header{wire.HeaderProto: {wire.ProtoVersion}, wire.HeaderKind: {wire.KindCall}, wire.HeaderTimeout: {"10000000"}}
	if c := code("headers", args, hdr); c != "" {
		t.Fatalf("header form: %q", c)
	}
	newer := bytes.Clone(env)
	newer[1]++
	if c := code("newer envelope", newer, nil); c != string(wire.CodeProto) {
		t.Fatalf("an envelope of version %d: %q, want %q", newer[1], c, wire.CodeProto)
	}
	if c := code("no metadata", args, nil); c != string(wire.CodeProto) {
		t.Fatalf("neither envelope nor headers: %q, want %q", c, wire.CodeProto)
	}
	if c := code("other protocol header", args, nats.Header{wire.HeaderProto: {"9"}}); c != string(wire.CodeProto) {
		t.Fatalf("header form of protocol 9: %q, want %q", c, wire.CodeProto)
	}
	if c := code("truncated envelope", env[:6], nil); c != string(wire.CodeBadRequest) {
		t.Fatalf("a truncated envelope: %q, want %q", c, wire.CodeBadRequest)
	}
}
