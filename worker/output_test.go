package worker

import (
	"bytes"
	"os/exec"
	"strings"
	"sync"
	"testing"
)

// chunkWriter records the size of each write.
type chunkWriter struct {
	mu     sync.Mutex
	buf    bytes.Buffer
	maxLen int
}

func (w *chunkWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.maxLen = max(w.maxLen, len(p))
	return w.buf.Write(p)
}

// A replica's stdout and stderr reach the agent's output whole, prefixed
// per line, through one pipe copied with a 4 KiB buffer (not io.Copy's
// 32 KiB, held per replica for its whole life).
func TestOutputCopierSmallBuffer(t *testing.T) {
	sink := &chunkWriter{}
	copier := &outputCopier{w: &prefixWriter{w: sink, prefix: "[d r] "}}
	cmd := exec.Command("sh", "-c", `i=0; while [ $i -lt 400 ]; do echo "out line $i ................................................................................................"; i=$((i+1)); done; echo "err line" >&2`)
	cmd.Stdout, cmd.Stderr = copier, copier
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSuffix(sink.buf.String(), "\n"), "\n")
	if len(lines) != 401 {
		t.Fatalf("%d lines, want 401", len(lines))
	}
	for i, l := range lines[:400] {
		if !strings.HasPrefix(l, "[d r] out line ") || !strings.HasSuffix(l, ".") {
			t.Fatalf("line %d: %q", i, l)
		}
	}
	if lines[400] != "[d r] err line" {
		t.Fatalf("last line %q", lines[400])
	}
	// Each copied chunk is at most 4 KiB before the prefixes (6 bytes a line).
	if limit := 4<<10 + 6*(4<<10/100+2); sink.maxLen > limit {
		t.Fatalf("a write of %d bytes: the copy did not use the 4 KiB buffer", sink.maxLen)
	}
}
