package client_test

import (
	"sync"
	"testing"

	"github.com/nats-io/nuid"
	"github.com/natserve/natserve/client"
	"github.com/natserve/natserve/internal/wire"
)

// TestNewRequestIDUnique draws ids from many goroutines (each pooled
// generator has its own prefix) and checks they are valid and distinct.
func TestNewRequestIDUnique(t *testing.T) {
	const workers, each = 16, 5000
	ids := make([][]string, workers)
	var wg sync.WaitGroup
	for w := range ids {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < each; i++ {
				ids[w] = append(ids[w], client.NewRequestID())
			}
		}()
	}
	wg.Wait()
	seen := map[string]bool{}
	for _, l := range ids {
		for _, id := range l {
			if !wire.ValidRequestID(id) || len(id) != 22 {
				t.Fatalf("invalid request id %q", id)
			}
			if seen[id] {
				t.Fatalf("request id %q drawn twice", id)
			}
			seen[id] = true
		}
	}
}

// BenchmarkNewRequestID: pooled generators against the global one
// (nuid.Next, a lock shared by every request), from parallel goroutines.
func BenchmarkNewRequestID(b *testing.B) {
	b.Run("pooled", func(b *testing.B) {
		b.ReportAllocs()
		b.SetParallelism(32)
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				_ = client.NewRequestID()
			}
		})
	})
	b.Run("global", func(b *testing.B) {
		b.ReportAllocs()
		b.SetParallelism(32)
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				_ = nuid.Next()
			}
		})
	})
}
