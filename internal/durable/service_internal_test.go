package durable

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/natserve/natserve/internal/wire"
)

// FuzzDecodeRequest: whatever arrives on the requests service's subject,
// decoding never panics, a refusal is one line with a code, and what is
// accepted has a known operation with its fields in shape (ids are never
// wildcards).
func FuzzDecodeRequest(f *testing.F) {
	id := wire.NewAsyncID()
	for _, s := range []string{
		`{"op":"get","id":"` + id + `"}`, `{"op":"wait","id":"` + id + `","wait_ms":20000}`, `{"op":"cancel","id":"*"}`,
		`{"op":"chunk","id":"` + id + `","offset":-1}`, `{"op":"list"}`, `{"op":"claim","deployment":"p","idem_hash":"00112233445566778899aabbccddeeff","id":"` + id + `"}`,
		`{"op":"record","record":{"id":"` + id + `","deployment":"p","status":"queued","kind":"call","seq":3}}`,
		`{"op":"record","record":{"id":"` + id + `","deployment":"p","status":"succeeded","kind":"call","result":42}}`,
		`not json`, `{"op":"get","id":"req.>"}`, "{\"op\":\"x\n\"}", `null`, `[]`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		req, rep := decodeRequest(b)
		if (req == nil) == (rep == nil) {
			t.Fatalf("%q: request %v and reply %v", b, req, rep)
		}
		if rep != nil {
			if rep.Code == "" || rep.Error == "" || strings.Contains(rep.Error, "\n") || rep.Record != nil {
				t.Fatalf("%q: refusal %+v", b, rep)
			}
			if _, err := json.Marshal(rep); err != nil {
				t.Fatal(err)
			}
			return
		}
		switch req.Op {
		case wire.AsyncOpRecord:
			if !wire.ValidAsyncID(req.Record.ID) || req.Record.Status != wire.AsyncQueued {
				t.Fatalf("%q accepted: %+v", b, req.Record)
			}
		case wire.AsyncOpClaim, wire.AsyncOpRelease:
			if !wire.ValidAsyncID(req.ID) || !wire.ValidIdemHash(req.IdemHash) || strings.ContainsAny(req.Deployment, "*>.") {
				t.Fatalf("%q accepted", b)
			}
		default:
			if !wire.ValidAsyncID(req.ID) || req.Offset < 0 || req.WaitMS < 0 {
				t.Fatalf("%q accepted", b)
			}
		}
	})
}
