package wire_test

import (
	"strings"
	"testing"

	"github.com/natserve/natserve/internal/wire"
)

// FuzzModelSubject: any model id ValidateModelID accepts becomes a subject
// of exactly four tokens with no wildcard, distinct from the free-slot one.
func FuzzModelSubject(f *testing.F) {
	f.Add("mux", "model-1")
	f.Add("d", "a.b *>\tc")
	f.Add("d", strings.Repeat("x", 128))
	f.Fuzz(func(t *testing.T, dep, id string) {
		if wire.ValidateName("deployment", dep) != nil {
			return
		}
		err := wire.ValidateModelID(id)
		if len(id) == 0 || len(id) > wire.MaxModelIDLen {
			if err == nil {
				t.Fatalf("ValidateModelID(%q) accepted a bad length", id)
			}
			return
		}
		if err != nil {
			return
		}
		if strings.ContainsAny(id, "\r\n") {
			t.Fatalf("ValidateModelID(%q) accepted a line break", id)
		}
		s := wire.ModelSubject(dep, id)
		toks := strings.Split(s, ".")
		if len(toks) != 4 || toks[2] != dep || strings.ContainsAny(s, "*> \t") {
			t.Fatalf("ModelSubject(%q, %q) = %q", dep, id, s)
		}
		if s == wire.FreeSlotSubject(dep) {
			t.Fatalf("ModelSubject(%q, %q) is the free-slot subject", dep, id)
		}
	})
}

func TestValidateModelID(t *testing.T) {
	for id, ok := range map[string]bool{"m1": true, "llama/7b:v2 ü": true, "": false, "a\nb": false, strings.Repeat("x", 129): false, "\xff": false} {
		if err := wire.ValidateModelID(id); (err == nil) != ok {
			t.Errorf("ValidateModelID(%q) = %v, want ok=%v", id, err, ok)
		}
	}
	if wire.ModelSubject("d", "a") == wire.ModelSubject("d", "b") {
		t.Error("two model ids share a subject")
	}
}
